// See daemon_node.hpp.
#include "actors/daemon_node.hpp"

#include "actors/checkpointer.hpp"
#include "actors/mirror_publisher.hpp"

#include <optional>
#include <csignal>
#include <cstdio>
#include <cstring>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "actors/checkpointer.hpp"
#include "actors/daemon.hpp"
#include "actors/persistence.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/net/net.hpp"
#include "runtime/process/reactor.hpp"
#include "runtime/process/signals.hpp"
#include "runtime/store/db.hpp"

namespace makima {

namespace {

// Serves /healthz and /readyz of `ready`; every other path is 404, and
// WebSocket upgrades are refused.
std::unique_ptr<net::server>
health_server(net::io_thread& io, const std::string& host, uint16_t port,
              std::shared_ptr<std::atomic<bool>> ready) {
  net::server_options so;
  so.host = host;
  so.port = port;
  net::ws_handler refuse;
  refuse.on_upgrade = [](const net::request&) {
    return std::optional<net::response>{
        net::response{404, "text/plain", {}, "not found\n"}};
  };
  return std::make_unique<net::server>(
      io, so,
      [ready](net::request req, net::http_reply reply) {
        auto path = req.target.substr(0, req.target.find('?'));
        if (path == "/healthz")
          reply.send({200, "text/plain", {}, "ok\n"});
        else if (path == "/readyz")
          reply.send(
              ready->load()
                  ? net::response{200, "text/plain", {}, "ready\n"}
                  : net::response{503, "text/plain", {}, "not connected\n"});
        else
          reply.send({404, "text/plain", {}, "not found\n"});
      },
      refuse);
}

} // namespace

caf::expected<std::unique_ptr<daemon_node>>
daemon_node::start(caf::actor_system& sys, daemon_settings s,
                   persistence_actor persist,
                   std::shared_ptr<net::io_thread> io, connection_hooks hooks) {
  std::unique_ptr<daemon_node> node{new daemon_node};
  node->ready_ =
      hooks.ready ? hooks.ready : std::make_shared<std::atomic<bool>>(false);
  hooks.ready = node->ready_;
  if (s.health_host) {
    node->health_ =
        health_server(*io, *s.health_host, s.health_port, node->ready_);
    auto port = node->health_->start();
    if (!port)
      return make_error(code_of(port.error()),
                        "cannot serve /healthz on " + *s.health_host + ":"
                            + std::to_string(s.health_port) + ": "
                            + describe(port.error()));
    node->health_port_ = *port;
    log::info("daemon", "health endpoint on " + *s.health_host + ":"
                            + std::to_string(*port));
  }
  auto exited = std::make_shared<std::promise<int>>();
  node->exited_ = exited->get_future().share();
  hooks.on_exit = [exited, user = std::move(hooks.on_exit)](int code) {
    if (user)
      user(code);
    exited->set_value(code);
  };
  node->evict_on_sigterm_ = s.evict_on_sigterm;
  node->eviction_deadline_ = s.eviction_deadline;
  node->eviction_grace_ = s.eviction_grace;
  node->eviction_signal_ = s.eviction_signal;
  node->exit_when_idle_ = s.exit_when_idle;
  node->active_ = std::make_shared<std::atomic<uint32_t>>(0);
  node->reactor_ = std::make_shared<process::reactor>();
  // Its hello says whether it can restore checkpoints (docs/protocol.md
  // §14): the server sends resumed tasks only to daemons that can.
  s.connection.checkpoints = static_cast<bool>(s.checkpointer);
  // The DAEMON takes its LINK at spawn, so the CONNECTION comes first and
  // learns the DAEMON from start_atom.
  node->connection_ = spawn_connection(
      sys, std::move(s.connection), std::move(hooks), persist, std::move(io));
  daemon_context ctx{persist, node->connection_, node->reactor_,
                     std::move(s.workspace), s.checkpointer, node->active_};
  node->daemon_ = spawn_daemon(sys, std::move(ctx));
  caf::anon_send(node->connection_, start_atom::value, node->daemon_);
  return node;
}

caf::expected<std::unique_ptr<daemon_node>>
daemon_node::start_with_store(caf::actor_system& sys, daemon_settings s,
                              std::shared_ptr<net::io_thread> io,
                              connection_hooks hooks) {
  std::error_code err;
  std::filesystem::create_directories(s.db_dir, err);
  if (err)
    return make_error(ec::io_error, "cannot create data dir "
                                        + s.db_dir.string() + ": "
                                        + err.message());
  store::db_options opts;
  opts.mode = store::open_mode::primary;
  opts.sync = s.sync;
  auto db = store::db::open(s.db_dir, opts);
  if (!db)
    return db.error();
  std::shared_ptr<store::db> shared{std::move(*db)};
  auto persist = spawn_persistence(sys, shared);
  checkpointer_actor checkpointer;
  mirror_publisher_actor publisher;
  // Periodic checkpoints (interval > 0), final ones at eviction and
  // restores of resumed assignments all go through it.
  if (s.checkpoint_store) {
    auto cs = s.checkpoints;
    cs.skip_unchanged = true; // an idle task costs no writes
    if (s.mirror_packs_store && s.mirror_packs_interval.count() > 0)
      publisher = spawn_mirror_publisher(sys, s.mirror_packs_store, cs,
                                         s.mirror_packs_interval);
    checkpointer =
        spawn_checkpointer(sys, shared, s.checkpoint_store, cs, publisher);
    s.checkpointer = checkpointer;
  }
  auto node =
      start(sys, std::move(s), persist, std::move(io), std::move(hooks));
  if (!node) {
    caf::anon_send_exit(persist, caf::exit_reason::user_shutdown);
    if (checkpointer)
      caf::anon_send_exit(checkpointer, caf::exit_reason::user_shutdown);
    if (publisher)
      caf::anon_send_exit(publisher, caf::exit_reason::user_shutdown);
    return node.error();
  }
  (*node)->store_ = shared;
  (*node)->own_persistence_ = persist;
  (*node)->own_checkpointer_ = checkpointer;
  (*node)->own_publisher_ = publisher;
  return node;
}

bool daemon_node::ready() const {
  return ready_ && ready_->load();
}

bool daemon_node::drain(std::chrono::milliseconds bound) {
  bool ended = exited_.wait_for(bound) == std::future_status::ready;
  stop();
  return ended;
}

void daemon_node::stop() {
  if (stopped_)
    return;
  stopped_ = true;
  caf::anon_send(connection_, stop_atom::value);
  caf::anon_send_exit(daemon_, caf::exit_reason::user_shutdown);
}

void daemon_node::evict(std::chrono::milliseconds grace, int signal) {
  if (evicted_ || stopped_)
    return;
  evicted_ = true;
  caf::anon_send(connection_, evict_atom::value);
  caf::anon_send(daemon_, evict_atom::value,
                 static_cast<uint32_t>(grace.count()),
                 static_cast<int32_t>(signal));
}

daemon_exit daemon_node::wait() {
  daemon_exit out;
  std::chrono::steady_clock::time_point deadline{};
  // --exit-when-idle: the clock starts at the first welcome (a slow
  // connect does not eat it) and runs while nothing is running or queued.
  bool welcomed = false;
  std::optional<std::chrono::steady_clock::time_point> idle_since;
  while (exited_.wait_for(std::chrono::milliseconds(0))
         != std::future_status::ready) {
    int sig = process::wait_signal(std::chrono::milliseconds{100});
    auto now = std::chrono::steady_clock::now();
    welcomed = welcomed || ready();
    if (exit_when_idle_.count() > 0 && welcomed && !out.evicted
        && !stopped_) {
      if (active_->load() > 0)
        idle_since.reset();
      else if (!idle_since)
        idle_since = now;
      else if (now - *idle_since >= exit_when_idle_ && sig <= 0) {
        char secs[32];
        std::snprintf(secs, sizeof secs, "%g",
                      static_cast<double>(exit_when_idle_.count()) / 1000);
        log::info("daemon", std::string{"no task for "} + secs
                                + " s (--exit-when-idle): draining and "
                                  "exiting");
        out.idle = true;
        out.evicted = true;
        deadline = now + eviction_deadline_;
        evict(eviction_grace_, eviction_signal_);
        continue;
      }
    }
    if (sig > 0 && out.signal == 0 && sig == SIGTERM && evict_on_sigterm_) {
      out.signal = sig;
      out.evicted = true;
      deadline = std::chrono::steady_clock::now() + eviction_deadline_;
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g",
                    static_cast<double>(eviction_deadline_.count()) / 1000);
      log::warn("daemon", std::string{"SIGTERM: evicted; stopping the daemon "
                                      "after the final checkpoints, within "}
                              + secs + " s (a second signal exits at once)");
      evict(eviction_grace_, eviction_signal_);
    } else if (sig > 0 && (out.signal == 0 || out.evicted)) {
      if (out.evicted)
        log::warn("daemon", std::string{strsignal(sig)}
                                + " during the eviction: exiting at once");
      else
        log::info("daemon",
                  std::string{strsignal(sig)} + ": stopping the daemon");
      if (out.signal == 0)
        out.signal = sig;
      out.deadline_passed = out.evicted;
      stop();
    } else if (out.evicted && !stopped_
               && std::chrono::steady_clock::now() >= deadline) {
      log::error("daemon", "eviction deadline passed before every attempt "
                           "ended and every event was acked; exiting (the "
                           "server resumes from the last checkpoint it has)");
      out.deadline_passed = true;
      stop();
    }
  }
  out.drained = exited_.get() == 0;
  return out;
}

daemon_node::~daemon_node() {
  stop();
  if (health_)
    health_->stop();
  // An owned PERSISTENCE goes last, once the connection ended (on_exit):
  // writes of CONNECTION may still be in its mailbox. The CONNECTION ends
  // within about 2 s of stop() (close handshake or its own timeout).
  if (own_checkpointer_)
    caf::anon_send_exit(own_checkpointer_, caf::exit_reason::user_shutdown);
  if (own_publisher_)
    caf::anon_send_exit(own_publisher_, caf::exit_reason::user_shutdown);
  if (own_persistence_) {
    if (exited_.valid())
      exited_.wait_for(std::chrono::seconds(5));
    caf::anon_send_exit(own_persistence_, caf::exit_reason::user_shutdown);
  }
}

} // namespace makima
