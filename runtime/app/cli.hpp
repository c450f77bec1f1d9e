// What every `makima` subcommand shares: leaving with a status, resolving
// the configuration, the actor system config, opening the data dir. The
// subcommands live in commands.cpp (local mode), server_cmd.cpp (`server`,
// `local`), daemon_cmd.cpp (`daemon`) and client_cmd.cpp (`task ... --server`).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/actor_system_config.hpp>
#include <caf/error.hpp>

#include "config/config.hpp"
#include "runtime/app/commands.hpp"
#include "runtime/log.hpp"

namespace CLI {
class App;
class Option;
} // namespace CLI

namespace makima::store {
class db;
class object_store;
} // namespace makima::store

namespace makima::checkpoint {
struct settings;
} // namespace makima::checkpoint

namespace makima {
enum class task_state : uint8_t;
struct task_record;
struct task_spec;
struct state_change;
struct daemon_settings;
struct node_workspace;
} // namespace makima

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
/// up logging (at `log.level`, else `default_level`); leaves with
/// exit_usage on a bad value.
config resolve_config(const common_options& opts,
                      const std::function<void(config&)>& apply_flags = {},
                      log::level default_level = log::level::warn);

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

/// "another makima is using the data dir DIR (pid N); …" with the pid of
/// the lock holder when known, and what to do instead.
std::string locked_data_dir_message(const config& cfg);

/// Opens `cfg.db_dir` read-write; leaves when another makima holds it.
std::unique_ptr<opened_db> open_primary(const config& cfg);

/// Opens the database for reading: read-write when free, else as a
/// secondary next to the running makima. Null when there is no database.
std::unique_ptr<opened_db> open_for_reading(const config& cfg);

/// What `makima run` and `makima task submit` both take to describe a
/// task, plus the command after "--".
struct task_flags {
  std::string repo;
  std::string ref;
  std::string id;
  /// Whether --id was given (an empty --id is an error, not "generate").
  bool id_given = false;
  /// Seconds; -1 = not given.
  double timeout = -1;
  double grace = -1;
  std::vector<std::string> env;
  bool commit = false;
  std::string push;
  std::vector<std::string> command;
};

/// Adds --repo, --ref, --id, --timeout, --grace, --env, --commit and --push
/// to `cmd`; returns the --id option (its count() sets `id_given`).
CLI::Option* add_task_flags(CLI::App* cmd, task_flags& f);

/// Leaves with exit_usage naming `what` when `value` is not valid UTF-8.
void check_utf8(const std::string& value, const std::string& what);

/// Leaves with exit_usage naming `flag` unless `value` is -1 (not given)
/// or a finite number of seconds from 0 to max_timeout_seconds (30 days).
void check_seconds(double value, const std::string& flag);

/// Leaves with exit_usage on an empty or invalid --id, an --env that is not
/// KEY=VALUE or sets one of makima's task variables (MAKIMA_TASK_ID …),
/// a command argument, --env, --repo, --ref or --push that is not valid
/// UTF-8, a --timeout or --grace that is not finite or outside 0 to 30
/// days, or --commit / --push without --repo.
void check_task_flags(const task_flags& f);

/// Adds --pass-env NAME (repeatable) to `cmd` (`run`, `daemon`, `local`:
/// the commands whose process starts tasks).
void add_pass_env_flag(CLI::App* cmd, std::vector<std::string>& names);

/// Adds the --pass-env `names` to `cfg.pass_env`; leaves with exit_usage
/// when one is no variable name or one of makima's secrets.
void apply_pass_env(config& cfg, const std::vector<std::string>& names);

/// The environment every task of this process starts from:
/// process::base_environment of this process's environment and
/// `cfg.pass_env`.
std::vector<std::string> task_base_env(const config& cfg);

/// Subcommands a file adds: each CLI11 subcommand with what runs it when
/// it was selected.
using command_table = std::vector<std::pair<CLI::App*, std::function<int()>>>;

/// `makima server` and `makima local` (server_cmd.cpp).
void add_server_commands(CLI::App& app, command_table& out);

/// Where a node's tasks work and what they start from: the repos,
/// worktrees and state dirs, the commit author, daemon.max_tasks and the
/// task environment (task_base_env).
node_workspace node_workspace_for(const config& cfg);

/// The daemon node's settings from a resolved config (daemon_cmd.cpp):
/// server.url, server.api_key, daemon.name (default: the host name),
/// daemon.pool, daemon.labels, daemon.max_tasks, server.ca_file,
/// server.heartbeat, net.max_frame_bytes, the data dirs, the task
/// environment. No health endpoint (the caller sets it).
daemon_settings daemon_settings_for(const config& cfg);

