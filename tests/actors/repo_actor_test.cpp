// The REPO actor on a generated repository: prepare (mirror + worktree),
// reopen for a resumed attempt, commit and push, WIP snapshots, removal, and
// its errors.
#include "actors/repo.hpp"

#include "tests/actors/actor_fixture.hpp"
#include "tests/fixtures/git_repo.hpp"

using makima::code_of;
using makima::describe;
using makima::ec;
using namespace makima;
using makima::test::actor_test;
namespace {
std::string git_cli(const std::filesystem::path& repo,
                    const std::vector<std::string>& args) {
  return makima::test::git(repo, args);
}
} // namespace

namespace {

class repo_actor_test : public actor_test {
protected:
  void SetUp() override {
    actor_test::SetUp();
    origin = makima::test::make_repo(dir.path() / "origin");
    repo = spawn_repo(*sys, origin.string(), dir.path() / "repos", "makima",
                      "makima@localhost");
  }
  void release_handles() override {
    caf::anon_send_exit(repo, caf::exit_reason::user_shutdown);
    repo = repo_actor{};
  }

  worktree prepare(const std::string& id, const std::string& ref) {
    worktree out;
    (*self)
        ->request(repo, std::chrono::seconds(60), prepare_atom::value,
                  prepare_request{id, ref, (dir.path() / "wt" / id).string()},
                  cancel_token{})
        .receive([&](worktree& wt) { out = std::move(wt); },
                 [](caf::error& err) { FAIL() << describe(err); });
    return out;
  }

  std::filesystem::path origin;
  repo_actor repo;
};

constexpr auto timeout = std::chrono::seconds(60);

} // namespace

TEST_F(repo_actor_test, prepare_checks_out_the_default_branch) {
  auto wt = prepare("t1", "");
  EXPECT_EQ(wt.branch, "makima/t1");
  EXPECT_EQ(wt.base_commit, git_cli(origin, {"rev-parse", "main"}));
  EXPECT_EQ(git_cli(wt.path, {"rev-parse", "HEAD"}), wt.base_commit);
  EXPECT_EQ(git_cli(wt.path, {"status", "--porcelain"}), "");
  EXPECT_EQ(git_cli(origin, {"ls-tree", "-r", "--name-only", "main"}),
            git_cli(wt.path, {"ls-files"}));
}

TEST_F(repo_actor_test, prepare_at_a_branch_and_a_tag) {
  EXPECT_EQ(prepare("t1", "feature").base_commit,
            git_cli(origin, {"rev-parse", "feature"}));
  EXPECT_EQ(prepare("t2", "v1").base_commit,
            git_cli(origin, {"rev-parse", "v1^{commit}"}));
}

TEST_F(repo_actor_test, reopen_returns_the_preserved_worktree) {
  auto wt = prepare("t1", "");
  makima::test::write_file(std::filesystem::path{wt.path} / "work.txt", "x");
  (*self)
      ->request(repo, timeout, reopen_atom::value, std::string{"t1"},
                std::string{"makima/t1"})
      .receive(
          [&](worktree& again) {
            EXPECT_EQ(again.path, wt.path);
            EXPECT_EQ(again.base_commit, wt.base_commit);
            EXPECT_TRUE(std::filesystem::exists(
                std::filesystem::path{again.path} / "work.txt"));
          },
          [](caf::error& err) { FAIL() << describe(err); });
  std::filesystem::remove_all(wt.path);
  (*self)
      ->request(repo, timeout, reopen_atom::value, std::string{"t1"},
                std::string{"makima/t1"})
      .receive([](worktree&) { FAIL() << "reopened a deleted worktree"; },
               [](caf::error& err) {
                 EXPECT_EQ(code_of(err), ec::worktree_missing);
               });
}

TEST_F(repo_actor_test, commit_then_push_to_a_bare_repo) {
  auto wt = prepare("t1", "");
  makima::test::write_file(std::filesystem::path{wt.path} / "new.txt", "new\n");
  std::string commit;
  (*self)
      ->request(repo, timeout, commit_atom::value, wt.path, std::string{"msg"})
      .receive([&](std::string& id) { commit = id; },
               [](caf::error& err) { FAIL() << describe(err); });
  ASSERT_EQ(commit.size(), 40u);
  // Nothing changed since: no second commit.
  (*self)
      ->request(repo, timeout, commit_atom::value, wt.path, std::string{"msg"})
      .receive([&](std::string& id) { EXPECT_EQ(id, ""); },
               [](caf::error& err) { FAIL() << describe(err); });
  auto bare = makima::test::make_bare_repo(dir.path() / "bare.git");
  (*self)
      ->request(repo, timeout, push_atom::value, wt.branch, bare.string(),
                cancel_token{})
      .receive([](ok_atom) {},
               [](caf::error& err) { FAIL() << describe(err); });
  EXPECT_EQ(git_cli(bare, {"rev-parse", "refs/heads/makima/t1"}), commit);
  EXPECT_EQ(git_cli(bare, {"show", "makima/t1:new.txt"}), "new");
}

