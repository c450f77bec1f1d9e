// The SERVER's verdicts on what a daemon reports, as pure functions: on an
// event frame of a known task (docs/protocol.md §4-5: accept it, ack a
// duplicate again, fence a stale attempt, or refuse it — never assigned
// here, after the result, a gap in the event or output seqs, a result that
// does not end the attempt), and on the attempts a hello says run (§3).
// server.cpp acts on them; tests/actors/event_verdict_test.cpp checks the
// event verdict as a table.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "actors/protocol.hpp"
#include "actors/server_state.hpp"

namespace makima::server_detail {

/// What to do with an event (classify).
struct event_verdict {
  enum kind_t {
    /// The next event of the current attempt: store it, then ack it.
    accept,
    /// Stored before (seq <= acked): ack what is stored again.
    duplicate,
    /// Of an attempt taken away (a later one exists, or the task has no
    /// daemon): ack it, refuse it with stale_attempt (no close) and fence
    /// the attempt.
    stale,
    /// The attempt was never assigned to this daemon (bad_message, 1008).
    unassigned,
    /// After the attempt's result (bad_message, 1008).
    after_result,
    /// Its seq skips events after `acked` (seq_gap, 4006).
    seq_gap,
    /// An output chunk skips output seqs: chunk `got` where `expected` was
    /// next (seq_gap, 4006).
    output_gap,
    /// A result whose state is not terminal (malformed, 1007).
    bad_result,
  };
  kind_t kind = accept;
  /// output_gap only.
  uint64_t got = 0;
  uint64_t expected = 0;
};

/// The name of a verdict ("accept", "seq_gap", ...), for logs and tests.
const char* to_string(event_verdict::kind_t k);

/// The verdict on event `ev` for task `e` from daemon `daemon`; the checks
/// run in protocol order, the first that fails decides.
event_verdict classify(const task_entry& e, const std::string& daemon,
                       const proto::event& ev);

/// What the server answers to the attempts a hello reports running.
struct hello_reconciliation {
  /// For the welcome: the stored seq of each current attempt; for a stale
  /// or unknown one the daemon's own seq (the server wants none of it).
  std::vector<proto::attempt_seq> acked;
  /// `fenced` for stale or unknown attempts, `user` for current ones whose
  /// cancel is pending.
  std::vector<proto::cancel> cancels;
  /// The task ids the daemon reported.
  std::set<std::string> known;
};

/// Compares the attempts `running` that daemon `daemon` reports with the
/// server's `tasks`: an attempt is current when it is the task's attempt,
/// not queued, and assigned to this daemon.
hello_reconciliation reconcile(const std::map<std::string, task_entry>& tasks,
                               const std::string& daemon,
                               const std::vector<proto::attempt_seq>& running);

} // namespace makima::server_detail
