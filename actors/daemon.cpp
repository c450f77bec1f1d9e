// The DAEMON actor: admits assignments up to max_tasks, queues the rest,
// and gives every TASK actor the REPO actor of its repository.
#include "actors/daemon.hpp"

#include <algorithm>
#include <optional>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/repo.hpp"
#include "actors/task.hpp"
#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"

namespace makima {

namespace {

using daemon_ptr = daemon_actor::stateful_pointer<daemon_state>;

repo_actor repo_for(daemon_ptr self, const std::string& url) {
  auto& st = self->state;
  if (auto i = st.repos.find(url); i != st.repos.end())
    return i->second;
  auto handle =
      spawn_repo(self->system(), url, st.ctx.workspace.repos_dir,
                 st.ctx.workspace.author_name, st.ctx.workspace.author_email);
  self->link_to(handle);
  st.repos.emplace(url, handle);
  return handle;
}

void start(daemon_ptr self, task_record rec) {
  auto& st = self->state;
  task_context ctx{st.ctx.persistence,
                   st.ctx.link,
                   rec.spec.repo.empty() ? repo_actor{}
                                         : repo_for(self, rec.spec.repo),
                   st.ctx.reactor,
                   st.ctx.workspace.worktrees_dir,
                   st.ctx.workspace.state_dir,
                   st.ctx.workspace.base_env,
                   st.ctx.workspace.remove_worktree_on_push,
                   st.ctx.checkpointer,
                   std::chrono::milliseconds{static_cast<int64_t>(
                       st.ctx.workspace.checkpoint_interval * 1000)}};
  auto id = rec.spec.id;
  auto handle =
      self->spawn<caf::monitored>(task, std::move(rec), std::move(ctx));
  st.ids.emplace(handle.address(), id);
  st.running.emplace(id, handle);
}

// An assignment that never started, handed back at eviction or migration:
// recorded and reported `migrating` (nothing to checkpoint; the server runs
// it elsewhere as it was). Reported even when the write failed.
// Keeps the context's count of attempts (running + queued) current.
void count_active(daemon_state& st) {
  if (st.ctx.active)
    st.ctx.active->store(
        static_cast<uint32_t>(st.running.size() + st.queue.size()));
}

// Removes the queued (not started) attempt of task `id` and returns it.
std::optional<task_record> take_queued(daemon_state& st,
                                       const std::string& id) {
  auto i = std::find_if(st.queue.begin(), st.queue.end(),
                        [&](const task_record& r) { return r.spec.id == id; });
  if (i == st.queue.end())
    return std::nullopt;
  auto rec = std::move(*i);
  st.queue.erase(i);
  count_active(st);
  return rec;
}

void hand_back(daemon_ptr self, task_record rec) {
  auto& st = self->state;
  rec.state = task_state::migrating;
  rec.updated_at = rec.finished_at = now_ms();
  self->request(st.ctx.persistence, caf::infinite, put_atom::value, rec)
      .then(
          [self, rec](ok_atom) {
            self->send(self->state.ctx.link, result_atom::value, rec);
          },
          [self, rec](caf::error&) {
            self->send(self->state.ctx.link, result_atom::value, rec);
          });
}

void admit(daemon_ptr self) {
  auto& st = self->state;
  while (!st.evicting && !st.queue.empty()
         && st.running.size()
                < static_cast<size_t>(st.ctx.workspace.max_tasks)) {
    auto rec = std::move(st.queue.front());
    st.queue.pop_front();
    start(self, std::move(rec));
  }
  count_active(st);
}

} // namespace

daemon_actor::behavior_type
daemon(daemon_actor::stateful_pointer<daemon_state> self, daemon_context ctx) {
  self->state.ctx = std::move(ctx);
  self->set_down_handler([self](const caf::down_msg& msg) {
    auto& st = self->state;
    auto i = st.ids.find(msg.source);
    if (i == st.ids.end())
      return;
    if (msg.reason && msg.reason != caf::exit_reason::normal)
      log::error("daemon", "task actor of " + i->second + " ended abnormally: "
                               + caf::to_string(msg.reason));
    st.running.erase(i->second);
    st.ids.erase(i);
    admit(self);
  });
  // Stopping the node stops its attempts too (the actor system would
  // otherwise wait for their children).
  self->set_exit_handler([self](const caf::exit_msg& msg) {
    for (auto& [id, handle] : self->state.running)
      self->send_exit(handle, msg.reason);
    self->quit(msg.reason);
  });
  return {
      [self](cancel_atom, const std::string& id, kill_atom) {
        auto& st = self->state;
        if (auto i = st.running.find(id); i != st.running.end()) {
          self->send(i->second, cancel_atom::value, kill_atom::value);
          return;
        }
        // A queued attempt never started: dropping it is the whole kill.
        take_queued(st, id);
      },
      [self](evict_atom, const std::string& id) {
        auto& st = self->state;
        if (auto i = st.running.find(id); i != st.running.end()) {
          self->send(i->second, evict_atom::value);
          return;
        }
        if (auto rec = take_queued(st, id))
          hand_back(self, std::move(*rec));
      },
      [self](checkpoint_atom, const std::string& id) {
        auto& st = self->state;
        if (auto i = st.running.find(id); i != st.running.end()) {
          self->send(i->second, checkpoint_atom::value, now_atom::value);
          return;
        }
        for (auto& rec : st.queue)
          if (rec.spec.id == id)
            self->send(st.ctx.link, checkpoint_atom::value, id, rec.attempt,
                       std::string{"the attempt has not started yet (this "
                                   "daemon is at its --max-tasks)"});
      },
      [self](evict_atom, uint32_t grace_ms, int32_t sig) {
        auto& st = self->state;
        if (st.evicting)
          return;
        st.evicting = true;
        log::warn("daemon", "evicted: " + std::to_string(st.running.size())
                                + " running and "
                                + std::to_string(st.queue.size())
                                + " queued attempt(s) end migrating");
        for (auto& [id, handle] : st.running)
          self->send(handle, evict_atom::value, grace_ms, sig);
        // Never started: nothing to checkpoint, the server runs them
        // elsewhere as they were.
        auto queued = std::move(st.queue);
        st.queue.clear();
        count_active(st);
        for (auto& rec : queued)
          hand_back(self, std::move(rec));
      },
      [self](assign_atom, task_record& rec) {
        auto& st = self->state;
        if (st.running.count(rec.spec.id) > 0) {
          log::warn("daemon",
                    "ignoring duplicate assignment of task " + rec.spec.id);
          return;
        }
        st.queue.push_back(std::move(rec));
        admit(self);
      },
      [self](cancel_atom, const std::string& id) {
        auto& st = self->state;
        if (auto i = st.running.find(id); i != st.running.end()) {
          self->send(i->second, cancel_atom::value);
          return;
        }
        if (auto queued = take_queued(st, id)) {
          auto rec = std::move(*queued);
          rec.state = task_state::cancelled;
          rec.updated_at = rec.finished_at = now_ms();
          self->request(st.ctx.persistence, caf::infinite, put_atom::value, rec)
              .then(
                  [self, rec](ok_atom) {
                    self->send(self->state.ctx.link, result_atom::value, rec);
                  },
                  [self, rec](caf::error& err) mutable {
                    rec.error_code = to_string(code_of(err));
                    rec.error = "the cancellation could not be recorded: "
                                + describe(err);
                    self->send(self->state.ctx.link, result_atom::value, rec);
                  });
        }
      },
  };
}

daemon_actor spawn_daemon(caf::actor_system& sys, daemon_context ctx) {
  return sys.spawn(daemon, std::move(ctx));
}

} // namespace makima
