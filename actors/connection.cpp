// The CONNECTION actor (docs/protocol.md, daemon side):
//
//   start → load outbox, recover (interrupted attempts get a `result`
//         event) → connect → hello → welcome: drop what is acked, replay
//         the rest in seq order → stream new events, heartbeats
//         → connection lost: reconnect with full-jitter backoff
//
// Every event is written to the outbox (PERSISTENCE) before it is sent;
// an output batch's `ok` goes back to the TASK only after that write, and
// is held while the outbox is over the window (backpressure). The frames
// and the window counts live in one outbox_window (outbox_window.hpp).
#include "actors/connection.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <system_error>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/protocol.hpp"
#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"
#include "runtime/net/net.hpp"

namespace makima {

namespace {

using conn_ptr = connection_actor::stateful_pointer<connection_state>;
using attempt_key = connection_state::attempt_key;
using phase = connection_state::phase;

constexpr const char* component = "connection";

std::string describe_key(const attempt_key& key) {
  return to_string(key);
}

std::chrono::milliseconds seconds_to_ms(double s) {
  return std::chrono::milliseconds{static_cast<int64_t>(s * 1000)};
}

// Sends one frame on the current connection.
void send_frame(conn_ptr self, const proto::frame& f) {
  auto& st = self->state;
  if (!st.client)
    return;
  st.client->send(proto::encode(f));
  st.last_sent = now_ms();
}

// Sends an error frame and closes the connection with the code that goes
// with it (§9); the close callback then reconnects.
void protocol_error(conn_ptr self, const std::string& code,
                    const std::string& message, uint16_t close) {
  auto& st = self->state;
  log::warn(component, "bad frame from the server (" + code + "): " + message);
  if (!st.client || st.ph == phase::closing)
    return;
  send_frame(self, proto::error{code, message, {}, 0});
  st.client->close(close, code);
  st.ph = phase::closing;
}

// Hands held output `ok`s back to TASK actors while under the window.
void release_held(conn_ptr self) {
  auto& st = self->state;
  while (!st.held.empty() && st.window.under_window()) {
    st.held.front().deliver(ok_atom::value);
    st.held.pop_front();
  }
}

void finish(conn_ptr self, int status);

// Closes with 1000 once a drain is complete: nothing running, nothing
// unacked.
void check_drained(conn_ptr self) {
  auto& st = self->state;
  if (!st.draining || st.pending_writes > 0)
    return;
  if (st.ph != phase::welcomed && !(st.evicting && st.ph != phase::closing))
    return;
  for (auto& [key, a] : st.window.attempts())
    if (a.active || !a.frames.empty())
      return;
  if (st.ph != phase::welcomed) {
    // Evicted while away from the server, with nothing left to tell it.
    log::info(component, "evicted: nothing running, nothing unacked");
    finish(self, 0);
    return;
  }
  log::info(component, "drained: every attempt finished and acked");
  st.client->close(proto::close_normal, "drained");
  st.ph = phase::closing;
  st.drain_closed = true;
}

// The largest frame the server reads: its welcome's max_frame_bytes, or
// our own limit before the first welcome.
uint64_t frame_limit(const connection_state& st) {
  return st.server_max_frame > 0 ? st.server_max_frame
                                 : st.opts.max_frame_bytes;
}

// Sends the persisted events each attempt has beyond what was sent, in seq
// order, within the window.
void pump(conn_ptr self) {
  auto& st = self->state;
  if (st.ph != phase::welcomed)
    return;
  auto limit = frame_limit(st);
  auto next = st.window.next_to_send(limit);
  for (auto& h : next.held)
    log::error(component,
               "event " + std::to_string(h.seq) + " of " + describe_key(h.key)
                   + " takes " + std::to_string(h.bytes)
                   + " bytes, over the server's frame limit of "
                   + std::to_string(limit) + "; holding the attempt's events");
  for (auto* frame : next.frames) {
    st.client->send(*frame);
    st.last_sent = now_ms();
  }
}

// Writes event `ev` of `key` to the outbox (assigning its seq) and queues
// it for sending; `done` runs after the write.
void write_event(conn_ptr self, const attempt_key& key, proto::event ev,
                 std::function<void()> done = {}) {
  auto& st = self->state;
  auto& a = st.window.attempts()[key];
  ev.task = key.task;
  ev.attempt = key.attempt;
  ev.seq = ++a.last_seq;
  ev.at = now_ms();
  bool finished = ev.kind == proto::event_kind::result;
  if (finished) {
    a.finished = true;
    a.active = false;
  }
  auto frame = proto::encode(ev);
  if (frame.size() > frame_limit(st) && ev.kind != proto::event_kind::output) {
    // The server keeps its own spec and ignores the record's: without
    // argv and env the record fits (submit leaves room for the rest).
    ev.record.spec.argv.clear();
    ev.record.spec.env.clear();
    frame = proto::encode(ev);
  }
  auto seq = ev.seq;
  auto at = ev.at;
  st.pending_writes += 1;
  auto stored = [self, key, seq, at, done](std::string frame) {
    auto& st = self->state;
    st.pending_writes -= 1;
    if (st.fenced.count(key) == 0
        && st.window.stored(key, seq, std::move(frame), at))
      pump(self);
    if (done)
      done();
    check_drained(self);
  };
  self->request(st.persistence, caf::infinite, outbox_atom::value,
                outbox_write{key, seq, frame, finished})
      .then([stored, frame](ok_atom) mutable { stored(std::move(frame)); },
            [stored, frame, key](caf::error& err) mutable {
              // Sending it anyway beats a seq gap; it is only not durable.
              log::error(component, "cannot write event of " + describe_key(key)
                                        + " to the outbox: " + describe(err));
              stored(std::move(frame));
            });
}

// Applies a cumulative ack of `key` up to `seq`.
// A state or result event of the record's attempt, unless it was fenced.
void report_record(conn_ptr self, proto::event_kind kind, task_record rec,
                   std::optional<restore_report> restore = {}) {
  attempt_key key{rec.spec.id, rec.attempt};
  if (self->state.fenced.count(key) > 0)
    return;
  proto::event ev;
  ev.kind = kind;
  ev.record = std::move(rec);
  ev.restore = std::move(restore);
  write_event(self, key, std::move(ev));
}

void apply_ack(conn_ptr self, const attempt_key& key, uint64_t seq) {
  auto& st = self->state;
  auto r = st.window.ack(key, seq);
  if (r.clamped)
    log::warn(component, "server acked seq " + std::to_string(seq) + " of "
                             + describe_key(key) + ", which has only "
                             + std::to_string(r.last_seq) + " events");
  if (!r.applied)
    return;
  self->request(st.persistence, caf::infinite, ack_atom::value,
                outbox_ack{key, r.seq, r.forget})
      .then([](ok_atom) {},
            [key](caf::error& err) {
              log::error(component, "cannot delete acked events of "
                                        + describe_key(key) + ": "
                                        + describe(err));
            });
  if (r.forget)
    st.done.insert(key);
  release_held(self);
  pump(self);
  check_drained(self);
}

// Forgets everything of a fenced attempt and kills it at once.
void fence(conn_ptr self, const attempt_key& key, const std::string& why) {
  auto& st = self->state;
  st.fenced.insert(key);
  auto a = st.window.fence(key);
  if (a && a->active && st.daemon)
    self->send(st.daemon, cancel_atom::value, key.task, kill_atom::value);
  log::warn(component, "attempt " + describe_key(key) + " " + why
                           + ": killed, its unsent events dropped");
  self->request(st.persistence, caf::infinite, drop_atom::value, key)
      .then([](ok_atom) {},
            [key](caf::error& err) {
              log::error(component, "cannot drop the outbox of "
                                        + describe_key(key) + ": "
                                        + describe(err));
            });
  release_held(self);
  pump(self);
  check_drained(self);
}

proto::hello make_hello(conn_ptr self) {
  auto& st = self->state;
  proto::hello h;
  h.daemon_id = st.daemon_id;
  h.name = st.opts.name;
  h.pool = st.opts.pool;
  h.labels = st.opts.labels;
  h.capacity = st.opts.capacity;
  std::error_code err;
  auto space = std::filesystem::space(st.opts.data_dir, err);
  h.free_disk_bytes = err ? 0 : space.available;
  h.cached_repos = git::mirror_origins(st.opts.repos_dir);
  h.checkpoints = st.opts.checkpoints;
  for (auto& [key, a] : st.window.attempts())
    h.running.push_back(proto::attempt_seq{key.task, key.attempt, a.last_seq});
  h.version = st.opts.version;
  return h;
}

void schedule_reconnect(conn_ptr self);

// Forgets the current connection (what was sent but not acked is sent
// again on the next one).
void disconnected(conn_ptr self) {
  auto& st = self->state;
  st.client.reset();
  if (st.hooks.ready)
    *st.hooks.ready = false;
  st.window.disconnected();
  st.ph = phase::waiting;
}

void tick(conn_ptr self) {
  auto& st = self->state;
  auto interval = std::clamp(st.heartbeat / 4, 0.02, 1.0);
  self->delayed_send(self, seconds_to_ms(interval), tick_atom::value,
                     st.generation);
}

void connect(conn_ptr self) {
  auto& st = self->state;
  auto gen = ++st.generation;
  auto me = caf::actor_cast<connection_actor>(self);
  net::ws_client::handlers h;
  h.on_open = [me, gen] { caf::anon_send(me, ws_open_atom::value, gen); };
  h.on_text = [me, gen](std::string text) {
    caf::anon_send(me, ws_text_atom::value, gen, std::move(text));
  };
  h.on_close = [me, gen](uint16_t code, std::string reason, unsigned status) {
    caf::anon_send(me, ws_close_atom::value, gen, code, std::move(reason),
                   static_cast<uint32_t>(status));
  };
  net::ws_client_options opts;
  if (!st.opts.api_key.empty())
    opts.headers.emplace_back("Authorization", "Bearer " + st.opts.api_key);
  opts.max_frame_bytes = st.opts.max_frame_bytes;
  opts.ca_file = st.opts.ca_file;
  st.client = std::make_unique<net::ws_client>(*st.io, std::move(h), opts);
  st.ph = phase::connecting;
  st.last_received = now_ms();
  if (auto err = st.client->connect(st.opts.url)) {
    st.failure = describe(err);
    st.client.reset();
    st.ph = phase::waiting;
    schedule_reconnect(self);
    return;
  }
  tick(self);
}

void schedule_reconnect(conn_ptr self) {
  auto& st = self->state;
  if (st.stopping)
    return;
  auto cap = st.opts.backoff_cap;
  if (st.lease > 0)
    cap = std::min(cap, st.lease / 3);
  auto limit =
      std::min(cap, st.opts.backoff_base
                        * std::pow(2.0, std::min<uint32_t>(st.failures, 30)));
  std::uniform_real_distribution<double> dist(0, limit);
  auto delay = dist(st.rng);
  st.failures += 1;
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", delay);
  if (!st.failure.empty())
    log::warn(component, "cannot reach " + log::redact(st.opts.url) + ": "
                             + st.failure + "; retrying in " + secs
                             + " s (attempt " + std::to_string(st.failures)
                             + ")");
  else
    log::info(component, std::string{"reconnecting in "} + secs + " s");
  st.failure.clear();
  self->delayed_send(self, seconds_to_ms(delay), connect_atom::value,
                     st.generation);
}

void finish(conn_ptr self, int status) {
  auto& st = self->state;
  if (st.ph == phase::stopped)
    return;
  st.ph = phase::stopped;
  st.client.reset();
  if (st.hooks.ready)
    *st.hooks.ready = false;
  if (st.hooks.on_exit)
    st.hooks.on_exit(status);
  self->quit();
}

void on_welcome(conn_ptr self, proto::welcome& w) {
  auto& st = self->state;
  st.ph = phase::welcomed;
  st.failures = 0;
  if (w.heartbeat > 0)
    st.heartbeat = w.heartbeat;
  if (w.lease > 0)
    st.lease = w.lease;
  st.server_max_frame = w.max_frame_bytes;
  if (st.hooks.ready)
    *st.hooks.ready = !st.draining;
  if (st.hooks.on_welcome)
    st.hooks.on_welcome(log::redact(st.opts.url));
  if (st.evicting)
    send_frame(self, proto::drain{"evicted"});
  for (auto& a : w.acked)
    apply_ack(self, {a.task, a.attempt}, a.seq);
  pump(self);
  check_drained(self);
}

void on_assign(conn_ptr self, task_record& rec) {
  auto& st = self->state;
  attempt_key key{rec.spec.id, rec.attempt};
  if (st.evicting && st.window.attempts().count(key) == 0) {
    // Sent before the server read our `drain`: hand it back at once (a
    // `migrating` result re-queues it) instead of leaving it to the lease.
    log::warn(component, "evicted: handing back assignment of "
                             + describe_key(key));
    rec.state = task_state::migrating;
    rec.updated_at = rec.finished_at = now_ms();
    st.window.attempts()[key].active = true;
    proto::event ev;
    ev.kind = proto::event_kind::result;
    ev.record = std::move(rec);
    write_event(self, key, std::move(ev));
    return;
  }
  if (st.draining) {
    log::warn(component,
              "draining: ignoring assignment of " + describe_key(key));
    return;
  }
  if (st.window.attempts().count(key) > 0 || st.fenced.count(key) > 0
      || st.done.count(key) > 0) {
    log::warn(component,
              "ignoring duplicate assignment of " + describe_key(key));
    return;
  }
  st.window.attempts()[key].active = true;
  rec.state = task_state::preparing;
  rec.updated_at = now_ms();
  // The local record follows the server's: an attempt n+1 of a task this
  // node ran before replaces it (put, not create).
  self->request(st.persistence, caf::infinite, put_atom::value, rec)
      .then(
          [self, rec](ok_atom) mutable {
            self->send(self->state.daemon, assign_atom::value, std::move(rec));
          },
          [self, rec](caf::error& err) mutable {
            log::error(component, "cannot store assignment of " + rec.spec.id
                                      + ": " + describe(err));
            self->send(self->state.daemon, assign_atom::value, std::move(rec));
          });
}

void on_frame(conn_ptr self, std::string& text) {
  auto& st = self->state;
  st.last_received = now_ms();
  auto decoded = proto::decode(text);
  if (auto* bad = std::get_if<proto::decode_failure>(&decoded)) {
    protocol_error(self, bad->code, bad->message, bad->close);
    return;
  }
  auto& f = std::get<proto::frame>(decoded);
  if (st.ph == phase::hello_sent) {
    if (auto* w = std::get_if<proto::welcome>(&f)) {
      on_welcome(self, *w);
      return;
    }
    if (auto* e = std::get_if<proto::error>(&f)) {
      log::error(component, "server error before welcome (" + e->code
                                + "): " + e->message);
      return;
    }
    protocol_error(self, "bad_message", "expected welcome",
                   proto::close_policy);
    return;
  }
  if (st.ph != phase::welcomed)
    return; // closing: the rest is moot
  std::visit(
      [&](auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, proto::assign>) {
          on_assign(self, m.record);
        } else if constexpr (std::is_same_v<T, proto::cancel>) {
          attempt_key key{m.task, m.attempt};
          if (m.reason == "fenced" || m.reason == "lease") {
            fence(self, key, "fenced by the server (" + m.reason + ")");
          } else {
            auto i = st.window.attempts().find(key);
            if (i != st.window.attempts().end() && i->second.active)
              self->send(st.daemon, cancel_atom::value, m.task);
            else
              log::info(component, "cancel of " + describe_key(key)
                                       + ", which does not run here");
          }
        } else if constexpr (std::is_same_v<T, proto::checkpoint_now>
                             || std::is_same_v<T, proto::migrate>) {
          attempt_key key{m.task, m.attempt};
          constexpr bool is_migrate = std::is_same_v<T, proto::migrate>;
          auto i = st.window.attempts().find(key);
          if (i == st.window.attempts().end() || !i->second.active) {
            if (!is_migrate)
              send_frame(self, proto::error{"checkpoint_failed",
                                            "attempt " + describe_key(key)
                                                + " does not run here",
                                            m.task, m.attempt});
            log::info(component, std::string{is_migrate ? "migrate" : "checkpoint"}
                                     + " of " + describe_key(key)
                                     + ", which does not run here");
          } else if constexpr (is_migrate) {
            log::info(component, "the server moves " + describe_key(key)
                                     + " to another daemon");
            self->send(st.daemon, evict_atom::value, m.task);
          } else {
            self->send(st.daemon, checkpoint_atom::value, m.task);
          }
        } else if constexpr (std::is_same_v<T, proto::drain>) {
          log::warn(component, "server asked to drain (" + m.reason
                                   + "): taking no new work");
          st.draining = true;
          if (st.hooks.ready)
            *st.hooks.ready = false;
          check_drained(self);
        } else if constexpr (std::is_same_v<T, proto::ack>) {
          apply_ack(self, {m.task, m.attempt}, m.seq);
        } else if constexpr (std::is_same_v<T, proto::heartbeat>) {
          // Liveness only (last_received is set above).
        } else if constexpr (std::is_same_v<T, proto::error>) {
          log::warn(component, "server error (" + m.code + "): " + m.message);
        } else if constexpr (std::is_same_v<T, proto::welcome>) {
          protocol_error(self, "bad_message", "second welcome",
                         proto::close_policy);
        } else {
          protocol_error(self, "bad_message",
                         "a daemon-to-server frame from the server",
                         proto::close_policy);
        }
      },
      f);
}

// Output chunks grouped so that one event carries at most
// proto::max_event_output_bytes raw bytes (a larger chunk goes alone: the
// reactor reads 64 KiB at most, and a chunk's seq cannot be split).
// Also at most `frame_bytes` encoded: each chunk costs its base64 plus its
// JSON fields, an event its envelope (task id <= 64 bytes).
std::vector<std::vector<output_chunk>>
split_output(std::vector<output_chunk>& chunks, uint64_t frame_bytes) {
  constexpr size_t envelope = 512;
  constexpr size_t per_chunk = 64;
  size_t budget = frame_bytes > envelope ? frame_bytes - envelope : 0;
  std::vector<std::vector<output_chunk>> out;
  size_t bytes = 0;
  size_t encoded = 0;
  for (auto& c : chunks) {
    size_t cost = (c.bytes.size() + 2) / 3 * 4 + per_chunk;
    if (out.empty()
        || ((bytes + c.bytes.size() > proto::max_event_output_bytes
             || encoded + cost > budget)
            && !out.back().empty())) {
      out.emplace_back();
      bytes = 0;
      encoded = 0;
    }
    bytes += c.bytes.size();
    encoded += cost;
    out.back().push_back(std::move(c));
  }
  return out;
}

// Start: emits `result` events for attempts a dead process left behind,
// then connects.
void recover_then_connect(conn_ptr self) {
  auto& st = self->state;
  self->request(st.persistence, caf::infinite, recover_atom::value)
      .then(
          [self](std::vector<std::string>& interrupted) {
            std::set<std::string> ids(interrupted.begin(), interrupted.end());
            for (auto& [key, a] : self->state.window.attempts())
              if (!a.finished)
                ids.insert(key.task);
            if (ids.empty()) {
              connect(self);
              return;
            }
            self->request(self->state.persistence, caf::infinite,
                          list_atom::value)
                .then(
                    [self, ids](std::vector<task_record>& records) {
                      auto& st = self->state;
                      for (auto& rec : records) {
                        if (ids.count(rec.spec.id) == 0
                            || !is_terminal(rec.state))
                          continue;
                        attempt_key key{rec.spec.id, rec.attempt};
                        auto& attempts = st.window.attempts();
                        auto i = attempts.find(key);
                        if (i != attempts.end() && i->second.finished)
                          continue;
                        log::warn(component,
                                  "attempt " + describe_key(key) + " ended ("
                                      + to_string(rec.state)
                                      + ") while no makima reported it; "
                                        "sending its result");
                        proto::event ev;
                        ev.kind = proto::event_kind::result;
                        ev.record = rec;
                        write_event(self, key, std::move(ev));
                      }
                      connect(self);
                    },
                    [self](caf::error& err) {
                      log::error(component,
                                 "cannot list tasks: " + describe(err));
                      connect(self);
                    });
          },
          [self](caf::error& err) {
            log::error(component, "recovery failed: " + describe(err));
            connect(self);
          });
}

void start(conn_ptr self) {
  auto& st = self->state;
  auto fallback = "d-" + make_task_id();
  self->request(st.persistence, caf::infinite, meta_atom::value,
                std::string{"daemon_id"}, fallback)
      .then(
          [self](std::string& id) {
            self->state.daemon_id = std::move(id);
            self->request(self->state.persistence, caf::infinite,
                          outbox_atom::value)
                .then(
                    [self](outbox_contents& box) {
                      auto& w = self->state.window;
                      w.restore(box, now_ms());
                      if (!w.attempts().empty())
                        log::info(component,
                                  "outbox: "
                                      + std::to_string(w.attempts().size())
                                      + " attempt(s), "
                                      + std::to_string(w.unacked_events())
                                      + " unacked event(s)");
                      recover_then_connect(self);
                    },
                    [self](caf::error& err) {
                      log::error(component,
                                 "cannot load the outbox: " + describe(err));
                      finish(self, 1);
                    });
          },
          [self](caf::error& err) {
            log::error(component,
                       "cannot read the daemon id: " + describe(err));
            finish(self, 1);
          });
}

} // namespace

