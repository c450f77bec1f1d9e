// What `makima server` and `makima daemon` say at their default level
// (info): daemon connects and disconnects, task submit/assign/finish, each
// failure to reach the server with its reason and the backoff, and that
// with MAKIMA_LOG_FORMAT=json every line they write is a JSON object. Plus
// the server's task.timeout / task.grace as defaults of submitted tasks.
#include "tests/integration/fleet.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <sstream>

using namespace makima::it;

namespace {

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (auto p = text.find(needle); p != std::string::npos;
       p = text.find(needle, p + 1))
    ++n;
  return n;
}

} // namespace

TEST(service_logs, server_and_daemon_log_the_lifecycle_at_the_default_level) {
  env e;
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  daemon_proc d;
  ASSERT_TRUE(d.launch(e, srv.ws(), "d1", e.root() / "d1"));
  EXPECT_NE(d.output().find("makima: daemon: connected to " + srv.ws()),
            std::string::npos)
      << d.output();
  EXPECT_TRUE(srv.wait_for("daemon ")) << srv.output();
  api http{srv.http()};
  auto id = http.submit({{"id", "log-1"}, {"argv", {"true"}}});
  ASSERT_TRUE(http.wait_terminal({id}, 30000ms));
  ASSERT_TRUE(srv.wait_for("task log-1 attempt 1 succeeded (exit 0) on daemon"))
      << srv.output();
  auto out = srv.output();
  EXPECT_NE(out.find("server: listening on http://127.0.0.1:"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("connected (name d1"), std::string::npos) << out;
  EXPECT_NE(out.find("task log-1 submitted"), std::string::npos) << out;
  EXPECT_NE(out.find("task log-1 attempt 1 assigned to daemon"),
            std::string::npos)
      << out;
  auto r = d.stop();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("stopping the daemon"), std::string::npos) << r.err;
  EXPECT_TRUE(srv.wait_for("disconnected (")) << srv.output();
}

TEST(service_logs, daemon_logs_each_failure_to_reach_the_server_then_connects) {
  env e;
  auto port = free_port();
  auto url = "ws://127.0.0.1:" + std::to_string(port) + "/ws/daemon";
  daemon_proc d;
  d.argv = {MAKIMA_BINARY, "daemon",  "--server",   url,
            "--name",      "late",    "--data-dir", (e.root() / "d").string(),
            "--api-key",   daemon_key};
  // A short reconnect base so that several failures happen quickly.
  d.extra_env["MAKIMA_RECONNECT"] = "0.1";
  d.start(e);
  ASSERT_TRUE(eventually(
      [&] { return count_of(d.output(), "cannot reach " + url) >= 2; },
      20000ms))
      << d.output();
  auto out = d.output();
  // The reason and the backoff are on each line.
  auto line_start = out.find("cannot reach " + url);
  auto line = out.substr(line_start, out.find('\n', line_start) - line_start);
  EXPECT_NE(line.find("retrying in "), std::string::npos) << line;
  EXPECT_NE(line.find("(attempt "), std::string::npos) << line;
  EXPECT_NE(line.find(url + ": "), std::string::npos) << line;
  EXPECT_GT(line.size(), ("cannot reach " + url + ": ; retrying in").size())
      << "no reason in: " << line;
  // A server appears on that port: the daemon connects and says so.
  server_proc srv;
  auto args = server_args(e.root() / "server");
  args[2] = "127.0.0.1:" + std::to_string(port); // after "--listen"
  ASSERT_TRUE(srv.launch(e, args));
  ASSERT_TRUE(d.wait_for("connected to " + url, 20000ms)) << d.output();
  EXPECT_EQ(d.stop().exit_code, 0);
}

