// Mirror packs (issue 11, cold nodes; actors/checkpoint.hpp "mirror packs",
// docs/checkpoint-format.md): what a node publishes of its mirror, at what
// rate, what gc keeps, and a cold node's restore seeded from them — with
// origin reachable (only the difference is fetched) and unreachable (the
// packs suffice). Real: git daemon on 127.0.0.1, RocksDB, a file:// store.
#include "actors/checkpoint.hpp"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "actors/task_store.hpp"
#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/store/db.hpp"
#include "runtime/store/object_store.hpp"
#include "tests/fixtures/command.hpp"
#include "tests/fixtures/git_daemon.hpp"
#include "tests/fixtures/git_repo.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace makima;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f{p, std::ios::binary};
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// One node's data dir: database, repos, worktrees, state.
struct node {
  fs::path root;
  std::unique_ptr<store::db> db;
  checkpoint::settings s;

  explicit node(fs::path dir) : root(std::move(dir)) {
    auto d = store::db::open(root / "db", {});
    EXPECT_TRUE(d) << describe(d.error());
    db = std::move(*d);
    s.repos_dir = root / "repos";
    s.worktrees_dir = root / "worktrees";
    s.state_root = root / "state";
    s.work_dir = root / "checkpoints";
    s.node = root.filename().string();
  }
};

class MirrorPacks : public ::testing::Test {
protected:
  void SetUp() override {
    git::init();
    test::repo_spec spec;
    spec.files = 120;
    spec.commits = 10;
    upstream = test::make_repo(tmp.path() / "served" / "origin", spec);
    url = daemon.url("origin");
    store::object_store_options o;
    o.url = "file://" + (tmp.path() / "store").string();
    auto st = store::open_object_store(o);
    ASSERT_TRUE(st) << describe(st.error());
    os = std::move(*st);
  }

  // Node A's task t1 on the origin: a worktree with a commit and
  // uncommitted work, recorded in A's database.
  task_record make_task(node& n) {
    auto m = git::mirror::open(url, n.s.repos_dir);
    EXPECT_TRUE(m) << describe(m.error());
    task_record rec;
    rec.spec.id = "t1";
    rec.spec.repo = url;
    rec.spec.argv = {"true"};
    rec.state = task_state::running;
    rec.base_commit = *m->resolve("");
    rec.branch = "makima/t1";
    rec.worktree = (n.s.worktrees_dir / "t1").string();
    rec.state_dir = (n.s.state_root / "t1").string();
    auto wt = m->add_worktree("t1", rec.worktree, rec.base_commit, rec.branch);
    EXPECT_TRUE(wt) << describe(wt.error());
    test::write_file(fs::path{rec.worktree} / "task.txt", "the task's work\n");
    fs::create_directories(rec.state_dir);
    test::write_file(fs::path{rec.state_dir} / "counter", "7\n");
    store::write_batch b;
    put_record(b, rec, 0, "created");
    b.put_output("t1", 0, 1, "hello\n");
    EXPECT_FALSE(n.db->write(std::move(b)));
    return rec;
  }

  std::string commit_upstream(const std::string& name) {
    test::write_file(upstream / name, "upstream " + name + "\n");
    test::git(upstream, {"add", name});
    test::git(upstream, {"commit", "-q", "-m", "add " + name});
    return test::git(upstream, {"rev-parse", "HEAD"});
  }

  std::vector<std::string> manifests() {
    std::vector<std::string> out;
    auto l = os->list("mirrors/");
    EXPECT_TRUE(l) << describe(l.error());
    if (l)
      for (auto& o : *l)
        out.push_back(o.key);
    return out;
  }

  test::temp_dir tmp{"makima-mirror-packs-test"};
  test::git_daemon daemon{tmp.path() / "served"};
  fs::path upstream;
  std::string url;
  std::unique_ptr<store::object_store> os;
};

} // namespace

