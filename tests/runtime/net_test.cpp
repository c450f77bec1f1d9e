// runtime/net: HTTP and WebSocket over real sockets on 127.0.0.1 (port 0).
// Every wait is bounded.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/error.hpp"
#include "runtime/net/net.hpp"
#include "tests/fixtures/command.hpp"
#include "tests/fixtures/temp_dir.hpp"
#include "tests/fixtures/tls_certs.hpp"

using namespace makima;
using namespace std::chrono_literals;

namespace {

template <class F>
bool wait_until(F f, std::chrono::milliseconds timeout = 10s) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (!f()) {
    if (std::chrono::steady_clock::now() > end)
      return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

std::string base(uint16_t port) {
  return "http://127.0.0.1:" + std::to_string(port);
}

// A plain TCP socket for sending bytes no HTTP client would send.
struct raw_socket {
  int fd = -1;
  explicit raw_socket(uint16_t port, int timeout_s = 5) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{timeout_s, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      fd = -1;
    }
  }
  ~raw_socket() {
    if (fd >= 0)
      ::close(fd);
  }
  void write(const std::string& s) {
    ASSERT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(s.size()));
  }
  // Reads until EOF, error or the receive timeout; returns what came and
  // whether the peer closed.
  std::pair<std::string, bool> read_to_end() {
    std::string out;
    char buf[4096];
    for (;;) {
      auto n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        out.append(buf, static_cast<size_t>(n));
        continue;
      }
      return {out, n == 0 || (n < 0 && errno == ECONNRESET)};
    }
  }
};

// A server whose HTTP handler answers GET /hello, echoes POST /echo, streams
// /sse, drops the reply on /drop, and 404s the rest; its WebSocket endpoint
// echoes text.
struct fixture : ::testing::Test {
  net::io_thread io;
  std::unique_ptr<net::server> srv;
  uint16_t port = 0;
  std::mutex mtx;
  std::vector<std::pair<net::conn_id, uint16_t>> closed;
  net::header_map last_headers;
  std::atomic<int> opened{0};

  void start(net::server_options opts = {}, bool require_key = false) {
    net::ws_handler ws;
    ws.on_upgrade =
        [require_key](const net::request& req) -> std::optional<net::response> {
      if (!require_key)
        return std::nullopt;
      auto i = req.headers.find("authorization");
      if (i != req.headers.end() && i->second == "Bearer sesame")
        return std::nullopt;
      net::response res;
      res.status = 401;
      res.headers["WWW-Authenticate"] = "Bearer";
      res.body = R"({"error":{"code":"unauthorized","message":"bad key"}})";
      return res;
    };
    ws.on_open = [this](net::conn_id, const net::request&) { ++opened; };
    ws.on_text = [this](net::conn_id id, std::string text) {
      srv->send(id, std::move(text));
    };
    ws.on_close = [this](net::conn_id id, uint16_t code, std::string) {
      std::lock_guard<std::mutex> guard{mtx};
      closed.emplace_back(id, code);
    };
    auto http = [this](net::request req, net::http_reply reply) {
      {
        std::lock_guard<std::mutex> guard{mtx};
        last_headers = req.headers;
      }
      net::response res;
      res.content_type = "text/plain";
      if (req.method == "GET" && req.target == "/hello") {
        res.body = "hello";
      } else if (req.method == "POST" && req.target == "/echo") {
        res.body = req.body;
      } else if (req.target == "/sse") {
        reply.begin_stream(200, "text/event-stream");
        for (int i = 0; i < 3; ++i)
          reply.write("data: " + std::to_string(i) + "\n\n");
        reply.end();
        return;
      } else if (req.target == "/drop") {
        return; // reply dropped: the server answers 500
      } else {
        res.status = 404;
        res.body = "no such thing";
      }
      reply.send(std::move(res));
    };
    srv = std::make_unique<net::server>(io, opts, http, ws);
    auto p = srv->start();
    ASSERT_TRUE(p) << describe(p.error());
    port = *p;
    ASSERT_NE(port, 0);
  }

  void expect_serving() {
    auto res = net::http_request("GET", base(port) + "/hello");
    ASSERT_TRUE(res) << describe(res.error());
    EXPECT_EQ(res->status, 200u);
    EXPECT_EQ(res->body, "hello");
  }

