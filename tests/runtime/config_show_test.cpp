// What `makima config show` reads from config/: the origin of every key
// (file, environment, flag) and the value of every key as text.
#include "config/config.hpp"

#include <gtest/gtest.h>

#include <map>

#include "runtime/error.hpp"
#include "tests/fixtures/temp_dir.hpp"

using namespace makima;
using makima::test::temp_dir;
using makima::test::write_file;

TEST(config_show, origins_name_the_file_the_variable_and_the_flag) {
  temp_dir dir;
  auto file = dir / "m.toml";
  write_file(file, "[task]\ntimeout = 60\ngrace = 3\n");
  env_map env{
      {"HOME", "/h"}, {"MAKIMA_TASK_GRACE", "7"}, {"MAKIMA_API_KEY", "k"}};
  auto cfg = load_config(file, env);
  ASSERT_TRUE(cfg) << describe(cfg.error());
  EXPECT_EQ(cfg->origins["task.timeout"], "config file " + file.string());
  // The environment beats the file, and so does its origin.
  EXPECT_EQ(cfg->origins["task.grace"],
            "environment variable MAKIMA_TASK_GRACE");
  EXPECT_EQ(cfg->origins["server.api_key"],
            "environment variable MAKIMA_API_KEY");
  EXPECT_EQ(cfg->origins.count("daemon.max_tasks"), 0u);
  ASSERT_FALSE(set_config_value(*cfg, "daemon.max_tasks", "9", "--max-tasks"));
  EXPECT_EQ(cfg->origins["daemon.max_tasks"], "--max-tasks");
  // A refused value leaves the origin as it was.
  EXPECT_TRUE(set_config_value(*cfg, "task.grace", "x", "--grace"));
  EXPECT_EQ(cfg->origins["task.grace"],
            "environment variable MAKIMA_TASK_GRACE");
}

TEST(config_show, every_key_has_its_value_as_text) {
  // One valid value per key: a key added to config.cpp without a value in
  // config_values() fails here.
  const std::map<std::string, std::string> sample{
      {"paths.data_dir", "/d"},
      {"paths.db_dir", "/d/b"},
      {"paths.repos_dir", "/d/r"},
      {"paths.worktrees_dir", "/d/w"},
      {"paths.state_dir", "/d/s"},
      {"task.timeout", "30"},
      {"task.grace", "1.5"},
      {"task.pass_env", "A,B"},
      {"task.remove_worktree_on_push", "true"},
      {"git.author_name", "n"},
      {"git.author_email", "e@x"},
      {"store.sync", "true"},
      {"checkpoint.store", "s3://bucket/prefix"},
      {"checkpoint.s3_endpoint", "http://127.0.0.1:9000"},
      {"checkpoint.s3_region", "eu-west-1"},
      {"checkpoint.s3_access_key_id", "AKID"},
      {"checkpoint.s3_secret_access_key", "secret"},
      {"checkpoint.s3_session_token", "token"},
      {"checkpoint.key", "hmac-key"},
      {"checkpoint.interval", "10"},
      {"checkpoint.stop_task", "false"},
      {"checkpoint.mirror_packs_interval", "600"},
      {"log.level", "debug"},
      {"log.format", "json"},
      {"daemon.max_tasks", "8"},
      {"daemon.name", "d1"},
      {"daemon.pool", "k8s"},
      {"daemon.labels", "a=1,b=2"},
      {"daemon.health_listen", "127.0.0.1:1"},
      {"server.url", "ws://h:1/ws/daemon"},
      {"server.api_key", "key"},
      {"server.heartbeat", "2"},
      {"server.reconnect", "3"},
      {"server.ca_file", "/ca.pem"},
      {"server.listen", "127.0.0.1:2"},
      {"server.user_keys", "u1,u2"},
      {"server.daemon_keys", "d1"},
      {"server.lease", "40"},
      {"server.max_attempts", "6"},
      {"server.retry_backoff", "2"},
      {"server.retry_backoff_max", "90"},
      {"server.tls_cert", "/c.pem"},
      {"server.tls_key", "/k.pem"},
      {"server.max_streams_per_key", "10"},
      {"server.max_streams", "100"},
      {"net.max_frame_bytes", "2097152"},
      {"net.max_body_bytes", "4096"},
      {"daemon.eviction_deadline", "20"},
      {"daemon.eviction_grace", "5"},
      {"daemon.eviction_signal", "USR1"},
      {"daemon.exit_when_idle", "30"},
  };
  config cfg;
  for (auto& k : config_keys()) {
    auto it = sample.find(k.key);
    ASSERT_NE(it, sample.end()) << "no sample value for " << k.key;
    ASSERT_FALSE(set_config_value(cfg, k.key, it->second, "test"));
  }
  auto values = config_values(cfg);
  ASSERT_EQ(values.size(), config_keys().size());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(values[i].first, config_keys()[i].key);
    EXPECT_EQ(values[i].second, sample.at(values[i].first)) << values[i].first;
  }
  EXPECT_TRUE(is_secret_key("server.api_key"));
  EXPECT_TRUE(is_secret_key("server.user_keys"));
  EXPECT_TRUE(is_secret_key("server.daemon_keys"));
  EXPECT_FALSE(is_secret_key("server.tls_key")); // a path, not the key
}

TEST(config_show, every_key_names_its_variables_once) {
  // `config show --json` lists these per key, and the Kubernetes manifests
  // are checked against them (k8s/test): a key without a variable could
  // not be set there, and a variable of two keys would set both.
  std::map<std::string, std::string> owner;
  for (auto& k : config_keys()) {
    ASSERT_FALSE(k.env.empty()) << k.key;
    for (auto& e : k.env) {
      EXPECT_TRUE(e.rfind("MAKIMA_", 0) == 0 || e.rfind("AWS_", 0) == 0)
          << k.key << ": " << e;
      auto [it, fresh] = owner.emplace(e, k.key);
      EXPECT_TRUE(fresh) << e << " is a variable of " << it->second
                         << " and of " << k.key;
    }
  }
  // The names the manifests of k8s/ rely on.
  EXPECT_EQ(owner["MAKIMA_DAEMON_HEALTH_LISTEN"], "daemon.health_listen");
  EXPECT_EQ(owner["MAKIMA_EVICTION_DEADLINE"], "daemon.eviction_deadline");
  EXPECT_EQ(owner["AWS_SECRET_ACCESS_KEY"], "checkpoint.s3_secret_access_key");
}
