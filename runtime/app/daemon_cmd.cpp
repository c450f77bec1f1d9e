// `makima daemon`: flags → config → daemon_settings → daemon_node (actors/
// daemon_node.hpp) → wait → exit status.
//
// Signals: SIGTERM is eviction (docs/protocol.md §14): no new work, the
// tasks get the eviction signal, SIGKILL after the grace, each one's final
// checkpoint, results `migrating`, every event acked, exit 0 — or exit 1
// when the eviction deadline passed first. SIGINT/SIGHUP, and a second
// signal, stop the daemon at once. Nothing is cancelled then and nothing
// more is flushed: every event is already in the outbox before it is sent,
// so the next start on the same data dir replays what the server has not
// acked, and reports attempts that were running as `interrupted` (their
// children die with the process), which the server re-queues. A server
// `drain` is the other graceful way: running attempts finish, everything is
// acked, the connection closes with 1000 and the exit status is 0.
#include "runtime/app/cli.hpp"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>

#include <CLI/CLI.hpp>
#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include "actors/checkpoint.hpp"
#include "actors/daemon_node.hpp"
#include "actors/messages.hpp"
#include "actors/persistence.hpp"
#include "actors/protocol.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/net/net.hpp"
#include "runtime/process/environment.hpp"
#include "runtime/store/object_store.hpp"

#ifndef MAKIMA_VERSION
#define MAKIMA_VERSION "0.0.0"
#endif

namespace makima::app {

namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0')
    return "makima-daemon";
  return buf;
}

struct daemon_options {
  common_options common;
  std::string server;
  std::string name;
  std::string pool;
  std::vector<std::string> labels;
  int max_tasks = 0;
  std::string health_listen;
  std::string ca_file;
  double heartbeat = 0;
  std::string api_key;
  std::vector<std::string> pass_env;
  store_flags store;
  double checkpoint_interval = -1;
  double eviction_deadline = 0;
  double eviction_grace = -1;
  std::string eviction_signal;
  double exit_when_idle = -1;
};

/// A daemon checkpoints its running tasks every 10 s unless told otherwise
/// (flag, MAKIMA_CHECKPOINT_INTERVAL or checkpoint.interval; 0 = off).
constexpr double daemon_checkpoint_interval = 10;

