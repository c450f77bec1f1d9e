// Configuration: precedence (env > file > default), legacy env names, the
// example file, and a clear error naming the key for every bad value.
#include "config/config.hpp"

#include <gtest/gtest.h>

#include "runtime/error.hpp"
#include "tests/fixtures/temp_dir.hpp"

using namespace makima;
using makima::test::temp_dir;
using makima::test::write_file;

namespace {

config must_load(const std::optional<std::filesystem::path>& file,
                 const env_map& env) {
  auto cfg = load_config(file, env);
  if (!cfg)
    ADD_FAILURE() << describe(cfg.error());
  return cfg ? *cfg : config{};
}

} // namespace

TEST(config, defaults_without_file_or_env) {
  env_map env{{"HOME", "/home/u"}};
  auto cfg = must_load(std::nullopt, env);
  finalize(cfg, env);
  EXPECT_EQ(cfg.data_dir, "/home/u/.local/share/makima");
  EXPECT_EQ(cfg.db_dir, "/home/u/.local/share/makima/db");
  EXPECT_EQ(cfg.repos_dir, "/home/u/.local/share/makima/repos");
  EXPECT_EQ(cfg.worktrees_dir, "/home/u/.local/share/makima/worktrees");
  EXPECT_EQ(cfg.state_dir, "/home/u/.local/share/makima/state");
  EXPECT_EQ(cfg.grace, 10);
  EXPECT_EQ(cfg.timeout, 0);
  EXPECT_EQ(cfg.max_tasks, 4);
  EXPECT_FALSE(cfg.sync);
}

TEST(config, xdg_data_home_and_makima_data_dir) {
  env_map env{{"HOME", "/home/u"}, {"XDG_DATA_HOME", "/xdg"}};
  EXPECT_EQ(default_data_dir(env), "/xdg/makima");
  env["MAKIMA_DATA_DIR"] = "/data";
  EXPECT_EQ(default_data_dir(env), "/data");
}

TEST(config, file_then_env_precedence) {
  temp_dir dir;
  auto file = dir / "m.toml";
  write_file(file, "[task]\ngrace = 3\ntimeout = 60\n[daemon]\nmax_tasks = 8\n"
                   "[paths]\ndata_dir = \"/from-file\"\n");
  env_map env{{"HOME", "/h"}, {"MAKIMA_TASK_GRACE", "7"}};
  auto cfg = must_load(file, env);
  EXPECT_EQ(cfg.grace, 7);    // env beats file
  EXPECT_EQ(cfg.timeout, 60); // file beats default
  EXPECT_EQ(cfg.max_tasks, 8);
  finalize(cfg, env);
  EXPECT_EQ(cfg.data_dir, "/from-file");
  EXPECT_EQ(cfg.db_dir, "/from-file/db");
  ASSERT_TRUE(cfg.source_file.has_value());
}

TEST(config, legacy_deployment_env_names) {
  env_map env{{"HOME", "/h"},
              {"MAKIMA_DAEMON_WORKTREE_BASEDIR", "/wt"},
              {"MAKIMA_DAEMON_WORKTREE_REPOSDIR", "/repos"},
              {"MAKIMA_DAEMON_LOCALDB_PATH", "/db"},
              {"MAKIMA_DAEMON_PROCESS_MAXCONCURRENTTASKS", "3"},
              {"MAKIMA_DAEMON_SERVER_HEARTBEATINTERVALSECS", "15"},
              {"MAKIMA_DAEMON_SERVER_RECONNECTINTERVALSECS", "2"},
              {"MAKIMA_DAEMON_SERVER_URL", "wss://s.example/ws/daemon"},
              {"MAKIMA_API_KEY", "secret"}};
  auto cfg = must_load(std::nullopt, env);
  finalize(cfg, env);
  EXPECT_EQ(cfg.worktrees_dir, "/wt");
  EXPECT_EQ(cfg.repos_dir, "/repos");
  EXPECT_EQ(cfg.db_dir, "/db");
  EXPECT_EQ(cfg.max_tasks, 3);
  EXPECT_EQ(cfg.heartbeat, 15);
  EXPECT_EQ(cfg.reconnect, 2);
  EXPECT_EQ(cfg.server_url, "wss://s.example/ws/daemon");
  EXPECT_EQ(cfg.api_key, "secret");
}

TEST(config, primary_env_name_wins_over_legacy) {
  env_map env{{"HOME", "/h"},
              {"MAKIMA_MAX_TASKS", "5"},
              {"MAKIMA_DAEMON_PROCESS_MAXCONCURRENTTASKS", "3"}};
  EXPECT_EQ(must_load(std::nullopt, env).max_tasks, 5);
}

