// Seeding a new mirror from packs instead of a full clone (issue 11, cold
// nodes; git::seed): a clone from a network origin records its pack; a
// mirror seeded from it and its refs receives only the difference from
// origin, and still works when origin is unreachable; a seed that cannot
// be used is dropped for a clone. The origin is real: `git daemon` on
// 127.0.0.1 (tests/fixtures/git_daemon.hpp).
#include "runtime/git/git.hpp"

#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/error.hpp"
#include "tests/fixtures/command.hpp"
#include "tests/fixtures/git_daemon.hpp"
#include "tests/fixtures/git_repo.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace fs = std::filesystem;
using makima::code_of;
using makima::describe;
using makima::ec;
using makima::git::mirror;
using makima::test::git;
using makima::test::git_daemon;
using makima::test::make_repo;
using makima::test::temp_dir;
using makima::test::write_file;

namespace {

class GitSeed : public ::testing::Test {
protected:
  void SetUp() override {
    makima::git::init();
    makima::test::repo_spec spec;
    spec.files = 200;
    spec.commits = 20;
    upstream = make_repo(tmp / "served" / "origin", spec);
    url = daemon.url("origin");
  }

  mirror open(const std::string& repos, const makima::git::seed* sd = nullptr,
              makima::git::seed_report* rep = nullptr) {
    auto m = mirror::open(url, tmp / repos, false, {}, sd, rep);
    if (!m) {
      ADD_FAILURE() << describe(m.error());
      std::abort();
    }
    return std::move(*m);
  }

  // A seed from the clone record of `m`, its packs copied out (as a node
  // would download them from the store).
  makima::git::seed seed_of(mirror& m, bool with_index = true) {
    auto rec = m.clone_record();
    EXPECT_TRUE(rec.has_value());
    makima::git::seed sd;
    if (!rec)
      return sd;
    int i = 0;
    for (auto& p : rec->packs) {
      auto n = std::to_string(i++);
      makima::git::seed_pack sp{tmp / ("seed-" + n + ".pack"),
                                with_index ? tmp / ("seed-" + n + ".idx")
                                           : fs::path{}};
      fs::copy_file(p.pack, sp.pack, fs::copy_options::overwrite_existing);
      if (with_index)
        fs::copy_file(p.idx, sp.idx, fs::copy_options::overwrite_existing);
      sd.packs.push_back(sp);
    }
    sd.refs = rec->refs;
    sd.head = rec->head;
    return sd;
  }

  // Adds a commit of one new file to upstream's main.
  std::string commit_upstream(const std::string& name) {
    write_file(upstream / name, "new upstream content " + name + "\n");
    git(upstream, {"add", name});
    git(upstream, {"commit", "-q", "-m", "add " + name});
    return git(upstream, {"rev-parse", "HEAD"});
  }

  temp_dir tmp{"makima-git-seed-test"};
  git_daemon daemon{tmp / "served"};
  fs::path upstream;
  std::string url;
};

} // namespace

TEST_F(GitSeed, a_clone_from_a_network_origin_records_its_pack_and_refs) {
  auto a = open("a");
  auto rec = a.clone_record();
  ASSERT_TRUE(rec.has_value());
  ASSERT_EQ(rec->packs.size(), 1u);
  EXPECT_EQ(rec->packs[0].pack.parent_path(), a.path() / "objects" / "pack");
  EXPECT_EQ(rec->packs[0].idx.extension(), ".idx");
  EXPECT_FALSE(makima::git::verify_pack_checksum(rec->packs[0].pack));
  EXPECT_EQ(rec->refs, a.origin_branches());
  EXPECT_EQ(rec->head, "refs/remotes/origin/main");
  EXPECT_EQ(a.origin_head(), "refs/remotes/origin/main");
  // The branches as git sees them in the mirror.
  std::vector<std::pair<std::string, std::string>> want;
  for (auto b : {"feature", "main"})
    want.emplace_back(std::string{"refs/remotes/origin/"} + b,
                      git(upstream, {"rev-parse", b}));
  EXPECT_EQ(rec->refs, want);
  // A local-path origin is linked, not cloned: no record, nothing to seed.
  auto local = mirror::open(upstream.string(), tmp / "local");
  ASSERT_TRUE(local) << describe(local.error());
  EXPECT_FALSE(local->clone_record().has_value());
  EXPECT_TRUE(mirror::is_local(upstream.string()));
  EXPECT_FALSE(mirror::is_local(url));
}

