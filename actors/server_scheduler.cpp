// The SERVER's scheduling decisions (server_scheduler.hpp): selector
// matching, daemon choice, the dispatch plan and the retry backoff.
#include "actors/server_scheduler.hpp"

#include <algorithm>
#include <cmath>

namespace makima::server_detail {

namespace {

/// pick_daemon with `planned` extra tasks per daemon id (the plan's own
/// assignments so far); returns the daemon's id, or nullptr. `resumes`:
/// daemons that said they have no checkpoint store are passed over.
const std::string* pick(const std::map<std::string, daemon_entry>& daemons,
                        const task_spec& spec,
                        const std::map<std::string, size_t>& planned,
                        bool resumes) {
  const daemon_entry* best = nullptr;
  const std::string* best_id = nullptr;
  size_t best_load = 0;
  for (auto& [id, d] : daemons) {
    auto p = planned.find(id);
    auto d_load = d.tasks.size() + (p != planned.end() ? p->second : 0);
    if (!d.connected || d.draining || d_load >= d.capacity
        || !matches(d, spec) || (resumes && !can_resume(d)))
      continue;
    if (!best) {
      best = &d;
      best_id = &id;
      best_load = d_load;
      continue;
    }
    bool d_cached = has_repo(d, spec.repo);
    bool b_cached = has_repo(*best, spec.repo);
    if (d_cached != b_cached) {
      if (d_cached) {
        best = &d;
        best_id = &id;
        best_load = d_load;
      }
      continue;
    }
    // Least loaded: running/capacity, compared without division.
    if (d_load * best->capacity < best_load * d.capacity) {
      best = &d;
      best_id = &id;
      best_load = d_load;
    }
  }
  return best_id;
}

} // namespace

bool matches(const daemon_entry& d, const task_spec& spec) {
  for (auto& [k, v] : spec.selector) {
    if (k == "pool") {
      if (d.pool != v)
        return false;
      continue;
    }
    auto it = d.labels.find(k);
    if (it == d.labels.end() || it->second != v)
      return false;
  }
  return true;
}

bool can_resume(const daemon_entry& d) {
  return d.checkpoints.value_or(true);
}

bool has_repo(const daemon_entry& d, const std::string& repo) {
  return !repo.empty()
         && std::find(d.cached_repos.begin(), d.cached_repos.end(), repo)
                != d.cached_repos.end();
}

size_t free_slots(const std::map<std::string, daemon_entry>& daemons) {
  size_t n = 0;
  for (auto& [id, d] : daemons)
    if (d.connected && !d.draining && d.tasks.size() < d.capacity)
      n += d.capacity - d.tasks.size();
  return n;
}

const daemon_entry*
pick_daemon(const std::map<std::string, daemon_entry>& daemons,
            const task_spec& spec, bool resumes) {
  auto id = pick(daemons, spec, {}, resumes);
  return id ? &daemons.at(*id) : nullptr;
}

dispatch_decision
dispatch_plan(const std::deque<std::string>& queue,
              const std::map<std::string, task_entry>& tasks,
              const std::map<std::string, daemon_entry>& daemons,
              clock::time_point now, const std::set<std::string>& held) {
  dispatch_decision out;
  auto slots = free_slots(daemons);
  if (slots == 0)
    return out;
  std::map<std::string, size_t> planned;
  std::set<std::string> seen;
  for (auto& id : queue) {
    ++out.scanned;
    auto t = tasks.find(id);
    if (t == tasks.end() || t->second.rec.state != task_state::queued)
      continue;
    if (t->second.not_before > now || held.count(id) > 0
        || !seen.insert(id).second)
      continue; // retry backoff: a timeout_atom dispatches again
    bool resumes = !t->second.checkpoints.empty();
    auto d = pick(daemons, t->second.rec.spec, planned, resumes);
    if (!d) {
      // Only daemons without a store are free for it: it waits for one
      // with a store instead of spending an attempt that cannot restore.
      if (resumes && pick(daemons, t->second.rec.spec, planned, false))
        out.need_store.push_back(id);
      continue;
    }
    ++planned[*d];
    out.assignments.push_back({id, *d});
    if (--slots == 0)
      break;
  }
  return out;
}

uint32_t attempt_budget(const server_settings& s, const task_spec& spec) {
  return spec.max_attempts != 0 ? spec.max_attempts : s.max_attempts;
}

std::chrono::milliseconds retry_delay(const server_settings& s,
                                      uint32_t attempt) {
  double delay = std::min(
      s.retry_backoff_max,
      s.retry_backoff * std::pow(2.0, std::min<uint32_t>(attempt, 31) - 1));
  if (!(delay > 0))
    delay = 0;
  return std::chrono::milliseconds{static_cast<int64_t>(delay * 1000)};
}

std::chrono::milliseconds remaining_backoff(const server_settings& s,
                                            uint32_t attempt,
                                            int64_t requeued_at_ms,
                                            int64_t now_ms) {
  if (attempt == 0)
    return std::chrono::milliseconds{0};
  auto delay = retry_delay(s, attempt);
  auto elapsed =
      std::chrono::milliseconds{std::max<int64_t>(0, now_ms - requeued_at_ms)};
  return elapsed >= delay ? std::chrono::milliseconds{0} : delay - elapsed;
}

} // namespace makima::server_detail
