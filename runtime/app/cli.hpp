// What every `makima` subcommand shares: leaving with a status, resolving
// the configuration, the actor system config, opening the data dir. The
// subcommands live in commands.cpp (local mode), server_cmd.cpp (`server`,
// `local`), daemon_cmd.cpp (`daemon`) and client_cmd.cpp (`task ... --server`).
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor_system_config.hpp>
#include <caf/error.hpp>

#include "config/config.hpp"
#include "runtime/app/commands.hpp"

namespace CLI {
class App;
} // namespace CLI

namespace makima::store {
class db;
} // namespace makima::store

namespace makima::app {

/// Thrown inside a command to leave with a status and message.
struct command_exit {
  int status;
  std::string message;
};

/// Leaves the command: prints "makima: <message>" and exits with `status`.
[[noreturn]] void fail(int status, std::string message);

/// exit_usage for the user's mistakes (bad argument, unknown id, wrong
/// state), exit_internal otherwise.
int status_for(const caf::error& err);

/// Options shared by every command.
struct common_options {
  std::string data_dir;
  std::string config_file;
};

/// Adds --data-dir and --config to `cmd`.
void add_common(CLI::App* cmd, common_options& o);

/// Loads file + env, applies the command's flags, finalizes paths and sets
/// up logging; leaves with exit_usage on a bad value.
config resolve_config(const common_options& opts,
                      const std::function<void(config&)>& apply_flags = {});

/// The actor system of one command. Two scheduler threads: the machine has
/// two cores, and every blocking actor is detached anyway.
struct system_config : caf::actor_system_config {
  system_config();
};

/// An opened database plus what it takes to close it cleanly.
struct opened_db {
  std::shared_ptr<store::db> db;
  /// Directory of a secondary instance, removed on close.
  std::filesystem::path secondary_dir;
  bool primary = false;
  ~opened_db();
};

/// Opens `cfg.db_dir` read-write; leaves when another makima holds it.
std::unique_ptr<opened_db> open_primary(const config& cfg);

/// Opens the database for reading: read-write when free, else as a
/// secondary next to the running makima. Null when there is no database.
std::unique_ptr<opened_db> open_for_reading(const config& cfg);

/// Subcommands a file adds: each CLI11 subcommand with what runs it when
/// it was selected.
using command_table = std::vector<std::pair<CLI::App*, std::function<int()>>>;

/// `makima server` and `makima local` (server_cmd.cpp).
void add_server_commands(CLI::App& app, command_table& out);

/// `makima daemon` (daemon_cmd.cpp).
void add_daemon_command(CLI::App& app, command_table& out);

/// `makima task submit|cancel|wait` (client_cmd.cpp); `task` is the
/// `task` subcommand.
void add_client_commands(CLI::App& task, command_table& out);

} // namespace makima::app
