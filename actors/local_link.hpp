// The in-process LINK of `makima run` and `task resume`: the server side
// reduced to a terminal. Output goes to makima's own stdout/stderr as the
// child wrote it; the final record goes to a callback.
#pragma once

#include <functional>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"

namespace makima {

/// State of the local LINK. Receives from TASK (and DAEMON for queued
/// cancellations); writes to file descriptors 1 and 2. Detached: a slow
/// terminal blocks its writes, and the reply to each output batch is what
/// slows the task down in turn.
struct local_link_state {
  int out_fd = 1;
  int err_fd = 2;
  std::function<void(const task_record&)> on_result;
  std::function<void(const task_record&)> on_state;
  static inline const char* name = "local_link";
};

/// Behavior of the local LINK.
link_actor::behavior_type
local_link(link_actor::stateful_pointer<local_link_state> self, int out_fd,
           int err_fd, std::function<void(const task_record&)> on_state,
           std::function<void(const task_record&)> on_result);

/// Spawns the local LINK (detached).
link_actor spawn_local_link(caf::actor_system& sys, int out_fd, int err_fd,
                            std::function<void(const task_record&)> on_state,
                            std::function<void(const task_record&)> on_result);

} // namespace makima
