// The SERVER actor (actors.hpp): its behavior and the daemon side of
// docs/protocol.md §4-9 — hello/welcome, idempotent event storage with
// cumulative acks, fencing, leases, re-queueing and drain. `server_node`
// (server_node.hpp) wires the store, the actor and net::server together.
// What the handlers decide is pure code elsewhere: which task goes where
// (server_scheduler.hpp), the verdict on an event (server_events.hpp), the
// store mapping (server_store.hpp) and, on the io thread, authentication
// (server_auth.hpp). The HTTP API is in server_http.cpp.
#include "actors/server.hpp"
#include "actors/server_state.hpp"

#include <algorithm>
#include <atomic>
#include <optional>

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <nlohmann/json.hpp>

#include "actors/api.hpp"
#include "actors/server_auth.hpp"
#include "actors/server_events.hpp"
#include "actors/server_scheduler.hpp"
#include "actors/server_store.hpp"
#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"

namespace makima {

namespace server_detail {

void send_frame(self_ptr self, uint64_t conn, const proto::frame& f) {
  auto& st = self->state;
  auto c = st.conns.find(conn);
  st.net->send(conn, proto::encode(f, c != st.conns.end() ? c->second.v
                                                          : proto::version));
}

namespace {

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

} // namespace

void flush_acks(self_ptr self) {
  auto& st = self->state;
  st.flush_scheduled = false;
  for (auto& [id, c] : st.conns) {
    if (c.closing)
      continue;
    for (auto& [key, seq] : c.pending_acks)
      send_frame(self, id, proto::ack{key.task, key.attempt, seq});
    c.pending_acks.clear();
  }
}

namespace {

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
  d.checkpoints = h.checkpoints;
  d.version = h.version;
  d.protocol = h.v;
  d.draining = false; // a new hello is a new process
  c.v = h.v;
  d.conn = conn;
  d.connected = true;
  d.last_seen = now_ms();
  d.last_frame = clock::now();
  c.hello = true;
  c.daemon = d.id;
  log::info("server", "daemon " + d.id + " connected (name " + d.name
                          + ", pool " + (d.pool.empty() ? "-" : d.pool)
                          + ", capacity " + std::to_string(d.capacity) + ", "
                          + std::to_string(h.running.size()) + " running)");
  proto::welcome w;
  w.server_version = st.settings.version;
  w.heartbeat = st.settings.heartbeat;
  w.lease = st.settings.lease;
  w.max_frame_bytes = st.settings.max_frame_bytes;
  auto r = reconcile(st.tasks, d.id, h.running);
  w.acked = std::move(r.acked);
  send_frame(self, conn, w);
  for (auto& x : r.cancels)
    send_frame(self, conn, x);
  // Assigned attempts the daemon does not know (the assign was lost with
  // the old connection, or the daemon lost its data dir) run again.
  std::vector<std::string> lost;
  for (auto& id : d.tasks)
    if (!r.known.count(id))
      lost.push_back(id);
  for (auto& id : lost)
    requeue(self, st.tasks[id],
            "daemon " + d.id + " does not know attempt "
                + std::to_string(st.tasks[id].rec.attempt),
            "lost");
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
  auto where = [&] {
    return " of " + ev.task + " attempt " + std::to_string(ev.attempt);
  };
  auto v = classify(e, d.id, ev);
  switch (v.kind) {
  case event_verdict::accept:
    break;
  case event_verdict::unassigned:
    reject(self, conn, "bad_message",
           "attempt " + std::to_string(ev.attempt) + " of " + ev.task
               + " was never assigned to this daemon",
           proto::close_policy, ev.task, ev.attempt);
    return;
  case event_verdict::stale:
    reject(self, conn, "stale_attempt",
           "attempt " + std::to_string(ev.attempt) + " of " + ev.task
               + " was superseded",
           0, ev.task, ev.attempt);
    queue_ack(self, conn, ev.task, ev.attempt, ev.seq);
    flush_acks(self);
    send_frame(self, conn, proto::cancel{ev.task, ev.attempt, "fenced"});
    return;
  case event_verdict::duplicate:
    queue_ack(self, conn, ev.task, ev.attempt, e.acked);
    return;
  case event_verdict::after_result:
    reject(self, conn, "bad_message",
           "event " + std::to_string(ev.seq) + where() + " after its result",
           proto::close_policy, ev.task, ev.attempt);
    return;
  case event_verdict::seq_gap:
    reject(self, conn, "seq_gap",
           "event " + std::to_string(ev.seq) + where() + " after "
               + std::to_string(e.acked),
           proto::close_seq_gap, ev.task, ev.attempt);
    return;
  case event_verdict::output_gap:
    reject(self, conn, "seq_gap",
           "output seq " + std::to_string(v.got) + where() + " where "
               + std::to_string(v.expected) + " was expected",
           proto::close_seq_gap, ev.task, ev.attempt);
    return;
  case event_verdict::bad_result:
    reject(self, conn, "malformed", "result with non-terminal state",
           proto::close_invalid_payload, ev.task, ev.attempt);
    return;
  }
  auto stored = event_batch(e, d.id, ev, now_ms());
  if (auto err = st.db->write(std::move(stored.batch))) {
    reject(self, conn, "internal", "store failed: " + describe(err),
           proto::close_internal, ev.task, ev.attempt);
    return;
  }
  e.acked = ev.seq;
  if (ev.kind == proto::event_kind::checkpoint) {
    ++st.checkpoints;
    st.checkpoint_bytes += ev.checkpoint.bytes;
    st.checkpoint_pause_sum +=
        static_cast<double>(ev.checkpoint.pause_ms) / 1000;
    nlohmann::json body{{"ref", ev.checkpoint.ref},
                        {"covers_seq", ev.checkpoint.covers_seq},
                        {"bytes", ev.checkpoint.bytes},
                        {"pause_ms", ev.checkpoint.pause_ms}};
    answer_checkpoint_waiters(self, e, 200, body.dump());
  } else if (ev.kind == proto::event_kind::state && ev.restore) {
    auto& r = st.restores[ev.restore->cloned ? "cold" : "warm"];
    r.first += 1;
    r.second += static_cast<double>(ev.restore->total_ms) / 1000;
    st.restore_bytes += ev.restore->bytes_downloaded;
  } else if (ev.kind == proto::event_kind::result) {
    if (!e.checkpoint_waiters.empty())
      answer_checkpoint_waiters(
          self, e, 409,
          api::error_body(to_string(ec::bad_state),
                          "attempt " + std::to_string(ev.attempt)
                              + " ended before it was checkpointed"));
    if (!e.pull_waiters.empty()
        && ev.record.state != task_state::migrating) {
      for (auto& w : e.pull_waiters) {
        net::response res;
        res.status = 409;
        res.content_type = "application/json";
        res.body = api::error_body(
            to_string(ec::bad_state),
            "task " + ev.task + " ended " + to_string(ev.record.state)
                + " before it could be pulled");
        st.counters->count(409);
        w.send(std::move(res));
      }
      e.pull_waiters.clear();
    }
  }
  if (ev.kind != proto::event_kind::output)
    ++e.events;
  e.rec = std::move(stored.rec);
  e.checkpoints = std::move(stored.checkpoints);
  if (!stored.fresh.empty())
    notify_output(e, stored.fresh);
  queue_ack(self, conn, ev.task, ev.attempt, ev.seq);
  if (ev.kind == proto::event_kind::output
      || ev.kind == proto::event_kind::checkpoint)
    return;
  if (stored.requeue && e.rec.state == task_state::migrating
      && !e.pull_waiters.empty()) {
    auto daemon_id = d.id;
    d.tasks.erase(ev.task);
    e.daemon.clear();
    e.migrate_requested = false;
    if (hand_off(self, e, "pulled out of the fleet from daemon " + daemon_id)) {
      dispatch(self);
      return;
    }
  }
  if (stored.requeue) {
    auto cause = e.rec.state == task_state::migrating
                     ? (e.migrate_requested ? "on_demand" : "eviction")
                 : e.rec.state == task_state::restore_failed ? "restore_failed"
                                                             : "interrupted";
    e.migrate_requested = false;
    requeue(self, e, stored.detail, cause);
    dispatch(self);
    return;
  }
  notify_state(e);
  if (is_terminal(e.rec.state)) {
    log::info("server", "task " + e.rec.spec.id + " attempt "
                            + std::to_string(e.rec.attempt) + " "
                            + to_string(e.rec.state) + " (exit "
                            + (e.rec.exit_code < 0
                                   ? std::string{"-"}
                                   : std::to_string(e.rec.exit_code))
                            + ") on daemon " + d.id);
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
    auto t = st.tasks.find(err->task);
    if (err->code == "checkpoint_failed" && t != st.tasks.end()
        && t->second.rec.attempt == err->attempt
        && t->second.daemon == d->second.id)
      answer_checkpoint_waiters(
          self, t->second, 502,
          api::error_body("checkpoint_failed", err->message));
  } else if (auto dr = std::get_if<proto::drain>(&fr);
             dr && c->second.v >= 2) {
    // v2: the daemon takes no more assignments (evicted); what it runs
    // still reports (docs/protocol.md §14).
    log::info("server", "daemon " + d->second.id + " is draining ("
                            + dr->reason + "): assigning it nothing more");
    d->second.draining = true;
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

std::chrono::milliseconds tick_interval(const server_settings& s) {
  auto lease =
      std::chrono::milliseconds(static_cast<int64_t>(s.lease * 1000 / 4));
  auto t = std::min({lease, s.keep_alive, std::chrono::milliseconds{1000}});
  return std::max(t, std::chrono::milliseconds{10});
}

} // namespace

server_actor::behavior_type server(self_ptr self, server_settings settings,
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
  // The retry backoff of re-queued tasks survives a restart: what is left
  // of it counts from when the task was re-queued (its updated_at).
  {
    auto now = clock::now();
    auto wall = now_ms();
    for (auto& id : st.queue) {
      auto& e = st.tasks[id];
      auto left =
          remaining_backoff(st.settings, e.rec.attempt, e.rec.updated_at, wall);
      if (left.count() > 0) {
        e.not_before = now + left;
        self->delayed_send(self, left, timeout_atom::value);
      }
    }
  }
  for (auto& id : loaded->unrequeued) {
    auto& e = st.tasks[id];
    auto cause = e.rec.state == task_state::migrating        ? "eviction"
                 : e.rec.state == task_state::restore_failed ? "restore_failed"
                                                             : "interrupted";
    requeue(self, e,
            std::string{"attempt ended "} + to_string(e.rec.state)
                + " before the server stopped",
            cause);
  }
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
        expire_checkpoint_waiters(self);
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

server_actor spawn_server(caf::actor_system& sys, server_settings settings,
                          std::shared_ptr<store::db> db,
                          std::shared_ptr<net::server> net,
                          std::shared_ptr<shared_counters> counters,
                          std::shared_ptr<loaded_state> loaded) {
  return sys.spawn<caf::detached>(server, std::move(settings), std::move(db),
                                  std::move(net), std::move(counters),
                                  std::move(loaded));
}

} // namespace server_detail

} // namespace makima
