// The server side of docs/protocol.md on real loopback sockets: a real
// server_node (SERVER actor, RocksDB in a temp dir, net::server on
// 127.0.0.1 port 0); the tests play the daemon with net::ws_client speaking
// the protocol (proto::encode/decode) and the user with net::http_request.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <variant>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "actors/messages.hpp"
#include "actors/protocol.hpp"
#include "actors/server_node.hpp"
#include "runtime/error.hpp"
#include "runtime/net/net.hpp"
#include "tests/fixtures/actor_system.hpp"
#include "tests/fixtures/fake_daemon.hpp"
#include "tests/fixtures/sse_reader.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace makima {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using test::daemon_key;
using test::fake_daemon;
using test::sse_event;
using test::sse_reader;

const std::string user_key = "user-key-1";

class server_test : public ::testing::Test {
protected:
  server_test() : sys(cfg) {
    settings.db_dir = dir / "db";
    settings.user_keys = {user_key, "user-key-2"};
    settings.daemon_keys = {daemon_key};
    settings.hello_timeout = 500ms;
    // Re-queued tasks run again almost at once (the backoff test sets it).
    settings.retry_backoff = 0.01;
  }
  ~server_test() override {
    daemons.clear();
    if (node)
      node->stop();
  }

  void start() {
    auto n = server_node::start(sys, settings);
    ASSERT_TRUE(n) << describe(n.error());
    node = std::move(*n);
  }

  void restart() {
    node->stop();
    node.reset();
    settings.port = 0;
    start();
  }

  /// A connected scripted daemon (`refused`: the upgrade must fail).
  fake_daemon& daemon(std::string key = daemon_key, bool refused = false) {
    daemons.push_back(std::make_unique<fake_daemon>(io, key));
    EXPECT_EQ(daemons.back()->connect(node->ws_url()), !refused);
    return *daemons.back();
  }

  net::response
  http(const std::string& method, const std::string& target,
       std::string body = {}, std::string key = user_key,
       std::vector<std::pair<std::string, std::string>> extra = {}) {
    net::http_client_options opts;
    if (!key.empty())
      opts.headers.push_back({"Authorization", "Bearer " + key});
    for (auto& h : extra)
      opts.headers.push_back(h);
    opts.timeout = 5s;
    auto res =
        net::http_request(method, node->url() + target, std::move(body), opts);
    if (!res) {
      ADD_FAILURE() << describe(res.error());
      return {};
    }
    return *res;
  }

  /// Submits a task; returns its record.
  json submit(const std::string& id, json extra = json::object()) {
    extra["id"] = id;
    if (!extra.contains("argv"))
      extra["argv"] = {"echo", "hi"};
    auto res = http("POST", "/api/v1/tasks", extra.dump());
    EXPECT_EQ(res.status, 201u) << res.body;
    return json::parse(res.body, nullptr, false);
  }

  json get(const std::string& target) {
    auto res = http("GET", target);
    EXPECT_EQ(res.status, 200u) << target << ": " << res.body;
    return json::parse(res.body, nullptr, false);
  }

  std::string metrics() {
    auto res = http("GET", "/metrics", {}, "");
    EXPECT_EQ(res.status, 200u);
    return res.body;
  }

  /// The value of one metric line ("name{labels}"), -1 when absent.
  double metric(const std::string& line) {
    auto text = metrics();
    auto pos = text.find("\n" + line + " ");
    if (pos == std::string::npos)
      return -1;
    return std::stod(text.substr(pos + line.size() + 2));
  }

  /// Polls the task's record until it is in `state` (bounded).
  bool wait_state(const std::string& id, const std::string& state,
                  std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (get("/api/v1/tasks/" + id)["state"] == state)
        return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

  /// The whole output of a task, decoded.
  std::string output_of(const std::string& id, uint64_t from = 0) {
    auto j =
        get("/api/v1/tasks/" + id + "/output?from=" + std::to_string(from));
    std::string out;
    for (auto& c : j["chunks"])
      out += *proto::base64_decode(c["data"].get<std::string>());
    return out;
  }

  /// Runs a task through `d`: state running, one output, result.
  void finish(fake_daemon& d, const task_record& a, uint64_t first_seq,
              task_state s = task_state::succeeded) {
    d.send(fake_daemon::state(a, first_seq, task_state::running));
    d.send(fake_daemon::state(a, first_seq + 1, s, 0));
    d.expect_ack(a.spec.id, a.attempt, first_seq + 1);
  }

  test::temp_dir dir;
  test::actor_config cfg;
  caf::actor_system sys;
  net::io_thread io;
  server_settings settings;
  std::unique_ptr<server_node> node;
  std::vector<std::unique_ptr<fake_daemon>> daemons;
};

// -- the happy path -----------------------------------------------------------

TEST_F(server_test, submit_assign_events_result_and_read_back_byte_exact) {
  start();
  auto rec = submit(
      "t-1",
      {{"argv", {"sh", "-c", "echo hi"}}, {"env", {"A=1"}}, {"timeout", 5}});
  EXPECT_EQ(rec["state"], "queued");
  EXPECT_EQ(rec["attempt"], 0);
  auto& d = daemon();
  auto w = d.hello("d-1");
  EXPECT_EQ(w.lease, settings.lease);
  EXPECT_EQ(w.max_frame_bytes, settings.max_frame_bytes);
  auto a = d.expect<proto::assign>();
  EXPECT_EQ(a.record.spec.id, "t-1");
  EXPECT_EQ(a.record.attempt, 1u);
  EXPECT_EQ(a.record.next_seq, 0u);
  EXPECT_EQ(a.record.spec.argv,
            (std::vector<std::string>{"sh", "-c", "echo hi"}));
  EXPECT_EQ(a.record.spec.env, std::vector<std::string>{"A=1"});
  std::string binary{"\0\xff\x80 bytes\n", 10};
  d.send(fake_daemon::state(a.record, 1, task_state::running));
  d.send(fake_daemon::output("t-1", 1, 2, {{0, 1, "hello\n"}, {1, 2, binary}}));
  d.send(fake_daemon::state(a.record, 3, task_state::succeeded, 0));
  d.expect_ack("t-1", 1, 3);
  auto got = get("/api/v1/tasks/t-1");
  EXPECT_EQ(got["state"], "succeeded");
  EXPECT_EQ(got["attempt"], 1);
  EXPECT_EQ(got["exit_code"], 0);
  EXPECT_EQ(got["next_seq"], 2);
  EXPECT_EQ(output_of("t-1"), "hello\n" + binary);
  auto out = get("/api/v1/tasks/t-1/output?from=1");
  ASSERT_EQ(out["chunks"].size(), 1u);
  EXPECT_EQ(out["chunks"][0]["stream"], 2);
  EXPECT_EQ(out["next"], 2);
  EXPECT_EQ(out["done"], true);
  // max_bytes: at least one chunk, then stop.
  auto first = get("/api/v1/tasks/t-1/output?max_bytes=1");
  EXPECT_EQ(first["chunks"].size(), 1u);
  EXPECT_EQ(first["next"], 1);
  EXPECT_EQ(first["done"], false);
  auto list = get("/api/v1/tasks?state=succeeded");
  ASSERT_EQ(list["tasks"].size(), 1u);
  EXPECT_TRUE(list["next"].is_null());
  EXPECT_EQ(metric("makima_dispatch_latency_seconds_count"), 1);
  EXPECT_EQ(metric("makima_tasks{state=\"succeeded\"}"), 1);
  auto ds = get("/api/v1/daemons");
  ASSERT_EQ(ds["daemons"].size(), 1u);
  EXPECT_EQ(ds["daemons"][0]["id"], "d-1");
  EXPECT_EQ(ds["daemons"][0]["running"], 0);
  EXPECT_EQ(ds["daemons"][0]["connected"], true);
}

TEST_F(server_test, heartbeat_is_answered) {
  start();
  auto& d = daemon();
  d.hello("d-1");
  d.send(proto::heartbeat{0, 7, 0});
  d.expect<proto::heartbeat>();
  EXPECT_EQ(get("/api/v1/daemons")["daemons"][0]["outbox_events"], 7);
  EXPECT_EQ(metric("makima_outbox_lag_events{daemon=\"d-1\"}"), 7);
}

TEST_F(server_test, duplicate_events_are_reacked_without_duplication) {
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1");
  auto a = d.expect<proto::assign>();
  auto ev = fake_daemon::output("t-1", 1, 1, {{0, 1, "once\n"}});
  d.send(ev);
  d.expect_ack("t-1", 1, 1);
  d.send(ev);
  d.expect_ack("t-1", 1, 1);
  d.send(ev);
  d.expect_ack("t-1", 1, 1);
  EXPECT_EQ(output_of("t-1"), "once\n");
  EXPECT_EQ(get("/api/v1/tasks/t-1")["next_seq"], 1);
  finish(d, a.record, 2);
  EXPECT_EQ(output_of("t-1"), "once\n");
}

TEST_F(server_test, seq_gap_is_an_error_and_closes_4006) {
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1");
  auto a = d.expect<proto::assign>();
  d.send(fake_daemon::state(a.record, 2, task_state::running));
  auto err = d.expect<proto::error>();
  EXPECT_EQ(err.code, "seq_gap");
  EXPECT_EQ(err.task, "t-1");
  EXPECT_EQ(d.wait_closed(), proto::close_seq_gap);
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"seq_gap\"}"), 1);
  EXPECT_EQ(metric("makima_ws_closed_total{code=\"4006\"}"), 1);
  // The daemon keeps its task and replays from welcome.
  auto& d2 = daemon();
  auto w = d2.hello("d-1", 2, "local", {}, {{"t-1", 1, 2}});
  ASSERT_EQ(w.acked.size(), 1u);
  EXPECT_EQ(w.acked[0].seq, 0u);
  finish(d2, a.record, 1);
  EXPECT_EQ(get("/api/v1/tasks/t-1")["state"], "succeeded");
}