TEST_F(GitSeed, a_seeded_mirror_receives_only_the_difference_from_origin) {
  auto a = open("a");
  // A pack that comes with its index is put in place as is; the same pack
  // without one (an increment) is indexed: both give the same mirror.
  auto unindexed = seed_of(a, false);
  makima::git::seed_report rep0;
  auto b0 = open("b0", &unindexed, &rep0);
  EXPECT_TRUE(rep0.used) << rep0.refused;
  auto sd = seed_of(a);
  auto cloned = git(a.path(), {"count-objects", "-v"});
  auto tip = commit_upstream("new-file.txt");
  makima::git::seed_report rep;
  auto b = open("b", &sd, &rep);
  EXPECT_TRUE(rep.used) << rep.refused;
  EXPECT_FALSE(rep.offline) << rep.fetch_error;
  EXPECT_TRUE(rep.refused.empty()) << rep.refused;
  // 200 files, 20 commits and their trees came from the seed; origin sent
  // the new commit, its trees (root) and the new blob.
  EXPECT_GT(rep.objects, 200u);
  EXPECT_EQ(rep.objects, rep0.objects);
  EXPECT_GE(rep.fetched_objects, 3u);
  EXPECT_LE(rep.fetched_objects, 4u);
  EXPECT_EQ(*b.resolve(""), tip);
  EXPECT_EQ(*b.resolve("feature"), git(upstream, {"rev-parse", "feature"}));
  EXPECT_EQ(b.origin_head(), "refs/remotes/origin/main");
  // Tags came with the fetch (the seed has branches only).
  EXPECT_EQ(git(b.path(), {"tag", "--list"}), "v1");
  git(b.path(), {"fsck", "--no-dangling", "--connectivity-only"});
  // A seeded mirror has no clone record of its own (it publishes on top of
  // the store's manifests, not from a clone).
  EXPECT_FALSE(b.clone_record().has_value());
  // And it works as a mirror: a worktree at the new tip.
  auto wt = b.add_worktree("t1", tmp / "wt" / "t1", tip, "makima/t1");
  ASSERT_TRUE(wt) << describe(wt.error());
  EXPECT_TRUE(fs::exists(tmp / "wt" / "t1" / "new-file.txt"));
}

TEST_F(GitSeed, a_seeded_mirror_stands_alone_when_origin_is_unreachable) {
  auto a = open("a");
  auto sd = seed_of(a);
  auto main_tip = git(upstream, {"rev-parse", "main"});
  daemon.stop();
  // Without a seed, a cold node cannot make a mirror at all.
  auto cold = mirror::open(url, tmp / "cold", false);
  ASSERT_FALSE(cold);
  EXPECT_EQ(code_of(cold.error()), ec::repo_not_found)
      << describe(cold.error());
  makima::git::seed_report rep;
  auto b = open("b", &sd, &rep);
  EXPECT_TRUE(rep.used);
  EXPECT_TRUE(rep.offline);
  EXPECT_FALSE(rep.fetch_error.empty());
  EXPECT_EQ(rep.fetched_objects, 0u);
  EXPECT_EQ(*b.resolve(""), main_tip);
  git(b.path(), {"fsck", "--no-dangling", "--connectivity-only"});
  auto wt = b.add_worktree("t1", tmp / "wt" / "t1", main_tip, "makima/t1");
  ASSERT_TRUE(wt) << describe(wt.error());
  // A later fetch fails as any fetch from an unreachable origin does.
  EXPECT_EQ(code_of(b.fetch()), ec::repo_not_found);
}