TEST(service_logs, json_format_makes_every_line_of_server_and_daemon_json) {
  env e;
  server_proc srv;
  srv.extra_env["MAKIMA_LOG_FORMAT"] = "json";
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  daemon_proc d;
  d.extra_env["MAKIMA_LOG_FORMAT"] = "json";
  ASSERT_TRUE(d.launch(e, srv.ws(), "dj", e.root() / "dj"));
  api http{srv.http()};
  auto id = http.submit({{"id", "json-1"}, {"argv", {"true"}}});
  ASSERT_TRUE(http.wait_terminal({id}, 30000ms));
  auto dr = d.stop();
  auto sr = srv.stop();
  EXPECT_EQ(dr.exit_code, 0) << dr.err;
  EXPECT_EQ(sr.exit_code, 0) << sr.err;
  for (auto* text : {&dr.err, &sr.err}) {
    std::istringstream in(*text);
    std::string line;
    size_t lines = 0;
    while (std::getline(in, line)) {
      ++lines;
      auto j = json::parse(line, nullptr, false);
      ASSERT_TRUE(j.is_object()) << "not JSON: " << line;
      EXPECT_TRUE(j.contains("level")) << line;
      EXPECT_TRUE(j.contains("msg")) << line;
    }
    EXPECT_GE(lines, 2u) << *text;
  }
  EXPECT_NE(sr.err.find(R"("msg":"listening on http://127.0.0.1:)"),
            std::string::npos)
      << sr.err;
  EXPECT_NE(sr.err.find("draining (again to stop now)"), std::string::npos)
      << sr.err;
  EXPECT_NE(dr.err.find(R"("msg":"connected to )"), std::string::npos)
      << dr.err;
  // An error before exit is JSON too.
  auto bad =
      makima::test::run({MAKIMA_BINARY, "server", "--data-dir",
                         (e.root() / "s2").string(), "--listen", "127.0.0.1:0"},
                        [&] {
                          auto o = e.opts();
                          o.env["MAKIMA_LOG_FORMAT"] = "json";
                          return o;
                        }());
  EXPECT_EQ(bad.exit_code, 2);
  auto j = json::parse(bad.err, nullptr, false);
  ASSERT_TRUE(j.is_object()) << bad.err;
  EXPECT_EQ(j.value("level", ""), "error");
  EXPECT_NE(j.value("msg", "").find("user keys"), std::string::npos) << bad.err;
}

TEST(service_logs, server_task_timeout_and_grace_apply_to_submits_naming_none) {
  env e;
  server_proc srv;
  srv.extra_env["MAKIMA_TASK_TIMEOUT"] = "1";
  srv.extra_env["MAKIMA_TASK_GRACE"] = "2";
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  daemon_proc d;
  ASSERT_TRUE(d.launch(e, srv.ws(), "dt", e.root() / "dt"));
  api http{srv.http()};
  auto slow = http.submit({{"id", "slow"}, {"argv", {"sleep", "30"}}});
  // Named limits win, 0 included (no timeout).
  auto named = http.submit(
      {{"id", "named"}, {"argv", {"true"}}, {"timeout", 0}, {"grace", 5}});
  ASSERT_TRUE(http.wait_terminal({slow, named}, 30000ms)) << srv.output();
  auto s = http.task(slow);
  EXPECT_EQ(s.value("state", ""), "timed_out") << s.dump();
  EXPECT_EQ(s["spec"].value("timeout", -1.0), 1.0) << s.dump();
  EXPECT_EQ(s["spec"].value("grace", -1.0), 2.0) << s.dump();
  auto n = http.task(named);
  EXPECT_EQ(n.value("state", ""), "succeeded") << n.dump();
  EXPECT_EQ(n["spec"].value("timeout", -1.0), 0.0) << n.dump();
  EXPECT_EQ(n["spec"].value("grace", -1.0), 5.0) << n.dump();
  // `task submit --timeout 0` sends its 0 (the server's 1 would apply
  // otherwise).
  auto r = makima::test::run({MAKIMA_BINARY, "task", "submit", "--server",
                              srv.http(), "--api-key", user_key, "--id", "cli0",
                              "--timeout", "0", "--", "true"},
                             e.opts());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(http.wait_terminal({"cli0"}, 30000ms));
  EXPECT_EQ(http.task("cli0")["spec"].value("timeout", -1.0), 0.0);
}
