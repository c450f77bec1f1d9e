// makima's configuration: one struct, loaded from a TOML file, then
// environment variables, then command-line flags (precedence flag > env >
// file > default). Every key is documented in config/makima.example.toml.
// A bad value is an ec::invalid_config error whose message names the key and
// where the value came from.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace makima {

/// Resolved configuration of one makima process.
struct config {
  // [paths]
  /// Root of everything makima keeps (`paths.data_dir`); empty until
  /// `finalize`.
  std::filesystem::path data_dir;
  /// RocksDB directory (`paths.db_dir`, default DATA/db).
  std::filesystem::path db_dir;
  /// Bare mirror cache (`paths.repos_dir`, default DATA/repos).
  std::filesystem::path repos_dir;
  /// Task worktrees (`paths.worktrees_dir`, default DATA/worktrees).
  std::filesystem::path worktrees_dir;
  /// Per-task state dirs (`paths.state_dir`, default DATA/state).
  std::filesystem::path state_dir;

  // [task]
  /// Default timeout in seconds, 0 = none (`task.timeout`).
  double timeout = 0;
  /// Seconds between SIGTERM and SIGKILL (`task.grace`).
  double grace = 10;
  /// Names of makima's environment variables passed to every task besides
  /// the built-in list (`task.pass_env`, MAKIMA_PASS_ENV; the --pass-env
  /// flags add to it). Never one of makima's secrets (rejected).
  std::vector<std::string> pass_env;
  /// Remove a task's worktree once it succeeded and its branch was pushed
  /// (`task.remove_worktree_on_push`, MAKIMA_TASK_REMOVE_WORKTREE_ON_PUSH);
  /// the records and the branch stay.
  bool remove_worktree_on_push = false;

  // [git]
  std::string author_name = "makima";
  std::string author_email = "makima@localhost";

  // [store]
  /// fsync the WAL on every write (`store.sync`).
  bool sync = false;

  // [checkpoint]
  /// Object store of checkpoints (`checkpoint.store`, MAKIMA_STORE):
  /// file:///abs/path or s3://BUCKET[/PREFIX]; default file://DATA/store.
  std::string store_url;
  /// s3:// endpoint (`checkpoint.s3_endpoint`, MAKIMA_S3_ENDPOINT).
  std::string s3_endpoint;
  /// SigV4 region (`checkpoint.s3_region`, MAKIMA_S3_REGION).
  std::string s3_region = "auto";
  /// S3 credentials (`checkpoint.s3_access_key_id` / AWS_ACCESS_KEY_ID,
  /// `checkpoint.s3_secret_access_key` / AWS_SECRET_ACCESS_KEY,
  /// `checkpoint.s3_session_token` / AWS_SESSION_TOKEN); never logged,
  /// never passed to a task.
  std::string s3_access_key_id;
  std::string s3_secret_access_key;
  std::string s3_session_token;
  /// HMAC key of manifests (`checkpoint.key`, MAKIMA_CHECKPOINT_KEY);
  /// empty: unsigned, and signatures are not checked.
  std::string checkpoint_key;
  /// Seconds between checkpoints of a running task, 0 = off
  /// (`checkpoint.interval`, MAKIMA_CHECKPOINT_INTERVAL; flag
  /// --checkpoint-interval).
  double checkpoint_interval = 0;
  /// Stop the task's process group while its files are captured
  /// (`checkpoint.stop_task`, MAKIMA_CHECKPOINT_STOP_TASK).
  bool checkpoint_stop_task = true;
  /// Seconds between two publications of a repository's mirror packs by a
  /// daemon, 0 = never publish (`checkpoint.mirror_packs_interval`,
  /// MAKIMA_MIRROR_PACKS_INTERVAL). Cold daemons seed their mirrors from
  /// them (docs/checkpoint-format.md, "Mirror packs").
  double mirror_packs_interval = 3600;

  // [log]
  /// Empty: the command's default (`info` for `server`, `daemon` and
  /// `local`, `warn` for every other command).
  std::string log_level;
  /// "text" or "json".
  std::string log_format = "text";

  // [daemon]
  /// Tasks run at once by one daemon (`daemon.max_tasks`).
  int max_tasks = 4;

