// The data that travels between makima's actors: a task's spec and record,
// its output chunks and state transitions. Plain structs with CAF `inspect`
// overloads (so they can later cross the network) and a JSON form — the form
// they take in RocksDB, in `task show --json` and, later, on the wire.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/fwd.hpp>
#include <caf/meta/type_name.hpp>

namespace makima {

/// Where a task is in its life. Numbers are stable (stored).
enum class task_state : uint8_t {
  /// Mirror, fetch and worktree are being prepared.
  preparing = 1,
  /// The child runs.
  running = 2,
  /// The child exited; commit and push are in progress.
  publishing = 3,
  /// Exit code 0 and everything published.
  succeeded = 4,
  /// The child failed, could not start, or makima failed around it.
  failed = 5,
  /// Cancelled by the user (Ctrl-C, SIGTERM, `task cancel`).
  cancelled = 6,
  /// Killed after its timeout.
  timed_out = 7,
  /// The makima process that ran it died; `task resume` runs it again.
  interrupted = 8,
  /// Accepted by a server, waiting for a daemon with capacity (network
  /// mode only; local mode never uses it).
  queued = 9,
  /// The attempt ended because its daemon was evicted (SIGTERM); the
  /// record's `checkpoint` is its final checkpoint when one was uploaded.
  /// A server re-queues it (docs/protocol.md §14).
  migrating = 10,
  /// The daemon could not restore the attempt's `resume_from`: the
  /// checkpoint failed verification (error_code, error say why). A server
  /// re-queues it from an older checkpoint.
  restore_failed = 11,
  /// Pulled out of the fleet (`task pull`): the record's `checkpoint` is
  /// where it went on; the server runs it no more (server only).
  handed_off = 12,
};

/// Returns the name of `s` ("running").
const char* to_string(task_state s);

/// Parses a state name; returns false when unknown.
bool from_string(const std::string& name, task_state& out);

/// Whether no further transition happens without a new attempt.
bool is_terminal(task_state s);

/// The largest `timeout` and `grace` of a task, in seconds: 30 days. Far
/// below what the timers hold (milliseconds, then the scheduler's
/// nanoseconds: about 292 years), so no valid value overflows; larger,
/// non-finite or negative values (1e10, 1e308, inf, nan, -1) are rejected
/// where a task is described (CLI flags, config, the HTTP API).
inline constexpr double max_timeout_seconds = 30.0 * 24 * 3600;

/// Largest per-task attempt budget (`max_attempts`) a submission may ask for.
inline constexpr uint32_t max_attempts_limit = 1000;

/// What to run, as given by the user. Never changes after creation.
struct task_spec {
  std::string id;
  /// The command, argv[0] first (never a shell string).
  std::vector<std::string> argv;
  /// Canonical repository path or URL, or empty for a scratch directory.
  std::string repo;
  /// Ref to start from; empty = the remote's default branch.
  std::string ref;
  /// Extra environment, KEY=VALUE.
  std::vector<std::string> env;
  /// Seconds; 0 = no timeout.
  double timeout = 0;
  /// Seconds between SIGTERM and SIGKILL.
  double grace = 10;
  /// Commit every change at the end.
  bool commit = false;
  /// Push the task branch there at the end (empty = no push).
  std::string push_url;
  /// Milliseconds since the epoch.
  int64_t created_at = 0;
  /// Labels a daemon must have to run it (network mode); key "pool" matches
  /// the daemon's pool. Empty = any daemon.
  std::map<std::string, std::string> selector;
  /// Attempts a server makes at most before the task fails (network mode);
  /// 0 = the server's default [server.max_attempts].
  uint32_t max_attempts = 0;
  /// The command an attempt runs instead of `argv` when it continues
  /// earlier work (restored from a checkpoint, or `task resume` of a
  /// preserved worktree); empty: `argv` again.
  std::vector<std::string> resume_command;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, task_spec& x) {
  return f(caf::meta::type_name("makima::task_spec"), x.id, x.argv, x.repo,
           x.ref, x.env, x.timeout, x.grace, x.commit, x.push_url, x.created_at,
           x.selector, x.max_attempts, x.resume_command);
}

/// Everything known about a task: spec plus the status of its latest
/// attempt. Written to RocksDB before any change is reported.
struct task_record {
  task_spec spec;
  task_state state = task_state::preparing;
  /// 1, 2, … (a resumed task runs attempt n+1).
  uint32_t attempt = 1;
  /// The child's exit status in shell form (code, 128+signal, 127 not
  /// found, 126 not executable); -1 while unknown.
  int exit_code = -1;
  /// Signal that killed the child, or 0.
  int signal = 0;
  /// Task branch ("makima/<id>"), empty without a repository.
  std::string branch;
  /// Commit the branch started from.
  std::string base_commit;
  /// Commit made by `--commit`, empty when none (or nothing changed).
  std::string commit;
  /// Whether the branch was pushed.
  bool pushed = false;
  /// The worktree (or scratch dir) and the state dir.
  std::string worktree;
  std::string state_dir;
  /// makima's own error, if any: stable code name and a sentence.
  std::string error_code;
  std::string error;
  /// Output seq the next chunk gets (filled by the persistence actor on read).
  uint64_t next_seq = 0;
  int64_t updated_at = 0;
  int64_t started_at = 0;
  int64_t finished_at = 0;
  /// The latest checkpoint of the task (`<task>/<n>`): on a server the
  /// latest it acknowledged, on a node the latest this attempt took.
  std::string checkpoint;
  /// The checkpoint this attempt was restored from ("" = it started from
  /// the task's ref or its preserved worktree).
  std::string resume_from;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, task_record& x) {
  return f(caf::meta::type_name("makima::task_record"), x.spec, x.state,
           x.attempt, x.exit_code, x.signal, x.branch, x.base_commit, x.commit,
           x.pushed, x.worktree, x.state_dir, x.error_code, x.error, x.next_seq,
           x.updated_at, x.started_at, x.finished_at, x.checkpoint,
           x.resume_from);
}

/// One piece of a task's output.
struct output_chunk {
  /// Per task, continues across attempts.
  uint64_t seq = 0;
  /// 1 = stdout, 2 = stderr.
  uint8_t stream = 1;
  std::string bytes;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, output_chunk& x) {
  return f(caf::meta::type_name("makima::output_chunk"), x.seq, x.stream,
           x.bytes);
}

/// One entry of a task's state history.
struct state_change {
  uint32_t attempt = 1;
  task_state state = task_state::preparing;
  int64_t at = 0;
  std::string detail;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, state_change& x) {
  return f(caf::meta::type_name("makima::state_change"), x.attempt, x.state,
           x.at, x.detail);
}

/// A task's worktree as prepared by the REPO actor.
struct worktree {
  std::string path;
  std::string branch;
  std::string base_commit;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worktree& x) {
  return f(caf::meta::type_name("makima::worktree"), x.path, x.branch,
           x.base_commit);
}

/// One attempt of one task: what fencing, outboxes and acks are about.
struct attempt_id {
  std::string task;
  uint32_t attempt = 0;

