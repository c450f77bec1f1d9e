// `makima daemon`: a node that connects to a server and runs its tasks
// (docs/protocol.md), and the daemon_node it is built from.
//
// Signals: SIGINT/SIGTERM/SIGHUP stop the daemon at once. Nothing is
// cancelled and nothing more is flushed: every event is already in the
// outbox before it is sent, so the next start on the same data dir replays
// what the server has not acked, and reports attempts that were running as
// `interrupted` (their children die with the process), which the server
// re-queues. A server `drain` is the graceful way: running attempts finish,
// everything is acked, the connection closes with 1000 and the exit status
// is 0.
#include "runtime/app/cli.hpp"
#include "runtime/app/daemon_node.hpp"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>

#include <CLI/CLI.hpp>
#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include "actors/daemon.hpp"
#include "actors/persistence.hpp"
#include "actors/protocol.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/net/net.hpp"
#include "runtime/process/environment.hpp"
#include "runtime/process/reactor.hpp"

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
};

/// Splits "HOST:PORT"; false when malformed.
bool split_host_port(const std::string& s, std::string& host, uint16_t& port) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return false;
  try {
    size_t used = 0;
    auto n = std::stoul(s.substr(colon + 1), &used);
    if (used != s.size() - colon - 1 || n > 65535)
      return false;
    port = static_cast<uint16_t>(n);
  } catch (const std::exception&) {
    return false;
  }
  host = s.substr(0, colon);
  return true;
}

int cmd_daemon(daemon_options& o) {
  auto cfg = resolve_config(o.common, [&](config& c) {
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
  });
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
  std::string health_host;
  uint16_t health_port = 0;
  if (!cfg.health_listen.empty()
      && !split_host_port(cfg.health_listen, health_host, health_port))
    fail(exit_usage, "daemon: --health-listen expects HOST:PORT, got '"
                         + cfg.health_listen + "'");

  // Config read: makima's keys leave this process's environment before a task
  // starts (a task could read /proc/$PPID/environ).
  process::hide_own_secrets();
  system_config sys_cfg;
  int status = exit_ok;
  {
    caf::actor_system sys{sys_cfg};
    auto io = std::make_shared<net::io_thread>();
    auto exited = std::make_shared<std::promise<int>>();
    auto exit_status = exited->get_future();
    connection_hooks hooks;
    hooks.on_welcome = [](const std::string& where) {
      std::fprintf(stderr, "makima: connected to %s\n", where.c_str());
    };
    hooks.on_exit = [exited](int s) { exited->set_value(s); };
    auto node = daemon_node::start_with_store(
        sys, cfg, daemon_connection_options(cfg), io, hooks);
    std::unique_ptr<net::server> health;
    if (health_port != 0 || !health_host.empty()) {
      net::server_options so;
      so.host = health_host;
      so.port = health_port;
      auto* n = node.get();
      net::ws_handler refuse;
      refuse.on_upgrade = [](const net::request&) {
        return std::optional<net::response>{
            net::response{404, "text/plain", {}, "not found\n"}};
      };
      health = std::make_unique<net::server>(
          *io, so,
          [n](net::request req, net::http_reply reply) {
            auto path = req.target.substr(0, req.target.find('?'));
            if (path == "/healthz")
              reply.send({200, "text/plain", {}, "ok\n"});
            else if (path == "/readyz")
              reply.send(n->ready()
                             ? net::response{200, "text/plain", {}, "ready\n"}
                             : net::response{
                                 503, "text/plain", {}, "not connected\n"});
            else
              reply.send({404, "text/plain", {}, "not found\n"});
          },
          refuse);
      auto port = health->start();
      if (!port) {
        node->stop();
        fail(exit_internal, "daemon: cannot listen on " + cfg.health_listen
                                + ": " + describe(port.error()));
      }
      log::info("daemon", "health endpoint on " + health_host + ":"
                              + std::to_string(*port));
    }
    // Wait for the connection to end (drain) or a signal.
    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGINT, SIGTERM, SIGHUP})
      sigaddset(&set, s);
    bool signalled = false;
    while (exit_status.wait_for(std::chrono::milliseconds(0))
           != std::future_status::ready) {
      timespec ts{0, 100 * 1000 * 1000};
      int sig = sigtimedwait(&set, nullptr, &ts);
      if (sig > 0 && !signalled) {
        signalled = true;
        std::fprintf(stderr, "makima: %s: stopping the daemon\n",
                     strsignal(sig));
        node->stop();
      }
    }
    int code = exit_status.get();
    status = (code == 0 || signalled) ? exit_ok : exit_internal;
    if (health)
      health->stop();
    node.reset();
    io->stop();
  }
  return status;
}

} // namespace

