// Poison loops and server restarts with real processes (issue 7, items 7b
// and 10): a task that SIGKILLs its own daemon ends `failed` after the
// server's attempt budget, and a server SIGKILLed and restarted within the
// lease re-runs nothing.
#include "tests/integration/fleet.hpp"

#include <fstream>

using namespace makima::it;

TEST(retry_fleet, task_that_kills_its_daemon_fails_after_the_attempt_budget) {
  env e;
  auto cfg = e.root() / "server.toml";
  std::ofstream{cfg} << "[server]\nmax_attempts = 3\nretry_backoff = 0.1\n";
  server_proc srv;
  ASSERT_TRUE(srv.launch(
      e, server_args(e.root() / "server", {"--config", cfg.string()})));
  api http{srv.http()};
  daemon_proc d;
  ASSERT_TRUE(d.launch(e, srv.ws(), "d", e.root() / "d"));
  auto id = http.submit(
      {{"id", "suicide"}, {"argv", {"sh", "-c", "echo bye; kill -9 $PPID"}}});
  ASSERT_EQ(id, "suicide");
  // Each attempt kills the daemon; the test restarts it (bounded) until
  // the server gives up.
  int restarts = 0;
  while (restarts < 8) {
    auto r = d.bg->wait(30000ms);
    ASSERT_EQ(r.signal, SIGKILL) << d.output();
    d.bg.reset();
    ++restarts;
    ASSERT_TRUE(d.launch(e, srv.ws(), "d", e.root() / "d"));
    if (eventually([&] { return http.state(id) == "failed"; }, 3000ms))
      break;
  }
  ASSERT_TRUE(http.wait_terminal({id}, 20000ms)) << srv.output();
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "failed") << rec.dump();
  EXPECT_EQ(rec.value("attempt", 0), 3) << rec.dump();
  EXPECT_EQ(rec.value("error_code", ""), "attempts_exhausted");
  EXPECT_EQ(rec.value("error", "")
                .rfind("attempt budget exhausted: 3 "
                       "attempts, last: ",
                       0),
            0u)
      << rec.dump();
  EXPECT_EQ(restarts, 3);
  // `task show` prints each attempt's cause.
  auto show = makima::test::run({MAKIMA_BINARY, "task", "show", "--server",
                                 srv.http(), "--api-key", user_key, id},
                                e.opts());
  EXPECT_EQ(show.exit_code, 0) << show.err;
  size_t causes = 0;
  for (size_t p = 0; (p = show.out.find("re-queued", p)) != std::string::npos;
       ++p)
    ++causes;
  EXPECT_EQ(causes, 2u) << show.out;
  EXPECT_NE(show.out.find("attempt budget exhausted"), std::string::npos)
      << show.out;
  // Nothing is sent any more: no attempt 4 while the daemon is up.
  std::this_thread::sleep_for(1000ms);
  EXPECT_EQ(http.task(id).value("attempt", 0), 3);
}

TEST(retry_fleet, server_restarts_within_the_lease_rerun_nothing) {
  env e;
  auto data = e.root() / "server";
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(data, {"--lease", "3"})));
  auto port = srv.port;
  // Two daemons: each reconnects on its own backoff.
  std::vector<daemon_proc> ds(2);
  for (int i = 0; i < 2; ++i)
    ASSERT_TRUE(ds[i].launch(e, srv.ws(), "d" + std::to_string(i),
                             e.root() / ("d" + std::to_string(i)),
                             {"--max-tasks", "16"}));
  auto& d = ds[0];
  api http{srv.http()};
  std::vector<std::string> ids;
  auto task = [](const std::string& id) {
    // ~5 s, 10 numbered lines.
    return json{{"id", id},
                {"argv",
                 {"sh", "-c",
                  "i=0; while [ $i -lt 10 ]; do echo \"$0 $i\"; "
                  "i=$((i+1)); sleep 0.5; done",
                  id}}};
  };
  const std::vector<std::chrono::milliseconds> outages{2500ms, 2000ms, 2500ms,
                                                       2500ms, 1500ms, 2500ms};
  for (size_t cycle = 0; cycle < outages.size(); ++cycle) {
    for (int i = 0; i < 4; ++i) {
      auto id = "c" + std::to_string(cycle) + "-" + std::to_string(i);
      ASSERT_EQ(http.submit(task(id)), id);
      ids.push_back(id);
    }
    auto last = ids.back();
    ASSERT_TRUE(
        eventually([&] { return !http.output(last).out.empty(); }, 20000ms));
    srv.stop(SIGKILL);
    std::this_thread::sleep_for(outages[cycle]);
    auto args = server_args(data, {"--lease", "3"});
    args[2] = "127.0.0.1:" + std::to_string(port);
    ASSERT_TRUE(srv.launch(e, args));
    // The daemon is back before the next cycle.
    ASSERT_TRUE(eventually(
        [&] {
          auto list = http.get_json("/api/v1/daemons");
          int n = 0;
          for (auto& x : list["daemons"])
            n += x.value("connected", false) ? 1 : 0;
          return n == 2;
        },
        20000ms))
        << d.output() << srv.output();
  }
  ASSERT_TRUE(http.wait_terminal(ids, 60000ms)) << srv.output();
  for (auto& id : ids) {
    std::string expected;
    for (int i = 0; i < 10; ++i)
      expected += id + " " + std::to_string(i) + "\n";
    auto rec = http.task(id);
    EXPECT_EQ(rec.value("state", ""), "succeeded") << rec.dump();
    EXPECT_EQ(rec.value("attempt", 0), 1) << id << " was re-run";
    EXPECT_EQ(http.output(id).out, expected) << id;
  }
}