TEST(config, bad_values_name_the_key_and_origin) {
  struct bad_case {
    std::string var, value, key;
  };
  for (auto& c : std::vector<bad_case>{
           {"MAKIMA_TASK_GRACE", "soon", "task.grace"},
           {"MAKIMA_TASK_TIMEOUT", "-1", "task.timeout"},
           {"MAKIMA_DAEMON_PROCESS_MAXCONCURRENTTASKS", "0",
            "daemon.max_tasks"},
           {"MAKIMA_STORE_SYNC", "maybe", "store.sync"},
           {"MAKIMA_LOG_LEVEL", "loud", "log.level"},
           {"MAKIMA_LOG_FORMAT", "xml", "log.format"},
           {"MAKIMA_DAEMON_SERVER_URL", "ftp://x", "server.url"},
           {"MAKIMA_HEARTBEAT", "0", "server.heartbeat"},
           // A daemon refuses a welcome below 256 KiB (protocol §13).
           {"MAKIMA_MAX_FRAME_BYTES", "262143", "net.max_frame_bytes"},
           {"MAKIMA_MAX_FRAME_BYTES", "4096", "net.max_frame_bytes"},
           {"MAKIMA_MAX_FRAME_BYTES", "99999999999999999999999",
            "net.max_frame_bytes"},
           {"MAKIMA_MAX_BODY_BYTES", "1023", "net.max_body_bytes"},
           {"MAKIMA_RECONNECT", "31", "server.reconnect"},
           {"MAKIMA_RECONNECT", "0", "server.reconnect"}}) {
    env_map env{{"HOME", "/h"}, {c.var, c.value}};
    auto cfg = load_config(std::nullopt, env);
    ASSERT_FALSE(cfg) << c.var;
    EXPECT_EQ(code_of(cfg.error()), ec::invalid_config);
    auto msg = describe(cfg.error());
    EXPECT_NE(msg.find(c.key), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.var), std::string::npos) << msg;
  }
}

TEST(config, bad_file_values_unknown_keys_and_syntax) {
  temp_dir dir;
  env_map env{{"HOME", "/h"}};
  auto f1 = dir / "a.toml";
  write_file(f1, "[task]\ngrace = \"never\"\n");
  auto r1 = load_config(f1, env);
  ASSERT_FALSE(r1);
  EXPECT_NE(describe(r1.error()).find("task.grace"), std::string::npos);
  auto f2 = dir / "b.toml";
  write_file(f2, "[task]\ngrase = 3\n");
  auto r2 = load_config(f2, env);
  ASSERT_FALSE(r2);
  EXPECT_NE(describe(r2.error()).find("unknown config key 'task.grase'"),
            std::string::npos);
  auto f3 = dir / "c.toml";
  write_file(f3, "[task\ngrace = 3\n");
  auto r3 = load_config(f3, env);
  ASSERT_FALSE(r3);
  EXPECT_NE(describe(r3.error()).find("line 1"), std::string::npos)
      << describe(r3.error());
  auto r4 = load_config(dir / "missing.toml", env);
  ASSERT_FALSE(r4);
  EXPECT_EQ(code_of(r4.error()), ec::invalid_config);
  EXPECT_NE(describe(r4.error()).find("missing.toml"), std::string::npos);
}

TEST(config, default_file_location_is_read) {
  temp_dir dir;
  write_file(dir / "xdg/makima/makima.toml", "[task]\ngrace = 4\n");
  env_map env{{"HOME", "/h"}, {"XDG_CONFIG_HOME", (dir / "xdg").string()}};
  EXPECT_EQ(must_load(std::nullopt, env).grace, 4);
  env["MAKIMA_CONFIG"] = (dir / "nope.toml").string();
  EXPECT_FALSE(load_config(std::nullopt, env));
}

TEST(config, example_file_documents_every_key_and_loads) {
  auto example =
      std::filesystem::path{MAKIMA_SOURCE_DIR} / "config/makima.example.toml";
  auto text = makima::test::read_file(example);
  for (auto& k : config_keys()) {
    auto name = k.key.substr(k.key.find('.') + 1);
    EXPECT_NE(text.find(name), std::string::npos) << k.key;
    for (auto& e : k.env)
      EXPECT_NE(text.find(e), std::string::npos) << e;
  }
  env_map env{{"HOME", "/h"}};
  auto cfg = must_load(example, env);
  config defaults;
  EXPECT_EQ(cfg.grace, defaults.grace);
  EXPECT_EQ(cfg.max_tasks, defaults.max_tasks);
  EXPECT_EQ(cfg.log_level, defaults.log_level);
}
