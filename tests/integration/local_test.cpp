// `makima local` (server + daemon in one process) driven by the CLI client:
// submit, wait (exit codes), logs and logs -f, list, show, cancel.
#include "tests/integration/fleet.hpp"

using namespace makima::it;

namespace {

struct local_fixture : ::testing::Test {
  env e;
  server_proc node;
  void SetUp() override {
    ASSERT_TRUE(node.launch(e, {"local", "--listen", "127.0.0.1:0",
                                "--data-dir", (e.root() / "local").string(),
                                "--max-tasks", "2"}));
  }
  run_result cli(std::vector<std::string> args,
                 std::chrono::milliseconds timeout = 30000ms) {
    args.insert(args.begin(), MAKIMA_BINARY);
    args.insert(args.begin() + 3, {"--server", node.http()});
    return makima::test::run(args, e.opts(timeout));
  }
  std::string submit(std::vector<std::string> extra,
                     std::vector<std::string> command) {
    std::vector<std::string> argv{MAKIMA_BINARY, "task", "submit", "--server",
                                  node.http()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.push_back("--");
    argv.insert(argv.end(), command.begin(), command.end());
    auto r = makima::test::run(argv, e.opts());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    auto id = r.out;
    while (!id.empty() && (id.back() == '\n' || id.back() == '\r'))
      id.pop_back();
    return id;
  }
};

} // namespace

TEST_F(local_fixture, submit_prints_the_id_and_wait_exits_with_the_task_code) {
  auto id = submit({"--id", "three"}, {"sh", "-c", "echo hi; exit 3"});
  EXPECT_EQ(id, "three");
  auto w = cli({"task", "wait", id});
  EXPECT_EQ(w.exit_code, 3) << w.err;
  auto ok = submit({}, {"true"});
  EXPECT_FALSE(ok.empty());
  EXPECT_EQ(cli({"task", "wait", ok}).exit_code, 0);
  auto missing = submit({}, {"no-such-command-makima"});
  EXPECT_EQ(cli({"task", "wait", missing}).exit_code, 127);
}

TEST_F(local_fixture, logs_follow_streams_until_the_end_and_exits_with_code) {
  auto id = submit({"--id", "stream"},
                   {"sh", "-c",
                    "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three; "
                    "exit 4"});
  auto f = cli({"task", "logs", id, "-f"});
  EXPECT_EQ(f.exit_code, 4) << f.err;
  EXPECT_EQ(f.out, "one\nthree\n");
  EXPECT_NE(f.err.find("two\n"), std::string::npos) << f.err;
  // Without -f: the whole output of a finished task.
  auto l = cli({"task", "logs", id});
  EXPECT_EQ(l.exit_code, 0) << l.err;
  EXPECT_EQ(l.out, "one\nthree\n");
}

TEST_F(local_fixture, list_show_and_cancel_through_the_api) {
  auto id = submit({"--id", "sleeper", "--env", "X=1"}, {"sleep", "30"});
  ASSERT_TRUE(eventually(
      [&] {
        auto s = cli({"task", "show", id, "--json"});
        return s.out.find("\"running\"") != std::string::npos;
      },
      20000ms));
  auto list = cli({"task", "list", "--json"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("\"sleeper\""), std::string::npos) << list.out;
  auto c = cli({"task", "cancel", id});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  auto w = cli({"task", "wait", id});
  EXPECT_EQ(w.exit_code, 130) << w.err;
  auto show = cli({"task", "show", id, "--json"});
  auto j = json::parse(show.out);
  EXPECT_EQ(j.value("state", ""), "cancelled");
  // Unknown id: usage error naming the id.
  auto none = cli({"task", "show", "nope"});
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("nope"), std::string::npos) << none.err;
}

TEST(local, unreachable_server_is_a_clear_error) {
  env e;
  auto r = makima::test::run({MAKIMA_BINARY, "task", "list", "--server",
                      "http://127.0.0.1:1"},
                     e.opts());
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_NE(r.err.find("cannot reach the server"), std::string::npos)
      << r.err;
}

TEST(local, non_loopback_listen_needs_user_keys) {
  env e;
  auto r = makima::test::run({MAKIMA_BINARY, "local", "--listen", "0.0.0.0:0",
                              "--data-dir", (e.root() / "d").string()},
                             e.opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("needs user keys"), std::string::npos) << r.err;
}

TEST(local, sigterm_stops_and_a_running_task_reruns_at_the_next_start) {
  env e;
  auto data = e.root() / "local";
  server_proc node;
  ASSERT_TRUE(node.launch(e, {"local", "--listen", "127.0.0.1:0", "--data-dir",
                              data.string()}));
  api http{node.http(), ""};
  auto id = http.submit({{"id", "again"},
                         {"argv", {"sh", "-c", "echo run; sleep 1; echo end"}}});
  ASSERT_TRUE(eventually([&] { return http.output(id).out == "run\n"; },
                         20000ms));
  auto stopped = node.stop(SIGTERM);
  EXPECT_EQ(stopped.exit_code, 0) << stopped.err;
  // The next start reports the dead attempt; the server runs it again.
  server_proc again;
  ASSERT_TRUE(again.launch(e, {"local", "--listen", "127.0.0.1:0",
                               "--data-dir", data.string()}));
  api http2{again.http(), ""};
  ASSERT_TRUE(http2.wait_terminal({id}, 30000ms));
  auto rec = http2.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << rec.dump();
  EXPECT_EQ(rec.value("attempt", 0), 2);
  EXPECT_EQ(http2.output(id).out, "run\nrun\nend\n");
}