// -- leases, fencing, replacement ---------------------------------------------

TEST_F(server_test, lease_expiry_requeues_to_another_daemon_and_fences) {
  settings.lease = 0.4;
  start();
  submit("t-1");
  auto& a = daemon();
  a.hello("d-a", 1);
  auto first = a.expect<proto::assign>();
  EXPECT_EQ(first.record.attempt, 1u);
  a.send(fake_daemon::output("t-1", 1, 1, {{0, 1, "from a\n"}}));
  a.expect_ack("t-1", 1, 1);
  // d-a goes silent: the lease ends, its connection is closed with 4005.
  EXPECT_EQ(a.wait_closed(3s), proto::close_lease_expired);
  EXPECT_EQ(get("/api/v1/tasks/t-1")["state"], "queued");
  auto& b = daemon();
  b.hello("d-b", 1);
  auto second = b.expect<proto::assign>();
  EXPECT_EQ(second.record.attempt, 2u);
  EXPECT_EQ(second.record.next_seq, 1u); // continues after a's output
  // d-a comes back: its attempt is fenced.
  auto& a2 = daemon();
  auto w = a2.hello("d-a", 1, "local", {}, {{"t-1", 1, 2}});
  ASSERT_EQ(w.acked.size(), 1u);
  auto c = a2.expect<proto::cancel>();
  EXPECT_EQ(c.reason, "fenced");
  EXPECT_EQ(c.attempt, 1u);
  // An event of the stale attempt: error (connection stays), ack, cancel.
  a2.send(fake_daemon::output("t-1", 1, 2, {{1, 1, "stale\n"}}));
  auto err = a2.expect<proto::error>();
  EXPECT_EQ(err.code, "stale_attempt");
  auto ack = a2.expect<proto::ack>();
  EXPECT_EQ(ack.seq, 2u);
  EXPECT_EQ(a2.expect<proto::cancel>().reason, "fenced");
  a2.send(proto::heartbeat{});
  a2.expect<proto::heartbeat>(); // still open
  // b's attempt is the one that counts; keep b alive while it works.
  b.send(fake_daemon::output("t-1", 2, 1, {{1, 1, "from b\n"}}));
  b.expect_ack("t-1", 2, 1);
  finish(b, second.record, 2);
  EXPECT_EQ(output_of("t-1"), "from a\nfrom b\n");
  auto rec = get("/api/v1/tasks/t-1");
  EXPECT_EQ(rec["state"], "succeeded");
  EXPECT_EQ(rec["attempt"], 2);
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"stale_attempt\"}"), 1);
}

TEST_F(server_test,
       same_daemon_id_replaces_the_old_connection_and_keeps_tasks) {
  start();
  submit("t-1");
  auto& a = daemon();
  a.hello("d-1", 1);
  auto as = a.expect<proto::assign>();
  a.send(fake_daemon::state(as.record, 1, task_state::running));
  a.expect_ack("t-1", 1, 1);
  auto& a2 = daemon();
  auto w = a2.hello("d-1", 1, "local", {}, {{"t-1", 1, 1}});
  EXPECT_EQ(a.wait_closed(), proto::close_replaced);
  ASSERT_EQ(w.acked.size(), 1u);
  EXPECT_EQ(w.acked[0].seq, 1u);
  EXPECT_TRUE(a2.quiet_for(200ms)); // no cancel, no re-assign
  a2.send(fake_daemon::state(as.record, 2, task_state::succeeded, 0));
  a2.expect_ack("t-1", 1, 2);
  auto rec = get("/api/v1/tasks/t-1");
  EXPECT_EQ(rec["state"], "succeeded");
  EXPECT_EQ(rec["attempt"], 1);
}