/// `makima daemon` (daemon_cmd.cpp).
void add_daemon_command(CLI::App& app, command_table& out);

/// `makima db repair` (cli.cpp).
void add_db_commands(CLI::App& app, command_table& out);

/// `makima help [CMD...]`, `version`, `completion bash|zsh`, `man` and
/// `config show` (help_cmd.cpp). Add them last: help, completion and man
/// walk the whole command tree when they run.
void add_help_commands(CLI::App& app, command_table& out);

/// The unknown command among the leading words of `args` (the arguments
/// after the program name), as "unknown command 'task lst' (did you mean
/// 'task list'?)", or that a command needs a subcommand; nullopt when the
/// words name commands (help_cmd.cpp). The caller prints it after
/// "makima: " and exits with exit_usage.
std::optional<std::string>
unknown_command(const CLI::App& app, const std::vector<std::string>& args);

/// The version of this build (CMake's project version).
const char* build_version();
/// `git rev-parse --short HEAD` of the source tree at configure time, or
/// "unknown" (generated build_info.cpp).
const char* build_commit();
/// CMAKE_BUILD_TYPE of this build.
const char* build_type();

/// What a numeric flag takes, for its error message.
enum class number_kind {
  /// A number of seconds, e.g. 30 or 1.5.
  seconds,
  /// A whole number, e.g. 4.
  whole,
};

/// Checks `opt`'s text before CLI11 converts it: a number of `kind` from
/// `min` to `max` (above `min` when `min_exclusive`). Errors read
/// "--timeout: expected seconds (e.g. 30, 1.5), got 'abc'" and
/// "--max-tasks: expected a whole number from 1 to 4096, got '0'".
void check_number(CLI::Option* opt, number_kind kind, double min, double max,
                  bool min_exclusive = false);

/// Resolves the host of a listen address (--listen, --health-listen): an
/// IP literal stays as it is; a host name (e.g. localhost) is resolved and
/// accepted only when every address it resolves to is loopback, and
/// becomes the loopback address to bind (127.0.0.1 when among them).
/// Leaves with exit_usage naming `flag` otherwise.
std::string listen_host(const std::string& host, const std::string& flag);

/// Whether `host` is a loopback IP literal (127.0.0.0/8, ::1).
bool is_loopback_address(const std::string& host);

/// Subcommands whose trailing words are a command line (`run`, `task
/// submit`): run_cli takes everything after "--" or from the first word
/// that is no option out of the arguments into the vector before CLI11
/// parses them.
using trailing_table =
    std::vector<std::pair<CLI::App*, std::vector<std::string>*>>;

/// `makima task submit|cancel|wait` (client_cmd.cpp); `task` is the
/// `task` subcommand.
void add_client_commands(CLI::App& task, command_table& out,
                         trailing_table& trailing);

/// Prints tasks as `task list` does: a table (with AGE since creation and
/// DURATION of the last attempt), or a JSON array of records.
void print_task_list(const std::vector<task_record>& records, bool json);

/// The state a `--state NAME` flag names (nullopt for an empty name);
/// leaves with exit_usage listing the valid names when `name` is none.
std::optional<task_state> parse_state_flag(const std::string& name);

/// The record of task `id` in `db`; nullopt when there is none (or it cannot
/// be parsed). Leaves with the store's status on a read error.
std::optional<task_record> stored_record(store::db& db, const std::string& id);

/// `records` sorted by creation time (newest last; ties by id), only those
/// in `state` when given.
std::vector<task_record> select_tasks(std::vector<task_record> records,
                                      std::optional<task_state> state);

/// A span of milliseconds the way `task list` shows it: "850ms", "42s",
/// "3m", "2h", "5d" when `coarse`, else "4.2s", "3m05s", "2h07m", "1d03h".
std::string format_span(int64_t ms, bool coarse);

/// Parses a duration such as "30s", "10m", "2h", "7d" (a plain number is
/// seconds) into milliseconds; nullopt when malformed.
std::optional<int64_t> parse_span(const std::string& text);

/// "512 B", "3.4 KiB", "1.2 MiB", "2.0 GiB" (task_cmd.cpp).
std::string format_bytes(uint64_t n);

