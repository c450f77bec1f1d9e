// The in-process LINK of `makima run` and `task resume`: the server side
// reduced to a terminal. Output goes to makima's own stdout/stderr as the
// child wrote it; the final record goes to a callback. It also renders the
// attempt's phases on stderr (progress_mode): makima's own lines there are
// always whole lines, and a live status line is cleared before any byte of
// the child's output is written.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"

namespace makima {

/// What the local LINK shows of an attempt's phases on stderr.
enum class progress_mode : uint8_t {
  /// Nothing (`--quiet`, and the default of a local node).
  quiet,
  /// One line per finished phase with its duration (stderr is no terminal).
  lines,
  /// A status line redrawn in place with counts while a phase runs
  /// (cleared before any byte of the child's output), then the same lines.
  live,
};

/// State of the local LINK. Receives from TASK (and DAEMON for queued
/// cancellations); writes to file descriptors 1 and 2. Detached: a slow
/// terminal blocks its writes, and the reply to each output batch is what
/// slows the task down in turn.
struct local_link_state {
  int out_fd = 1;
  int err_fd = 2;
  std::function<void(const task_record&)> on_result;
  std::function<void(const task_record&)> on_state;
  progress_mode mode = progress_mode::quiet;
  /// A live status line is on the terminal (no newline after it).
  bool status_shown = false;
  /// When the child started (state running), until its line is printed.
  std::optional<std::chrono::steady_clock::time_point> running_since;
  static inline const char* name = "local_link";
};

/// Behavior of the local LINK.
link_actor::behavior_type
local_link(link_actor::stateful_pointer<local_link_state> self, int out_fd,
           int err_fd, std::function<void(const task_record&)> on_state,
           std::function<void(const task_record&)> on_result,
           progress_mode mode);

/// Spawns the local LINK (detached).
link_actor spawn_local_link(caf::actor_system& sys, int out_fd, int err_fd,
                            std::function<void(const task_record&)> on_state,
                            std::function<void(const task_record&)> on_result,
                            progress_mode mode = progress_mode::quiet);

} // namespace makima
