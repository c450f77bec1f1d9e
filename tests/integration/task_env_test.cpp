// What a task's process sees of makima's environment, in all three modes
// (`makima run`, `makima local` + `task submit`, `makima server` + `makima
// daemon`): the pass-through list and --pass-env names, never makima's
// secrets (MAKIMA_API_KEY, MAKIMA_SERVER_USER_KEYS, AWS credentials), even
// when named. The task runs `env`; the assertions read its stored output.
// Also the CLI's input checks shared by `run` and `task submit`: non-UTF-8
// arguments and out-of-range --timeout / --grace are usage errors (exit 2).
#include "tests/integration/fleet.hpp"

using namespace makima::it;

namespace {

// Values only the secrets hold, so a match anywhere in the output is a leak.
constexpr const char* api_key_value = "apikey-7d1e0c9b";
constexpr const char* aws_secret_value = "awssecret-51f2ab7e";
constexpr const char* aws_id_value = "awsid-c04d93aa";
constexpr const char* foo_value = "foo-value-3b8e";

/// The test's environment for a makima process, plus the secrets and FOO.
/// MAKIMA_SERVER_USER_KEYS is the user key (so `makima local` needs it).
makima::test::run_options secret_opts(const env& e,
                                      std::chrono::milliseconds timeout) {
  auto o = e.opts(timeout);
  o.env["MAKIMA_API_KEY"] = api_key_value;
  o.env["MAKIMA_SERVER_USER_KEYS"] = user_key;
  o.env["AWS_SECRET_ACCESS_KEY"] = aws_secret_value;
  o.env["AWS_ACCESS_KEY_ID"] = aws_id_value;
  o.env["FOO"] = foo_value;
  o.env["LANG"] = "C.UTF-8";
  o.env["TZ"] = "Europe/Berlin";
  return o;
}

/// Checks what the task printed with `env`.
void expect_clean_env(const std::string& out, bool foo_expected) {
  EXPECT_EQ(out.find(api_key_value), std::string::npos) << out;
  EXPECT_EQ(out.find(user_key), std::string::npos) << out;
  EXPECT_EQ(out.find(aws_secret_value), std::string::npos) << out;
  EXPECT_EQ(out.find(aws_id_value), std::string::npos) << out;
  EXPECT_EQ(out.find("MAKIMA_API_KEY="), std::string::npos) << out;
  EXPECT_EQ(out.find("MAKIMA_SERVER_USER_KEYS="), std::string::npos) << out;
  EXPECT_EQ(out.find("MAKIMA_DATA_DIR="), std::string::npos) << out;
  EXPECT_EQ(out.find("AWS_SECRET_ACCESS_KEY="), std::string::npos) << out;
  EXPECT_NE(out.find("\nPATH="), std::string::npos) << out;
  EXPECT_NE(out.find("\nHOME="), std::string::npos) << out;
  EXPECT_NE(out.find("\nLANG=C.UTF-8\n"), std::string::npos) << out;
  EXPECT_NE(out.find("\nTZ=Europe/Berlin\n"), std::string::npos) << out;
  EXPECT_NE(out.find("\nMAKIMA_TASK_ID="), std::string::npos) << out;
  EXPECT_EQ(out.find(std::string{"FOO="} + foo_value) != std::string::npos,
            foo_expected)
      << out;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r'))
    s.pop_back();
  return s;
}

/// A task that prints the environment of its parent (the makima process
/// that started it), as /proc shows it to a task.
const std::vector<std::string> parent_env_command = {
    "sh", "-c", "tr '\\0' '\\n' < /proc/$PPID/environ"};

/// Checks that no secret's value is in what the parent-env task printed.
void expect_no_secret_values(const std::string& out) {
  EXPECT_NE(out.find("HOME="), std::string::npos) << out; // it did read it
  EXPECT_EQ(out.find(api_key_value), std::string::npos) << out;
  EXPECT_EQ(out.find(user_key), std::string::npos) << out;
  EXPECT_EQ(out.find(daemon_key), std::string::npos) << out;
  EXPECT_EQ(out.find(aws_secret_value), std::string::npos) << out;
  EXPECT_EQ(out.find(aws_id_value), std::string::npos) << out;
}

/// Submits `command` (default: `env`) to `url` and returns what `task
/// logs` printed.
std::string submit_env_task(const env& e, const std::string& url,
                            std::vector<std::string> command = {"sh", "-c",
                                                                "echo; env"}) {
  auto o = secret_opts(e, 30000ms);
  auto r =
      makima::test::run({MAKIMA_BINARY, "task", "submit", "--server", url,
                         "--api-key", user_key, "--", "sh", "-c", "echo; env"},
                        o);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto id = trim(r.out);
  auto w = makima::test::run({MAKIMA_BINARY, "task", "wait", id, "--server",
                              url, "--api-key", user_key},
                             o);
  EXPECT_EQ(w.exit_code, 0) << w.out << w.err;
  auto logs = makima::test::run({MAKIMA_BINARY, "task", "logs", id, "--server",
                                 url, "--api-key", user_key},
                                o);
  EXPECT_EQ(logs.exit_code, 0) << logs.err;
  return logs.out;
}

} // namespace

