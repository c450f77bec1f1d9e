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

/// A free port on 127.0.0.1 (bound to 0, then released).
uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

struct http_result {
  int status = 0;
  std::string body;
};

/// One HTTP/1.1 request with Connection: close on a raw socket (bounded).
http_result http(uint16_t port, const std::string& method,
                 const std::string& target, const std::string& key,
                 const std::string& body = {}) {
  http_result out;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return out;
  }
  std::string req = method + " " + target
                    + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (!key.empty())
    req += "Authorization: Bearer " + key + "\r\n";
  req += "Content-Type: application/json\r\nContent-Length: "
         + std::to_string(body.size()) + "\r\n\r\n" + body;
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string raw;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0)
      continue;
    char buf[4096];
    auto n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0)
      break;
    raw.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (raw.rfind("HTTP/1.1 ", 0) == 0)
    out.status = std::stoi(raw.substr(9, 3));
  auto sep = raw.find("\r\n\r\n");
  if (sep != std::string::npos)
    out.body = raw.substr(sep + 4);
  return out;
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