TEST_F(GitSeed, a_seed_that_cannot_be_used_is_dropped_and_the_mirror_cloned) {
  auto a = open("a");
  auto good = seed_of(a);
  struct variant {
    std::string name;
    std::function<void(makima::git::seed&)> spoil;
  };
  std::vector<variant> variants{
      {"a truncated pack",
       [&](makima::git::seed& sd) {
         auto size = fs::file_size(sd.packs[0].pack);
         fs::resize_file(sd.packs[0].pack, size / 2);
       }},
      {"a damaged pack, indexed here",
       [&](makima::git::seed& sd) {
         auto size = fs::file_size(sd.packs[0].pack);
         fs::resize_file(sd.packs[0].pack, size / 2);
         sd.packs[0].idx.clear();
       }},
      {"the index of another pack",
       [&](makima::git::seed& sd) {
         std::fstream f{sd.packs[0].idx,
                        std::ios::in | std::ios::out | std::ios::binary};
         f.seekp(-30, std::ios::end);
         f.put('\x5a');
       }},
      {"a ref to a commit the packs lack",
       [&](makima::git::seed& sd) {
         sd.refs.emplace_back("refs/remotes/origin/other",
                              std::string(40, 'a'));
       }},
      {"a ref outside refs/remotes/origin",
       [&](makima::git::seed& sd) {
         sd.refs.emplace_back("refs/heads/makima/x", sd.refs[0].second);
       }},
      {"a missing pack file",
       [&](makima::git::seed& sd) {
         sd.packs.push_back({tmp / "nope.pack", {}});
       }},
  };
  int i = 0;
  for (auto& v : variants) {
    auto sd = good;
    // Each variant spoils its own copy of the packs.
    for (auto& p : sd.packs)
      for (auto* f : {&p.pack, &p.idx}) {
        auto copy = *f;
        copy += "." + std::to_string(i);
        fs::copy_file(*f, copy, fs::copy_options::overwrite_existing);
        *f = copy;
      }
    v.spoil(sd);
    makima::git::seed_report rep;
    auto repos = "b" + std::to_string(i++);
    auto b = open(repos, &sd, &rep);
    EXPECT_FALSE(rep.used) << v.name;
    EXPECT_FALSE(rep.refused.empty()) << v.name;
    // Cloned instead: whole, with its own clone record, no leftovers.
    EXPECT_TRUE(b.clone_record().has_value()) << v.name;
    EXPECT_EQ(b.origin_branches(), a.origin_branches()) << v.name;
    git(b.path(), {"fsck", "--no-dangling", "--connectivity-only"});
    size_t entries = 0;
    for ([[maybe_unused]] auto& e : fs::directory_iterator(tmp / repos))
      ++entries;
    EXPECT_EQ(entries, 1u) << v.name << ": a temp dir was left";
  }
}

TEST_F(GitSeed, a_pack_damaged_on_disk_fails_its_checksum) {
  auto a = open("a");
  auto rec = a.clone_record();
  ASSERT_TRUE(rec && !rec->packs.empty());
  auto copy = tmp / "copy.pack";
  fs::copy_file(rec->packs[0].pack, copy);
  EXPECT_FALSE(makima::git::verify_pack_checksum(copy));
  {
    std::fstream f{copy, std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(static_cast<std::streamoff>(fs::file_size(copy) / 2));
    f.put('\x42');
  }
  auto err = makima::git::verify_pack_checksum(copy);
  EXPECT_EQ(code_of(err), ec::checkpoint_corrupt) << describe(err);
  EXPECT_NE(describe(err).find("damaged"), std::string::npos);
  EXPECT_EQ(code_of(makima::git::verify_pack_checksum(tmp / "none.pack")),
            ec::io_error);
}