  friend bool operator==(const attempt_id& a, const attempt_id& b) {
    return a.attempt == b.attempt && a.task == b.task;
  }
  friend bool operator!=(const attempt_id& a, const attempt_id& b) {
    return !(a == b);
  }
  /// Task first, then attempt (the outbox's key order).
  friend bool operator<(const attempt_id& a, const attempt_id& b) {
    return a.task != b.task ? a.task < b.task : a.attempt < b.attempt;
  }
};

/// "task#attempt", for logs.
std::string to_string(const attempt_id& x);

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, attempt_id& x) {
  return f(caf::meta::type_name("makima::attempt_id"), x.task, x.attempt);
}

/// What CONNECTION asks PERSISTENCE to store before it sends an event: event
/// `seq` of attempt `id` with its encoded frame; `finished` when the event
/// is the attempt's result (then its last-seq key says so).
struct outbox_write {
  attempt_id id;
  uint64_t seq = 0;
  std::string frame;
  bool finished = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, outbox_write& x) {
  return f(caf::meta::type_name("makima::outbox_write"), x.id, x.seq, x.frame,
           x.finished);
}

/// A server ack applied to the outbox: the entries of `id` with seq <=
/// `seq` go; `forget` also removes the attempt's last-seq key (its result
/// is acked, nothing of it is left to replay).
struct outbox_ack {
  attempt_id id;
  uint64_t seq = 0;
  bool forget = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, outbox_ack& x) {
  return f(caf::meta::type_name("makima::outbox_ack"), x.id, x.seq, x.forget);
}

/// What TASK asks REPO to prepare: the worktree of task `task` at `ref`
/// (empty: the default branch) in directory `dir`, on branch makima/<task>.
struct prepare_request {
  std::string task;
  std::string ref;
  std::string dir;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, prepare_request& x) {
  return f(caf::meta::type_name("makima::prepare_request"), x.task, x.ref,
           x.dir);
}

/// What the CHECKPOINTER actor did for one checkpoint of a running task
/// (actors/checkpoint.hpp has the whole story; this is what the TASK logs).
struct checkpoint_report {
  /// `<task>/<n>`.
  std::string ref;
  /// Blobs and bytes uploaded (manifest included).
  uint64_t blobs = 0;
  uint64_t bytes = 0;
  /// How long the task's processes were stopped, and the whole checkpoint.
  int64_t pause_ms = 0;
  int64_t total_ms = 0;
  /// Output chunks with seq < covers_seq are in the checkpoint.
  uint64_t covers_seq = 0;
  /// Nothing had changed: no checkpoint was written, `ref` is the latest.
  bool skipped = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, checkpoint_report& x) {
  return f(caf::meta::type_name("makima::checkpoint_report"), x.ref, x.blobs,
           x.bytes, x.pause_ms, x.total_ms, x.covers_seq, x.skipped);
}

