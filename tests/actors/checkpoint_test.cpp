// Tests of actors/checkpoint.hpp below the CLI: manifests (HMAC, versions,
// limits, malformed members), full checkpoints every `full_every`, gc of
// what no kept chain names, on a real RocksDB and a file:// store.
#include "actors/checkpoint.hpp"

#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "actors/task_store.hpp"
#include "runtime/error.hpp"
#include "runtime/store/db.hpp"
#include "runtime/store/object_store.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace makima;

namespace {

// A scratch task (no repository) with a record, some output and files.
struct scratch_task {
  test::temp_dir tmp;
  std::unique_ptr<store::db> db;
  std::unique_ptr<store::object_store> os;
  checkpoint::settings s;
  task_record rec;

  scratch_task() {
    auto d = store::db::open(tmp.path() / "db", {});
    EXPECT_TRUE(d) << describe(d.error());
    db = std::move(*d);
    store::object_store_options o;
    o.url = "file://" + (tmp.path() / "store").string();
    auto st = store::open_object_store(o);
    EXPECT_TRUE(st) << describe(st.error());
    os = std::move(*st);
    s.repos_dir = tmp.path() / "repos";
    s.worktrees_dir = tmp.path() / "worktrees";
    s.state_root = tmp.path() / "state";
    s.work_dir = tmp.path() / "checkpoints";
    s.node = "test-node";
    rec.spec.id = "s1";
    rec.spec.argv = {"true"};
    rec.state = task_state::failed;
    rec.worktree = (s.worktrees_dir / "s1").string();
    rec.state_dir = (s.state_root / "s1").string();
    fs::create_directories(rec.worktree);
    fs::create_directories(rec.state_dir);
    write("w.txt", "worktree 0");
    store::write_batch b;
    put_record(b, rec, 0, "created");
    b.put_output("s1", 0, 1, "hello\n");
    EXPECT_FALSE(db->write(std::move(b)));
  }
  void write(const std::string& name, const std::string& text) {
    std::ofstream{fs::path{rec.worktree} / name, std::ios::trunc} << text;
  }
  checkpoint::taken take() {
    auto t = checkpoint::take(*db, rec, *os, s);
    EXPECT_TRUE(t) << describe(t.error());
    return t ? std::move(*t) : checkpoint::taken{};
  }
};

std::string signed_manifest(const std::string& key) {
  scratch_task t;
  t.s.key = key;
  return t.take().m.text;
}

} // namespace

TEST(CheckpointManifest, a_signature_is_checked_only_with_a_key) {
  auto text = signed_manifest("k1");
  ASSERT_FALSE(text.empty());
  EXPECT_TRUE(checkpoint::parse_manifest(text, "k1"));
  EXPECT_TRUE(checkpoint::parse_manifest(text, "")); // no key: not checked
  auto wrong = checkpoint::parse_manifest(text, "k2");
  EXPECT_EQ(code_of(wrong.error()), ec::checkpoint_bad_signature);
  // Any change to a signed member breaks it.
  auto j = json::parse(text);
  j["covers_seq"] = 99;
  auto changed = checkpoint::parse_manifest(j.dump(), "k1");
  EXPECT_EQ(code_of(changed.error()), ec::checkpoint_bad_signature);
  // Without the hmac member: unsigned.
  j = json::parse(text);
  j.erase("hmac");
  auto bare = checkpoint::parse_manifest(j.dump(), "k1");
  EXPECT_EQ(code_of(bare.error()), ec::checkpoint_unsigned);
}