TEST_F(repo_actor_test, missing_repository_and_bad_ref_are_errors) {
  auto missing = spawn_repo(*sys, (dir.path() / "nope").string(),
                            dir.path() / "repos", "m", "m@x");
  (*self)
      ->request(missing, timeout, prepare_atom::value,
                prepare_request{"t1", "", (dir.path() / "wt/t1").string()},
                cancel_token{})
      .receive(
          [](worktree&) { FAIL() << "prepared a missing repository"; },
          [](caf::error& err) { EXPECT_EQ(code_of(err), ec::repo_not_found); });
  caf::anon_send_exit(missing, caf::exit_reason::user_shutdown);
  (*self)
      ->request(
          repo, timeout, prepare_atom::value,
          prepare_request{"t2", "no-such-ref", (dir.path() / "wt/t2").string()},
          cancel_token{})
      .receive([](worktree&) { FAIL() << "prepared a missing ref"; },
               [](caf::error& err) {
                 EXPECT_EQ(code_of(err), ec::ref_not_found);
                 EXPECT_NE(describe(err).find("no-such-ref"),
                           std::string::npos);
               });
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "wt/t2"));
}

TEST_F(repo_actor_test, snapshot_leaves_the_worktree_unchanged) {
  auto wt = prepare("t1", "");
  makima::test::write_file(std::filesystem::path{wt.path} / "wip/notes.txt",
                           "half done\n");
  auto status = [&] {
    return git_cli(wt.path, {"--no-optional-locks", "status", "--porcelain"});
  };
  auto before = status();
  std::string commit;
  (*self)
      ->request(repo, timeout, snapshot_atom::value, wt.path, std::string{"t1"})
      .receive([&](std::string& id) { commit = id; },
               [](caf::error& err) { FAIL() << describe(err); });
  ASSERT_EQ(commit.size(), 40u);
  EXPECT_NE(commit, wt.base_commit);
  EXPECT_EQ(status(), before);
  EXPECT_EQ(git_cli(wt.path, {"rev-parse", "refs/wip/t1"}), commit);
  EXPECT_EQ(git_cli(wt.path, {"rev-parse", commit + "^"}), wt.base_commit);
  EXPECT_EQ(git_cli(wt.path, {"show", commit + ":wip/notes.txt"}), "half done");
  EXPECT_EQ(git_cli(wt.path, {"log", "-1", "--format=%s", commit}),
            "makima wip t1");
  EXPECT_EQ(git_cli(wt.path, {"rev-parse", "HEAD"}), wt.base_commit);
  // A missing worktree is an error.
  (*self)
      ->request(repo, timeout, snapshot_atom::value,
                (dir.path() / "wt/nope").string(), std::string{"nope"})
      .receive([](std::string&) { FAIL() << "snapshot of a missing dir"; },
               [](caf::error& err) {
                 EXPECT_EQ(code_of(err), ec::worktree_missing);
               });
}

TEST_F(repo_actor_test, remove_deletes_the_worktree_and_its_branch) {
  auto wt = prepare("t1", "");
  std::filesystem::path common =
      git_cli(wt.path, {"rev-parse", "--git-common-dir"});
  auto mirror = common.is_absolute() ? common : wt.path / common;
  ASSERT_EQ(git_cli(mirror, {"rev-parse", "--is-bare-repository"}), "true");
  ASSERT_NE(git_cli(mirror, {"for-each-ref", "refs/heads/makima/t1"}), "");
  makima::test::write_file(std::filesystem::path{wt.path} / "left.txt", "x");
  for (int i = 0; i < 2; ++i) // idempotent
    (*self)
        ->request(repo, timeout, remove_atom::value, std::string{"t1"},
                  wt.branch)
        .receive([](ok_atom) {},
                 [](caf::error& err) { FAIL() << describe(err); });
  EXPECT_FALSE(std::filesystem::exists(wt.path));
  EXPECT_EQ(git_cli(mirror, {"for-each-ref", "refs/heads/makima/t1"}), "");
  EXPECT_EQ(git_cli(mirror, {"worktree", "list", "--porcelain"}).find("/wt/t1"),
            std::string::npos);
  // The task id can be prepared again.
  EXPECT_EQ(prepare("t1", "").base_commit, wt.base_commit);
}