  void TearDown() override {
    if (srv)
      srv->stop();
  }
};

// A ws_client with its observations.
struct client {
  std::atomic<bool> open{false};
  std::atomic<bool> done{false};
  std::atomic<uint16_t> code{0};
  std::atomic<unsigned> status{0};
  std::string reason; // written before `done`
  std::mutex mtx;
  std::vector<std::string> texts;
  std::unique_ptr<net::ws_client> ws;

  client(net::io_thread& io, net::ws_client_options opts = {}) {
    net::ws_client::handlers h;
    h.on_open = [this] { open = true; };
    h.on_text = [this](std::string t) {
      std::lock_guard<std::mutex> guard{mtx};
      texts.push_back(std::move(t));
    };
    h.on_close = [this](uint16_t c, std::string r, unsigned s) {
      reason = std::move(r);
      code = c;
      status = s;
      done = true;
    };
    ws = std::make_unique<net::ws_client>(io, h, opts);
  }
  size_t received() {
    std::lock_guard<std::mutex> guard{mtx};
    return texts.size();
  }
};

std::string ws_url(uint16_t port) {
  return "ws://127.0.0.1:" + std::to_string(port) + "/ws/daemon";
}

} // namespace

TEST(net_url, parses_and_rejects) {
  auto u = net::parse_url("ws://127.0.0.1:8080/ws/daemon?x=1");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->scheme, "ws");
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->target, "/ws/daemon?x=1");
  u = net::parse_url("https://example.com");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->port, 443);
  EXPECT_EQ(u->target, "/");
  u = net::parse_url("http://[::1]:9/a");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "::1");
  EXPECT_FALSE(net::parse_url("ftp://x"));
  EXPECT_FALSE(net::parse_url("http://:80/"));
  EXPECT_FALSE(net::parse_url("http://x:99999/"));
  EXPECT_FALSE(net::parse_url("http://user:pw@x/"));
}

TEST_F(fixture, http_get_post_and_404) {
  start();
  expect_serving();
  net::http_client_options o;
  o.headers = {{"X-Thing", "Value"}};
  std::string body(100000, 'x');
  body += "\0end";
  auto res = net::http_request("POST", base(port) + "/echo", body, o);
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->status, 200u);
  EXPECT_EQ(res->body, body);
  EXPECT_EQ(res->content_type, "text/plain");
  {
    std::lock_guard<std::mutex> guard{mtx};
    EXPECT_EQ(last_headers["x-thing"], "Value");
  }
  res = net::http_request("GET", base(port) + "/nope");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404u);
  EXPECT_EQ(res->body, "no such thing");
  EXPECT_GE(srv->stats().http_requests, 3u);
}

TEST_F(fixture, dropped_reply_is_500) {
  start();
  auto res = net::http_request("GET", base(port) + "/drop");
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->status, 500u);
  expect_serving();
}

TEST_F(fixture, streaming_response) {
  start();
  auto res = net::http_request("GET", base(port) + "/sse");
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->status, 200u);
  EXPECT_EQ(res->content_type, "text/event-stream");
  EXPECT_EQ(res->body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
  expect_serving();
}

TEST_F(fixture, client_errors) {
  start();
  auto res = net::http_request("GET", "ftp://x/");
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), ec::invalid_argument);
  // Nothing listens on the port of a stopped server.
  auto p = port;
  srv->stop();
  res = net::http_request("GET", base(p) + "/hello");
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), ec::net_error);
}

TEST_F(fixture, oversize_body_is_413_and_server_keeps_serving) {
  net::server_options o;
  o.max_body_bytes = 1024;
  start(o);
  auto res =
      net::http_request("POST", base(port) + "/echo", std::string(4096, 'y'));
  if (res)
    EXPECT_EQ(res->status, 413u);
  else
    EXPECT_EQ(code_of(res.error()), ec::net_error); // closed while sending
  EXPECT_EQ(srv->stats().body_limit, 1u);
  expect_serving();
}