TEST(CheckpointManifest, versions_sizes_and_members_are_checked) {
  auto text = signed_manifest("");
  auto j = json::parse(text);
  auto v2 = j;
  v2["version"] = 2;
  EXPECT_EQ(code_of(checkpoint::parse_manifest(v2.dump(), "").error()),
            ec::checkpoint_version);
  auto other = j;
  other["format"] = "something-else";
  EXPECT_EQ(code_of(checkpoint::parse_manifest(other.dump(), "").error()),
            ec::checkpoint_version);
  checkpoint::limits tiny;
  tiny.max_manifest = 100;
  EXPECT_EQ(code_of(checkpoint::parse_manifest(text, "", tiny).error()),
            ec::checkpoint_limit);
  EXPECT_EQ(code_of(checkpoint::parse_manifest("{not json", "").error()),
            ec::checkpoint_corrupt);
  auto no_blobs = j;
  no_blobs.erase("blobs");
  EXPECT_EQ(code_of(checkpoint::parse_manifest(no_blobs.dump(), "").error()),
            ec::checkpoint_corrupt);
  auto bad_digest = j;
  bad_digest["blobs"][0]["sha256"] = "../../etc/passwd";
  EXPECT_EQ(code_of(checkpoint::parse_manifest(bad_digest.dump(), "").error()),
            ec::checkpoint_corrupt);
  auto bad_role = j;
  bad_role["blobs"][0]["role"] = "shell-script";
  EXPECT_EQ(code_of(checkpoint::parse_manifest(bad_role.dump(), "").error()),
            ec::checkpoint_corrupt);
  auto bad_task = j;
  bad_task["task"] = "../x";
  EXPECT_EQ(code_of(checkpoint::parse_manifest(bad_task.dump(), "").error()),
            ec::checkpoint_corrupt);
  auto loop = j;
  loop["n"] = 3;
  loop["parent"] = 3;
  EXPECT_EQ(code_of(checkpoint::parse_manifest(loop.dump(), "").error()),
            ec::checkpoint_corrupt);
  // Unknown members are ignored (later versions may add some).
  auto extra = j;
  extra["future_member"] = {1, 2, 3};
  EXPECT_TRUE(checkpoint::parse_manifest(extra.dump(), ""));
}

TEST(CheckpointManifest, references) {
  auto a = checkpoint::parse_reference("t1");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->task, "t1");
  EXPECT_FALSE(a->n);
  auto b = checkpoint::parse_reference("t1/12");
  ASSERT_TRUE(b);
  EXPECT_EQ(*b->n, 12u);
  for (auto bad : {"", "t1/", "t1/0", "t1/x", "../t1", "t1/2/3", "/t1"})
    EXPECT_FALSE(checkpoint::parse_reference(bad)) << bad;
}

TEST(CheckpointChain, every_nth_checkpoint_is_full_and_gc_keeps_whole_chains) {
  scratch_task t;
  t.s.full_every = 3;
  std::vector<checkpoint::taken> taken;
  for (int i = 0; i < 7; ++i) {
    t.write("w.txt", "worktree " + std::to_string(i));
    taken.push_back(t.take());
  }
  // 1 full, 2-3 on it; 4 full, 5-6; 7 full.
  EXPECT_FALSE(taken[0].m.parent);
  EXPECT_EQ(*taken[1].m.parent, 1u);
  EXPECT_EQ(*taken[2].m.parent, 2u);
  EXPECT_FALSE(taken[3].m.parent);
  EXPECT_EQ(*taken[5].m.parent, 5u);
  EXPECT_FALSE(taken[6].m.parent);
  auto chain = checkpoint::read_chain(*t.os, {"s1", 6}, "");
  ASSERT_TRUE(chain) << describe(chain.error());
  ASSERT_EQ(chain->size(), 3u);
  EXPECT_EQ(chain->front().n, 4u);
  // Keep the newest 2: manifests 6 and 7, and 6's chain back to 4.
  auto c = checkpoint::gc(*t.os, 2, t.s, ::time(nullptr) + 7200);
  ASSERT_TRUE(c) << describe(c.error());
  EXPECT_EQ(c->manifests_kept, 4u);
  EXPECT_EQ(c->manifests_deleted, 3u);
  EXPECT_GT(c->blobs_deleted, 0u);
  auto ns = checkpoint::numbers(*t.os, "s1");
  ASSERT_TRUE(ns);
  EXPECT_EQ(*ns, (std::vector<uint64_t>{4, 5, 6, 7}));
  // What is left still verifies and restores.
  for (uint64_t n : {6, 7}) {
    auto v = checkpoint::verify(*t.os, {"s1", n}, t.s);
    EXPECT_TRUE(v) << n << ": " << describe(v.error());
  }
  scratch_task other;
  auto r = checkpoint::restore(*other.db, *t.os, {"s1", 6}, other.s);
  // `other` has its own task s1: the restore refuses to replace it.
  EXPECT_EQ(code_of(r.error()), ec::task_exists);
  store::write_batch del;
  del.delete_task("s1");
  ASSERT_FALSE(other.db->write(std::move(del)));
  fs::remove_all(other.rec.worktree);
  fs::remove_all(other.rec.state_dir);
  r = checkpoint::restore(*other.db, *t.os, {"s1", 6}, other.s);
  ASSERT_TRUE(r) << describe(r.error());
  std::ifstream in{fs::path{other.rec.worktree} / "w.txt"};
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(text, "worktree 5");
  EXPECT_EQ(r->rec.state, task_state::interrupted);
}
