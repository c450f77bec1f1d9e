// Helpers of the fleet tests: real `makima server`, `makima daemon` and
// `makima local` processes on 127.0.0.1 (port 0), and a small HTTP API
// client on net::http_request.
#pragma once

#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "actors/protocol.hpp"
#include "runtime/net/net.hpp"
#include "tests/integration/helpers.hpp"

namespace makima::it {

constexpr const char* user_key = "user-key-3f9a1c";
constexpr const char* daemon_key = "daemon-key-b7e2d4";

/// `makima server` on 127.0.0.1 (any free port) over `data`, with the
/// test keys, plus `extra` flags (launch adds the binary).
inline std::vector<std::string>
server_args(const fs::path& data, std::vector<std::string> extra = {}) {
  std::vector<std::string> a{"server",     "--listen",     "127.0.0.1:0",
                             "--data-dir", data.string(),  "--user-key",
                             user_key,     "--daemon-key", daemon_key};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

/// A background makima process (server, daemon or local).
struct proc {
  std::vector<std::string> argv;
  /// Variables added to the process's environment (e.g. MAKIMA_LOG_FORMAT).
  std::map<std::string, std::string> extra_env;
  std::unique_ptr<test::background> bg;

  void start(const env& e) {
    auto o = e.opts(600000ms);
    for (auto& [k, v] : extra_env)
      o.env[k] = v;
    bg = std::make_unique<test::background>(argv, o);
  }
  bool wait_for(const std::string& needle,
                std::chrono::milliseconds timeout = 20000ms) {
    return bg->wait_for_output(needle, timeout);
  }
  std::string output() const { return bg ? bg->output() : std::string{}; }
  void kill(int sig) { bg->kill(sig); }
  test::run_result stop(int sig = SIGTERM,
                        std::chrono::milliseconds timeout = 20000ms) {
    bg->kill(sig);
    auto r = bg->wait(timeout);
    bg.reset();
    return r;
  }
};

/// Returns the port of "listening on http://127.0.0.1:PORT" in `out`, 0
/// when absent.
inline uint16_t listening_port(const std::string& out) {
  std::smatch m;
  static const std::regex re{R"(listening on https?://[0-9.]+:([0-9]+))"};
  if (std::regex_search(out, m, re))
    return static_cast<uint16_t>(std::stoi(m[1]));
  return 0;
}

/// A `makima server` (or `makima local`) process and its HTTP API.
struct server_proc : proc {
  uint16_t port = 0;

  /// Starts and waits until it listens; fails the test otherwise.
  bool launch(const env& e, std::vector<std::string> args) {
    argv = std::move(args);
    argv.insert(argv.begin(), MAKIMA_BINARY);
    start(e);
    if (!wait_for("listening on ")) {
      ADD_FAILURE() << "server did not start: " << output();
      return false;
    }
    port = listening_port(output());
    EXPECT_NE(port, 0) << output();
    return port != 0;
  }
  std::string http() const {
    return "http://127.0.0.1:" + std::to_string(port);
  }
  std::string ws() const {
    return "ws://127.0.0.1:" + std::to_string(port) + "/ws/daemon";
  }
};

/// The server's HTTP API with a user key.
struct api {
  std::string base;
  std::string key = user_key;

  net::response call(const std::string& method, const std::string& path,
                     const std::string& body = {}) const {
    net::http_client_options o;
    if (!key.empty())
      o.headers.emplace_back("Authorization", "Bearer " + key);
    o.timeout = 10000ms;
    auto r = net::http_request(method, base + path, body, o);
    if (!r) {
      ADD_FAILURE() << method << " " << path << ": " << to_string(r.error());
      return net::response{0, "", {}, ""};
    }
    return std::move(*r);
  }
  json get_json(const std::string& path) const {
    auto r = call("GET", path);
    try {
      return json::parse(r.body);
    } catch (const std::exception&) {
      return json::object();
    }
  }
  /// POST /api/v1/tasks; returns the id (empty on failure).
  std::string submit(const json& spec) const {
    auto r = call("POST", "/api/v1/tasks", spec.dump());
    EXPECT_EQ(r.status, 201u) << r.body;
    try {
      return json::parse(r.body).at("id").get<std::string>();
    } catch (const std::exception&) {
      return {};
    }
  }
  json task(const std::string& id) const {
    return get_json("/api/v1/tasks/" + id);
  }
  std::string state(const std::string& id) const {
    return task(id).value("state", "");
  }
  /// Every output chunk of a task, concatenated per stream (1, 2) and in
  /// total, following `next` until done or no progress.
  struct output_t {
    std::string all, out, err;
    uint64_t chunks = 0;
  };
  output_t output(const std::string& id) const {
    output_t o;
    uint64_t from = 0;
    for (int i = 0; i < 10000; ++i) {
      auto j = get_json("/api/v1/tasks/" + id
                        + "/output?from=" + std::to_string(from));
      if (!j.contains("chunks"))
        break;
      for (auto& c : j["chunks"]) {
        auto bytes = proto_decode(c.value("data", ""));
        o.all += bytes;
        (c.value("stream", 1) == 2 ? o.err : o.out) += bytes;
        ++o.chunks;
      }
      auto next = j.value("next", from);
      if (j["chunks"].empty() || next == from)
        break;
      from = next;
    }
    return o;
  }
  static std::string proto_decode(const std::string& b64) {
    auto r = proto::base64_decode(b64);
    EXPECT_TRUE(r) << "bad base64 from the server: " << b64;
    return r.value_or("");
  }
  /// Waits until every task in `ids` is in a terminal state.
  bool wait_terminal(const std::vector<std::string>& ids,
                     std::chrono::milliseconds timeout) const {
    return eventually(
        [&] {
          for (auto& id : ids) {
            auto st = state(id);
            if (st != "succeeded" && st != "failed" && st != "cancelled"
                && st != "timed_out")
              return false;
          }
          return true;
        },
        timeout);
  }
  /// The value of a Prometheus sample line "name{labels} value", -1 if absent.
  double metric(const std::string& sample) const {
    auto r = call("GET", "/metrics");
    auto pos = r.body.find("\n" + sample + " ");
    if (pos == std::string::npos)
      return -1;
    auto start = pos + sample.size() + 2;
    return std::stod(r.body.substr(start, r.body.find('\n', start) - start));
  }
};

/// A `makima daemon` connected to `url`.
struct daemon_proc : proc {
  bool launch(const env& e, const std::string& url, const std::string& name,
              const fs::path& data, std::vector<std::string> extra = {}) {
    argv = {MAKIMA_BINARY, "daemon",  "--server",   url,
            "--name",      name,      "--data-dir", data.string(),
            "--api-key",   daemon_key};
    argv.insert(argv.end(), extra.begin(), extra.end());
    start(e);
    if (!wait_for("connected to ")) {
      ADD_FAILURE() << "daemon " << name << " did not connect: " << output();
      return false;
    }
    return true;
  }
};

/// Ids of the tasks in a daemon's own data dir (read while it runs).
inline std::vector<std::string> local_task_ids(const env& e,
                                               const fs::path& data) {
  auto r = test::run(
      {MAKIMA_BINARY, "task", "list", "--data-dir", data.string(), "--json"},
      e.opts());
  std::vector<std::string> out;
  try {
    for (auto& t : json::parse(r.out))
      out.push_back(t.at("id").get<std::string>());
  } catch (const std::exception&) {
    ADD_FAILURE() << "task list of " << data << ": " << r.out << r.err;
  }
  return out;
}

} // namespace makima::it
