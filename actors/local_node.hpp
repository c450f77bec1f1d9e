// The node of `makima run` and `makima task resume`: a DAEMON with the local
// LINK (output to this process's stdout/stderr) and the process reactor,
// over a PERSISTENCE actor the caller owns. It runs one attempt at a time
// to its end and owns the stop-signal policy of a foreground task: the
// first SIGINT/SIGTERM/SIGHUP cancels it (SIGTERM to its process group,
// SIGKILL after the grace), a second one cancels again, which kills it
// at once. Nothing here throws or exits the process.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "actors/daemon.hpp"
#include "actors/local_link.hpp"

namespace makima::process {
class reactor;
} // namespace makima::process

namespace makima {

/// What a local node is made of (the CLI fills it from the config).
struct local_settings {
  /// Where tasks work and what they start from.
  node_workspace workspace;
  /// Where the task's output goes, byte for byte.
  int out_fd = 1;
  int err_fd = 2;
  /// What the LINK shows of the attempt's phases on `err_fd`.
  progress_mode progress = progress_mode::quiet;
  /// Takes periodic checkpoints (workspace.checkpoint_interval); null: off.
  checkpointer_actor checkpointer = {};
};

/// A running local node. Destroying it stops it (like `stop()`).
class local_node {
public:
  ~local_node();
  local_node(const local_node&) = delete;
  local_node& operator=(const local_node&) = delete;

  /// Spawns the local LINK and the DAEMON on `sys` over `persist` (the
  /// PERSISTENCE of a primary database).
  static caf::expected<std::unique_ptr<local_node>>
  start(caf::actor_system& sys, local_settings s, persistence_actor persist);

  /// Always true once started: a local node has no server to wait for.
  bool ready() const { return !stopped_; }

  /// Runs attempt `rec.attempt` of `rec` (already stored) to its end and
  /// returns the final record; stop signals during the run cancel it (see
  /// the file comment).
  task_record run(task_record rec);

  /// Cancels the attempt that `run` is waiting for, as a stop signal does;
  /// run() returns once it ended. Thread-safe.
  void cancel();

  /// Cancels the running attempt (if any) and waits until it ended or
  /// `bound` passed; true when nothing is left running. Thread-safe.
  bool drain(std::chrono::milliseconds bound);

  /// Stops the LINK and DAEMON (their TASK actors, and children with the
  /// reactor). Idempotent.
  void stop();

private:
  local_node() = default;
  caf::actor_system* sys_ = nullptr;
  persistence_actor persist_;
  std::shared_ptr<process::reactor> reactor_;
  daemon_actor daemon_;
  link_actor link_;
  struct run_state;
  std::shared_ptr<run_state> run_;
  bool stopped_ = false;
};

} // namespace makima