  /// Daemon name (`daemon.name`; empty = hostname).
  std::string daemon_name;
  /// `daemon.pool`: k8s, cloudflare or local.
  std::string pool = "local";
  /// `daemon.labels`, matched by task selectors.
  std::map<std::string, std::string> labels;
  /// HOST:PORT of a daemon's health endpoint (`daemon.health_listen`).
  std::string health_listen;
  /// Eviction of a daemon (SIGTERM; docs/protocol.md §14): everything done
  /// within `eviction_deadline` s; the tasks get `eviction_signal`, then
  /// SIGKILL after `eviction_grace` s.
  double eviction_deadline = 25;
  double eviction_grace = 10;
  int eviction_signal = 15;
  /// Seconds with no task after which a daemon drains and exits 0
  /// (`daemon.exit_when_idle`, MAKIMA_EXIT_WHEN_IDLE; flag
  /// --exit-when-idle); 0 = never. Burst and ephemeral containers.
  double exit_when_idle = 0;

  // [server] — client side: the server a daemon or the CLI talks to.
  std::string server_url;
  std::string api_key;
  /// Seconds between heartbeats (a server tells its daemons this value).
  double heartbeat = 5;
  double reconnect = 0.5;
  /// CA bundle for wss:// / https:// (`server.ca_file`; empty = system).
  std::filesystem::path ca_file;

  // [server] — server side (`makima server`).
  std::string listen = "127.0.0.1:7420";
  std::vector<std::string> user_keys;
  std::vector<std::string> daemon_keys;
  /// Seconds of silence after which a daemon loses its tasks.
  double lease = 30;
  /// Attempt budget of a task and the backoff between attempts (s):
  /// `server.max_attempts`, `server.retry_backoff`, `server.retry_backoff_max`.
  uint32_t max_attempts = 5;
  double retry_backoff = 1;
  double retry_backoff_max = 60;
  std::filesystem::path tls_cert;
  std::filesystem::path tls_key;
  /// Bounds of open output?follow=1 streams, per key and in total.
  uint32_t max_streams_per_key = 64;
  uint32_t max_streams = 1024;

  // [net]
  uint64_t max_frame_bytes = 1 << 20;
  uint64_t max_body_bytes = 1 << 20;

  /// The file the values came from, if any.
  std::optional<std::filesystem::path> source_file;
  /// Where each key set so far got its value: the `origin` given to
  /// set_config_value ("config file PATH", "environment variable NAME",
  /// "--flag"); a key not in it has its default (`makima config show`).
  std::map<std::string, std::string> origins;
};

/// Environment as a map (for tests: pass a synthetic one).
using env_map = std::map<std::string, std::string>;

/// Returns the process environment as a map.
env_map process_env();

/// Returns the default data dir: $MAKIMA_DATA_DIR, else
/// $XDG_DATA_HOME/makima, else ~/.local/share/makima.
std::filesystem::path default_data_dir(const env_map& env);

/// Returns the config file to read when no --config is given:
/// $MAKIMA_CONFIG, else $XDG_CONFIG_HOME/makima/makima.toml, else
/// ~/.config/makima/makima.toml — nullopt when that file does not exist
/// (a missing $MAKIMA_CONFIG file is an error reported by `load_config`).
std::optional<std::filesystem::path> default_config_file(const env_map& env);

/// Loads the configuration from `file` (nullopt: the default location, if
/// present) and `env`. Paths stay empty unless set; call `finalize` after
/// applying flags. Errors: ec::invalid_config naming the key, or the file
/// when it is missing or not valid TOML.
caf::expected<config>
load_config(const std::optional<std::filesystem::path>& file,
            const env_map& env);

/// Sets one key ("task.grace") from its text form, as a flag would.
/// `origin` describes where it came from, for the error message.
caf::error set_config_value(config& cfg, const std::string& key,
                            const std::string& value,
                            const std::string& origin);

/// Every key of config_keys() with its value in `cfg` as text (a list
/// comma-separated; secrets as they are: the caller redacts them).
std::vector<std::pair<std::string, std::string>>
config_values(const config& cfg);

/// Whether `key` holds secrets (server.api_key, server.user_keys,
/// server.daemon_keys): never shown.
bool is_secret_key(const std::string& key);

/// Fills data_dir (default_data_dir) and the paths derived from it that are
/// still empty, making all of them absolute.
void finalize(config& cfg, const env_map& env);

/// Checks a name given to pass from makima's environment to tasks
/// (--pass-env, task.pass_env): ec::invalid_config when it is no valid
/// variable name or one of makima's secrets (process::is_withheld).
/// `origin` names the flag or key, for the message.
caf::error check_pass_env_name(const std::string& name,
                               const std::string& origin);

/// The keys and their environment variable names, for docs and tests.
struct config_key {
  std::string key;
  std::vector<std::string> env;
  std::string help;
};
const std::vector<config_key>& config_keys();

} // namespace makima