connection_options daemon_connection_options(const config& cfg) {
  connection_options o;
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
  o.version = MAKIMA_VERSION;
  return o;
}

std::unique_ptr<daemon_node>
daemon_node::start(caf::actor_system& sys, const config& cfg,
                   connection_options opts, persistence_actor persist,
                   std::shared_ptr<net::io_thread> io, connection_hooks hooks) {
  std::unique_ptr<daemon_node> node{new daemon_node};
  node->ready_ =
      hooks.ready ? hooks.ready : std::make_shared<std::atomic<bool>>(false);
  hooks.ready = node->ready_;
  node->reactor_ = std::make_shared<process::reactor>();
  // The DAEMON takes its LINK at spawn, so the CONNECTION comes first and
  // learns the DAEMON from start_atom.
  node->connection_ = spawn_connection(sys, std::move(opts), std::move(hooks),
                                       persist, std::move(io));
  daemon_context ctx{persist,           node->connection_, node->reactor_,
                     cfg.repos_dir,     cfg.worktrees_dir, cfg.state_dir,
                     cfg.author_name,   cfg.author_email,  cfg.max_tasks,
                     task_base_env(cfg)};
  node->daemon_ = spawn_daemon(sys, std::move(ctx));
  caf::anon_send(node->connection_, start_atom::value, node->daemon_);
  return node;
}

std::unique_ptr<daemon_node> daemon_node::start_with_store(
    caf::actor_system& sys, const config& cfg, connection_options opts,
    std::shared_ptr<net::io_thread> io, connection_hooks hooks) {
  std::shared_ptr<opened_db> opened = open_primary(cfg);
  auto persist = spawn_persistence(sys, opened->db);
  auto node = start(sys, cfg, std::move(opts), persist, std::move(io),
                    std::move(hooks));
  node->store_ = opened;
  node->own_persistence_ = persist;
  return node;
}

void daemon_node::stop() {
  if (stopped_)
    return;
  stopped_ = true;
  caf::anon_send(connection_, stop_atom::value);
  caf::anon_send_exit(daemon_, caf::exit_reason::user_shutdown);
}

bool daemon_node::ready() const {
  return ready_ && ready_->load();
}

daemon_node::~daemon_node() {
  stop();
  // An owned PERSISTENCE goes last, once the caller saw the connection end
  // (hooks.on_exit): writes of CONNECTION may still be in its mailbox.
  if (own_persistence_)
    caf::anon_send_exit(own_persistence_, caf::exit_reason::user_shutdown);
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
  cmd->add_option("--max-tasks", o->max_tasks, "tasks run at once")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--health-listen", o->health_listen,
                  "HOST:PORT serving /healthz and /readyz");
  cmd->add_option("--ca-file", o->ca_file, "CA bundle for wss://");
  cmd->add_option("--heartbeat", o->heartbeat,
                  "seconds between heartbeats until the server says")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--api-key", o->api_key,
                  "daemon key (default: $MAKIMA_API_KEY; never logged)");
  add_pass_env_flag(cmd, o->pass_env);
  out.emplace_back(cmd, [o] { return cmd_daemon(*o); });
}

} // namespace makima::app
