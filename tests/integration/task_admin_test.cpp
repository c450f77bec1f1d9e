// Task management in local mode: `task list` columns and --state, `task
// show` history durations, `task rm`, `task prune`, `gc`, the data-dir
// lock message, `task logs -f` on a local task and Ctrl-C in read commands.
#include "tests/integration/helpers.hpp"

#include <signal.h>
#include <sys/wait.h>

#include <sstream>

using namespace makima;
using namespace makima::it;

namespace {

bool contains(const std::string& s, const std::string& needle) {
  return s.find(needle) != std::string::npos;
}

/// The ids of `task list` in table order.
std::vector<std::string> listed_ids(const std::string& table) {
  std::vector<std::string> out;
  std::istringstream in{table};
  std::string line;
  std::getline(in, line); // header
  while (std::getline(in, line))
    if (!line.empty())
      out.push_back(line.substr(0, line.find(' ')));
  return out;
}

/// Waits until `task show ID` works (the task was created by a background
/// `makima run`).
bool task_exists(const env& e, const std::string& id) {
  return eventually([&] { return e.task("show", {id}, 5000ms).exit_code == 0; },
                    10000ms);
}

} // namespace

TEST(TaskAdmin, ListShowsAgeDurationOldestFirstAndFiltersByState) {
  env e;
  // Ids in reverse order of creation: the list sorts by created_at.
  ASSERT_EQ(e.run({"--id", "zz-first", "--", "true"}).exit_code, 0);
  ASSERT_EQ(e.run({"--id", "mm-second", "--", "sh", "-c", "sleep 1.1; exit 3"})
                .exit_code,
            3);
  ASSERT_EQ(e.run({"--id", "aa-third", "--", "true"}).exit_code, 0);
  auto r = e.task("list", {});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "AGE")) << r.out;
  EXPECT_TRUE(contains(r.out, "DURATION")) << r.out;
  EXPECT_EQ(listed_ids(r.out),
            (std::vector<std::string>{"zz-first", "mm-second", "aa-third"}))
      << r.out;
  // The failed one ran about 1.1 s.
  EXPECT_TRUE(contains(r.out, " 1.1s ") || contains(r.out, " 1.2s ")) << r.out;

  auto f = e.task("list", {"--state", "failed"});
  ASSERT_EQ(f.exit_code, 0) << f.err;
  EXPECT_EQ(listed_ids(f.out), (std::vector<std::string>{"mm-second"}));
  auto ok = e.task("list", {"--state", "succeeded", "--json"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  auto arr = json::parse(ok.out);
  ASSERT_EQ(arr.size(), 2u);
  EXPECT_EQ(arr[0]["id"], "zz-first");
  EXPECT_EQ(arr[1]["id"], "aa-third");
  EXPECT_EQ(arr[0]["state"], "succeeded");

  auto bad = e.task("list", {"--state", "done"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_TRUE(contains(bad.err, "unknown task state 'done'")) << bad.err;
  EXPECT_TRUE(contains(bad.err, "succeeded")) << bad.err;
  EXPECT_TRUE(contains(bad.err, "interrupted")) << bad.err;
}

TEST(TaskAdmin, ListShowsARunningTaskThenItsDuration) {
  env e;
  test::background run{
      e.run_argv({"--id", "slow", "--", "sh", "-c", "sleep 2"}), e.opts()};
  ASSERT_TRUE(task_exists(e, "slow"));
  auto r = e.task("list", {});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "running")) << r.out;
  run.wait(10000ms);
  r = e.task("list", {});
  EXPECT_TRUE(contains(r.out, " 2.0s ") || contains(r.out, " 2.1s ")) << r.out;
}

TEST(TaskAdmin, ShowPrintsHowLongEachStateLasted) {
  env e;
  ASSERT_EQ(e.run({"--id", "h1", "--", "sh", "-c", "sleep 1.2"}).exit_code, 0);
  auto r = e.task("show", {"h1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto at = r.out.find("history:");
  ASSERT_NE(at, std::string::npos) << r.out;
  auto hist = r.out.substr(at);
  // running lasted the child's 1.2 s; the final state has no duration.
  auto running = hist.find("running");
  ASSERT_NE(running, std::string::npos) << hist;
  auto line = hist.substr(running, hist.find('\n', running) - running);
  EXPECT_TRUE(contains(line, "1.2s") || contains(line, "1.3s")) << line;
  auto done = hist.find("succeeded");
  ASSERT_NE(done, std::string::npos) << hist;
  EXPECT_TRUE(contains(hist.substr(done, 30), "-")) << hist;
}

TEST(TaskAdmin, RmRemovesWorktreeBranchStateDirAndRecords) {
  env e;
  auto repo = test::make_repo(e.root() / "src");
  ASSERT_EQ(e.run({"--repo", repo.string(), "--id", "r1", "--", "sh", "-c",
                   "echo out; echo x > new.txt"})
                .exit_code,
            0);
  ASSERT_EQ(
      e.run({"--repo", repo.string(), "--id", "r2", "--", "true"}).exit_code,
      0);
  auto rec = e.show("r1");
  fs::path wt = rec["worktree"].get<std::string>();
  fs::path sd = rec["state_dir"].get<std::string>();
  ASSERT_TRUE(fs::exists(wt));
  fs::path mirror;
  for (auto& m : fs::directory_iterator(e.data() / "repos"))
    mirror = m.path();
  ASSERT_FALSE(test::git(mirror, {"branch", "--list", "makima/r1"}).empty());
  // A snapshot ref of the task, as a checkpoint leaves one.
  test::git(mirror, {"update-ref", "refs/wip/r1", "makima/r1"});
  ASSERT_FALSE(
      test::git(mirror, {"for-each-ref", "refs/wip/r1"}).empty());

  auto r = e.task("rm", {"r1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "removed r1")) << r.out;
  EXPECT_FALSE(fs::exists(wt));
  EXPECT_FALSE(fs::exists(sd));
  EXPECT_TRUE(test::git(mirror, {"branch", "--list", "makima/r1"}).empty());
  EXPECT_TRUE(test::git(mirror, {"for-each-ref", "refs/wip/r1"}).empty());
  EXPECT_FALSE(test::git(mirror, {"branch", "--list", "makima/r2"}).empty());
  auto show = e.task("show", {"r1"});
  EXPECT_EQ(show.exit_code, 2);
  auto logs = e.task("logs", {"r1"});
  EXPECT_EQ(logs.exit_code, 2);
  EXPECT_TRUE(contains(logs.err, "r1")) << logs.err;
  auto list = e.list();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["id"], "r2");

  // --keep-records: the files go, the records stay.
  fs::path wt2 = e.show("r2")["worktree"].get<std::string>();
  r = e.task("rm", {"r2", "--keep-records"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(wt2));
  EXPECT_EQ(e.show("r2")["state"], "succeeded");
  // The kept record no longer names the removed paths.
  EXPECT_EQ(e.show("r2").value("worktree", std::string{"?"}), "");
  EXPECT_EQ(e.show("r2").value("state_dir", std::string{"?"}), "");
  EXPECT_TRUE(contains(e.task("show", {"r2"}).out, "worktree:")) << "show";

  // Unknown id.
  r = e.task("rm", {"nope"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "no task with id 'nope'")) << r.err;
}

TEST(TaskAdmin, RmRefusesARunningTaskAndRemovesNothingOfIt) {
  env e;
  ASSERT_EQ(e.run({"--id", "done1", "--", "true"}).exit_code, 0);
  test::background run{e.run_argv({"--id", "busy", "--", "sleep", "4"}),
                       e.opts()};
  ASSERT_TRUE(task_exists(e, "busy"));
  auto wt = e.data() / "worktrees" / "busy";
  auto r = e.task("rm", {"busy"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "task busy is running")) << r.err;
  EXPECT_TRUE(fs::exists(wt));
  // A finished task cannot go while another makima holds the data dir.
  r = e.task("rm", {"done1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "another makima is using the data dir")) << r.err;
  auto res = run.wait(10000ms);
  EXPECT_EQ(res.exit_code, 0) << res.err;
  EXPECT_EQ(e.show("busy")["state"], "succeeded");
  EXPECT_EQ(e.show("done1")["state"], "succeeded");
}

TEST(TaskAdmin, PruneRemovesFinishedTasksByAgeAndState) {
  env e;
  ASSERT_EQ(e.run({"--id", "p-ok", "--", "sh", "-c", "echo hello"}).exit_code,
            0);
  ASSERT_EQ(e.run({"--id", "p-fail", "--", "false"}).exit_code, 1);
  auto r = e.task("prune", {"--older-than", "1h"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "pruned 0 tasks")) << r.out;
  EXPECT_EQ(e.list().size(), 2u);

  r = e.task("prune", {"--state", "failed", "--dry-run"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "would remove p-fail")) << r.out;
  EXPECT_EQ(e.list().size(), 2u);

  r = e.task("prune", {"--state", "failed"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "removed p-fail")) << r.out;
  EXPECT_FALSE(contains(r.out, "p-ok")) << r.out;
  ASSERT_EQ(e.list().size(), 1u);

  std::this_thread::sleep_for(1100ms);
  r = e.task("prune", {"--older-than", "1s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "removed p-ok")) << r.out;
  EXPECT_TRUE(contains(r.out, "pruned 1 task,")) << r.out;
  EXPECT_TRUE(contains(r.out, "freed")) << r.out;
  EXPECT_TRUE(e.list().empty());
  EXPECT_FALSE(fs::exists(e.data() / "worktrees" / "p-ok"));

  r = e.task("prune", {"--older-than", "soon"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "--older-than")) << r.err;
  r = e.task("prune", {"--state", "running"});
  EXPECT_EQ(r.exit_code, 2);
}

TEST(TaskAdmin, GcCompactsAndRemovesOrphansButRefusesABusyDataDir) {
  env e;
  auto repo = test::make_repo(e.root() / "src");
  ASSERT_EQ(
      e.run({"--repo", repo.string(), "--id", "g1", "--", "true"}).exit_code,
      0);
  ASSERT_EQ(e.run({"--id", "g2", "--", "sh", "-c",
                   "head -c 200000 "
                   "/dev/urandom | od"})
                .exit_code,
            0);
  ASSERT_EQ(e.task("rm", {"g2", "--keep-records"}).exit_code, 0);
  // An orphan: a worktree and state dir no record knows.
  fs::create_directories(e.data() / "worktrees" / "ghost" / "sub");
  fs::create_directories(e.data() / "state" / "ghost");
  // Orphan refs in the mirror: a task branch and a snapshot of a task whose
  // records are gone.
  fs::path mirror;
  for (auto& m : fs::directory_iterator(e.data() / "repos"))
    mirror = m.path();
  test::git(mirror, {"branch", "makima/ghost", "makima/g1"});
  test::git(mirror, {"update-ref", "refs/wip/ghost", "makima/g1"});
  ASSERT_FALSE(test::git(mirror, {"branch", "--list", "makima/ghost"}).empty());
  auto r = test::run({MAKIMA_BINARY, "gc", "--data-dir", e.data().string()},
                     e.opts());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "database: ")) << r.out;
  EXPECT_TRUE(contains(r.out, "mirror ") || contains(r.out, "not installed"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "orphans: 2 removed")) << r.out;
  EXPECT_FALSE(fs::exists(e.data() / "worktrees" / "ghost"));
  EXPECT_TRUE(fs::exists(e.data() / "worktrees" / "g1"));
  EXPECT_TRUE(contains(r.out, "2 orphan task refs deleted")) << r.out;
  EXPECT_TRUE(test::git(mirror, {"branch", "--list", "makima/ghost"}).empty());
  EXPECT_TRUE(test::git(mirror, {"for-each-ref", "refs/wip/ghost"}).empty());
  EXPECT_FALSE(test::git(mirror, {"branch", "--list", "makima/g1"}).empty());
  EXPECT_EQ(e.show("g1")["state"], "succeeded");
  EXPECT_EQ(e.task("logs", {"g1"}).exit_code, 0);

  test::background run{e.run_argv({"--id", "hold", "--", "sleep", "3"}),
                       e.opts()};
  ASSERT_TRUE(task_exists(e, "hold"));
  r = test::run({MAKIMA_BINARY, "gc", "--data-dir", e.data().string()},
                e.opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.err, "another makima is using the data dir")) << r.err;
  EXPECT_TRUE(fs::exists(e.data() / "worktrees" / "hold"));
  EXPECT_EQ(run.wait(10000ms).exit_code, 0);
}

TEST(TaskAdmin, SecondRunOnABusyDataDirNamesTheHolder) {
  env e;
  test::background first{e.run_argv({"--id", "holder", "--", "sleep", "5"}),
                         e.opts()};
  ASSERT_TRUE(task_exists(e, "holder"));
  auto r = e.run({"--", "true"});
  EXPECT_NE(r.exit_code, 0);
  auto want = "makima: another makima is using the data dir "
              + e.data().string() + " (pid " + std::to_string(first.pid())
              + ")";
  EXPECT_TRUE(contains(r.err, want)) << r.err;
  EXPECT_TRUE(contains(r.err, "--data-dir")) << r.err;
  EXPECT_TRUE(contains(r.err, "makima local")) << r.err;
  EXPECT_FALSE(contains(r.err, "LOCK")) << r.err;
  first.kill(SIGINT);
  first.wait(10000ms);
}

TEST(TaskAdmin, LogsFollowsALocalTaskToItsExitStatus) {
  env e;
  test::background run{e.run_argv({"--id", "fol", "--", "sh", "-c",
                                   "echo a; sleep 1; echo b; "
                                   "exit 7"}),
                       e.opts()};
  ASSERT_TRUE(task_exists(e, "fol"));
  auto start = std::chrono::steady_clock::now();
  auto r = e.task("logs", {"-f", "fol"}, 15000ms);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.exit_code, 7) << r.err;
  EXPECT_EQ(r.out, "a\nb\n");
  EXPECT_LT(took, 5s);
  EXPECT_EQ(run.wait(10000ms).exit_code, 7);
  // Of a finished task: the whole output and its status at once.
  r = e.task("logs", {"-f", "fol"});
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(r.out, "a\nb\n");
}

TEST(TaskAdmin, LogsFollowEndsWhenTheRunningMakimaDies) {
  env e;
  test::background run{
      e.run_argv({"--id", "dies", "--", "sh", "-c", "echo a; sleep 30"}),
      e.opts()};
  ASSERT_TRUE(task_exists(e, "dies"));
  test::background logs{e.task_argv("logs", {"-f", "dies"}), e.opts()};
  ASSERT_TRUE(logs.wait_for_output("a\n", 5000ms)) << logs.output();
  run.kill(SIGKILL);
  auto r = logs.wait(5000ms);
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_TRUE(contains(r.err, "interrupted")) << r.err;
  for (auto pid : pids_with_env("MAKIMA_TASK_ID=dies"))
    ::kill(pid, SIGKILL);
}

TEST(TaskAdmin, CtrlCEndsLogsFollowAndReadCommandsPromptly) {
  env e;
  test::background run{
      e.run_argv({"--id", "long", "--", "sh", "-c", "echo go; sleep 20"}),
      e.opts()};
  ASSERT_TRUE(task_exists(e, "long"));
  test::background logs{e.task_argv("logs", {"-f", "long"}), e.opts()};
  ASSERT_TRUE(logs.wait_for_output("go\n", 5000ms)) << logs.output();
  auto start = std::chrono::steady_clock::now();
  logs.kill(SIGINT);
  auto r = logs.wait(5000ms);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  EXPECT_EQ(r.exit_code, 130) << r.err;
  test::background logs2{e.task_argv("logs", {"-f", "long"}), e.opts()};
  ASSERT_TRUE(logs2.wait_for_output("go\n", 5000ms));
  logs2.kill(SIGTERM);
  EXPECT_EQ(logs2.wait(5000ms).exit_code, 143);
  run.kill(SIGINT);
  EXPECT_EQ(run.wait(15000ms).exit_code, 130);
}

TEST(TaskAdmin, RemoveWorktreeOnPushKeepsRecordsAndBranch) {
  env e;
  auto repo = test::make_repo(e.root() / "src");
  auto target = test::make_bare_repo(e.root() / "target.git");
  auto o = e.opts();
  o.env["MAKIMA_TASK_REMOVE_WORKTREE_ON_PUSH"] = "true";
  auto r = test::run(e.run_argv({"--repo", repo.string(), "--id", "pushed",
                                 "--commit", "--push", target.string(), "--",
                                 "sh", "-c", "echo hi > made.txt"}),
                     o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rec = e.show("pushed");
  EXPECT_EQ(rec["pushed"], true);
  EXPECT_FALSE(fs::exists(rec["worktree"].get<std::string>()));
  fs::path mirror;
  for (auto& m : fs::directory_iterator(e.data() / "repos"))
    mirror = m.path();
  EXPECT_FALSE(
      test::git(mirror, {"branch", "--list", "makima/pushed"}).empty());
  EXPECT_FALSE(test::git(target, {"log", "-1", "--format=%H",
                                  "refs/heads/makima/pushed"})
                   .empty());
  // A failed task keeps its worktree; so does a pushed one by default.
  r = test::run(e.run_argv({"--repo", repo.string(), "--id", "failed", "--push",
                            target.string(), "--", "false"}),
                o);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(fs::exists(e.show("failed")["worktree"].get<std::string>()));
  ASSERT_EQ(e.run({"--repo", repo.string(), "--id", "kept", "--push",
                   target.string(), "--", "true"})
                .exit_code,
            0);
  EXPECT_TRUE(fs::exists(e.show("kept")["worktree"].get<std::string>()));
  // Later a `task rm` of the pushed task still works.
  EXPECT_EQ(e.task("rm", {"pushed"}).exit_code, 0);
}
