// Periodic checkpoints on a networked daemon (`makima daemon
// --checkpoint-interval --store`): a task assigned by a real server is
// checkpointed while it runs, and its checkpoint restores on another data
// dir. The server does not know of them yet (issue 11).
#include "tests/integration/fleet.hpp"

using namespace makima::it;

TEST(daemon_checkpoints,
     a_running_task_is_checkpointed_into_the_daemons_store) {
  env e;
  auto origin = makima::test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  auto store = "file://" + (e.root() / "store").string();
  daemon_proc d;
  ASSERT_TRUE(d.launch(e, srv.ws(), "d1", e.root() / "d1",
                       {"--checkpoint-interval", "0.2", "--store", store}));
  api http{srv.http()};
  json spec = {{"id", "dc1"},
               {"repo", origin.string()},
               {"argv",
                {"sh", "-c",
                 "for i in 1 2 3 4 5 6; do echo step $i; echo $i > step.txt; "
                 "echo $i > \"$MAKIMA_STATE_DIR/n\"; sleep 0.2; done"}}};
  ASSERT_EQ(http.submit(spec), "dc1");
  ASSERT_TRUE(http.wait_terminal({"dc1"}, 60000ms)) << d.output();
  EXPECT_EQ(http.task("dc1").value("state", ""), "succeeded");
  // Several checkpoints were written while it ran (each with something new).
  auto dir = e.root() / "store/tasks/dc1/checkpoints";
  ASSERT_TRUE(fs::exists(dir)) << d.output();
  size_t n = 0;
  for (auto& f : fs::directory_iterator(dir))
    n += f.path().extension() == ".json";
  EXPECT_GE(n, 2u);
  auto latest = json::parse(slurp(dir / (std::to_string(n) + ".json")));
  EXPECT_EQ(latest.value("node", ""), "d1");
  // It restores elsewhere: the worktree and state dir as last captured.
  auto other = e.root() / "laptop";
  auto r = makima::test::run({MAKIMA_BINARY, "task", "restore", "dc1",
                              "--data-dir", other.string(), "--store", store},
                             e.opts(60000ms));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto step = slurp(other / "worktrees/dc1/step.txt");
  EXPECT_FALSE(step.empty());
  EXPECT_EQ(slurp(other / "state/dc1/n"), step);
}

TEST(daemon_checkpoints, zero_turns_them_off) {
  env e;
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  daemon_proc d;
  ASSERT_TRUE(d.launch(e, srv.ws(), "d1", e.root() / "d1",
                       {"--checkpoint-interval", "0"}));
  api http{srv.http()};
  ASSERT_EQ(http.submit({{"id", "off1"}, {"argv", {"sleep", "0.5"}}}), "off1");
  ASSERT_TRUE(http.wait_terminal({"off1"}, 30000ms));
  EXPECT_FALSE(fs::exists(e.root() / "d1/store/tasks/off1"));
}
