// Loading of makima's configuration: TOML file, then MAKIMA_* environment
// variables (including the names existing makima deployments use), each
// value validated with an error that names the key and its origin.
#include "config/config.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include <toml++/toml.h>

#include "actors/messages.hpp"
#include "actors/protocol.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/process/environment.hpp"

extern char** environ;

namespace makima {

namespace {

using setter = std::function<caf::error(config&, const std::string& value,
                                        const std::string& origin)>;

struct key_def {
  config_key doc;
  setter set;
};

caf::error bad(const std::string& key, const std::string& origin,
               const std::string& value, const std::string& why) {
  return make_error(ec::invalid_config,
                    "invalid value '" + value + "' for config key '" + key
                        + "' (from " + origin + "): " + why);
}

setter path_setter(std::filesystem::path config::*member, std::string key) {
  return [member, key](config& c, const std::string& v,
                       const std::string& origin) -> caf::error {
    if (v.empty())
      return bad(key, origin, v, "must not be empty");
    c.*member = v;
    return caf::none;
  };
}

setter string_setter(std::string config::*member, std::string key,
                     bool allow_empty = true) {
  return [=](config& c, const std::string& v,
             const std::string& origin) -> caf::error {
    if (!allow_empty && v.empty())
      return bad(key, origin, v, "must not be empty");
    c.*member = v;
    return caf::none;
  };
}

std::vector<std::string> split_list(const std::string& v) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= v.size()) {
    auto comma = v.find(',', start);
    auto item = v.substr(start, comma == std::string::npos ? std::string::npos
                                                           : comma - start);
    if (!item.empty())
      out.push_back(item);
    if (comma == std::string::npos)
      break;
    start = comma + 1;
  }
  return out;
}

// A comma-separated list of secrets: never echoed in an error.
setter key_list_setter(std::vector<std::string> config::*member) {
  return [member](config& c, const std::string& v, const std::string&) {
    c.*member = split_list(v);
    return caf::error{};
  };
}

setter bytes_setter(uint64_t config::*member, std::string key,
                    uint64_t min = 1024) {
  return [=](config& c, const std::string& v,
             const std::string& origin) -> caf::error {
    char* end = nullptr;
    errno = 0;
    auto n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0 || n < min
        || n > (uint64_t{1} << 30))
      return bad(key, origin, v,
                 "must be a number of bytes from " + std::to_string(min)
                     + " to 1073741824");
    c.*member = n;
    return caf::none;
  };
}

/// An integer from 1 to 1000000 (a count: streams, connections…).
setter count_setter(uint32_t config::*member, std::string key) {
  return [=](config& c, const std::string& v,
             const std::string& origin) -> caf::error {
    char* end = nullptr;
    errno = 0;
    auto n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0 || n < 1
        || n > 1000000)
      return bad(key, origin, v, "must be an integer from 1 to 1000000");
    c.*member = static_cast<uint32_t>(n);
    return caf::none;
  };
}

setter seconds_setter(double config::*member, std::string key, bool allow_zero,
                      double max = 0) {
  return [=](config& c, const std::string& v,
             const std::string& origin) -> caf::error {
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (v.empty() || end == nullptr || *end != '\0' || !std::isfinite(d))
      return bad(key, origin, v, "must be a number of seconds");
    if (d < 0 || (!allow_zero && d == 0))
      return bad(key, origin, v, allow_zero ? "must be >= 0" : "must be > 0");
    if (max > 0 && d > max)
      return bad(key, origin, v,
                 "must be at most " + std::to_string(static_cast<long>(max))
                     + " (30 days)");
    c.*member = d;
    return caf::none;
  };
}

caf::error parse_bool(const std::string& key, const std::string& origin,
                      const std::string& v, bool& out) {
  if (v == "true" || v == "1" || v == "yes" || v == "on")
    out = true;
  else if (v == "false" || v == "0" || v == "no" || v == "off")
    out = false;
  else
    return bad(key, origin, v, "must be true or false");
  return caf::none;
}