TEST_F(fixture, half_sent_request_is_dropped_after_header_timeout) {
  net::server_options o;
  o.header_timeout = 300ms;
  start(o);
  raw_socket s{port};
  ASSERT_GE(s.fd, 0);
  s.write("GET /hello HTTP/1.1\r\nHost: x\r\n");
  auto t0 = std::chrono::steady_clock::now();
  auto [got, closed] = s.read_to_end();
  EXPECT_TRUE(closed);
  EXPECT_EQ(got, "");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  EXPECT_TRUE(wait_until([&] { return srv->stats().header_timeouts == 1; }));
  expect_serving();
}

TEST_F(fixture, garbage_bytes_do_not_crash_the_server) {
  start();
  std::mt19937 rng{42};
  for (int round = 0; round < 5; ++round) {
    raw_socket s{port};
    ASSERT_GE(s.fd, 0);
    std::string junk(4096, '\0');
    for (auto& c : junk)
      c = static_cast<char>(rng());
    s.write(junk);
    auto [got, closed] = s.read_to_end();
    EXPECT_TRUE(closed);
    if (!got.empty())
      EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
  }
  {
    raw_socket s{port};
    s.write("\r\n\r\nNOT HTTP AT ALL\r\n\r\n");
    auto [got, closed] = s.read_to_end();
    EXPECT_TRUE(closed);
  }
  EXPECT_GE(srv->stats().bad_requests, 1u);
  expect_serving();
}

TEST_F(fixture, websocket_echo_and_close) {
  start({}, true);
  net::ws_client_options o;
  o.headers = {{"Authorization", "Bearer sesame"}};
  client c{io, o};
  ASSERT_FALSE(c.ws->connect(ws_url(port)));
  ASSERT_TRUE(wait_until([&] { return c.open.load(); }));
  c.ws->send("hello");
  std::string big(500000, 'z');
  c.ws->send(big);
  ASSERT_TRUE(wait_until([&] { return c.received() == 2; }));
  EXPECT_EQ(c.texts[0], "hello");
  EXPECT_EQ(c.texts[1], big);
  c.ws->close(1000, "bye");
  ASSERT_TRUE(wait_until([&] { return c.done.load(); }));
  EXPECT_EQ(c.code, 1000);
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> guard{mtx};
    return closed.size() == 1;
  }));
  EXPECT_EQ(closed[0].second, 1000);
  EXPECT_EQ(srv->stats().ws_opened, 1u);
}

TEST_F(fixture, websocket_upgrade_refused_without_key) {
  start({}, true);
  client c{io};
  ASSERT_FALSE(c.ws->connect(ws_url(port)));
  ASSERT_TRUE(wait_until([&] { return c.done.load(); }));
  EXPECT_FALSE(c.open);
  EXPECT_EQ(c.status, 401u);
  EXPECT_EQ(c.code, 1006);
  EXPECT_EQ(srv->stats().ws_refused, 1u);
  EXPECT_EQ(opened, 0);
  expect_serving();
}

TEST_F(fixture, server_closes_a_connection) {
  start();
  client c{io};
  ASSERT_FALSE(c.ws->connect(ws_url(port)));
  ASSERT_TRUE(wait_until([&] { return c.open.load() && opened == 1; }));
  // The server's connection id is the one on_open saw; close all we know.
  c.ws->send("x");
  ASSERT_TRUE(wait_until([&] { return c.received() == 1; }));
  for (net::conn_id id = 1; id < 10; ++id)
    srv->close(id, 4003, "hello_required");
  ASSERT_TRUE(wait_until([&] { return c.done.load(); }));
  EXPECT_EQ(c.code, 4003);
}

TEST_F(fixture, oversize_frame_closes_only_that_connection) {
  net::server_options o;
  o.max_frame_bytes = 1024;
  start(o);
  client a{io}, b{io};
  ASSERT_FALSE(a.ws->connect(ws_url(port)));
  ASSERT_FALSE(b.ws->connect(ws_url(port)));
  ASSERT_TRUE(wait_until([&] { return a.open && b.open; }));
  a.ws->send(std::string(4096, 'a'));
  ASSERT_TRUE(wait_until([&] { return a.done.load(); }));
  EXPECT_EQ(a.code, 1009) << a.reason;
  // Counted when the server's side of the close completes, which may be
  // after the client read the close frame (seen once under ASan).
  EXPECT_TRUE(wait_until([&] { return srv->stats().ws_too_big == 1u; }))
      << srv->stats().ws_too_big;
  b.ws->send("still here");
  ASSERT_TRUE(wait_until([&] { return b.received() == 1; }));
  EXPECT_FALSE(b.done);
  expect_serving();
}