TEST(task_env, run_passes_the_list_and_never_makimas_secrets) {
  env e;
  auto o = secret_opts(e, 30000ms);
  auto r = makima::test::run(
      e.run_argv({"--id", "plain", "--", "sh", "-c", "echo; env"}), o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_clean_env(r.out, false);
  // The stored output says the same.
  auto logs = makima::test::run(e.task_argv("logs", {"plain"}), o);
  ASSERT_EQ(logs.exit_code, 0) << logs.err;
  expect_clean_env(logs.out, false);

  r = makima::test::run(e.run_argv({"--id", "foo", "--pass-env", "FOO", "--",
                                    "sh", "-c", "echo; env"}),
                        o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_clean_env(r.out, true);

  // Nor can the task read them from makima's own environment in /proc.
  {
    auto argv = e.run_argv({"--id", "parent", "--"});
    argv.insert(argv.end(), parent_env_command.begin(),
                parent_env_command.end());
    r = makima::test::run(argv, o);
  }
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_no_secret_values(r.out);

  // task.pass_env from the environment (MAKIMA_PASS_ENV) works the same.
  auto o2 = o;
  o2.env["MAKIMA_PASS_ENV"] = "FOO,BAR";
  r = makima::test::run(
      e.run_argv({"--id", "foo-env", "--", "sh", "-c", "echo; env"}), o2);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  expect_clean_env(r.out, true);
}

TEST(task_env, naming_a_secret_to_pass_is_a_usage_error) {
  env e;
  auto o = secret_opts(e, 30000ms);
  for (auto name :
       {"MAKIMA_API_KEY", "MAKIMA_SERVER_USER_KEYS",
        "MAKIMA_SERVER_DAEMON_KEYS", "MAKIMA_S3_SECRET",
        "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"}) {
    auto r = makima::test::run(
        e.run_argv({"--pass-env", name, "--", "sh", "-c", "env"}), o);
    EXPECT_EQ(r.exit_code, 2) << name << r.out << r.err;
    EXPECT_NE(r.err.find(name), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find(api_key_value), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find(aws_secret_value), std::string::npos) << r.out;
    auto o2 = o;
    o2.env["MAKIMA_PASS_ENV"] = std::string{"FOO,"} + name;
    r = makima::test::run(e.run_argv({"--", "sh", "-c", "env"}), o2);
    EXPECT_EQ(r.exit_code, 2) << name << r.out << r.err;
    EXPECT_NE(r.err.find("task.pass_env"), std::string::npos) << r.err;
  }
  for (auto cmd : {"daemon", "local"}) {
    auto r = makima::test::run({MAKIMA_BINARY, cmd, "--data-dir",
                                (e.root() / cmd).string(), "--pass-env",
                                "MAKIMA_API_KEY"},
                               o);
    EXPECT_EQ(r.exit_code, 2) << cmd << r.out << r.err;
    EXPECT_NE(r.err.find("MAKIMA_API_KEY"), std::string::npos) << r.err;
  }
  // No variable name.
  auto r =
      makima::test::run(e.run_argv({"--pass-env", "A=B", "--", "true"}), o);
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST(task_env, env_flag_cannot_set_makimas_task_variables) {
  env e;
  for (auto name : {"MAKIMA_TASK_ID", "MAKIMA_ATTEMPT", "MAKIMA_RESUMED",
                    "MAKIMA_STATE_DIR", "MAKIMA_WORKTREE"}) {
    auto r = e.run({"--env", std::string{name} + "=x", "--", "true"});
    EXPECT_EQ(r.exit_code, 2) << name << r.err;
    EXPECT_NE(r.err.find(name), std::string::npos) << r.err;
    r = makima::test::run({MAKIMA_BINARY, "task", "submit", "--server",
                           "http://127.0.0.1:1", "--env",
                           std::string{name} + "=x", "--", "true"},
                          e.opts());
    EXPECT_EQ(r.exit_code, 2) << name << r.err;
  }
  // The user's own value of another MAKIMA_* name is theirs to give.
  auto r = e.run({"--env", "MAKIMA_API_KEY=mine", "--", "sh", "-c",
                  "echo \"k=$MAKIMA_API_KEY\""});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("k=mine"), std::string::npos) << r.out;
}

TEST(task_env, local_passes_the_list_and_never_makimas_secrets) {
  env e;
  for (bool pass_foo : {false, true}) {
    std::vector<std::string> argv{
        MAKIMA_BINARY, "local",
        "--listen",    "127.0.0.1:0",
        "--data-dir",  (e.root() / (pass_foo ? "l2" : "l1")).string()};
    if (pass_foo)
      argv.insert(argv.end(), {"--pass-env", "FOO"});
    makima::test::background node{argv, secret_opts(e, 600000ms)};
    ASSERT_TRUE(node.wait_for_output("listening on ", 20000ms))
        << node.output();
    auto port = listening_port(node.output());
    ASSERT_NE(port, 0) << node.output();
    auto url = "http://127.0.0.1:" + std::to_string(port);
    auto out = submit_env_task(e, url);
    expect_clean_env(out, pass_foo);
    expect_no_secret_values(submit_env_task(e, url, parent_env_command));
    node.kill(SIGTERM);
    node.wait(20000ms);
  }
}

TEST(task_env, daemon_passes_the_list_and_never_makimas_secrets) {
  env e;
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, {"server", "--listen", "127.0.0.1:0", "--data-dir",
                             (e.root() / "server").string(), "--user-key",
                             user_key, "--daemon-key", daemon_key}));
  for (bool pass_foo : {false, true}) {
    // The daemon key in MAKIMA_API_KEY, as docs/fleet.md says to deploy it.
    auto o = secret_opts(e, 600000ms);
    o.env["MAKIMA_API_KEY"] = daemon_key;
    std::vector<std::string> argv{
        MAKIMA_BINARY, "daemon",
        "--server",    srv.ws(),
        "--name",      pass_foo ? "d2" : "d1",
        "--data-dir",  (e.root() / (pass_foo ? "d2" : "d1")).string()};
    if (pass_foo)
      argv.insert(argv.end(), {"--pass-env", "FOO"});
    makima::test::background d{argv, o};
    ASSERT_TRUE(d.wait_for_output("connected to ", 20000ms)) << d.output();
    auto out = submit_env_task(e, srv.http());
    expect_clean_env(out, pass_foo);
    expect_no_secret_values(submit_env_task(e, srv.http(), parent_env_command));
    EXPECT_EQ(out.find(daemon_key), std::string::npos) << out;
    d.kill(SIGTERM);
    d.wait(20000ms);
  }
}

