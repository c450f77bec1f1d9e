// The catalogue of makima's actors: every typed interface, in one place.
// Read this file to see the whole message flow.
//
// A node (`makima run`, `makima daemon`, the daemon half of `makima local`):
//
//   LINK ── assign / cancel ──▶ DAEMON ── spawns one per attempt ──▶ TASK
//    ▲                            │ one REPO per repository URL       │
//    │                            ▼                                   │
//    │                          REPO (libgit2, detached) ◀─ prepare, ─┤
//    │                                                   commit, push │
//    │                          PERSISTENCE (RocksDB) ◀─ create, put, ┤
//    │                                                   output       │
//    │                          CHECKPOINTER (detached) ◀ checkpoint ┤
//    │                            (object store; optional)            │
//    └──────── output / state / result (each already persisted) ──────┘
//
// The TASK actor writes every fact to PERSISTENCE first and reports it to
// the LINK only after the write succeeded. It cannot tell which LINK it
// has: `local_link` writes to the terminal (`makima run`); the CONNECTION
// actor (`makima daemon`, actors/connection.hpp) also writes each event to
// the outbox in PERSISTENCE and sends it to a server over WebSocket.
//
// A server (`makima server`, the server half of `makima local`): one SERVER
// actor (detached, owns the server's RocksDB) holds tasks, daemons, the
// queue and the HTTP API:
//
//   net::server (io thread) ── http / ws_open / ws_text / ws_close ──▶ SERVER
//   SERVER ── welcome / assign / cancel / ack / drain ──▶ CONNECTION (remote)
//   CONNECTION ── hello / heartbeat / event ──▶ SERVER  (docs/protocol.md)
//
// Who assembles them: the node objects `local_node` (run, task resume),
// `daemon_node` and `server_node` (actors/*_node.hpp), each with start,
// ready, drain/stop and its signal policy; the CLI (runtime/app) only maps
// the config onto their settings.
//
// Message shapes: reads are composed (`get_atom, output_atom, …`,
// `get_atom, history_atom, …`); a message that would carry a bool or more
// than three scalars carries a named struct of messages.hpp instead
// (`outbox_write`, `outbox_ack`, `prepare_request`); (task, attempt) is one
// `attempt_id`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "actors/atoms.hpp"
#include "actors/messages.hpp"
#include "runtime/net/net.hpp"

// The SERVER actor receives the transport's request and reply handles as
// they are (local messages only, never serialized).
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(makima::net::request)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(makima::net::http_reply)
// TASK → REPO (same process): the flag that aborts a clone, fetch, checkout
// or push in progress.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(makima::cancel_token)