TEST_F(fixture, binary_frames_are_refused_with_1003) {
  // The ws_client sends only text, so speak a handcrafted masked binary
  // frame over a raw socket after a handshake.
  start();
  raw_socket s{port, 1}; // the server waits for our close reply: don't
  ASSERT_GE(s.fd, 0);
  s.write(
      "GET /ws/daemon HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "Sec-WebSocket-Version: 13\r\n\r\n");
  // Clients send frames only after the 101 (RFC 6455 4.1).
  std::string head;
  char ch;
  while (head.find("\r\n\r\n") == std::string::npos
         && ::recv(s.fd, &ch, 1, 0) == 1)
    head += ch;
  ASSERT_EQ(head.rfind("HTTP/1.1 101", 0), 0u) << head;
  std::string frame = {char(0x82), char(0x83), 1,       2,      3,
                       4,          'a' ^ 1,    'b' ^ 2, 'c' ^ 3};
  s.write(frame);
  auto [got, closed] = s.read_to_end();
  // The close frame carries 1003 (0x03EB).
  EXPECT_NE(got.find("\x88"), std::string::npos);
  EXPECT_NE(got.find("\x03\xEB"), std::string::npos);
  expect_serving();
}

TEST_F(fixture, many_concurrent_clients_each_echo_once) {
  start();
  constexpr int n = 200;
  std::vector<std::unique_ptr<client>> cs;
  for (int i = 0; i < n; ++i) {
    cs.push_back(std::make_unique<client>(io));
    ASSERT_FALSE(cs.back()->ws->connect(ws_url(port)));
  }
  ASSERT_TRUE(wait_until(
      [&] {
        for (auto& c : cs)
          if (!c->open)
            return false;
        return true;
      },
      30s));
  for (int i = 0; i < n; ++i)
    cs[i]->ws->send("msg " + std::to_string(i));
  ASSERT_TRUE(wait_until(
      [&] {
        for (auto& c : cs)
          if (c->received() != 1)
            return false;
        return true;
      },
      30s));
  for (int i = 0; i < n; ++i)
    EXPECT_EQ(cs[i]->texts[0], "msg " + std::to_string(i));
  EXPECT_EQ(srv->stats().ws_opened, static_cast<uint64_t>(n));
  EXPECT_EQ(srv->stats().connections, static_cast<uint64_t>(n));
}

TEST_F(fixture, stop_with_open_connections_completes) {
  start();
  std::vector<std::unique_ptr<client>> cs;
  for (int i = 0; i < 10; ++i) {
    cs.push_back(std::make_unique<client>(io));
    ASSERT_FALSE(cs.back()->ws->connect(ws_url(port)));
  }
  ASSERT_TRUE(wait_until([&] { return opened == 10; }));
  raw_socket idle{port}; // an idle HTTP connection too
  auto t0 = std::chrono::steady_clock::now();
  srv->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  ASSERT_TRUE(wait_until([&] {
    for (auto& c : cs)
      if (!c->done)
        return false;
    return true;
  }));
  // No on_close after stop.
  std::lock_guard<std::mutex> guard{mtx};
  EXPECT_TRUE(closed.empty());
}

// A WebSocket client that is not ours: the npm package `ws` (tests/node;
// `npm ci` there installs it).
TEST_F(fixture, third_party_node_ws_client) {
  std::string dir = MAKIMA_SOURCE_DIR "/tests/node";
  if (::access((dir + "/node_modules/ws/package.json").c_str(), R_OK) != 0)
    FAIL() << dir << "/node_modules is missing: run `npm ci` in tests/node "
           << "(.ci/setup does this)";
  net::server_options o;
  o.max_frame_bytes = 1024;
  start(o, true);
  auto cmd = "node " + dir + "/ws_probe.js " + ws_url(port) + " sesame 4096";
  std::string out;
  // The probe has its own 10 s timeout.
  auto* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[1024];
  size_t n;
  while ((n = ::fread(buf, 1, sizeof buf, p)) > 0)
    out.append(buf, n);
  auto status = ::pclose(p);
  ASSERT_EQ(status, 0) << "node failed: " << out;
  auto j = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j.value("echo", ""), R"({"v":1,"type":"heartbeat"})") << out;
  EXPECT_EQ(j.value("close", 0), 1009) << out;
  EXPECT_EQ(j.value("refused", 0), 401) << out;
  EXPECT_EQ(srv->stats().ws_too_big, 1u);
  EXPECT_EQ(srv->stats().ws_refused, 1u);
  expect_serving();
}