int cmd_daemon(daemon_options& o) {
  auto cfg = resolve_config(
      o.common,
      [&](config& c) {
        auto set = [&](const char* key, const std::string& value,
                       const char* flag) {
          if (auto err = set_config_value(c, key, value, flag))
            fail(exit_usage, describe(err));
        };
        if (!o.server.empty())
          set("server.url", o.server, "--server");
        if (!o.name.empty())
          set("daemon.name", o.name, "--name");
        if (!o.pool.empty())
          set("daemon.pool", o.pool, "--pool");
        if (!o.labels.empty()) {
          std::string joined;
          for (auto& l : o.labels)
            joined += (joined.empty() ? "" : ",") + l;
          set("daemon.labels", joined, "--label");
        }
        if (o.max_tasks > 0)
          set("daemon.max_tasks", std::to_string(o.max_tasks), "--max-tasks");
        if (!o.health_listen.empty())
          set("daemon.health_listen", o.health_listen, "--health-listen");
        apply_pass_env(c, o.pass_env);
        if (!o.ca_file.empty())
          set("server.ca_file", o.ca_file, "--ca-file");
        if (o.heartbeat > 0)
          set("server.heartbeat", std::to_string(o.heartbeat), "--heartbeat");
        if (!o.api_key.empty())
          set("server.api_key", o.api_key, "--api-key");
        if (o.eviction_deadline > 0)
          set("daemon.eviction_deadline", std::to_string(o.eviction_deadline),
              "--eviction-deadline");
        if (o.eviction_grace >= 0)
          set("daemon.eviction_grace", std::to_string(o.eviction_grace),
              "--eviction-grace");
        if (!o.eviction_signal.empty())
          set("daemon.eviction_signal", o.eviction_signal, "--eviction-signal");
        if (o.exit_when_idle >= 0)
          set("daemon.exit_when_idle", std::to_string(o.exit_when_idle),
              "--exit-when-idle");
        apply_checkpoint_flags(c, o.store, o.checkpoint_interval);
        if (!c.origins.count("checkpoint.interval"))
          c.checkpoint_interval = daemon_checkpoint_interval;
      },
      log::level::info);
  if (cfg.server_url.empty())
    fail(exit_usage, "daemon: no server given (--server ws://HOST:PORT/ws/"
                     "daemon, or MAKIMA_SERVER)");
  auto url = net::parse_url(cfg.server_url);
  if (!url || (url->scheme != "ws" && url->scheme != "wss"))
    fail(exit_usage, "daemon: --server must be a ws:// or wss:// URL, got '"
                         + log::redact(cfg.server_url) + "'");
  if (!cfg.ca_file.empty()) {
    std::error_code err;
    if (!std::filesystem::is_regular_file(cfg.ca_file, err))
      fail(exit_usage, "daemon: CA file " + cfg.ca_file.string()
                           + " (server.ca_file) is not a readable file");
  }
  auto settings = daemon_settings_for(cfg);
  if (!cfg.health_listen.empty()) {
    auto hp = net::parse_host_port(cfg.health_listen);
    if (!hp)
      fail(exit_usage, "daemon: --health-listen expects HOST:PORT or "
                       "[V6]:PORT, got '"
                           + cfg.health_listen + "'");
    settings.health_host = listen_host(hp->host, "--health-listen");
    settings.health_port = hp->port;
  }

  if (cfg.eviction_grace >= cfg.eviction_deadline)
    fail(exit_usage, "daemon: --eviction-grace must be shorter than "
                     "--eviction-deadline (the final checkpoints and the "
                     "acks need the rest)");
  settings.evict_on_sigterm = true;
  settings.eviction_deadline = std::chrono::milliseconds{
      static_cast<int64_t>(cfg.eviction_deadline * 1000)};
  settings.eviction_grace = std::chrono::milliseconds{
      static_cast<int64_t>(cfg.eviction_grace * 1000)};
  settings.eviction_signal = cfg.eviction_signal;
  settings.exit_when_idle = std::chrono::milliseconds{
      static_cast<int64_t>(cfg.exit_when_idle * 1000)};
  // Only a store given explicitly (flag, MAKIMA_STORE, config): the
  // server resumes a task on any daemon from the checkpoints it hears of,
  // so they must be where every daemon of the fleet reads (the default
  // file://DATA/store is this node's alone). It serves final checkpoints
  // and restores even with periodic checkpoints off (interval 0).
  if (!cfg.origins.count("checkpoint.store")) {
    log::info("daemon", "checkpoints off: no --store (a fleet's daemons "
                        "share one store, e.g. s3://BUCKET/PREFIX)");
  } else {
    // Opened before the secrets leave the environment (they are in cfg).
    settings.checkpoint_store = open_checkpoint_store(cfg);
    // Its own connection: a large pack upload never holds up a checkpoint.
    if (cfg.mirror_packs_interval > 0) {
      settings.mirror_packs_store = open_checkpoint_store(cfg);
      settings.mirror_packs_interval = std::chrono::seconds{
          std::max<int64_t>(1, static_cast<int64_t>(cfg.mirror_packs_interval))};
    }
    settings.checkpoints = checkpoint_settings(cfg);
    settings.checkpoints.node = settings.connection.name;
    char every[32];
    std::snprintf(every, sizeof every, "%g", cfg.checkpoint_interval);
    log::info("daemon", (cfg.checkpoint_interval > 0
                             ? std::string{"checkpoints every "} + every
                                   + " s to "
                             : std::string{"no periodic checkpoints; final "
                                           "ones and restores use "})
                            + log::redact(cfg.store_url));
  }
  // Config read: makima's keys leave this process's environment before a task
  // starts (a task could read /proc/$PPID/environ).
  process::hide_own_secrets();
  system_config sys_cfg;
  int status = exit_ok;
  {
    caf::actor_system sys{sys_cfg};
    auto io = std::make_shared<net::io_thread>();
    connection_hooks hooks;
    hooks.on_welcome = [](const std::string& where) {
      log::info("daemon", "connected to " + where);
    };
    auto node =
        daemon_node::start_with_store(sys, std::move(settings), io, hooks);
    if (!node) {
      io->stop();
      fail(status_for(node.error()), "daemon: " + describe(node.error()));
    }
    auto end = (*node)->wait();
    if (end.evicted)
      status = end.drained && !end.deadline_passed ? exit_ok : 1;
    else
      status = (end.drained || end.signal != 0) ? exit_ok : exit_internal;
    node->reset();
    io->stop();
  }
  return status;
}

} // namespace

