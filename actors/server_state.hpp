// Internals of the SERVER actor, shared by its files (not part of the
// public API: include server_node.hpp):
//   server.cpp           the behavior, the daemon protocol handlers (hello,
//                        events, acks, fencing), drain
//   server_node.cpp      the node: store + actor + listener (server_node.hpp)
//   server_tasks.cpp     assignment, re-queueing, leases, cancel
//   server_http.cpp      the HTTP API, SSE streams and /metrics
//   server_scheduler.hpp which queued task goes to which daemon (pure)
//   server_events.hpp    the verdict on a daemon's event (pure)
//   server_store.hpp     the mapping of tasks onto the server's store
//   server_auth.hpp      keys and the io thread's gate (plain code)
//   server_target.hpp    the canonical request target
//
// Server store layout (runtime/store/db.hpp column families):
//   tasks  : id -> record JSON; `next_seq` is recomputed from output on load
//   output : (id, output seq) -> chunk
//   events : (id, n) -> state_change JSON (history)
//   meta   : "k/task/" id -> {"attempt":A,"seq":S,"daemon":"D",
//            "checkpoints":[REF…]}: the highest stored event seq of attempt
//            A, the daemon A is assigned to (written in the batch of the
//            event, so an ack is exact) and the task's last known
//            checkpoints (docs/protocol.md §14)
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <caf/typed_response_promise.hpp>

#include "actors/actors.hpp"
#include "actors/protocol.hpp"
#include "actors/server.hpp"
#include "runtime/store/db.hpp"

