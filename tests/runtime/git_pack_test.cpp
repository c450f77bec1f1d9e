// Checkpoint git objects (issue 10, docs/checkpoint-format.md §3 git-pack,
// §4 steps 3-4): deterministic WIP snapshots, self-contained packs of the
// new objects, indexing them into a cold mirror and restoring the worktree
// there, checked against the git CLI.
#include "runtime/git/git.hpp"

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "runtime/error.hpp"
#include "tests/fixtures/command.hpp"
#include "tests/fixtures/git_repo.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace fs = std::filesystem;
using makima::code_of;
using makima::describe;
using makima::ec;
using makima::git::mirror;
using makima::test::git;
using makima::test::make_repo;
using makima::test::read_file;
using makima::test::temp_dir;
using makima::test::write_file;

namespace {

using makima::test::lines;

// The checkpoint signature: makima, time 0 +0000.
makima::git::signature wip_sig() {
  makima::git::signature sig;
  sig.time = 0;
  return sig;
}

// One entry of a worktree as the file system has it.
struct entry {
  char type = '?'; // f(ile), l(ink)
  unsigned perms = 0;
  std::string data; // file bytes or link target
  bool operator==(const entry& o) const {
    return type == o.type && perms == o.perms && data == o.data;
  }
};

std::ostream& operator<<(std::ostream& os, const entry& e) {
  return os << e.type << ' ' << std::oct << e.perms << std::dec << " '"
            << e.data << "'";
}

// Every entry below `dir` except `.git` and the names in `skip`.
std::map<std::string, entry> tree_of(const fs::path& dir,
                                     const std::set<std::string>& skip = {}) {
  std::map<std::string, entry> out;
  for (auto it = fs::recursive_directory_iterator(dir);
       it != fs::recursive_directory_iterator(); ++it) {
    auto rel = fs::relative(it->path(), dir).string();
    if (rel == ".git" || skip.count(rel) != 0) {
      if (it->is_directory() && !it->is_symlink())
        it.disable_recursion_pending();
      continue;
    }
    auto st = fs::symlink_status(it->path());
    entry e;
    e.perms = static_cast<unsigned>(st.permissions()) & 0777;
    if (fs::is_symlink(st)) {
      e.type = 'l';
      e.perms = 0;
      e.data = fs::read_symlink(it->path()).string();
    } else if (fs::is_directory(st)) {
      continue; // git records no directories (an emptied one stays behind)
    } else {
      e.type = 'f';
      e.data = read_file(it->path());
    }
    out[rel] = e;
  }
  return out;
}

std::set<std::string> dir_names(const fs::path& dir) {
  std::set<std::string> out;
  std::error_code err;
  for (auto it = fs::directory_iterator(dir, err);
       !err && it != fs::directory_iterator(); it.increment(err))
    out.insert(it->path().filename().string());
  return out;
}

// The object ids a pack holds, as `git verify-pack` lists them, after
// indexing it with `git index-pack` (no --fix-thin) in the fresh empty
// repository `scratch`: this fails on a thin pack.
std::set<std::string> cli_pack_objects(const fs::path& pack,
                                       const fs::path& scratch) {
  git(scratch.parent_path(), {"init", "-q", scratch.string()});
  auto copy = scratch / "check.pack";
  fs::copy_file(pack, copy, fs::copy_options::overwrite_existing);
  git(scratch, {"index-pack", copy.string()});
  std::set<std::string> out;
  for (auto& line : lines(git(
           scratch, {"verify-pack", "-v", (scratch / "check.idx").string()}))) {
    std::istringstream in{line};
    std::string id, type;
    in >> id >> type;
    if (id.size() == 40
        && (type == "commit" || type == "tree" || type == "blob"
            || type == "tag"))
      out.insert(id);
  }
  return out;
}

// The objects reachable from `tips` and from none of `hide`, computed from
// each commit's full `git rev-list --objects` (with negated commits, git
// only excludes what the boundary commits reach).
std::set<std::string> cli_objects(const fs::path& repo,
                                  const std::vector<std::string>& tips,
                                  const std::vector<std::string>& hide) {
  auto reachable = [&](const std::string& commit) {
    std::set<std::string> out;
    for (auto& line : lines(git(repo, {"rev-list", "--objects", commit})))
      out.insert(line.substr(0, 40));
    return out;
  };
  std::set<std::string> out;
  for (auto& t : tips)
    out.merge(reachable(t));
  for (auto& h : hide)
    for (auto& id : reachable(h))
      out.erase(id);
  return out;
}

void flip_byte(const fs::path& p, std::streamoff at) {
  std::fstream f{p, std::ios::in | std::ios::out | std::ios::binary};
  f.seekg(at);
  char c = 0;
  f.get(c);
  f.seekp(at);
  f.put(static_cast<char>(c ^ 0x5a));
}

class GitPack : public ::testing::Test {
protected:
  void SetUp() override {
    makima::git::init();
    upstream = make_repo(tmp / "upstream");
  }

