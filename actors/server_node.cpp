// See server_node.hpp: the server's store, SERVER actor and listener as
// one object, and what runs on the io thread before a request reaches the
// actor (authentication, the dead-actor answer).
#include "actors/server_node.hpp"

#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <future>
#include <optional>

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "actors/server_auth.hpp"
#include "actors/server_state.hpp"
#include "actors/server_store.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/process/signals.hpp"

namespace makima {

namespace server_detail {

/// Watches the SERVER actor for the node (attach_functor): set when it
/// terminates, whether by stop() or not.
struct actor_watch {
  std::atomic<bool> down{false};
  /// stop() was called: an end is expected.
  std::atomic<bool> stopping{false};
  /// It ended before stop() was called.
  std::atomic<bool> failed{false};
};

} // namespace server_detail

// -- server_node --------------------------------------------------------------

struct server_node::impl {
  caf::actor_system* sys = nullptr;
  server_settings settings;
  std::shared_ptr<store::db> db;
  std::unique_ptr<net::io_thread> io;
  std::shared_ptr<net::server> net;
  std::shared_ptr<server_detail::actor_watch> watch;
  bool tls = false;
  bool stopped = false;
};

server_node::server_node(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

server_node::~server_node() {
  stop();
}

caf::expected<std::unique_ptr<server_node>>
server_node::start(caf::actor_system& sys, server_settings settings) {
  using namespace server_detail;
  auto p = std::make_unique<impl>();
  p->sys = &sys;
  p->settings = settings;
  std::error_code dir_err;
  std::filesystem::create_directories(settings.db_dir, dir_err);
  store::db_options dbo;
  dbo.sync = settings.sync;
  auto db = store::db::open(settings.db_dir, dbo);
  if (!db)
    return db.error();
  p->db = std::shared_ptr<store::db>(std::move(*db));
  auto loaded = load(*p->db);
  if (!loaded)
    return loaded.error();
  auto auth = std::make_shared<authenticator>(
      authenticator{key_set{settings.user_keys}, key_set{settings.daemon_keys},
                    settings.no_auth});
  auto counters = std::make_shared<shared_counters>();
  auto slot = std::make_shared<server_actor>();
  net::server_options opts;
  opts.host = settings.host;
  opts.port = settings.port;
  opts.max_frame_bytes = settings.max_frame_bytes;
  opts.max_body_bytes = settings.max_body_bytes;
  opts.tls_cert_file = settings.tls_cert;
  opts.tls_key_file = settings.tls_key;
  p->tls = !settings.tls_cert.empty() && !settings.tls_key.empty();
  auto watch = std::make_shared<actor_watch>();
  p->watch = watch;
  auto http = [slot, auth, counters, watch](net::request req,
                                            net::http_reply reply) {
    if (auto refused = admit(*auth, *counters, req, &req.principal)) {
      reply.send(std::move(*refused));
      return;
    }
    if (watch->down) {
      // Nobody would answer (and /healthz must not look healthy): the
      // process is about to exit (makima server exits 125).
      counters->count(503);
      reply.send(
          error_response(503, "unavailable", "the server is not running"));
      return;
    }
    caf::anon_send(*slot, http_atom::value, std::move(req), std::move(reply));
  };
  net::ws_handler ws;
  ws.on_upgrade = [auth, counters, watch](
                      const net::request& req) -> std::optional<net::response> {
    if (auto refused = admit(*auth, *counters, req))
      return refused;
    if (watch->down)
      return error_response(503, "unavailable", "the server is not running");
    return std::nullopt;
  };
  ws.on_open = [slot](net::conn_id id, const net::request&) {
    caf::anon_send(*slot, ws_open_atom::value, uint64_t{id});
  };
  ws.on_text = [slot](net::conn_id id, std::string text) {
    caf::anon_send(*slot, ws_text_atom::value, uint64_t{id}, std::move(text));
  };
  ws.on_close = [slot](net::conn_id id, uint16_t code, std::string) {
    caf::anon_send(*slot, ws_close_atom::value, uint64_t{id}, code);
  };
  p->io = std::make_unique<net::io_thread>();
  p->net = std::make_shared<net::server>(*p->io, opts, std::move(http),
                                         std::move(ws));
  auto ls = std::make_shared<loaded_state>(std::move(*loaded));
  auto actor = spawn_server(sys, settings, p->db, p->net, counters, ls);
  *slot = actor;
  // Whatever ends the actor other than stop() leaves the node failed():
  // the process must exit rather than answer every request with an error.
  actor->attach_functor([watch](const caf::error& reason) {
    watch->down = true;
    if (watch->stopping)
      return;
    watch->failed = true;
    log::error("server", std::string{"the SERVER actor terminated"}
                             + (reason ? ": " + describe(reason) : ""));
  });
  auto port = p->net->start();
  std::unique_ptr<server_node> node{new server_node(std::move(p))};
  node->actor_ = actor;
  if (!port) {
    auto err = port.error();
    node->stop();
    return err;
  }
  node->port_ = *port;
  return node;
}

std::string server_node::url() const {
  return std::string{impl_->tls ? "https://" : "http://"} + impl_->settings.host
         + ":" + std::to_string(port_);
}

std::string server_node::ws_url() const {
  return std::string{impl_->tls ? "wss://" : "ws://"} + impl_->settings.host
         + ":" + std::to_string(port_) + "/ws/daemon";
}

bool server_node::drain(std::chrono::milliseconds bound) {
  if (impl_->stopped)
    return true;
  bool ok = false;
  caf::scoped_actor self{*impl_->sys};
  self->request(actor_, bound, drain_atom::value)
      .receive([&](ok_atom) { ok = true; }, [&](caf::error&) { ok = false; });
  return ok;
}

bool server_node::failed() const {
  auto& w = impl_->watch;
  return w && w->failed;
}

void server_node::stop() {
  if (!impl_ || impl_->stopped)
    return;
  impl_->stopped = true;
  if (impl_->watch)
    impl_->watch->stopping = true;
  if (actor_) {
    caf::scoped_actor self{*impl_->sys};
    // Daemons still connected are told the server goes away (1001).
    self->request(actor_, std::chrono::seconds(2), stop_atom::value)
        .receive([](ok_atom) {}, [](caf::error&) {});
    self->monitor(actor_);
    self->send_exit(actor_, caf::exit_reason::user_shutdown);
    self->receive(
        [](const caf::down_msg&) {},
        caf::after(std::chrono::seconds(30)) >>
            [] { log::error("server", "the SERVER actor did not stop"); });
    actor_ = server_actor{};
  }
  if (impl_->net)
    impl_->net->stop();
  if (impl_->io)
    impl_->io->stop();
  impl_->net.reset();
  impl_->db.reset();
}

int server_node::wait_signal_or_failure() const {
  for (;;) {
    if (failed())
      return 0;
    if (int sig = process::wait_signal(std::chrono::milliseconds{100}))
      return sig;
  }
}

server_node::exit_info server_node::wait(std::chrono::milliseconds bound) {
  exit_info out;
  int sig = wait_signal_or_failure();
  if (sig == 0) {
    out.failed = true;
    stop();
    return out;
  }
  log::info("server",
            std::string{strsignal(sig)} + ": draining (again to stop now)");
  auto drained = std::async(std::launch::async, [&] { return drain(bound); });
  while (drained.wait_for(std::chrono::seconds(0))
         != std::future_status::ready) {
    if (process::wait_signal(std::chrono::milliseconds{100}) != 0) {
      log::info("server", "stopping now");
      out.cut_short = true;
      break;
    }
  }
  // The drain request ends at the latest after `bound`.
  if (!out.cut_short) {
    out.drained = drained.get();
    if (!out.drained)
      log::warn("server", "daemons still connected after the drain bound");
  }
  stop();
  if (drained.valid())
    drained.wait();
  return out;
}

bool server_node::ready() const {
  return impl_ && !impl_->stopped && !failed();
}

} // namespace makima