namespace makima {

/// The PERSISTENCE actor owns the node's RocksDB. Detached (blocking I/O).
/// Receives from TASK, DAEMON and command-line readers.
using persistence_actor = caf::typed_actor<
    // Stores a new task; fails with ec::task_exists when the id is taken.
    caf::replies_to<create_atom, task_record>::with<ok_atom>,
    // Replaces a task's record and appends its state to the history (one
    // atomic batch).
    caf::replies_to<put_atom, task_record>::with<ok_atom>,
    // Appends output chunks of task `id` (one atomic batch) and hands them
    // back, so the TASK can report them to the LINK without a copy.
    caf::replies_to<output_atom, std::string,
                    std::vector<output_chunk>>::with<std::vector<output_chunk>>,
    // Returns a task's record with `next_seq` filled in; ec::task_not_found.
    caf::replies_to<get_atom, std::string>::with<task_record>,
    // Returns every task's record, oldest id first.
    caf::replies_to<list_atom>::with<std::vector<task_record>>,
    // Returns output chunks of task `id` from seq `from`, at most `max_bytes`
    // (at least one chunk when any is left).
    caf::replies_to<get_atom, output_atom, std::string, uint64_t,
                    uint64_t>::with<std::vector<output_chunk>>,
    // Returns the state history of task `id`.
    caf::replies_to<get_atom, history_atom,
                    std::string>::with<std::vector<state_change>>,
    // Marks every task left non-terminal by a dead process as interrupted;
    // returns their ids. Only on a primary (locked) database.
    caf::replies_to<recover_atom>::with<std::vector<std::string>>,
    // Returns the node's meta value `key`, storing `fallback` first when the
    // key is missing (the daemon id is generated once this way).
    caf::replies_to<meta_atom, std::string, std::string>::with<std::string>,
    // Daemon outbox (network mode, from CONNECTION): stores the event with
    // its frame and records its seq as the attempt's last event seq, in one
    // batch.
    caf::replies_to<outbox_atom, outbox_write>::with<ok_atom>,
    // Applies a server ack to the attempt's outbox entries.
    caf::replies_to<ack_atom, outbox_ack>::with<ok_atom>,
    // Deletes every outbox entry of an attempt and its last-seq key (fenced).
    caf::replies_to<drop_atom, attempt_id>::with<ok_atom>,
    // Returns the whole outbox (at daemon start).
    caf::replies_to<outbox_atom>::with<outbox_contents>>;

/// The LINK is the server side as seen from a node: it hands out work and
/// receives what tasks did. `local_link` serves it in-process for `makima
/// run`; the CONNECTION actor serves it over WebSocket.
/// Receives from TASK; every message describes something already persisted.
using link_actor = caf::typed_actor<
    // Output chunks of an attempt (task id, attempt, chunks); the reply lets
    // the TASK resume reading the child's pipes (backpressure).
    caf::replies_to<output_atom, std::string, uint32_t,
                    std::vector<output_chunk>>::with<ok_atom>,
    // A state transition of an attempt (record after the transition).
    caf::reacts_to<state_atom, task_record>,
    // The same, for the transition that follows a restore from a
    // checkpoint (what the restore cost rides along: the CONNECTION puts it
    // in the state event's `restore` field).
    caf::reacts_to<state_atom, task_record, restore_report>,
    // The attempt's final record; the attempt is over.
    caf::reacts_to<result_atom, task_record>,
    // Progress of the attempt's git work (clone, fetch, checkout, commit,
    // push): not persisted, not sent to a server; `makima run` shows it.
    caf::reacts_to<progress_atom, task_progress>,
    // A checkpoint of the attempt (task id, attempt) was uploaded: the
    // CONNECTION reports it to the server (event kind checkpoint).
    caf::reacts_to<checkpoint_atom, std::string, uint32_t, checkpoint_report>,
    // A checkpoint asked for on demand could not be taken (why not).
    caf::reacts_to<checkpoint_atom, std::string, uint32_t, std::string>>;

/// The REPO actor serializes all git work on one repository: a bare mirror
/// cache (clone, fetch), task worktrees, commits, WIP snapshots, pushes and
/// cleanup. Detached (libgit2 blocks). One per repository URL, spawned by
/// DAEMON; receives from TASK.
using repo_actor = caf::typed_actor<
    // Clones or fetches the mirror, resolves the ref and creates the task's
    // worktree on branch makima/<id>; reports progress to the requester
    // (progress_atom, task_progress). Setting the token aborts it within a
    // second with ec::cancelled, leaving no worktree or branch (a new
    // mirror is removed; an existing one stays usable).
    caf::replies_to<prepare_atom, prepare_request,
                    cancel_token>::with<worktree>,
    // Returns the preserved worktree of task `id` on `branch` (resume);
    // ec::worktree_missing when it is gone.
    caf::replies_to<reopen_atom, std::string, std::string>::with<worktree>,
    // Commits every change in worktree `dir` with `message`; returns the
    // commit id, or "" when nothing changed.
    caf::replies_to<commit_atom, std::string, std::string>::with<std::string>,
    // Snapshots worktree `dir` of task `id` to refs/wip/<id>; returns commit.
    caf::replies_to<snapshot_atom, std::string /*worktree dir*/,
                    std::string /*task id*/>::with<std::string>,
    // Pushes `branch` to `url` (progress to the requester, as prepare); the
    // token aborts it (ec::cancelled).
    caf::replies_to<push_atom, std::string, std::string,
                    cancel_token>::with<ok_atom>,
    // Removes task `id`'s worktree (files and metadata) and deletes `branch`
    // (none when empty).
    caf::replies_to<remove_atom, std::string /*task id*/,
                    std::string /*branch*/>::with<ok_atom>>;

/// The CHECKPOINTER actor takes checkpoints of running tasks
/// (actors/checkpoint.hpp, docs/checkpoint-format.md): one at a time, into
/// the node's object store. Detached (git, RocksDB reads, disk, network
/// block). Spawned by the CLI when checkpoints are on; receives from TASK.
using checkpointer_actor = caf::typed_actor<
    // Checkpoints task `id` now; while its worktree and state dir are
    // captured, process group `pgid` (0: none) is stopped (SIGSTOP, then
    // SIGCONT). A failure leaves the task untouched (the next tick retries).
    caf::replies_to<checkpoint_atom, std::string /*task id*/,
                    int32_t /*pgid*/>::with<checkpoint_report>,
    // Restores the task of checkpoint `ref` (`<task>/<n>`) into the node,
    // replacing what the node held of it (checkpoint::restore, replace);
    // returns its record (state interrupted, the checkpoint's attempt) and
    // what the restore cost. Errors: the checkpoint_* refusals, the
    // store's, git's.
    caf::replies_to<restore_atom, std::string /*ref*/>::with<task_record,
                                                             restore_report>>;

/// The MIRROR_PUBLISHER publishes the mirror packs of the repositories the
/// node's tasks work on (checkpoint::publish_mirror), from which cold nodes
/// seed their mirrors: at most once per interval per repository, on its
/// own thread and store connection, so a large upload never delays a
/// checkpoint. Detached. Spawned by a daemon with a store; receives from
/// CHECKPOINTER after each checkpoint written.
using mirror_publisher_actor = caf::typed_actor<
    // The mirror of `origin` may have something to publish (fire and
    // forget: failures are logged and retried at the next interval).
    caf::reacts_to<publish_atom, std::string /*origin*/>>;

/// The TASK actor runs one attempt of one task: a state machine
/// (preparing → running → publishing → succeeded | failed | cancelled |
/// timed_out) that owns the child's process group. Spawned by DAEMON; talks
/// to REPO, PERSISTENCE and LINK; its output and exit arrive from the
/// process reactor thread as messages.
using task_actor = caf::typed_actor<
    // Cancels the attempt: SIGTERM to the group, SIGKILL after the grace
    // period (a second cancel kills at once).
    caf::reacts_to<cancel_atom>,
    // Kills the attempt at once: SIGKILL to the group, no grace (fenced).
    caf::reacts_to<cancel_atom, kill_atom>,
    // From the reactor: a chunk of the child's output (stream, bytes).
    caf::reacts_to<output_atom, uint8_t, std::string>,
    // From the reactor: the child ended (shell-style code, signal).
    caf::reacts_to<exit_atom, int, int>,
    // Timer: the task's timeout expired.
    caf::reacts_to<timeout_atom>,
    // Timer: the grace period after SIGTERM expired (signal generation).
    caf::reacts_to<kill_atom, uint32_t>,
    // From REPO: progress of this attempt's git work, passed to the LINK.
    caf::reacts_to<progress_atom, task_progress>,
    // Timer: time for a periodic checkpoint (asks CHECKPOINTER).
    caf::reacts_to<checkpoint_atom>,
    // Eviction (DAEMON): the process group gets `signal`, SIGKILL after
    // `grace_ms`; then a final checkpoint, and the attempt ends migrating.
    caf::reacts_to<evict_atom, uint32_t /*grace ms*/, int32_t /*signal*/>,
    // Migration on demand: as eviction, with SIGTERM and the task's grace.
    caf::reacts_to<evict_atom>,
    // A checkpoint on demand (server): reported to the LINK even when
    // nothing changed, or its failure.
    caf::reacts_to<checkpoint_atom, now_atom>>;

/// The DAEMON supervises a node's task actors: it takes assignments from
/// the LINK, runs at most `max_tasks` attempts at once (queueing the rest),
/// and owns one REPO actor per repository URL.
using daemon_actor = caf::typed_actor<
    // Runs the attempt described by the record (its `attempt` field).
    caf::reacts_to<assign_atom, task_record>,
    // Cancels a queued or running task by id.
    caf::reacts_to<cancel_atom, std::string>,
    // Kills a queued or running task by id at once (no grace): the server
    // fenced its attempt.
    caf::reacts_to<cancel_atom, std::string, kill_atom>,
    // Eviction: every running TASK gets evict (signal, grace); queued
    // assignments end migrating at once. Takes no new assignment after.
    caf::reacts_to<evict_atom, uint32_t /*grace ms*/, int32_t /*signal*/>,
    // Migration of one task (server's migrate): as eviction, for it only.
    caf::reacts_to<evict_atom, std::string>,
    // Checkpoint of one running task now (server's checkpoint).
    caf::reacts_to<checkpoint_atom, std::string>>;

/// The CONNECTION actor is the LINK of a networked daemon (`makima
/// daemon`): it writes every event of its TASK actors to the outbox
/// (PERSISTENCE) and sends it to the server over WebSocket
/// (docs/protocol.md), replays unacked events after reconnects and
/// restarts, and turns the server's assign/cancel into DAEMON messages.
/// Receives from TASK (as a LINK), from its net::ws_client callbacks (I/O
/// thread, anon_send) and from its own timers.
using connection_actor = link_actor::extend<
    // Starts the actor: recovery, outbox load, then connecting. The DAEMON
    // is spawned with the connection as its LINK, so it arrives here.
    caf::reacts_to<start_atom, daemon_actor>,
    // From ws_client: connection `generation` is open.
    caf::reacts_to<ws_open_atom, uint64_t>,
    // From ws_client: a text frame of connection `generation`.
    caf::reacts_to<ws_text_atom, uint64_t, std::string>,
    // From ws_client: connection `generation` ended (close code, reason,
    // HTTP status of a refused upgrade or 0).
    caf::reacts_to<ws_close_atom, uint64_t, uint16_t, std::string, uint32_t>,
    // Timer: reconnect after the backoff (generation it belongs to).
    caf::reacts_to<connect_atom, uint64_t>,
    // Timer: heartbeat and liveness check of connection `generation`.
    caf::reacts_to<tick_atom, uint64_t>,
    // Stops: closes the connection (1001) and quits; running attempts are
    // not cancelled (their events stay in the outbox).
    caf::reacts_to<stop_atom>,
    // Eviction: takes no more assignments and, once every attempt ended
    // and every event is acked, closes with 1000 (like a server drain).
    caf::reacts_to<evict_atom>>;

/// The SERVER actor is the server side of docs/protocol.md: tasks in the
/// server's RocksDB, connected daemons, the queue and scheduling, the HTTP
/// API. Detached (RocksDB writes). Receives from net::server callbacks (io
/// thread) and from `server_node` (actors/server_node.hpp).
using server_actor = caf::typed_actor<
    // An HTTP request (already authenticated, §2); answered through the
    // reply handle.
    caf::reacts_to<http_atom, net::request, net::http_reply>,
    // A daemon's WebSocket connection opened (its key was checked).
    caf::reacts_to<ws_open_atom, uint64_t>,
    // A text frame arrived on a connection.
    caf::reacts_to<ws_text_atom, uint64_t, std::string>,
    // A connection is gone (close code).
    caf::reacts_to<ws_close_atom, uint64_t, uint16_t>,
    // Timer: deadline for the first frame (`hello`) of a connection.
    caf::reacts_to<hello_atom, uint64_t>,
    // Timer: leases and SSE keep-alives.
    caf::reacts_to<tick_atom>,
    // Timer: the retry backoff of a re-queued task ended (dispatch).
    caf::reacts_to<timeout_atom>,
    // Sends the acks accumulated while frames were queued.
    caf::reacts_to<flush_atom>,
    // Graceful shutdown: `drain` to every daemon, no more assignments;
    // replies once no daemon connection is left.
    caf::replies_to<drain_atom>::with<ok_atom>,
    // Shutdown: closes every daemon connection with 1001 (going away);
    // replies once all are closed.
    caf::replies_to<stop_atom>::with<ok_atom>>;

} // namespace makima
