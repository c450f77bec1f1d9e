// The server on a full disk (issue 7, items 5 and 6): a real `makima server`
// whose data dir is a small tmpfs and a real daemon. While the disk is full
// the server refuses events (close 1011, the daemon keeps them in its outbox
// and reconnects), refuses submissions with a clear error, keeps serving
// reads and /healthz, and /readyz says why it is not ready. Once space is
// freed it takes writes again by itself — no restart — and the task that
// was running finishes with every byte of its output, in its first attempt.
#include "tests/integration/fleet.hpp"

#include "tests/fixtures/tmpfs.hpp"

using namespace makima::it;

namespace {

bool has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

} // namespace

TEST(server_disk_full,
     refuses_writes_serves_reads_and_recovers_without_a_restart) {
  env e;
  makima::test::tmpfs_mount mnt{e.root() / "small", "16m"};
  ASSERT_TRUE(mnt.mounted())
      << "mount -t tmpfs -o size=16m failed: " << mnt.error()
      << " (this test needs root)";
  server_proc srv;
  ASSERT_TRUE(
      srv.launch(e, server_args(mnt.dir() / "server", {"--lease", "12"})));
  daemon_proc d;
  ASSERT_TRUE(d.launch(e, srv.ws(), "d1", e.root() / "d1"));
  api http{srv.http()};
  // Prints "start", waits for the flag, then 20,000 lines and "end".
  auto flag = e.root() / "flag";
  auto id =
      http.submit({{"id", "long"},
                   {"argv",
                    {"sh", "-c",
                     "echo start; while [ ! -e \"$0\" ]; do sleep 0.05; done; "
                     "seq 1 20000; echo end",
                     flag.string()}}});
  ASSERT_EQ(id, "long");
  ASSERT_TRUE(
      eventually([&] { return http.output(id).out == "start\n"; }, 20000ms))
      << srv.output();
  ASSERT_EQ(http.call("GET", "/readyz").status, 200u);

  makima::test::fill_disk(mnt.dir() / "filler");
  std::ofstream{flag} << "go";
  // The daemon's events are refused: the server says why in its log, and
  // /readyz turns 503 with the reason.
  ASSERT_TRUE(
      eventually([&] { return has(srv.output(), "disk is full"); }, 20000ms))
      << srv.output();
  EXPECT_TRUE(eventually(
      [&] { return http.metric("makima_ws_closed_total{code=\"1011\"}") >= 1; },
      10000ms))
      << "the daemon's events were not refused with 1011";
  auto ready = http.call("GET", "/readyz");
  EXPECT_EQ(ready.status, 503u) << ready.body;
  EXPECT_TRUE(has(ready.body, "store refuses writes")) << ready.body;
  EXPECT_TRUE(has(ready.body, "disk is full")) << ready.body;
  // Alive, and reads work.
  EXPECT_EQ(http.call("GET", "/healthz").status, 200u);
  EXPECT_EQ(http.state(id), "running");
  EXPECT_EQ(http.call("GET", "/api/v1/tasks").status, 200u);
  // A submission is refused with a clear error, and nothing is queued.
  auto sub = http.call("POST", "/api/v1/tasks",
                       json{{"id", "refused"}, {"argv", {"true"}}}.dump());
  EXPECT_EQ(sub.status, 507u) << sub.body;
  EXPECT_TRUE(has(sub.body, "store_full")) << sub.body;
  EXPECT_TRUE(has(sub.body, "disk is full")) << sub.body;
  EXPECT_EQ(http.call("GET", "/api/v1/tasks/refused").status, 404u);
  // Still refusing a few seconds later (nothing was written meanwhile).
  std::this_thread::sleep_for(2000ms);
  EXPECT_EQ(http.state(id), "running");

  makima::test::free_disk(mnt.dir() / "filler");
  // No restart: the server takes the daemon's events again, the task ends
  // in its first attempt with every byte, and the server is ready again.
  ASSERT_TRUE(http.wait_terminal({id}, 60000ms)) << srv.output() << d.output();
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << rec.dump();
  EXPECT_EQ(rec.value("attempt", 0), 1) << rec.dump();
  std::string want = "start\n";
  for (int i = 1; i <= 20000; ++i)
    want += std::to_string(i) + "\n";
  want += "end\n";
  auto out = http.output(id);
  EXPECT_EQ(out.out.size(), want.size());
  EXPECT_TRUE(out.out == want) << "output differs";
  EXPECT_TRUE(eventually(
      [&] { return http.call("GET", "/readyz").status == 200u; }, 10000ms));
  auto after = http.submit({{"id", "after"}, {"argv", {"echo", "after"}}});
  ASSERT_EQ(after, "after");
  ASSERT_TRUE(http.wait_terminal({after}, 30000ms));
  EXPECT_EQ(http.output(after).out, "after\n");
  // Everything is on disk: a restarted server has both tasks, byte-exact.
  auto r = srv.stop(SIGTERM);
  EXPECT_EQ(r.signal, 0) << r.err;
  d.stop(SIGTERM);
  server_proc again;
  ASSERT_TRUE(again.launch(e, server_args(mnt.dir() / "server")));
  api http2{again.http()};
  EXPECT_EQ(http2.state(id), "succeeded");
  EXPECT_TRUE(http2.output(id).out == want);
  EXPECT_EQ(http2.output(after).out, "after\n");
}
