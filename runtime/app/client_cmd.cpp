// `makima task submit|cancel|wait|... --server URL`: the HTTP API client.
#include "runtime/app/cli.hpp"

#include <CLI/CLI.hpp>

namespace makima::app {

void add_client_commands(CLI::App&, command_table&) {
  // Not implemented yet (issue 3).
}

} // namespace makima::app
