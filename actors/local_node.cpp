// See local_node.hpp.
#include "actors/local_node.hpp"

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <future>
#include <mutex>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "actors/daemon.hpp"
#include "actors/local_link.hpp"
#include "runtime/log.hpp"
#include "runtime/process/reactor.hpp"
#include "runtime/process/signals.hpp"

namespace makima {

/// The attempt `run` waits for: its id and the promise the LINK fulfils.
struct local_node::run_state {
  std::mutex mtx;
  std::string id;
  std::shared_ptr<std::promise<task_record>> result;
  /// The result `run` waits for (drain waits for it too).
  std::shared_future<task_record> done;
  std::atomic<int> cancels{0};
};

caf::expected<std::unique_ptr<local_node>>
local_node::start(caf::actor_system& sys, local_settings s,
                  persistence_actor persist) {
  std::unique_ptr<local_node> node{new local_node};
  node->sys_ = &sys;
  node->persist_ = persist;
  node->run_ = std::make_shared<run_state>();
  auto run = node->run_;
  node->link_ = spawn_local_link(
      sys, s.out_fd, s.err_fd,
      [](const task_record& r) {
        log::debug("task " + r.spec.id,
                   std::string{"state "} + to_string(r.state));
      },
      [run](const task_record& r) {
        std::lock_guard<std::mutex> guard{run->mtx};
        if (run->result && r.spec.id == run->id) {
          run->result->set_value(r);
          run->result.reset();
        }
      },
      s.progress);
  node->reactor_ = std::make_shared<process::reactor>();
  daemon_context ctx{persist, node->link_, node->reactor_,
                     std::move(s.workspace), s.checkpointer};
  node->daemon_ = spawn_daemon(sys, std::move(ctx));
  return node;
}

task_record local_node::run(task_record rec) {
  auto result = std::make_shared<std::promise<task_record>>();
  auto done = result->get_future().share();
  {
    std::lock_guard<std::mutex> guard{run_->mtx};
    run_->id = rec.spec.id;
    run_->result = result;
    run_->done = done;
    run_->cancels = 0;
  }
  auto id = rec.spec.id;
  process::signal_watcher watcher([this, id](int sig) {
    if (run_->cancels == 0)
      std::fprintf(stderr,
                   "makima: %s: cancelling task %s (again to kill it now)\n",
                   strsignal(sig), id.c_str());
    cancel();
  });
  caf::anon_send(daemon_, assign_atom::value, std::move(rec));
  return done.get();
}

void local_node::cancel() {
  std::string id;
  {
    std::lock_guard<std::mutex> guard{run_->mtx};
    id = run_->id;
  }
  if (id.empty())
    return;
  // A second cancel of a task in its grace kills it (TASK's rule).
  ++run_->cancels;
  caf::anon_send(daemon_, cancel_atom::value, id);
}

bool local_node::drain(std::chrono::milliseconds bound) {
  std::shared_future<task_record> done;
  {
    std::lock_guard<std::mutex> guard{run_->mtx};
    done = run_->done;
  }
  if (!done.valid()
      || done.wait_for(std::chrono::seconds(0)) == std::future_status::ready)
    return true;
  cancel();
  return done.wait_for(bound) == std::future_status::ready;
}

void local_node::stop() {
  if (stopped_)
    return;
  stopped_ = true;
  caf::anon_send_exit(daemon_, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(link_, caf::exit_reason::user_shutdown);
}

local_node::~local_node() {
  stop();
}

} // namespace makima
