// `makima daemon`: a node that connects to a server and runs its tasks.
#include "runtime/app/cli.hpp"

#include <CLI/CLI.hpp>

namespace makima::app {

void add_daemon_command(CLI::App&, command_table&) {
  // Not implemented yet (issue 3).
}

} // namespace makima::app