  // A mirror of upstream in its own repos dir (a new one is cold: it has
  // none of the task's objects).
  mirror open_mirror(const std::string& repos) {
    auto m = mirror::open(upstream.string(), tmp / repos);
    if (!m) {
      ADD_FAILURE() << describe(m.error());
      std::abort();
    }
    return std::move(*m);
  }

  // Makes worktree t1 on branch makima/t1 with one task commit, then
  // uncommitted work of every kind; sets base, head and wip.
  void make_task(mirror& m) {
    base = *m.resolve("");
    dir = tmp / "work1" / "t1";
    auto wt = m.add_worktree("t1", dir, base, "makima/t1");
    ASSERT_TRUE(wt) << describe(wt.error());
    write_file(dir / "task/result.txt", "the task's committed work\n");
    auto c = m.commit_all(dir, "task commit", {});
    ASSERT_TRUE(c && c->has_value());
    head = **c;
    write_file(dir / "README.md", "modified, not committed\n");
    fs::remove(dir / "src/d0/e0/file0.txt");
    write_file(dir / "new/top.txt", "untracked\n");
    write_file(dir / "newdir/sub/deep.txt", "untracked, deep\n");
    write_file(dir / "newdir/bin.dat", std::string("\0\1\2\xff binary", 11));
    fs::permissions(dir / "src/d1/e0/file1.txt",
                    fs::perms::owner_exec | fs::perms::group_exec
                        | fs::perms::others_exec,
                    fs::perm_options::add);
    fs::create_symlink("src/d2/e0/file2.txt", dir / "link");
    fs::create_symlink("../nowhere", dir / "newdir/dangling");
    write_file(dir / ".gitignore", "*.log\n");
    write_file(dir / "build.log", "ignored, never captured\n");
    auto s = m.snapshot(dir, "refs/wip/t1", "makima wip t1", wip_sig());
    ASSERT_TRUE(s) << describe(s.error());
    wip = *s;
  }

  temp_dir tmp{"makima-git-pack-test"};
  fs::path upstream;
  fs::path dir;
  std::string base, head, wip;
};

class GitRestore : public GitPack {};

} // namespace

TEST_F(GitPack, signature_time_zero_gives_the_same_snapshot_id) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  EXPECT_NE(wip, head);
  EXPECT_EQ(git(m.path(), {"log", "-1",
                           "--format=%an <%ae> %at %ai|%cn %ct "
                           "%ci|%s",
                           wip}),
            "makima <makima@localhost> 0 1970-01-01 00:00:00 +0000|makima 0 "
            "1970-01-01 00:00:00 +0000|makima wip t1");
  // Unchanged worktree, same message: the same commit, whichever ref.
  auto again = m.snapshot(dir, "refs/wip/t1", "makima wip t1", wip_sig());
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(*again, wip);
  auto other = m.snapshot(dir, "refs/wip/other", "makima wip t1", wip_sig());
  ASSERT_TRUE(other) << describe(other.error());
  EXPECT_EQ(*other, wip);
  // Without a time, now is used.
  auto now = m.snapshot(dir, "refs/wip/now", "makima wip t1", {});
  ASSERT_TRUE(now);
  EXPECT_NE(*now, wip);
  EXPECT_NE(git(m.path(), {"log", "-1", "--format=%ct", *now}), "0");
  // commit_all honours the time too.
  makima::git::signature sig{"Robot", "robot@example.com", int64_t{86400}};
  auto c = m.commit_all(dir, "all", sig);
  ASSERT_TRUE(c && c->has_value());
  EXPECT_EQ(git(m.path(), {"log", "-1", "--format=%at %ct %an", **c}),
            "86400 86400 Robot");
}