TEST_F(MirrorPacks, the_first_is_the_clone_pack_as_received_then_one_per_interval) {
  node a{tmp.path() / "a"};
  make_task(a);
  auto mirror = git::mirror::open_path(a.s.repos_dir
                                       / git::mirror_dir_name(url));
  ASSERT_TRUE(mirror);
  auto rec = mirror->clone_record();
  ASSERT_TRUE(rec && rec->packs.size() == 1);
  const int64_t t0 = 1'800'000'000;
  auto p1 = checkpoint::publish_mirror(*os, url, a.s, 3600, t0);
  ASSERT_TRUE(p1) << describe(p1.error());
  EXPECT_FALSE(p1->skipped) << p1->why;
  EXPECT_EQ(p1->n, 1u);
  EXPECT_EQ(p1->packs, 1u);
  EXPECT_EQ(p1->packs_uploaded, 1u);
  // The clone's index came with it: a cold node indexes nothing.
  // The clone's pack itself, byte for byte, content-addressed.
  auto sha = store::sha256_file(rec->packs[0].pack);
  ASSERT_TRUE(sha);
  auto blob = os->get(checkpoint::blob_key(*sha));
  ASSERT_TRUE(blob) << describe(blob.error());
  EXPECT_EQ(*blob, slurp(rec->packs[0].pack));
  auto idx_sha = store::sha256_file(rec->packs[0].idx);
  ASSERT_TRUE(idx_sha);
  auto idx_blob = os->get(checkpoint::blob_key(*idx_sha));
  ASSERT_TRUE(idx_blob) << describe(idx_blob.error());
  EXPECT_EQ(*idx_blob, slurp(rec->packs[0].idx));
  auto key1 = checkpoint::mirror_manifest_key(url, 1);
  EXPECT_EQ(manifests(), std::vector<std::string>{key1});
  auto text = os->get(key1);
  ASSERT_TRUE(text);
  auto m1 = checkpoint::parse_mirror_manifest(*text, "");
  ASSERT_TRUE(m1) << describe(m1.error());
  EXPECT_EQ(m1->origin, url);
  EXPECT_EQ(m1->refs, mirror->origin_branches());
  EXPECT_EQ(m1->head, "refs/remotes/origin/main");
  EXPECT_EQ(m1->node, "a");
  // Within the interval: nothing, however often a checkpoint asks.
  auto again = checkpoint::publish_mirror(*os, url, a.s, 3600, t0 + 10);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->skipped);
  EXPECT_EQ(again->why, "recent");
  // After it, but origin did not move: nothing either.
  auto same = checkpoint::publish_mirror(*os, url, a.s, 3600, t0 + 3601);
  ASSERT_TRUE(same);
  EXPECT_TRUE(same->skipped);
  EXPECT_EQ(same->why, "unchanged");
  // Origin moved and A fetched: a second manifest adds one small pack.
  auto tip = commit_upstream("later.txt");
  ASSERT_FALSE(mirror->fetch());
  auto early = checkpoint::publish_mirror(*os, url, a.s, 3600, t0 + 100);
  ASSERT_TRUE(early);
  EXPECT_EQ(early->why, "recent");
  auto p2 = checkpoint::publish_mirror(*os, url, a.s, 3600, t0 + 3602);
  ASSERT_TRUE(p2) << describe(p2.error());
  ASSERT_FALSE(p2->skipped) << p2->why;
  EXPECT_EQ(p2->n, 2u);
  EXPECT_EQ(p2->packs, 2u);
  EXPECT_EQ(p2->packs_uploaded, 1u);
  auto m2 = checkpoint::latest_mirror_manifest(*os, url, "");
  ASSERT_TRUE(m2 && *m2);
  EXPECT_EQ((*m2)->n, 2u);
  EXPECT_EQ((*m2)->packs[0].pack.sha256, *sha);
  ASSERT_TRUE((*m2)->packs[0].idx.has_value());
  EXPECT_EQ((*m2)->packs[0].idx->sha256, *idx_sha);
  EXPECT_FALSE((*m2)->packs[1].idx.has_value()); // an increment: indexed
  // The new pack holds the new commit, its tree and blob, not the history.
  EXPECT_LT((*m2)->packs[1].pack.size, 2000u);
  bool names_tip = false;
  for (auto& [name, id] : (*m2)->refs)
    names_tip |= name == "refs/remotes/origin/main" && id == tip;
  EXPECT_TRUE(names_tip);
  // At max_packs, the next one is a single pack of everything.
  commit_upstream("third.txt");
  ASSERT_FALSE(mirror->fetch());
  auto p3 = checkpoint::publish_mirror(*os, url, a.s, 3600, t0 + 7300, 2);
  ASSERT_TRUE(p3) << describe(p3.error());
  EXPECT_EQ(p3->n, 3u);
  EXPECT_EQ(p3->packs, 1u);
  // A local-path origin publishes nothing (a cold node links it).
  auto local = checkpoint::publish_mirror(*os, upstream.string(), a.s, 3600,
                                          t0 + 9000);
  ASSERT_TRUE(local);
  EXPECT_TRUE(local->skipped);
  EXPECT_EQ(local->why, "a local origin");
  // gc keeps the newest two manifests and what they name; the first
  // manifest goes, and its clone pack once no kept one names it.
  auto c = checkpoint::gc(*os, 5, a.s, t0 + 10 * 3600 + 2 * 1'000'000'000, 0);
  ASSERT_TRUE(c) << describe(c.error());
  EXPECT_EQ(manifests(),
            (std::vector<std::string>{checkpoint::mirror_manifest_key(url, 2),
                                      checkpoint::mirror_manifest_key(url, 3)}));
  EXPECT_TRUE(os->get(checkpoint::blob_key(*sha))); // manifest 2 names it
}

