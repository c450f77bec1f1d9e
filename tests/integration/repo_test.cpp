// Repository tasks: ref resolution, worktree content, the mirror and its
// task branch, --commit and --push, all read back with the git CLI.
#include "tests/integration/helpers.hpp"

#include <algorithm>
#include <set>
#include <sstream>

namespace makima::it {
namespace {

using test::git;

using makima::test::lines;

fs::path mirror_of(const env& e) {
  std::vector<fs::path> found;
  if (fs::exists(e.data() / "repos"))
    for (auto& d : fs::directory_iterator(e.data() / "repos"))
      found.push_back(d.path());
  EXPECT_EQ(found.size(), 1u) << "expected exactly one mirror in DATA/repos";
  return found.empty() ? fs::path() : found.front();
}

// The worktree holds exactly the tree of `commit` (names and blob ids).
void expect_worktree_is(const fs::path& wt, const fs::path& repo,
                        const std::string& commit) {
  std::map<std::string, std::string> want; // path -> blob sha
  for (auto& l : lines(git(repo, {"ls-tree", "-r", commit}))) {
    auto tab = l.find('\t');
    std::istringstream f(l.substr(0, tab));
    std::string mode, type, sha;
    f >> mode >> type >> sha;
    want[l.substr(tab + 1)] = sha;
  }
  ASSERT_FALSE(want.empty());
  std::vector<std::string> have;
  for (auto it = fs::recursive_directory_iterator(wt);
       it != fs::recursive_directory_iterator(); ++it) {
    if (it.depth() == 0 && it->path().filename() == ".git") {
      if (it->is_directory())
        it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file() || it->is_symlink())
      have.push_back(fs::relative(it->path(), wt).string());
  }
  std::sort(have.begin(), have.end());
  std::vector<std::string> want_names;
  for (auto& [p, s] : want)
    want_names.push_back(p);
  ASSERT_EQ(have, want_names) << "worktree file list differs from " << commit;
  std::string input;
  for (auto& p : have)
    input += (wt / p).string() + "\n";
  test::run_options o;
  o.input = input;
  auto r = test::run({"git", "hash-object", "--stdin-paths"}, o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto shas = lines(r.out);
  ASSERT_EQ(shas.size(), have.size());
  for (size_t i = 0; i < have.size(); ++i)
    EXPECT_EQ(shas[i], want[have[i]]) << "content of " << have[i];
}

struct repo_fixture {
  env e;
  fs::path src;
  repo_fixture(test::repo_spec spec = {}) {
    src = test::make_repo(e.root() / "src", spec);
  }
};

TEST(repo, default_ref_is_the_default_branch_head) {
  test::repo_spec spec;
  spec.default_branch = "trunk"; // not "main": the default must come from HEAD
  repo_fixture f(spec);
  auto head = git(f.src, {"rev-parse", "trunk"});
  auto r =
      f.e.run({"--repo", f.src.string(), "--id", "dflt", "--", "sh", "-c",
               "git rev-parse HEAD; test ! -e doomed.txt && echo nodoomed"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, head + "\nnodoomed\n");
  auto j = f.e.show("dflt");
  EXPECT_EQ(j["state"], "succeeded");
  EXPECT_EQ(j["base_commit"], head);
  EXPECT_EQ(j["branch"], "makima/dflt");
  EXPECT_TRUE(j["commit"].is_null()) << "no --commit, no commit";
  fs::path wt = j["worktree"].get<std::string>();
  expect_worktree_is(wt, f.src, head);
  auto mirror = mirror_of(f.e);
  EXPECT_EQ(mirror.extension(), ".git");
  EXPECT_EQ(mirror.filename().string().rfind("src-", 0), 0u) << mirror;
  EXPECT_EQ(git(mirror, {"rev-parse", "refs/heads/makima/dflt"}), head);
}

TEST(repo, explicit_refs_branch_tag_sha) {
  repo_fixture f;
  struct {
    std::string ref, id, want;
    bool doomed;
  } cases[] = {
      {"feature", "br", git(f.src, {"rev-parse", "feature"}), false},
      {"v1", "tag", git(f.src, {"rev-parse", "v1^{commit}"}), true},
      {git(f.src, {"rev-parse", "main~2"}), "sha",
       git(f.src, {"rev-parse", "main~2"}), false},
      {"main", "main", git(f.src, {"rev-parse", "main"}), false},
  };
  for (auto& c : cases) {
    SCOPED_TRACE("ref " + c.ref);
    auto r = f.e.run({"--repo", f.src.string(), "--ref", c.ref, "--id", c.id,
                      "--", "git", "rev-parse", "HEAD"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, c.want + "\n");
    auto j = f.e.show(c.id);
    EXPECT_EQ(j["base_commit"], c.want);
    EXPECT_EQ(j["spec"]["ref"], c.ref);
    fs::path wt = j["worktree"].get<std::string>();
    EXPECT_EQ(fs::exists(wt / "doomed.txt"), c.doomed);
    EXPECT_EQ(fs::exists(wt / "branches" / "feature.txt"), c.ref == "feature");
    expect_worktree_is(wt, f.src, c.want);
    EXPECT_EQ(git(mirror_of(f.e), {"rev-parse", "makima/" + c.id}), c.want);
  }
}

TEST(repo, mirror_is_reused_and_fetched_again) {
  repo_fixture f;
  auto r1 = f.e.run({"--repo", f.src.string(), "--id", "one", "--", "true"});
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  auto mirror = mirror_of(f.e);
  // New upstream commit after the mirror was made.
  test::write_file(f.src / "upstream-new.txt", "fresh\n");
  git(f.src, {"add", "upstream-new.txt"});
  git(f.src, {"-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m",
              "new upstream"});
  auto head = git(f.src, {"rev-parse", "HEAD"});
  auto r2 = f.e.run({"--repo", f.src.string(), "--id", "two", "--", "cat",
                     "upstream-new.txt"});
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(r2.out, "fresh\n");
  EXPECT_EQ(f.e.show("two")["base_commit"], head);
  EXPECT_EQ(mirror_of(f.e), mirror) << "second task must reuse the mirror";
  EXPECT_EQ(git(mirror, {"rev-parse", "makima/two"}), head);
  // The first task's branch is still there, at the old commit.
  EXPECT_EQ(git(mirror, {"rev-parse", "makima/one"}),
            git(f.src, {"rev-parse", "HEAD~1"}));
}

const char* kChange =
    "printf 'changed\\n' >> README.md && rm src/d0/e0/file0.txt && "
    "mkdir -p new/dir && printf 'u\\n' > new/dir/untracked.txt && "
    "printf 'junk\\n' > build.log && mkdir -p out && printf x > out/ignored.o";

void add_gitignore(const fs::path& src) {
  test::write_file(src / ".gitignore", "*.log\nout/\n");
  git(src, {"add", ".gitignore"});
  git(src, {"-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m",
            "ignore"});
}

TEST(repo, commit_records_modified_deleted_untracked_not_ignored) {
  repo_fixture f;
  add_gitignore(f.src);
  auto base = git(f.src, {"rev-parse", "HEAD"});
  auto r = f.e.run({"--repo", f.src.string(), "--id", "cm", "--commit", "--",
                    "sh", "-c", kChange});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = f.e.show("cm");
  EXPECT_EQ(j["state"], "succeeded");
  ASSERT_TRUE(j["commit"].is_string()) << j.dump(2);
  std::string c = j["commit"];
  EXPECT_NE(c, base);
  auto mirror = mirror_of(f.e);
  EXPECT_EQ(git(mirror, {"rev-parse", "makima/cm"}), c);
  EXPECT_EQ(git(mirror, {"rev-parse", c + "^"}), base);
  auto ns = lines(
      git(mirror, {"show", "--no-renames", "--name-status", "--format=", c}));
  std::set<std::string> got(ns.begin(), ns.end());
  std::set<std::string> want{"M\tREADME.md", "D\tsrc/d0/e0/file0.txt",
                             "A\tnew/dir/untracked.txt"};
  EXPECT_EQ(got, want);
  EXPECT_EQ(git(mirror, {"show", c + ":README.md"}),
            git(f.src, {"show", "HEAD:README.md"}) + "\nchanged");
}

TEST(repo, push_publishes_the_task_branch) {
  repo_fixture f;
  auto bare = test::make_bare_repo(f.e.root() / "bare.git");
  auto r =
      f.e.run({"--repo", f.src.string(), "--id", "ps", "--commit", "--push",
               bare.string(), "--", "sh", "-c", "echo pushed > pushed.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = f.e.show("ps");
  EXPECT_EQ(j["state"], "succeeded");
  EXPECT_EQ(j["pushed"], true);
  ASSERT_TRUE(j["commit"].is_string()) << j.dump(2);
  EXPECT_EQ(git(bare, {"rev-parse", "refs/heads/makima/ps"}), j["commit"]);
  auto log = lines(git(bare, {"log", "--format=%H", "makima/ps"}));
  ASSERT_GE(log.size(), 2u);
  EXPECT_EQ(log[0], j["commit"]);
  EXPECT_EQ(log[1], j["base_commit"]);
  EXPECT_EQ(git(bare, {"show", "makima/ps:pushed.txt"}), "pushed");
}

TEST(repo, push_rejected_when_remote_branch_has_unrelated_history) {
  repo_fixture f;
  auto bare = test::make_bare_repo(f.e.root() / "bare.git");
  test::repo_spec other;
  other.files = 3;
  other.commits = 1;
  other.branches = {};
  other.tag = "";
  auto unrelated = test::make_repo(f.e.root() / "other", other);
  git(unrelated, {"push", "-q", bare.string(), "main:refs/heads/makima/rej"});
  auto theirs = git(bare, {"rev-parse", "makima/rej"});
  auto r =
      f.e.run({"--repo", f.src.string(), "--id", "rej", "--commit", "--push",
               bare.string(), "--", "sh", "-c", "echo x > x.txt"});
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_NE(r.err.find("makima: task rej failed:"), std::string::npos) << r.err;
  auto j = f.e.show("rej");
  EXPECT_EQ(j["state"], "failed");
  EXPECT_EQ(j["pushed"], false);
  std::string err = j["error"].is_string() ? j["error"].get<std::string>() : "";
  std::transform(err.begin(), err.end(), err.begin(), ::tolower);
  EXPECT_NE(err.find("reject"), std::string::npos) << j.dump(2);
  EXPECT_EQ(git(bare, {"rev-parse", "makima/rej"}), theirs)
      << "the remote branch must not be overwritten";
  // The local commit was still made on the task branch in the mirror.
  if (j["commit"].is_string()) {
    EXPECT_EQ(git(mirror_of(f.e), {"rev-parse", "makima/rej"}), j["commit"]);
  }
}

} // namespace
} // namespace makima::it