TEST_F(server_test, interrupted_result_requeues_as_next_attempt) {
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1", 1);
  auto a = d.expect<proto::assign>();
  d.send(fake_daemon::output("t-1", 1, 1, {{0, 1, "x"}}));
  d.send(fake_daemon::state(a.record, 2, task_state::interrupted));
  d.expect_ack("t-1", 1, 2);
  auto again = d.expect<proto::assign>();
  EXPECT_EQ(again.record.attempt, 2u);
  EXPECT_EQ(again.record.next_seq, 1u);
  finish(d, again.record, 1);
  EXPECT_EQ(get("/api/v1/tasks/t-1")["state"], "succeeded");
}

TEST_F(server_test, unknown_assigned_attempt_in_hello_is_requeued) {
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1", 1);
  d.expect<proto::assign>();
  d.close();
  d.wait_closed();
  // The daemon restarted without knowing the attempt: it runs again.
  auto& d2 = daemon();
  d2.hello("d-1", 1);
  auto a = d2.expect<proto::assign>();
  EXPECT_EQ(a.record.attempt, 2u);
}

// -- scheduling ---------------------------------------------------------------

TEST_F(server_test, selectors_route_and_tasks_queue_until_capacity) {
  start();
  auto& k8s = daemon();
  k8s.hello("d-k8s", 1, "k8s");
  auto& gpu = daemon();
  gpu.hello("d-gpu", 1, "cloudflare", {{"gpu", "1"}});
  submit("t-k1", {{"selector", {{"pool", "k8s"}}}});
  submit("t-g", {{"selector", {{"gpu", "1"}}}});
  submit("t-k2", {{"selector", {{"pool", "k8s"}}}});
  submit("t-none", {{"selector", {{"pool", "nowhere"}}}});
  auto a1 = k8s.expect<proto::assign>();
  EXPECT_EQ(a1.record.spec.id, "t-k1");
  EXPECT_EQ(gpu.expect<proto::assign>().record.spec.id, "t-g");
  EXPECT_TRUE(k8s.quiet_for(200ms)); // capacity 1
  EXPECT_EQ(metric("makima_queue_depth"), 2);
  EXPECT_EQ(metric("makima_daemons{pool=\"k8s\"}"), 1);
  finish(k8s, a1.record, 1);
  auto a2 = k8s.expect<proto::assign>();
  EXPECT_EQ(a2.record.spec.id, "t-k2");
  EXPECT_EQ(get("/api/v1/tasks/t-none")["state"], "queued");
  // A daemon of the right pool joins: the last one runs.
  auto& late = daemon();
  late.hello("d-late", 1, "nowhere");
  EXPECT_EQ(late.expect<proto::assign>().record.spec.id, "t-none");
}

TEST_F(server_test, prefers_cached_repo_then_least_loaded) {
  start();
  auto& plain = daemon();
  plain.hello("d-a", 4);
  auto& cached = daemon();
  cached.hello("d-b", 4, "local", {}, {}, {"https://git.example/r.git"});
  submit("t-r", {{"repo", "https://git.example/r.git"}});
  EXPECT_EQ(cached.expect<proto::assign>().record.spec.id, "t-r");
  // Without a repo: the least loaded (d-a has 0 of 4, d-b 1 of 4).
  submit("t-x");
  EXPECT_EQ(plain.expect<proto::assign>().record.spec.id, "t-x");
}

TEST_F(server_test, many_tasks_spread_over_daemons_each_result_once) {
  start();
  constexpr int n = 200;
  auto& d1 = daemon();
  d1.hello("d-1", 4);
  auto& d2 = daemon();
  d2.hello("d-2", 4);
  std::atomic<int> finished{0};
  // Each daemon runs what it is assigned: running, output, result.
  auto work = [&](fake_daemon& d, int& count) {
    while (finished < n) {
      auto f = d.next(200ms);
      if (!f)
        continue;
      auto a = std::get_if<proto::assign>(&*f);
      if (!a)
        continue; // acks
      auto& r = a->record;
      d.send(fake_daemon::state(r, 1, task_state::running));
      d.send(fake_daemon::output(r.spec.id, r.attempt, 2,
                                 {{r.next_seq, 1, "out " + r.spec.id + "\n"}}));
      d.send(fake_daemon::state(r, 3, task_state::succeeded, 0));
      ++count;
      ++finished;
    }
  };
  int c1 = 0;
  int c2 = 0;
  std::thread t1([&] { work(d1, c1); });
  std::thread t2([&] { work(d2, c2); });
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i)
    submit("m-" + std::to_string(1000 + i));
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (metric("makima_tasks{state=\"succeeded\"}") != n
         && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  auto secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  finished = n; // stops the workers if something is missing
  t1.join();
  t2.join();
  EXPECT_EQ(metric("makima_tasks{state=\"succeeded\"}"), n);
  EXPECT_EQ(c1 + c2, n); // every task assigned exactly once
  EXPECT_GT(c1, 0);
  EXPECT_GT(c2, 0);
  for (int i = 0; i < n; i += 37) {
    auto id = "m-" + std::to_string(1000 + i);
    EXPECT_EQ(output_of(id), "out " + id + "\n");
    EXPECT_EQ(get("/api/v1/tasks/" + id)["attempt"], 1);
  }
  std::printf("[ info     ] %d tasks through 2 daemons in %.3f s\n", n, secs);
}

// -- restart ------------------------------------------------------------------

TEST_F(server_test, restart_keeps_tasks_output_and_acks) {
  start();
  submit("t-run");
  auto& d = daemon();
  d.hello("d-1", 1);
  auto a = d.expect<proto::assign>();
  d.send(fake_daemon::state(a.record, 1, task_state::running));
  d.send(fake_daemon::output("t-run", 1, 2, {{0, 1, "before\n"}}));
  d.expect_ack("t-run", 1, 2);
  submit("t-queued"); // no capacity: stays queued
  restart();
  EXPECT_EQ(d.wait_closed(), proto::close_going_away);
  auto rec = get("/api/v1/tasks/t-run");
  EXPECT_EQ(rec["state"], "running");
  EXPECT_EQ(rec["next_seq"], 1);
  EXPECT_EQ(output_of("t-run"), "before\n");
  EXPECT_EQ(get("/api/v1/tasks/t-queued")["state"], "queued");
  auto& d2 = daemon();
  auto w = d2.hello("d-1", 1, "local", {}, {{"t-run", 1, 3}});
  ASSERT_EQ(w.acked.size(), 1u);
  EXPECT_EQ(w.acked[0].seq, 2u);
  // A replay of what was acked before the restart changes nothing.
  d2.send(fake_daemon::output("t-run", 1, 2, {{0, 1, "before\n"}}));
  d2.expect_ack("t-run", 1, 2);
  d2.send(fake_daemon::output("t-run", 1, 3, {{1, 1, "after\n"}}));
  d2.send(fake_daemon::state(a.record, 4, task_state::succeeded, 0));
  d2.expect_ack("t-run", 1, 4);
  EXPECT_EQ(output_of("t-run"), "before\nafter\n");
  // Capacity is free again: the queued task is assigned.
  EXPECT_EQ(d2.expect<proto::assign>().record.spec.id, "t-queued");
}