/// --store, --s3-endpoint and --s3-region of the commands that use the
/// checkpoint store (each also from the environment and the config file:
/// MAKIMA_STORE / checkpoint.store, MAKIMA_S3_ENDPOINT /
/// checkpoint.s3_endpoint, MAKIMA_S3_REGION / checkpoint.s3_region).
struct store_flags {
  std::string url;
  std::string s3_endpoint;
  std::string s3_region;
  /// --checkpoint-key (MAKIMA_CHECKPOINT_KEY / checkpoint.key).
  std::string key;
};

/// Adds --store, --s3-endpoint, --s3-region and --checkpoint-key to `cmd`.
void add_store_flags(CLI::App* cmd, store_flags& f);

/// Applies the given store flags to `cfg` (for resolve_config's
/// apply_flags); leaves with exit_usage on a bad value.
void apply_store_flags(config& cfg, const store_flags& f);

/// Adds add_store_flags' flags and --checkpoint-interval to `cmd` (`run`,
/// `task resume`, `daemon`); `interval` stays -1 unless given.
void add_checkpoint_flags(CLI::App* cmd, store_flags& store, double& interval);

/// Applies the flags of add_checkpoint_flags to `cfg` (resolve_config's
/// apply_flags).
void apply_checkpoint_flags(config& c, const store_flags& store,
                            double interval);

/// The checkpoint store of `cfg` (checkpoint.store and the S3 keys);
/// leaves with a clear message on a bad URL or missing credentials.
std::unique_ptr<store::object_store> open_checkpoint_store(const config& cfg);

/// How the data dir of `cfg` makes and restores checkpoints (paths, key,
/// node name: the host name).
checkpoint::settings checkpoint_settings(const config& cfg);

/// `makima task checkpoint|restore` and `makima checkpoint …`
/// (checkpoint_cmd.cpp); `task` is the `task` subcommand, `app` the top
/// level.
void add_checkpoint_commands(CLI::App& task, CLI::App& app,
                             command_table& out);

/// `makima task rm|prune` and `makima gc` (task_cmd.cpp); `task` is the
/// `task` subcommand, `app` the top level.
void add_task_commands(CLI::App& task, CLI::App& app, command_table& out);

/// Prints one task as `task show` does (with "exit_status" in JSON);
/// `history` is null when unknown (a server's record).
void print_task(const task_record& rec,
                const std::vector<state_change>* history, bool json);

/// --server, --api-key and --ca-file of the commands that talk to a
/// server (each also from the environment and the config file:
/// MAKIMA_SERVER / server.url, MAKIMA_API_KEY / server.api_key,
/// MAKIMA_CA_FILE / server.ca_file).
struct server_flags {
  std::string url;
  std::string api_key;
  std::string ca_file;
};

/// Adds --server, --api-key and --ca-file to `cmd`.
void add_server_flags(CLI::App* cmd, server_flags& o);

/// A server the CLI talks to over the HTTP API (docs/protocol.md §10).
struct server_target {
  /// "http[s]://host:port" (a ws[s]://…/ws/daemon URL mapped to it).
  std::string base;
  std::string api_key;
  std::string ca_file;
};

/// The labels of repeated `--selector K=V` flags; leaves with exit_usage
/// on an entry without `=` or a name, or invalid UTF-8.
std::map<std::string, std::string>
selector_of(const std::vector<std::string>& flags);

/// The server of a client command: --server, else MAKIMA_SERVER or
/// server.url — unless `required` is false and --data-dir was given (then
/// a local command stays local). nullopt when there is none and not
/// `required`; leaves with exit_usage when required and missing or bad.
std::optional<server_target> resolve_server(const common_options& common,
                                            const server_flags& flags,
                                            bool required);

/// `task list|show|logs` against a server (client_cmd.cpp).
/// `state`: only the tasks in that state (filtered here, after paging).
int remote_list(const server_target& target, bool json,
                std::optional<task_state> state);
int remote_show(const server_target& target, const std::string& id, bool json);

/// `task checkpoint ID --server URL`: the server has the task's daemon
/// checkpoint it now; prints the ref (client_cmd.cpp).
int remote_checkpoint(const server_target& target, const std::string& id);

/// `task pull`: the server hands the task off (after its daemon's final
/// checkpoint); returns the checkpoint ref to restore (client_cmd.cpp).
std::string remote_pull(const server_target& target, const std::string& id);

/// `task push`: submits `spec` to go on from checkpoint `ref` (its output
/// continuing at `next_seq`); returns the id.
std::string remote_push(const server_target& target, const task_spec& spec,
                        const std::string& ref, uint64_t next_seq);
/// Without `follow`: prints the output so far; with it: follows the event
/// stream until the task ends and returns its exit status.
int remote_logs(const server_target& target, const std::string& id,
                bool follow);

} // namespace makima::app
