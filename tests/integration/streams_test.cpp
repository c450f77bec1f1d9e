// Issue 7 items 8 and 9 against a real `makima server` over raw loopback
// sockets: abandoned `output?follow=1` streams (closed with FIN or RST) are
// dropped and their sessions freed, streams are bounded per key and in total
// (429), and at the file-descriptor limit the accept loop backs off instead
// of spinning while open connections stay served.
#include "tests/integration/fleet.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

using namespace makima::it;

namespace {

std::vector<std::string> stream_server_argv(const fs::path& data) {
  return {MAKIMA_BINARY,          "server",       "--listen",
          "127.0.0.1:0",          "--data-dir",   data.string(),
          "--user-key",           user_key,       "--user-key",
          "second-user-key-77aa", "--daemon-key", daemon_key};
}

/// Starts `argv` (a makima server, possibly wrapped) with extra environment
/// variables and waits until it listens.
bool launch(server_proc& srv, const env& e, std::vector<std::string> argv,
            const std::map<std::string, std::string>& extra_env = {}) {
  srv.argv = std::move(argv);
  auto o = e.opts(600000ms);
  for (auto& [k, v] : extra_env)
    o.env[k] = v;
  srv.bg = std::make_unique<makima::test::background>(srv.argv, o);
  if (!srv.wait_for("listening on ")) {
    ADD_FAILURE() << "server did not start: " << srv.output();
    return false;
  }
  srv.port = listening_port(srv.output());
  return srv.port != 0;
}

/// A connected loopback TCP socket, -1 on failure.
int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    auto n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0)
      return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

/// Reads from `fd` until `done(buffer)` or the timeout; returns the buffer.
std::string read_until(int fd,
                       const std::function<bool(const std::string&)>& done,
                       std::chrono::milliseconds timeout = 10000ms) {
  std::string buf;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done(buf)) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
      break;
    char tmp[4096];
    auto n = ::recv(fd, tmp, sizeof(tmp), 0);
    if (n <= 0)
      break;
    buf.append(tmp, static_cast<size_t>(n));
  }
  return buf;
}

/// The status of the response head in `buf`, 0 when incomplete.
unsigned status_of(const std::string& buf) {
  if (buf.size() < 12 || buf.compare(0, 9, "HTTP/1.1 ") != 0)
    return 0;
  return static_cast<unsigned>(std::atoi(buf.c_str() + 9));
}

bool has_head(const std::string& b) {
  return b.find("\r\n\r\n") != std::string::npos;
}

/// Opens a follow=1 stream with `auth` as the Authorization value; returns
/// the socket and the status of the answer (fd -1 on failure).
std::pair<int, unsigned> follow(uint16_t port, const std::string& task,
                                const std::string& auth) {
  int fd = connect_to(port);
  if (fd < 0)
    return {-1, 0};
  send_all(fd, "GET /api/v1/tasks/" + task
                   + "/output?follow=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Authorization: "
                   + auth + "\r\n\r\n");
  auto head = read_until(fd, has_head);
  return {fd, status_of(head)};
}