// -- TLS ----------------------------------------------------------------------

namespace {

// Certificates (tests/fixtures/tls_certs.hpp) and options using them.
struct tls_files : test::tls_certs {
  net::server_options server(std::string c = {}, std::string k = {}) const {
    net::server_options o;
    o.tls_cert_file = c.empty() ? cert : c;
    o.tls_key_file = k.empty() ? key : k;
    o.header_timeout = 3s;
    return o;
  }

  net::http_client_options client(const std::string& ca_file) const {
    net::http_client_options o;
    o.ca_file = ca_file;
    o.timeout = 5s;
    return o;
  }
};

std::string https(uint16_t port, const std::string& host = "127.0.0.1") {
  return "https://" + host + ":" + std::to_string(port);
}

} // namespace

struct tls_fixture : fixture {
  tls_files files;
};

TEST_F(tls_fixture, https_get_and_post_with_the_right_ca) {
  start(files.server());
  for (auto host : {"127.0.0.1", "localhost"}) {
    auto res = net::http_request("GET", https(port, host) + "/hello", {},
                                 files.client(files.ca));
    ASSERT_TRUE(res) << host << ": " << describe(res.error());
    EXPECT_EQ(res->status, 200u);
    EXPECT_EQ(res->body, "hello");
  }
  std::string body(200000, 'y');
  auto res = net::http_request("POST", https(port) + "/echo", body,
                               files.client(files.ca));
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->body, body);
  // An event stream the server ends by closing the TLS connection.
  res = net::http_request("GET", https(port) + "/sse", {},
                          files.client(files.ca));
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
}

TEST_F(tls_fixture, wss_round_trip_with_the_right_ca) {
  start(files.server());
  net::ws_client_options o;
  o.ca_file = files.ca;
  client c{io, o};
  ASSERT_FALSE(
      c.ws->connect("wss://localhost:" + std::to_string(port) + "/ws/daemon"));
  ASSERT_TRUE(wait_until([&] { return c.open || c.done; })) << "no open";
  ASSERT_TRUE(c.open) << c.reason;
  c.ws->send("over tls");
  ASSERT_TRUE(wait_until([&] { return c.received() == 1; }));
  {
    std::lock_guard<std::mutex> guard{c.mtx};
    EXPECT_EQ(c.texts[0], "over tls");
  }
  c.ws->close(1000, "bye");
  ASSERT_TRUE(wait_until([&] { return c.done.load(); }));
  EXPECT_EQ(c.code, 1000);
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard<std::mutex> guard{mtx};
    return closed.size() == 1;
  }));
}

TEST_F(tls_fixture, wrong_ca_fails_certificate_verification) {
  start(files.server());
  auto res = net::http_request("GET", https(port) + "/hello", {},
                               files.client(files.other_ca));
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), ec::net_error);
  EXPECT_NE(describe(res.error()).find("certificate verification failed"),
            std::string::npos)
      << describe(res.error());
  net::ws_client_options o;
  o.ca_file = files.other_ca;
  client c{io, o};
  ASSERT_FALSE(
      c.ws->connect("wss://127.0.0.1:" + std::to_string(port) + "/ws/daemon"));
  ASSERT_TRUE(wait_until([&] { return c.done.load(); }));
  EXPECT_FALSE(c.open);
  EXPECT_EQ(c.code, 1006);
  EXPECT_NE(c.reason.find("certificate verification failed"), std::string::npos)
      << c.reason;
  // The server is unharmed.
  auto ok = net::http_request("GET", https(port) + "/hello", {},
                              files.client(files.ca));
  ASSERT_TRUE(ok) << describe(ok.error());
}

