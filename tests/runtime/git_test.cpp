// Tests of the libgit2 wrapper, checked against the git CLI.
#include "runtime/git/git.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "runtime/error.hpp"
#include "tests/fixtures/git_repo.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace fs = std::filesystem;
using makima::code_of;
using makima::ec;
using makima::test::git;
using makima::test::make_bare_repo;
using makima::test::make_repo;
using makima::test::read_file;
using makima::test::temp_dir;
using makima::test::write_file;

namespace {

using makima::test::lines;

// All files below `dir`, relative, excluding the ".git" link.
std::set<std::string> files_under(const fs::path& dir) {
  std::set<std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir);
       it != fs::recursive_directory_iterator(); ++it) {
    if (it->path().filename() == ".git") {
      if (it->is_directory())
        it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file())
      out.insert(fs::relative(it->path(), dir).string());
  }
  return out;
}

// The resolved commit, or "<error: ...>" so failures print instead of crash.
std::string resolved(makima::git::mirror& m, const std::string& ref) {
  auto r = m.resolve(ref);
  return r ? *r : "<error: " + makima::describe(r.error()) + ">";
}

class git_test : public ::testing::Test {
protected:
  void SetUp() override {
    makima::git::init();
    upstream = make_repo(tmp / "upstream");
    repos = tmp / "repos";
  }

  makima::git::mirror open_mirror() {
    auto m = makima::git::mirror::open(upstream.string(), repos);
    if (!m)
      ADD_FAILURE() << makima::describe(m.error());
    return std::move(*m);
  }

  temp_dir tmp{"makima-git-test"};
  fs::path upstream;
  fs::path repos;
};

} // namespace

TEST(git_names, canonical_url) {
  temp_dir tmp;
  auto dir = tmp / "a";
  fs::create_directories(dir);
  auto with_dots = (tmp / "a" / ".." / "a" / "").string();
  EXPECT_EQ(makima::git::canonical_url(with_dots),
            fs::weakly_canonical(dir).string());
  EXPECT_EQ(makima::git::canonical_url("file:///x/y.git"), "file:///x/y.git");
  EXPECT_EQ(makima::git::canonical_url("https://example.com/o/r.git"),
            "https://example.com/o/r.git");
  EXPECT_EQ(makima::git::canonical_url("git@example.com:o/r.git"),
            "git@example.com:o/r.git");
}

TEST(git_names, mirror_dir_name) {
  auto n = makima::git::mirror_dir_name("https://example.com/o/my repo.git");
  // "<sanitized last component>-<16 hex>.git"
  ASSERT_EQ(n.size(), std::string("my_repo-").size() + 16 + 4) << n;
  EXPECT_EQ(n.substr(0, 8), "my_repo-");
  EXPECT_EQ(n.substr(n.size() - 4), ".git");
  EXPECT_NE(n,
            makima::git::mirror_dir_name("https://example.com/p/my repo.git"));
  EXPECT_EQ(n,
            makima::git::mirror_dir_name("https://example.com/o/my repo.git"));
  // The same local directory spelled two ways maps to one mirror.
  temp_dir tmp;
  fs::create_directories(tmp / "r");
  EXPECT_EQ(makima::git::mirror_dir_name((tmp / "r").string()),
            makima::git::mirror_dir_name((tmp / "r" / ".." / "r").string()));
}

TEST_F(git_test, clone_creates_mirror_with_origin_head) {
  auto m = open_mirror();
  EXPECT_EQ(m.path(), repos / makima::git::mirror_dir_name(upstream.string()));
  EXPECT_EQ(git(m.path(), {"rev-parse", "--is-bare-repository"}), "true");
  EXPECT_EQ(git(m.path(), {"symbolic-ref", "refs/remotes/origin/HEAD"}),
            "refs/remotes/origin/main");
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/remotes/origin/main"}),
            git(upstream, {"rev-parse", "main"}));
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/remotes/origin/feature"}),
            git(upstream, {"rev-parse", "feature"}));
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/tags/v1^{commit}"}),
            git(upstream, {"rev-parse", "v1^{commit}"}));
  // No temp dirs left behind.
  size_t entries = 0;
  for (auto& e : fs::directory_iterator(repos)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1u);
}

