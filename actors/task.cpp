// The TASK actor's state machine:
//
//   start → [restore resume_from (CHECKPOINTER)] → [persist preparing]
//         → prepare/reopen worktree (REPO) or scratch
//         → spawn child (reactor) → [persist running] → stream output
//         → child exits → drain output → [publishing: commit, push]
//         → [persist final state] → LINK result → quit
//
// Every fact is written to PERSISTENCE before it goes to the LINK. Output
// takes a pipeline: at most one PERSISTENCE write in flight (chunks that
// arrive meanwhile are batched into the next write), then the LINK, then
// the reactor is acknowledged and reads more from the child's pipes.
#include "actors/task.hpp"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <system_error>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"
#include "runtime/process/environment.hpp"

namespace makima {

namespace {

using task_ptr = task_actor::stateful_pointer<task_actor_state>;

/// Forwards the reactor's callbacks to the TASK actor as messages.
class task_observer : public process::observer {
public:
  explicit task_observer(task_actor handle) : handle_(std::move(handle)) {}
  void on_output(process::stream s, std::string bytes) override {
    caf::anon_send(handle_, output_atom::value, static_cast<uint8_t>(s),
                   std::move(bytes));
  }
  void on_exit(process::exit_status status) override {
    caf::anon_send(handle_, exit_atom::value, status.code, status.signal);
  }

private:
  task_actor handle_;
};

std::string component(task_ptr self) {
  return "task " + self->state.rec.spec.id + "#"
         + std::to_string(self->state.rec.attempt);
}

void set_error(task_record& rec, const caf::error& err) {
  rec.error_code = to_string(code_of(err));
  rec.error = describe(err);
}

void finish(task_ptr self, task_state final_state);

// Persists the record and then reports its state to the LINK. `next` runs
// after a successful write; a failed write ends the attempt. The LINK gets
// the record as written: by the time the write is answered the attempt may
// have finished (a child that exits at once), and a state event carrying
// the final state would make the server refuse the result after it.
// `restore`: what the restore this transition follows cost (sent along).
template <class F>
void persist_state(task_ptr self, F next,
                   std::optional<restore_report> restore = {}) {
  auto& st = self->state;
  st.rec.updated_at = now_ms();
  self->request(st.ctx.persistence, caf::infinite, put_atom::value, st.rec)
      .then(
          [self, next, rec = st.rec, restore](ok_atom) mutable {
            if (restore)
              self->send(self->state.ctx.link, state_atom::value, rec,
                         *restore);
            else
              self->send(self->state.ctx.link, state_atom::value, rec);
            next();
          },
          [self](caf::error& err) {
            log::error(component(self),
                       "cannot record state: " + describe(err));
            self->state.store_failure = err;
            finish(self, task_state::failed);
          });
}

// Sends `sig` (SIGTERM) to the child's group and arms the SIGKILL timer
// after `grace` (the task's).
void terminate_child(task_ptr self, int sig = SIGTERM,
                     std::optional<std::chrono::milliseconds> grace = {}) {
  auto& st = self->state;
  if (!st.child || st.exited)
    return;
  st.ctx.reactor->signal(*st.child, sig);
  auto gen = ++st.term_generation;
  auto wait = grace ? *grace
                    : std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::duration<double>(st.rec.spec.grace));
  self->delayed_send(self, wait, kill_atom::value, gen);
}

void kill_child(task_ptr self) {
  auto& st = self->state;
  if (st.child && !st.exited)
    st.ctx.reactor->signal(*st.child, SIGKILL);
}

void maybe_finish(task_ptr self);

void final_checkpoint(task_ptr self);

// Hands pending chunks to PERSISTENCE (one write at a time), then to the
// LINK, then acknowledges them to the reactor.
void flush_output(task_ptr self) {
  auto& st = self->state;
  if (st.writing || st.pending.empty())
    return;
  auto batch = std::move(st.pending);
  st.pending.clear();
  auto count = batch.size();
  if (st.store_failure) {
    // Nothing can be persisted any more: keep the child's pipes flowing so
    // it can be terminated, but do not report unpersisted output.
    for (size_t i = 0; i < count; ++i)
      st.ctx.reactor->ack(st.child->pid);
    return;
  }
  st.writing = true;
  // The batch moves into the request and comes back in the reply: output
  // bytes are never copied between the reactor and the LINK.
  self->request(st.ctx.persistence, caf::infinite, output_atom::value,
                st.rec.spec.id, std::move(batch))
      .then(
          [self, count](std::vector<output_chunk>& stored) {
            auto& st = self->state;
            st.writing = false;
            st.reporting += count;
            self->request(st.ctx.link, caf::infinite, output_atom::value,
                          st.rec.spec.id, st.rec.attempt, std::move(stored))
                .then(
                    [self, count](ok_atom) {
                      auto& st = self->state;
                      st.reporting -= count;
                      for (size_t i = 0; i < count; ++i)
                        st.ctx.reactor->ack(st.child->pid);
                      maybe_finish(self);
                    },
                    [self, count](caf::error& err) {
                      auto& st = self->state;
                      log::warn(component(self),
                                "link did not take output: " + describe(err));
                      st.reporting -= count;
                      for (size_t i = 0; i < count; ++i)
                        st.ctx.reactor->ack(st.child->pid);
                      maybe_finish(self);
                    });
            flush_output(self);
            maybe_finish(self);
          },
          [self, count](caf::error& err) {
            auto& st = self->state;
            st.writing = false;
            log::error(component(self),
                       "cannot persist output, stopping the task: "
                           + describe(err));
            if (!st.store_failure)
              st.store_failure = err;
            for (size_t i = 0; i < count; ++i)
              st.ctx.reactor->ack(st.child->pid);
            terminate_child(self);
            flush_output(self);
            maybe_finish(self);
          });
}

// Publishes the worktree (commit, push) when asked, then finishes.
void publish(task_ptr self, task_state outcome) {
  auto& st = self->state;
  bool want_commit = st.rec.spec.commit && st.ctx.repo;
  bool want_push = !st.rec.spec.push_url.empty() && st.ctx.repo;
  if (!want_commit && !want_push) {
    finish(self, outcome);
    return;
  }
  st.rec.state = task_state::publishing;
  persist_state(self, [self, outcome, want_commit, want_push] {
    auto& st = self->state;
    auto do_push = [self, outcome, want_push] {
      auto& st = self->state;
      if (!want_push) {
        finish(self, outcome);
        return;
      }
      self->request(st.ctx.repo, caf::infinite, push_atom::value, st.rec.branch,
                    st.rec.spec.push_url, st.git_cancel)
          .then(
              [self, outcome](ok_atom) {
                auto& st = self->state;
                st.rec.pushed = true;
                if (outcome != task_state::succeeded
                    || !st.ctx.remove_worktree_on_push) {
                  finish(self, outcome);
                  return;
                }
                // An empty branch name: REPO removes the worktree only.
                self->request(st.ctx.repo, caf::infinite, remove_atom::value,
                              st.rec.spec.id, std::string{})
                    .then([self, outcome](ok_atom) { finish(self, outcome); },
                          [self, outcome](caf::error& err) {
                            log::warn(component(self),
                                      "cannot remove the worktree after the "
                                      "push: "
                                          + describe(err));
                            finish(self, outcome);
                          });
              },
              [self](caf::error& err) {
                auto& st = self->state;
                if (code_of(err) == ec::cancelled) {
                  set_error(st.rec, err);
                  finish(self, st.timed_out ? task_state::timed_out
                                            : task_state::cancelled);
                  return;
                }
                log::error(component(self), "push failed: " + describe(err));
                set_error(self->state.rec, err);
                finish(self, task_state::failed);
              });
    };
    if (!want_commit) {
      do_push();
      return;
    }
    auto message = "makima task " + st.rec.spec.id + " (attempt "
                   + std::to_string(st.rec.attempt) + ", " + to_string(outcome)
                   + ")";
    self->request(st.ctx.repo, caf::infinite, commit_atom::value,
                  st.rec.worktree, message)
        .then(
            [self, do_push](const std::string& commit) {
              self->state.rec.commit = commit;
              do_push();
            },
            [self](caf::error& err) {
              log::error(component(self), "commit failed: " + describe(err));
              set_error(self->state.rec, err);
              finish(self, task_state::failed);
            });
  });
}

// Called whenever output or exit progress was made: once the child exited
// and every chunk is persisted and reported, decide the outcome.
void maybe_finish(task_ptr self) {
  auto& st = self->state;
  if (!st.exited || st.finishing || st.writing || st.reporting > 0
      || !st.pending.empty())
    return;
  st.finishing = true;
  st.rec.exit_code = st.status.shell_code();
  st.rec.signal = st.status.signal;
  if (st.store_failure) {
    set_error(st.rec, st.store_failure);
    finish(self, task_state::failed);
    return;
  }
  if (st.evicting) {
    final_checkpoint(self);
    return;
  }
  task_state outcome;
  if (st.timed_out)
    outcome = task_state::timed_out;
  else if (st.cancel_requested)
    outcome = task_state::cancelled;
  else if (st.status.code == 0)
    outcome = task_state::succeeded;
  else
    outcome = task_state::failed;
  publish(self, outcome);
}

// Writes the final record, reports the result and ends the actor.
void finish(task_ptr self, task_state final_state) {
  auto& st = self->state;
  st.finishing = true;
  st.rec.state = final_state;
  st.rec.finished_at = now_ms();
  st.rec.updated_at = st.rec.finished_at;
  auto report = [self] {
    self->send(self->state.ctx.link, result_atom::value, self->state.rec);
    self->quit();
  };
  self->request(st.ctx.persistence, caf::infinite, put_atom::value, st.rec)
      .then([report](ok_atom) { report(); },
            [self, report](caf::error& err) {
              // The user must still learn the outcome, and that it is not
              // recorded: the LINK gets the result with the store error.
              log::error(component(self),
                         "cannot record the result: " + describe(err));
              auto& rec = self->state.rec;
              if (rec.error.empty()) {
                rec.error_code = to_string(code_of(err));
                rec.error =
                    "the result could not be recorded: " + describe(err);
              }
              if (rec.state == task_state::succeeded)
                rec.state = task_state::failed;
              report();
            });
}

// Tells the LINK of a checkpoint that was written (not of a skipped one:
// the server knows that ref already).
void report_checkpoint(task_ptr self, const checkpoint_report& r) {
  auto& st = self->state;
  if (r.skipped || r.ref.empty())
    return;
  st.rec.checkpoint = r.ref;
  self->send(st.ctx.link, checkpoint_atom::value, st.rec.spec.id,
             st.rec.attempt, r);
}

// Eviction, once the child is gone and its output is reported: the final
// checkpoint (when the node has a store), then the result `migrating`. A
// failed checkpoint is said in the record; the server resumes from the
// last one it knows.
void final_checkpoint(task_ptr self) {
  auto& st = self->state;
  if (!st.ctx.checkpointer || !st.child) {
    finish(self, task_state::migrating);
    return;
  }
  self->request(st.ctx.checkpointer, caf::infinite, checkpoint_atom::value,
                st.rec.spec.id, int32_t{0})
      .then(
          [self](const checkpoint_report& r) {
            log::info(component(self),
                      "evicted: final checkpoint " + r.ref
                          + (r.skipped ? " (nothing changed)" : "") + ", "
                          + std::to_string(r.bytes) + " bytes uploaded");
            report_checkpoint(self, r);
            self->state.rec.checkpoint = r.ref;
            finish(self, task_state::migrating);
          },
          [self](caf::error& err) {
            log::error(component(self),
                       "evicted: the final checkpoint failed (" + describe(err)
                           + "); the task resumes from its last checkpoint");
            set_error(self->state.rec,
                      make_error(code_of(err),
                                 "the final checkpoint at eviction failed: "
                                     + describe(err)));
            finish(self, task_state::migrating);
          });
}

// Asks for the next periodic checkpoint one interval from now (when on).
void schedule_checkpoint(task_ptr self) {
  auto& st = self->state;
  if (st.ctx.checkpointer && st.ctx.checkpoint_interval.count() > 0)
    self->delayed_send(self, st.ctx.checkpoint_interval,
                       checkpoint_atom::value);
}

// A periodic checkpoint while the child runs. A failed one is logged and
// the task goes on; the next tick tries again.
void take_checkpoint(task_ptr self) {
  auto& st = self->state;
  if (st.finishing || st.exited || !st.child
      || st.rec.state != task_state::running)
    return;
  if (st.checkpointing) {
    schedule_checkpoint(self);
    return;
  }
  st.checkpointing = true;
  self->request(st.ctx.checkpointer, caf::infinite, checkpoint_atom::value,
                st.rec.spec.id, static_cast<int32_t>(st.child->pgid))
      .then(
          [self](const checkpoint_report& r) {
            auto& st = self->state;
            st.checkpointing = false;
            log::debug(component(self),
                       "checkpoint " + r.ref + ": paused "
                           + std::to_string(r.pause_ms) + " ms, "
                           + std::to_string(r.bytes) + " bytes uploaded");
            report_checkpoint(self, r);
            schedule_checkpoint(self);
          },
          [self](caf::error& err) {
            self->state.checkpointing = false;
            log::warn(component(self),
                      "checkpoint failed, the task goes on: " + describe(err));
            schedule_checkpoint(self);
          });
}

// A checkpoint the server asked for: taken now (one at a time with the
// periodic ones, in the CHECKPOINTER) and reported even when nothing
// changed; a task that is not running says why not.
void checkpoint_on_demand(task_ptr self) {
  auto& st = self->state;
  auto refuse = [self](const std::string& why) {
    auto& st = self->state;
    self->send(st.ctx.link, checkpoint_atom::value, st.rec.spec.id,
               st.rec.attempt, why);
  };
  if (!st.ctx.checkpointer)
    return refuse("this daemon has no checkpoint store (--store)");
  if (st.finishing || st.exited || !st.child
      || st.rec.state != task_state::running)
    return refuse(std::string{"the attempt is "} + to_string(st.rec.state)
                  + (st.finishing ? " (ending)" : "")
                  + ", not running: nothing to checkpoint");
  self->request(st.ctx.checkpointer, caf::infinite, checkpoint_atom::value,
                st.rec.spec.id, static_cast<int32_t>(st.child->pgid))
      .then(
          [self](checkpoint_report r) {
            r.skipped = false; // the server waits for this ref
            report_checkpoint(self, r);
          },
          [self, refuse](caf::error& err) {
            log::warn(component(self),
                      "checkpoint on demand failed: " + describe(err));
            refuse("the checkpoint failed: " + describe(err));
          });
}

// Starts the child in the prepared directory.
void launch(task_ptr self) {
  auto& st = self->state;
  if (st.evicting) {
    finish(self, task_state::migrating);
    return;
  }
  if (st.timed_out || st.cancel_requested) {
    finish(self, st.timed_out ? task_state::timed_out : task_state::cancelled);
    return;
  }
  std::error_code fs_err;
  std::filesystem::create_directories(st.rec.state_dir, fs_err);
  if (fs_err) {
    set_error(st.rec, make_error(ec::io_error, "cannot create state dir "
                                                   + st.rec.state_dir + ": "
                                                   + fs_err.message()));
    finish(self, task_state::failed);
    return;
  }
  process::spawn_spec spec;
  spec.argv = st.continues && !st.rec.spec.resume_command.empty()
                  ? st.rec.spec.resume_command
                  : st.rec.spec.argv;
  spec.cwd = st.rec.worktree;
  spec.env = child_env(st.ctx.base_env, st.rec, st.continues);
  auto obs = std::make_shared<task_observer>(caf::actor_cast<task_actor>(self));
  auto child = st.ctx.reactor->spawn(spec, obs);
  if (!child) {
    auto code = code_of(child.error());
    st.rec.exit_code = code == ec::command_not_found        ? 127
                       : code == ec::command_not_executable ? 126
                                                            : -1;
    set_error(st.rec, child.error());
    finish(self, task_state::failed);
    return;
  }
  st.child = *child;
  st.rec.state = task_state::running;
  st.rec.started_at = now_ms();
  persist_state(self, [self] { schedule_checkpoint(self); });
}

// Prepares the worktree (or scratch dir), then launches.
void prepare(task_ptr self) {
  auto& st = self->state;
  auto& rec = st.rec;
  rec.state_dir = (st.ctx.state_root / rec.spec.id).string();
  auto dir = st.ctx.worktrees_dir / rec.spec.id;
  if (!st.ctx.repo) {
    std::error_code fs_err;
    // A later attempt in the scratch dir an earlier one left (here, or
    // restored) continues it; a fresh dir elsewhere starts over.
    if (rec.attempt > 1 && std::filesystem::exists(dir, fs_err))
      st.continues = true;
    std::filesystem::create_directories(dir, fs_err);
    if (fs_err) {
      set_error(rec, make_error(ec::io_error, "cannot create scratch dir "
                                                  + dir.string() + ": "
                                                  + fs_err.message()));
      finish(self, task_state::failed);
      return;
    }
    rec.worktree = dir.string();
    launch(self);
    return;
  }
  auto on_worktree = [self](const worktree& wt) {
    auto& rec = self->state.rec;
    rec.worktree = wt.path;
    rec.branch = wt.branch;
    rec.base_commit = wt.base_commit;
    // Recorded before the child starts: if makima dies the moment it
    // does, the record still names the worktree the child works in (task
    // resume, checkpoint and push need it). No state event: the state did
    // not change, only where the work is.
    self->request(self->state.ctx.persistence, caf::infinite, put_atom::value,
                  rec)
        .then([self](ok_atom) { launch(self); },
              [self](caf::error& err) {
                log::error(component(self),
                           "cannot record the worktree: " + describe(err));
                self->state.store_failure = err;
                finish(self, task_state::failed);
              });
  };
  auto on_error = [self](caf::error& err) {
    auto& st = self->state;
    log::debug(component(self), "prepare failed: " + describe(err));
    set_error(st.rec, err);
    if (st.evicting)
      finish(self, task_state::migrating);
    else if (st.timed_out)
      finish(self, task_state::timed_out);
    else if (st.cancel_requested)
      finish(self, task_state::cancelled);
    else
      finish(self, task_state::failed);
  };
  if (!rec.branch.empty()) {
    // A resumed attempt: the worktree from the earlier attempt is the work.
    st.continues = true;
    self->request(st.ctx.repo, caf::infinite, reopen_atom::value, rec.spec.id,
                  rec.branch)
        .then(on_worktree, on_error);
  } else {
    self->request(st.ctx.repo, caf::infinite, prepare_atom::value,
                  prepare_request{rec.spec.id, rec.spec.ref, dir.string()},
                  st.git_cancel)
        .then(on_worktree, on_error);
  }
}

// An attempt assigned with `resume_from`: the CHECKPOINTER restores the
// task (worktree, state dir, records) into this node, replacing what the
// node held of it; the attempt then reopens the restored worktree. A
// checkpoint that fails verification ends the attempt `restore_failed`;
// any other failure (store unreachable, origin unreachable) `interrupted`,
// so the server retries the same checkpoint.
void restore(task_ptr self) {
  auto& st = self->state;
  auto ref = st.rec.resume_from;
  if (!st.ctx.checkpointer) {
    set_error(st.rec, make_error(ec::invalid_config,
                                 "cannot resume from checkpoint " + ref
                                     + ": this daemon has no checkpoint "
                                       "store (--store)"));
    finish(self, task_state::interrupted);
    return;
  }
  self->request(st.ctx.checkpointer, caf::infinite, restore_atom::value, ref)
      .then(
          [self](const task_record& restored, const restore_report& cost) {
            auto& st = self->state;
            // The server's view wins for what it owns (spec, attempt, the
            // next output seq); the node's for where the work now is.
            st.rec.worktree = restored.worktree;
            st.rec.state_dir = restored.state_dir;
            st.rec.branch = restored.branch;
            st.rec.base_commit = restored.base_commit;
            st.rec.commit = restored.commit;
            st.rec.started_at = restored.started_at;
            st.continues = true;
            log::info(component(self),
                      "restored from checkpoint " + st.rec.resume_from);
            // The server learns what the restore cost with the state
            // event of this transition (docs/protocol.md §14).
            persist_state(self, [self] { prepare(self); }, cost);
          },
          [self](caf::error& err) {
            auto& st = self->state;
            auto code = code_of(err);
            bool refused =
                code == ec::checkpoint_corrupt || code == ec::checkpoint_limit
                || code == ec::checkpoint_version
                || code == ec::checkpoint_unsigned
                || code == ec::checkpoint_bad_signature
                || code == ec::checkpoint_not_found;
            log::error(component(self), "cannot restore checkpoint "
                                            + st.rec.resume_from + ": "
                                            + describe(err));
            set_error(st.rec, err);
            finish(self, refused ? task_state::restore_failed
                                 : task_state::interrupted);
          });
}

} // namespace