TEST_F(server_test, restart_requeues_when_the_daemon_does_not_return) {
  settings.lease = 0.3;
  start();
  submit("t-1");
  {
    auto& d = daemon();
    d.hello("d-gone", 1);
    d.expect<proto::assign>();
  }
  restart();
  // The lease (counted from the restart) ends: the task is queued again.
  EXPECT_EQ(get("/api/v1/tasks/t-1")["state"], "preparing");
  EXPECT_TRUE(wait_state("t-1", "queued", 3s));
  auto& other = daemon();
  other.hello("d-other", 1);
  auto a = other.expect<proto::assign>();
  EXPECT_EQ(a.record.spec.id, "t-1");
  EXPECT_EQ(a.record.attempt, 2u);
}

TEST_F(server_test, start_fails_cleanly_when_the_port_is_taken) {
  start();
  server_settings other = settings;
  test::temp_dir dir2;
  other.db_dir = dir2 / "db";
  other.port = node->port();
  auto second = server_node::start(sys, other);
  EXPECT_FALSE(second);
  // The same store twice: RocksDB's lock refuses it.
  auto same = server_node::start(sys, settings);
  ASSERT_FALSE(same);
  EXPECT_EQ(code_of(same.error()), ec::store_locked);
  EXPECT_EQ(http("GET", "/healthz", {}, "").body, "ok");
}

// -- bad input on the WebSocket (§9) ------------------------------------------

TEST_F(server_test, bad_frames_get_their_error_and_close_code) {
  settings.max_frame_bytes = 64 << 10;
  start();
  struct bad_case {
    std::string text;
    bool hello_first;
    std::string code;
    uint16_t close;
  };
  std::string hello =
      proto::encode(proto::hello{"d-x", "x", "local", {}, 1, 0, {}, {}, "t"});
  std::vector<bad_case> cases{
      {"{not json", false, "malformed", proto::close_invalid_payload},
      {"[1,2]", false, "malformed", proto::close_invalid_payload},
      {R"({"v":3,"type":"heartbeat"})", false, "unsupported_version",
       proto::close_unsupported_version},
      {R"({"type":"heartbeat"})", false, "unsupported_version",
       proto::close_unsupported_version},
      {R"({"v":1,"type":"gossip"})", false, "unknown_type",
       proto::close_unknown_type},
      {R"({"v":1,"type":"heartbeat"})", false, "hello_required",
       proto::close_hello_required},
      {hello, true, "bad_message", proto::close_policy}, // second hello
      {R"({"v":1,"type":"event","task":"nope","attempt":1,"seq":1,)"
       R"("kind":"output","at":1,"chunks":[]})",
       true, "bad_message", proto::close_policy},
      {R"({"v":1,"type":"welcome","server_version":"x","heartbeat":5,)"
       R"("lease":30,"max_frame_bytes":1,"acked":[]})",
       true, "bad_message", proto::close_policy},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.text);
    auto& d = daemon();
    if (c.hello_first)
      d.hello("d-x");
    d.send_raw(c.text);
    auto err = d.expect<proto::error>();
    EXPECT_EQ(err.code, c.code);
    EXPECT_EQ(d.wait_closed(), c.close);
  }
  // Too big: closed by the transport with 1009, no error frame.
  auto& big = daemon();
  big.hello("d-big");
  big.send_raw(R"({"v":1,"type":"heartbeat","pad":")"
               + std::string(100 << 10, 'x') + "\"}");
  EXPECT_EQ(big.wait_closed(), proto::close_too_big) << big.close_reason();
  // No hello in time.
  auto& slow = daemon();
  EXPECT_EQ(slow.expect<proto::error>(2s).code, "hello_required");
  EXPECT_EQ(slow.wait_closed(), proto::close_hello_required);
  // The server still serves.
  auto& good = daemon();
  good.hello("d-good");
  good.send(proto::heartbeat{});
  good.expect<proto::heartbeat>();
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"malformed\"}"), 2);
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"unsupported_version\"}"),
            2);
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"unknown_type\"}"), 1);
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"hello_required\"}"), 2);
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"bad_message\"}"), 3);
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"too_big\"}"), 1);
  EXPECT_EQ(metric("makima_ws_closed_total{code=\"1009\"}"), 1);
  EXPECT_EQ(metric("makima_ws_closed_total{code=\"1007\"}"), 2);
  EXPECT_EQ(metric("makima_ws_connections_total"), 12);
}

TEST_F(server_test, binary_frame_is_closed_with_1003) {
  start();
  // A raw WebSocket client: ws_client sends text only.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(node->port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  std::string up = "GET /ws/daemon HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "Authorization: Bearer "
                   + daemon_key + "\r\n\r\n";
  ::send(fd, up.data(), up.size(), MSG_NOSIGNAL);
  std::string raw;
  auto read_more = [&] {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0)
      return false;
    char buf[1024];
    auto n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0)
      return false;
    raw.append(buf, static_cast<size_t>(n));
    return true;
  };
  while (raw.find("\r\n\r\n") == std::string::npos)
    ASSERT_TRUE(read_more()) << raw;
  ASSERT_EQ(raw.rfind("HTTP/1.1 101", 0), 0u) << raw;
  raw.erase(0, raw.find("\r\n\r\n") + 4);
  // FIN + binary, masked, 3 bytes.
  unsigned char frame[] = {0x82, 0x83, 1, 2, 3, 4, 'a' ^ 1, 'b' ^ 2, 'c' ^ 3};
  ::send(fd, frame, sizeof(frame), MSG_NOSIGNAL);
  while (raw.size() < 4)
    ASSERT_TRUE(read_more()) << "no close frame";
  // Answer the close handshake (masked close frame echoing 1003), then EOF.
  unsigned char reply[] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xeb};
  ::send(fd, reply, sizeof(reply), MSG_NOSIGNAL);
  std::string rest;
  std::swap(rest, raw);
  while (read_more()) {
  }
  std::swap(rest, raw);
  ::close(fd);
  EXPECT_EQ(static_cast<unsigned char>(raw[0]), 0x88); // FIN + close
  auto code = static_cast<unsigned>(static_cast<unsigned char>(raw[2])) << 8
              | static_cast<unsigned char>(raw[3]);
  EXPECT_EQ(code, proto::close_unsupported_data);
  // The close reaches the actor asynchronously: wait for the counter.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (metric("makima_ws_rejected_total{reason=\"binary\"}") != 1
         && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  EXPECT_EQ(metric("makima_ws_rejected_total{reason=\"binary\"}"), 1)
      << metrics();
  EXPECT_EQ(metric("makima_ws_closed_total{code=\"1003\"}"), 1);
}

