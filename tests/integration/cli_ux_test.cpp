// The shell conventions and error messages of the `makima` command line
// (issue 9): unknown commands named with a suggestion, `help`, `version`,
// numeric flags that say what they expect, host names of loopback in
// --listen, --push implying --commit, completion scripts, the man page,
// examples in --help, `config show` and makima_build_info in /metrics.
#include "tests/integration/helpers.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <regex>

namespace makima::it {
namespace {

/// `makima <args...>` in `e`'s environment.
run_result makima(const env& e, std::vector<std::string> args,
                  test::run_options o) {
  args.insert(args.begin(), MAKIMA_BINARY);
  return test::run(args, o);
}

run_result makima(const env& e, std::vector<std::string> args) {
  return makima(e, std::move(args), e.opts());
}

bool has(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

/// The body of GET `target` from 127.0.0.1:`port` (bounded to 5 s).
std::string http_get(uint16_t port, const std::string& target) {
  return raw_http(port, "GET", target, {}).body;
}

uint16_t port_in(const std::string& out) {
  std::smatch m;
  static const std::regex re{R"(listening on http://127\.0\.0\.1:([0-9]+))"};
  if (std::regex_search(out, m, re))
    return static_cast<uint16_t>(std::stoi(m[1]));
  return 0;
}

bool have_program(const std::string& name) {
  return test::sh("command -v " + name + " >/dev/null 2>&1").exit_code == 0;
}

TEST(cli_ux, unknown_commands_are_named_with_the_nearest_command) {
  env e;
  struct expectation {
    std::vector<std::string> args;
    std::string message;
  };
  for (auto& c : std::vector<expectation>{
           {{"rn"}, "makima: unknown command 'rn' (did you mean 'run'?)"},
           {{"task", "lst"},
            "makima: unknown command 'task lst' (did you mean 'task list'?)"},
           {{"task", "sumbit", "--", "true"},
            "makima: unknown command 'task sumbit' (did you mean 'task "
            "submit'?)"},
           {{"servr", "--listen", "x"},
            "makima: unknown command 'servr' (did you mean 'server'?)"},
           {{"config", "shw"},
            "makima: unknown command 'config shw' (did you mean 'config "
            "show'?)"},
       }) {
    auto r = makima(e, c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << ": " << r.err;
    EXPECT_TRUE(has(r.err, c.message)) << r.err;
    EXPECT_FALSE(has(r.err, "A subcommand is required")) << r.err;
  }
  // Nothing close: the commands are listed.
  auto r = makima(e, {"zzzzzz"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(has(r.err, "makima: unknown command 'zzzzzz' (commands: run, "))
      << r.err;
  // A command that needs a subcommand says which ones there are.
  r = makima(e, {"task"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(has(r.err, "'task' needs a command: list, show")) << r.err;
  // The words after "--" are the task's command, never checked as ours.
  r = e.run({"--", "rn"});
  EXPECT_EQ(r.exit_code, 127) << r.err;
}

TEST(cli_ux, help_prints_the_help_of_a_command) {
  env e;
  auto top = makima(e, {"help"});
  EXPECT_EQ(top.exit_code, 0) << top.err;
  EXPECT_EQ(top.out, makima(e, {"--help"}).out);
  EXPECT_TRUE(has(top.out, "run")) << top.out;
  auto sub = makima(e, {"help", "task", "submit"});
  EXPECT_EQ(sub.exit_code, 0) << sub.err;
  auto direct = makima(e, {"task", "submit", "--help"});
  EXPECT_EQ(direct.exit_code, 0);
  EXPECT_EQ(sub.out, direct.out);
  EXPECT_TRUE(has(sub.out, "--selector")) << sub.out;
  EXPECT_EQ(makima(e, {"help", "run"}).out, makima(e, {"run", "--help"}).out);
  auto bad = makima(e, {"help", "task", "lst"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_TRUE(has(bad.err, "unknown command 'task lst' (did you mean 'task "
                           "list'?)"))
      << bad.err;
}

TEST(cli_ux, version_prints_build_details) {
  env e;
  auto r = makima(e, {"version"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("makima 0.", 0), 0u) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex{"commit: +(\\S+)"}))
      << r.out;
  std::string commit = m[1];
  EXPECT_TRUE(commit == "unknown"
              || std::regex_match(commit, std::regex{"[0-9a-f]{7,40}"}))
      << commit;
  EXPECT_TRUE(has(r.out, "build type:")) << r.out;
  for (auto lib : {"CAF", "Boost", "libgit2", "RocksDB", "spdlog", "OpenSSL",
                   "CLI11", "nlohmann-json"})
    EXPECT_TRUE(std::regex_search(
        r.out, std::regex{std::string{"\n  "} + lib + " +[^ \n]*[0-9]+\\."}))
        << lib << " missing in\n"
        << r.out;
  // --version stays one line, with the commit.
  auto v = makima(e, {"--version"});
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_EQ(std::count(v.out.begin(), v.out.end(), '\n'), 1) << v.out;
  EXPECT_TRUE(has(v.out, commit)) << v.out;
}

TEST(cli_ux, numeric_flags_say_what_they_expect) {
  env e;
  struct expectation {
    std::vector<std::string> args;
    std::string message;
  };
  const std::string ws = "ws://127.0.0.1:1/ws/daemon";
  for (auto& c : std::vector<expectation>{
           {{"run", "--timeout", "abc", "--", "true"},
            "makima: --timeout: expected seconds (e.g. 30, 1.5), got 'abc'"},
           {{"run", "--grace", "10s", "--", "true"},
            "--grace: expected seconds (e.g. 30, 1.5), got '10s'"},
           {{"run", "--timeout", "1e10", "--", "true"},
            "--timeout: expected seconds from 0 to 2592000 (30 days), got "
            "'1e10'"},
           {{"task", "submit", "--server", "http://127.0.0.1:1", "--timeout",
             "x", "--", "true"},
            "--timeout: expected seconds (e.g. 30, 1.5), got 'x'"},
           {{"task", "submit", "--server", "http://127.0.0.1:1",
             "--max-attempts", "x", "--", "true"},
            "--max-attempts: expected a whole number (e.g. 4), got 'x'"},
           {{"task", "submit", "--server", "http://127.0.0.1:1",
             "--max-attempts", "0", "--", "true"},
            "--max-attempts: expected a whole number from 1 to 1000, got '0'"},
           {{"local", "--max-tasks", "x"},
            "--max-tasks: expected a whole number (e.g. 4), got 'x'"},
           {{"daemon", "--server", ws, "--max-tasks", "2.5"},
            "--max-tasks: expected a whole number (e.g. 4), got '2.5'"},
           {{"daemon", "--server", ws, "--heartbeat", "abc"},
            "--heartbeat: expected seconds (e.g. 30, 1.5), got 'abc'"},
           {{"daemon", "--server", ws, "--heartbeat", "0"},
            "--heartbeat: expected seconds above 0 up to 2592000 (30 days), "
            "got '0'"},
           {{"server", "--no-auth", "--lease", "x"},
            "--lease: expected seconds (e.g. 30, 1.5), got 'x'"},
       }) {
    auto r = makima(e, c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << ": " << r.err;
    EXPECT_TRUE(has(r.err, c.message))
        << "want: " << c.message << "\ngot: " << r.err;
    // Never DBL_MAX spelled out in 309 digits.
    EXPECT_LT(r.err.size(), 300u) << r.err;
  }
}

TEST(cli_ux, listen_accepts_a_host_name_of_loopback) {
  env e;
  auto o = e.opts();
  o.unset_env.push_back("MAKIMA_SERVER_USER_KEYS");
  o.unset_env.push_back("MAKIMA_SERVER_DAEMON_KEYS");
  test::background srv{{MAKIMA_BINARY, "server", "--data-dir",
                        (e.root() / "server").string(), "--listen",
                        "localhost:0", "--no-auth"},
                       o};
  ASSERT_TRUE(srv.wait_for_output("listening on http://127.0.0.1:", 10s))
      << srv.output();
  auto port = port_in(srv.output());
  ASSERT_GT(port, 0);
  EXPECT_TRUE(has(http_get(port, "/healthz"), "ok"));
  srv.kill(SIGTERM);
  EXPECT_EQ(srv.wait(20s).exit_code, 0);

  // `makima local` (a server and its daemon) on localhost too.
  test::background lo{{MAKIMA_BINARY, "local", "--data-dir",
                       (e.root() / "local").string(), "--listen",
                       "localhost:0"},
                      o};
  ASSERT_TRUE(lo.wait_for_output("listening on http://127.0.0.1:", 30s))
      << lo.output();
  lo.kill(SIGTERM);
  EXPECT_EQ(lo.wait(30s).exit_code, 0);

  // The daemon's health endpoint too.
  test::background d{{MAKIMA_BINARY, "daemon", "--data-dir",
                      (e.root() / "daemon").string(), "--server",
                      "ws://127.0.0.1:1/ws/daemon", "--health-listen",
                      "localhost:0"},
                     o};
  EXPECT_TRUE(d.wait_for_output("health endpoint on 127.0.0.1:", 10s))
      << d.output();
  d.kill(SIGTERM);
  d.wait(20s);

  // A name that does not resolve is a clear usage error.
  auto bad = makima(e,
                    {"server", "--data-dir", (e.root() / "bad").string(),
                     "--listen", "no-such-host.invalid:0", "--no-auth"},
                    o);
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_TRUE(has(bad.err, "makima: --listen: cannot resolve host "
                           "'no-such-host.invalid'"))
      << bad.err;
}

TEST(cli_ux, push_implies_commit) {
  env e;
  auto src = test::make_repo(e.root() / "src", {5, 1, "main", {}, ""});
  auto bare = test::make_bare_repo(e.root() / "bare.git");
  auto base = test::git(src, {"rev-parse", "HEAD"});
  auto r = e.run({"--repo", src.string(), "--id", "pushonly", "--push",
                  bare.string(), "--", "sh", "-c", "echo changed > new.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = e.show("pushonly");
  EXPECT_EQ(j["pushed"], true) << j.dump(2);
  auto pushed = test::git(bare, {"rev-parse", "makima/pushonly"});
  EXPECT_NE(pushed, base);
  EXPECT_EQ(test::git(bare, {"rev-parse", "makima/pushonly^"}), base);
  EXPECT_EQ(test::git(bare, {"show", "makima/pushonly:new.txt"}), "changed");
  auto help = e.run({"--help"});
  EXPECT_TRUE(has(help.out, "implies --commit")) << help.out;
}

TEST(cli_ux, bash_completion_is_generated_from_the_commands) {
  env e;
  auto script = makima(e, {"completion", "bash"});
  ASSERT_EQ(script.exit_code, 0) << script.err;
  for (auto word : {"submit", "--data-dir", "--timeout", "--max-attempts",
                    "--health-listen", "completion", "resume"})
    EXPECT_TRUE(has(script.out, word)) << word;
  auto o = e.opts();
  o.input = script.out;
  auto loaded =
      test::run({"bash", "-c", "source /dev/stdin; complete -p makima"}, o);
  EXPECT_EQ(loaded.exit_code, 0) << loaded.err;
  EXPECT_TRUE(has(loaded.out, "_makima makima")) << loaded.out;
  // The function completes: `makima task su<TAB>`, `makima run --ti<TAB>`.
  auto complete = [&](const std::string& words, int cword) {
    auto oo = e.opts();
    oo.input = script.out;
    return test::run({"bash", "-c",
                      "source /dev/stdin; COMP_WORDS=(" + words
                          + "); COMP_CWORD=" + std::to_string(cword)
                          + "; _makima; echo \"${COMPREPLY[*]}\""},
                     oo)
        .out;
  };
  EXPECT_EQ(complete("makima task su", 2), "submit\n");
  EXPECT_EQ(complete("makima run --ti", 2), "--timeout\n");
  EXPECT_EQ(complete("makima completion ''", 2), "bash zsh\n");
  auto via_process =
      test::sh("bash -c 'source <(\"" + std::string{MAKIMA_BINARY}
               + "\" completion bash); complete -p makima'");
  EXPECT_EQ(via_process.exit_code, 0) << via_process.err;
}

TEST(cli_ux, zsh_completion_is_generated_from_the_commands) {
  env e;
  auto script = makima(e, {"completion", "zsh"});
  ASSERT_EQ(script.exit_code, 0) << script.err;
  EXPECT_EQ(script.out.rfind("#compdef makima\n", 0), 0u);
  EXPECT_TRUE(has(script.out, "compdef _makima makima"));
  EXPECT_TRUE(has(script.out, "('task submit') cmds=(); opts=("));
  EXPECT_TRUE(has(script.out, "--selector"));
  // .ci/setup installs zsh: the script is loaded by a real zsh.
  ASSERT_TRUE(have_program("zsh")) << "zsh is missing (bash .ci/setup)";
  auto o = e.opts();
  o.input = script.out;
  auto r = test::run({"zsh", "-c",
                      "autoload -U compinit && compinit -u && source "
                      "/dev/stdin && print ${_comps[makima]}"},
                     o);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "_makima\n");
}

TEST(cli_ux, man_page_is_generated_from_the_help) {
  env e;
  auto r = makima(e, {"man"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind(".TH MAKIMA 1 ", 0), 0u) << r.out.substr(0, 200);
  for (auto section :
       {".SH NAME\n", ".SH SYNOPSIS\n", ".SH DESCRIPTION\n", ".SH COMMANDS\n",
        ".SH EXIT STATUS\n", ".SH ENVIRONMENT\n", ".SH FILES\n"})
    EXPECT_TRUE(has(r.out, section)) << section;
  EXPECT_TRUE(has(r.out, ".SS \"makima task submit\""));
  EXPECT_TRUE(has(r.out, "\\fB\\-\\-timeout\\fR"));
  EXPECT_TRUE(has(r.out, "MAKIMA_DATA_DIR"));
  if (!have_program("man"))
    GTEST_SKIP() << "no man on this machine; checked the roff only";
  auto o = e.opts();
  o.input = r.out;
  o.env["MANPAGER"] = "cat";
  o.env["PAGER"] = "cat";
  o.env["MANWIDTH"] = "100";
  auto shown = test::run({"man", "-l", "-"}, o);
  EXPECT_EQ(shown.exit_code, 0) << shown.err;
  for (auto text : {"NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS",
                    "ENVIRONMENT", "FILES", "makima task submit", "--timeout"})
    EXPECT_TRUE(has(shown.out, text)) << text << "\n" << shown.out;
  EXPECT_FALSE(has(shown.err, "warning")) << shown.err;
}

TEST(cli_ux, help_of_run_submit_and_daemon_has_examples) {
  env e;
  for (auto cmd :
       std::vector<std::vector<std::string>>{{"run", "--help"},
                                             {"task", "submit", "--help"},
                                             {"daemon", "--help"}}) {
    auto r = makima(e, cmd);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(has(r.out, "Examples:\n  makima ")) << r.out;
  }
}

TEST(cli_ux, config_show_names_each_source_and_hides_secrets) {
  env e;
  auto file = e.root() / "makima.toml";
  {
    std::ofstream f(file);
    f << "[task]\ntimeout = 42\n";
  }
  const std::string secret = "sekrit-api-key-98765";
  auto o = e.opts();
  o.env["MAKIMA_LOG_LEVEL"] = "debug";
  o.env["MAKIMA_API_KEY"] = secret;
  o.env["MAKIMA_SERVER_USER_KEYS"] = secret + "-u1," + secret + "-u2";
  auto data = e.root() / "flagdata";
  auto r = makima(e,
                  {"config", "show", "--json", "--config", file.string(),
                   "--data-dir", data.string()},
                  o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(has(r.out, secret)) << r.out;
  EXPECT_FALSE(has(r.err, secret)) << r.err;
  auto j = json::parse(r.out);
  std::map<std::string, json> keys;
  for (auto& k : j["keys"])
    keys[k["key"]] = k;
  EXPECT_EQ(keys["task.timeout"]["value"], "42");
  EXPECT_EQ(keys["task.timeout"]["source"], "file");
  EXPECT_EQ(keys["task.timeout"]["from"], file.string());
  EXPECT_EQ(keys["log.level"]["value"], "debug");
  EXPECT_EQ(keys["log.level"]["source"], "env");
  EXPECT_EQ(keys["log.level"]["from"], "MAKIMA_LOG_LEVEL");
  EXPECT_EQ(keys["paths.data_dir"]["value"], data.string());
  EXPECT_EQ(keys["paths.data_dir"]["source"], "flag");
  EXPECT_EQ(keys["paths.db_dir"]["value"], (data / "db").string());
  EXPECT_EQ(keys["paths.db_dir"]["source"], "default");
  EXPECT_EQ(keys["task.grace"]["source"], "default");
  EXPECT_EQ(keys["server.api_key"]["value"], "******");
  EXPECT_EQ(keys["server.api_key"]["source"], "env");
  EXPECT_EQ(keys["server.user_keys"]["value"], "******");
  EXPECT_EQ(keys["server.daemon_keys"]["value"], "");
  EXPECT_EQ(j["config_file"], file.string());
  // Every key lists its variables, makima's name first, the legacy one
  // after (what k8s/test checks the manifests' env names against).
  EXPECT_EQ(keys["log.level"]["env"], json::array({"MAKIMA_LOG_LEVEL"}));
  EXPECT_EQ(keys["paths.db_dir"]["env"],
            json::array({"MAKIMA_DB_DIR", "MAKIMA_DAEMON_LOCALDB_PATH"}));
  EXPECT_EQ(keys["checkpoint.s3_access_key_id"]["env"],
            json::array({"AWS_ACCESS_KEY_ID"}));
  for (auto& [name, k] : keys)
    EXPECT_FALSE(k["env"].empty()) << name;

  auto text = makima(e,
                     {"config", "show", "--config", file.string(), "--data-dir",
                      data.string()},
                     o);
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_FALSE(has(text.out, secret)) << text.out;
  EXPECT_TRUE(
      std::regex_search(text.out, std::regex{"\ntask\\.timeout +42 +file \\("}))
      << text.out;
  EXPECT_TRUE(std::regex_search(
      text.out, std::regex{"\nserver\\.api_key +\\*\\*\\*\\*\\*\\* +env "
                           "\\(MAKIMA_API_KEY\\)"}))
      << text.out;
  EXPECT_TRUE(
      std::regex_search(text.out, std::regex{"\npaths\\.data_dir +\\S+ +flag "
                                             "\\(--data-dir\\)"}))
      << text.out;
}

TEST(cli_ux, metrics_report_build_info) {
  env e;
  auto o = e.opts();
  o.unset_env.push_back("MAKIMA_SERVER_USER_KEYS");
  o.unset_env.push_back("MAKIMA_SERVER_DAEMON_KEYS");
  test::background srv{{MAKIMA_BINARY, "server", "--data-dir",
                        e.data().string(), "--listen", "127.0.0.1:0",
                        "--no-auth"},
                       o};
  ASSERT_TRUE(srv.wait_for_output("listening on http://127.0.0.1:", 10s));
  auto port = port_in(srv.output());
  ASSERT_GT(port, 0);
  auto metrics = http_get(port, "/metrics");
  auto version = makima(e, {"version"}).out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(version, m, std::regex{"commit: +(\\S+)"}));
  std::string commit = m[1];
  ASSERT_TRUE(std::regex_search(version, m, std::regex{"^makima (\\S+)"}));
  std::string v = m[1];
  EXPECT_TRUE(has(metrics, "# TYPE makima_build_info gauge\n")) << metrics;
  EXPECT_TRUE(has(metrics, "\nmakima_build_info{version=\"" + v + "\",commit=\""
                               + commit + "\"} 1\n"))
      << metrics;
  srv.kill(SIGTERM);
  EXPECT_EQ(srv.wait(20s).exit_code, 0);
}

} // namespace
} // namespace makima::it