TEST_F(GitPack, has_object) {
  auto m = open_mirror("repos");
  auto base = *m.resolve("");
  EXPECT_TRUE(m.has_object(base));
  auto tree = git(m.path(), {"rev-parse", base + "^{tree}"});
  EXPECT_TRUE(m.has_object(tree));
  EXPECT_FALSE(m.has_object(std::string(40, '0')));
  EXPECT_FALSE(m.has_object("not hex"));
  EXPECT_FALSE(m.has_object(base.substr(0, 12))); // full ids only
}

TEST_F(GitPack, pack_holds_exactly_the_new_objects_and_is_self_contained) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  auto out = tmp / "packs" / "p1.pack";
  auto p = m.write_pack({wip}, {base}, out);
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->size, fs::file_size(out));
  auto want = cli_objects(m.path(), {wip}, {base});
  EXPECT_EQ(p->objects, want.size());
  // Indexed by git without --fix-thin in an empty repository.
  auto got = cli_pack_objects(out, tmp / "scratch");
  EXPECT_EQ(got, want);
  EXPECT_TRUE(got.count(wip) && got.count(head));
  EXPECT_FALSE(got.count(base));
  // Nothing else in the output dir (no temporary file).
  EXPECT_EQ(dir_names(tmp / "packs"), std::set<std::string>{"p1.pack"});
  // The same objects give the same bytes (the same cas/ blob).
  auto again = m.write_pack({wip}, {base}, tmp / "packs" / "p1-again.pack");
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(read_file(tmp / "packs" / "p1-again.pack"), read_file(out));
}

TEST_F(GitPack, missing_hides_are_ignored_and_the_pack_holds_more) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  auto out = tmp / "all.pack";
  auto p = m.write_pack({wip}, {std::string(40, 'a'), "junk"}, out);
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->objects, cli_objects(m.path(), {wip}, {}).size());
}

TEST_F(GitPack, missing_tip_is_ref_not_found) {
  auto m = open_mirror("repos");
  auto base = *m.resolve("");
  for (auto tip : {std::string(40, 'b'), std::string("junk"), base.substr(0, 8),
                   git(m.path(), {"rev-parse", base + "^{tree}"})}) {
    auto p = m.write_pack({base, tip}, {}, tmp / "x.pack");
    ASSERT_FALSE(p) << tip;
    EXPECT_EQ(code_of(p.error()), ec::ref_not_found) << describe(p.error());
    EXPECT_FALSE(fs::exists(tmp / "x.pack"));
  }
}

TEST_F(GitPack, over_max_size_is_checkpoint_limit_and_leaves_no_file) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  fs::create_directories(tmp / "packs");
  auto out = tmp / "packs" / "big.pack";
  write_file(out, "an older file of that name");
  auto p = m.write_pack({wip}, {base}, out, 100);
  ASSERT_FALSE(p);
  EXPECT_EQ(code_of(p.error()), ec::checkpoint_limit) << describe(p.error());
  EXPECT_NE(describe(p.error()).find("100 bytes"), std::string::npos)
      << describe(p.error());
  EXPECT_TRUE(dir_names(tmp / "packs").empty());
}

TEST_F(GitPack, nothing_new_gives_an_empty_pack_that_indexes) {
  auto m = open_mirror("repos");
  auto base = *m.resolve("");
  auto out = tmp / "empty.pack";
  auto p = m.write_pack({base}, {base}, out);
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->objects, 0u);
  // A valid pack: header (12 bytes) and checksum (20), no objects.
  EXPECT_EQ(p->size, 32u);
  EXPECT_EQ(fs::file_size(out), 32u);
  EXPECT_EQ(read_file(out).substr(0, 4), "PACK");
  auto before = dir_names(m.path() / "objects" / "pack");
  auto err = m.index_pack(out);
  EXPECT_FALSE(err) << describe(err);
}