TEST_F(server_test, events_of_attempts_never_assigned_are_bad_messages) {
  start();
  submit("t-1");
  auto& owner = daemon();
  owner.hello("d-owner", 1);
  auto a = owner.expect<proto::assign>();
  auto& other = daemon();
  other.hello("d-other", 1);
  other.send(fake_daemon::state(a.record, 1, task_state::running));
  EXPECT_EQ(other.expect<proto::error>().code, "bad_message");
  EXPECT_EQ(other.wait_closed(), proto::close_policy);
  // A future attempt from the owner is a violation too.
  auto future = a.record;
  future.attempt = 5;
  owner.send(fake_daemon::state(future, 1, task_state::running));
  EXPECT_EQ(owner.expect<proto::error>().code, "bad_message");
  EXPECT_EQ(owner.wait_closed(), proto::close_policy);
}

// -- authentication (§2) ------------------------------------------------------

TEST_F(server_test, keys_are_checked_with_401_and_403) {
  start();
  auto none = http("GET", "/api/v1/tasks", {}, "");
  EXPECT_EQ(none.status, 401u);
  EXPECT_EQ(none.headers["www-authenticate"], "Bearer");
  EXPECT_EQ(json::parse(none.body)["error"]["code"], "unauthorized");
  EXPECT_EQ(http("GET", "/api/v1/tasks", {}, "wrong").status, 401u);
  auto wrong_kind = http("GET", "/api/v1/tasks", {}, daemon_key);
  EXPECT_EQ(wrong_kind.status, 403u);
  EXPECT_EQ(json::parse(wrong_kind.body)["error"]["code"], "forbidden");
  EXPECT_EQ(http("GET", "/api/v1/tasks", {}, "user-key-2").status, 200u);
  EXPECT_EQ(http("GET", "/healthz", {}, "").status, 200u);
  EXPECT_EQ(http("GET", "/readyz", {}, "").body, "ready");
  // The daemon endpoint: a user key is the wrong kind, no key is unknown.
  auto& as_user = daemon(user_key, true);
  EXPECT_NE(as_user.wait_closed(), 0);
  EXPECT_EQ(as_user.http_status(), 403u);
  auto& wrong = daemon("nope", true);
  EXPECT_NE(wrong.wait_closed(), 0);
  EXPECT_EQ(wrong.http_status(), 401u);
  EXPECT_EQ(metric("makima_http_rejected_total{reason=\"auth\"}"), 5);
  // No key text in any response.
  EXPECT_EQ(none.body.find(user_key), std::string::npos);
}

TEST_F(server_test, no_auth_accepts_requests_without_a_key) {
  settings.no_auth = true;
  settings.user_keys.clear();
  settings.daemon_keys.clear();
  start();
  EXPECT_EQ(http("GET", "/api/v1/tasks", {}, "").status, 200u);
  auto& d = daemon("");
  d.hello("d-1");
}

// -- HTTP API (§10) -----------------------------------------------------------

TEST_F(server_test, bad_requests_get_their_status) {
  settings.max_body_bytes = 1024;
  start();
  auto big = http("POST", "/api/v1/tasks",
                  R"({"argv":["x"],"pad":")" + std::string(4096, 'x') + "\"}");
  EXPECT_EQ(big.status, 413u);
  for (auto body : {"{", "[]", R"({"argv":[]})", R"({"argv":"ls"})",
                    R"({"argv":["ls"],"id":"bad id/x"})",
                    R"({"argv":["ls"],"env":["NOEQUALS"]})",
                    R"({"argv":["ls"],"timeout":-1})",
                    R"({"argv":["ls"],"selector":{"pool":1}})",
                    R"({"argv":["ls"],"commit":true})"}) {
    auto res = http("POST", "/api/v1/tasks", body);
    EXPECT_EQ(res.status, 400u) << body;
    EXPECT_EQ(json::parse(res.body)["error"]["code"], "invalid_argument");
  }
  submit("t-1");
  auto dup = http("POST", "/api/v1/tasks", R"({"id":"t-1","argv":["ls"]})");
  EXPECT_EQ(dup.status, 409u);
  EXPECT_EQ(json::parse(dup.body)["error"]["code"], "task_exists");
  auto missing = http("GET", "/api/v1/tasks/t-9");
  EXPECT_EQ(missing.status, 404u);
  EXPECT_EQ(json::parse(missing.body)["error"]["code"], "task_not_found");
  EXPECT_EQ(http("GET", "/api/v1/tasks/t-9/output").status, 404u);
  EXPECT_EQ(http("GET", "/api/v1/nothing").status, 404u);
  EXPECT_EQ(http("GET", "/elsewhere").status, 404u);
  // Deny by default: an unknown path needs a key too.
  EXPECT_EQ(http("GET", "/elsewhere", {}, "").status, 401u);
  auto wrong = http("DELETE", "/api/v1/tasks");
  EXPECT_EQ(wrong.status, 405u);
  EXPECT_EQ(wrong.headers["allow"], "GET, POST");
  // Issue 11: a queued task has nothing to checkpoint or pull (409); a
  // migrate of it only takes a new selector (202); unknown tasks are 404.
  auto cp = http("POST", "/api/v1/tasks/t-1/checkpoint");
  EXPECT_EQ(cp.status, 409u);
  EXPECT_EQ(json::parse(cp.body)["error"]["code"], "bad_state");
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-1/pull").status, 409u);
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-1/migrate",
                 R"({"selector":{"pool":"k8s"}})")
                .status,
            202u);
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-1/migrate", R"({"selector":[1]})")
                .status,
            400u);
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-9/checkpoint").status, 404u);
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-9/migrate").status, 404u);
  EXPECT_EQ(http("GET", "/api/v1/tasks/t-1/checkpoint").status, 405u);
  EXPECT_EQ(http("GET", "/api/v1/tasks?limit=0").status, 400u);
  EXPECT_EQ(http("GET", "/api/v1/tasks?state=bogus").status, 400u);
  EXPECT_EQ(http("GET", "/api/v1/tasks/t-1/output?from=x").status, 400u);
  EXPECT_EQ(metric("makima_http_requests_total{code=\"413\"}"), 1);
  EXPECT_EQ(metric("makima_http_rejected_total{reason=\"body_limit\"}"), 1);
}

TEST_F(server_test, list_pages_by_id) {
  start();
  for (auto id : {"a-1", "a-2", "a-3"})
    submit(id);
  auto p1 = get("/api/v1/tasks?limit=2");
  ASSERT_EQ(p1["tasks"].size(), 2u);
  EXPECT_EQ(p1["next"], "a-2");
  auto p2 = get("/api/v1/tasks?limit=2&after=a-2");
  ASSERT_EQ(p2["tasks"].size(), 1u);
  EXPECT_EQ(p2["tasks"][0]["id"], "a-3");
  EXPECT_TRUE(p2["next"].is_null());
}

