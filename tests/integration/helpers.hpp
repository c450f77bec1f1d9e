// Shared helpers for the integration tests: run the real `makima` binary with
// an isolated HOME and data dir, read tasks back as JSON.
#pragma once

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <signal.h>
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

inline bool alive(pid_t pid) {
  if (::kill(pid, 0) != 0)
    return false;
  std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto rp = stat.rfind(')');
  return !(rp != std::string::npos && rp + 2 < stat.size()
           && stat[rp + 2] == 'Z');
}

} // namespace makima::it