TEST_F(GitPack, damaged_pack_is_checkpoint_corrupt_and_adds_nothing) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  auto good = tmp / "good.pack";
  auto p = m.write_pack({wip}, {base}, good);
  ASSERT_TRUE(p) << describe(p.error());
  auto cold = open_mirror("repos2");
  auto pack_dir = cold.path() / "objects" / "pack";
  auto before = dir_names(pack_dir);
  auto mirror_before = dir_names(cold.path());
  auto size = static_cast<std::streamoff>(p->size);
  struct variant {
    std::string name;
    std::function<void(const fs::path&)> damage;
  };
  std::vector<variant> variants{
      {"truncated", [&](const fs::path& f) { fs::resize_file(f, size - 25); }},
      {"cut in half", [&](const fs::path& f) { fs::resize_file(f, size / 2); }},
      {"flipped in the data",
       [&](const fs::path& f) { flip_byte(f, size / 2); }},
      {"flipped in the header", [&](const fs::path& f) { flip_byte(f, 9); }},
      {"flipped in the checksum",
       [&](const fs::path& f) { flip_byte(f, size - 3); }},
      {"not a pack", [&](const fs::path& f) { write_file(f, "hello"); }},
  };
  for (auto& v : variants) {
    auto bad = tmp / "bad.pack";
    fs::copy_file(good, bad, fs::copy_options::overwrite_existing);
    v.damage(bad);
    auto err = cold.index_pack(bad);
    EXPECT_EQ(code_of(err), ec::checkpoint_corrupt)
        << v.name << ": " << describe(err);
    EXPECT_NE(describe(err).find("damaged"), std::string::npos)
        << describe(err);
    EXPECT_EQ(dir_names(pack_dir), before) << v.name;
    EXPECT_EQ(dir_names(cold.path()), mirror_before) << v.name;
    EXPECT_FALSE(cold.has_object(wip)) << v.name;
  }
  auto missing = cold.index_pack(tmp / "no-such.pack");
  EXPECT_EQ(code_of(missing), ec::io_error) << describe(missing);
  // The good one still indexes afterwards.
  auto err = cold.index_pack(good);
  ASSERT_FALSE(err) << describe(err);
  EXPECT_TRUE(cold.has_object(wip));
  EXPECT_TRUE(cold.has_object(head));
  EXPECT_EQ(git(cold.path(), {"cat-file", "-t", wip}), "commit");
  // git sees the new pack and every object of the WIP commit.
  EXPECT_EQ(git(cold.path(), {"rev-list", "--objects", wip, "^" + base}),
            git(m.path(), {"rev-list", "--objects", wip, "^" + base}));
  git(cold.path(), {"fsck", "--no-dangling", "--connectivity-only"});
}

TEST_F(GitRestore, restored_worktree_matches_the_original) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  auto pack = tmp / "p1.pack";
  auto p = m.write_pack({wip}, {base}, pack);
  ASSERT_TRUE(p) << describe(p.error());
  auto cold = open_mirror("repos2");
  EXPECT_FALSE(cold.has_object(wip));
  EXPECT_FALSE(cold.has_object(head));
  auto err = cold.index_pack(pack);
  ASSERT_FALSE(err) << describe(err);
  auto rdir = tmp / "work2" / "t1";
  auto wt = cold.restore_worktree("t1", rdir, "makima/t1", head, wip);
  ASSERT_TRUE(wt) << describe(wt.error());
  EXPECT_EQ(wt->path, rdir);
  EXPECT_EQ(wt->branch, "makima/t1");
  EXPECT_EQ(wt->base_commit, base);
  // Byte for byte, modes and symlink targets; the ignored file was not
  // captured.
  auto want = tree_of(dir, {"build.log"});
  auto got = tree_of(rdir);
  EXPECT_EQ(got, want);
  for (auto& [path, e] : want)
    if (got.count(path) == 0 || !(got[path] == e))
      ADD_FAILURE() << path << ": want " << e << ", got "
                    << (got.count(path) ? got[path] : entry{});
  EXPECT_FALSE(fs::exists(rdir / "build.log"));
  EXPECT_FALSE(fs::exists(rdir / "src/d0/e0/file0.txt"));
  EXPECT_EQ(fs::read_symlink(rdir / "link"), "src/d2/e0/file2.txt");
  EXPECT_NE(fs::status(rdir / "src/d1/e0/file1.txt").permissions()
                & fs::perms::owner_exec,
            fs::perms::none);
  // The same status as the original: the work is unstaged or untracked.
  auto status = git(rdir, {"status", "--porcelain"});
  EXPECT_EQ(status, git(dir, {"status", "--porcelain"}));
  auto st = lines(status);
  std::set<std::string> got_status(st.begin(), st.end());
  std::set<std::string> want_status{" M README.md",
                                    " D src/d0/e0/file0.txt",
                                    " M src/d1/e0/file1.txt",
                                    "?? .gitignore",
                                    "?? link",
                                    "?? new/",
                                    "?? newdir/"};
  EXPECT_EQ(got_status, want_status);
  // The task's commit is on the restored branch.
  EXPECT_EQ(git(rdir, {"symbolic-ref", "HEAD"}), "refs/heads/makima/t1");
  EXPECT_EQ(git(rdir, {"rev-parse", "HEAD"}), head);
  EXPECT_EQ(git(rdir, {"log", "--format=%s", "-2"}), "task commit\nchange 4");
  EXPECT_EQ(git(rdir, {"diff", "--stat", "HEAD", "--", "task"}), "");
  // A later snapshot of the restored worktree is the same WIP commit.
  auto again = cold.snapshot(rdir, "refs/wip/t1", "makima wip t1", wip_sig());
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(*again, wip);
  // The worktree is a normal one: open_worktree finds it.
  auto open = cold.open_worktree("t1", "makima/t1");
  ASSERT_TRUE(open) << describe(open.error());
  EXPECT_EQ(open->base_commit, base);
}