/// Closes with FIN (close) or, when `rst`, with RST (SO_LINGER 0).
void drop(int fd, bool rst) {
  if (rst) {
    linger l{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  }
  ::close(fd);
}

long rss_kb(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/status"};
  std::string line;
  while (std::getline(in, line))
    if (line.compare(0, 6, "VmRSS:") == 0)
      return std::atol(line.c_str() + 6);
  return -1;
}

/// utime + stime of `pid`, in seconds.
double cpu_seconds(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string all((std::istreambuf_iterator<char>(in)),
                  std::istreambuf_iterator<char>());
  auto close = all.rfind(')');
  std::istringstream ss{all.substr(close + 2)};
  std::string field;
  unsigned long utime = 0, stime = 0;
  // Fields after the name start at 3 (state); utime is 14, stime 15.
  for (int i = 3; i <= 15 && ss >> field; ++i) {
    if (i == 14)
      utime = std::stoul(field);
    if (i == 15)
      stime = std::stoul(field);
  }
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

/// A task that stays queued for the whole test (no daemon connects).
std::string never_ending_task(const api& a) {
  return a.submit(json{{"argv", {"sleep", "100000"}}});
}

} // namespace

TEST(streams, abandoned_follow_streams_closed_with_fin_or_rst_are_dropped) {
  env e;
  server_proc srv;
  ASSERT_TRUE(launch(srv, e, stream_server_argv(e.root() / "server"),
                     {{"MAKIMA_SERVER_MAX_STREAMS_PER_KEY", "1000"}}));
  api a{srv.http()};
  auto id = never_ending_task(a);
  ASSERT_FALSE(id.empty());
  auto pid = srv.bg->pid();
  const std::string auth = std::string{"Bearer "} + user_key;
  long rss_before = rss_kb(pid);
  constexpr int rounds = 3;
  constexpr int per_round = 300;
  for (int round = 0; round < rounds; ++round) {
    std::vector<int> fds;
    for (int i = 0; i < per_round; ++i) {
      auto [fd, status] = follow(srv.port, id, auth);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(status, 200u) << "stream " << i << " of round " << round;
      fds.push_back(fd);
    }
    EXPECT_EQ(a.metric("makima_sse_streams"), per_round);
    EXPECT_EQ(a.metric("makima_http_stream_sessions"), per_round);
    for (size_t i = 0; i < fds.size(); ++i)
      drop(fds[i], i % 2 == 1);
    // Each stream is idle (a queued task writes nothing): only the pending
    // read on its socket can notice the FIN or RST.
    EXPECT_TRUE(eventually(
        [&] {
          return a.metric("makima_sse_streams") == 0
                 && a.metric("makima_http_stream_sessions") == 0;
        },
        10000ms))
        << "streams still held after round " << round << ": "
        << a.metric("makima_sse_streams") << " in the SERVER, "
        << a.metric("makima_http_stream_sessions") << " sessions";
    std::cerr << "[ rss ] after round " << round + 1 << " ("
              << (round + 1) * per_round
              << " abandoned streams): " << rss_kb(pid)
              << " kB (before: " << rss_before << " kB)\n";
  }
  EXPECT_GE(a.metric("makima_sse_streams_gone_total"), rounds * per_round);
  // The task still works and a new stream still opens.
  auto [fd, status] = follow(srv.port, id, auth);
  EXPECT_EQ(status, 200u);
  drop(fd, false);
}

TEST(streams, follow_streams_are_bounded_per_key_and_in_total_with_429) {
  env e;
  server_proc srv;
  ASSERT_TRUE(launch(srv, e, stream_server_argv(e.root() / "server"),
                     {{"MAKIMA_SERVER_MAX_STREAMS_PER_KEY", "5"},
                      {"MAKIMA_SERVER_MAX_STREAMS", "8"}}));
  api a{srv.http()};
  auto id = never_ending_task(a);
  ASSERT_FALSE(id.empty());
  const std::string key_a = std::string{"Bearer "} + user_key;
  const std::string key_b = "Bearer second-user-key-77aa";
  std::vector<int> of_a;
  for (int i = 0; i < 5; ++i) {
    auto [fd, status] = follow(srv.port, id, key_a);
    ASSERT_EQ(status, 200u) << i;
    of_a.push_back(fd);
  }
  // The same key, spelled several ways, is one key.
  for (auto auth : {key_a, std::string{"bearer "} + user_key,
                    std::string{"BEARER "} + user_key,
                    std::string{"Bearer "} + user_key + " "}) {
    int fd = connect_to(srv.port);
    ASSERT_GE(fd, 0);
    send_all(fd, "GET /api/v1/tasks/" + id
                     + "/output?follow=1 HTTP/1.1\r\nHost: x\r\n"
                       "Authorization: "
                     + auth + "\r\n\r\n");
    auto res = read_until(fd, [](const std::string& b) {
      return b.find("too_many_streams") != std::string::npos
             || (has_head(b) && status_of(b) == 200);
    });
    EXPECT_EQ(status_of(res), 429u) << "'" << auth << "': " << res;
    EXPECT_NE(res.find("application/json"), std::string::npos) << res;
    EXPECT_NE(res.find("\"code\":\"too_many_streams\""), std::string::npos)
        << res;
    EXPECT_NE(res.find("server.max_streams_per_key"), std::string::npos) << res;
    drop(fd, false);
  }
  // Another key still gets streams, up to the total bound.
  std::vector<int> of_b;
  for (int i = 0; i < 3; ++i) {
    auto [fd, status] = follow(srv.port, id, key_b);
    EXPECT_EQ(status, 200u) << i;
    of_b.push_back(fd);
  }
  auto [over, status] = follow(srv.port, id, key_b);
  EXPECT_EQ(status, 429u) << "the 9th stream is over the total of 8";
  drop(over, false);
  EXPECT_GE(a.metric("makima_sse_streams_refused_total{reason=\"per_key\"}"),
            4);
  EXPECT_GE(a.metric("makima_sse_streams_refused_total{reason=\"total\"}"), 1);
  // A stream whose client vanished (RST) frees its place.
  drop(of_a.back(), true);
  of_a.pop_back();
  EXPECT_TRUE(eventually(
      [&] {
        auto [fd, st] = follow(srv.port, id, key_a);
        if (st == 200) {
          of_a.push_back(fd);
          return true;
        }
        drop(fd, false);
        return false;
      },
      10000ms));
  EXPECT_EQ(a.metric("makima_sse_streams"), 8);
  for (int fd : of_a)
    drop(fd, false);
  for (int fd : of_b)
    drop(fd, true);
  EXPECT_TRUE(
      eventually([&] { return a.metric("makima_sse_streams") == 0; }, 10000ms));
}

TEST(streams,
     at_the_descriptor_limit_accept_backs_off_and_open_connections_are_served) {
  env e;
  server_proc srv;
  // Soft and hard limit 64: makima raises soft to hard, so both are low.
  auto args = stream_server_argv(e.root() / "server");
  std::string cmd = "ulimit -n 64 && exec \"$0\"";
  for (size_t i = 1; i < args.size(); ++i)
    cmd += " '" + args[i] + "'";
  ASSERT_TRUE(launch(srv, e, {"/bin/sh", "-c", cmd, args[0]}));
  auto pid = srv.bg->pid();
  {
    std::ifstream limits{"/proc/" + std::to_string(pid) + "/limits"};
    std::string all((std::istreambuf_iterator<char>(limits)),
                    std::istreambuf_iterator<char>());
    ASSERT_NE(all.find("Max open files            64                   64"),
              std::string::npos)
        << all;
  }
  api a{srv.http()};
  // A keep-alive connection opened before the limit is reached.
  int kept = connect_to(srv.port);
  ASSERT_GE(kept, 0);
  auto ask = [&](const std::string& path, const std::string& expect) {
    if (!send_all(kept, "GET " + path
                            + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                            + user_key + "\r\n\r\n"))
      return std::string{};
    return read_until(kept, [&](const std::string& b) {
      return b.find(expect) != std::string::npos;
    });
  };
  ASSERT_EQ(status_of(ask("/healthz", "\r\n\r\nok")), 200u);
  // Connect until the server cannot accept: connects still succeed (the
  // kernel's listen backlog), but no descriptor is left for accept().
  std::vector<int> extra;
  for (int i = 0; i < 120; ++i) {
    int fd = connect_to(srv.port);
    if (fd >= 0)
      extra.push_back(fd);
  }
  std::this_thread::sleep_for(500ms);
  // Not a speed target: a bound on busy-spinning (a spinning accept loop
  // burns about 2 s of CPU in 2 s).
  auto cpu0 = cpu_seconds(pid);
  std::this_thread::sleep_for(2s);
  auto cpu = cpu_seconds(pid) - cpu0;
  EXPECT_LT(cpu, 0.5) << "CPU seconds used in 2 s at the descriptor limit";
  EXPECT_TRUE(eventually(
      [&] {
        auto m =
            ask("/metrics", "makima_accept_errors_total{reason=\"other\"}");
        const std::string sample =
            "\nmakima_accept_errors_total{reason=\"emfile\"} ";
        auto pos = m.find(sample);
        return pos != std::string::npos
               && m.compare(pos + sample.size(), 2, "0\n") != 0;
      },
      10000ms))
      << "accept never failed with EMFILE";
  // The connection opened before is still served.
  EXPECT_EQ(status_of(ask("/healthz", "\r\n\r\nok")), 200u);
  for (int fd : extra)
    drop(fd, false);
  EXPECT_TRUE(eventually(
      [&] {
        makima::net::http_client_options o;
        o.timeout = 2000ms;
        auto r = makima::net::http_request("GET", srv.http() + "/healthz", {}, o);
        return r && r->status == 200;
      },
      20000ms));
  EXPECT_GT(a.metric("makima_accept_errors_total{reason=\"emfile\"}"), 0);
  ::close(kept);
}
