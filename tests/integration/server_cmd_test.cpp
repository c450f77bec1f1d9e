// `makima server` as a real process on 127.0.0.1: refusing to start without
// keys or with --no-auth off loopback, printing the bound port, serving
// the HTTP API, keeping tasks across a restart, exiting 0 on SIGTERM, and
// never logging a key.
#include "tests/integration/helpers.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <regex>

namespace makima::it {
namespace {

/// One request with a Bearer `key` (none when empty) and a JSON body.
raw_result http(uint16_t port, const std::string& method,
                const std::string& target, const std::string& key,
                const std::string& body = {}) {
  std::vector<std::string> headers;
  if (!key.empty())
    headers.push_back("Authorization: Bearer " + key);
  return raw_http(port, method, target, headers, body);
}

class server_cmd_test : public ::testing::Test {
protected:
  std::vector<std::string> argv(std::vector<std::string> args) {
    std::vector<std::string> out{MAKIMA_BINARY, "server", "--data-dir",
                                 e.data().string()};
    out.insert(out.end(), args.begin(), args.end());
    return out;
  }
  test::run_options opts() {
    auto o = e.opts();
    o.unset_env.push_back("MAKIMA_SERVER_USER_KEYS");
    o.unset_env.push_back("MAKIMA_SERVER_DAEMON_KEYS");
    o.env["MAKIMA_LOG_LEVEL"] = "debug";
    return o;
  }
  env e;
};

TEST_F(server_cmd_test, refuses_to_start_without_keys) {
  auto r = test::run(argv({"--listen", "127.0.0.1:0"}), opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--no-auth"), std::string::npos) << r.err;
}

TEST_F(server_cmd_test, no_auth_listens_only_on_loopback) {
  auto r = test::run(argv({"--listen", "0.0.0.0:0", "--no-auth"}), opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("loopback"), std::string::npos) << r.err;
  auto bad = test::run(argv({"--listen", "nonsense", "--no-auth"}), opts());
  EXPECT_EQ(bad.exit_code, 2);
}

TEST_F(server_cmd_test, prints_the_bound_port_and_exits_0_on_sigterm) {
  test::background srv{argv({"--listen", "127.0.0.1:0", "--no-auth"}), opts()};
  ASSERT_TRUE(srv.wait_for_output("listening on http://127.0.0.1:", 10s));
  srv.kill(SIGTERM);
  auto r = srv.wait(20s);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      r.err, m, std::regex{"listening on http://127\\.0\\.0\\.1:([0-9]+)"}));
  EXPECT_GT(std::stoi(m[1]), 0);
}

TEST_F(server_cmd_test, serves_the_api_and_keeps_tasks_across_a_restart) {
  const std::string user = "u-secret-key-123";
  const std::string daemon = "d-secret-key-456";
  auto port = free_port();
  auto args =
      argv({"--listen", "127.0.0.1:" + std::to_string(port), "--user-key", user,
            "--daemon-key", daemon, "--lease", "5"});
  std::string logs;
  {
    test::background srv{args, opts()};
    ASSERT_TRUE(srv.wait_for_output("listening on", 10s));
    EXPECT_EQ(http(port, "GET", "/healthz", "").body, "ok");
    EXPECT_EQ(http(port, "GET", "/api/v1/tasks", "").status, 401);
    EXPECT_EQ(http(port, "GET", "/api/v1/tasks", daemon).status, 403);
    auto sub = http(port, "POST", "/api/v1/tasks", user,
                    R"({"id":"t-1","argv":["true"]})");
    EXPECT_EQ(sub.status, 201) << sub.body;
    srv.kill(SIGTERM);
    auto r = srv.wait(20s);
    EXPECT_EQ(r.exit_code, 0);
    logs += r.err;
  }
  {
    test::background srv{args, opts()};
    ASSERT_TRUE(srv.wait_for_output("listening on", 10s));
    auto got = http(port, "GET", "/api/v1/tasks/t-1", user);
    EXPECT_EQ(got.status, 200);
    auto j = json::parse(got.body, nullptr, false);
    EXPECT_EQ(j["state"], "queued");
    auto metrics = http(port, "GET", "/metrics", "");
    EXPECT_NE(metrics.body.find("makima_queue_depth 1"), std::string::npos);
    srv.kill(SIGINT);
    auto r = srv.wait(20s);
    EXPECT_EQ(r.exit_code, 0);
    logs += r.err;
  }
  EXPECT_EQ(logs.find(user), std::string::npos) << logs;
  EXPECT_EQ(logs.find(daemon), std::string::npos) << logs;
}

} // namespace
} // namespace makima::it
