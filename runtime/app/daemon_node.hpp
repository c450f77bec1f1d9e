// A networked daemon node inside an actor system: CONNECTION (the LINK,
// speaking docs/protocol.md to a server), DAEMON and the process reactor,
// over a PERSISTENCE actor the caller owns. `makima daemon` runs one per
// process; `makima local` runs one next to its server.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "actors/connection.hpp"
#include "config/config.hpp"

namespace makima::net {
class io_thread;
} // namespace makima::net

namespace makima::process {
class reactor;
} // namespace makima::process

namespace makima::app {

/// The CONNECTION's options from a resolved config: server.url,
/// server.api_key, daemon.name (default: the host name), daemon.pool,
/// daemon.labels, daemon.max_tasks, server.ca_file, server.heartbeat,
/// net.max_frame_bytes, the data and repos dirs.
connection_options daemon_connection_options(const config& cfg);

/// A running daemon node. Destroying it stops it (like `stop()`) and, for
/// start_with_store, its PERSISTENCE; destroy it after `hooks.on_exit` ran
/// (or the actor system shuts down) so that no outbox write is cut off.
class daemon_node {
public:
  ~daemon_node();
  daemon_node(const daemon_node&) = delete;
  daemon_node& operator=(const daemon_node&) = delete;

  /// Spawns CONNECTION and DAEMON on `sys` and starts connecting to
  /// `opts.url`. `persist` must be the PERSISTENCE of a primary database
  /// that only this node uses (its outbox and task records live there).
  /// `hooks.on_exit` is called once when the connection ends (0 after a
  /// server `drain` completed).
  static std::unique_ptr<daemon_node>
  start(caf::actor_system& sys, const config& cfg, connection_options opts,
        persistence_actor persist, std::shared_ptr<net::io_thread> io,
        connection_hooks hooks);

  /// Like `start`, over a PERSISTENCE of its own: opens `cfg.db_dir` as
  /// the primary database (leaves through `fail` when another process
  /// holds it) and stops that PERSISTENCE with the node. What `makima
  /// daemon` runs; `makima local` calls it with a config whose data dir is
  /// the daemon's own (e.g. DATA/daemon, paths finalized), since the
  /// server's database is locked by the server.
  static std::unique_ptr<daemon_node>
  start_with_store(caf::actor_system& sys, const config& cfg,
                   connection_options opts, std::shared_ptr<net::io_thread> io,
                   connection_hooks hooks);

  /// Closes the connection (1001) and stops DAEMON and its TASK actors.
  /// Running children are killed when the reactor goes (with this node);
  /// their attempts are reported as `interrupted` at the next start on the
  /// same data dir. Idempotent.
  void stop();

  /// Whether the connection is up and welcomed (for /readyz).
  bool ready() const;

  connection_actor connection() const { return connection_; }
  daemon_actor daemon() const { return daemon_; }

private:
  daemon_node() = default;
  std::shared_ptr<std::atomic<bool>> ready_;
  std::shared_ptr<process::reactor> reactor_;
  connection_actor connection_;
  daemon_actor daemon_;
  bool stopped_ = false;
  /// Set by start_with_store: the database and PERSISTENCE the node owns.
  std::shared_ptr<void> store_;
  persistence_actor own_persistence_;
};

} // namespace makima::app