TEST_F(git_test, default_branch_other_than_main) {
  auto other = make_repo(tmp / "trunk-repo", {10, 1, "trunk", {}, ""});
  auto m = makima::git::mirror::open(other.string(), repos);
  ASSERT_TRUE(m) << makima::describe(m.error());
  EXPECT_EQ(git(m->path(), {"symbolic-ref", "refs/remotes/origin/HEAD"}),
            "refs/remotes/origin/trunk");
  auto c = m->resolve("");
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, git(other, {"rev-parse", "trunk"}));
}

TEST_F(git_test, second_open_fetches_new_commits) {
  { auto m = open_mirror(); }
  write_file(upstream / "new.txt", "new\n");
  git(upstream, {"add", "-A"});
  git(upstream, {"commit", "-q", "-m", "new"});
  git(upstream, {"branch", "-D", "feature"});
  auto m = open_mirror();
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/remotes/origin/main"}),
            git(upstream, {"rev-parse", "main"}));
  // Prune removed the deleted branch.
  EXPECT_EQ(git(m.path(), {"for-each-ref", "refs/remotes/origin/feature"}), "");
  auto c = m.resolve("");
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, git(upstream, {"rev-parse", "main"}));
}

TEST_F(git_test, open_without_fetch_keeps_old_state) {
  auto old = git(upstream, {"rev-parse", "main"});
  { auto m = open_mirror(); }
  write_file(upstream / "new.txt", "new\n");
  git(upstream, {"add", "-A"});
  git(upstream, {"commit", "-q", "-m", "new"});
  auto m = makima::git::mirror::open(upstream.string(), repos, false);
  ASSERT_TRUE(m);
  EXPECT_EQ(resolved(*m, "main"), old);
  ASSERT_FALSE(m->fetch());
  EXPECT_EQ(resolved(*m, "main"), git(upstream, {"rev-parse", "main"}));
}

TEST_F(git_test, broken_mirror_is_recreated) {
  auto path = repos / makima::git::mirror_dir_name(upstream.string());
  fs::create_directories(path / "objects");
  write_file(path / "junk", "half-created\n");
  auto m = open_mirror();
  EXPECT_EQ(m.path(), path);
  EXPECT_FALSE(fs::exists(path / "junk"));
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/remotes/origin/main"}),
            git(upstream, {"rev-parse", "main"}));
}

TEST_F(git_test, resolve) {
  auto m = open_mirror();
  auto main_sha = git(upstream, {"rev-parse", "main"});
  EXPECT_EQ(resolved(m, ""), main_sha);
  EXPECT_EQ(resolved(m, "main"), main_sha);
  EXPECT_EQ(resolved(m, "feature"), git(upstream, {"rev-parse", "feature"}));
  EXPECT_EQ(resolved(m, "v1"), git(upstream, {"rev-parse", "v1^{commit}"}));
  auto first = git(upstream, {"rev-list", "--max-parents=0", "main"});
  EXPECT_EQ(resolved(m, first), first);
  EXPECT_EQ(resolved(m, first.substr(0, 8)), first);
  EXPECT_EQ(resolved(m, "main~1"), git(upstream, {"rev-parse", "main~1"}));
  auto bad = m.resolve("no-such-branch");
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), ec::ref_not_found);
  EXPECT_NE(makima::describe(bad.error()).find("no-such-branch"),
            std::string::npos);
  auto missing_sha = m.resolve(std::string(40, 'a'));
  ASSERT_FALSE(missing_sha);
  EXPECT_EQ(code_of(missing_sha.error()), ec::ref_not_found);
}

TEST_F(git_test, missing_path_is_repo_not_found) {
  auto m = makima::git::mirror::open((tmp / "nope").string(), repos);
  ASSERT_FALSE(m);
  EXPECT_EQ(code_of(m.error()), ec::repo_not_found);
  EXPECT_NE(makima::describe(m.error()).find("nope"), std::string::npos);
}

TEST_F(git_test, directory_that_is_not_a_repo_is_repo_not_found) {
  fs::create_directories(tmp / "plain");
  write_file(tmp / "plain" / "x.txt", "x");
  auto m = makima::git::mirror::open((tmp / "plain").string(), repos);
  ASSERT_FALSE(m);
  EXPECT_EQ(code_of(m.error()), ec::repo_not_found);
  // Nothing left behind in the repos dir.
  EXPECT_TRUE(fs::is_empty(repos));
}