TEST_F(server_test, cancel_queued_and_running_tasks) {
  start();
  submit("t-q", {{"selector", {{"pool", "none"}}}});
  auto res = http("POST", "/api/v1/tasks/t-q/cancel");
  EXPECT_EQ(res.status, 202u);
  EXPECT_EQ(json::parse(res.body)["state"], "cancelled");
  auto again = http("POST", "/api/v1/tasks/t-q/cancel");
  EXPECT_EQ(again.status, 409u);
  EXPECT_EQ(json::parse(again.body)["error"]["code"], "bad_state");
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-9/cancel").status, 404u);
  submit("t-r");
  auto& d = daemon();
  d.hello("d-1");
  auto a = d.expect<proto::assign>();
  d.send(fake_daemon::state(a.record, 1, task_state::running));
  d.expect_ack("t-r", 1, 1);
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-r/cancel").status, 202u);
  auto c = d.expect<proto::cancel>();
  EXPECT_EQ(c.task, "t-r");
  EXPECT_EQ(c.attempt, 1u);
  EXPECT_EQ(c.reason, "user");
  d.send(fake_daemon::state(a.record, 2, task_state::cancelled));
  d.expect_ack("t-r", 1, 2);
  EXPECT_EQ(get("/api/v1/tasks/t-r")["state"], "cancelled");
}

TEST_F(server_test, cancel_reaches_a_daemon_that_was_away_when_it_returns) {
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1", 1);
  auto a = d.expect<proto::assign>();
  d.close();
  EXPECT_EQ(d.wait_closed(), 1000);
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-1/cancel").status, 202u);
  auto& back = daemon();
  back.hello("d-1", 1, "local", {}, {{"t-1", 1, 0}});
  auto c = back.expect<proto::cancel>();
  EXPECT_EQ(c.task, "t-1");
  EXPECT_EQ(c.reason, "user");
  back.send(fake_daemon::state(a.record, 1, task_state::cancelled));
  back.expect_ack("t-1", 1, 1);
  EXPECT_EQ(get("/api/v1/tasks/t-1")["state"], "cancelled");
}

TEST_F(server_test, cancelled_task_of_a_lost_daemon_ends_cancelled) {
  settings.lease = 0.3;
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1", 1);
  d.expect<proto::assign>();
  d.close();
  EXPECT_EQ(d.wait_closed(), 1000);
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-1/cancel").status, 202u);
  // The lease ends: cancelled instead of re-queued.
  EXPECT_TRUE(wait_state("t-1", "cancelled", 3s));
  EXPECT_EQ(metric("makima_queue_depth"), 0);
}

TEST_F(server_test, replay_after_a_lease_cancel_is_fenced_not_refused) {
  settings.lease = 0.3;
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1", 1);
  auto a = d.expect<proto::assign>();
  d.close();
  EXPECT_EQ(d.wait_closed(), 1000);
  EXPECT_EQ(http("POST", "/api/v1/tasks/t-1/cancel").status, 202u);
  EXPECT_TRUE(wait_state("t-1", "cancelled", 3s));
  // The daemon returns and replays before it read the fencing cancel.
  auto& back = daemon();
  back.hello("d-1", 1, "local", {}, {{"t-1", 1, 1}});
  back.send(fake_daemon::state(a.record, 1, task_state::running));
  EXPECT_EQ(back.expect<proto::cancel>().reason, "fenced");
  EXPECT_EQ(back.expect<proto::error>().code, "stale_attempt");
  EXPECT_EQ(back.expect<proto::ack>().seq, 1u);
  EXPECT_EQ(back.expect<proto::cancel>().reason, "fenced");
  EXPECT_EQ(get("/api/v1/tasks/t-1")["state"], "cancelled");
}

TEST_F(server_test, follow_streams_output_then_end) {
  settings.keep_alive = 100ms;
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1");
  auto a = d.expect<proto::assign>();
  d.send(fake_daemon::output("t-1", 1, 1, {{0, 1, "one\n"}}));
  d.expect_ack("t-1", 1, 1);
  sse_reader r{node->port(),
               "/api/v1/tasks/t-1/output?follow=1",
               {"Authorization: Bearer " + user_key}};
  ASSERT_TRUE(r.read_until([&] { return r.events.size() >= 1; }));
  EXPECT_EQ(r.head.rfind("HTTP/1.1 200", 0), 0u) << r.head;
  EXPECT_NE(r.head.find("Content-Type: text/event-stream"), std::string::npos);
  EXPECT_NE(r.head.find("Cache-Control: no-cache"), std::string::npos);
  d.send(fake_daemon::state(a.record, 2, task_state::running));
  d.send(fake_daemon::output("t-1", 1, 3, {{1, 2, "two\n"}}));
  // A keep-alive comment arrives while the stream is idle.
  EXPECT_TRUE(r.read_until(
      [&] { return r.raw.find(": keep-alive\n\n") != std::string::npos; }));
  d.send(fake_daemon::state(a.record, 4, task_state::succeeded, 0));
  ASSERT_TRUE(r.read_until([&] { return r.events.size() >= 4; }));
  EXPECT_TRUE(r.read_until([&] { return r.eof; })); // closed after `end`
  auto& events = r.events;
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].event, "output");
  EXPECT_EQ(events[0].id, "0");
  EXPECT_EQ(events[1].event, "state");
  EXPECT_EQ(json::parse(events[1].data)["state"], "running");
  EXPECT_EQ(events[2].event, "output");
  EXPECT_EQ(events[2].id, "1");
  auto chunk = json::parse(events[2].data);
  EXPECT_EQ(chunk["stream"], 2);
  EXPECT_EQ(*proto::base64_decode(chunk["data"].get<std::string>()), "two\n");
  EXPECT_EQ(events[3].event, "end");
  EXPECT_EQ(json::parse(events[3].data)["state"], "succeeded");
  // Reconnecting with Last-Event-ID continues after it, then ends.
  sse_reader again{node->port(),
                   "/api/v1/tasks/t-1/output?follow=1&from=0",
                   {"Authorization: Bearer " + user_key, "Last-Event-ID: 0"}};
  ASSERT_TRUE(again.read_until([&] { return again.eof; }));
  ASSERT_EQ(again.events.size(), 2u);
  EXPECT_EQ(again.events[0].id, "1");
  EXPECT_EQ(again.events[1].event, "end");
}

