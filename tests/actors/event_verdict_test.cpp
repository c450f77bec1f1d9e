// The SERVER's verdict on a daemon's event (actors/server_events.hpp) as a
// table: one row per rule of docs/protocol.md §4-5, and rows where two
// rules meet, so that their order is pinned. No actor, no sockets.
#include "actors/server_events.hpp"

#include <gtest/gtest.h>

namespace makima::server_detail {
namespace {

using k = event_verdict;
using proto::event_kind;

struct row {
  const char* name;
  // The task: attempt 2 assigned to `assigned`, events up to 3 stored,
  // output up to 9 stored (next 10), unless a row says otherwise.
  task_state state = task_state::running;
  std::string assigned = "d1";
  // The event.
  std::string from = "d1";
  uint32_t attempt = 2;
  uint64_t seq = 4;
  event_kind kind = event_kind::state;
  std::vector<uint64_t> chunks = {};
  task_state carried = task_state::running;
  // The verdict.
  event_verdict::kind_t want = k::accept;
  uint64_t got = 0;
  uint64_t expected = 0;
};

const std::vector<row>& rows() {
  constexpr auto R = task_state::running;
  constexpr auto S = task_state::succeeded;
  constexpr auto out = event_kind::output;
  constexpr auto state = event_kind::state;
  constexpr auto result = event_kind::result;
  // clang-format off
  static const std::vector<row> r{
      {"next_state_event", R, "d1", "d1", 2, 4, state, {}, R, k::accept},
      {"next_output_event", R, "d1", "d1", 2, 4, out, {10, 11}, R, k::accept},
      {"output_replaying_stored_chunks", R, "d1", "d1", 2, 4, out, {8, 9, 10}, R, k::accept},
      {"output_all_stored_before", R, "d1", "d1", 2, 4, out, {8, 9}, R, k::accept},
      {"result_succeeded", R, "d1", "d1", 2, 4, result, {}, S, k::accept},
      {"result_interrupted", R, "d1", "d1", 2, 4, result, {}, task_state::interrupted, k::accept},
      {"seq_already_acked", R, "d1", "d1", 2, 3, state, {}, R, k::duplicate},
      {"seq_long_acked", R, "d1", "d1", 2, 1, out, {1}, R, k::duplicate},
      {"earlier_attempt", R, "d1", "d1", 1, 4, state, {}, R, k::stale},
      {"earlier_attempt_of_other_daemon", R, "d1", "d2", 1, 9, state, {}, R, k::stale},
      {"task_without_daemon", task_state::queued, "", "d2", 2, 4, state, {}, R, k::stale},
      {"attempt_zero", R, "d1", "d1", 0, 4, state, {}, R, k::unassigned},
      {"attempt_never_made", R, "d1", "d1", 3, 1, state, {}, R, k::unassigned},
      {"other_daemon", R, "d1", "d2", 2, 4, state, {}, R, k::unassigned},
      {"other_daemon_duplicate", R, "d1", "d2", 2, 3, state, {}, R, k::unassigned},
      {"after_result", S, "d1", "d1", 2, 4, state, {}, R, k::after_result},
      {"duplicate_after_result", S, "d1", "d1", 2, 3, result, {}, S, k::duplicate},
      {"gap_after_result", task_state::failed, "d1", "d1", 2, 9, state, {}, R, k::after_result},
      {"seq_gap", R, "d1", "d1", 2, 5, state, {}, R, k::seq_gap},
      {"output_gap_at_first_chunk", R, "d1", "d1", 2, 4, out, {11}, R, k::output_gap, 11, 10},
      {"output_gap_after_a_chunk", R, "d1", "d1", 2, 4, out, {9, 10, 12}, R, k::output_gap, 12, 11},
      {"seq_gap_before_output_gap", R, "d1", "d1", 2, 6, out, {20}, R, k::seq_gap},
      {"result_not_terminal", R, "d1", "d1", 2, 4, result, {}, R, k::bad_result},
      {"state_event_terminal_state", R, "d1", "d1", 2, 4, state, {}, task_state::failed, k::accept},
  };
  // clang-format on
  return r;
}

TEST(event_verdict, table) {
  for (auto& r : rows()) {
    SCOPED_TRACE(r.name);
    task_entry e;
    e.rec.spec.id = "t1";
    e.rec.attempt = 2;
    e.rec.state = r.state;
    e.rec.next_seq = 10;
    e.acked = 3;
    e.daemon = r.assigned;
    proto::event ev;
    ev.task = "t1";
    ev.attempt = r.attempt;
    ev.seq = r.seq;
    ev.kind = r.kind;
    for (auto s : r.chunks)
      ev.chunks.push_back(output_chunk{s, 1, "x"});
    ev.record.state = r.carried;
    auto v = classify(e, r.from, ev);
    EXPECT_STREQ(to_string(v.kind), to_string(r.want));
    if (r.want == k::output_gap) {
      EXPECT_EQ(v.got, r.got);
      EXPECT_EQ(v.expected, r.expected);
    }
  }
}

TEST(event_verdict, every_kind_has_a_name) {
  for (auto kind : {k::accept, k::duplicate, k::stale, k::unassigned,
                    k::after_result, k::seq_gap, k::output_gap, k::bad_result})
    EXPECT_STRNE(to_string(kind), "?");
}

} // namespace
} // namespace makima::server_detail

namespace makima::server_detail {
namespace {

TEST(hello_reconciliation,
     current_attempts_keep_their_acks_the_rest_is_fenced) {
  std::map<std::string, task_entry> tasks;
  auto add = [&](const std::string& id, uint32_t attempt, task_state s,
                 const std::string& daemon, uint64_t acked) -> task_entry& {
    auto& e = tasks[id];
    e.rec.spec.id = id;
    e.rec.attempt = attempt;
    e.rec.state = s;
    e.daemon = daemon;
    e.acked = acked;
    return e;
  };
  add("current", 2, task_state::running, "d1", 7);
  add("cancel", 1, task_state::running, "d1", 3).cancel_requested = true;
  add("newer", 3, task_state::running, "d1", 0);
  add("elsewhere", 1, task_state::running, "d2", 4);
  add("requeued", 1, task_state::queued, "", 0);
  auto r = reconcile(tasks, "d1",
                     {{"current", 2, 9},
                      {"cancel", 1, 3},
                      {"newer", 2, 5},
                      {"elsewhere", 1, 6},
                      {"requeued", 1, 2},
                      {"unknown", 1, 1}});
  std::vector<proto::attempt_seq> acked{{"current", 2, 7},  {"cancel", 1, 3},
                                        {"newer", 2, 5},    {"elsewhere", 1, 6},
                                        {"requeued", 1, 2}, {"unknown", 1, 1}};
  EXPECT_EQ(r.acked, acked);
  std::vector<std::string> cancels;
  for (auto& c : r.cancels)
    cancels.push_back(c.task + ":" + c.reason);
  std::vector<std::string> want{"cancel:user", "newer:fenced",
                                "elsewhere:fenced", "requeued:fenced",
                                "unknown:fenced"};
  EXPECT_EQ(cancels, want);
  EXPECT_EQ(r.known.size(), 6u);
}

} // namespace
} // namespace makima::server_detail