TEST_F(tls_fixture, host_name_mismatch_fails) {
  start(files.server(files.wrong_cert, files.wrong_key));
  auto res = net::http_request("GET", https(port) + "/hello", {},
                               files.client(files.ca));
  ASSERT_FALSE(res);
  EXPECT_NE(describe(res.error()).find("certificate verification failed"),
            std::string::npos)
      << describe(res.error());
  EXPECT_NE(describe(res.error()).find("mismatch"), std::string::npos)
      << describe(res.error());
}

TEST_F(tls_fixture, plain_client_to_tls_server_fails_cleanly) {
  start(files.server());
  net::http_client_options o;
  o.timeout = 5s;
  auto t0 = std::chrono::steady_clock::now();
  auto res = net::http_request("GET", base(port) + "/hello", {}, o);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  ASSERT_FALSE(res);
  EXPECT_NE(code_of(res.error()), ec::net_timeout) << describe(res.error());
  EXPECT_TRUE(wait_until([&] { return srv->stats().tls_failures == 1; }));
  EXPECT_TRUE(wait_until([&] { return srv->stats().connections == 0; }));
  // Raw garbage too.
  raw_socket raw{port};
  raw.write("\x16\x03\x01garbage that is no client hello\r\n\r\n");
  auto [got, eof] = raw.read_to_end();
  EXPECT_TRUE(eof);
  auto ok = net::http_request("GET", https(port) + "/hello", {},
                              files.client(files.ca));
  ASSERT_TRUE(ok) << describe(ok.error());
  EXPECT_EQ(ok->body, "hello");
}

TEST_F(tls_fixture, tls_client_to_plain_server_fails_cleanly) {
  start();
  auto t0 = std::chrono::steady_clock::now();
  auto res = net::http_request("GET", https(port) + "/hello", {},
                               files.client(files.ca));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), ec::net_error) << describe(res.error());
  EXPECT_NE(describe(res.error()).find("TLS handshake"), std::string::npos)
      << describe(res.error());
  net::ws_client_options wo;
  wo.ca_file = files.ca;
  client c{io, wo};
  ASSERT_FALSE(
      c.ws->connect("wss://127.0.0.1:" + std::to_string(port) + "/ws/daemon"));
  ASSERT_TRUE(wait_until([&] { return c.done.load(); }));
  EXPECT_FALSE(c.open);
  EXPECT_EQ(c.code, 1006);
  expect_serving();
}

TEST_F(tls_fixture, bad_certificate_or_key_files_are_invalid_config) {
  auto try_start = [&](net::server_options o) {
    net::server s{io, o, {}, {}};
    auto p = s.start();
    EXPECT_FALSE(p);
    return p ? caf::error{} : p.error();
  };
  auto key_bytes = test::read_file(files.key);
  auto check = [&](const caf::error& err, const std::string& names) {
    EXPECT_EQ(code_of(err), ec::invalid_config) << describe(err);
    EXPECT_NE(describe(err).find(names), std::string::npos) << describe(err);
    EXPECT_EQ(describe(err).find("PRIVATE KEY"), std::string::npos);
    // No line of the key file appears in the message.
    std::istringstream lines{key_bytes};
    for (std::string line; std::getline(lines, line);)
      if (line.size() > 8 && line.find("-----") == std::string::npos) {
        EXPECT_EQ(describe(err).find(line), std::string::npos);
      }
  };
  auto missing = (files.dir.path() / "missing.pem").string();
  check(try_start(files.server(missing, files.key)), missing);
  check(try_start(files.server(files.cert, missing)), missing);
  // A key is not a certificate, and garbage is no key.
  check(try_start(files.server(files.key, files.key)), files.key);
  auto garbage = (files.dir.path() / "garbage.pem").string();
  test::write_file(garbage, "not pem at all\n");
  check(try_start(files.server(files.cert, garbage)), garbage);
  // A key of another certificate.
  check(try_start(files.server(files.cert, files.wrong_key)), files.wrong_key);
  // Only one of the two.
  net::server_options half;
  half.tls_cert_file = files.cert;
  EXPECT_EQ(code_of(try_start(half)), ec::invalid_config);
  // A client with an unreadable CA file.
  auto res = net::http_request("GET", "https://127.0.0.1:1/", {},
                               files.client(missing));
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), ec::invalid_config);
  net::ws_client_options wo;
  wo.ca_file = missing;
  client c{io, wo};
  auto err = c.ws->connect("wss://127.0.0.1:1/ws/daemon");
  EXPECT_EQ(code_of(err), ec::invalid_config);
}