const std::vector<key_def>& defs() {
  static const std::vector<key_def> table = [] {
    std::vector<key_def> t;
    auto add = [&](std::string key, std::vector<std::string> env,
                   std::string help, setter s) {
      t.push_back(
          {{std::move(key), std::move(env), std::move(help)}, std::move(s)});
    };
    add("paths.data_dir", {"MAKIMA_DATA_DIR"}, "root of all makima data",
        path_setter(&config::data_dir, "paths.data_dir"));
    add("paths.db_dir", {"MAKIMA_DB_DIR", "MAKIMA_DAEMON_LOCALDB_PATH"},
        "RocksDB directory", path_setter(&config::db_dir, "paths.db_dir"));
    add("paths.repos_dir",
        {"MAKIMA_REPOS_DIR", "MAKIMA_DAEMON_WORKTREE_REPOSDIR"},
        "bare mirror cache",
        path_setter(&config::repos_dir, "paths.repos_dir"));
    add("paths.worktrees_dir",
        {"MAKIMA_WORKTREES_DIR", "MAKIMA_DAEMON_WORKTREE_BASEDIR"},
        "task worktrees",
        path_setter(&config::worktrees_dir, "paths.worktrees_dir"));
    add("paths.state_dir", {"MAKIMA_STATE_DIR_ROOT"}, "per-task state dirs",
        path_setter(&config::state_dir, "paths.state_dir"));
    add("task.timeout", {"MAKIMA_TASK_TIMEOUT"}, "default timeout, 0 = none",
        seconds_setter(&config::timeout, "task.timeout", true,
                       max_timeout_seconds));
    add("task.grace", {"MAKIMA_TASK_GRACE"}, "SIGTERM to SIGKILL delay",
        seconds_setter(&config::grace, "task.grace", true,
                       max_timeout_seconds));
    add("task.pass_env", {"MAKIMA_PASS_ENV"},
        "more variable names passed to tasks (comma-separated)",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          auto names = split_list(v);
          for (auto& n : names)
            if (auto err = check_pass_env_name(
                    n, "config key 'task.pass_env' (from " + o + ")"))
              return err;
          c.pass_env = std::move(names);
          return caf::none;
        });
    add("git.author_name", {"MAKIMA_GIT_AUTHOR_NAME"}, "commit author name",
        string_setter(&config::author_name, "git.author_name", false));
    add("git.author_email", {"MAKIMA_GIT_AUTHOR_EMAIL"}, "commit author email",
        string_setter(&config::author_email, "git.author_email", false));
    add("task.remove_worktree_on_push", {"MAKIMA_TASK_REMOVE_WORKTREE_ON_PUSH"},
        "remove the worktree of a task that succeeded and was pushed",
        [](config& c, const std::string& v, const std::string& o) {
          return parse_bool("task.remove_worktree_on_push", o, v,
                            c.remove_worktree_on_push);
        });
    add("store.sync", {"MAKIMA_STORE_SYNC"}, "fsync every write",
        [](config& c, const std::string& v, const std::string& o) {
          return parse_bool("store.sync", o, v, c.sync);
        });
    add("checkpoint.store", {"MAKIMA_STORE"},
        "object store of checkpoints: file:///abs/path or s3://BUCKET[/PREFIX]",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          if (!v.empty() && v.rfind("file:///", 0) != 0
              && v.rfind("s3://", 0) != 0)
            return bad("checkpoint.store", o, log::redact(v),
                       "must start with file:/// or s3://");
          c.store_url = v;
          return caf::none;
        });
    add("checkpoint.s3_endpoint", {"MAKIMA_S3_ENDPOINT"},
        "S3 endpoint URL (R2: https://ACCOUNT.r2.cloudflarestorage.com)",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          if (!v.empty() && v.rfind("http://", 0) != 0
              && v.rfind("https://", 0) != 0)
            return bad("checkpoint.s3_endpoint", o, log::redact(v),
                       "must start with http:// or https://");
          c.s3_endpoint = v;
          return caf::none;
        });
    add("checkpoint.s3_region", {"MAKIMA_S3_REGION"},
        "SigV4 region (auto for R2)",
        string_setter(&config::s3_region, "checkpoint.s3_region", false));
    add("checkpoint.s3_access_key_id", {"AWS_ACCESS_KEY_ID"},
        "S3 access key id (never logged)",
        [](config& c, const std::string& v, const std::string&) {
          c.s3_access_key_id = v;
          return caf::error{};
        });
    add("checkpoint.s3_secret_access_key", {"AWS_SECRET_ACCESS_KEY"},
        "S3 secret access key (never logged)",
        [](config& c, const std::string& v, const std::string&) {
          c.s3_secret_access_key = v;
          return caf::error{};
        });
    add("checkpoint.s3_session_token", {"AWS_SESSION_TOKEN"},
        "S3 session token (never logged)",
        [](config& c, const std::string& v, const std::string&) {
          c.s3_session_token = v;
          return caf::error{};
        });
    add("checkpoint.key", {"MAKIMA_CHECKPOINT_KEY"},
        "HMAC key of checkpoint manifests (never logged)",
        [](config& c, const std::string& v, const std::string&) {
          c.checkpoint_key = v;
          return caf::error{};
        });
    add("checkpoint.interval", {"MAKIMA_CHECKPOINT_INTERVAL"},
        "seconds between checkpoints of a running task, 0 = off",
        seconds_setter(&config::checkpoint_interval, "checkpoint.interval",
                       true, max_timeout_seconds));
    add("checkpoint.stop_task", {"MAKIMA_CHECKPOINT_STOP_TASK"},
        "stop the task (SIGSTOP/SIGCONT) while a checkpoint captures it",
        [](config& c, const std::string& v, const std::string& o) {
          return parse_bool("checkpoint.stop_task", o, v,
                            c.checkpoint_stop_task);
        });
    add("checkpoint.mirror_packs_interval", {"MAKIMA_MIRROR_PACKS_INTERVAL"},
        "seconds between publications of a repository's mirror packs by a "
        "daemon, 0 = never",
        seconds_setter(&config::mirror_packs_interval,
                       "checkpoint.mirror_packs_interval", true,
                       max_timeout_seconds));
    add("log.level", {"MAKIMA_LOG_LEVEL"}, "trace|debug|info|warn|error|off",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          log::level l;
          if (!log::parse_level(v, l))
            return bad("log.level", o, v,
                       "must be one of trace, debug, info, warn, error, off");
          c.log_level = v;
          return caf::none;
        });
    add("log.format", {"MAKIMA_LOG_FORMAT"}, "text|json",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          if (v != "text" && v != "json")
            return bad("log.format", o, v, "must be text or json");
          c.log_format = v;
          return caf::none;
        });
    add("daemon.max_tasks",
        {"MAKIMA_MAX_TASKS", "MAKIMA_DAEMON_PROCESS_MAXCONCURRENTTASKS"},
        "tasks run at once",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          char* end = nullptr;
          long n = std::strtol(v.c_str(), &end, 10);
          if (v.empty() || *end != '\0' || n < 1 || n > 4096)
            return bad("daemon.max_tasks", o, v,
                       "must be an integer from 1 to 4096");
          c.max_tasks = static_cast<int>(n);
          return caf::none;
        });
    add("server.url", {"MAKIMA_SERVER", "MAKIMA_DAEMON_SERVER_URL"},
        "server a daemon connects to",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          if (!v.empty() && v.rfind("ws://", 0) != 0
              && v.rfind("wss://", 0) != 0 && v.rfind("http://", 0) != 0
              && v.rfind("https://", 0) != 0)
            return bad("server.url", o, log::redact(v),
                       "must start with ws://, wss://, http:// or https://");
          c.server_url = v;
          return caf::none;
        });
    add("server.api_key", {"MAKIMA_API_KEY"}, "API key (never logged)",
        [](config& c, const std::string& v, const std::string&) {
          c.api_key = v;
          return caf::error{};
        });
    add("server.heartbeat",
        {"MAKIMA_HEARTBEAT", "MAKIMA_DAEMON_SERVER_HEARTBEATINTERVALSECS"},
        "heartbeat interval (s)",
        seconds_setter(&config::heartbeat, "server.heartbeat", false));
    add("server.reconnect",
        {"MAKIMA_RECONNECT", "MAKIMA_DAEMON_SERVER_RECONNECTINTERVALSECS"},
        "base of the daemon's reconnect backoff (s, at most 30)",
        seconds_setter(&config::reconnect, "server.reconnect", false, 30));
    add("server.ca_file", {"MAKIMA_CA_FILE"},
        "CA bundle to verify a wss:// or https:// server",
        path_setter(&config::ca_file, "server.ca_file"));
    add("server.listen", {"MAKIMA_SERVER_LISTEN"},
        "HOST:PORT `makima server` listens on",
        string_setter(&config::listen, "server.listen", false));
    add("server.user_keys", {"MAKIMA_SERVER_USER_KEYS"},
        "keys that submit, read and cancel (comma-separated; never logged)",
        key_list_setter(&config::user_keys));
    add("server.daemon_keys", {"MAKIMA_SERVER_DAEMON_KEYS"},
        "keys daemons connect with (comma-separated; never logged)",
        key_list_setter(&config::daemon_keys));
    add("server.lease", {"MAKIMA_SERVER_LEASE"},
        "silence (s) after which a daemon loses its tasks",
        seconds_setter(&config::lease, "server.lease", false));
    // Attempt budget and retry backoff of the server (issue 7, 7b).
    add("server.max_attempts", {"MAKIMA_SERVER_MAX_ATTEMPTS"},
        "attempts a task gets before it fails (a submission may set its own)",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          char* end = nullptr;
          long n = std::strtol(v.c_str(), &end, 10);
          if (v.empty() || *end != '\0' || n < 1 || n > 1000)
            return bad("server.max_attempts", o, v,
                       "must be an integer from 1 to 1000");
          c.max_attempts = static_cast<uint32_t>(n);
          return caf::none;
        });
    add("server.retry_backoff", {"MAKIMA_SERVER_RETRY_BACKOFF"},
        "delay (s) before a lost attempt's task runs again; doubles per "
        "attempt",
        seconds_setter(&config::retry_backoff, "server.retry_backoff", true));
    add("server.retry_backoff_max", {"MAKIMA_SERVER_RETRY_BACKOFF_MAX"},
        "largest delay (s) between two attempts",
        seconds_setter(&config::retry_backoff_max, "server.retry_backoff_max",
                       true));
    add("server.tls_cert", {"MAKIMA_SERVER_TLS_CERT"},
        "PEM certificate chain of the server",
        path_setter(&config::tls_cert, "server.tls_cert"));
    add("server.tls_key", {"MAKIMA_SERVER_TLS_KEY"},
        "PEM private key of the server",
        path_setter(&config::tls_key, "server.tls_key"));
    add("server.max_streams_per_key", {"MAKIMA_SERVER_MAX_STREAMS_PER_KEY"},
        "open output?follow=1 streams one key may hold (beyond: 429)",
        count_setter(&config::max_streams_per_key,
                     "server.max_streams_per_key"));
    add("server.max_streams", {"MAKIMA_SERVER_MAX_STREAMS"},
        "open output?follow=1 streams in total (beyond: 429)",
        count_setter(&config::max_streams, "server.max_streams"));
    add("net.max_frame_bytes", {"MAKIMA_MAX_FRAME_BYTES"},
        "largest WebSocket message accepted",
        // Below proto::min_frame_bytes a daemon would refuse the welcome
        // (docs/protocol.md §13): refuse the config instead.
        bytes_setter(&config::max_frame_bytes, "net.max_frame_bytes",
                     proto::min_frame_bytes));
    add("net.max_body_bytes", {"MAKIMA_MAX_BODY_BYTES"},
        "largest HTTP request body accepted",
        bytes_setter(&config::max_body_bytes, "net.max_body_bytes"));
    add("daemon.name", {"MAKIMA_DAEMON_NAME"}, "daemon name (default hostname)",
        string_setter(&config::daemon_name, "daemon.name", false));
    add("daemon.pool", {"MAKIMA_DAEMON_POOL"}, "k8s|cloudflare|local",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          if (v != "k8s" && v != "cloudflare" && v != "local")
            return bad("daemon.pool", o, v,
                       "must be one of k8s, cloudflare, local");
          c.pool = v;
          return caf::none;
        });
    add("daemon.labels", {"MAKIMA_DAEMON_LABELS"},
        "labels K=V (comma-separated) matched by task selectors",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          std::map<std::string, std::string> labels;
          for (auto& item : split_list(v)) {
            auto eq = item.find('=');
            if (eq == 0 || eq == std::string::npos)
              return bad("daemon.labels", o, v, "every label must be K=V");
            labels[item.substr(0, eq)] = item.substr(eq + 1);
          }
          c.labels = std::move(labels);
          return caf::none;
        });
    add("daemon.health_listen", {"MAKIMA_DAEMON_HEALTH_LISTEN"},
        "HOST:PORT of the daemon's /healthz (empty = none)",
        string_setter(&config::health_listen, "daemon.health_listen"));
    add("daemon.eviction_deadline", {"MAKIMA_EVICTION_DEADLINE"},
        "seconds from SIGTERM to exit: final checkpoints, acks (eviction)",
        seconds_setter(&config::eviction_deadline, "daemon.eviction_deadline",
                       false));
    add("daemon.eviction_grace", {"MAKIMA_EVICTION_GRACE"},
        "seconds between the eviction signal and SIGKILL of a task",
        seconds_setter(&config::eviction_grace, "daemon.eviction_grace", true));
    add("daemon.exit_when_idle", {"MAKIMA_EXIT_WHEN_IDLE"},
        "seconds with no task after which a daemon drains and exits 0, "
        "0 = never",
        seconds_setter(&config::exit_when_idle, "daemon.exit_when_idle", true,
                       max_timeout_seconds));
    add("daemon.eviction_signal", {"MAKIMA_EVICTION_SIGNAL"},
        "signal a task gets at eviction: TERM, INT, HUP, QUIT, USR1, USR2 "
        "(SIG prefix optional)",
        [](config& c, const std::string& v,
           const std::string& o) -> caf::error {
          static const std::pair<const char*, int> names[] = {
              {"TERM", 15}, {"INT", 2},   {"HUP", 1},
              {"QUIT", 3},  {"USR1", 10}, {"USR2", 12}};
          auto name = v.rfind("SIG", 0) == 0 ? v.substr(3) : v;
          for (auto& [n, sig] : names)
            if (name == n) {
              c.eviction_signal = sig;
              return caf::none;
            }
          return bad("daemon.eviction_signal", o, v,
                     "must be one of TERM, INT, HUP, QUIT, USR1, USR2");
        });
    return t;
  }();
  return table;
}

