// local_node as an object (issue 8): it runs an attempt to its end, and
// drain() cancels the running attempt and waits for it, as a stop signal
// does for `makima run`.
#include "actors/local_node.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <future>
#include <thread>

#include "tests/actors/actor_fixture.hpp"

using namespace makima;
using makima::test::actor_test;

namespace {

class local_node_test : public actor_test {
protected:
  local_settings settings() {
    local_settings s;
    s.workspace.repos_dir = dir.path() / "repos";
    s.workspace.worktrees_dir = dir.path() / "worktrees";
    s.workspace.state_dir = dir.path() / "state";
    s.workspace.max_tasks = 1;
    s.workspace.base_env = {"PATH=/usr/bin:/bin"};
    s.out_fd = devnull;
    s.err_fd = devnull;
    return s;
  }
  task_record stored(const std::string& id, std::vector<std::string> argv) {
    auto rec = make_record(id, std::move(argv));
    rec.attempt = 1;
    rec.state = task_state::preparing;
    create(rec);
    return rec;
  }
  void TearDown() override {
    ::close(devnull);
    actor_test::TearDown();
  }
  int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
};

} // namespace

TEST_F(local_node_test, runs_an_attempt_to_its_end) {
  auto node = local_node::start(*sys, settings(), persist);
  ASSERT_TRUE(node) << describe(node.error());
  EXPECT_TRUE((*node)->ready());
  auto done = (*node)->run(stored("ok", {"sh", "-c", "exit 3"}));
  EXPECT_EQ(done.state, task_state::failed);
  EXPECT_EQ(done.exit_code, 3);
  // Nothing runs: drain has nothing to wait for.
  EXPECT_TRUE((*node)->drain(std::chrono::milliseconds(10)));
  (*node)->stop();
  EXPECT_FALSE((*node)->ready());
}

TEST_F(local_node_test, drain_cancels_the_running_attempt_and_waits_for_it) {
  auto node = local_node::start(*sys, settings(), persist);
  ASSERT_TRUE(node) << describe(node.error());
  auto rec = stored("sleeper", {"sleep", "30"});
  auto result = std::async(std::launch::async,
                           [&] { return (*node)->run(std::move(rec)); });
  bool running = false;
  for (int i = 0; i < 500 && !running; ++i) {
    running = get("sleeper").state == task_state::running;
    if (!running)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(running);
  EXPECT_TRUE((*node)->drain(std::chrono::seconds(20)));
  ASSERT_EQ(result.wait_for(std::chrono::seconds(5)),
            std::future_status::ready);
  auto done = result.get();
  EXPECT_EQ(done.state, task_state::cancelled);
  EXPECT_EQ(get("sleeper").state, task_state::cancelled);
  (*node)->stop();
}
