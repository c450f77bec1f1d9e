// The environment a task starts with (runtime/process/environment): the
// pass-through list, extra names, makima's secrets withheld even when
// named, the task's env and makima's task variables on top; and the config
// key task.pass_env rejecting secrets.
#include "runtime/process/environment.hpp"

#include <gtest/gtest.h>

#include <algorithm>

#include "config/config.hpp"
#include "runtime/error.hpp"

using namespace makima;
using namespace makima::process;

namespace {

bool has(const std::vector<std::string>& env, const std::string& kv) {
  return std::find(env.begin(), env.end(), kv) != env.end();
}

bool has_key(const std::vector<std::string>& env, const std::string& key) {
  return std::any_of(env.begin(), env.end(), [&](const std::string& kv) {
    return kv.rfind(key + "=", 0) == 0;
  });
}

const std::map<std::string, std::string> parent = {
    {"PATH", "/opt/bin:/usr/bin"},
    {"HOME", "/home/u"},
    {"LANG", "de_DE.UTF-8"},
    {"LC_ALL", "C"},
    {"LC_TIME", "en_GB"},
    {"TZ", "UTC"},
    {"https_proxy", "http://proxy:3128"},
    {"NO_PROXY", "localhost"},
    {"SSH_AUTH_SOCK", "/tmp/agent"},
    {"FOO", "bar"},
    {"MAKIMA_API_KEY", "secret-1"},
    {"MAKIMA_SERVER_USER_KEYS", "secret-2"},
    {"MAKIMA_SERVER_DAEMON_KEYS", "secret-3"},
    {"MAKIMA_S3_SECRET_ACCESS_KEY", "secret-4"},
    {"MAKIMA_DATA_DIR", "/var/lib/makima"},
    {"AWS_ACCESS_KEY_ID", "secret-5"},
    {"AWS_SECRET_ACCESS_KEY", "secret-6"},
    {"AWS_SESSION_TOKEN", "secret-7"},
    {"LD_PRELOAD", "/evil.so"},
};

} // namespace

TEST(environment, base_keeps_the_list_and_drops_everything_else) {
  auto env = base_environment(parent, {});
  for (auto kv :
       {"PATH=/opt/bin:/usr/bin", "HOME=/home/u", "LANG=de_DE.UTF-8",
        "LC_ALL=C", "LC_TIME=en_GB", "TZ=UTC", "https_proxy=http://proxy:3128",
        "NO_PROXY=localhost", "SSH_AUTH_SOCK=/tmp/agent"})
    EXPECT_TRUE(has(env, kv)) << kv;
  for (auto key :
       {"FOO", "LD_PRELOAD", "MAKIMA_API_KEY", "MAKIMA_SERVER_USER_KEYS",
        "MAKIMA_DATA_DIR", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"})
    EXPECT_FALSE(has_key(env, key)) << key;
  EXPECT_TRUE(std::is_sorted(env.begin(), env.end()));
}

TEST(environment, extra_names_pass_but_secrets_never) {
  auto env = base_environment(
      parent, {"FOO", "MAKIMA_API_KEY", "MAKIMA_SERVER_USER_KEYS",
               "MAKIMA_SERVER_DAEMON_KEYS", "MAKIMA_S3_SECRET_ACCESS_KEY",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "NOT_SET"});
  EXPECT_TRUE(has(env, "FOO=bar"));
  EXPECT_FALSE(has_key(env, "NOT_SET"));
  for (auto& kv : env)
    EXPECT_EQ(kv.find("secret-"), std::string::npos) << kv;
}

TEST(environment, path_has_a_default) {
  auto env = base_environment({{"HOME", "/h"}}, {});
  EXPECT_TRUE(has(env, std::string{"PATH="} + default_path));
  EXPECT_TRUE(has(env, "HOME=/h"));
  EXPECT_EQ(env.size(), 2u);
}

TEST(environment, withheld_and_valid_names) {
  for (auto n :
       {"MAKIMA_API_KEY", "MAKIMA_SERVER_USER_KEYS",
        "MAKIMA_SERVER_DAEMON_KEYS", "MAKIMA_S3_KEY", "MAKIMA_STORE_SECRET",
        "MAKIMA_PASS_ENV", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"})
    EXPECT_TRUE(is_withheld(n)) << n;
  for (auto n : {"PATH", "FOO", "AWS_REGION", "makima_api_key", "MAKIMA"})
    EXPECT_FALSE(is_withheld(n)) << n;
  for (auto n : {"FOO", "_x", "A1", "http_proxy"})
    EXPECT_TRUE(valid_env_name(n)) << n;
  for (auto n : {"", "1A", "A=B", "A B", "A-B", "LC_*"})
    EXPECT_FALSE(valid_env_name(n)) << n;
}

TEST(environment, child_env_task_values_then_makima_variables) {
  auto env =
      child_environment({"PATH=/bin", "HOME=/h", "LANG=C"},
                        {"HOME=/task-home", "X=1=2", "MAKIMA_TASK_ID=spoofed",
                         "bad", "=v", "MAKIMA_API_KEY=users-own"},
                        {{"MAKIMA_TASK_ID", "t1"}, {"MAKIMA_ATTEMPT", "2"}});
  EXPECT_TRUE(has(env, "PATH=/bin"));
  EXPECT_TRUE(has(env, "HOME=/task-home"));
  EXPECT_TRUE(has(env, "X=1=2"));
  EXPECT_TRUE(has(env, "MAKIMA_TASK_ID=t1"));
  EXPECT_FALSE(has(env, "MAKIMA_TASK_ID=spoofed"));
  EXPECT_TRUE(has(env, "MAKIMA_ATTEMPT=2"));
  EXPECT_TRUE(has(env, "MAKIMA_API_KEY=users-own"));
  EXPECT_FALSE(has_key(env, "bad"));
  EXPECT_EQ(env.size(), 7u);
}

TEST(environment, config_pass_env_rejects_secrets_and_bad_names) {
  env_map e{{"HOME", "/h"}, {"MAKIMA_PASS_ENV", "FOO,BAR"}};
  auto cfg = load_config(std::filesystem::path{"/dev/null"}, e);
  ASSERT_TRUE(cfg) << describe(cfg.error());
  EXPECT_EQ(cfg->pass_env, (std::vector<std::string>{"FOO", "BAR"}));
  for (auto bad : {"FOO,MAKIMA_API_KEY", "AWS_SECRET_ACCESS_KEY",
                   "MAKIMA_SERVER_USER_KEYS", "A=B", "1X"}) {
    env_map e2{{"HOME", "/h"}, {"MAKIMA_PASS_ENV", bad}};
    auto c = load_config(std::filesystem::path{"/dev/null"}, e2);
    ASSERT_FALSE(c) << bad;
    EXPECT_EQ(code_of(c.error()), ec::invalid_config) << bad;
    EXPECT_NE(describe(c.error()).find("task.pass_env"), std::string::npos)
        << describe(c.error());
  }
}