TEST_F(git_test, unreachable_url_is_repo_not_found) {
  auto m =
      makima::git::mirror::open("file://" + (tmp / "nope").string(), repos);
  ASSERT_FALSE(m);
  EXPECT_EQ(code_of(m.error()), ec::repo_not_found);
}

TEST_F(git_test, add_worktree_checks_out_the_commit) {
  auto m = open_mirror();
  auto commit = resolved(m, "");
  auto dir = tmp / "work" / "t1";
  auto wt = m.add_worktree("t1", dir, commit, "makima/t1");
  ASSERT_TRUE(wt) << makima::describe(wt.error());
  EXPECT_EQ(wt->branch, "makima/t1");
  EXPECT_EQ(wt->base_commit, commit);
  EXPECT_EQ(fs::weakly_canonical(wt->path), fs::weakly_canonical(dir));
  auto listed = lines(git(upstream, {"ls-tree", "-r", "--name-only", commit}));
  std::set<std::string> expected(listed.begin(), listed.end());
  EXPECT_EQ(files_under(dir), expected);
  EXPECT_FALSE(fs::exists(dir / "doomed.txt"));
  EXPECT_EQ(read_file(dir / "src/d3/e0/file3.txt"), "content of file 3\n");
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/heads/makima/t1"}), commit);
  EXPECT_EQ(git(dir, {"rev-parse", "HEAD"}), commit);
  EXPECT_EQ(git(dir, {"symbolic-ref", "HEAD"}), "refs/heads/makima/t1");
  EXPECT_EQ(git(dir, {"status", "--porcelain"}), "");
}

TEST_F(git_test, add_worktree_at_older_commit_includes_deleted_file) {
  auto m = open_mirror();
  auto first = resolved(m, "v1");
  auto dir = tmp / "work" / "old";
  auto wt = m.add_worktree("old", dir, first, "makima/old");
  ASSERT_TRUE(wt) << makima::describe(wt.error());
  EXPECT_TRUE(fs::exists(dir / "doomed.txt"));
}

TEST_F(git_test, add_worktree_applies_attributes) {
  // Filters are skipped only when no attributes can apply: a nested
  // .gitattributes asking for CRLF must still be honoured.
  write_file(upstream / "src/d1/.gitattributes", "*.txt text eol=crlf\n");
  git(upstream, {"add", "-A"});
  git(upstream, {"commit", "-q", "-m", "attributes"});
  auto m = open_mirror();
  auto dir = tmp / "work" / "attr";
  auto wt = m.add_worktree("attr", dir, resolved(m, ""), "makima/attr");
  ASSERT_TRUE(wt) << makima::describe(wt.error());
  EXPECT_EQ(read_file(dir / "src/d1/e0/file1.txt"), "content of file 1\r\n");
  EXPECT_EQ(read_file(dir / "src/d2/e0/file2.txt"), "content of file 2\n");
  EXPECT_EQ(git(dir, {"status", "--porcelain"}), "");
}

TEST_F(git_test, add_worktree_on_existing_dir_fails_without_leftovers) {
  auto m = open_mirror();
  auto dir = tmp / "work" / "exists";
  fs::create_directories(dir);
  auto wt = m.add_worktree("exists", dir, resolved(m, ""), "makima/exists");
  ASSERT_FALSE(wt);
  EXPECT_EQ(git(m.path(), {"for-each-ref", "refs/heads/"}), "");
  EXPECT_FALSE(fs::exists(m.path() / "worktrees" / "exists"));
  EXPECT_TRUE(fs::exists(dir)); // not ours: untouched
  // Bad name and bad commit fail cleanly too.
  EXPECT_FALSE(
      m.add_worktree("a/b", tmp / "work" / "ab", resolved(m, ""), "makima/ab"));
  auto bad = m.add_worktree("bad", tmp / "work" / "bad", std::string(40, 'b'),
                            "makima/bad");
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), ec::ref_not_found);
  EXPECT_EQ(git(m.path(), {"for-each-ref", "refs/heads/"}), "");
  EXPECT_FALSE(fs::exists(tmp / "work" / "bad"));
}