daemon_settings daemon_settings_for(const config& cfg) {
  daemon_settings s;
  auto& o = s.connection;
  o.url = cfg.server_url;
  o.api_key = cfg.api_key;
  o.name = cfg.daemon_name.empty() ? host_name() : cfg.daemon_name;
  o.pool = cfg.pool;
  o.labels = cfg.labels;
  o.capacity = static_cast<uint32_t>(cfg.max_tasks);
  o.data_dir = cfg.data_dir;
  o.repos_dir = cfg.repos_dir;
  o.ca_file = cfg.ca_file.string();
  o.heartbeat = cfg.heartbeat;
  o.max_frame_bytes = cfg.max_frame_bytes;
  o.backoff_base = cfg.reconnect;
  o.version = MAKIMA_VERSION;
  s.workspace = node_workspace_for(cfg);
  s.db_dir = cfg.db_dir;
  s.sync = cfg.sync;
  return s;
}

void add_daemon_command(CLI::App& app, command_table& out) {
  auto o = std::make_shared<daemon_options>();
  auto cmd = app.add_subcommand(
      "daemon", "connect to a makima server and run the tasks it assigns");
  add_common(cmd, o->common);
  cmd->add_option("--server", o->server,
                  "ws[s]://HOST:PORT/ws/daemon (default: $MAKIMA_SERVER)");
  cmd->add_option("--name", o->name, "daemon name (default: host name)");
  cmd->add_option("--pool", o->pool, "k8s, cloudflare or local");
  cmd->add_option("--label", o->labels, "label K=V (repeatable)")
      ->type_size(1)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  check_number(
      cmd->add_option("--max-tasks", o->max_tasks, "tasks run at once"),
      number_kind::whole, 1, 4096);
  cmd->add_option("--health-listen", o->health_listen,
                  "HOST:PORT serving /healthz and /readyz");
  cmd->add_option("--ca-file", o->ca_file, "CA bundle for wss://");
  check_number(
      cmd->add_option("--heartbeat", o->heartbeat,
                      "seconds between heartbeats until the server says"),
      number_kind::seconds, 0, max_timeout_seconds, true);
  cmd->add_option("--api-key", o->api_key,
                  "daemon key (default: $MAKIMA_API_KEY; never logged)");
  add_pass_env_flag(cmd, o->pass_env);
  add_checkpoint_flags(cmd, o->store, o->checkpoint_interval);
  check_number(cmd->add_option("--eviction-deadline", o->eviction_deadline,
                               "seconds from SIGTERM to exit: signal, grace, "
                               "final checkpoints, acks (default 25)"),
               number_kind::seconds, 0, max_timeout_seconds, true);
  check_number(cmd->add_option("--eviction-grace", o->eviction_grace,
                               "seconds between the eviction signal and "
                               "SIGKILL of a task (default 10)"),
               number_kind::seconds, 0, max_timeout_seconds, false);
  cmd->add_option("--eviction-signal", o->eviction_signal,
                  "signal a task gets at eviction (default TERM)");
  check_number(cmd->add_option("--exit-when-idle", o->exit_when_idle,
                               "drain and exit 0 after this many seconds "
                               "with no task, counted from the first "
                               "connection (0 = never, the default)"),
               number_kind::seconds, 0, max_timeout_seconds, false);
  out.emplace_back(cmd, [o] { return cmd_daemon(*o); });
}

} // namespace makima::app
