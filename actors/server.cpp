// The SERVER actor's daemon side (docs/protocol.md §4-9): hello/welcome,
// idempotent event storage with cumulative acks, fencing, leases,
// scheduling and drain; plus `server_node`, which wires the store, the
// actor and net::server together. The HTTP API is in server_http.cpp.
#include "actors/server.hpp"
#include "actors/server_state.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <optional>

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <nlohmann/json.hpp>

#include "actors/server_target.hpp"
#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"

namespace makima {

namespace server_detail {

namespace {

constexpr const char* meta_prefix = "task/";

double seconds_since(clock::time_point t) {
  return std::chrono::duration<double>(clock::now() - t).count();
}

void send_frame(self_ptr self, uint64_t conn, const proto::frame& f) {
  self->state.net->send(conn, proto::encode(f));
}

/// Sends `error` (and closes with `close` unless 0); counts the reason.
void reject(self_ptr self, uint64_t conn, const std::string& code,
            const std::string& message, uint16_t close,
            const std::string& task = {}, uint32_t attempt = 0) {
  auto& st = self->state;
  ++st.rejected[code];
  auto c = st.conns.find(conn);
  log::warn("server", "daemon connection " + std::to_string(conn) + ": " + code
                          + ": " + message);
  proto::error err{code, message, task, attempt};
  send_frame(self, conn, err);
  if (close == 0)
    return;
  st.net->close(conn, close, code);
  if (c != st.conns.end()) {
    c->second.closing = true;
    c->second.pending_acks.clear();
  }
}

void schedule_flush(self_ptr self) {
  if (self->state.flush_scheduled)
    return;
  self->state.flush_scheduled = true;
  self->send(self, flush_atom::value);
}

void queue_ack(self_ptr self, uint64_t conn, const std::string& task,
               uint32_t attempt, uint64_t seq) {
  auto c = self->state.conns.find(conn);
  if (c == self->state.conns.end() || c->second.closing)
    return;
  auto& slot = c->second.pending_acks[{task, attempt}];
  slot = std::max(slot, seq);
  schedule_flush(self);
}

void flush_acks(self_ptr self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  for (auto& [id, c] : st.conns) {
    if (c.closing)
      continue;
    for (auto& [key, seq] : c.pending_acks)
      send_frame(self, id, proto::ack{key.first, key.second, seq});
    c.pending_acks.clear();
  }
}

/// Whether a daemon matches a task's selector.
bool matches(const daemon_entry& d, const task_spec& spec) {
  for (auto& [k, v] : spec.selector) {
    if (k == "pool") {
      if (d.pool != v)
        return false;
      continue;
    }
    auto it = d.labels.find(k);
    if (it == d.labels.end() || it->second != v)
      return false;
  }
  return true;
}

bool has_repo(const daemon_entry& d, const std::string& repo) {
  return !repo.empty()
         && std::find(d.cached_repos.begin(), d.cached_repos.end(), repo)
                != d.cached_repos.end();
}

daemon_entry* pick_daemon(server_state& st, const task_spec& spec) {
  daemon_entry* best = nullptr;
  for (auto& [id, d] : st.daemons) {
    if (!d.connected || d.tasks.size() >= d.capacity || !matches(d, spec))
      continue;
    if (!best) {
      best = &d;
      continue;
    }
    bool d_cached = has_repo(d, spec.repo);
    bool b_cached = has_repo(*best, spec.repo);
    if (d_cached != b_cached) {
      if (d_cached)
        best = &d;
      continue;
    }
    // Least loaded: running/capacity, compared without division.
    if (d.tasks.size() * best->capacity < best->tasks.size() * d.capacity)
      best = &d;
  }
  return best;
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
  persist(self, e, detail);
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
  auto text = proto::encode(proto::assign{rec});
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
  if (persist(self, e, "assigned to daemon " + d.id)) {
    e.rec = old;
    e.daemon.clear();
    return false;
  }
  d.tasks.insert(rec.spec.id);
  st.net->send(d.conn, std::move(text));
  observe_latency(st, seconds_since(e.queued_at));
  notify_state(e);
  return true;
}

/// Puts `e` back into the queue as a new attempt (lease expiry, daemon
/// loss, `interrupted` result) — or cancels it when the user asked.
void requeue(self_ptr self, task_entry& e, const std::string& why) {
  auto& st = self->state;
  if (!e.daemon.empty()) {
    auto d = st.daemons.find(e.daemon);
    if (d != st.daemons.end())
      d->second.tasks.erase(e.rec.spec.id);
  }
  e.daemon.clear();
  e.rec.updated_at = now_ms();
  if (e.cancel_requested) {
    e.rec.state = task_state::cancelled;
    e.rec.finished_at = e.rec.updated_at;
    persist(self, e, why + "; cancelled as requested");
    notify_state(e);
    return;
  }
  // The attempt budget: attempt n was taken away; n >= budget ends it.
  uint32_t budget = e.rec.spec.max_attempts != 0 ? e.rec.spec.max_attempts
                                                 : st.settings.max_attempts;
  if (budget != 0 && e.rec.attempt >= budget) {
    auto msg = "attempt budget exhausted: " + std::to_string(e.rec.attempt)
               + " attempt" + (e.rec.attempt == 1 ? "" : "s")
               + ", last: " + why;
    fail_task(self, e, "attempts_exhausted", msg, why + "; " + msg);
    return;
  }
  // State queued with attempt n >= 1 means: attempt n was taken away.
  // Attempt n+1 waits retry_backoff * 2^(n-1) seconds (capped), so that a
  // task that kills its daemon does not spin.
  double delay =
      std::min(st.settings.retry_backoff_max,
               st.settings.retry_backoff
                   * std::pow(2.0, std::min<uint32_t>(e.rec.attempt, 31) - 1));
  if (!(delay > 0))
    delay = 0;
  auto wait = std::chrono::milliseconds{static_cast<int64_t>(delay * 1000)};
  e.rec.state = task_state::queued;
  e.queued_at = clock::now();
  e.not_before = e.queued_at + wait;
  std::string next = wait.count() > 0
                         ? "; re-queued, next attempt in "
                               + std::to_string(wait.count()) + " ms"
                         : "; re-queued";
  persist(self, e, why + next);
  st.queue.push_back(e.rec.spec.id);
  log::info("server", "task " + e.rec.spec.id + ": " + why + next);
  if (wait.count() > 0)
    self->delayed_send(self, wait, timeout_atom::value);
  notify_state(e);
}

/// Whether no connection is left (drain done).
void check_drained(self_ptr self) {
  auto& st = self->state;
  if (!(st.draining || st.stopping) || !st.conns.empty())
    return;
  for (auto& p : st.drain_waiters)
    p.deliver(ok_atom::value);
  st.drain_waiters.clear();
}

void on_hello(self_ptr self, uint64_t conn, conn_entry& c, proto::hello& h) {
  auto& st = self->state;
  if (h.daemon_id.empty() || h.capacity == 0) {
    reject(self, conn, "malformed", "hello needs a daemon_id and capacity >= 1",
           proto::close_invalid_payload);
    return;
  }
  auto& d = st.daemons[h.daemon_id];
  if (d.connected && d.conn != conn) {
    log::info("server", "daemon " + h.daemon_id
                            + " connected again; closing its old connection");
    auto old = st.conns.find(d.conn);
    if (old != st.conns.end()) {
      old->second.closing = true;
      old->second.daemon.clear();
      old->second.pending_acks.clear();
    }
    st.net->close(d.conn, proto::close_replaced, "replaced");
  }
  d.id = h.daemon_id;
  d.name = h.name;
  d.pool = h.pool;
  d.labels = h.labels;
  d.capacity = h.capacity;
  d.cached_repos = h.cached_repos;
  d.version = h.version;
  d.conn = conn;
  d.connected = true;
  d.last_seen = now_ms();
  d.last_frame = clock::now();
  c.hello = true;
  c.daemon = d.id;
  proto::welcome w;
  w.server_version = st.settings.version;
  w.heartbeat = st.settings.heartbeat;
  w.lease = st.settings.lease;
  w.max_frame_bytes = st.settings.max_frame_bytes;
  std::vector<proto::cancel> cancels;
  std::set<std::string> known;
  for (auto& r : h.running) {
    known.insert(r.task);
    auto t = st.tasks.find(r.task);
    bool current = t != st.tasks.end() && r.attempt == t->second.rec.attempt
                   && t->second.rec.state != task_state::queued
                   && t->second.daemon == d.id;
    if (current) {
      w.acked.push_back({r.task, r.attempt, t->second.acked});
      if (t->second.cancel_requested && !is_terminal(t->second.rec.state))
        cancels.push_back({r.task, r.attempt, "user"});
    } else {
      // Stale or unknown: the server wants none of it.
      w.acked.push_back({r.task, r.attempt, r.seq});
      cancels.push_back({r.task, r.attempt, "fenced"});
    }
  }
  send_frame(self, conn, w);
  for (auto& x : cancels)
    send_frame(self, conn, x);
  // Assigned attempts the daemon does not know (the assign was lost with
  // the old connection, or the daemon lost its data dir) run again.
  std::vector<std::string> lost;
  for (auto& id : d.tasks)
    if (!known.count(id))
      lost.push_back(id);
  for (auto& id : lost)
    requeue(self, st.tasks[id],
            "daemon " + d.id + " does not know attempt "
                + std::to_string(st.tasks[id].rec.attempt));
  if (st.draining)
    send_frame(self, conn, proto::drain{"shutdown"});
  dispatch(self);
}

void on_event(self_ptr self, uint64_t conn, daemon_entry& d, proto::event& ev) {
  auto& st = self->state;
  auto t = st.tasks.find(ev.task);
  if (t == st.tasks.end()) {
    reject(self, conn, "bad_message", "event for unknown task " + ev.task,
           proto::close_policy, ev.task, ev.attempt);
    return;
  }
  auto& e = t->second;
  // An attempt was taken away (re-queued, or cancelled after its lease)
  // when a later one exists or the task has no daemon any more.
  bool superseded = ev.attempt < e.rec.attempt || e.daemon.empty();
  if (ev.attempt == 0 || ev.attempt > e.rec.attempt
      || (!superseded && e.daemon != d.id)) {
    reject(self, conn, "bad_message",
           "attempt " + std::to_string(ev.attempt) + " of " + ev.task
               + " was never assigned to this daemon",
           proto::close_policy, ev.task, ev.attempt);
    return;
  }
  if (superseded) {
    reject(self, conn, "stale_attempt",
           "attempt " + std::to_string(ev.attempt) + " of " + ev.task
               + " was superseded",
           0, ev.task, ev.attempt);
    queue_ack(self, conn, ev.task, ev.attempt, ev.seq);
    flush_acks(self);
    send_frame(self, conn, proto::cancel{ev.task, ev.attempt, "fenced"});
    return;
  }
  if (ev.seq <= e.acked) {
    queue_ack(self, conn, ev.task, ev.attempt, e.acked);
    return;
  }
  if (is_terminal(e.rec.state)) {
    // The result was the attempt's last event (§4).
    reject(self, conn, "bad_message",
           "event " + std::to_string(ev.seq) + " of " + ev.task + " attempt "
               + std::to_string(ev.attempt) + " after its result",
           proto::close_policy, ev.task, ev.attempt);
    return;
  }
  if (ev.seq > e.acked + 1) {
    reject(self, conn, "seq_gap",
           "event " + std::to_string(ev.seq) + " of " + ev.task + " attempt "
               + std::to_string(ev.attempt) + " after "
               + std::to_string(e.acked),
           proto::close_seq_gap, ev.task, ev.attempt);
    return;
  }
  store::write_batch batch;
  std::vector<output_chunk> fresh;
  uint64_t next = e.rec.next_seq;
  task_record rec = e.rec;
  std::string detail;
  bool requeue_it = false;
  if (ev.kind == proto::event_kind::output) {
    for (auto& ch : ev.chunks) {
      if (ch.seq < next)
        continue; // already stored (put-if-absent)
      if (ch.seq > next) {
        // Output seqs continue without gaps from the assignment's
        // next_seq (§4): a jump would leave a hole no replay fills.
        reject(self, conn, "seq_gap",
               "output seq " + std::to_string(ch.seq) + " of " + ev.task
                   + " attempt " + std::to_string(ev.attempt) + " where "
                   + std::to_string(next) + " was expected",
               proto::close_seq_gap, ev.task, ev.attempt);
        return;
      }
      batch.put_output(ev.task, ch.seq, ch.stream, ch.bytes);
      next = ch.seq + 1;
      fresh.push_back(ch);
    }
  } else {
    rec = ev.record;
    rec.spec = e.rec.spec;
    rec.attempt = e.rec.attempt;
    rec.updated_at = ev.at > 0 ? ev.at : now_ms();
    if (ev.kind == proto::event_kind::result
        && rec.state == task_state::interrupted) {
      requeue_it = true;
      detail = "attempt interrupted on daemon " + d.id;
    } else if (ev.kind == proto::event_kind::result
               && !is_terminal(rec.state)) {
      reject(self, conn, "malformed", "result with non-terminal state",
             proto::close_invalid_payload, ev.task, ev.attempt);
      return;
    }
    rec.next_seq = next;
    state_change sc{rec.attempt, rec.state, rec.updated_at,
                    requeue_it ? detail : "daemon " + d.id};
    batch.put_task(ev.task, to_json(rec));
    batch.put_event(ev.task, e.events, to_json(sc));
  }
  batch.put_meta(meta_prefix + ev.task,
                 meta_json(ev.attempt, ev.seq, e.daemon));
  if (auto err = st.db->write(std::move(batch))) {
    reject(self, conn, "internal", "store failed: " + describe(err),
           proto::close_internal, ev.task, ev.attempt);
    return;
  }
  e.acked = ev.seq;
  if (ev.kind != proto::event_kind::output)
    ++e.events;
  rec.next_seq = next;
  e.rec = rec;
  if (!fresh.empty())
    notify_output(e, fresh);
  queue_ack(self, conn, ev.task, ev.attempt, ev.seq);
  if (ev.kind == proto::event_kind::output)
    return;
  if (requeue_it) {
    requeue(self, e, detail);
    dispatch(self);
    return;
  }
  notify_state(e);
  if (is_terminal(e.rec.state)) {
    d.tasks.erase(ev.task);
    dispatch(self);
  }
}

void on_text(self_ptr self, uint64_t conn, std::string& text) {
  auto& st = self->state;
  auto c = st.conns.find(conn);
  if (c == st.conns.end() || c->second.closing)
    return;
  auto decoded = proto::decode(text);
  if (auto f = std::get_if<proto::decode_failure>(&decoded)) {
    reject(self, conn, f->code, f->message, f->close);
    return;
  }
  auto& fr = std::get<proto::frame>(decoded);
  if (!c->second.hello) {
    if (auto h = std::get_if<proto::hello>(&fr))
      on_hello(self, conn, c->second, *h);
    else
      reject(self, conn, "hello_required", "the first frame must be hello",
             proto::close_hello_required);
    return;
  }
  auto d = st.daemons.find(c->second.daemon);
  if (d == st.daemons.end()) // replaced meanwhile
    return;
  d->second.last_frame = clock::now();
  d->second.last_seen = now_ms();
  if (std::holds_alternative<proto::hello>(fr)) {
    reject(self, conn, "bad_message", "second hello", proto::close_policy);
  } else if (auto hb = std::get_if<proto::heartbeat>(&fr)) {
    d->second.outbox_events = hb->outbox_events;
    send_frame(self, conn, proto::heartbeat{});
  } else if (auto ev = std::get_if<proto::event>(&fr)) {
    on_event(self, conn, d->second, *ev);
  } else if (auto err = std::get_if<proto::error>(&fr)) {
    log::warn("server", "daemon " + d->second.id + " reported " + err->code
                            + ": " + err->message);
  } else {
    reject(self, conn, "bad_message", "a daemon does not send this type",
           proto::close_policy);
  }
}

void on_close(self_ptr self, uint64_t conn, uint16_t code) {
  auto& st = self->state;
  ++st.closed[code];
  if (code == proto::close_too_big)
    ++st.rejected["too_big"];
  else if (code == proto::close_unsupported_data)
    ++st.rejected["binary"];
  auto c = st.conns.find(conn);
  if (c == st.conns.end())
    return;
  if (!c->second.daemon.empty()) {
    auto d = st.daemons.find(c->second.daemon);
    if (d != st.daemons.end() && d->second.conn == conn) {
      d->second.connected = false;
      log::info("server", "daemon " + d->second.id + " disconnected ("
                              + std::to_string(code) + ")");
    }
  }
  st.conns.erase(c);
  check_drained(self);
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
      requeue(self, st.tasks[t], "lease of daemon " + id + " expired");
    changed = true;
  }
  if (changed)
    dispatch(self);
}

/// Every tick: drops streams whose client is gone (so their sessions are
/// freed within a tick); every keep_alive interval also writes a comment,
/// whose failed write is how a silently vanished client is noticed.
void keep_alive(server_state& st) {
  bool due = std::chrono::duration_cast<std::chrono::milliseconds>(
                 clock::now() - st.last_keep_alive)
             >= st.settings.keep_alive;
  if (due)
    st.last_keep_alive = clock::now();
  sweep_streams(st, due);
}

std::chrono::milliseconds tick_interval(const server_settings& s) {
  auto lease =
      std::chrono::milliseconds(static_cast<int64_t>(s.lease * 1000 / 4));
  auto t = std::min({lease, s.keep_alive, std::chrono::milliseconds{1000}});
  return std::max(t, std::chrono::milliseconds{10});
}

} // namespace

std::string meta_json(uint32_t attempt, uint64_t seq,
                      const std::string& daemon) {
  nlohmann::json j{{"attempt", attempt}, {"seq", seq}, {"daemon", daemon}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

caf::error persist(self_ptr self, task_entry& e, const std::string& detail) {
  auto& st = self->state;
  store::write_batch batch;
  auto& id = e.rec.spec.id;
  batch.put_task(id, to_json(e.rec));
  state_change sc{e.rec.attempt, e.rec.state, e.rec.updated_at, detail};
  batch.put_event(id, e.events, to_json(sc));
  batch.put_meta(meta_prefix + id, meta_json(e.rec.attempt, e.acked, e.daemon));
  if (auto err = st.db->write(std::move(batch))) {
    log::error("server", "task " + id + ": store failed: " + describe(err));
    return err;
  }
  ++e.events;
  return caf::none;
}

void dispatch(self_ptr self) {
  auto& st = self->state;
  if (st.draining || st.queue.empty())
    return;
  // Nothing to do without free capacity, and the scan stops once every
  // slot is taken: a long queue costs only what gets assigned (dispatch
  // runs on every submit and result).
  size_t free_slots = 0;
  for (auto& [id, d] : st.daemons)
    if (d.connected && d.tasks.size() < d.capacity)
      free_slots += d.capacity - d.tasks.size();
  if (free_slots == 0)
    return;
  // Acks of the frames handled so far go out before any assignment.
  flush_acks(self);
  auto now = clock::now();
  for (auto it = st.queue.begin(); it != st.queue.end();) {
    auto t = st.tasks.find(*it);
    if (t == st.tasks.end() || t->second.rec.state != task_state::queued) {
      it = st.queue.erase(it);
      continue;
    }
    if (t->second.not_before > now) {
      ++it; // retry backoff: a timeout_atom dispatches again
      continue;
    }
    auto d = pick_daemon(st, t->second.rec.spec);
    if (!d) {
      ++it;
      continue;
    }
    bool assigned = assign(self, t->second, *d);
    if (t->second.rec.state == task_state::queued) {
      ++it; // store failed: stays queued
      continue;
    }
    it = st.queue.erase(it);
    if (assigned && --free_slots == 0)
      break;
  }
}

void cancel_task(self_ptr self, task_entry& e) {
  auto& st = self->state;
  if (e.rec.state == task_state::queued) {
    e.rec.state = task_state::cancelled;
    e.rec.updated_at = now_ms();
    e.rec.finished_at = e.rec.updated_at;
    persist(self, e, "cancelled while queued");
    notify_state(e);
    return;
  }
  e.cancel_requested = true;
  auto d = st.daemons.find(e.daemon);
  if (d != st.daemons.end() && d->second.connected)
    send_frame(self, d->second.conn,
               proto::cancel{e.rec.spec.id, e.rec.attempt, "user"});
}

caf::expected<loaded_state> load(store::db& db) {
  loaded_state out;
  std::vector<std::pair<int64_t, std::string>> queued;
  caf::error bad;
  auto err = db.for_each_task([&](std::string_view id, std::string_view js) {
    auto rec = record_from_json(std::string{js});
    if (!rec) {
      bad = make_error(ec::store_corrupt,
                       "task " + std::string{id} + ": malformed record");
      return;
    }
    task_entry e;
    e.rec = std::move(*rec);
    e.queued_at = clock::now();
    out.tasks.emplace(std::string{id}, std::move(e));
  });
  if (err)
    return err;
  if (bad)
    return bad;
  auto now = clock::now();
  for (auto& [id, e] : out.tasks) {
    auto last = db.last_output_seq(id);
    if (!last)
      return last.error();
    e.rec.next_seq = *last ? **last + 1 : 0;
    auto ev = db.last_event(id);
    if (!ev)
      return ev.error();
    e.events = *ev ? **ev + 1 : 0;
    auto meta = db.get_meta(meta_prefix + id);
    if (!meta)
      return meta.error();
    if (*meta) {
      auto j = nlohmann::json::parse(**meta, nullptr, false);
      if (j.is_object() && j.value("attempt", 0u) == e.rec.attempt) {
        e.acked = j.value("seq", uint64_t{0});
        e.daemon = j.value("daemon", std::string{});
      }
    }
    if (e.rec.state == task_state::queued) {
      e.daemon.clear();
      queued.emplace_back(e.rec.updated_at, id);
    } else if (!is_terminal(e.rec.state) && !e.daemon.empty()) {
      // Waits for its daemon; the lease counts from now.
      auto& d = out.daemons[e.daemon];
      d.id = e.daemon;
      d.last_frame = now;
      d.tasks.insert(id);
    } else if (!is_terminal(e.rec.state)) {
      queued.emplace_back(e.rec.updated_at, id);
      e.rec.state = task_state::queued;
    }
  }
  std::sort(queued.begin(), queued.end());
  for (auto& q : queued)
    out.queue.push_back(q.second);
  return out;
}

server_actor::behavior_type server_fn(self_ptr self, server_settings settings,
                                      std::shared_ptr<store::db> db,
                                      std::shared_ptr<net::server> net,
                                      std::shared_ptr<shared_counters> counters,
                                      std::shared_ptr<loaded_state> loaded) {
  auto& st = self->state;
  st.settings = std::move(settings);
  st.db = std::move(db);
  st.net = std::move(net);
  st.counters = std::move(counters);
  st.tasks = std::move(loaded->tasks);
  st.queue = std::move(loaded->queue);
  st.daemons = std::move(loaded->daemons);
  st.latency_counts.assign(latency_bounds().size(), 0);
  st.last_keep_alive = clock::now();
  self->delayed_send(self, tick_interval(st.settings), tick_atom::value);
  self->set_exit_handler([self](caf::exit_msg& msg) {
    // Stopping: a pending drain is over too.
    for (auto& p : self->state.drain_waiters)
      p.deliver(ok_atom::value);
    self->state.drain_waiters.clear();
    self->quit(msg.reason);
  });
  return {
      [=](http_atom, net::request& req, net::http_reply& reply) {
        handle_http(self, req, reply);
      },
      [=](ws_open_atom, uint64_t conn) {
        self->state.conns[conn];
        self->delayed_send(self, self->state.settings.hello_timeout,
                           hello_atom::value, conn);
      },
      [=](ws_text_atom, uint64_t conn, std::string& text) {
        on_text(self, conn, text);
      },
      [=](ws_close_atom, uint64_t conn, uint16_t code) {
        on_close(self, conn, code);
      },
      [=](hello_atom, uint64_t conn) {
        auto c = self->state.conns.find(conn);
        if (c != self->state.conns.end() && !c->second.hello
            && !c->second.closing)
          reject(self, conn, "hello_required", "no hello in time",
                 proto::close_hello_required);
      },
      [=](tick_atom) {
        check_leases(self);
        keep_alive(self->state);
        self->delayed_send(self, tick_interval(self->state.settings),
                           tick_atom::value);
      },
      [=](flush_atom) { flush_acks(self); },
      [=](timeout_atom) { dispatch(self); },
      [=](stop_atom) -> caf::result<ok_atom> {
        auto& st = self->state;
        st.stopping = true;
        for (auto& [id, c] : st.conns) {
          if (!c.closing)
            st.net->close(id, proto::close_going_away, "going away");
          c.closing = true;
        }
        if (st.conns.empty())
          return ok_atom::value;
        auto p = self->make_response_promise<ok_atom>();
        st.drain_waiters.push_back(p);
        return p;
      },
      [=](drain_atom) -> caf::result<ok_atom> {
        auto& st = self->state;
        if (!st.draining) {
          st.draining = true;
          log::info("server", "draining: no more assignments");
          for (auto& [id, c] : st.conns)
            if (c.hello && !c.closing)
              send_frame(self, id, proto::drain{"shutdown"});
        }
        if (st.conns.empty())
          return ok_atom::value;
        auto p = self->make_response_promise<ok_atom>();
        st.drain_waiters.push_back(p);
        return p;
      },
  };
}

// -- authentication -----------------------------------------------------------

/// SHA-256 digests of a set of keys, compared in constant time (§2).
class key_set {
public:
  explicit key_set(const std::vector<std::string>& keys) {
    for (auto& k : keys)
      digests_.push_back(digest(k));
  }
  /// Compares against every key, without an early exit.
  bool matches(const std::string& key) const {
    auto d = digest(key);
    int found = 0;
    for (auto& x : digests_)
      found |= CRYPTO_memcmp(d.data(), x.data(), d.size()) == 0 ? 1 : 0;
    return found != 0;
  }

private:
  using sha = std::array<unsigned char, SHA256_DIGEST_LENGTH>;
  static sha digest(const std::string& k) {
    sha out;
    SHA256(reinterpret_cast<const unsigned char*>(k.data()), k.size(),
           out.data());
    return out;
  }
  std::vector<sha> digests_;
};

struct authenticator {
  key_set users;
  key_set daemons;
  bool no_auth = false;

  enum verdict { ok, unauthorized, forbidden, duplicate };

  /// The key `need`s (docs/protocol.md §2). More than one Authorization
  /// header is refused whatever the route: which one counts would be a
  /// guess, and proxies and the server might guess differently.
  verdict check(const net::request& req, access need) const {
    auto& rep = req.repeated_headers;
    if (std::find(rep.begin(), rep.end(), "authorization") != rep.end())
      return duplicate;
    if (need == access::open || no_auth)
      return ok;
    std::string key;
    auto h = req.headers.find("authorization");
    if (h != req.headers.end() && h->second.size() > 7
        && strncasecmp(h->second.c_str(), "Bearer ", 7) == 0)
      key = h->second.substr(7);
    if (key.empty())
      return unauthorized;
    bool user = users.matches(key);
    bool daemon = daemons.matches(key);
    bool daemon_endpoint = need == access::daemon;
    if (daemon_endpoint ? daemon : user)
      return ok;
    return (daemon_endpoint ? user : daemon) ? forbidden : unauthorized;
  }
};

net::response error_response(unsigned status, const char* code,
                             const std::string& message) {
  net::response res;
  res.status = status;
  nlohmann::json j{{"error", {{"code", code}, {"message", message}}}};
  res.body = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return res;
}

net::response auth_response(authenticator::verdict v) {
  if (v == authenticator::duplicate)
    return error_response(400, "duplicate_authorization",
                          "more than one Authorization header");
  auto res =
      v == authenticator::unauthorized
          ? error_response(401, "unauthorized", "missing or unknown API key")
          : error_response(403, "forbidden",
                           "this key may not use this endpoint");
  res.headers["WWW-Authenticate"] = "Bearer";
  return res;
}

/// What the io thread decides before a request (or a WebSocket upgrade)
/// reaches the SERVER actor: a refusal to send, or nullopt to pass it on.
/// The target is read by parse_target, the same function the actor routes
/// with, so what is authenticated is what is dispatched.
std::optional<net::response> admit(const authenticator& auth,
                                   shared_counters& counters,
                                   const net::request& req) {
  auto t = parse_target(req.target);
  if (!t) {
    std::lock_guard<std::mutex> guard{counters.mtx};
    ++counters.bad_target;
    ++counters.http_codes[400];
    return error_response(400, "bad_target",
                          "the request target is not canonical: " + t.error);
  }
  auto v = auth.check(req, access_for(t.value));
  if (v == authenticator::ok)
    return std::nullopt;
  auto res = auth_response(v);
  std::lock_guard<std::mutex> guard{counters.mtx};
  ++counters.auth_rejected;
  ++counters.http_codes[res.status];
  return res;
}

/// Watches the SERVER actor for the node (attach_functor): set when it
/// terminates, whether by stop() or not.
struct actor_watch {
  std::atomic<bool> down{false};
  /// stop() was called: an end is expected.
  std::atomic<bool> stopping{false};
  /// It ended before stop() was called.
  std::atomic<bool> failed{false};
};

} // namespace server_detail

// -- server_node --------------------------------------------------------------

struct server_node::impl {
  caf::actor_system* sys = nullptr;
  server_settings settings;
  std::shared_ptr<store::db> db;
  std::unique_ptr<net::io_thread> io;
  std::shared_ptr<net::server> net;
  std::shared_ptr<server_detail::actor_watch> watch;
  bool tls = false;
  bool stopped = false;
};

server_node::server_node(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

server_node::~server_node() {
  stop();
}

caf::expected<std::unique_ptr<server_node>>
server_node::start(caf::actor_system& sys, server_settings settings) {
  using namespace server_detail;
  auto p = std::make_unique<impl>();
  p->sys = &sys;
  p->settings = settings;
  std::error_code dir_err;
  std::filesystem::create_directories(settings.db_dir, dir_err);
  store::db_options dbo;
  dbo.sync = settings.sync;
  auto db = store::db::open(settings.db_dir, dbo);
  if (!db)
    return db.error();
  p->db = std::shared_ptr<store::db>(std::move(*db));
  auto loaded = load(*p->db);
  if (!loaded)
    return loaded.error();
  auto auth = std::make_shared<authenticator>(
      authenticator{key_set{settings.user_keys}, key_set{settings.daemon_keys},
                    settings.no_auth});
  auto counters = std::make_shared<shared_counters>();
  auto slot = std::make_shared<server_actor>();
  net::server_options opts;
  opts.host = settings.host;
  opts.port = settings.port;
  opts.max_frame_bytes = settings.max_frame_bytes;
  opts.max_body_bytes = settings.max_body_bytes;
  opts.tls_cert_file = settings.tls_cert;
  opts.tls_key_file = settings.tls_key;
  p->tls = !settings.tls_cert.empty() && !settings.tls_key.empty();
  auto watch = std::make_shared<actor_watch>();
  p->watch = watch;
  auto http = [slot, auth, counters, watch](net::request req,
                                            net::http_reply reply) {
    if (auto refused = admit(*auth, *counters, req)) {
      reply.send(std::move(*refused));
      return;
    }
    if (watch->down) {
      // Nobody would answer (and /healthz must not look healthy): the
      // process is about to exit (makima server exits 125).
      {
        std::lock_guard<std::mutex> guard{counters->mtx};
        ++counters->http_codes[503];
      }
      reply.send(
          error_response(503, "unavailable", "the server is not running"));
      return;
    }
    caf::anon_send(*slot, http_atom::value, std::move(req), std::move(reply));
  };
  net::ws_handler ws;
  ws.on_upgrade = [auth, counters, watch](
                      const net::request& req) -> std::optional<net::response> {
    if (auto refused = admit(*auth, *counters, req))
      return refused;
    if (watch->down)
      return error_response(503, "unavailable", "the server is not running");
    return std::nullopt;
  };
  ws.on_open = [slot](net::conn_id id, const net::request&) {
    caf::anon_send(*slot, ws_open_atom::value, uint64_t{id});
  };
  ws.on_text = [slot](net::conn_id id, std::string text) {
    caf::anon_send(*slot, ws_text_atom::value, uint64_t{id}, std::move(text));
  };
  ws.on_close = [slot](net::conn_id id, uint16_t code, std::string) {
    caf::anon_send(*slot, ws_close_atom::value, uint64_t{id}, code);
  };
  p->io = std::make_unique<net::io_thread>();
  p->net = std::make_shared<net::server>(*p->io, opts, std::move(http),
                                         std::move(ws));
  auto ls = std::make_shared<loaded_state>(std::move(*loaded));
  auto actor = sys.spawn<caf::detached>(server_fn, settings, p->db, p->net,
                                        counters, ls);
  *slot = actor;
  // Whatever ends the actor other than stop() leaves the node failed():
  // the process must exit rather than answer every request with an error.
  actor->attach_functor([watch](const caf::error& reason) {
    watch->down = true;
    if (watch->stopping)
      return;
    watch->failed = true;
    log::error("server", std::string{"the SERVER actor terminated"}
                             + (reason ? ": " + describe(reason) : ""));
  });
  auto port = p->net->start();
  std::unique_ptr<server_node> node{new server_node(std::move(p))};
  node->actor_ = actor;
  if (!port) {
    auto err = port.error();
    node->stop();
    return err;
  }
  node->port_ = *port;
  return node;
}

std::string server_node::url() const {
  return std::string{impl_->tls ? "https://" : "http://"} + impl_->settings.host
         + ":" + std::to_string(port_);
}

std::string server_node::ws_url() const {
  return std::string{impl_->tls ? "wss://" : "ws://"} + impl_->settings.host
         + ":" + std::to_string(port_) + "/ws/daemon";
}

bool server_node::drain(std::chrono::milliseconds bound) {
  if (impl_->stopped)
    return true;
  bool ok = false;
  caf::scoped_actor self{*impl_->sys};
  self->request(actor_, bound, drain_atom::value)
      .receive([&](ok_atom) { ok = true; }, [&](caf::error&) { ok = false; });
  return ok;
}

bool server_node::failed() const {
  auto& w = impl_->watch;
  return w && w->failed;
}

void server_node::stop() {
  if (!impl_ || impl_->stopped)
    return;
  impl_->stopped = true;
  if (impl_->watch)
    impl_->watch->stopping = true;
  if (actor_) {
    caf::scoped_actor self{*impl_->sys};
    // Daemons still connected are told the server goes away (1001).
    self->request(actor_, std::chrono::seconds(2), stop_atom::value)
        .receive([](ok_atom) {}, [](caf::error&) {});
    self->monitor(actor_);
    self->send_exit(actor_, caf::exit_reason::user_shutdown);
    self->receive(
        [](const caf::down_msg&) {},
        caf::after(std::chrono::seconds(30)) >>
            [] { log::error("server", "the SERVER actor did not stop"); });
    actor_ = server_actor{};
  }
  if (impl_->net)
    impl_->net->stop();
  if (impl_->io)
    impl_->io->stop();
  impl_->net.reset();
  impl_->db.reset();
}

} // namespace makima