TEST_F(git_test, open_worktree) {
  auto m = open_mirror();
  auto commit = resolved(m, "");
  auto dir = tmp / "work" / "t2";
  ASSERT_TRUE(m.add_worktree("t2", dir, commit, "makima/t2"));
  auto wt = m.open_worktree("t2", "makima/t2");
  ASSERT_TRUE(wt) << makima::describe(wt.error());
  EXPECT_EQ(fs::weakly_canonical(wt->path), fs::weakly_canonical(dir));
  EXPECT_EQ(wt->branch, "makima/t2");
  EXPECT_EQ(wt->base_commit, commit);
  // Reopening a mirror object works the same.
  auto m2 = makima::git::mirror::open(upstream.string(), repos, false);
  ASSERT_TRUE(m2);
  EXPECT_TRUE(m2->open_worktree("t2", "makima/t2"));
  EXPECT_EQ(code_of(m.open_worktree("nope", "makima/nope").error()),
            ec::worktree_missing);
  fs::remove_all(dir);
  auto gone = m.open_worktree("t2", "makima/t2");
  ASSERT_FALSE(gone);
  EXPECT_EQ(code_of(gone.error()), ec::worktree_missing);
  // The name can be reused once the directory is gone.
  EXPECT_TRUE(m.remove_worktree("t2", "makima/t2") == caf::error{});
  auto again = m.add_worktree("t2", dir, commit, "makima/t2");
  EXPECT_TRUE(again) << makima::describe(again.error());
}

TEST_F(git_test, commit_all) {
  auto m = open_mirror();
  auto base = resolved(m, "");
  auto dir = tmp / "work" / "c";
  ASSERT_TRUE(m.add_worktree("c", dir, base, "makima/c"));
  write_file(dir / "README.md", "changed\n");
  fs::remove(dir / "src/d0/e0/file0.txt");
  write_file(dir / "added/new.txt", "new file\n");
  write_file(dir / ".gitignore", "*.log\n");
  write_file(dir / "build.log", "ignored\n");
  auto c = m.commit_all(dir, "task work", {"Robot", "robot@example.com"});
  ASSERT_TRUE(c) << makima::describe(c.error());
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/heads/makima/c"}), **c);
  EXPECT_EQ(git(dir, {"rev-parse", "HEAD~1"}), base);
  auto status = lines(git(dir, {"show", "--name-status", "--format=", **c}));
  std::set<std::string> got(status.begin(), status.end());
  std::set<std::string> want{"M\tREADME.md", "D\tsrc/d0/e0/file0.txt",
                             "A\tadded/new.txt", "A\t.gitignore"};
  EXPECT_EQ(got, want);
  EXPECT_EQ(git(dir, {"log", "-1", "--format=%an <%ae>|%s", **c}),
            "Robot <robot@example.com>|task work");
  // Only the ignored file remains untracked; the index matches HEAD.
  EXPECT_EQ(git(dir, {"status", "--porcelain"}), "");
  // Nothing more to commit.
  auto none = m.commit_all(dir, "again", {});
  ASSERT_TRUE(none) << makima::describe(none.error());
  EXPECT_FALSE(none->has_value());
}

TEST_F(git_test, commit_all_with_no_changes) {
  auto m = open_mirror();
  auto dir = tmp / "work" / "n";
  ASSERT_TRUE(m.add_worktree("n", dir, resolved(m, ""), "makima/n"));
  auto none = m.commit_all(dir, "nothing", {});
  ASSERT_TRUE(none) << makima::describe(none.error());
  EXPECT_FALSE(none->has_value());
  auto missing = m.commit_all(tmp / "work" / "missing", "x", {});
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), ec::worktree_missing);
}

