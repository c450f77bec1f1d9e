// The server side of docs/protocol.md as one object: `server_node` opens the
// server's RocksDB, spawns the SERVER actor (actors.hpp) and starts the
// io_thread + net::server that feed it. `makima server`, `makima local` and
// the tests start a server through it.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "actors/actors.hpp"

namespace makima {

/// What a server needs (config keys in brackets).
struct server_settings {
  /// Address to listen on [server.listen]; port 0 = any free port.
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  /// The server's RocksDB directory (e.g. config::db_dir).
  std::filesystem::path db_dir;
  /// fsync the WAL on every write [store.sync].
  bool sync = false;
  /// Keys of the HTTP API and of `/ws/daemon` [server.user_keys,
  /// server.daemon_keys]. Never logged.
  std::vector<std::string> user_keys;
  std::vector<std::string> daemon_keys;
  /// Accept requests without a key (loopback only; the caller checks).
  bool no_auth = false;
  /// Seconds of silence after which a daemon loses its tasks
  /// [server.lease].
  double lease = 30;
  /// Attempts a task gets at most before it fails, unless its submission
  /// says otherwise (`max_attempts`) [server.max_attempts].
  uint32_t max_attempts = 5;
  /// Delay before a re-queued task is dispatched again: `retry_backoff`
  /// seconds after the first lost attempt, doubling per attempt, at most
  /// `retry_backoff_max` [server.retry_backoff, server.retry_backoff_max].
  double retry_backoff = 1;
  double retry_backoff_max = 60;
  /// Heartbeat interval told to daemons [server.heartbeat].
  double heartbeat = 5;
  /// Limits [net.max_frame_bytes, net.max_body_bytes].
  uint64_t max_frame_bytes = 1 << 20;
  uint64_t max_body_bytes = 1 << 20;
  /// PEM files; both set = TLS (implemented by runtime/net).
  std::string tls_cert;
  std::string tls_key;
  /// Time from upgrade to `hello` (§1; tests shorten it).
  std::chrono::milliseconds hello_timeout{10000};
  /// Bounds of open `output?follow=1` streams per key and in total
  /// [server.max_streams_per_key, server.max_streams]; beyond: 429.
  uint32_t max_streams_per_key = 64;
  uint32_t max_streams = 1024;
  /// Interval of `: keep-alive` comments on SSE streams (§10).
  std::chrono::milliseconds keep_alive{15000};
  /// The version reported in `welcome`.
  std::string version = "0.0.0";
};

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
