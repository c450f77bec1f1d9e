// A server_node whose SERVER actor is gone (issue 7, Critical 2): the node
// reports failed() — `makima server` and `makima local` exit 125 on it —
// and the HTTP API, /healthz included, answers 503 instead of looking
// healthy or hanging. A normal stop() is not a failure.
#include <chrono>
#include <thread>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/send.hpp>
#include <gtest/gtest.h>

#include "actors/messages.hpp"
#include "actors/server_node.hpp"
#include "runtime/error.hpp"
#include "runtime/net/net.hpp"
#include "tests/fixtures/actor_system.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace makima {
namespace {

using namespace std::chrono_literals;

const std::string user_key = "user-key-1";
const std::string daemon_key = "daemon-key-1";

class server_failure_test : public ::testing::Test {
protected:
  server_failure_test() : sys(cfg) {
    settings.db_dir = dir / "db";
    settings.user_keys = {user_key};
    settings.daemon_keys = {daemon_key};
    auto n = server_node::start(sys, settings);
    EXPECT_TRUE(n) << describe(n.error());
    if (n)
      node = std::move(*n);
  }
  ~server_failure_test() override {
    if (node)
      node->stop();
  }

  unsigned status(const std::string& method, const std::string& target,
                  const std::string& key = user_key) {
    net::http_client_options opts;
    if (!key.empty())
      opts.headers.push_back({"Authorization", "Bearer " + key});
    opts.timeout = 5s;
    auto res = net::http_request(method, node->url() + target, "", opts);
    if (!res) {
      ADD_FAILURE() << method << " " << target << ": " << describe(res.error());
      return 0;
    }
    return res->status;
  }

  bool wait_failed() {
    for (int i = 0; i < 250 && !node->failed(); ++i)
      std::this_thread::sleep_for(20ms);
    return node->failed();
  }

  test::temp_dir dir{"makima-server-failure"};
  test::actor_config cfg;
  caf::actor_system sys;
  server_settings settings;
  std::unique_ptr<server_node> node;
};

TEST_F(server_failure_test,
       a_dead_server_actor_fails_the_node_and_answers_503) {
  ASSERT_TRUE(node);
  EXPECT_FALSE(node->failed());
  EXPECT_EQ(status("GET", "/healthz", ""), 200u);
  caf::anon_send_exit(node->actor(), caf::exit_reason::kill);
  ASSERT_TRUE(wait_failed());
  EXPECT_EQ(status("GET", "/healthz", ""), 503u);
  EXPECT_EQ(status("GET", "/readyz", ""), 503u);
  EXPECT_EQ(status("GET", "/api/v1/tasks"), 503u);
  // The key check still comes first: no key, no hint about the state.
  EXPECT_EQ(status("GET", "/api/v1/tasks", ""), 401u);
  node->stop();
  EXPECT_TRUE(node->failed());
}

TEST_F(server_failure_test, an_unusual_exit_reason_is_a_failure_too) {
  ASSERT_TRUE(node);
  caf::anon_send_exit(node->actor(), caf::exit_reason::user_shutdown);
  ASSERT_TRUE(wait_failed());
  EXPECT_EQ(status("GET", "/healthz", ""), 503u);
}

TEST_F(server_failure_test, stop_is_not_a_failure) {
  ASSERT_TRUE(node);
  node->stop();
  EXPECT_FALSE(node->failed());
}

} // namespace
} // namespace makima