TEST_F(git_test, snapshot_leaves_the_worktree_alone) {
  auto m = open_mirror();
  auto base = resolved(m, "");
  auto dir = tmp / "work" / "s";
  ASSERT_TRUE(m.add_worktree("s", dir, base, "makima/s"));
  // Staged changes (the index differs from HEAD), one of them modified
  // again after staging, plus unstaged, deleted, untracked and ignored files.
  write_file(dir / ".gitignore", "*.log\n");
  write_file(dir / "src/d1/e0/file1.txt", "staged\n");
  git(dir, {"add", ".gitignore", "src/d1/e0/file1.txt"});
  write_file(dir / "src/d1/e0/file1.txt", "staged, then changed\n");
  write_file(dir / "README.md", "changed\n");
  fs::remove(dir / "src/d0/e0/file0.txt");
  write_file(dir / "added/new.txt", "new file\n");
  write_file(dir / "build.log", "ignored\n");
  // --no-optional-locks: a plain `git status` may refresh the index file.
  auto status = [&] {
    return git(dir, {"--no-optional-locks", "status", "--porcelain"});
  };
  auto admin = m.path() / "worktrees" / "s";
  auto status_before = status();
  auto index_before = read_file(admin / "index");
  ASSERT_NE(status_before, "");
  auto snap =
      m.snapshot(dir, "refs/wip/s", "makima wip s", {"Robot", "r@example.com"});
  ASSERT_TRUE(snap) << makima::describe(snap.error());
  EXPECT_EQ(status(), status_before);
  EXPECT_EQ(read_file(admin / "index"), index_before);
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/wip/s"}), *snap);
  EXPECT_EQ(git(m.path(), {"rev-parse", *snap + "^"}), base);
  auto changes =
      lines(git(m.path(), {"show", "--name-status", "--format=", *snap}));
  std::set<std::string> got(changes.begin(), changes.end());
  std::set<std::string> want{"M\tREADME.md", "M\tsrc/d1/e0/file1.txt",
                             "D\tsrc/d0/e0/file0.txt", "A\tadded/new.txt",
                             "A\t.gitignore"};
  EXPECT_EQ(got, want);
  // The worktree's content wins over the staged one.
  EXPECT_EQ(git(m.path(), {"show", *snap + ":src/d1/e0/file1.txt"}),
            "staged, then changed");
  EXPECT_EQ(git(m.path(), {"log", "-1", "--format=%an <%ae>|%s", *snap}),
            "Robot <r@example.com>|makima wip s");
  // HEAD and the branch did not move.
  EXPECT_EQ(git(dir, {"rev-parse", "HEAD"}), base);
  EXPECT_EQ(git(dir, {"symbolic-ref", "HEAD"}), "refs/heads/makima/s");
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/heads/makima/s"}), base);
  // No temporary index left behind.
  for (auto& e : fs::directory_iterator(admin))
    EXPECT_EQ(e.path().filename().string().find("makima-wip"),
              std::string::npos)
        << e.path();
  // A later snapshot moves the ref.
  write_file(dir / "added/new.txt", "newer\n");
  auto again = m.snapshot(dir, "refs/wip/s", "makima wip s", {});
  ASSERT_TRUE(again) << makima::describe(again.error());
  EXPECT_NE(*again, *snap);
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/wip/s"}), *again);
  EXPECT_EQ(git(m.path(), {"show", *again + ":added/new.txt"}), "newer");
}

TEST_F(git_test, snapshot_with_no_changes_points_at_head) {
  auto m = open_mirror();
  auto base = resolved(m, "");
  auto dir = tmp / "work" / "sn";
  ASSERT_TRUE(m.add_worktree("sn", dir, base, "makima/sn"));
  auto snap = m.snapshot(dir, "refs/wip/sn", "makima wip sn", {});
  ASSERT_TRUE(snap) << makima::describe(snap.error());
  EXPECT_EQ(*snap, base);
  EXPECT_EQ(git(m.path(), {"rev-parse", "refs/wip/sn"}), base);
  EXPECT_EQ(git(dir, {"status", "--porcelain"}), "");
  // Errors: missing worktree, invalid ref name.
  auto missing = m.snapshot(tmp / "work" / "missing", "refs/wip/x", "x", {});
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), ec::worktree_missing);
  auto bad = m.snapshot(dir, "refs/wip/a..b", "x", {});
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), ec::invalid_argument);
}

TEST_F(git_test, push_to_bare_repo) {
  auto m = open_mirror();
  auto bare = make_bare_repo(tmp / "bare.git");
  auto dir = tmp / "work" / "p";
  ASSERT_TRUE(m.add_worktree("p", dir, resolved(m, ""), "makima/p"));
  write_file(dir / "pushed.txt", "pushed\n");
  auto c = m.commit_all(dir, "to push", {});
  ASSERT_TRUE(c && c->has_value());
  auto err = m.push("makima/p", bare.string());
  ASSERT_FALSE(err) << makima::describe(err);
  EXPECT_EQ(git(bare, {"log", "-1", "--format=%H|%s", "makima/p"}),
            **c + "|to push");
  // Pushing again (no change) is fine; so is a fast-forward.
  EXPECT_FALSE(m.push("makima/p", bare.string()));
  write_file(dir / "pushed.txt", "pushed twice\n");
  auto c2 = m.commit_all(dir, "second", {});
  ASSERT_TRUE(c2 && c2->has_value());
  EXPECT_FALSE(m.push("makima/p", bare.string()));
  EXPECT_EQ(git(bare, {"rev-parse", "makima/p"}), **c2);
}