TEST_F(server_test, drain_tells_daemons_and_waits_for_them) {
  start();
  auto& d = daemon();
  d.hello("d-1");
  std::atomic<bool> done{false};
  bool drained = false;
  std::thread t([&] {
    drained = node->drain(5s);
    done = true;
  });
  EXPECT_EQ(d.expect<proto::drain>().reason, "shutdown");
  EXPECT_FALSE(done);
  EXPECT_EQ(http("GET", "/readyz", {}, "").status, 503u);
  // Submissions are kept queued; nothing is assigned while draining.
  EXPECT_EQ(submit("t-1")["state"], "queued");
  EXPECT_TRUE(d.quiet_for(200ms));
  d.close(1000);
  t.join();
  EXPECT_TRUE(drained);
}

// -- issue 7: attempt budget, retry backoff, input and protocol checks -------

TEST_F(server_test, interrupted_every_time_fails_after_the_budget) {
  settings.max_attempts = 3;
  settings.retry_backoff = 0.02;
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1", 1);
  for (uint32_t n = 1; n <= 3; ++n) {
    auto a = d.expect<proto::assign>();
    ASSERT_EQ(a.record.attempt, n);
    d.send(fake_daemon::state(a.record, 1, task_state::interrupted));
    d.expect_ack("t-1", n, 1);
  }
  ASSERT_TRUE(wait_state("t-1", "failed", 5s));
  EXPECT_TRUE(d.quiet_for(300ms)); // no attempt 4
  auto rec = get("/api/v1/tasks/t-1?history=1");
  EXPECT_EQ(rec["attempt"], 3);
  EXPECT_EQ(rec["error_code"], "attempts_exhausted");
  EXPECT_EQ(rec["error"], "attempt budget exhausted: 3 attempts, last: "
                          "attempt interrupted on daemon d-1");
  int causes = 0;
  std::set<int> attempts;
  for (auto& h : rec["history"])
    if (h["state"] == "interrupted"
        && h["detail"] == "attempt interrupted on daemon d-1") {
      ++causes;
      attempts.insert(h["attempt"].get<int>());
    }
  EXPECT_EQ(causes, 3);
  EXPECT_EQ(attempts, (std::set<int>{1, 2, 3}));
  EXPECT_EQ(rec["history"].back()["state"], "failed");
  // Without ?history the record has none.
  EXPECT_FALSE(get("/api/v1/tasks/t-1").contains("history"));
}

TEST_F(server_test, submit_max_attempts_overrides_the_default_lease_causes) {
  settings.max_attempts = 5;
  settings.retry_backoff = 0.02;
  settings.lease = 0.3;
  start();
  auto rec = submit("t-1", {{"max_attempts", 2}});
  EXPECT_EQ(rec["spec"]["max_attempts"], 2);
  for (auto id : {"d-a", "d-b"}) {
    auto& d = daemon();
    d.hello(id, 1);
    d.expect<proto::assign>();
    EXPECT_EQ(d.wait_closed(3s), proto::close_lease_expired);
  }
  ASSERT_TRUE(wait_state("t-1", "failed", 5s));
  auto j = get("/api/v1/tasks/t-1?history=1");
  EXPECT_EQ(j["error"], "attempt budget exhausted: 2 attempts, last: lease "
                        "of daemon d-b expired");
  std::vector<std::string> causes;
  for (auto& h : j["history"]) {
    auto detail = h["detail"].get<std::string>();
    if (detail.rfind("lease of daemon", 0) == 0)
      causes.push_back(detail.substr(0, detail.find(';')));
  }
  EXPECT_EQ(causes, (std::vector<std::string>{"lease of daemon d-a expired",
                                              "lease of daemon d-b expired"}));
  // A new daemon gets nothing.
  auto& d = daemon();
  d.hello("d-c", 1);
  EXPECT_TRUE(d.quiet_for(300ms));
}

TEST_F(server_test, a_requeued_task_waits_for_its_backoff) {
  settings.retry_backoff = 0.6;
  start();
  submit("t-1");
  auto& d = daemon();
  d.hello("d-1", 1);
  auto a = d.expect<proto::assign>();
  d.send(fake_daemon::state(a.record, 1, task_state::interrupted));
  d.expect_ack("t-1", 1, 1);
  // Not before 0.6 s (a lower bound: a slow machine only delays it more).
  EXPECT_TRUE(d.quiet_for(300ms));
  EXPECT_EQ(get("/api/v1/tasks/t-1")["state"], "queued");
  auto again = d.expect<proto::assign>();
  EXPECT_EQ(again.record.attempt, 2u);
  auto j = get("/api/v1/tasks/t-1?history=1");
  bool said = false;
  for (auto& h : j["history"])
    said |= h["detail"].get<std::string>().find("next attempt in 600 ms")
            != std::string::npos;
  EXPECT_TRUE(said) << j.dump();
}