TEST_F(GitRestore, incremental_packs_hold_only_new_objects) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  auto wip1 = wip;
  auto p1 = m.write_pack({wip1}, {base}, tmp / "p1.pack");
  ASSERT_TRUE(p1) << describe(p1.error());
  write_file(dir / "new/top.txt", "untracked, changed\n");
  auto s = m.snapshot(dir, "refs/wip/t1", "makima wip t1", wip_sig());
  ASSERT_TRUE(s) << describe(s.error());
  auto wip2 = *s;
  ASSERT_NE(wip2, wip1);
  auto p2 = m.write_pack({wip2}, {base, wip1, head}, tmp / "p2.pack");
  ASSERT_TRUE(p2) << describe(p2.error());
  // One changed blob, the trees above it (new/, root) and the commit.
  EXPECT_EQ(p2->objects, 4u);
  auto want = cli_objects(m.path(), {wip2}, {base, wip1, head});
  EXPECT_EQ(want.size(), 4u);
  EXPECT_EQ(cli_pack_objects(tmp / "p2.pack", tmp / "scratch"), want);
  EXPECT_LT(p2->size, p1->size);
  // A cold mirror: pack 1 then pack 2, then restore at wip2.
  auto cold = open_mirror("repos3");
  ASSERT_FALSE(cold.index_pack(tmp / "p1.pack"));
  ASSERT_FALSE(cold.index_pack(tmp / "p2.pack"));
  auto rdir = tmp / "work3" / "t1";
  auto wt = cold.restore_worktree("t1", rdir, "makima/t1", head, wip2);
  ASSERT_TRUE(wt) << describe(wt.error());
  EXPECT_EQ(tree_of(rdir), tree_of(dir, {"build.log"}));
  EXPECT_EQ(read_file(rdir / "new/top.txt"), "untracked, changed\n");
  EXPECT_EQ(git(rdir, {"status", "--porcelain"}),
            git(dir, {"status", "--porcelain"}));
  // Pack 2 alone is self-contained (it indexes), though wip2 then lacks
  // what pack 1 carries.
  auto lone = open_mirror("repos4");
  ASSERT_FALSE(lone.index_pack(tmp / "p2.pack"));
  EXPECT_TRUE(lone.has_object(wip2));
  EXPECT_FALSE(lone.has_object(wip1));
}