TEST_F(git_test, non_fast_forward_push_is_rejected) {
  auto m = open_mirror();
  auto bare = make_bare_repo(tmp / "bare.git");
  auto base = resolved(m, "");
  // Someone else pushed a different commit to the same branch.
  git(upstream, {"push", "-q", bare.string(), "feature:refs/heads/makima/r"});
  auto dir = tmp / "work" / "r";
  ASSERT_TRUE(m.add_worktree("r", dir, base, "makima/r"));
  write_file(dir / "mine.txt", "mine\n");
  ASSERT_TRUE(m.commit_all(dir, "mine", {}));
  auto err = m.push("makima/r", bare.string());
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), ec::push_rejected) << makima::describe(err);
  EXPECT_EQ(git(bare, {"rev-parse", "makima/r"}),
            git(upstream, {"rev-parse", "feature"}));
}

TEST_F(git_test, push_to_missing_repo_is_repo_not_found) {
  auto m = open_mirror();
  auto dir = tmp / "work" / "x";
  ASSERT_TRUE(m.add_worktree("x", dir, resolved(m, ""), "makima/x"));
  auto err = m.push("makima/x", (tmp / "nope.git").string());
  EXPECT_EQ(code_of(err), ec::repo_not_found) << makima::describe(err);
}

TEST_F(git_test, remove_worktree) {
  auto m = open_mirror();
  auto dir = tmp / "work" / "rm";
  ASSERT_TRUE(m.add_worktree("rm", dir, resolved(m, ""), "makima/rm"));
  write_file(dir / "untracked.txt", "x");
  auto err = m.remove_worktree("rm", "makima/rm");
  ASSERT_FALSE(err) << makima::describe(err);
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_EQ(git(m.path(), {"for-each-ref", "refs/heads/"}), "");
  EXPECT_EQ(lines(git(m.path(), {"worktree", "list", "--porcelain"})).size(),
            2u); // only the bare main entry: "worktree <path>" + "bare"
  EXPECT_FALSE(fs::exists(m.path() / "worktrees" / "rm"));
  // Idempotent.
  EXPECT_FALSE(m.remove_worktree("rm", "makima/rm"));
  // The mirror's fetch does not touch task branches.
  ASSERT_TRUE(m.add_worktree("keep", tmp / "work" / "keep", resolved(m, ""),
                             "makima/keep"));
  ASSERT_FALSE(m.fetch());
  EXPECT_NE(git(m.path(), {"for-each-ref", "refs/heads/makima/keep"}), "");
}

TEST_F(git_test, mirror_origins_lists_the_origin_of_each_mirror_sorted) {
  open_mirror();
  // Hand-written mirrors (as another makima version might leave them) and
  // entries that are no mirror.
  write_file(repos / "z-0000.git" / "config",
             "[core]\n\tbare = true\n[remote \"origin\"]\n"
             "\turl = https://git.example/a.git\n"
             "\tfetch = +refs/heads/*:refs/remotes/origin/*\n");
  write_file(repos / "b-0000.git" / "config",
             "[remote \"upstream\"]\n\turl = https://git.example/no.git\n");
  fs::create_directories(repos / "empty");
  write_file(repos / "stray-file", "not a mirror\n");
  auto origins = makima::git::mirror_origins(repos);
  std::vector<std::string> want{"https://git.example/a.git",
                                makima::git::canonical_url(upstream.string())};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(origins, want);
}

TEST(git_mirror_origins, missing_repos_dir_has_none) {
  temp_dir tmp;
  EXPECT_TRUE(makima::git::mirror_origins(tmp.path() / "absent").empty());
}

// -- progress and cancellation ------------------------------------------------

