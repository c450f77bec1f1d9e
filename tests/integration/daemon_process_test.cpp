// `makima daemon` as a real process against a scripted server on
// 127.0.0.1: SIGKILL mid-task and restart on the same data dir (outbox
// replay and an `interrupted` result), drain → exit 0, a refused key that
// never shows in the logs, the health endpoint, SIGTERM.
#include <netinet/in.h>
#include <sys/socket.h>

#include "actors/protocol.hpp"
#include "runtime/error.hpp"
#include "runtime/net/net.hpp"
#include "tests/fixtures/fake_server.hpp"
#include "tests/integration/helpers.hpp"

namespace makima::it {
namespace {

using test::fake_server;

std::vector<std::string> daemon_argv(const env& e, const fake_server& srv,
                                     std::vector<std::string> extra = {}) {
  std::vector<std::string> argv{
      MAKIMA_BINARY,     "daemon", "--server",  srv.url(),     "--data-dir",
      e.data().string(), "--name", "it-daemon", "--heartbeat", "1"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

proto::assign assignment(const std::string& id, std::vector<std::string> argv,
                         uint32_t attempt = 1, uint64_t next_seq = 0) {
  proto::assign a;
  a.record.spec.id = id;
  a.record.spec.argv = std::move(argv);
  a.record.spec.grace = 5;
  a.record.spec.created_at = 1;
  a.record.attempt = attempt;
  a.record.next_seq = next_seq;
  return a;
}

TEST(daemon_process,
     sigkilled_mid_task_restarts_replays_and_reports_interrupted) {
  env e;
  fake_server srv;
  std::vector<proto::event> before;
  std::string daemon_id;
  {
    test::background d(daemon_argv(e, srv), e.opts());
    auto [id, hello] = srv.accept();
    daemon_id = hello.daemon_id;
    ASSERT_TRUE(
        d.wait_for_output("makima: daemon: connected to " + srv.url(), 10s));
    srv.send(id,
             assignment("k1", {"sh", "-c", "echo one; echo two >&2; sleep 60"},
                        3, 40));
    // States (preparing, running) and both outputs, never acked.
    std::string seen;
    while (seen.size() < 8) {
      auto ev = srv.wait_frame<proto::event>(10s);
      ASSERT_TRUE(ev) << "got only " << before.size() << " events";
      for (auto& c : ev->second.chunks)
        seen += c.bytes;
      before.push_back(ev->second);
    }
    d.kill(SIGKILL);
    d.wait(10s);
  }
  // Same data dir: the outbox survived; the attempt is reported as
  // interrupted (event n+1) after the unacked ones (2..n).
  uint64_t n = before.size();
  test::background d(daemon_argv(e, srv), e.opts());
  auto [id, hello] = srv.accept({{"k1", 3, 1}});
  EXPECT_EQ(hello.daemon_id, daemon_id) << "the daemon id must be stable";
  ASSERT_EQ(hello.running.size(), 1u);
  EXPECT_EQ(hello.running[0], (proto::attempt_seq{"k1", 3, n + 1}));
  auto replay = test::collect_attempt(srv, "k1", 3, 10s);
  ASSERT_EQ(replay.size(), n);
  for (size_t i = 0; i + 1 < n; ++i)
    EXPECT_EQ(proto::encode(replay[i]), proto::encode(before[i + 1]));
  EXPECT_EQ(replay.back().seq, n + 1);
  EXPECT_EQ(replay.back().kind, proto::event_kind::result);
  EXPECT_EQ(replay.back().record.state, task_state::interrupted);
  EXPECT_EQ(replay.back().record.attempt, 3u);
  std::string out, err;
  for (auto& ev : before)
    for (auto& c : ev.chunks) {
      EXPECT_GE(c.seq, 40u);
      (c.stream == 2 ? err : out) += c.bytes;
    }
  EXPECT_EQ(out, "one\n");
  EXPECT_EQ(err, "two\n");

  // The server re-assigns attempt 4 to this daemon: the local record is
  // replaced (no task_exists), output continues at the server's seq.
  srv.send(id, proto::ack{"k1", 3, n + 1});
  srv.send(id, assignment("k1", {"sh", "-c", "echo again"}, 4, 42));
  auto next = test::collect_attempt(srv, "k1", 4, 10s);
  ASSERT_FALSE(next.empty());
  EXPECT_EQ(next.back().record.state, task_state::succeeded)
      << next.back().record.error;
  bool saw = false;
  for (auto& ev : next)
    for (auto& c : ev.chunks) {
      EXPECT_EQ(c.seq, 42u);
      EXPECT_EQ(c.bytes, "again\n");
      saw = true;
    }
  EXPECT_TRUE(saw);
  // SIGINT: at once (SIGTERM would evict and wait for acks this fake
  // server does not send).
  d.kill(SIGINT);
  auto r = d.wait(10s);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(daemon_process,
     sigint_stops_at_once_and_the_running_attempt_is_interrupted) {
  env e;
  fake_server srv;
  auto pidfile = e.root() / "child.pid";
  {
    test::background d(daemon_argv(e, srv), e.opts());
    auto [id, hello] = srv.accept();
    srv.send(id, assignment("k3", {"sh", "-c",
                                   "echo $$ > " + pidfile.string()
                                       + "; echo up; exec sleep 60"}));
    ASSERT_TRUE(srv.wait_frame<proto::event>(10s, [](const proto::event& ev) {
      return ev.kind == proto::event_kind::output;
    }));
    d.kill(SIGINT);
    auto r = d.wait(10s);
    EXPECT_FALSE(r.timed_out) << "the daemon did not stop on SIGINT";
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("stopping the daemon"), std::string::npos) << r.err;
  }
  // The child went with the daemon.
  pid_t pid = 0;
  std::ifstream(pidfile) >> pid;
  ASSERT_GT(pid, 0);
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = ::kill(pid, 0) != 0;
    if (!gone)
      std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(gone) << "the task's child outlived the daemon";
  // The next start reports the attempt as interrupted.
  test::background d(daemon_argv(e, srv), e.opts());
  auto [id, hello] = srv.accept({});
  ASSERT_EQ(hello.running.size(), 1u);
  EXPECT_EQ(hello.running[0].task, "k3");
  auto result = srv.wait_frame<proto::event>(10s, [](const proto::event& ev) {
    return ev.task == "k3" && ev.kind == proto::event_kind::result;
  });
  ASSERT_TRUE(result);
  EXPECT_EQ(result->second.record.state, task_state::interrupted);
  EXPECT_EQ(result->second.seq, hello.running[0].seq);
}

TEST(daemon_process,
     sigterm_evicts_drain_then_the_task_gets_its_signal_and_ends_migrating) {
  env e;
  fake_server srv;
  auto marker = e.root() / "saved";
  test::background d(
      daemon_argv(e, srv, {"--eviction-grace", "3", "--eviction-deadline", "8",
                           "--checkpoint-interval", "0"}),
      e.opts());
  auto [id, hello] = srv.accept();
  srv.send(id, assignment("k5", {"sh", "-c",
                                 "trap 'echo saved > " + marker.string()
                                     + "; exit 143' TERM; echo up; "
                                       "sleep 60 & wait"}));
  ASSERT_TRUE(srv.wait_frame<proto::event>(10s, [](const proto::event& ev) {
    return ev.kind == proto::event_kind::output;
  }));
  auto t0 = std::chrono::steady_clock::now();
  d.kill(SIGTERM);
  // The server hears first that the daemon takes no more work.
  ASSERT_TRUE(srv.wait_frame<proto::drain>(5s));
  auto result = srv.wait_frame<proto::event>(10s, [](const proto::event& ev) {
    return ev.task == "k5" && ev.kind == proto::event_kind::result;
  });
  ASSERT_TRUE(result);
  EXPECT_EQ(result->second.record.state, task_state::migrating);
  // The eviction signal reached the task (its trap ran), well before the
  // grace's SIGKILL.
  EXPECT_EQ(slurp(marker), "saved\n");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  // It exits 0 once the result is acked (closing with 1000).
  srv.send(id, proto::ack{"k5", 1, result->second.seq});
  auto code = srv.wait_close(id, 10s);
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, proto::close_normal);
  auto r = d.wait(10s);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(daemon_process, an_eviction_that_misses_its_deadline_exits_one) {
  env e;
  fake_server srv;
  test::background d(
      daemon_argv(e, srv, {"--eviction-grace", "0.5", "--eviction-deadline",
                           "2", "--checkpoint-interval", "0"}),
      e.opts());
  auto [id, hello] = srv.accept();
  srv.send(id, assignment("k6", {"sh", "-c", "echo up; exec sleep 60"}));
  ASSERT_TRUE(srv.wait_frame<proto::event>(10s, [](const proto::event& ev) {
    return ev.kind == proto::event_kind::output;
  }));
  // The server never acks: the daemon gives up at its deadline.
  d.kill(SIGTERM);
  auto r = d.wait(10s);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("eviction deadline passed"), std::string::npos)
      << r.err;
}

TEST(daemon_process, drain_exits_zero_once_everything_is_acked) {
  env e;
  fake_server srv;
  test::background d(daemon_argv(e, srv), e.opts());
  auto [id, hello] = srv.accept();
  srv.send(id, assignment("k2", {"sh", "-c", "sleep 0.2; echo bye"}));
  srv.send(id, proto::drain{"shutdown"});
  auto events = test::collect_attempt(srv, "k2", 1, 10s);
  ASSERT_FALSE(events.empty());
  ASSERT_EQ(events.back().kind, proto::event_kind::result);
  srv.send(id, proto::ack{"k2", 1, events.back().seq});
  auto code = srv.wait_close(id, 10s);
  ASSERT_TRUE(code);
  EXPECT_EQ(*code, proto::close_normal);
  auto r = d.wait(10s);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(daemon_process, refused_key_is_retried_and_never_logged) {
  env e;
  fake_server srv{401};
  const std::string key = "dk-very-secret-4711";
  auto o = e.opts();
  o.env["MAKIMA_LOG_LEVEL"] = "debug";
  test::background d(daemon_argv(e, srv, {"--api-key", key}), o);
  ASSERT_TRUE(srv.wait_upgrades(3, 15s)) << "no retry after 401";
  EXPECT_EQ(srv.auth_headers()[0], "Bearer " + key);
  d.kill(SIGTERM);
  auto r = d.wait(10s);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find(key), std::string::npos) << r.err;
  EXPECT_EQ(r.out.find(key), std::string::npos) << r.out;
  // Logged as an error once, not per retry.
  auto first = r.err.find("refused the daemon key");
  ASSERT_NE(first, std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("refused the daemon key", first + 1), std::string::npos)
      << r.err;
}

TEST(daemon_process, health_endpoint_reports_readiness) {
  env e;
  fake_server srv;
  auto port = free_port();
  auto base = "http://127.0.0.1:" + std::to_string(port);
  test::background d(
      daemon_argv(e, srv,
                  {"--health-listen", "127.0.0.1:" + std::to_string(port)}),
      e.opts());
  // Connected but not welcomed yet: alive, not ready.
  auto id = srv.wait_open(15s);
  ASSERT_TRUE(id);
  ASSERT_TRUE(srv.wait_frame<proto::hello>(10s));
  auto health = net::http_request("GET", base + "/healthz");
  ASSERT_TRUE(health) << describe(health.error());
  EXPECT_EQ(health->status, 200u);
  EXPECT_EQ(health->body, "ok\n");
  auto ready = net::http_request("GET", base + "/readyz");
  ASSERT_TRUE(ready) << describe(ready.error());
  EXPECT_EQ(ready->status, 503u);
  srv.welcome(*id);
  ASSERT_TRUE(d.wait_for_output("connected to", 10s));
  ready = net::http_request("GET", base + "/readyz");
  ASSERT_TRUE(ready) << describe(ready.error());
  EXPECT_EQ(ready->status, 200u);
  d.kill(SIGTERM);
  EXPECT_EQ(d.wait(10s).exit_code, 0);
}

TEST(daemon_process, bad_flags_are_usage_errors) {
  env e;
  auto r = test::run({MAKIMA_BINARY, "daemon", "--data-dir", e.data().string()},
                     e.opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no server given"), std::string::npos) << r.err;
  r = test::run({MAKIMA_BINARY, "daemon", "--server", "http://127.0.0.1:1/x",
                 "--data-dir", e.data().string()},
                e.opts());
  EXPECT_EQ(r.exit_code, 2);
  r = test::run({MAKIMA_BINARY, "daemon", "--server",
                 "ws://127.0.0.1:1/ws/daemon", "--pool", "mars", "--data-dir",
                 e.data().string()},
                e.opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("daemon.pool"), std::string::npos) << r.err;
  r = test::run({MAKIMA_BINARY, "daemon", "--server",
                 "ws://127.0.0.1:1/ws/daemon", "--label", "novalue",
                 "--data-dir", e.data().string()},
                e.opts());
  EXPECT_EQ(r.exit_code, 2);
  r = test::run({MAKIMA_BINARY, "daemon", "--server",
                 "wss://127.0.0.1:1/ws/daemon", "--ca-file",
                 (e.root() / "missing.pem").string(), "--data-dir",
                 e.data().string()},
                e.opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("CA file"), std::string::npos) << r.err;
  r = test::run({MAKIMA_BINARY, "daemon", "--server",
                 "ws://127.0.0.1:1/ws/daemon", "--health-listen", "nonsense",
                 "--data-dir", e.data().string()},
                e.opts());
  EXPECT_EQ(r.exit_code, 2);
}

} // namespace
} // namespace makima::it
