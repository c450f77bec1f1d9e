// `makima server` and `makima local`: the HTTP API, the daemon endpoint and
// scheduling (server), plus a daemon in the same process (local).
#include "runtime/app/cli.hpp"

#include <signal.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <future>
#include <mutex>
#include <random>

#include <CLI/CLI.hpp>
#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "actors/daemon_node.hpp"
#include "actors/messages.hpp"
#include "actors/persistence.hpp"
#include "actors/server_node.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/net/net.hpp"
#include "runtime/process/environment.hpp"
#include "runtime/process/signals.hpp"

#ifndef MAKIMA_VERSION
#define MAKIMA_VERSION "0.0.0"
#endif

namespace makima::app {

namespace {

/// How long a graceful shutdown waits for daemons to finish and close.
constexpr std::chrono::seconds drain_bound{30};

/// Splits --listen's "HOST:PORT" ("[::1]:PORT" for IPv6) and resolves a
/// host name of loopback (listen_host); leaves on a bad value.
std::pair<std::string, uint16_t> split_listen(const std::string& listen) {
  auto hp = net::parse_host_port(listen);
  if (!hp)
    fail(exit_usage,
         "--listen expects HOST:PORT or [V6]:PORT (port 0-65535), got '"
             + listen + "'");
  return {listen_host(hp->host, "--listen"), hp->port};
}

bool is_loopback(const std::string& host) {
  return is_loopback_address(host);
}

/// The heartbeat interval told to daemons: the configured one, but at most
/// a third of the lease, so that an idle daemon never loses its lease
/// between two heartbeats.
double heartbeat_for(const config& cfg) {
  return std::min(cfg.heartbeat, cfg.lease / 3);
}

/// The settings both `server` and `local` take from the configuration;
/// each command then sets its store, keys and TLS.
server_settings settings_for(const config& cfg, const std::string& host,
                             uint16_t port) {
  server_settings s;
  s.host = host;
  s.port = port;
  s.sync = cfg.sync;
  s.lease = cfg.lease;
  s.max_attempts = cfg.max_attempts;
  s.retry_backoff = cfg.retry_backoff;
  s.retry_backoff_max = cfg.retry_backoff_max;
  s.heartbeat = heartbeat_for(cfg);
  s.task_timeout = cfg.timeout;
  s.task_grace = cfg.grace;
  s.max_frame_bytes = cfg.max_frame_bytes;
  s.max_body_bytes = cfg.max_body_bytes;
  s.max_streams_per_key = cfg.max_streams_per_key;
  s.max_streams = cfg.max_streams;
  s.version = build_version();
  s.commit = build_commit();
  return s;
}

struct server_options {
  common_options common;
  std::string listen;
  std::string tls_cert;
  std::string tls_key;
  double lease = -1;
  std::vector<std::string> user_keys;
  std::vector<std::string> daemon_keys;
  bool no_auth = false;
};

/// Stops a node whose SERVER actor failed; returns the exit status: 125,
/// makima's own failure, so that a supervisor restarts the server rather
/// than leave a process up that answers every request with 503.
int exit_failed(server_node& node) {
  log::error("server", "the server failed (its SERVER actor terminated); "
                       "exiting with status "
                           + std::to_string(exit_internal));
  node.stop();
  return exit_internal;
}

int cmd_server(server_options& o) {
  auto cfg = resolve_config(
      o.common,
      [&](config& c) {
        if (!o.listen.empty())
          c.listen = o.listen;
        if (!o.tls_cert.empty())
          c.tls_cert = o.tls_cert;
        if (!o.tls_key.empty())
          c.tls_key = o.tls_key;
        if (o.lease >= 0)
          c.lease = o.lease;
        if (!o.user_keys.empty())
          c.user_keys = o.user_keys;
        if (!o.daemon_keys.empty())
          c.daemon_keys = o.daemon_keys;
      },
      log::level::info);
  auto [host, port] = split_listen(cfg.listen);
  if (cfg.lease <= 0)
    fail(exit_usage, "--lease must be > 0");
  if (cfg.tls_cert.empty() != cfg.tls_key.empty())
    fail(exit_usage, "--tls-cert and --tls-key go together");
  if (o.no_auth) {
    if (!is_loopback(host))
      fail(exit_usage, "--no-auth listens only on loopback (127.0.0.1, ::1, "
                       "localhost), not on '"
                           + host + "'");
  } else if (cfg.user_keys.empty() && cfg.daemon_keys.empty()) {
    fail(exit_usage,
         "the server needs user keys and daemon keys (--user-key, "
         "--daemon-key, MAKIMA_SERVER_USER_KEYS, MAKIMA_SERVER_DAEMON_KEYS or "
         "server.user_keys/daemon_keys), or --no-auth on loopback");
  }
  if (!o.no_auth && (cfg.user_keys.empty() || cfg.daemon_keys.empty()))
    log::warn("server", cfg.user_keys.empty()
                            ? "no user keys: the HTTP API refuses everyone"
                            : "no daemon keys: no daemon can connect");
  std::error_code ec_dir;
  std::filesystem::create_directories(cfg.db_dir, ec_dir);
  if (ec_dir)
    fail(exit_internal, "cannot create data dir " + cfg.db_dir.string() + ": "
                            + ec_dir.message());
  auto s = settings_for(cfg, host, port);
  s.db_dir = cfg.db_dir;
  s.user_keys = cfg.user_keys;
  s.daemon_keys = cfg.daemon_keys;
  s.no_auth = o.no_auth;
  s.tls_cert = cfg.tls_cert.string();
  s.tls_key = cfg.tls_key.string();
  system_config sys_cfg;
  caf::actor_system sys{sys_cfg};
  auto node = server_node::start(sys, s);
  if (!node)
    fail(status_for(node.error()), describe(node.error()));
  log::info("server", "listening on " + (*node)->url());
  auto end = (*node)->wait(drain_bound);
  if (end.failed)
    return exit_failed(**node);
  return exit_ok;
}

struct local_options {
  common_options common;
  std::string listen;
  int max_tasks = 0;
  std::vector<std::string> pass_env;
};

/// A key for the in-process daemon of `makima local`: random, never shown.
std::string random_key() {
  std::random_device rd;
  std::string out;
  static constexpr char hex[] = "0123456789abcdef";
  for (int i = 0; i < 32; ++i) {
    auto b = rd();
    out.push_back(hex[b & 0xf]);
    out.push_back(hex[(b >> 4) & 0xf]);
  }
  return out;
}

/// `makima local`: a server and one daemon in this process, the daemon
/// connected over loopback WebSocket exactly like a remote one (same code
/// paths, same outbox and replay). Data: DATA/server (the server's RocksDB)
/// and the usual DATA/db, repos, worktrees, state of the daemon, so `task
/// list --data-dir DATA` shows what ran here.
int cmd_local(local_options& o) {
  auto cfg = resolve_config(
      o.common,
      [&](config& c) {
        if (!o.listen.empty())
          c.listen = o.listen;
        if (o.max_tasks > 0)
          if (auto err =
                  set_config_value(c, "daemon.max_tasks",
                                   std::to_string(o.max_tasks), "--max-tasks"))
            fail(exit_usage, describe(err));
        apply_pass_env(c, o.pass_env);
      },
      log::level::info);
  auto [host, port] = split_listen(cfg.listen);
  bool loopback = is_loopback(host);
  if (!loopback && cfg.user_keys.empty())
    fail(exit_usage, "makima local on '" + host
                         + "' (not loopback) needs user keys "
                           "(MAKIMA_SERVER_USER_KEYS or server.user_keys)");
  auto s = settings_for(cfg, host, port);
  s.db_dir = cfg.data_dir / "server";
  s.user_keys = cfg.user_keys;
  auto daemon_key = random_key();
  s.daemon_keys = {daemon_key};
  s.no_auth = loopback && cfg.user_keys.empty();
  std::error_code ec_dir;
  std::filesystem::create_directories(s.db_dir, ec_dir);
  if (ec_dir)
    fail(exit_internal, "cannot create data dir " + s.db_dir.string() + ": "
                            + ec_dir.message());
  // Config read: makima's keys leave this process's environment before a task
  // starts (a task could read /proc/$PPID/environ).
  process::hide_own_secrets();
  auto opened = open_primary(cfg); // the daemon's database
  system_config sys_cfg;
  caf::actor_system sys{sys_cfg};
  auto server = server_node::start(sys, s);
  if (!server)
    fail(status_for(server.error()), describe(server.error()));
  auto persist = spawn_persistence(sys, opened->db);
  auto io = std::make_shared<net::io_thread>();
  auto settings = daemon_settings_for(cfg);
  settings.connection.url = (*server)->ws_url();
  settings.connection.api_key = daemon_key;
  settings.connection.name = "local";
  auto welcomed = std::make_shared<std::promise<void>>();
  auto first_welcome = welcomed->get_future();
  auto once = std::make_shared<std::once_flag>();
  connection_hooks hooks;
  hooks.on_welcome = [welcomed, once](const std::string&) {
    std::call_once(*once, [&] { welcomed->set_value(); });
  };
  auto started =
      daemon_node::start(sys, std::move(settings), persist, io, hooks);
  if (!started)
    fail(status_for(started.error()), describe(started.error()));
  auto node = std::move(*started);
  if (first_welcome.wait_for(std::chrono::seconds(30))
      != std::future_status::ready)
    log::warn("local", "the in-process daemon has not connected yet");
  log::info("local", "listening on " + (*server)->url());
  int sig = (*server)->wait_signal_or_failure();
  if (sig == 0) {
    node->stop();
    node.reset();
    int status = exit_failed(**server);
    caf::anon_send_exit(persist, caf::exit_reason::user_shutdown);
    persist = persistence_actor{};
    io->stop();
    return status;
  }
  log::info("local", std::string{strsignal(sig)}
                         + ": stopping; running tasks are re-run at the next "
                           "start");
  node->stop();
  node.reset();
  (*server)->stop();
  caf::anon_send_exit(persist, caf::exit_reason::user_shutdown);
  persist = persistence_actor{};
  io->stop();
  return exit_ok;
}

} // namespace

void add_server_commands(CLI::App& app, command_table& out) {
  auto o = std::make_shared<server_options>();
  auto cmd = app.add_subcommand(
      "server", "serve the HTTP API and /ws/daemon; schedule tasks on daemons");
  add_common(cmd, o->common);
  cmd->add_option("--listen", o->listen,
                  "HOST:PORT to listen on (default 127.0.0.1:7420; port 0 = "
                  "any free port)");
  cmd->add_option("--tls-cert", o->tls_cert, "PEM certificate chain (TLS)");
  cmd->add_option("--tls-key", o->tls_key, "PEM private key (TLS)");
  check_number(
      cmd->add_option("--lease", o->lease,
                      "seconds of silence after which a daemon loses its tasks"),
      number_kind::seconds, 0, max_timeout_seconds, true);
  cmd->add_option("--user-key", o->user_keys,
                  "key for the HTTP API (repeatable; never logged)")
      ->type_size(1)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--daemon-key", o->daemon_keys,
                  "key daemons connect with (repeatable; never logged)")
      ->type_size(1)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_flag("--no-auth", o->no_auth,
                "accept requests without a key (loopback only)");
  out.emplace_back(cmd, [o] { return cmd_server(*o); });

  auto lo = std::make_shared<local_options>();
  auto local = app.add_subcommand(
      "local", "a server and one daemon in this process (a one-node fleet)");
  add_common(local, lo->common);
  local->add_option("--listen", lo->listen,
                    "HOST:PORT of the HTTP API (default 127.0.0.1:7420; port "
                    "0 = any free port)");
  check_number(
      local->add_option("--max-tasks", lo->max_tasks, "tasks run at once"),
      number_kind::whole, 1, 4096);
  add_pass_env_flag(local, lo->pass_env);
  out.emplace_back(local, [lo] { return cmd_local(*lo); });
}

} // namespace makima::app
