// The SERVER's tasks over their lifetime on daemons: assignment (the
// dispatch plan of server_scheduler.hpp applied), re-queueing with the
// attempt budget and retry backoff, lease expiry, cancellation and the
// write-through of every change (server_store.hpp). The daemon protocol
// that triggers most of this is in server.cpp.
#include "actors/server_state.hpp"

#include <algorithm>

#include "actors/api.hpp"
#include "actors/server_scheduler.hpp"
#include "actors/server_store.hpp"
#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"

namespace makima::server_detail {

namespace {

double seconds_since(clock::time_point t) {
  return std::chrono::duration<double>(clock::now() - t).count();
}

void observe_latency(server_state& st, double secs) {
  auto& bounds = latency_bounds();
  if (st.latency_counts.size() != bounds.size())
    st.latency_counts.assign(bounds.size(), 0);
  for (size_t i = 0; i < bounds.size(); ++i)
    if (secs <= bounds[i])
      ++st.latency_counts[i];
  ++st.latency_count;
  st.latency_sum += secs;
}

/// Ends task `e` as failed with `error_code` and `message` (the attempt
/// budget is spent, or its assignment can never be sent).
void fail_task(self_ptr self, task_entry& e, const std::string& error_code,
               const std::string& message, const std::string& detail) {
  e.daemon.clear();
  e.rec.state = task_state::failed;
  e.rec.error_code = error_code;
  e.rec.error = message;
  e.rec.updated_at = now_ms();
  e.rec.finished_at = e.rec.updated_at;
  write_through(self, e, detail);
  log::warn("server", "task " + e.rec.spec.id + " failed: " + message);
  notify_state(e);
}

/// Assigns `e` to `d`; false when it stays queued (store failure) or was
/// failed because its `assign` frame exceeds the frame limit.
bool assign(self_ptr self, task_entry& e, daemon_entry& d) {
  auto& st = self->state;
  task_record rec;
  rec.spec = e.rec.spec;
  rec.attempt = e.rec.attempt + 1;
  rec.state = task_state::preparing;
  rec.next_seq = e.rec.next_seq;
  rec.updated_at = now_ms();
  // The latest checkpoint the server knows, unless a restore refused it
  // (requeue dropped those). A v1 daemon ignores it and starts afresh.
  rec.checkpoint = e.rec.checkpoint;
  if (!e.checkpoints.empty() && d.protocol >= 2)
    rec.resume_from = e.checkpoints.back();
  auto text = proto::encode(proto::assign{rec}, d.protocol);
  if (text.size() > st.settings.max_frame_bytes) {
    // Defence in depth (submit checks this): a frame the daemon cannot
    // read would close its connection, and the task would be re-sent
    // forever.
    auto msg = "its assign frame of " + std::to_string(text.size())
               + " bytes exceeds the frame limit of "
               + std::to_string(st.settings.max_frame_bytes)
               + " bytes (net.max_frame_bytes)";
    fail_task(self, e, "frame_too_big", "the task cannot be assigned: " + msg,
              "not assigned: " + msg);
    return false;
  }
  auto old = e.rec;
  e.rec = rec;
  e.acked = 0;
  e.daemon = d.id;
  e.waiting.clear();
  if (write_through(self, e, "assigned to daemon " + d.id)) {
    e.rec = old;
    e.daemon.clear();
    return false;
  }
  d.tasks.insert(rec.spec.id);
  if (!e.requeue_cause.empty()) {
    ++st.migrations[{e.requeue_cause, e.from_pool, d.pool}];
    e.requeue_cause.clear();
  }
  st.net->send(d.conn, std::move(text));
  log::info("server", "task " + rec.spec.id + " attempt "
                          + std::to_string(rec.attempt)
                          + " assigned to daemon " + d.id);
  observe_latency(st, seconds_since(e.queued_at));
  notify_state(e);
  return true;
}

} // namespace

/// Puts `e` back into the queue as a new attempt (lease expiry, daemon
/// loss, `interrupted` result) — or cancels it when the user asked.
void requeue(self_ptr self, task_entry& e, const std::string& why,
             const char* cause) {
  auto& st = self->state;
  e.from_pool.clear();
  if (!e.daemon.empty()) {
    auto d = st.daemons.find(e.daemon);
    if (d != st.daemons.end()) {
      d->second.tasks.erase(e.rec.spec.id);
      e.from_pool = d->second.pool;
    }
  }
  e.daemon.clear();
  e.waiting.clear();
  e.rec.updated_at = now_ms();
  if (!e.checkpoint_waiters.empty())
    answer_checkpoint_waiters(
        self, e, 409,
        api::error_body(to_string(ec::bad_state),
                        "attempt " + std::to_string(e.rec.attempt)
                            + " was taken away (" + why + ")"));
  if (e.cancel_requested) {
    e.rec.state = task_state::cancelled;
    e.rec.finished_at = e.rec.updated_at;
    write_through(self, e, why + "; cancelled as requested");
    notify_state(e);
    return;
  }
  // An evicted attempt is not the task's fault: no budget, no backoff.
  bool evicted = e.rec.state == task_state::migrating;
  if (e.rec.state == task_state::restore_failed && e.checkpoints.empty()) {
    // Every checkpoint it had was refused: it cannot continue.
    auto code = e.rec.error_code.empty() ? std::string{"checkpoint_corrupt"}
                                         : e.rec.error_code;
    auto msg = "cannot restore the task from any checkpoint: " + e.rec.error;
    fail_task(self, e, code, msg, why + "; no older checkpoint: failed");
    return;
  }
  // The attempt budget: attempt n was taken away; n >= budget ends it.
  uint32_t budget = attempt_budget(st.settings, e.rec.spec);
  if (!evicted && budget != 0 && e.rec.attempt >= budget) {
    auto msg = "attempt budget exhausted: " + std::to_string(e.rec.attempt)
               + " attempt" + (e.rec.attempt == 1 ? "" : "s")
               + ", last: " + why;
    fail_task(self, e, "attempts_exhausted", msg, why + "; " + msg);
    return;
  }
  // State queued with attempt n >= 1 means: attempt n was taken away.
  // Attempt n+1 waits retry_backoff * 2^(n-1) seconds (capped), so that a
  // task that kills its daemon does not spin.
  auto wait = evicted ? std::chrono::milliseconds{0}
                      : retry_delay(st.settings, e.rec.attempt);
  e.rec.state = task_state::queued;
  e.queued_at = clock::now();
  e.not_before = e.queued_at + wait;
  std::string from = e.checkpoints.empty()
                         ? " from scratch (no checkpoint)"
                         : " from checkpoint " + e.checkpoints.back();
  e.requeue_cause = cause;
  ++st.requeues[{cause, e.checkpoints.empty() ? "scratch" : "checkpoint"}];
  std::string next = wait.count() > 0
                         ? "; re-queued" + from + ", next attempt in "
                               + std::to_string(wait.count()) + " ms"
                         : "; re-queued" + from;
  write_through(self, e, why + next);
  st.queue.push_back(e.rec.spec.id);
  log::info("server", "task " + e.rec.spec.id + ": " + why + next);
  if (wait.count() > 0)
    self->delayed_send(self, wait, timeout_atom::value);
  notify_state(e);
}

/// Lease expiry: daemons silent for `lease` seconds lose their tasks.
void check_leases(self_ptr self) {
  auto& st = self->state;
  bool changed = false;
  for (auto& [id, d] : st.daemons) {
    if (seconds_since(d.last_frame) <= st.settings.lease)
      continue;
    if (d.connected) {
      auto c = st.conns.find(d.conn);
      if (c != st.conns.end()) {
        c->second.closing = true;
        c->second.daemon.clear();
      }
      st.net->close(d.conn, proto::close_lease_expired, "lease expired");
      d.connected = false;
      ++st.rejected["lease"];
    }
    if (d.tasks.empty())
      continue;
    log::warn("server", "daemon " + id + " lost its lease; re-queueing "
                            + std::to_string(d.tasks.size()) + " task(s)");
    auto ids = d.tasks;
    for (auto& t : ids)
      requeue(self, st.tasks[t], "lease of daemon " + id + " expired",
              "lease");
    changed = true;
  }
  if (changed)
    dispatch(self);
}

caf::error write_through(self_ptr self, task_entry& e,
                         const std::string& detail) {
  auto err = persist(*self->state.db, e, detail);
  if (err)
    log::error("server",
               "task " + e.rec.spec.id + ": store failed: " + describe(err));
  return err;
}

void dispatch(self_ptr self) {
  auto& st = self->state;
  if (st.draining || st.queue.empty() || free_slots(st.daemons) == 0)
    return;
  // Acks of the frames handled so far go out before any assignment.
  flush_acks(self);
  auto now = clock::now();
  // Tasks whose store write failed stay queued; an assign that fails
  // (store, or the task failed as unsendable) frees its slot, so the rest
  // is planned again without it.
  std::set<std::string> held;
  size_t scanned = 0;
  std::vector<std::string> need_store;
  for (bool again = true; again;) {
    again = false;
    auto plan = dispatch_plan(st.queue, st.tasks, st.daemons, now, held);
    scanned = std::max(scanned, plan.scanned);
    need_store = std::move(plan.need_store);
    for (auto& a : plan.assignments) {
      auto& e = st.tasks[a.task];
      if (assign(self, e, st.daemons[a.daemon]))
        continue;
      if (e.rec.state == task_state::queued)
        held.insert(a.task);
      again = true;
      break;
    }
  }
  // A resumed task that only storeless daemons could take waits for one
  // with a store (an attempt there could not restore it); its history says
  // so once per wait.
  for (auto& id : need_store) {
    auto& e = st.tasks[id];
    if (e.rec.state != task_state::queued || e.checkpoints.empty())
      continue;
    auto why = "waiting for a daemon with a checkpoint store to resume from "
               + e.checkpoints.back()
               + ": the free daemons that match it have none (--store)";
    if (e.waiting == why)
      continue;
    e.waiting = why;
    write_through(self, e, why);
    log::info("server", "task " + id + ": " + why);
  }
  // Drops what the scan passed that is no longer queued (assigned, failed,
  // cancelled, unknown).
  auto end = st.queue.begin() + static_cast<std::ptrdiff_t>(scanned);
  st.queue.erase(std::remove_if(st.queue.begin(), end,
                                [&](const std::string& id) {
                                  auto t = st.tasks.find(id);
                                  return t == st.tasks.end()
                                         || t->second.rec.state
                                                != task_state::queued;
                                }),
                 end);
}

void cancel_task(self_ptr self, task_entry& e) {
  auto& st = self->state;
  if (e.rec.state == task_state::queued) {
    e.rec.state = task_state::cancelled;
    e.rec.updated_at = now_ms();
    e.rec.finished_at = e.rec.updated_at;
    write_through(self, e, "cancelled while queued");
    notify_state(e);
    return;
  }
  e.cancel_requested = true;
  auto d = st.daemons.find(e.daemon);
  if (d != st.daemons.end() && d->second.connected)
    send_frame(self, d->second.conn,
               proto::cancel{e.rec.spec.id, e.rec.attempt, "user"});
}

} // namespace makima::server_detail
