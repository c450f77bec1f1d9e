// The server side of docs/protocol.md as one object: `server_node` opens the
// server's RocksDB, spawns the SERVER actor (actors.hpp) and starts the
// io_thread + net::server that feed it. `makima server`, `makima local` and
// the tests start a server through it. Like daemon_node and local_node it
// never throws and never exits the process: start() returns its error.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "actors/server.hpp"

namespace makima {

/// A running server: store + SERVER actor + listener. Not copyable; every
/// member function is called from one (non-actor) thread.
class server_node {
public:
  /// Opens the store (creating it), loads every task, spawns the SERVER
  /// actor in `sys` and starts listening. Errors: the store's (e.g.
  /// ec::store_locked), net's (address in use, bad TLS files).
  static caf::expected<std::unique_ptr<server_node>>
  start(caf::actor_system& sys, server_settings settings);

  /// Stops (see stop()).
  ~server_node();
  server_node(const server_node&) = delete;
  server_node& operator=(const server_node&) = delete;

  /// The bound port.
  uint16_t port() const { return port_; }
  /// "http://HOST:PORT" (https with TLS).
  std::string url() const;
  /// "ws://HOST:PORT/ws/daemon" (wss with TLS).
  std::string ws_url() const;
  /// The SERVER actor.
  const server_actor& actor() const { return actor_; }

  /// Graceful drain: sends `drain` to every daemon, assigns nothing more
  /// and waits until every daemon connection is closed or `bound` passed.
  /// Returns true when all closed in time.
  bool drain(std::chrono::milliseconds bound);

  /// True once the SERVER actor terminated without stop() (a bug: no input
  /// should end it). The HTTP API then answers 503 to everything,
  /// /healthz included; the owner should stop() and exit non-zero so that
  /// a supervisor restarts the server (`makima server`/`local` exit 125).
  /// Thread-safe.
  bool failed() const;

  /// Whether the node serves: started, not stopped, SERVER actor alive.
  /// (The HTTP /readyz also says 503 while draining or while the store
  /// refuses writes.) Thread-safe.
  bool ready() const;

  /// Blocks until a stop signal (SIGINT, SIGTERM, SIGHUP; blocked by
  /// process::block_stop_signals) arrives or the SERVER actor failed;
  /// returns the signal, or 0 after a failure.
  int wait_signal_or_failure() const;

  /// How `wait` ended.
  struct exit_info {
    /// The SERVER actor failed (exit non-zero so that a supervisor
    /// restarts the process).
    bool failed = false;
    /// Every daemon finished and closed within the drain bound.
    bool drained = false;
    /// A second signal cut the drain short.
    bool cut_short = false;
  };

  /// The server's signal policy: waits for a stop signal or a failure; on
  /// the first signal drains (`drain_atom` to every daemon, at most
  /// `drain_bound`), a second signal stops at once; then stop(). Prints
  /// what it does on stderr.
  exit_info wait(std::chrono::milliseconds drain_bound);

  /// Stops the actor, closes the listener and every connection, closes
  /// the store. Idempotent; blocks until done.
  void stop();

  struct impl;

private:
  explicit server_node(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
  server_actor actor_;
  uint16_t port_ = 0;
};

} // namespace makima
