// `makima run` while preparing a large repository: the phase lines on a
// terminal and without one, --quiet, and Ctrl-C / --timeout during the
// preparation: clone or checkout (prompt exit, nothing half-made, the next
// run works).
#include <signal.h>

#include <chrono>

#include "tests/fixtures/git_repo.hpp"
#include "tests/integration/helpers.hpp"

namespace makima::it {
namespace {

// 2500 incompressible 32 KiB blobs (78 MiB), default pack settings: the
// clone links the object files (well under a second), the checkout writes
// 78 MiB (seconds), so a cancel lands in the checkout as often as not.
fs::path large_origin(const env& e) {
  return test::make_large_repo(e.root() / "origin", 2500, 32 * 1024);
}

// The task is being prepared: a clone is in progress (its temporary mirror
// exists in DATA/repos) or its worktree is being checked out.
bool preparing(const env& e, const std::string& id) {
  std::error_code err;
  for (auto it = fs::directory_iterator(e.data() / "repos", err);
       !err && it != fs::directory_iterator(); it.increment(err))
    if (it->path().filename().string().find(".tmp-") != std::string::npos)
      return true;
  return fs::exists(e.data() / "worktrees" / id, err);
}

// No worktree of `id` (its directory or its metadata in a mirror), no
// temporary mirror and no branch makima/<id>.
void expect_nothing_half_made(const env& e, const std::string& id) {
  std::error_code err;
  for (auto it = fs::recursive_directory_iterator(e.data(), err);
       !err && it != fs::recursive_directory_iterator(); it.increment(err)) {
    auto name = it->path().filename().string();
    EXPECT_EQ(name.find(".tmp-"), std::string::npos) << it->path();
    if (it->is_directory() && name == id)
      EXPECT_EQ(it->path().parent_path().filename(), "state")
          << "left behind: " << it->path();
  }
  for (auto it = fs::directory_iterator(e.data() / "repos", err);
       !err && it != fs::directory_iterator(); it.increment(err))
    EXPECT_EQ(
        test::git(it->path(), {"for-each-ref", "refs/heads/makima/" + id}), "");
}

using steady = std::chrono::steady_clock;

TEST(run_prepare, sigint_while_preparing_exits_130_promptly_and_leaves_nothing) {
  env e;
  auto origin = large_origin(e);
  test::background bg(
      e.run_argv({"--id", "big1", "--repo", origin.string(), "--", "true"}),
      e.opts(120000ms));
  ASSERT_TRUE(eventually([&] { return preparing(e, "big1"); }, 30000ms))
      << bg.output();
  auto signalled = steady::now();
  bg.kill(SIGINT);
  auto r = bg.wait(60000ms);
  auto took = steady::now() - signalled;
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_LT(took, 3s) << "the preparation was not aborted";
  EXPECT_EQ(e.show("big1")["state"], "cancelled");
  expect_nothing_half_made(e, "big1");
  // The next run prepares again and works; it also shows that takes
  // far longer than the cancel did.
  auto start = steady::now();
  auto ok = e.run({"--id", "big2", "--repo", origin.string(), "--", "test",
                   "-f", "README.md"},
                  120000ms);
  auto full = steady::now() - start;
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_GT(full, took) << "the preparation is too fast to test a cancel";
}

TEST(run_prepare, timeout_while_preparing_exits_124_and_leaves_nothing) {
  env e;
  auto origin = large_origin(e);
  auto start = steady::now();
  // 0.3 s: on an idle machine the whole preparation (linked clone, then a
  // 78 MiB checkout) takes under a second, so the timeout must land in it.
  auto r = e.run({"--id", "slow", "--timeout", "0.3", "--repo",
                  origin.string(), "--", "true"},
                 120000ms);
  auto took = steady::now() - start;
  EXPECT_EQ(r.exit_code, 124) << r.err;
  EXPECT_LT(took, 4s) << "the timeout did not abort the preparation";
  EXPECT_EQ(e.show("slow")["state"], "timed_out");
  EXPECT_NE(r.err.find("makima: task slow timed out after 0.3 s"),
            std::string::npos)
      << r.err;
  expect_nothing_half_made(e, "slow");
}

// Without a terminal: one line per phase with its duration, the summary.
TEST(run_progress, without_a_tty_one_line_per_phase_then_the_summary) {
  env e;
  auto origin = test::make_repo(e.root() / "origin");
  auto r = e.run({"--id", "p1", "--commit", "--repo", origin.string(), "--",
                  "sh", "-c", "echo out; echo err >&2; echo x > new.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "out\n");
  for (auto want :
       {"makima: cloned " + origin.string() + " (",
        std::string{"makima: checked out "}, std::string{"makima: ran for "},
        std::string{"makima: committed in "},
        std::string{"makima: task p1 succeeded (exit 0) in "},
        std::string{"; committed "}})
    EXPECT_NE(r.err.find(want), std::string::npos) << want << "\n" << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << r.err;
  // Every line of makima's is whole; the child's line is intact.
  EXPECT_NE(r.err.find("\nerr\n"), std::string::npos) << r.err;
  auto branch = e.show("p1")["branch"].get<std::string>();
  EXPECT_NE(r.err.find(" on " + branch), std::string::npos) << r.err;
  // A second run fetches instead of cloning.
  auto again = e.run({"--id", "p2", "--repo", origin.string(), "--", "true"});
  EXPECT_NE(again.err.find("makima: fetched "), std::string::npos) << again.err;
}

TEST(run_progress, quiet_prints_no_phase_or_summary_but_errors) {
  env e;
  auto origin = test::make_repo(e.root() / "origin");
  auto r = e.run({"--id", "q1", "--quiet", "--commit", "--repo",
                  origin.string(), "--", "sh", "-c", "echo err >&2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "err\n");
  auto bad = e.run({"--id", "q2", "--quiet", "--repo", origin.string(), "--ref",
                    "no-such-ref", "--", "true"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("makima: task q2 failed:"), std::string::npos)
      << bad.err;
}

// On a pseudo-terminal (script(1)): a live status line while cloning,
// cleared before the child's output, then the summary.
TEST(run_progress, on_a_tty_a_live_status_line_and_the_summary) {
  env e;
  auto origin = large_origin(e);
  std::string cmd = std::string{MAKIMA_BINARY} + " run --data-dir "
                    + e.data().string() + " --id t1 --repo " + origin.string()
                    + " -- echo child-output";
  auto r = test::run({"script", "-qfec", cmd, "/dev/null"}, e.opts(120000ms));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const auto& tty = r.out; // everything the pty showed
  EXPECT_NE(tty.find("\r\x1b[Kmakima: cloning " + origin.string() + ":"),
            std::string::npos)
      << tty.substr(0, 2000);
  EXPECT_NE(tty.find(" objects"), std::string::npos);
  EXPECT_NE(tty.find("makima: cloned "), std::string::npos);
  EXPECT_NE(tty.find("makima: task t1 succeeded (exit 0) in "),
            std::string::npos)
      << tty.substr(tty.size() > 2000 ? tty.size() - 2000 : 0);
  // The child's line starts on a cleared line, never after a status line.
  auto child = tty.find("child-output");
  ASSERT_NE(child, std::string::npos);
  auto line_start = tty.rfind('\n', child);
  auto before = tty.substr(line_start + 1, child - line_start - 1);
  static const std::string clear = "\r\x1b[K";
  EXPECT_TRUE(
      before.empty()
      || (before.size() >= clear.size()
          && before.compare(before.size() - clear.size(), clear.size(), clear)
                 == 0))
      << before;
}

} // namespace
} // namespace makima::it