namespace {

// A control that records every report and sets its cancel flag at the
// first report of `stop_at` (when given).
struct recorder {
  std::vector<makima::git::progress> seen;
  makima::git::control ctl;
  explicit recorder(std::optional<makima::git::phase> stop_at = std::nullopt) {
    ctl.cancel = std::make_shared<std::atomic<bool>>(false);
    ctl.on_progress = [this, stop_at](const makima::git::progress& p) {
      seen.push_back(p);
      if (stop_at && p.phase == *stop_at)
        ctl.cancel->store(true);
    };
  }
  std::vector<makima::git::progress> of(makima::git::phase ph) const {
    std::vector<makima::git::progress> out;
    for (const auto& p : seen)
      if (p.phase == ph)
        out.push_back(p);
    return out;
  }
};

// The entries of `dir` (names), empty when it is missing.
std::set<std::string> entries(const fs::path& dir) {
  std::set<std::string> out;
  std::error_code err;
  for (auto it = fs::directory_iterator(dir, err);
       !err && it != fs::directory_iterator(); it.increment(err))
    out.insert(it->path().filename().string());
  return out;
}

} // namespace

TEST_F(git_test, clone_and_checkout_report_progress) {
  for (int i = 0; i < 20; ++i)
    write_file(upstream / ("f" + std::to_string(i) + ".txt"),
               std::string(1000 + i, 'a' + i % 26));
  git(upstream, {"add", "-A"});
  git(upstream, {"commit", "-q", "-m", "more files"});
  recorder rec;
  auto m = makima::git::mirror::open(upstream.string(), repos, true, rec.ctl);
  ASSERT_TRUE(m) << makima::describe(m.error());
  auto cloning = rec.of(makima::git::phase::cloning);
  ASSERT_FALSE(cloning.empty());
  for (const auto& p : cloning) {
    EXPECT_LE(p.done, p.total);
    EXPECT_GT(p.total, 20u); // 22+ blobs, trees and commits
  }
  EXPECT_EQ(cloning.back().done, cloning.back().total);
  EXPECT_GT(cloning.back().bytes, 20u * 1000u / 50u); // compressed, but some
  auto dir = tmp / "work" / "prog";
  auto wt =
      m->add_worktree("prog", dir, resolved(*m, ""), "makima/prog", rec.ctl);
  ASSERT_TRUE(wt) << makima::describe(wt.error());
  auto checkout = rec.of(makima::git::phase::checking_out);
  ASSERT_FALSE(checkout.empty());
  EXPECT_EQ(checkout.back().done, checkout.back().total);
  EXPECT_EQ(checkout.back().total, files_under(dir).size());
  EXPECT_FALSE(rec.ctl.cancelled());
}

TEST_F(git_test, cancelled_clone_leaves_no_mirror_and_a_later_open_works) {
  recorder rec{makima::git::phase::cloning};
  auto m = makima::git::mirror::open(upstream.string(), repos, true, rec.ctl);
  ASSERT_FALSE(m);
  EXPECT_EQ(code_of(m.error()), ec::cancelled) << makima::describe(m.error());
  EXPECT_EQ(rec.of(makima::git::phase::cloning).size(), 1u); // aborted at once
  EXPECT_EQ(entries(repos), std::set<std::string>{});
  // A cancel flag already set stops before anything is made.
  auto again =
      makima::git::mirror::open(upstream.string(), repos, true, rec.ctl);
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), ec::cancelled);
  EXPECT_EQ(entries(repos), std::set<std::string>{});
  auto ok = open_mirror();
  EXPECT_EQ(resolved(ok, ""), git(upstream, {"rev-parse", "HEAD"}));
}

TEST_F(git_test, cancelled_fetch_keeps_the_mirror_and_a_later_fetch_gets_it) {
  auto m = open_mirror();
  auto old_head = resolved(m, "");
  write_file(upstream / "new.txt", "new\n");
  git(upstream, {"add", "-A"});
  git(upstream, {"commit", "-q", "-m", "new"});
  auto new_head = git(upstream, {"rev-parse", "HEAD"});
  recorder rec{makima::git::phase::fetching};
  auto err = m.fetch(rec.ctl);
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), ec::cancelled) << makima::describe(err);
  EXPECT_EQ(resolved(m, ""), old_head);
  // Reopening (which fetches) works, then the new commit is there.
  auto reopened = makima::git::mirror::open(upstream.string(), repos);
  ASSERT_TRUE(reopened) << makima::describe(reopened.error());
  EXPECT_EQ(resolved(*reopened, ""), new_head);
}