std::vector<std::string> child_env(const std::vector<std::string>& base,
                                   const task_record& rec, bool resumed) {
  return process::child_environment(
      base, rec.spec.env,
      {{"MAKIMA_TASK_ID", rec.spec.id},
       {"MAKIMA_ATTEMPT", std::to_string(rec.attempt)},
       {"MAKIMA_RESUMED", resumed ? "1" : "0"},
       {"MAKIMA_STATE_DIR", rec.state_dir},
       {"MAKIMA_WORKTREE", rec.worktree}});
}

task_actor::behavior_type task(task_ptr self, task_record rec,
                               task_context ctx) {
  auto& st = self->state;
  st.rec = std::move(rec);
  st.ctx = std::move(ctx);
  st.rec.state = task_state::preparing;
  st.rec.exit_code = -1;
  st.rec.signal = 0;
  st.rec.error.clear();
  st.rec.error_code.clear();
  st.rec.finished_at = 0;
  st.rec.state_dir = (st.ctx.state_root / st.rec.spec.id).string();
  // The timeout covers the whole attempt, preparing included.
  if (st.rec.spec.timeout > 0) {
    auto timeout = std::chrono::duration<double>(st.rec.spec.timeout);
    self->delayed_send(
        self, std::chrono::duration_cast<std::chrono::milliseconds>(timeout),
        timeout_atom::value);
  }
  if (!st.rec.resume_from.empty()) {
    // Another node's attempt goes on from its checkpoint (network mode).
    restore(self);
  } else if (st.rec.attempt > 1) {
    // A new attempt starts by recording that it prepares again.
    persist_state(self, [self] { prepare(self); });
  } else {
    // The first attempt's "preparing" was recorded when the task was created.
    prepare(self);
  }
  return {
      [self](cancel_atom) {
        auto& st = self->state;
        if (st.finishing) {
          if (st.rec.state == task_state::publishing)
            st.git_cancel.cancel(); // a push in progress stops
          return;
        }
        if (st.cancel_requested && st.child && !st.exited) {
          kill_child(self); // second cancel: no more grace
          return;
        }
        st.cancel_requested = true;
        st.git_cancel.cancel(); // preparing or pushing: abort the git work
        terminate_child(self);
      },
      [self](cancel_atom, kill_atom) {
        auto& st = self->state;
        if (st.finishing) {
          if (st.rec.state == task_state::publishing)
            st.git_cancel.cancel();
          return;
        }
        st.cancel_requested = true;
        st.git_cancel.cancel();
        kill_child(self);
      },
      [self](output_atom, uint8_t stream, std::string& bytes) {
        auto& st = self->state;
        st.pending.push_back(
            output_chunk{st.rec.next_seq++, stream, std::move(bytes)});
        flush_output(self);
      },
      [self](exit_atom, int code, int signal) {
        auto& st = self->state;
        st.exited = true;
        st.status.code = code;
        st.status.signal = signal;
        maybe_finish(self);
      },
      [self](timeout_atom) {
        auto& st = self->state;
        if (st.finishing || st.timed_out)
          return;
        if (!st.child) {
          // Still preparing: abort the clone, fetch or checkout; the REPO's
          // answer (or launch) ends the attempt as timed_out.
          log::info(component(self), "timed out while preparing after "
                                         + std::to_string(st.rec.spec.timeout)
                                         + " s");
          st.timed_out = true;
          st.git_cancel.cancel();
          return;
        }
        if (st.exited)
          return;
        log::info(component(self), "timed out after "
                                       + std::to_string(st.rec.spec.timeout)
                                       + " s");
        st.timed_out = true;
        terminate_child(self);
      },
      [self](kill_atom, uint32_t generation) {
        if (generation == self->state.term_generation)
          kill_child(self);
      },
      [self](progress_atom, task_progress& p) {
        self->send(self->state.ctx.link, progress_atom::value, std::move(p));
      },
      [self](checkpoint_atom) { take_checkpoint(self); },
      [self](evict_atom) {
        auto grace = static_cast<uint32_t>(
            std::min(self->state.rec.spec.grace, max_timeout_seconds) * 1000);
        self->send(self, evict_atom::value, grace, int32_t{SIGTERM});
      },
      [self](checkpoint_atom, now_atom) { checkpoint_on_demand(self); },
      [self](evict_atom, uint32_t grace_ms, int32_t sig) {
        auto& st = self->state;
        if (st.evicting || st.finishing)
          return; // a result is on its way
        st.evicting = true;
        if (!st.child) {
          // Preparing: abort the git work; its answer ends the attempt.
          st.git_cancel.cancel();
          return;
        }
        if (st.exited)
          return; // maybe_finish takes the final checkpoint
        log::info(component(self), "evicted: signal " + std::to_string(sig)
                                       + " to the task, SIGKILL in "
                                       + std::to_string(grace_ms) + " ms");
        terminate_child(self, sig, std::chrono::milliseconds{grace_ms});
      },
  };
}

} // namespace makima