connection_actor::behavior_type
connection(connection_actor::stateful_pointer<connection_state> self,
           connection_options opts, connection_hooks hooks,
           persistence_actor persistence, std::shared_ptr<net::io_thread> io) {
  auto& st = self->state;
  st.opts = std::move(opts);
  st.hooks = std::move(hooks);
  st.persistence = std::move(persistence);
  st.io = std::move(io);
  st.heartbeat = st.opts.heartbeat;
  st.window = outbox_window{st.opts.window_events, st.opts.window_bytes};
  return {
      // -- LINK: what TASK actors did, already in the local DB --
      [self](output_atom, const std::string& id, uint32_t attempt,
             std::vector<output_chunk>& chunks) -> caf::result<ok_atom> {
        auto& st = self->state;
        attempt_key key{id, attempt};
        if (st.fenced.count(key) > 0 || chunks.empty())
          return ok_atom::value;
        auto rp = self->make_response_promise<ok_atom>();
        auto groups = split_output(chunks, frame_limit(st));
        auto remaining = std::make_shared<size_t>(groups.size());
        for (auto& g : groups) {
          proto::event ev;
          ev.kind = proto::event_kind::output;
          ev.chunks = std::move(g);
          write_event(self, key, std::move(ev),
                      [self, rp, remaining]() mutable {
                        if (--*remaining > 0)
                          return;
                        auto& st = self->state;
                        if (st.window.under_window() && st.held.empty())
                          rp.deliver(ok_atom::value);
                        else
                          st.held.push_back(rp);
                      });
        }
        return rp;
      },
      [self](state_atom, task_record& rec) {
        report_record(self, proto::event_kind::state, std::move(rec));
      },
      [self](state_atom, task_record& rec, restore_report& r) {
        report_record(self, proto::event_kind::state, std::move(rec),
                      std::move(r));
      },
      [self](result_atom, task_record& rec) {
        report_record(self, proto::event_kind::result, std::move(rec));
      },
      [self](checkpoint_atom, const std::string& id, uint32_t attempt,
             const checkpoint_report& r) {
        attempt_key key{id, attempt};
        if (self->state.fenced.count(key) > 0)
          return;
        proto::event ev;
        ev.kind = proto::event_kind::checkpoint;
        ev.checkpoint = {r.ref, r.covers_seq, r.bytes, r.blobs, r.pause_ms};
        write_event(self, key, std::move(ev));
      },
      [self](checkpoint_atom, const std::string& id, uint32_t attempt,
             const std::string& why) {
        attempt_key key{id, attempt};
        if (self->state.fenced.count(key) > 0 || self->state.ph != phase::welcomed)
          return;
        send_frame(self, proto::error{"checkpoint_failed", why, id, attempt});
      },
      [self](evict_atom) {
        auto& st = self->state;
        if (st.draining)
          return;
        log::warn(component, "evicted: taking no new work; closing once every "
                             "attempt ended and every event is acked");
        st.draining = true;
        st.evicting = true;
        if (st.hooks.ready)
          *st.hooks.ready = false;
        if (st.ph == phase::welcomed)
          send_frame(self, proto::drain{"evicted"});
        check_drained(self);
      },
      [](progress_atom, const task_progress& p) {
        // Not part of the protocol: phases go to the debug log only.
        if (p.finished)
          log::debug("task " + p.task, p.phase + " done in "
                                           + std::to_string(p.elapsed_ms)
                                           + " ms");
      },
      // -- wiring and transport --
      [self](start_atom, daemon_actor daemon) {
        self->state.daemon = std::move(daemon);
        start(self);
      },
      [self](ws_open_atom, uint64_t gen) {
        auto& st = self->state;
        if (gen != st.generation || st.ph != phase::connecting)
          return;
        st.ph = phase::hello_sent;
        st.last_received = now_ms();
        send_frame(self, make_hello(self));
      },
      [self](ws_text_atom, uint64_t gen, std::string& text) {
        if (gen != self->state.generation)
          return;
        on_frame(self, text);
      },
      [self](ws_close_atom, uint64_t gen, uint16_t code, std::string& reason,
             uint32_t http_status) {
        auto& st = self->state;
        if (gen != st.generation || st.ph == phase::stopped)
          return;
        bool was_draining = st.drain_closed;
        bool was_welcomed = st.ph == phase::welcomed;
        disconnected(self);
        if (st.stopping) {
          finish(self, 1);
          return;
        }
        if (was_draining) {
          finish(self, 0);
          return;
        }
        if (http_status == 401 || http_status == 403) {
          if (!st.auth_error_logged)
            log::error(component, "the server refused the daemon key (HTTP "
                                      + std::to_string(http_status)
                                      + "); retrying with backoff");
          // Once: the key will not change while the daemon retries.
          st.auth_error_logged = true;
        } else if (was_welcomed || code != 1006) {
          log::warn(component, "disconnected from " + log::redact(st.opts.url)
                                   + " (code " + std::to_string(code) + " "
                                   + reason + ")");
        } else {
          st.failure = reason.empty() ? "connection failed" : reason;
          if (http_status != 0)
            st.failure += " (HTTP " + std::to_string(http_status) + ")";
        }
        schedule_reconnect(self);
      },
      [self](connect_atom, uint64_t gen) {
        auto& st = self->state;
        if (gen != st.generation || st.ph != phase::waiting || st.stopping)
          return;
        connect(self);
      },
      [self](tick_atom, uint64_t gen) {
        auto& st = self->state;
        if (gen != st.generation || st.client == nullptr)
          return;
        tick(self);
        auto now = now_ms();
        if ((st.ph == phase::hello_sent || st.ph == phase::welcomed
             || st.ph == phase::closing)
            && now - st.last_received > st.heartbeat * 3000) {
          log::warn(component, "nothing from the server for "
                                   + std::to_string(now - st.last_received)
                                   + " ms; reconnecting");
          disconnected(self);
          if (st.stopping)
            finish(self, 1);
          else
            schedule_reconnect(self);
          return;
        }
        if (st.ph == phase::welcomed
            && now - st.last_sent >= st.heartbeat * 1000) {
          proto::heartbeat hb;
          int64_t oldest = 0;
          for (auto& [key, a] : st.window.attempts()) {
            if (a.active)
              hb.running += 1;
            if (!a.frames.empty()) {
              auto at = a.frames.begin()->second.second;
              oldest = oldest == 0 ? at : std::min(oldest, at);
            }
          }
          hb.outbox_events = st.window.unacked_events();
          hb.outbox_oldest_at = oldest;
          send_frame(self, hb);
        }
      },
      [self](stop_atom) {
        auto& st = self->state;
        if (st.stopping) {
          finish(self, 1); // the close did not complete in time
          return;
        }
        st.stopping = true;
        if (st.client
            && (st.ph == phase::welcomed || st.ph == phase::hello_sent)) {
          st.client->close(proto::close_going_away, "daemon stopping");
          st.ph = phase::closing;
          self->delayed_send(self, std::chrono::seconds(2), stop_atom::value);
          return;
        }
        finish(self, 1);
      },
  };
}

connection_actor spawn_connection(caf::actor_system& sys,
                                  connection_options opts,
                                  connection_hooks hooks,
                                  persistence_actor persistence,
                                  std::shared_ptr<net::io_thread> io) {
  return sys.spawn<caf::detached>(connection, std::move(opts), std::move(hooks),
                                  std::move(persistence), std::move(io));
}

} // namespace makima