// -- server-sent events
// ---------------------------------------------------------

namespace {

std::vector<net::sse_event> parse_sse(const std::vector<std::string>& pieces) {
  net::sse_parser p;
  std::vector<net::sse_event> out;
  for (auto& piece : pieces)
    p.feed(piece, [&](const net::sse_event& e) { out.push_back(e); });
  return out;
}

std::string dump(const std::vector<net::sse_event>& events) {
  std::string out;
  for (auto& e : events)
    out += "[" + e.event + "|" + e.id + "|" + e.data + "]";
  return out;
}

} // namespace

TEST(sse_parser, events_fields_comments_and_line_ends) {
  std::string stream = ": keep-alive\r\n"
                       "event: output\r\n"
                       "id: 17\r\n"
                       "data: {\"seq\":17}\r\n"
                       "\r\n"
                       "data:first\n"
                       "data:  second\n"
                       "data\n"
                       "retry: 100\n"
                       "unknown: x\n"
                       "\n"
                       "event: end\r"
                       "data: bye\r"
                       "\r"
                       "event: lonely\n"
                       "\n" // no data: not dispatched
                       "id\n"
                       "data: x\n"
                       "\n"
                       "data: partial";
  auto want = std::string{"[output|17|{\"seq\":17}]"}
              + "[message|17|first\n second\n]" + "[end|17|bye]"
              + "[message||x]";
  EXPECT_EQ(dump(parse_sse({stream})), want);
  // Split at every byte boundary, and byte by byte.
  for (size_t i = 0; i <= stream.size(); ++i)
    EXPECT_EQ(dump(parse_sse({stream.substr(0, i), stream.substr(i)})), want)
        << "split at " << i;
  std::vector<std::string> bytes;
  for (char c : stream)
    bytes.emplace_back(1, c);
  EXPECT_EQ(dump(parse_sse(bytes)), want);
}

TEST(sse_parser, crlf_split_between_feeds_is_one_line_end) {
  // "\r" then "\n" in the next feed must not produce an empty line that
  // dispatches early.
  auto events = parse_sse({"data: a\r", "\ndata: b\r", "\n\r", "\n"});
  EXPECT_EQ(dump(events), "[message||a\nb]");
  // Empty data line is an event with empty data.
  EXPECT_EQ(dump(parse_sse({"data:\n\n"})), "[message||]");
  EXPECT_EQ(dump(parse_sse({"event:\ndata: z\n\n"})), "[message||z]");
}

namespace {

// A server streaming `pieces` as an event stream on GET /events, with the
// Last-Event-ID it got.
struct sse_server {
  net::io_thread io;
  std::unique_ptr<net::server> srv;
  uint16_t port = 0;
  std::mutex mtx;
  std::string last_event_id;

  sse_server(std::vector<std::string> pieces, net::server_options o = {}) {
    auto http = [this, pieces](net::request req, net::http_reply reply) {
      if (req.target != "/events") {
        net::response res;
        res.status = 404;
        res.body = "{}";
        reply.send(res);
        return;
      }
      {
        std::lock_guard<std::mutex> guard{mtx};
        auto i = req.headers.find("last-event-id");
        last_event_id = i == req.headers.end() ? "" : i->second;
      }
      reply.begin_stream(200, "text/event-stream");
      for (auto& p : pieces)
        reply.write(p);
      reply.end();
    };
    srv = std::make_unique<net::server>(io, o, http, net::ws_handler{});
    auto p = srv->start();
    EXPECT_TRUE(p);
    port = p ? *p : 0;
  }
};

} // namespace