TEST_F(MirrorPacks, a_cold_restore_seeds_its_mirror_and_fetches_only_the_difference) {
  node a{tmp.path() / "a"};
  auto rec = make_task(a);
  auto p = checkpoint::publish_mirror(*os, url, a.s, 3600, 1'800'000'000);
  ASSERT_TRUE(p && !p->skipped);
  auto t = checkpoint::take(*a.db, rec, *os, a.s);
  ASSERT_TRUE(t) << describe(t.error());
  commit_upstream("moved-on.txt");
  node b{tmp.path() / "b"};
  auto r = checkpoint::restore(*b.db, *os, {"t1", std::nullopt}, b.s);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE(r->cloned);
  EXPECT_TRUE(r->seeded);
  EXPECT_FALSE(r->offline);
  EXPECT_EQ(r->seed_n, 1u);
  EXPECT_GT(r->seed_objects, 120u);
  EXPECT_GE(r->fetched_objects, 3u);
  EXPECT_LE(r->fetched_objects, 4u);
  EXPECT_EQ(test::read_file(b.s.worktrees_dir / "t1" / "task.txt"),
            "the task's work\n");
  EXPECT_EQ(test::read_file(b.s.state_root / "t1" / "counter"), "7\n");
  auto bm = b.s.repos_dir / git::mirror_dir_name(url);
  EXPECT_EQ(test::git(bm, {"rev-parse", "refs/remotes/origin/main"}),
            test::git(upstream, {"rev-parse", "HEAD"}));
  test::git(bm, {"fsck", "--no-dangling", "--connectivity-only"});
}

TEST_F(MirrorPacks, a_cold_restore_works_from_the_packs_alone_when_origin_is_down) {
  node a{tmp.path() / "a"};
  auto rec = make_task(a);
  ASSERT_TRUE(checkpoint::publish_mirror(*os, url, a.s, 3600, 1'800'000'000));
  auto t = checkpoint::take(*a.db, rec, *os, a.s);
  ASSERT_TRUE(t) << describe(t.error());
  daemon.stop();
  // Without mirror packs, the same restore cannot clone.
  node c{tmp.path() / "c"};
  auto store_c = tmp.path() / "store-c";
  fs::create_directories(store_c);
  fs::copy(tmp.path() / "store", store_c, fs::copy_options::recursive);
  fs::remove_all(store_c / "mirrors");
  store::object_store_options o;
  o.url = "file://" + store_c.string();
  auto os_c = store::open_object_store(o);
  ASSERT_TRUE(os_c);
  auto rc = checkpoint::restore(*c.db, **os_c, {"t1", std::nullopt}, c.s);
  ASSERT_FALSE(rc);
  EXPECT_EQ(code_of(rc.error()), ec::repo_not_found) << describe(rc.error());
  EXPECT_FALSE(fs::exists(c.s.worktrees_dir / "t1"));
  // With them, it restores.
  node b{tmp.path() / "b"};
  auto r = checkpoint::restore(*b.db, *os, {"t1", std::nullopt}, b.s);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE(r->seeded);
  EXPECT_TRUE(r->offline);
  EXPECT_EQ(r->fetched_objects, 0u);
  EXPECT_EQ(test::read_file(b.s.worktrees_dir / "t1" / "task.txt"),
            "the task's work\n");
  auto bm = b.s.repos_dir / git::mirror_dir_name(url);
  test::git(bm, {"fsck", "--no-dangling", "--connectivity-only"});
}

TEST_F(MirrorPacks, refused_or_damaged_packs_cost_only_the_clone) {
  node a{tmp.path() / "a"};
  a.s.key = "fleet-key";
  auto rec = make_task(a);
  const int64_t t0 = 1'800'000'000;
  ASSERT_TRUE(checkpoint::publish_mirror(*os, url, a.s, 3600, t0));
  auto t = checkpoint::take(*a.db, rec, *os, a.s);
  ASSERT_TRUE(t) << describe(t.error());
  auto key1 = checkpoint::mirror_manifest_key(url, 1);
  auto good = *os->get(key1);
  // A tampered newer manifest (refs rewritten, signature kept) is skipped:
  // the newest one that checks is used.
  auto j = json::parse(good);
  j["n"] = 2;
  j["refs"]["refs/remotes/origin/main"] = std::string(40, 'b');
  ASSERT_FALSE(os->put(checkpoint::mirror_manifest_key(url, 2), j.dump()));
  auto latest = checkpoint::latest_mirror_manifest(*os, url, "fleet-key");
  ASSERT_TRUE(latest && *latest);
  EXPECT_EQ((*latest)->n, 1u);
  // Unsigned, with a key set: refused.
  auto unsigned_ = json::parse(good);
  unsigned_.erase("hmac");
  auto u = checkpoint::parse_mirror_manifest(unsigned_.dump(), "fleet-key");
  ASSERT_FALSE(u);
  EXPECT_EQ(code_of(u.error()), ec::checkpoint_unsigned);
  // A damaged pack: the restore clones instead, and says nothing is lost.
  auto m1 = checkpoint::parse_mirror_manifest(good, "fleet-key");
  ASSERT_TRUE(m1);
  auto pack_key = checkpoint::blob_key(m1->packs[0].pack.sha256);
  auto bytes = *os->get(pack_key);
  bytes[bytes.size() / 2] ^= 0x55;
  ASSERT_FALSE(os->put(pack_key, bytes));
  node b{tmp.path() / "b"};
  b.s.key = "fleet-key";
  auto r = checkpoint::restore(*b.db, *os, {"t1", std::nullopt}, b.s);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE(r->cloned);
  EXPECT_FALSE(r->seeded);
  EXPECT_EQ(test::read_file(b.s.worktrees_dir / "t1" / "task.txt"),
            "the task's work\n");
  // gc drops the refused manifest and keeps the one that checks.
  auto c = checkpoint::gc(*os, 5, b.s, t0 + 1'000'000'000, 3600);
  ASSERT_TRUE(c) << describe(c.error());
  EXPECT_EQ(manifests(), std::vector<std::string>{key1});
}