namespace makima::server_detail {

using clock = std::chrono::steady_clock;

/// Counters shared between the io thread (auth refusals) and the actor.
struct shared_counters {
  std::mutex mtx;
  std::map<unsigned, uint64_t> http_codes;
  /// 401/403 and requests with more than one Authorization header.
  uint64_t auth_rejected = 0;
  /// Targets refused by parse_target (400).
  uint64_t bad_target = 0;
  /// HTTP handlers that threw (answered 500; the actor lives on).
  uint64_t handler_errors = 0;
  /// An answer with `status`.
  void count(unsigned status) {
    std::lock_guard<std::mutex> guard{mtx};
    ++http_codes[status];
  }
  /// A refusal of parse_target (answered 400).
  void count_bad_target() {
    std::lock_guard<std::mutex> guard{mtx};
    ++bad_target;
    ++http_codes[400];
  }
  /// A refusal of the authenticator, answered with `status`.
  void count_auth_rejected(unsigned status) {
    std::lock_guard<std::mutex> guard{mtx};
    ++auth_rejected;
    ++http_codes[status];
  }
  /// A handler that threw.
  void count_handler_error() {
    std::lock_guard<std::mutex> guard{mtx};
    ++handler_errors;
  }
};

/// An open `follow=1` output stream.
struct follower {
  net::http_reply reply;
  /// Whose stream it is (see stream_key in server_http.cpp), for the
  /// per-key bound.
  std::string key;
};

/// A task as the server holds it (the record is authoritative in memory and
/// written through to RocksDB before anything is reported).
struct task_entry {
  /// `next_seq` = the next output seq the server expects.
  task_record rec;
  /// Highest stored event seq of rec.attempt.
  uint64_t acked = 0;
  /// Daemon rec.attempt is assigned to ("" when queued).
  std::string daemon;
  /// Next history event number.
  uint64_t events = 0;
  /// When it (re-)entered the queue, for the dispatch latency.
  clock::time_point queued_at;
  /// A user cancel that still has to reach the daemon.
  bool cancel_requested = false;
  /// A re-queued task is not dispatched before this (retry backoff).
  clock::time_point not_before{};
  /// Why it was re-queued and the pool it ran in (the next assign counts
  /// the migration: makima_migrations_total); empty when not re-queued.
  std::string requeue_cause;
  std::string from_pool;
  /// POST …/checkpoint requests waiting for the daemon's next checkpoint
  /// event of the current attempt (or its failure), with their deadline.
  std::vector<std::pair<net::http_reply, clock::time_point>>
      checkpoint_waiters;
  /// Why it waits although a daemon is free (said once in its history
  /// per wait; cleared when it is assigned or re-queued).
  std::string waiting;
  /// POST …/migrate asked the daemon to end the attempt: its `migrating`
  /// result is counted as on_demand, not as an eviction.
  bool migrate_requested = false;
  /// POST …/pull waiting for that result: the task then ends handed_off
  /// at its final checkpoint instead of being re-queued.
  std::vector<net::http_reply> pull_waiters;
  /// Its last acknowledged checkpoints, oldest first (at most
  /// max_known_checkpoints; the meta key keeps them): where a re-queued
  /// attempt resumes from, and the fallbacks when a restore fails.
  std::vector<std::string> checkpoints;
  std::vector<follower> followers;
};

/// A daemon that said hello (or that holds tasks after a server restart).
struct daemon_entry {
  std::string id;
  std::string name;
  std::string pool;
  std::string version;
  std::map<std::string, std::string> labels;
  uint32_t capacity = 0;
  std::vector<std::string> cached_repos;
  /// Its hello's `checkpoints`: false = it has no checkpoint store and gets
  /// no task that resumes from a checkpoint; nullopt = it did not say (v1,
  /// or an older v2 daemon): it is treated as before the field.
  std::optional<bool> checkpoints;
  /// The protocol version of its hello (what the server speaks to it).
  int protocol = proto::version;
  /// It sent `drain` (v2, evicted): it gets no more assignments.
  bool draining = false;
  uint64_t conn = 0;
  bool connected = false;
  /// Wall clock (ms) and steady time of the last frame received.
  int64_t last_seen = 0;
  clock::time_point last_frame;
  /// Non-terminal tasks assigned to it.
  std::set<std::string> tasks;
  uint64_t outbox_events = 0;
};

/// One WebSocket connection.
struct conn_entry {
  std::string daemon;
  bool hello = false;
  /// The protocol version frames to it are written in (its hello's).
  int v = proto::version;
  /// Closed by us; frames still queued are ignored.
  bool closing = false;
  /// Acks not sent yet: (task, attempt) -> seq.
  std::map<attempt_id, uint64_t> pending_acks;
};

/// How many checkpoint refs the server keeps per task (fallbacks of a
/// failed restore).
inline constexpr size_t max_known_checkpoints = 8;

/// Upper bounds (s) of the dispatch latency histogram.
inline const std::vector<double>& latency_bounds() {
  static const std::vector<double> b{0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05,  0.1,    0.25,  0.5,  1,
                                     2.5,   5,      10,    30,   60};
  return b;
}

/// What start() loaded from the store.
struct loaded_state {
  std::map<std::string, task_entry> tasks;
  std::deque<std::string> queue;
  std::map<std::string, daemon_entry> daemons;
  /// Tasks whose attempt result (interrupted, migrating, restore_failed)
  /// was stored but not the re-queue that follows it (the server died
  /// between the two writes): the actor re-queues them at start.
  std::vector<std::string> unrequeued;
};

struct server_state {
  static inline const char* name = "server";
  server_settings settings;
  std::shared_ptr<store::db> db;
  std::shared_ptr<net::server> net;
  std::shared_ptr<shared_counters> counters;
  std::map<std::string, task_entry> tasks;
  std::deque<std::string> queue;
  std::map<std::string, daemon_entry> daemons;
  std::map<uint64_t, conn_entry> conns;
  bool draining = false;
  bool stopping = false;
  std::vector<caf::typed_response_promise<ok_atom>> drain_waiters;
  bool flush_scheduled = false;
  clock::time_point last_keep_alive;
  /// Tasks that have (or had, until the next tick) follow=1 streams; the
  /// tick drops streams whose client is gone from these.
  std::set<std::string> followed;
  /// follow=1 requests answered 429, by reason ("per_key", "total").
  std::map<std::string, uint64_t> streams_refused;
  // Metrics.
  std::map<std::string, uint64_t> rejected;
  std::map<uint16_t, uint64_t> closed;
  std::vector<uint64_t> latency_counts;
  uint64_t latency_count = 0;
  double latency_sum = 0;
  /// Checkpoint events accepted, their bytes and pauses (issue 11).
  uint64_t checkpoints = 0;
  uint64_t checkpoint_bytes = 0;
  double checkpoint_pause_sum = 0;
  /// Restores daemons reported (the `restore` field of a state event), by
  /// node state ("warm": the mirror was there; "cold": it was cloned):
  /// count and seconds; and the bytes they downloaded.
  std::map<std::string, std::pair<uint64_t, double>> restores;
  uint64_t restore_bytes = 0;
  /// Re-queues by (cause, "checkpoint" | "scratch").
  std::map<std::pair<std::string, std::string>, uint64_t> requeues;
  /// Attempts that resumed on a daemon by (cause, from pool, to pool).
  std::map<std::tuple<std::string, std::string, std::string>, uint64_t>
      migrations;
};

using self_ptr = server_actor::stateful_pointer<server_state>;

/// Answers an HTTP request (server_http.cpp).
void handle_http(self_ptr self, net::request& req, net::http_reply& reply);

/// Behavior of the SERVER actor (actors.hpp): starts from what `loaded`
/// holds, answers HTTP requests and daemon frames that the net::server
/// forwards, and writes every change through to `db`.
server_actor::behavior_type server(self_ptr self, server_settings settings,
                                   std::shared_ptr<store::db> db,
                                   std::shared_ptr<net::server> net,
                                   std::shared_ptr<shared_counters> counters,
                                   std::shared_ptr<loaded_state> loaded);

/// Spawns the SERVER actor, detached (its store writes block).
server_actor spawn_server(caf::actor_system& sys, server_settings settings,
                          std::shared_ptr<store::db> db,
                          std::shared_ptr<net::server> net,
                          std::shared_ptr<shared_counters> counters,
                          std::shared_ptr<loaded_state> loaded);

/// Writes `e` through to the store (persist in server_store.hpp); the
/// store's error (logged) when that failed.
caf::error write_through(self_ptr self, task_entry& e,
                         const std::string& detail);

/// Sends frame `f` on connection `conn` (server.cpp).
void send_frame(self_ptr self, uint64_t conn, const proto::frame& f);

/// Sends the acks queued so far (server.cpp).
void flush_acks(self_ptr self);

/// Assigns queued tasks to daemons with free capacity (server_tasks.cpp,
/// like the rest of this block).
void dispatch(self_ptr self);

/// Puts `e` back into the queue as a new attempt (lease expiry, daemon
/// loss, an `interrupted`, `migrating` or `restore_failed` result), saying
/// `why` — or ends it: cancelled when the user asked, failed when its
/// attempt budget is spent or no checkpoint is left to restore. `cause`
/// (lease, lost, interrupted, eviction, restore_failed, on_demand) labels
/// the re-queue and the migration it becomes in /metrics.
void requeue(self_ptr self, task_entry& e, const std::string& why,
             const char* cause);

/// Lease expiry: daemons silent for `lease` seconds are closed and lose
/// their tasks.
void check_leases(self_ptr self);

/// Cancels task `e` (HTTP): queued -> cancelled now; assigned -> `cancel`
/// frame with reason user.
void cancel_task(self_ptr self, task_entry& e);

/// Sends the record's state (and `end` when terminal) to SSE followers.
void notify_state(task_entry& e);

/// Drops the followers whose client is gone (of every followed task), and
/// when `keep_alive` writes a keep-alive comment to the others.
void sweep_streams(server_state& st, bool keep_alive);

/// Every tick: drops streams whose client is gone (so their sessions are
/// freed within a tick); every keep_alive interval also writes a comment,
/// whose failed write is how a silently vanished client is noticed.
void keep_alive(server_state& st);

/// Answers every POST …/checkpoint waiting on `e` with `status` and `body`
/// (server_http.cpp); with `only_expired`, those past their deadline only
/// (504).
void answer_checkpoint_waiters(self_ptr self, task_entry& e, unsigned status,
                               const std::string& body,
                               bool only_expired = false);

/// Ends `e` handed_off at its latest checkpoint (POST …/pull) and answers
/// the pull requests waiting on it; without a checkpoint answers 409 and
/// returns false (the task stays in the fleet).
bool hand_off(self_ptr self, task_entry& e, const std::string& why);

/// The tick: answers 504 to checkpoint requests past their deadline.
void expire_checkpoint_waiters(self_ptr self);

/// Sends output chunks to SSE followers.
void notify_output(task_entry& e, const std::vector<output_chunk>& chunks);

/// SSE text of one output chunk / a record event.
std::string sse_output(const output_chunk& c);
std::string sse_record(const char* event, const task_record& rec);

} // namespace makima::server_detail