std::string signal_name(int sig) {
  switch (sig) {
  case 15: return "TERM";
  case 2: return "INT";
  case 1: return "HUP";
  case 3: return "QUIT";
  case 10: return "USR1";
  case 12: return "USR2";
  default: return std::to_string(sig);
  }
}

const key_def* find_def(const std::string& key) {
  for (auto& d : defs())
    if (d.doc.key == key)
      return &d;
  return nullptr;
}

std::string home(const env_map& env) {
  auto i = env.find("HOME");
  return i != env.end() && !i->second.empty() ? i->second : "/root";
}

std::string get(const env_map& env, const char* key) {
  auto i = env.find(key);
  return i == env.end() ? std::string{} : i->second;
}

// Converts a TOML leaf to the text form the setters parse.
std::optional<std::string> leaf_text(const toml::node& n) {
  if (auto s = n.as_string())
    return s->get();
  if (auto i = n.as_integer())
    return std::to_string(i->get());
  if (auto f = n.as_floating_point())
    return std::to_string(f->get());
  if (auto b = n.as_boolean())
    return b->get() ? "true" : "false";
  if (auto a = n.as_array()) {
    // A list of strings (keys, labels): the comma-separated form of env.
    std::string out;
    for (auto& e : *a) {
      auto str = e.as_string();
      if (str == nullptr)
        return std::nullopt;
      if (!out.empty())
        out += ',';
      out += str->get();
    }
    return out;
  }
  return std::nullopt;
}

} // namespace