TEST_F(GitRestore, failures_leave_nothing_behind) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  auto pack = tmp / "p1.pack";
  ASSERT_TRUE(m.write_pack({wip}, {base}, pack));
  auto cold = open_mirror("repos2");
  auto rdir = tmp / "work2" / "t1";
  // Objects not indexed yet: the commits are missing.
  auto missing = cold.restore_worktree("t1", rdir, "makima/t1", head, wip);
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), ec::ref_not_found)
      << describe(missing.error());
  ASSERT_FALSE(cold.index_pack(pack));
  auto bad_wip = cold.restore_worktree("t1", rdir, "makima/t1", head,
                                       std::string(40, 'c'));
  ASSERT_FALSE(bad_wip);
  EXPECT_EQ(code_of(bad_wip.error()), ec::ref_not_found);
  auto empty_wip = cold.restore_worktree("t1", rdir, "makima/t1", head, "");
  ASSERT_FALSE(empty_wip);
  EXPECT_EQ(code_of(empty_wip.error()), ec::ref_not_found);
  EXPECT_FALSE(fs::exists(tmp / "work2"));
  EXPECT_EQ(git(cold.path(), {"branch", "--list", "makima/*"}), "");
  EXPECT_FALSE(fs::exists(cold.path() / "worktrees" / "t1"));
  // An existing directory is refused and kept.
  fs::create_directories(rdir);
  write_file(rdir / "mine.txt", "keep\n");
  auto exists = cold.restore_worktree("t1", rdir, "makima/t1", head, wip);
  ASSERT_FALSE(exists);
  EXPECT_EQ(code_of(exists.error()), ec::io_error);
  EXPECT_EQ(read_file(rdir / "mine.txt"), "keep\n");
  EXPECT_EQ(git(cold.path(), {"branch", "--list", "makima/*"}), "");
  // Cancelled before it starts.
  makima::git::control ctl;
  ctl.cancel = std::make_shared<std::atomic<bool>>(true);
  auto rdir2 = tmp / "work3" / "t1";
  auto cancelled =
      cold.restore_worktree("t1", rdir2, "makima/t1", head, wip, ctl);
  ASSERT_FALSE(cancelled);
  EXPECT_EQ(code_of(cancelled.error()), ec::cancelled);
  EXPECT_FALSE(fs::exists(rdir2));
  // Then it works.
  auto ok = cold.restore_worktree("t1", rdir2, "makima/t1", head, wip);
  ASSERT_TRUE(ok) << describe(ok.error());
}

// Figures for docs: snapshot + write_pack, then index_pack + restore in a
// cold mirror, on a repository of ~1500 files with 60 changed or new ones.
TEST_F(GitRestore, timing_on_1500_files) {
  makima::test::repo_spec spec;
  spec.files = 1500;
  upstream = make_repo(tmp / "big", spec);
  auto m = open_mirror("repos");
  auto base = *m.resolve("");
  auto wdir = tmp / "work" / "b";
  ASSERT_TRUE(m.add_worktree("b", wdir, base, "makima/b"));
  for (int i = 0; i < 40; ++i)
    write_file(wdir / "src" / ("d" + std::to_string(i % 10))
                   / ("e" + std::to_string((i / 10) % 10))
                   / ("file" + std::to_string(i) + ".txt"),
               "changed " + std::to_string(i) + "\n");
  for (int i = 0; i < 20; ++i)
    write_file(wdir / "out" / ("new" + std::to_string(i) + ".txt"),
               std::string(4096, static_cast<char>('a' + i)));
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
  };
  auto t0 = clock::now();
  auto s = m.snapshot(wdir, "refs/wip/b", "makima wip b", wip_sig());
  ASSERT_TRUE(s) << describe(s.error());
  auto t1 = clock::now();
  auto p = m.write_pack({*s}, {base}, tmp / "b.pack");
  ASSERT_TRUE(p) << describe(p.error());
  auto t2 = clock::now();
  auto full = m.write_pack({*s}, {}, tmp / "full.pack");
  ASSERT_TRUE(full) << describe(full.error());
  auto t3 = clock::now();
  auto full2 = m.write_pack({*s}, {}, tmp / "full2.pack");
  ASSERT_TRUE(full2) << describe(full2.error());
  EXPECT_EQ(read_file(tmp / "full2.pack"), read_file(tmp / "full.pack"));
  auto t3b = clock::now();
  auto cold = open_mirror("repos2");
  auto t4 = clock::now();
  ASSERT_FALSE(cold.index_pack(tmp / "b.pack"));
  auto t5 = clock::now();
  auto rdir = tmp / "work2" / "b";
  auto wt = cold.restore_worktree("b", rdir, "makima/b", base, *s);
  ASSERT_TRUE(wt) << describe(wt.error());
  auto t6 = clock::now();
  // For comparison: a plain worktree of the base commit.
  auto plain = cold.add_worktree("c", tmp / "work2" / "c", base, "makima/c");
  ASSERT_TRUE(plain) << describe(plain.error());
  auto t7 = clock::now();
  EXPECT_EQ(tree_of(rdir), tree_of(wdir));
  EXPECT_EQ(p->objects, cli_objects(m.path(), {*s}, {base}).size());
  std::printf(
      "[ figures  ] 1500 files, 60 changed/new: snapshot %.1f ms, "
      "write_pack %.1f ms (%llu objects, %llu bytes); full pack "
      "%.1f ms (%llu objects, %llu bytes); index_pack %.1f ms, "
      "restore_worktree %.1f ms (add_worktree %.1f ms, cold mirror clone "
      "%.1f ms)\n",
      ms(t1 - t0), ms(t2 - t1), static_cast<unsigned long long>(p->objects),
      static_cast<unsigned long long>(p->size), ms(t3 - t2),
      static_cast<unsigned long long>(full->objects),
      static_cast<unsigned long long>(full->size), ms(t5 - t4), ms(t6 - t5),
      ms(t7 - t6), ms(t4 - t3b));
}

