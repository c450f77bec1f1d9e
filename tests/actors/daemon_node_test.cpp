// daemon_node as an object (issue 8): it starts without a reachable server,
// serves /healthz and /readyz truthfully, and reports failures to start as
// errors instead of exiting the process.
#include "actors/daemon_node.hpp"

#include <gtest/gtest.h>

#include <caf/actor_system.hpp>

#include "actors/messages.hpp"
#include "runtime/error.hpp"
#include "runtime/net/net.hpp"
#include "runtime/store/db.hpp"
#include "tests/fixtures/actor_system.hpp"
#include "tests/fixtures/temp_dir.hpp"

using namespace makima;
using namespace std::chrono_literals;

namespace {


// Settings of a node whose server never answers (a closed loopback port).
daemon_settings unreachable(const test::temp_dir& tmp) {
  daemon_settings s;
  s.connection.url = "ws://127.0.0.1:1/ws/daemon";
  s.connection.name = "n1";
  s.connection.data_dir = tmp.path();
  s.connection.repos_dir = tmp.path() / "repos";
  s.workspace.repos_dir = tmp.path() / "repos";
  s.workspace.worktrees_dir = tmp.path() / "worktrees";
  s.workspace.state_dir = tmp.path() / "state";
  s.workspace.max_tasks = 1;
  s.db_dir = tmp.path() / "db";
  return s;
}

unsigned get_status(uint16_t port, const std::string& path) {
  net::http_client_options o;
  o.timeout = 5000ms;
  auto r = net::http_request(
      "GET", "http://127.0.0.1:" + std::to_string(port) + path, "", o);
  return r ? r->status : 0;
}

} // namespace

TEST(daemon_node, serves_health_and_is_not_ready_without_a_server) {
  test::temp_dir tmp;
  test::actor_config cfg;
  caf::actor_system sys{cfg};
  auto io = std::make_shared<net::io_thread>();
  auto s = unreachable(tmp);
  s.health_host = "127.0.0.1";
  auto node = daemon_node::start_with_store(sys, s, io);
  ASSERT_TRUE(node) << describe(node.error());
  auto port = (*node)->health_port();
  ASSERT_NE(port, 0);
  EXPECT_EQ(get_status(port, "/healthz"), 200u);
  EXPECT_EQ(get_status(port, "/readyz"), 503u);
  EXPECT_EQ(get_status(port, "/other"), 404u);
  EXPECT_FALSE((*node)->ready());
  // A second node on the same health port: an error, not an exit.
  test::temp_dir tmp2;
  auto s2 = unreachable(tmp2);
  s2.health_host = "127.0.0.1";
  s2.health_port = port;
  auto clash = daemon_node::start_with_store(sys, s2, io);
  ASSERT_FALSE(clash);
  EXPECT_NE(describe(clash.error()).find("/healthz"), std::string::npos)
      << describe(clash.error());
  // No server: drain cannot complete; it stops the node after its bound.
  EXPECT_FALSE((*node)->drain(200ms));
  node->reset();
  io->stop();
}

TEST(daemon_node, a_locked_data_dir_is_an_error_not_an_exit) {
  test::temp_dir tmp;
  auto s = unreachable(tmp);
  store::db_options opts;
  auto holder = store::db::open(s.db_dir, opts);
  ASSERT_TRUE(holder) << describe(holder.error());
  test::actor_config cfg;
  caf::actor_system sys{cfg};
  auto io = std::make_shared<net::io_thread>();
  auto node = daemon_node::start_with_store(sys, s, io);
  ASSERT_FALSE(node);
  EXPECT_EQ(code_of(node.error()), ec::store_locked) << describe(node.error());
  io->stop();
}