caf::error check_pass_env_name(const std::string& name,
                               const std::string& origin) {
  if (!process::valid_env_name(name))
    return make_error(
        ec::invalid_config,
        origin + ": '" + name
            + "' is not a variable name ([A-Za-z_][A-Za-z0-9_]*)");
  if (process::is_withheld(name))
    return make_error(
        ec::invalid_config,
        origin + ": '" + name
            + "' is one of makima's secrets (MAKIMA_*, AWS credentials), "
              "which never pass to tasks; give a task its own value with "
              "--env NAME=VALUE");
  return caf::none;
}

const std::vector<config_key>& config_keys() {
  static const std::vector<config_key> keys = [] {
    std::vector<config_key> out;
    for (auto& d : defs())
      out.push_back(d.doc);
    return out;
  }();
  return keys;
}

env_map process_env() {
  env_map out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos)
      out.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return out;
}

std::filesystem::path default_data_dir(const env_map& env) {
  if (auto v = get(env, "MAKIMA_DATA_DIR"); !v.empty())
    return v;
  if (auto v = get(env, "XDG_DATA_HOME"); !v.empty())
    return std::filesystem::path{v} / "makima";
  return std::filesystem::path{home(env)} / ".local/share/makima";
}

std::optional<std::filesystem::path> default_config_file(const env_map& env) {
  if (auto v = get(env, "MAKIMA_CONFIG"); !v.empty())
    return std::filesystem::path{v};
  std::filesystem::path p;
  if (auto v = get(env, "XDG_CONFIG_HOME"); !v.empty())
    p = std::filesystem::path{v} / "makima/makima.toml";
  else
    p = std::filesystem::path{home(env)} / ".config/makima/makima.toml";
  std::error_code err;
  if (std::filesystem::exists(p, err))
    return p;
  return std::nullopt;
}