TEST(http_stream, reads_an_event_stream_until_the_server_ends_it) {
  std::vector<std::string> pieces;
  std::string all;
  for (int i = 0; i < 200; ++i) {
    pieces.push_back("id: " + std::to_string(i) + "\nevent: output\ndata: "
                     + std::string(1000, 'a' + i % 26) + "\n\n");
    all += pieces.back();
  }
  sse_server s{pieces};
  net::http_client_options o;
  o.timeout = 5s;
  o.headers = {{"Last-Event-ID", "41"}};
  net::response head;
  std::string body;
  net::sse_parser parser;
  std::vector<net::sse_event> events;
  auto err = net::http_stream(
      "GET", base(s.port) + "/events", o,
      [&](const net::response& r) {
        head = r;
        return true;
      },
      [&](const std::string& bytes) {
        body += bytes;
        parser.feed(bytes,
                    [&](const net::sse_event& e) { events.push_back(e); });
        return true;
      });
  ASSERT_FALSE(err) << describe(err);
  EXPECT_EQ(head.status, 200u);
  EXPECT_EQ(head.content_type, "text/event-stream");
  EXPECT_EQ(body, all);
  ASSERT_EQ(events.size(), 200u);
  EXPECT_EQ(events[199].id, "199");
  EXPECT_EQ(events[5].data, std::string(1000, 'f'));
  std::lock_guard<std::mutex> guard{s.mtx};
  EXPECT_EQ(s.last_event_id, "41");
}

TEST(http_stream, stops_when_a_callback_returns_false) {
  sse_server s{{"data: 1\n\n", "data: 2\n\n"}};
  net::http_client_options o;
  o.timeout = 5s;
  int heads = 0;
  int datas = 0;
  auto err = net::http_stream(
      "GET", base(s.port) + "/nope", o,
      [&](const net::response& r) {
        ++heads;
        EXPECT_EQ(r.status, 404u);
        return false;
      },
      [&](const std::string&) {
        ++datas;
        return true;
      });
  EXPECT_FALSE(err) << describe(err);
  EXPECT_EQ(heads, 1);
  EXPECT_EQ(datas, 0);
}

TEST(http_stream, errors_and_a_silent_server_time_out) {
  net::http_client_options o;
  o.timeout = 1s;
  auto none = [](const auto&) { return true; };
  auto err = net::http_stream("GET", "ftp://x/", o, none, none);
  EXPECT_EQ(code_of(err), ec::invalid_argument);
  // A server that sends the head and then nothing: each wait is bounded.
  net::io_thread io;
  net::server srv{io,
                  {},
                  [](net::request, net::http_reply reply) {
                    reply.begin_stream(200, "text/event-stream");
                    reply.write(": hi\n\n");
                  },
                  {}};
  auto p = srv.start();
  ASSERT_TRUE(p);
  auto t0 = std::chrono::steady_clock::now();
  std::string got;
  err = net::http_stream("GET", base(*p) + "/x", o, none,
                         [&](const std::string& b) {
                           got += b;
                           return true;
                         });
  EXPECT_EQ(code_of(err), ec::net_timeout) << describe(err);
  EXPECT_EQ(got, ": hi\n\n");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  // Bytes are handed over as they arrive, not when a buffer is full or the
  // stream ended.
  o.timeout = 10s;
  got.clear();
  t0 = std::chrono::steady_clock::now();
  err = net::http_stream("GET", base(*p) + "/x", o, none,
                         [&](const std::string& b) {
                           got += b;
                           return false;
                         });
  EXPECT_FALSE(err) << describe(err);
  EXPECT_EQ(got, ": hi\n\n");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  srv.stop();
  // Nothing listens any more.
  err = net::http_stream("GET", base(*p) + "/x", o, none, none);
  EXPECT_EQ(code_of(err), ec::net_error) << describe(err);
}

TEST_F(tls_fixture, https_event_stream) {
  sse_server s{{"id: 1\ndata: over tls\n\n"}, files.server()};
  std::string body;
  auto err = net::http_stream(
      "GET", https(s.port) + "/events", files.client(files.ca),
      [](const net::response& r) { return r.status == 200; },
      [&](const std::string& b) {
        body += b;
        return true;
      });
  ASSERT_FALSE(err) << describe(err);
  EXPECT_EQ(body, "id: 1\ndata: over tls\n\n");
  // Wrong CA on the stream client too.
  err = net::http_stream(
      "GET", https(s.port) + "/events", files.client(files.other_ca),
      [](const net::response&) { return true; },
      [](const std::string&) { return true; });
  EXPECT_NE(describe(err).find("certificate verification failed"),
            std::string::npos)
      << describe(err);
}
