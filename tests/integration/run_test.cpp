// `makima run` end to end: output bytes, exit codes, child env/cwd, timeout,
// cancellation. Real makima binary, real processes, real RocksDB.
#include "tests/integration/helpers.hpp"

#include <sys/stat.h>

#include <random>

namespace makima::it {
namespace {

fs::path canon(const fs::path& p) {
  return fs::weakly_canonical(p);
}

// Binary payload: NULs, invalid UTF-8, every byte value, then MBs of
// pseudo-random bytes.
std::string payload(size_t n, unsigned seed) {
  std::string s("start\0\xff\xfe\xc3\x28\xa0\xa1\xf0\x28\x8c\x28\n\r\n", 17);
  for (int i = 0; i < 256; ++i)
    s.push_back(static_cast<char>(i));
  std::mt19937 rng(seed);
  while (s.size() < n)
    s.push_back(static_cast<char>(rng() & 0xff));
  s += "\0end-without-newline";
  return s;
}

TEST(run, output_is_byte_exact_and_replayed_by_logs) {
  env e;
  std::string out = payload(3'000'000, 1);
  std::string err = payload(200'000, 2);
  test::write_file(e.root() / "out.bin", out);
  test::write_file(e.root() / "err.bin", err);
  auto r = e.run(
      {"--id", "bytes", "--", "sh", "-c", "cat \"$1\"; cat \"$2\" >&2; exit 0",
       "sh", (e.root() / "out.bin").string(), (e.root() / "err.bin").string()},
      60000ms);
  ASSERT_EQ(r.exit_code, 0)
      << r.err.substr(r.err.size() > 2000 ? r.err.size() - 2000 : 0);
  ASSERT_EQ(r.out.size(), out.size());
  EXPECT_TRUE(r.out == out) << "stdout differs from what the child wrote";
  EXPECT_NE(r.err.find(err), std::string::npos)
      << "stderr does not contain the child's stderr verbatim";
  EXPECT_NE(r.err.find("makima: task bytes"), std::string::npos);

  auto logs = e.task("logs", {"bytes"}, 60000ms);
  ASSERT_EQ(logs.exit_code, 0) << logs.err;
  ASSERT_EQ(logs.out.size(), out.size());
  EXPECT_TRUE(logs.out == out) << "task logs stdout differs";
  EXPECT_TRUE(logs.err == err)
      << "task logs stderr differs (size " << logs.err.size() << " vs "
      << err.size() << ")";
  auto j = e.show("bytes");
  EXPECT_EQ(j["state"], "succeeded");
  EXPECT_EQ(j["exit_code"], 0);
}

TEST(run, interleaved_streams_keep_per_stream_order) {
  env e;
  auto r = e.run({"--id", "inter", "--", "sh", "-c",
                  "i=0; while [ $i -lt 200 ]; do echo out$i; echo err$i >&2; "
                  "i=$((i+1)); done"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string want_out, want_err;
  for (int i = 0; i < 200; ++i) {
    want_out += "out" + std::to_string(i) + "\n";
    want_err += "err" + std::to_string(i) + "\n";
  }
  EXPECT_EQ(r.out, want_out);
  auto logs = e.task("logs", {"inter"});
  ASSERT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_EQ(logs.out, want_out);
  EXPECT_EQ(logs.err, want_err);
}

struct exit_case {
  std::string name;
  std::vector<std::string> argv;
  int code;
  std::string state;
};

/// Prints the case's name in failure messages (not 96 raw bytes).
void PrintTo(const exit_case& c, std::ostream* os) {
  *os << c.name;
}

class run_exit : public ::testing::TestWithParam<exit_case> {};

TEST_P(run_exit, exit_status_and_state) {
  env e;
  const auto& c = GetParam();
  std::vector<std::string> args{"--id", "x", "--"};
  args.insert(args.end(), c.argv.begin(), c.argv.end());
  auto r = e.run(args);
  EXPECT_EQ(r.exit_code, c.code) << r.err;
  auto j = e.show("x");
  EXPECT_EQ(j["state"], c.state) << j.dump(2);
  EXPECT_EQ(j["exit_status"], c.code) << j.dump(2);
}

INSTANTIATE_TEST_SUITE_P(
    codes, run_exit,
    ::testing::Values(
        exit_case{"zero", {"true"}, 0, "succeeded"},
        exit_case{"three", {"sh", "-c", "exit 3"}, 3, "failed"},
        exit_case{"max", {"sh", "-c", "exit 255"}, 255, "failed"},
        exit_case{"sigkill", {"sh", "-c", "kill -9 $$"}, 137, "failed"},
        exit_case{"sigterm", {"sh", "-c", "kill -TERM $$"}, 143, "failed"}),
    [](const auto& info) { return info.param.name; });

TEST(run, command_not_found_is_127) {
  env e;
  auto r = e.run({"--id", "nf", "--", "makima-no-such-command-xyz", "a"});
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_NE(r.err.find("makima: task nf failed:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("not found"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("makima-no-such-command-xyz"), std::string::npos)
      << r.err;
  EXPECT_EQ(e.show("nf")["state"], "failed");
}

TEST(run, not_executable_is_126) {
  env e;
  auto file = e.root() / "script.sh";
  test::write_file(file, "#!/bin/sh\necho hi\n");
  ::chmod(file.c_str(), 0644);
  auto r = e.run({"--id", "nx1", "--", file.string()});
  EXPECT_EQ(r.exit_code, 126) << r.err;
  EXPECT_NE(r.err.find("makima: task nx1 failed:"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");

  auto d = e.run({"--id", "nx2", "--", e.root().string()});
  EXPECT_EQ(d.exit_code, 126) << d.err;
  EXPECT_NE(d.err.find("makima: task nx2 failed:"), std::string::npos) << d.err;
}

TEST(run, usage_errors_are_2) {
  env e;
  struct {
    std::vector<std::string> args;
    std::string msg;
  } cases[] = {
      {{"--no-such-flag", "--", "true"}, ""},
      {{"--timeout", "-1", "--", "true"}, ""},
      {{"--timeout", "abc", "--", "true"}, ""},
      {{"--env", "foo", "--", "true"}, "foo"},
      {{"--env", "=v", "--", "true"}, ""},
      {{"--id", "a/b", "--", "true"}, "a/b"},
      {{"--id", "..", "--", "true"}, ".."},
      {{}, ""}, // no command
  };
  for (auto& c : cases) {
    auto r = e.run(c.args);
    std::string what;
    for (auto& a : c.args)
      what += "'" + a + "' ";
    EXPECT_EQ(r.exit_code, 2) << what << "\n" << r.err;
    EXPECT_FALSE(r.err.empty()) << what;
    if (!c.msg.empty()) {
      EXPECT_NE(r.err.find(c.msg), std::string::npos) << what << "\n" << r.err;
    }
  }
  // None of them created a task.
  auto l = e.list();
  EXPECT_TRUE(l.empty()) << l.dump(2);
  auto show = e.task("show", {"no-such-task"});
  EXPECT_EQ(show.exit_code, 2) << show.err;
}

TEST(run, child_env_and_cwd) {
  env e;
  auto r = e.run({"--id", "envt", "--env", "FOO=bar", "--env", "EQ=a=b",
                  "--env", "EMPTY=", "--", "sh", "-c",
                  "echo \"cwd=$(pwd -P)\"; echo \"entries=$(ls -A | wc -l)\"; "
                  "env | grep -E '^(MAKIMA_|FOO=|EQ=|EMPTY=)' | sort"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = e.show("envt");
  fs::path wt = j["worktree"].get<std::string>();
  fs::path sd = j["state_dir"].get<std::string>();
  EXPECT_EQ(canon(wt), canon(e.data() / "worktrees" / "envt"));
  EXPECT_EQ(canon(sd), canon(e.data() / "state" / "envt"));
  auto has = [&](const std::string& line) {
    EXPECT_NE(r.out.find(line + "\n"), std::string::npos)
        << "missing '" << line << "' in:\n"
        << r.out;
  };
  has("cwd=" + canon(wt).string());
  has("entries=0");
  has("MAKIMA_TASK_ID=envt");
  has("MAKIMA_ATTEMPT=1");
  has("MAKIMA_RESUMED=0");
  has("FOO=bar");
  has("EQ=a=b");
  has("EMPTY=");
  // The paths the child sees name the same directories.
  auto val = [&](const std::string& k) {
    auto p = r.out.find(k + "=");
    if (p == std::string::npos)
      return std::string();
    p += k.size() + 1;
    return r.out.substr(p, r.out.find('\n', p) - p);
  };
  EXPECT_EQ(canon(val("MAKIMA_WORKTREE")), canon(wt));
  EXPECT_EQ(canon(val("MAKIMA_STATE_DIR")), canon(sd));
  EXPECT_TRUE(fs::is_directory(sd));
  auto spec_env = j["spec"]["env"];
  EXPECT_EQ(spec_env.size(), 3u) << j["spec"].dump();
}

TEST(run, timeout_kills_after_term) {
  env e;
  auto t0 = std::chrono::steady_clock::now();
  auto r = e.run(
      {"--id", "to", "--timeout", "1", "--grace", "1", "--", "sleep", "30"},
      20000ms);
  auto dt = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(r.exit_code, 124) << r.err;
  EXPECT_LT(dt, 8s);
  EXPECT_GE(dt, 900ms);
  EXPECT_EQ(e.show("to")["state"], "timed_out");
  EXPECT_TRUE(pids_with_env("MAKIMA_TASK_ID=to").empty());
}

TEST(run, timeout_sigkills_a_child_ignoring_term) {
  env e;
  auto t0 = std::chrono::steady_clock::now();
  auto r =
      e.run({"--id", "to2", "--timeout", "1", "--grace", "1", "--", "sh", "-c",
             "trap '' TERM; echo armed; while :; do sleep 0.1; done"},
            20000ms);
  auto dt = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(r.exit_code, 124) << r.err;
  EXPECT_EQ(r.out.substr(0, 6), "armed\n");
  EXPECT_GE(dt, 1800ms) << "killed before the grace period ended";
  EXPECT_LT(dt, 8s);
  auto j = e.show("to2");
  EXPECT_EQ(j["state"], "timed_out");
  EXPECT_TRUE(eventually(
      [] { return pids_with_env("MAKIMA_TASK_ID=to2").empty(); }, 3000ms));
}

/// The case name of a signal: "sigint", "sigterm", "sighup".
std::string signal_name(int sig) {
  switch (sig) {
  case SIGINT:
    return "sigint";
  case SIGTERM:
    return "sigterm";
  case SIGHUP:
    return "sighup";
  }
  return "sig" + std::to_string(sig);
}

class run_cancel : public ::testing::TestWithParam<int> {};

TEST_P(run_cancel, signal_cancels_task_and_its_group) {
  env e;
  int sig = GetParam();
  std::string id = "cancel" + std::to_string(sig);
  test::background bg(e.run_argv({"--id", id, "--", "sh", "-c",
                                  "sleep 300 & echo ready; wait"}),
                      e.opts());
  ASSERT_TRUE(bg.wait_for_output("ready", 10000ms));
  std::vector<pid_t> before;
  eventually(
      [&] {
        before = pids_with_env("MAKIMA_TASK_ID=" + id);
        return before.size() >= 2;
      },
      3000ms);
  EXPECT_GE(before.size(), 2u) << "expected sh and sleep";
  bg.kill(sig);
  auto r = bg.wait(10000ms);
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(e.show(id)["state"], "cancelled");
  for (pid_t p : before)
    EXPECT_TRUE(eventually([p] { return !alive(p); }, 3000ms))
        << "process " << p << " of the cancelled task survived";
}

INSTANTIATE_TEST_SUITE_P(signals, run_cancel,
                         ::testing::Values(SIGINT, SIGTERM, SIGHUP),
                         [](const auto& info) {
                           return signal_name(info.param);
                         });

} // namespace
} // namespace makima::it