namespace {

// Invalid UTF-8 spellings: a lone 0xFF, a truncated 3-byte sequence, an
// overlong '/', a UTF-16 surrogate, a lone continuation byte, a code point
// beyond U+10FFFF.
const std::vector<std::string> bad_utf8 = {"\xff",     "a\xe2\x82",
                                           "\xc0\xaf", "\xed\xa0\x80",
                                           "\x80",     "\xf4\x90\x80\x80"};

} // namespace

TEST(task_cli, non_utf8_arguments_are_usage_errors_in_run_and_submit) {
  env e;
  for (auto& bad : bad_utf8) {
    std::vector<std::vector<std::string>> cases = {
        {"--", "printf", bad},
        {"--env", "K=" + bad, "--", "true"},
        {"--env", bad + "=1", "--", "true"},
        {"--ref", bad, "--", "true"}};
    for (auto& args : cases) {
      auto r = e.run(args);
      EXPECT_EQ(r.exit_code, 2) << r.err;
      EXPECT_EQ(r.signal, 0);
      EXPECT_NE(r.err.find("not valid UTF-8"), std::string::npos) << r.err;
      std::vector<std::string> submit{MAKIMA_BINARY, "task", "submit",
                                      "--server", "http://127.0.0.1:1"};
      submit.insert(submit.end(), args.begin(), args.end());
      r = makima::test::run(submit, e.opts());
      EXPECT_EQ(r.exit_code, 2) << r.err;
      EXPECT_EQ(r.signal, 0) << "task submit died of a signal";
      EXPECT_NE(r.err.find("not valid UTF-8"), std::string::npos) << r.err;
    }
    auto r = makima::test::run({MAKIMA_BINARY, "task", "submit", "--server",
                                "http://127.0.0.1:1", "--selector", "k=" + bad,
                                "--", "true"},
                               e.opts());
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(r.signal, 0);
    EXPECT_NE(r.err.find("--selector is not valid UTF-8"), std::string::npos)
        << r.err;
  }
  // Valid multi-byte text passes (and runs).
  auto r = e.run({"--", "printf", "%s", "\xe2\x82\xac \xf0\x9f\x98\x80"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "\xe2\x82\xac \xf0\x9f\x98\x80");
}

TEST(task_cli, timeout_and_grace_out_of_range_are_usage_errors) {
  env e;
  for (std::string flag : {"--timeout", "--grace"}) {
    for (std::string v : {"1e10", "1e308", "inf", "-inf", "nan", "-1", "-0.5",
                          "10s", "", "2592001"}) {
      auto r = e.run({flag, v, "--", "true"});
      EXPECT_EQ(r.exit_code, 2) << flag << " " << v << ": " << r.err;
      // A number out of range names the range ("… from 0 to 2592000 (30
      // days)"); a word that is no number says what is expected (issue 9).
      EXPECT_NE(r.err.find(flag + ": expected seconds "), std::string::npos)
          << r.err;
      r = makima::test::run({MAKIMA_BINARY, "task", "submit", "--server",
                             "http://127.0.0.1:1", flag, v, "--", "true"},
                            e.opts());
      EXPECT_EQ(r.exit_code, 2) << flag << " " << v << ": " << r.err;
      EXPECT_EQ(r.signal, 0);
    }
    // The maximum itself is accepted; a task with it does not fire at once.
    auto r = e.run({flag, "2592000", "--", "true"});
    EXPECT_EQ(r.exit_code, 0) << flag << ": " << r.err;
  }
  // 1e10 used to overflow: the task was killed at once (exit 124).
  auto r = e.run({"--timeout", "2592000", "--", "sh", "-c", "sleep 0.3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // The config keys have the same range.
  auto o = e.opts();
  o.env["MAKIMA_TASK_TIMEOUT"] = "1e10";
  r = makima::test::run(e.run_argv({"--", "true"}), o);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("task.timeout"), std::string::npos) << r.err;
}
