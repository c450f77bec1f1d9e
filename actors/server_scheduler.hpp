// The SERVER's scheduling decisions as pure functions of its tables: which
// daemon may run a task (its selector), which one should (a warm mirror
// first, then the least loaded), which queued tasks go where now, and how
// long a re-queued task waits. No actor, no store, no sockets: server_tasks.cpp
// applies what these decide, and tests/actors/server_scheduler_test.cpp
// checks them on plain tables.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "actors/server_state.hpp"

namespace makima::server_detail {

/// Whether daemon `d` satisfies the selector of `spec` (`pool` is the
/// daemon's pool, every other key one of its labels).
bool matches(const daemon_entry& d, const task_spec& spec);

/// Whether `d` may get a task that resumes from a checkpoint: not when its
/// hello said `checkpoints: false` (no store); a daemon that did not say
/// (v1, older v2) may, as before the field.
bool can_resume(const daemon_entry& d);

/// Whether `d` reported a mirror of `repo` in its hello (`cached_repos`).
bool has_repo(const daemon_entry& d, const std::string& repo);

/// Free task slots over every connected daemon.
size_t free_slots(const std::map<std::string, daemon_entry>& daemons);

/// The daemon that should run `spec` now, or nullptr when none can: a
/// connected daemon with a free slot that matches the selector (and, when
/// the task `resumes` from a checkpoint, can_resume); among those one with
/// the repository cached, then the least loaded (running / capacity); ties
/// go to the first in id order.
const daemon_entry*
pick_daemon(const std::map<std::string, daemon_entry>& daemons,
            const task_spec& spec, bool resumes = false);

/// One decision of dispatch_plan: queued task `task` goes to `daemon`.
struct assignment {
  std::string task;
  std::string daemon;

  friend bool operator==(const assignment& x, const assignment& y) {
    return x.task == y.task && x.daemon == y.daemon;
  }
};

/// What dispatch_plan decided.
struct dispatch_decision {
  /// In queue order; each counts as load on its daemon for the ones after.
  std::vector<assignment> assignments;
  /// How many queue entries (from the front) the plan looked at: the scan
  /// stops once every free slot is planned, so a long queue costs only what
  /// gets assigned. Entries of this prefix that are no longer queued are
  /// the ones to drop from the queue.
  size_t scanned = 0;
  /// Tasks of the scan that resume from a checkpoint and stay queued
  /// because the only free daemons matching them have no checkpoint store.
  std::vector<std::string> need_store;
};

/// Which queued tasks go to which daemons now: walks `queue` in order,
/// passes over entries that are unknown or no longer queued, tasks in retry
/// backoff (`not_before` after `now`) and tasks in `held` (their store write
/// failed in this round), and picks each task's daemon with pick_daemon,
/// counting the plan's own assignments as load. A task with known
/// checkpoints (its next attempt resumes) goes only to a daemon that
/// can_resume; when only others are free it is left queued and named in
/// `need_store`. Pure.
dispatch_decision
dispatch_plan(const std::deque<std::string>& queue,
              const std::map<std::string, task_entry>& tasks,
              const std::map<std::string, daemon_entry>& daemons,
              clock::time_point now, const std::set<std::string>& held = {});

/// The attempt budget of a task: its own `max_attempts`, else the server's
/// (0 = unlimited).
uint32_t attempt_budget(const server_settings& s, const task_spec& spec);

/// How long attempt `attempt` + 1 waits after attempt `attempt` (>= 1) was
/// taken away: retry_backoff * 2^(attempt-1) seconds, at most
/// retry_backoff_max, never negative.
std::chrono::milliseconds retry_delay(const server_settings& s,
                                      uint32_t attempt);

/// What is left at `now_ms` of the backoff of a task re-queued at
/// `requeued_at_ms` (wall clock, the record's updated_at) after attempt
/// `attempt` (0: never ran, no backoff): a restarted server keeps waiting
/// instead of assigning at once. Never negative; a clock that jumped back
/// counts as no time passed, so the wait is at most one retry_delay.
std::chrono::milliseconds remaining_backoff(const server_settings& s,
                                            uint32_t attempt,
                                            int64_t requeued_at_ms,
                                            int64_t now_ms);

} // namespace makima::server_detail
