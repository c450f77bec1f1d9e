// Keys given as flags do not stay readable in /proc/PID/cmdline (what `ps`
// and every local user, tasks included, can read): makima overwrites them
// in its argv once it has copied them. Both spellings (`--flag VALUE`,
// `--flag=VALUE`), server and daemon.
#include "tests/integration/fleet.hpp"

#include <fstream>
#include <iterator>

using namespace makima::it;

namespace {

std::string cmdline_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline",
                   std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

} // namespace

TEST(cmdline_keys, key_flags_are_blanked_in_proc_cmdline) {
  env e;
  server_proc srv;
  ASSERT_TRUE(
      srv.launch(e, {"server", "--listen", "127.0.0.1:0", "--data-dir",
                     (e.root() / "server").string(), "--user-key", user_key,
                     std::string{"--daemon-key="} + daemon_key, "--user-key",
                     "second-user-key-91"}));
  daemon_proc d;
  ASSERT_TRUE(d.launch(e, srv.ws(), "d1", e.root() / "d1"));
  auto server_cmd = cmdline_of(srv.bg->pid());
  auto daemon_cmd = cmdline_of(d.bg->pid());
  ASSERT_NE(server_cmd.find("--user-key"), std::string::npos) << server_cmd;
  ASSERT_NE(daemon_cmd.find("--api-key"), std::string::npos) << daemon_cmd;
  for (auto* key : {user_key, daemon_key, "second-user-key-91"}) {
    EXPECT_EQ(server_cmd.find(key), std::string::npos) << key;
    EXPECT_EQ(daemon_cmd.find(key), std::string::npos) << key;
  }
  EXPECT_NE(server_cmd.find("--daemon-key=*****"), std::string::npos);
  // The keys still work: they were copied before being blanked.
  auto id = api{srv.http()}.submit({{"id", "k"}, {"argv", {"true"}}});
  ASSERT_EQ(id, "k");
  EXPECT_TRUE(api{srv.http()}.wait_terminal({id}, 20000ms));
  api second{srv.http(), "second-user-key-91"};
  EXPECT_EQ(second.state(id), "succeeded");
}

TEST(cmdline_keys, the_checkpoint_key_flag_is_blanked_and_still_signs) {
  env e;
  std::string store = "file://" + (e.root() / "store").string();
  makima::test::background run{
      e.run_argv({"--id", "ck", "--checkpoint-interval", "0.2", "--store",
                  store, "--checkpoint-key", "hmac-flag-key-77", "--", "sh",
                  "-c", "echo started; sleep 2"}),
      e.opts()};
  ASSERT_TRUE(run.wait_for_output("started", 20000ms)) << run.output();
  auto cmd = cmdline_of(run.pid());
  EXPECT_NE(cmd.find("--checkpoint-key"), std::string::npos) << cmd;
  EXPECT_EQ(cmd.find("hmac-flag-key-77"), std::string::npos) << cmd;
  auto r = run.wait(30000ms);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // The manifests it wrote are signed with the key it was given.
  auto m = slurp(e.root() / "store/tasks/ck/checkpoints/1.json");
  EXPECT_NE(m.find("HMAC-SHA256"), std::string::npos) << m;
  EXPECT_EQ(m.find("hmac-flag-key-77"), std::string::npos);
}