TEST_F(GitRestore, clean_worktree_restores_at_its_head) {
  auto m = open_mirror("repos");
  auto base = *m.resolve("");
  auto wdir = tmp / "work" / "c";
  ASSERT_TRUE(m.add_worktree("c", wdir, base, "makima/c"));
  write_file(wdir / "done.txt", "committed\n");
  auto c = m.commit_all(wdir, "task commit", {});
  ASSERT_TRUE(c && c->has_value());
  // Nothing uncommitted: the WIP commit is the branch head.
  auto s = m.snapshot(wdir, "refs/wip/c", "makima wip c", wip_sig());
  ASSERT_TRUE(s) << describe(s.error());
  EXPECT_EQ(*s, **c);
  auto p = m.write_pack({*s}, {base}, tmp / "c.pack");
  ASSERT_TRUE(p) << describe(p.error());
  EXPECT_EQ(p->objects, 3u); // commit, root tree, done.txt
  auto cold = open_mirror("repos2");
  ASSERT_FALSE(cold.index_pack(tmp / "c.pack"));
  auto rdir = tmp / "work2" / "c";
  auto wt = cold.restore_worktree("c", rdir, "makima/c", **c, *s);
  ASSERT_TRUE(wt) << describe(wt.error());
  EXPECT_EQ(tree_of(rdir), tree_of(wdir));
  EXPECT_EQ(git(rdir, {"status", "--porcelain"}), "");
  EXPECT_EQ(git(rdir, {"rev-parse", "HEAD"}), **c);
}

// A second snapshot of a worktree full of untracked files writes no object
// the mirror has (libgit2's add_all would write each blob to a temporary
// file again), and a file whose new content is an existing blob, or whose
// only change is its mode, is still captured exactly.
TEST_F(GitPack,
       an_unchanged_snapshot_writes_no_object_and_reused_blobs_are_exact) {
  auto m = open_mirror("repos");
  ASSERT_NO_FATAL_FAILURE(make_task(m));
  for (int i = 0; i < 100; ++i)
    write_file(dir / "many" / ("u" + std::to_string(i) + ".txt"),
               "untracked " + std::to_string(i) + "\n");
  auto first = m.snapshot(dir, "refs/wip/t1", "makima wip t1", wip_sig());
  ASSERT_TRUE(first) << describe(first.error());
  auto objects = [&] {
    size_t n = 0;
    for (auto& e : fs::recursive_directory_iterator(m.path() / "objects"))
      if (e.is_regular_file())
        ++n;
    return n;
  };
  auto before = objects();
  auto again = m.snapshot(dir, "refs/wip/t1", "makima wip t1", wip_sig());
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(*again, *first);
  EXPECT_EQ(objects(), before);
  // Content that exists as a blob already (another file's), and a mode
  // change of an untouched file: both through the no-write path.
  write_file(dir / "README.md", read_file(dir / "many/u7.txt"));
  fs::permissions(dir / "src/d3/e0/file3.txt", fs::perms::owner_exec,
                  fs::perm_options::add);
  auto third = m.snapshot(dir, "refs/wip/t1", "makima wip t1", wip_sig());
  ASSERT_TRUE(third) << describe(third.error());
  EXPECT_EQ(git(m.path(), {"cat-file", "-p", *third + ":README.md"}),
            "untracked 7");
  auto ls = git(m.path(), {"ls-tree", "-r", *third, "src/d3/e0/file3.txt"});
  EXPECT_EQ(ls.rfind("100755 ", 0), 0u) << ls;
  // The tree equals what the git CLI stages from the same worktree.
  auto tree = git(m.path(), {"rev-parse", *third + "^{tree}"});
  auto env_index = "GIT_INDEX_FILE=" + (tmp / "cli-index").string();
  auto r = makima::test::sh(
      "cd '" + dir.string() + "' && " + env_index + " git read-tree HEAD && "
      + env_index + " git add -A && " + env_index + " git write-tree");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto cli_tree = r.out.substr(0, r.out.find('\n'));
  EXPECT_EQ(cli_tree, tree);
}
