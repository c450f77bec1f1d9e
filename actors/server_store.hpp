// The SERVER's tasks on its store (the layout is in server_state.hpp):
// reading every task back at start (`load`), writing a task's record with a
// history entry and its meta key (`persist`), and the write batch of an
// accepted daemon event (`event_batch`). No actor: the SERVER decides what
// to do when a write fails.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/protocol.hpp"
#include "actors/server_state.hpp"
#include "runtime/store/db.hpp"

namespace makima::server_detail {

/// The meta key of task `id` ("task/" id).
std::string meta_key(const std::string& id);

/// The JSON of the meta key of a task: the highest stored event `seq` of
/// `attempt`, the daemon it is assigned to and its last known checkpoints.
std::string meta_json(uint32_t attempt, uint64_t seq,
                      const std::string& daemon,
                      const std::vector<std::string>& checkpoints);

/// Loads every task of `db`: queued ones into the queue (oldest first),
/// assigned non-terminal ones onto (disconnected) daemon entries whose
/// lease counts from now; a non-terminal task without a daemon is queued
/// again. Errors: the store's, ec::store_corrupt for a malformed record.
caf::expected<loaded_state> load(store::db& db);

/// Writes `e.rec` with history entry number `e.events` (saying `detail`)
/// and the task's meta key in one batch; on success counts the history
/// entry (`++e.events`). Returns the store's error, `e` unchanged.
caf::error persist(store::db& db, task_entry& e, const std::string& detail);

/// What storing an accepted event (classify) writes and changes.
struct stored_event {
  store::write_batch batch;
  /// The task's record once the batch is written.
  task_record rec;
  /// Output chunks of the event not stored before (to send to followers).
  std::vector<output_chunk> fresh;
  /// A result `interrupted`, `migrating` or `restore_failed`: the task
  /// goes back into the queue (requeue decides how), `detail` saying why.
  bool requeue = false;
  std::string detail;
  /// The task's known checkpoints once the batch is written: a
  /// `checkpoint` event adds its ref; a `restore_failed` result drops its
  /// `resume_from` and every newer one.
  std::vector<std::string> checkpoints;
};

/// The batch of event `ev` of `e` from daemon `daemon`, accepted by
/// classify: new output chunks (put-if-absent by seq), a checkpoint (the
/// record's `checkpoint` and a history entry), or the record the event
/// carries (with the server's spec, attempt, checkpoint and resume_from,
/// `now` ms when it has no time) and a history entry; and always the meta
/// key with `ev.seq`.
stored_event event_batch(const task_entry& e, const std::string& daemon,
                         const proto::event& ev, int64_t now);

} // namespace makima::server_detail
