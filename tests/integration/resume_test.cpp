// SIGKILL of makima mid-task, detection as interrupted, `task resume`:
// attempt 2 in the same worktree/state dir, continued output, history, and
// leftover processes of the dead attempt.
#include "tests/integration/helpers.hpp"

namespace makima::it {
namespace {

const char* kScript =
    "echo \"attempt $MAKIMA_ATTEMPT resumed=$MAKIMA_RESUMED\"; "
    "if [ \"$MAKIMA_ATTEMPT\" = 1 ]; then "
    "  echo one > created-by-1.txt; echo s1 > \"$MAKIMA_STATE_DIR/mark\"; "
    "  echo err1 >&2; echo ready; sleep 300; "
    "fi; "
    "cat created-by-1.txt; cat \"$MAKIMA_STATE_DIR/mark\"; pwd -P; "
    "echo err2 >&2; exit 7";

// Runs `args` in the background, waits until makima has shown every one of
// `needles` (shown = already stored), then SIGKILLs makima. Waiting for the
// stderr line too matters: stdout and stderr are separate pipes, and bytes
// still in a pipe when makima dies are lost with it.
void run_and_sigkill(const env& e, const std::vector<std::string>& args,
                     const std::vector<std::string>& needles = {"ready"}) {
  test::background bg(e.run_argv(args), e.opts());
  for (auto& needle : needles)
    ASSERT_TRUE(bg.wait_for_output(needle, 15000ms)) << needle;
  bg.kill(SIGKILL);
  auto r = bg.wait(10000ms);
  ASSERT_EQ(r.signal, SIGKILL);
}

TEST(resume, sigkilled_task_is_interrupted_and_resumes_as_attempt_2) {
  env e;
  ASSERT_NO_FATAL_FAILURE(run_and_sigkill(
      e, {"--id", "rs", "--", "sh", "-c", kScript}, {"ready", "err1"}));

  auto l = e.list();
  ASSERT_EQ(l.size(), 1u) << l.dump(2);
  EXPECT_EQ(l[0]["id"], "rs");
  EXPECT_EQ(l[0]["state"], "interrupted") << l.dump(2);
  EXPECT_EQ(l[0]["attempt"], 1);
  auto before = e.show("rs");
  fs::path wt = before["worktree"].get<std::string>();

  auto r = e.task("resume", {"rs"}, 30000ms);
  EXPECT_EQ(r.exit_code, 7) << r.err;
  std::string out2 = "attempt 2 resumed=1\none\ns1\n"
                     + fs::weakly_canonical(wt).string() + "\n";
  EXPECT_EQ(r.out, out2);
  EXPECT_NE(r.err.find("err2\n"), std::string::npos) << r.err;

  auto j = e.show("rs");
  EXPECT_EQ(j["state"], "failed");
  EXPECT_EQ(j["attempt"], 2);
  EXPECT_EQ(j["exit_code"], 7);
  EXPECT_EQ(j["worktree"], before["worktree"]);
  EXPECT_EQ(j["state_dir"], before["state_dir"]);
  // History: attempt 1 running -> interrupted -> attempt 2 running -> failed.
  const auto& h = j["history"];
  ptrdiff_t interrupted = -1, running2 = -1, final2 = -1;
  for (size_t i = 0; i < h.size(); ++i) {
    if (h[i]["state"] == "interrupted" && interrupted < 0)
      interrupted = static_cast<ptrdiff_t>(i);
    if (h[i]["state"] == "running" && h[i]["attempt"] == 2)
      running2 = static_cast<ptrdiff_t>(i);
    if (h[i]["state"] == "failed" && h[i]["attempt"] == 2)
      final2 = static_cast<ptrdiff_t>(i);
  }
  EXPECT_GE(interrupted, 0) << h.dump(2);
  EXPECT_GT(running2, interrupted) << h.dump(2);
  EXPECT_GT(final2, running2) << h.dump(2);

  auto logs = e.task("logs", {"rs"});
  ASSERT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_EQ(logs.out, "attempt 1 resumed=0\nready\n" + out2);
  EXPECT_EQ(logs.err, "err1\nerr2\n");

  // Resuming a finished task is a usage error; so is an unknown id.
  auto again = e.task("resume", {"rs"});
  EXPECT_EQ(again.exit_code, 2) << again.err;
  auto unknown = e.task("resume", {"nope"});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.err;
}

TEST(resume, resume_of_succeeded_task_is_2) {
  env e;
  auto r = e.run({"--id", "ok", "--", "true"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto res = e.task("resume", {"ok"});
  EXPECT_EQ(res.exit_code, 2) << res.err;
  EXPECT_FALSE(res.err.empty());
  auto j = e.show("ok");
  EXPECT_EQ(j["state"], "succeeded");
  EXPECT_EQ(j["attempt"], 1);
}

TEST(resume, repo_task_resumes_in_the_same_worktree) {
  env e;
  auto src = test::make_repo(e.root() / "src");
  ASSERT_NO_FATAL_FAILURE(run_and_sigkill(
      e, {"--id", "rr", "--repo", src.string(), "--commit", "--", "sh", "-c",
          "if [ \"$MAKIMA_ATTEMPT\" = 1 ]; then echo a1 > from1.txt; "
          "rm README.md; echo ready; sleep 300; fi; echo a2 > from2.txt"}));
  EXPECT_EQ(e.show("rr")["state"], "interrupted");
  auto r = e.task("resume", {"rr"}, 30000ms);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = e.show("rr");
  EXPECT_EQ(j["state"], "succeeded");
  ASSERT_TRUE(j["commit"].is_string()) << j.dump(2);
  fs::path mirror;
  for (auto& d : fs::directory_iterator(e.data() / "repos"))
    mirror = d.path();
  auto ns = test::git(mirror, {"show", "--name-status",
                               "--format=", j["commit"].get<std::string>()});
  EXPECT_NE(ns.find("A\tfrom1.txt"), std::string::npos) << ns;
  EXPECT_NE(ns.find("A\tfrom2.txt"), std::string::npos) << ns;
  EXPECT_NE(ns.find("D\tREADME.md"), std::string::npos) << ns;
}

TEST(resume, leftover_grandchildren_of_the_dead_attempt_are_killed) {
  env e;
  ASSERT_NO_FATAL_FAILURE(run_and_sigkill(
      e, {"--id", "gc", "--", "sh", "-c",
          "if [ \"$MAKIMA_ATTEMPT\" = 1 ]; then sleep 300 & echo ready; wait; "
          "fi; echo second"}));
  // The direct child dies of PDEATHSIG; the backgrounded sleep survives
  // makima's death (that is what resume must clean up).
  std::vector<pid_t> left;
  eventually(
      [&] {
        left = pids_with_env("MAKIMA_TASK_ID=gc");
        return left.size() == 1;
      },
      3000ms);
  ASSERT_FALSE(left.empty()) << "expected the orphaned sleep 300 to be alive";
  auto r = e.task("resume", {"gc"}, 30000ms);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "second\n");
  for (pid_t p : left)
    EXPECT_TRUE(eventually([p] { return !alive(p); }, 3000ms))
        << "leftover process " << p << " of attempt 1 still alive after resume";
  EXPECT_TRUE(pids_with_env("MAKIMA_TASK_ID=gc").empty());
  // Clean up regardless, so a failing run does not leak a sleep 300.
  for (pid_t p : left)
    ::kill(p, SIGKILL);
}

} // namespace
} // namespace makima::it