TEST_F(git_test, cancelled_checkout_leaves_no_worktree_or_branch) {
  auto m = open_mirror();
  recorder rec{makima::git::phase::checking_out};
  auto dir = tmp / "work" / "c";
  auto wt = m.add_worktree("c", dir, resolved(m, ""), "makima/c", rec.ctl);
  ASSERT_FALSE(wt);
  EXPECT_EQ(code_of(wt.error()), ec::cancelled) << makima::describe(wt.error());
  EXPECT_FALSE(rec.of(makima::git::phase::checking_out).empty());
  EXPECT_EQ(git(m.path(), {"for-each-ref", "refs/heads/"}), "");
  EXPECT_FALSE(fs::exists(m.path() / "worktrees" / "c"));
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_FALSE(fs::exists(tmp / "work")); // the parent it created, too
  // The same name works afterwards.
  EXPECT_TRUE(m.add_worktree("c", dir, resolved(m, ""), "makima/c"));
}

TEST_F(git_test, cancelled_push_updates_nothing) {
  auto m = open_mirror();
  auto bare = make_bare_repo(tmp / "bare.git");
  auto dir = tmp / "work" / "p";
  ASSERT_TRUE(m.add_worktree("p", dir, resolved(m, ""), "makima/p"));
  write_file(dir / "pushed.txt", "pushed\n");
  ASSERT_TRUE(m.commit_all(dir, "to push", {}));
  makima::git::control ctl;
  ctl.cancel = std::make_shared<std::atomic<bool>>(true);
  auto err = m.push("makima/p", bare.string(), ctl);
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), ec::cancelled) << makima::describe(err);
  EXPECT_EQ(git(bare, {"for-each-ref", "refs/heads/makima/"}), "");
  EXPECT_FALSE(m.push("makima/p", bare.string()));
}

// A local origin is cloned as `git clone --local` does: its object files are
// hard-linked into the mirror (same inode), not repacked by libgit2.
TEST_F(git_test, local_origin_objects_are_hard_linked_into_the_mirror) {
  git(upstream, {"gc", "-q"});
  std::vector<fs::path> packs;
  for (auto& e : fs::directory_iterator(upstream / ".git" / "objects" / "pack"))
    if (e.path().extension() == ".pack")
      packs.push_back(e.path());
  ASSERT_EQ(packs.size(), 1u);
  auto m = open_mirror();
  auto linked = m.path() / "objects" / "pack" / packs[0].filename();
  ASSERT_TRUE(fs::exists(linked));
  struct stat a{}, b{};
  ASSERT_EQ(::stat(packs[0].c_str(), &a), 0);
  ASSERT_EQ(::stat(linked.c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(resolved(m, ""), git(upstream, {"rev-parse", "HEAD"}));
  // The mirror is whole: git's own check passes and a worktree checks out.
  EXPECT_EQ(git(m.path(), {"fsck", "--no-progress"}), "");
  auto wt = m.add_worktree("h", tmp / "work" / "h", resolved(m, ""),
                           "makima/h");
  ASSERT_TRUE(wt) << makima::describe(wt.error());
  EXPECT_EQ(git(wt->path, {"status", "--porcelain"}), "");
}

// A cancel while files are being written stops the checkout before the
// last file (libgit2 checks out in batches; the cancel is seen between
// them), and nothing of the worktree is left.
TEST_F(git_test, checkout_cancelled_while_writing_stops_before_the_last_file) {
  for (int i = 0; i < 1200; ++i)
    write_file(upstream / "many" / ("f" + std::to_string(i)), "x\n");
  git(upstream, {"add", "-A"});
  git(upstream, {"commit", "-q", "-m", "many"});
  auto m = open_mirror();
  recorder rec{makima::git::phase::checking_out};
  auto dir = tmp / "work" / "many";
  auto wt = m.add_worktree("many", dir, resolved(m, ""), "makima/many",
                           rec.ctl);
  ASSERT_FALSE(wt);
  EXPECT_EQ(code_of(wt.error()), ec::cancelled) << makima::describe(wt.error());
  auto seen = rec.of(makima::git::phase::checking_out);
  ASSERT_FALSE(seen.empty());
  EXPECT_LT(seen.back().done, seen.back().total);
  EXPECT_GT(seen.back().total, 1200u);
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_EQ(git(m.path(), {"for-each-ref", "refs/heads/"}), "");
}