caf::error set_config_value(config& cfg, const std::string& key,
                            const std::string& value,
                            const std::string& origin) {
  auto d = find_def(key);
  if (d == nullptr)
    return make_error(ec::invalid_config,
                      "unknown config key '" + key + "' (from " + origin + ")");
  auto err = d->set(cfg, value, origin);
  if (!err)
    cfg.origins[key] = origin;
  return err;
}

caf::expected<config>
load_config(const std::optional<std::filesystem::path>& file,
            const env_map& env) {
  config cfg;
  auto path = file ? file : default_config_file(env);
  if (path) {
    toml::table tbl;
    try {
      tbl = toml::parse_file(path->string());
    } catch (const toml::parse_error& e) {
      std::string what{e.description()};
      auto src = e.source().begin;
      if (what.find("File could not be opened") != std::string::npos)
        return make_error(ec::invalid_config,
                          "cannot read config file " + path->string());
      return make_error(ec::invalid_config,
                        "config file " + path->string() + " line "
                            + std::to_string(src.line) + ": " + what);
    }
    for (auto& [section, node] : tbl) {
      auto sub = node.as_table();
      if (sub == nullptr)
        return make_error(ec::invalid_config,
                          "config file " + path->string() + ": '"
                              + std::string{section.str()}
                              + "' must be a table like [paths]");
      for (auto& [name, leaf] : *sub) {
        auto key = std::string{section.str()} + "." + std::string{name.str()};
        auto origin = "config file " + path->string();
        auto text = leaf_text(leaf);
        if (!text)
          return make_error(ec::invalid_config,
                            "config key '" + key + "' (from " + origin
                                + ") must be a string, number or boolean");
        if (auto err = set_config_value(cfg, key, *text, origin))
          return err;
      }
    }
    cfg.source_file = *path;
  }
  for (auto& d : defs()) {
    // The first listed name wins over the legacy aliases.
    for (auto& name : d.doc.env) {
      auto it = env.find(name);
      if (it == env.end() || it->second.empty())
        continue;
      auto origin = "environment variable " + name;
      if (auto err = d.set(cfg, it->second, origin))
        return err;
      cfg.origins[d.doc.key] = origin;
      break;
    }
  }
  return cfg;
}

