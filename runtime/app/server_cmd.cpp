// `makima server` and `makima local`: the HTTP API, the daemon endpoint and
// scheduling (server), plus a daemon in the same process (local).
#include "runtime/app/cli.hpp"

#include <CLI/CLI.hpp>

namespace makima::app {

void add_server_commands(CLI::App&, command_table&) {
  // Not implemented yet (issue 3).
}

} // namespace makima::app