TEST_F(server_test, submit_rejects_nul_bad_env_names_and_out_of_range_times) {
  start();
  struct bad_case {
    std::string body;
    std::string field;
  };
  std::string nul(1, '\0');
  std::vector<bad_case> cases{
      {json{{"argv", {"a" + nul + "b"}}}.dump(), "argv[0]"},
      {json{{"argv", {"echo", nul}}}.dump(), "argv[1]"},
      {R"({"argv":["a\u0000b"]})", "argv[0]"},
      {json{{"argv", {"true"}}, {"env", {"A" + nul + "B=1"}}}.dump(), "env[0]"},
      {json{{"argv", {"true"}}, {"env", {"A=1", "B=x" + nul}}}.dump(),
       "env[1]"},
      {R"({"argv":["true"],"env":["A\u0000B=1"]})", "env[0]"},
      {R"({"argv":["true"],"env":["=1"]})", "env[0]"},
      {R"({"argv":["true"],"env":["NOVALUE"]})", "env[0]"},
      {R"({"argv":["true"],"env":{"A\u0000B":"1"}})", "env"},
      {json{{"argv", {"true"}}, {"ref", "main" + nul}}.dump(), "ref"},
      {json{{"argv", {"true"}}, {"repo", "/r" + nul}}.dump(), "repo"},
      {json{{"argv", {"true"}}, {"selector", {{"pool", "k" + nul}}}}.dump(),
       "selector"},
      {R"({"argv":["true"],"timeout":1e308})", "timeout"},
      {R"({"argv":["true"],"grace":1e308})", "grace"},
      {R"({"argv":["true"],"timeout":-1})", "timeout"},
      {R"({"argv":["true"],"grace":-0.5})", "grace"},
      {R"({"argv":["true"],"timeout":"NaN"})", "timeout"},
      {R"({"argv":["true"],"timeout":"inf"})", "timeout"},
      {R"({"argv":["true"],"timeout":2592001})", "timeout"},
      {R"({"argv":["true"],"grace":1e10})", "grace"},
      {R"({"argv":["true"],"max_attempts":0})", "max_attempts"},
      {R"({"argv":["true"],"max_attempts":-1})", "max_attempts"},
      {R"({"argv":["true"],"max_attempts":1.5})", "max_attempts"},
      {R"({"argv":["true"],"max_attempts":"3"})", "max_attempts"},
      {R"({"argv":["true"],"max_attempts":1001})", "max_attempts"},
  };
  for (auto& c : cases) {
    auto res = http("POST", "/api/v1/tasks", c.body);
    EXPECT_EQ(res.status, 400u) << c.body << ": " << res.body;
    auto j = json::parse(res.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << res.body;
    auto msg = j["error"]["message"].get<std::string>();
    EXPECT_EQ(msg.rfind(c.field, 0), 0u) << c.body << ": " << msg;
  }
  EXPECT_EQ(get("/api/v1/tasks")["tasks"].size(), 0u);
  // The limits themselves are fine.
  auto ok = submit("t-max", {{"timeout", max_timeout_seconds},
                             {"grace", 0},
                             {"max_attempts", max_attempts_limit}});
  EXPECT_EQ(ok["spec"]["timeout"], max_timeout_seconds);
  EXPECT_EQ(ok["spec"]["max_attempts"], max_attempts_limit);
}

TEST_F(server_test, submit_refuses_a_task_whose_assign_frame_is_too_big) {
  settings.max_frame_bytes = 64 << 10;
  settings.max_body_bytes = 1 << 20;
  start();
  auto too_big = [&](json body, const char* what) {
    auto res = http("POST", "/api/v1/tasks", body.dump());
    EXPECT_EQ(res.status, 413u) << what;
    auto j = json::parse(res.body, nullptr, false);
    EXPECT_EQ(j["error"]["code"], "payload_too_large") << what;
    auto msg = j["error"]["message"].get<std::string>();
    EXPECT_NE(msg.find("65536"), std::string::npos) << msg;
    EXPECT_NE(msg.find("net.max_frame_bytes"), std::string::npos) << msg;
  };
  too_big({{"argv", {"echo", std::string(60 << 10, 'x')}}}, "one long arg");
  too_big({{"argv", {"true"}}, {"env", {"A=" + std::string(60 << 10, 'y')}}},
          "a long env value");
  // Escaped in JSON: 12 KiB of control bytes take 72 KiB on the wire.
  too_big({{"argv", {"printf", std::string(12 << 10, '\x01')}}},
          "control bytes");
  std::vector<std::string> many(3000, "abcdefghijklmnopqrst");
  many.insert(many.begin(), "echo");
  too_big({{"argv", many}}, "many args");
  EXPECT_EQ(get("/api/v1/tasks")["tasks"].size(), 0u);
  // Well under the limit: accepted, and its assign frame is read.
  submit("t-ok", {{"argv", {"echo", std::string(40 << 10, 'z')}}});
  auto& d = daemon();
  d.hello("d-1", 1);
  auto a = d.expect<proto::assign>();
  EXPECT_EQ(a.record.spec.argv[1].size(), 40u << 10);
}

TEST_F(server_test,
       an_assignment_over_the_frame_limit_fails_instead_of_looping) {
  start();
  submit("t-1", {{"argv", {"echo", std::string(100 << 10, 'x')}}});
  // The limit shrinks across a restart: the stored task can no longer be
  // sent to any daemon.
  settings.max_frame_bytes = 64 << 10;
  restart();
  auto& d = daemon();
  d.hello("d-1", 1);
  ASSERT_TRUE(wait_state("t-1", "failed", 5s));
  EXPECT_TRUE(d.quiet_for(300ms)); // nothing was sent, the link stays up
  d.send(proto::heartbeat{});
  d.expect<proto::heartbeat>();
  auto rec = get("/api/v1/tasks/t-1");
  EXPECT_EQ(rec["error_code"], "frame_too_big");
  EXPECT_NE(rec["error"].get<std::string>().find("65536"), std::string::npos);
  EXPECT_EQ(rec["attempt"], 0);
}

TEST_F(server_test, events_after_the_result_are_bad_messages) {
  for (auto kind : {proto::event_kind::output, proto::event_kind::state}) {
    auto id = std::string{"t-"} + proto::to_string(kind);
    if (!node)
      start();
    submit(id);
    auto& d = daemon();
    d.hello("d-" + id, 1);
    auto a = d.expect<proto::assign>();
    d.send(fake_daemon::output(id, 1, 1, {{0, 1, "ok\n"}}));
    d.send(fake_daemon::state(a.record, 2, task_state::succeeded, 0));
    d.expect_ack(id, 1, 2);
    // A duplicate of the result is still re-acked.
    d.send(fake_daemon::state(a.record, 2, task_state::succeeded, 0));
    d.expect_ack(id, 1, 2);
    if (kind == proto::event_kind::output)
      d.send(fake_daemon::output(id, 1, 3, {{1, 1, "late\n"}}));
    else
      d.send(fake_daemon::state(a.record, 3, task_state::running));
    auto err = d.expect<proto::error>();
    EXPECT_EQ(err.code, "bad_message");
    EXPECT_EQ(err.task, id);
    EXPECT_EQ(d.wait_closed(), proto::close_policy);
    auto rec = get("/api/v1/tasks/" + id);
    EXPECT_EQ(rec["state"], "succeeded");
    EXPECT_EQ(rec["next_seq"], 1);
    EXPECT_EQ(output_of(id), "ok\n");
  }
}

TEST_F(server_test, output_seqs_that_jump_are_seq_gaps) {
  start();
  // Across events (0, 1, then 1000) and inside one event (2, then 1000).
  std::vector<std::vector<std::vector<output_chunk>>> scripts{
      {{{0, 1, "a"}, {1, 1, "b"}}, {{1000, 1, "c"}, {1001, 1, "d"}}},
      {{{0, 1, "a"}, {1, 1, "b"}}, {{2, 1, "c"}, {1000, 1, "d"}}},
      {{{5, 1, "a"}}},
  };
  int n = 0;
  for (auto& script : scripts) {
    auto id = "t-" + std::to_string(++n);
    submit(id);
    auto& d = daemon();
    d.hello("d-" + id, 1);
    d.expect<proto::assign>();
    uint64_t seq = 0;
    for (size_t i = 0; i + 1 < script.size(); ++i) {
      d.send(fake_daemon::output(id, 1, ++seq, script[i]));
      d.expect_ack(id, 1, seq);
    }
    d.send(fake_daemon::output(id, 1, ++seq, script.back()));
    auto err = d.expect<proto::error>();
    EXPECT_EQ(err.code, "seq_gap") << id;
    EXPECT_EQ(d.wait_closed(), proto::close_seq_gap) << id;
    // Nothing of the rejected event was stored.
    EXPECT_EQ(output_of(id), script.size() > 1 ? "ab" : "") << id;
    EXPECT_EQ(get("/api/v1/tasks/" + id)["next_seq"],
              script.size() > 1 ? 2 : 0);
  }
}

} // namespace
} // namespace makima