bool is_secret_key(const std::string& key) {
  return key == "server.api_key" || key == "server.user_keys"
         || key == "server.daemon_keys" || key == "checkpoint.key"
         || key == "checkpoint.s3_access_key_id"
         || key == "checkpoint.s3_secret_access_key"
         || key == "checkpoint.s3_session_token";
}

std::vector<std::pair<std::string, std::string>>
config_values(const config& c) {
  auto num = [](double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", v);
    return std::string{buf};
  };
  auto join = [](const std::vector<std::string>& v) {
    std::string out;
    for (auto& s : v)
      out += (out.empty() ? "" : ",") + s;
    return out;
  };
  std::string labels;
  for (auto& [k, v] : c.labels)
    labels += (labels.empty() ? "" : ",") + k + "=" + v;
  const std::map<std::string, std::string> values{
      {"paths.data_dir", c.data_dir.string()},
      {"paths.db_dir", c.db_dir.string()},
      {"paths.repos_dir", c.repos_dir.string()},
      {"paths.worktrees_dir", c.worktrees_dir.string()},
      {"paths.state_dir", c.state_dir.string()},
      {"task.timeout", num(c.timeout)},
      {"task.grace", num(c.grace)},
      {"task.pass_env", join(c.pass_env)},
      {"git.author_name", c.author_name},
      {"git.author_email", c.author_email},
      {"task.remove_worktree_on_push", c.remove_worktree_on_push ? "true" : "false"},
      {"checkpoint.store", c.store_url},
      {"checkpoint.s3_endpoint", c.s3_endpoint},
      {"checkpoint.s3_region", c.s3_region},
      {"checkpoint.s3_access_key_id", c.s3_access_key_id},
      {"checkpoint.s3_secret_access_key", c.s3_secret_access_key},
      {"checkpoint.s3_session_token", c.s3_session_token},
      {"checkpoint.key", c.checkpoint_key},
      {"checkpoint.interval", num(c.checkpoint_interval)},
      {"checkpoint.stop_task", c.checkpoint_stop_task ? "true" : "false"},
      {"checkpoint.mirror_packs_interval", num(c.mirror_packs_interval)},
      {"store.sync", c.sync ? "true" : "false"},
      {"log.level", c.log_level},
      {"log.format", c.log_format},
      {"daemon.max_tasks", std::to_string(c.max_tasks)},
      {"daemon.name", c.daemon_name},
      {"daemon.pool", c.pool},
      {"daemon.labels", labels},
      {"daemon.health_listen", c.health_listen},
      {"daemon.eviction_deadline", num(c.eviction_deadline)},
      {"daemon.eviction_grace", num(c.eviction_grace)},
      {"daemon.eviction_signal", signal_name(c.eviction_signal)},
      {"daemon.exit_when_idle", num(c.exit_when_idle)},
      {"server.url", c.server_url},
      {"server.api_key", c.api_key},
      {"server.heartbeat", num(c.heartbeat)},
      {"server.reconnect", num(c.reconnect)},
      {"server.ca_file", c.ca_file.string()},
      {"server.listen", c.listen},
      {"server.user_keys", join(c.user_keys)},
      {"server.daemon_keys", join(c.daemon_keys)},
      {"server.lease", num(c.lease)},
      {"server.max_attempts", std::to_string(c.max_attempts)},
      {"server.retry_backoff", num(c.retry_backoff)},
      {"server.retry_backoff_max", num(c.retry_backoff_max)},
      {"server.tls_cert", c.tls_cert.string()},
      {"server.tls_key", c.tls_key.string()},
      {"server.max_streams_per_key", std::to_string(c.max_streams_per_key)},
      {"server.max_streams", std::to_string(c.max_streams)},
      {"net.max_frame_bytes", std::to_string(c.max_frame_bytes)},
      {"net.max_body_bytes", std::to_string(c.max_body_bytes)},
  };
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& d : defs()) {
    auto it = values.find(d.doc.key);
    out.emplace_back(d.doc.key,
                     it == values.end() ? std::string{} : it->second);
  }
  return out;
}

void finalize(config& cfg, const env_map& env) {
  if (cfg.data_dir.empty())
    cfg.data_dir = default_data_dir(env);
  cfg.data_dir = std::filesystem::absolute(cfg.data_dir).lexically_normal();
  auto derive = [&](std::filesystem::path& p, const char* sub) {
    if (p.empty())
      p = cfg.data_dir / sub;
    p = std::filesystem::absolute(p).lexically_normal();
  };
  derive(cfg.db_dir, "db");
  derive(cfg.repos_dir, "repos");
  derive(cfg.worktrees_dir, "worktrees");
  derive(cfg.state_dir, "state");
  if (cfg.store_url.empty())
    cfg.store_url = "file://" + (cfg.data_dir / "store").string();
}

} // namespace makima
