// The SERVER's verdict on a daemon's event (server_events.hpp).
#include "actors/server_events.hpp"

namespace makima::server_detail {

const char* to_string(event_verdict::kind_t k) {
  switch (k) {
  case event_verdict::accept:
    return "accept";
  case event_verdict::duplicate:
    return "duplicate";
  case event_verdict::stale:
    return "stale";
  case event_verdict::unassigned:
    return "unassigned";
  case event_verdict::after_result:
    return "after_result";
  case event_verdict::seq_gap:
    return "seq_gap";
  case event_verdict::output_gap:
    return "output_gap";
  case event_verdict::bad_result:
    return "bad_result";
  }
  return "?";
}

event_verdict classify(const task_entry& e, const std::string& daemon,
                       const proto::event& ev) {
  using v = event_verdict;
  // An attempt was taken away (re-queued, or cancelled after its lease)
  // when a later one exists or the task has no daemon any more.
  bool superseded = ev.attempt < e.rec.attempt || e.daemon.empty();
  if (ev.attempt == 0 || ev.attempt > e.rec.attempt
      || (!superseded && e.daemon != daemon))
    return {v::unassigned};
  if (superseded)
    return {v::stale};
  if (ev.seq <= e.acked)
    return {v::duplicate};
  if (is_terminal(e.rec.state))
    return {v::after_result}; // the result was the attempt's last event (§4)
  if (ev.seq > e.acked + 1)
    return {v::seq_gap};
  if (ev.kind == proto::event_kind::output) {
    // Output seqs continue without gaps from the assignment's next_seq
    // (§4): a jump would leave a hole no replay fills. Chunks below it
    // were stored before (put-if-absent).
    uint64_t next = e.rec.next_seq;
    for (auto& ch : ev.chunks) {
      if (ch.seq < next)
        continue;
      if (ch.seq > next)
        return {v::output_gap, ch.seq, next};
      next = ch.seq + 1;
    }
  } else if (ev.kind == proto::event_kind::result
             && ev.record.state != task_state::interrupted
             && !is_terminal(ev.record.state)) {
    return {v::bad_result};
  }
  return {v::accept};
}

hello_reconciliation reconcile(const std::map<std::string, task_entry>& tasks,
                               const std::string& daemon,
                               const std::vector<proto::attempt_seq>& running) {
  hello_reconciliation out;
  for (auto& r : running) {
    out.known.insert(r.task);
    auto t = tasks.find(r.task);
    bool current = t != tasks.end() && r.attempt == t->second.rec.attempt
                   && t->second.rec.state != task_state::queued
                   && t->second.daemon == daemon;
    if (current) {
      out.acked.push_back({r.task, r.attempt, t->second.acked});
      if (t->second.cancel_requested && !is_terminal(t->second.rec.state))
        out.cancels.push_back({r.task, r.attempt, "user"});
    } else {
      // Stale or unknown: the server wants none of it.
      out.acked.push_back({r.task, r.attempt, r.seq});
      out.cancels.push_back({r.task, r.attempt, "fenced"});
    }
  }
  return out;
}

} // namespace makima::server_detail
