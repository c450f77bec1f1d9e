// The `makima` command line: parses arguments (CLI11), resolves the
// configuration and runs one subcommand. `main` is only a call to `run_cli`.
#pragma once

namespace makima::app {

/// Exit statuses of makima itself (the task's own status is passed through
/// otherwise; see `exit_status_of` in actors/messages.hpp).
enum exit_code : int {
  exit_ok = 0,
  /// Usage or configuration error, unknown task id, wrong task state.
  exit_usage = 2,
  /// makima's own failure: repository, ref, store, data dir, push.
  exit_internal = 125,
};

/// Runs the command line; returns the process exit status.
int run_cli(int argc, char** argv);

} // namespace makima::app
