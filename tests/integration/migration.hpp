// Helpers of the migration tests (migration_test.cpp,
// migration_faults_test.cpp): what the server says of a task (its output
// and seqs, its history, its checkpoints) and of its worktree, read
// through the fleet harness (fleet.hpp).
#pragma once

#include <set>

#include "tests/integration/fleet.hpp"

namespace makima::it::migration {

/// The task's output at the server: the text and every chunk's seq.
struct seqs_t {
  std::string text;
  std::vector<uint64_t> seqs;
};
inline seqs_t output_seqs(const api& http, const std::string& id) {
  seqs_t o;
  uint64_t from = 0;
  for (int i = 0; i < 10000; ++i) {
    auto j = http.get_json("/api/v1/tasks/" + id
                           + "/output?from=" + std::to_string(from));
    if (!j.contains("chunks"))
      break;
    for (auto& c : j["chunks"]) {
      o.seqs.push_back(c.value("seq", uint64_t{0}));
      o.text += api::proto_decode(c.value("data", ""));
    }
    auto next = j.value("next", from);
    if (j["chunks"].empty() || next == from)
      break;
    from = next;
  }
  return o;
}

/// "" when `seqs` is 0, 1, 2, ... without gap or duplicate, else what is
/// wrong.
inline std::string contiguity(const std::vector<uint64_t>& seqs) {
  for (size_t i = 0; i < seqs.size(); ++i)
    if (seqs[i] != i)
      return "chunk " + std::to_string(i) + " has seq "
             + std::to_string(seqs[i]);
  return {};
}

/// Occurrences of `needle` in `hay`.
inline size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = 0; (p = hay.find(needle, p)) != std::string::npos;
       p += needle.size())
    ++n;
  return n;
}

/// The task's history (GET ?history=1).
inline json history(const api& http, const std::string& id) {
  auto j = http.get_json("/api/v1/tasks/" + id + "?history=1");
  return j.value("history", json::array());
}

/// Whether an entry of `h` has `state` (any when empty) and a detail
/// containing `needle`.
inline bool says(const json& h, const std::string& state, const std::string& needle) {
  for (auto& x : h)
    if ((state.empty() || x.value("state", "") == state)
        && x.value("detail", "").find(needle) != std::string::npos)
      return true;
  return false;
}

/// How many entries of `h` have a detail containing `needle`.
inline size_t entries_saying(const json& h, const std::string& needle) {
  size_t n = 0;
  for (auto& x : h)
    if (x.value("detail", "").find(needle) != std::string::npos)
      ++n;
  return n;
}

/// The attempts of `h` that ended in `state`.
inline std::set<int> attempts_in(const json& h, const std::string& state) {
  std::set<int> out;
  for (auto& x : h)
    if (x.value("state", "") == state)
      out.insert(x.value("attempt", 0));
  return out;
}

/// The step-* files (0..last) missing from `worktree`.
inline std::string missing_steps(const fs::path& worktree, int last = 8) {
  std::string out;
  for (int i = 0; i <= last; ++i) {
    auto f = worktree / ("step-" + std::to_string(i));
    if (slurp(f) != "step " + std::to_string(i) + "\n")
      out += " step-" + std::to_string(i);
  }
  return out;
}

/// The number n of a ref `id`/n, 0 when it is not one.
inline int ref_number(const std::string& id, const std::string& ref) {
  if (ref.rfind(id + "/", 0) != 0)
    return 0;
  try {
    return std::stoi(ref.substr(id.size() + 1));
  } catch (const std::exception&) {
    return 0;
  }
}

/// Waits until the output of `id` at the server contains `needle`.
inline bool output_has(const api& http, const std::string& id,
                const std::string& needle,
                std::chrono::milliseconds timeout = 30000ms) {
  return eventually(
      [&] { return http.output(id).all.find(needle) != std::string::npos; },
      timeout);
}

/// Waits until the server knows checkpoint `at_least` (or a later one)
/// of `id`; returns its latest ("" if none came).
inline std::string known_checkpoint(const api& http, const std::string& id,
                             int at_least = 1,
                             std::chrono::milliseconds timeout = 10000ms) {
  std::string ref;
  eventually(
      [&] {
        ref = http.task(id).value("checkpoint", "");
        return ref_number(id, ref) >= at_least;
      },
      timeout);
  return ref;
}

/// Everything a failed assertion should show.
inline std::string dump(const api& http, const std::string& id, const proc& a,
                 const proc& b) {
  auto j = http.get_json("/api/v1/tasks/" + id + "?history=1");
  return "record: " + j.dump(1) + "\n--- output:\n" + http.output(id).all
         + "\n--- daemon A:\n" + a.output() + "\n--- daemon B:\n" + b.output();
}

/// Kills what is left of the task `id`'s processes (a SIGKILLed daemon's
/// orphans), so that nothing outlives the test.
inline void reap(const std::string& id) {
  for (auto pid : pids_with_env("MAKIMA_TASK_ID=" + id))
    ::kill(pid, SIGKILL);
}

} // namespace makima::it::migration
