// The DAEMON actor: admission up to max_tasks with a queue, cancellation of
// running and queued tasks.
#include "actors/daemon.hpp"

#include <thread>

#include "tests/actors/actor_fixture.hpp"

using namespace makima;
using makima::test::actor_test;

namespace {

class daemon_actor_test : public actor_test {
protected:
  daemon_actor start(int max_tasks) {
    daemon_context ctx{persist,
                       link,
                       reactor,
                       dir.path() / "repos",
                       dir.path() / "worktrees",
                       dir.path() / "state",
                       "makima",
                       "makima@localhost",
                       max_tasks,
                       {"PATH=/usr/bin:/bin"}};
    node = spawn_daemon(*sys, std::move(ctx));
    return node;
  }
  void release_handles() override {
    caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
    node = daemon_actor{};
  }
  std::shared_ptr<process::reactor> reactor =
      std::make_shared<process::reactor>();
  daemon_actor node;
};

} // namespace

TEST_F(daemon_actor_test, runs_at_most_max_tasks_at_once) {
  auto node = start(1);
  for (auto id : {"a", "b", "c"}) {
    auto rec = make_record(id, {"sh", "-c", "sleep 0.2"});
    create(rec);
    caf::anon_send(node, assign_atom::value, rec);
  }
  ASSERT_TRUE(log->wait_results(3, std::chrono::seconds(30)));
  std::vector<task_record> done;
  {
    std::lock_guard<std::mutex> guard{log->mtx};
    done = log->results;
  }
  std::sort(done.begin(), done.end(),
            [](auto& x, auto& y) { return x.started_at < y.started_at; });
  for (auto& r : done)
    EXPECT_EQ(r.state, task_state::succeeded) << r.spec.id;
  // With one slot, each task starts only after the previous one finished.
  EXPECT_GE(done[1].started_at, done[0].finished_at);
  EXPECT_GE(done[2].started_at, done[1].finished_at);
}

TEST_F(daemon_actor_test, cancels_running_and_queued_tasks) {
  auto node = start(1);
  auto running = make_record("running", {"sh", "-c", "echo up; sleep 60"});
  auto queued = make_record("queued", {"sh", "-c", "echo never"});
  create(running);
  create(queued);
  caf::anon_send(node, assign_atom::value, running);
  caf::anon_send(node, assign_atom::value, queued);
  // Wait until the first task printed, then cancel both.
  for (int i = 0; i < 500; ++i) {
    {
      std::lock_guard<std::mutex> guard{log->mtx};
      if (!log->out.empty())
        break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  caf::anon_send(node, cancel_atom::value, std::string{"queued"});
  caf::anon_send(node, cancel_atom::value, std::string{"running"});
  ASSERT_TRUE(log->wait_results(2, std::chrono::seconds(30)));
  std::lock_guard<std::mutex> guard{log->mtx};
  for (auto& r : log->results)
    EXPECT_EQ(r.state, task_state::cancelled) << r.spec.id;
  EXPECT_EQ(log->out, "up\n") << "the queued task must never have run";
  EXPECT_TRUE(log->violations.empty());
}
