// Shared helpers for the integration tests: run the real `makima` binary with
// an isolated HOME and data dir, read tasks back as JSON.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/fixtures/command.hpp"
#include "tests/fixtures/git_repo.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace makima::it {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using json = nlohmann::json;
using test::run_result;

/// One isolated makima environment: HOME and a data dir in a temp dir.
class env {
public:
  env() : root_("makima-it") {
    fs::create_directories(root_ / "home");
    data_ = root_ / "data";
  }
  const fs::path& root() const { return root_.path(); }
  const fs::path& data() const { return data_; }
  void set_data(const fs::path& p) { data_ = p; }

  test::run_options opts(std::chrono::milliseconds timeout = 30000ms) const {
    test::run_options o;
    o.env["HOME"] = (root_ / "home").string();
    o.env["XDG_CONFIG_HOME"] = (root_ / "home" / ".config").string();
    o.env["XDG_DATA_HOME"] = (root_ / "home" / ".local/share").string();
    o.env["GIT_CONFIG_NOSYSTEM"] = "1";
    o.unset_env = {"MAKIMA_DATA_DIR", "MAKIMA_CONFIG"};
    o.timeout = timeout;
    return o;
  }

  /// `makima run --data-dir DATA <args...>`
  run_result run(const std::vector<std::string>& args,
                 std::chrono::milliseconds timeout = 30000ms) const {
    std::vector<std::string> argv{MAKIMA_BINARY, "run", "--data-dir",
                                  data_.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run(argv, opts(timeout));
  }
  std::vector<std::string>
  run_argv(const std::vector<std::string>& args) const {
    std::vector<std::string> argv{MAKIMA_BINARY, "run", "--data-dir",
                                  data_.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  /// `makima task <sub> --data-dir DATA <args...>`
  run_result task(const std::string& sub, const std::vector<std::string>& args,
                  std::chrono::milliseconds timeout = 30000ms) const {
    std::vector<std::string> argv{MAKIMA_BINARY, "task", sub, "--data-dir",
                                  data_.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run(argv, opts(timeout));
  }
  std::vector<std::string>
  task_argv(const std::string& sub,
            const std::vector<std::string>& args) const {
    std::vector<std::string> argv{MAKIMA_BINARY, "task", sub, "--data-dir",
                                  data_.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  /// `task show ID --json`, parsed; fails the test when it does not work.
  json show(const std::string& id) const {
    auto r = task("show", {id, "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    try {
      return json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "bad JSON from task show: " << e.what() << "\n" << r.out;
      return json::object();
    }
  }
  json list() const {
    auto r = task("list", {"--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    try {
      return json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "bad JSON from task list: " << e.what() << "\n" << r.out;
      return json::array();
    }
  }

private:
  test::temp_dir root_;
  fs::path data_;
};

inline std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

/// Polls `pred` every 20ms for at most `timeout`.
template <class F>
bool eventually(F pred, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred())
      return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

/// Pids of live (non-zombie) processes whose environment contains `needle`
/// (e.g. "MAKIMA_TASK_ID=<id>").
inline std::vector<pid_t> pids_with_env(const std::string& needle) {
  std::vector<pid_t> out;
  for (auto& e : fs::directory_iterator("/proc")) {
    auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    std::string env = slurp(e.path() / "environ");
    std::string want = needle;
    // environ entries are \0-separated; match a whole entry.
    bool found = false;
    size_t pos = 0;
    while (pos < env.size()) {
      size_t end = env.find('\0', pos);
      if (end == std::string::npos)
        end = env.size();
      if (env.compare(pos, end - pos, want) == 0) {
        found = true;
        break;
      }
      pos = end + 1;
    }
    if (!found)
      continue;
    std::string stat = slurp(e.path() / "stat");
    auto rp = stat.rfind(')');
    if (rp != std::string::npos && rp + 2 < stat.size() && stat[rp + 2] == 'Z')
      continue;
    out.push_back(static_cast<pid_t>(std::stoi(name)));
  }
  return out;
}

/// A loopback port that was free a moment ago, for a process the test
/// starts later with an explicit --listen (bound to port 0, then released).
inline uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

struct raw_result {
  /// 0 when no status line came back (connection closed or timed out).
  int status = 0;
  std::string head;
  std::string body;
};

/// One HTTP/1.1 request with Connection: close on a raw socket; `headers`
/// are sent as given (any number of Authorization lines). Bounded: 5 s.
/// Stops after the head of a 101 (a WebSocket stays open).
inline raw_result raw_http(uint16_t port, const std::string& method,
                           const std::string& target,
                           const std::vector<std::string>& headers,
                           const std::string& body = {}) {
  raw_result out;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return out;
  }
  std::string req = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  bool connection = false;
  for (auto& h : headers)
    connection = connection || h.rfind("Connection:", 0) == 0;
  if (!connection)
    req += "Connection: close\r\n";
  for (auto& h : headers)
    req += h + "\r\n";
  if (!body.empty() || method == "POST")
    req += "Content-Type: application/json\r\nContent-Length: "
           + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
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
    if (raw.rfind("HTTP/1.1 101", 0) == 0
        && raw.find("\r\n\r\n") != std::string::npos)
      break;
  }
  ::close(fd);
  if (raw.rfind("HTTP/1.1 ", 0) == 0 && raw.size() >= 12)
    out.status = std::stoi(raw.substr(9, 3));
  auto sep = raw.find("\r\n\r\n");
  out.head = raw.substr(0, sep);
  if (sep != std::string::npos)
    out.body = raw.substr(sep + 4);
  return out;
}

inline bool alive(pid_t pid) {
  if (::kill(pid, 0) != 0)
    return false;
  std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto rp = stat.rfind(')');
  return !(rp != std::string::npos && rp + 2 < stat.size()
           && stat[rp + 2] == 'Z');
}

} // namespace makima::it