/// What the CHECKPOINTER's restore of a resumed attempt cost (the
/// `restore` field of the TASK's next `state` event, docs/protocol.md §14;
/// the server's makima_restore_seconds / makima_restore_bytes_total).
struct restore_report {
  /// `<task>/<n>`: the checkpoint restored.
  std::string ref;
  /// The whole restore: chain, blobs, mirror, worktree, state dir, records.
  int64_t total_ms = 0;
  /// Bytes read from the object store.
  uint64_t bytes_downloaded = 0;
  /// The data dir had no mirror; it was cloned or seeded from the
  /// store's mirror packs: a cold node.
  bool cloned = false;

  bool operator==(const restore_report& o) const {
    return ref == o.ref && total_ms == o.total_ms
           && bytes_downloaded == o.bytes_downloaded && cloned == o.cloned;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, restore_report& x) {
  return f(caf::meta::type_name("makima::restore_report"), x.ref, x.total_ms,
           x.bytes_downloaded, x.cloned);
}

/// Progress of one phase of an attempt's git work: REPO → TASK → LINK
/// (`makima run` renders it on the terminal; a CONNECTION ignores it: it is
/// not part of the wire protocol). `phase` is cloning, fetching,
/// checking_out, committing or pushing; `target` the (redacted) repository
/// or push URL; `done` of `total` objects (files when checking out; total 0
/// when unknown) and `bytes` transferred. A phase starts with a report of
/// `done` 0, is updated at most ten times a second and ends with a
/// `finished` report carrying its `elapsed_ms` (only when it succeeded).
struct task_progress {
  std::string task;
  std::string phase;
  std::string target;
  uint64_t done = 0;
  uint64_t total = 0;
  uint64_t bytes = 0;
  bool finished = false;
  int64_t elapsed_ms = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, task_progress& x) {
  return f(caf::meta::type_name("makima::task_progress"), x.task, x.phase,
           x.target, x.done, x.total, x.bytes, x.finished, x.elapsed_ms);
}

/// Aborts the REPO's git work for one request (clone, fetch, checkout,
/// push) when its flag is set, from any thread: the REPO is detached and
/// blocked inside libgit2, so the TASK cannot reach it by message. Local
/// only, never serialized (actors.hpp allows it as an unsafe message type).
struct cancel_token {
  std::shared_ptr<std::atomic<bool>> flag =
      std::make_shared<std::atomic<bool>>(false);
  void cancel() const { flag->store(true); }
};

/// One event of a daemon's outbox (network mode): an attempt's event
/// `seq` and its encoded `event` frame (docs/protocol.md §6).
struct outbox_entry {
  std::string task;
  uint32_t attempt = 0;
  uint64_t seq = 0;
  std::string frame;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, outbox_entry& x) {
  return f(caf::meta::type_name("makima::outbox_entry"), x.task, x.attempt,
           x.seq, x.frame);
}

/// What a daemon's outbox remembers about one attempt: the last event seq
/// it wrote, and whether that event was the attempt's result.
struct outbox_attempt {
  std::string task;
  uint32_t attempt = 0;
  uint64_t last_seq = 0;
  bool finished = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, outbox_attempt& x) {
  return f(caf::meta::type_name("makima::outbox_attempt"), x.task, x.attempt,
           x.last_seq, x.finished);
}

/// A daemon's whole outbox as loaded at start: the attempts it knows and
/// their unacked events in (task, attempt, seq) order.
struct outbox_contents {
  std::vector<outbox_attempt> attempts;
  std::vector<outbox_entry> events;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, outbox_contents& x) {
  return f(caf::meta::type_name("makima::outbox_contents"), x.attempts,
           x.events);
}

/// JSON text of a record (the RocksDB and `task show --json` form).
std::string to_json(const task_record& x);

/// Parses `to_json` output; nullopt when malformed.
std::optional<task_record> record_from_json(const std::string& text);

/// JSON text of a state change.
std::string to_json(const state_change& x);

/// Parses a state change; nullopt when malformed.
std::optional<state_change> state_change_from_json(const std::string& text);

/// The exit status `makima run` / `task resume` return for a finished
/// record: 0 succeeded, the child's code (or 128+signal) when it failed,
/// 127/126 when the command was not found / not executable, 124 timed out,
/// 130 cancelled, 125 when makima itself failed (repo, ref, store, push).
int exit_status_of(const task_record& x);

/// Registers every message type of this file with an actor system config.
void add_message_types(caf::actor_system_config& cfg);

} // namespace makima
