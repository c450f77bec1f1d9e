// A networked daemon node as one object: CONNECTION (the LINK, speaking
// docs/protocol.md to a server), DAEMON and the process reactor over a
// PERSISTENCE actor, plus the node's /healthz and /readyz endpoint and its
// stop-signal policy. `makima daemon` runs one per process (over a database
// of its own); `makima local` runs one next to its server (over a
// PERSISTENCE it owns). Nothing here throws or exits the process: failures
// are returned as caf::error.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "actors/checkpoint.hpp"
#include "actors/connection.hpp"
#include "actors/daemon.hpp"

namespace makima::net {
class io_thread;
class server;
} // namespace makima::net

namespace makima::process {
class reactor;
} // namespace makima::process

namespace makima {

/// What a daemon node is made of (the CLI fills it from the config).
struct daemon_settings {
  /// The connection to the server (url, key, name, pool, labels, capacity…).
  connection_options connection;
  /// Where tasks work and what they start from.
  node_workspace workspace;
  /// The node's own database (start_with_store): opened read-write.
  std::filesystem::path db_dir;
  bool sync = false;
  /// Serves GET /healthz (200 while the process runs) and /readyz (200
  /// while connected, welcomed and not draining; else 503) on this address
  /// when set; port 0 = any free port.
  std::optional<std::string> health_host;
  uint16_t health_port = 0;
  /// Periodic checkpoints of running tasks, every
  /// `workspace.checkpoint_interval` seconds, into this store (null: none).
  /// start_with_store spawns the CHECKPOINTER over the node's database.
  std::shared_ptr<store::object_store> checkpoint_store;
  checkpoint::settings checkpoints;
  /// Set by start_with_store from the two above; start() hands it to the
  /// DAEMON (a caller of start() may set its own).
  checkpointer_actor checkpointer;
  /// Mirror packs (checkpoint::publish_mirror): published through this
  /// second connection to the store (null: none), at most every
  /// `mirror_packs_interval` per repository. start_with_store spawns the
  /// MIRROR_PUBLISHER when it and checkpoint_store are set.
  std::shared_ptr<store::object_store> mirror_packs_store;
  std::chrono::seconds mirror_packs_interval{3600};
  /// SIGTERM = eviction (wait(); docs/protocol.md §14) when set: the tasks
  /// get `eviction_signal`, SIGKILL after `eviction_grace`, final
  /// checkpoints, results `migrating`, acks, exit — within
  /// `eviction_deadline`. Off: SIGTERM stops at once, like SIGINT.
  bool evict_on_sigterm = false;
  std::chrono::milliseconds eviction_deadline{25000};
  std::chrono::milliseconds eviction_grace{10000};
  int eviction_signal = 15;
  /// > 0: once the node has been welcomed, this long with no attempt
  /// running or queued drains it like an eviction (no task to stop) and
  /// wait() returns with `idle` (exit 0).
  std::chrono::milliseconds exit_when_idle{0};
};

/// How a daemon node ended (daemon_node::wait).
struct daemon_exit {
  /// The connection closed after a server `drain` completed: every attempt
  /// finished and every event was acked.
  bool drained = false;
  /// The stop signal that ended it (0: none).
  int signal = 0;
  /// SIGTERM evicted it (evict_on_sigterm); `drained` says whether every
  /// attempt ended and every event was acked in time.
  bool evicted = false;
  /// The eviction deadline passed before that.
  bool deadline_passed = false;
  /// It drained because it was idle for `exit_when_idle` (with `evicted`).
  bool idle = false;
};

/// A running daemon node. Destroying it stops it (like `stop()`).
class daemon_node {
public:
  ~daemon_node();
  daemon_node(const daemon_node&) = delete;
  daemon_node& operator=(const daemon_node&) = delete;

  /// Spawns CONNECTION and DAEMON on `sys` over `persist` and starts
  /// connecting to `s.connection.url`; `persist` must be the PERSISTENCE of
  /// a primary database that only this node uses (its outbox and task
  /// records live there). Starts the health endpoint when `s.health_host`
  /// is set. Errors: the health endpoint's (address in use).
  static caf::expected<std::unique_ptr<daemon_node>>
  start(caf::actor_system& sys, daemon_settings s, persistence_actor persist,
        std::shared_ptr<net::io_thread> io, connection_hooks hooks = {});

  /// Like `start`, over a database of its own: opens `s.db_dir` read-write
  /// (errors: ec::store_locked when another process holds it, the store's
  /// others) and stops its PERSISTENCE with the node. What `makima daemon`
  /// runs.
  static caf::expected<std::unique_ptr<daemon_node>>
  start_with_store(caf::actor_system& sys, daemon_settings s,
                   std::shared_ptr<net::io_thread> io,
                   connection_hooks hooks = {});

  /// Whether the connection is up, welcomed and not draining (/readyz).
  bool ready() const;

  /// The bound port of the health endpoint (0 when there is none).
  uint16_t health_port() const { return health_port_; }

  /// Waits until the connection ended by itself (a server `drain`
  /// completed, or it gave up) or `bound` passed; true when it ended. The
  /// graceful stop of a daemon is the server's drain (docs/protocol.md):
  /// a node-initiated drain needs a protocol message, which the eviction
  /// work (SIGTERM → checkpoint → exit) adds.
  bool drain(std::chrono::milliseconds bound);

  /// Closes the connection (1001) and stops DAEMON and its TASK actors.
  /// Running children die with the reactor (with this node); their attempts
  /// are reported as `interrupted` at the next start on the same data dir,
  /// which makes the server re-run them. Idempotent.
  void stop();

  /// Eviction: the CONNECTION takes no more assignments and closes once
  /// every attempt ended and every event is acked; DAEMON ends every
  /// attempt `migrating` after its final checkpoint. Idempotent.
  void evict(std::chrono::milliseconds grace, int signal);

  /// The node's signal policy, for its owner's main thread: blocks until
  /// the connection ends (a server drain) or a stop signal (SIGINT,
  /// SIGTERM, SIGHUP; blocked by process::block_stop_signals) arrives. The
  /// first signal stops the node at once (stop(): nothing is lost, every
  /// event is in the outbox before it is sent) — except SIGTERM when
  /// `evict_on_sigterm`: that evicts (evict()), and stops the node when
  /// the eviction completed, at the deadline, or at a second signal. The
  /// call returns once the connection is closed.
  daemon_exit wait();

  connection_actor connection() const { return connection_; }
  daemon_actor daemon() const { return daemon_; }

private:
  daemon_node() = default;
  std::shared_ptr<std::atomic<bool>> ready_;
  std::shared_ptr<process::reactor> reactor_;
  connection_actor connection_;
  daemon_actor daemon_;
  bool stopped_ = false;
  /// on_exit of the CONNECTION: 0 after a drain, 1 after stop.
  std::shared_future<int> exited_;
  std::unique_ptr<net::server> health_;
  uint16_t health_port_ = 0;
  bool evict_on_sigterm_ = false;
  std::chrono::milliseconds eviction_deadline_{25000};
  std::chrono::milliseconds eviction_grace_{10000};
  int eviction_signal_ = 15;
  std::chrono::milliseconds exit_when_idle_{0};
  /// Attempts running or queued in the DAEMON (it keeps this up to date).
  std::shared_ptr<std::atomic<uint32_t>> active_;
  bool evicted_ = false;
  /// Set by start_with_store: the database and PERSISTENCE the node owns.
  std::shared_ptr<void> store_;
  persistence_actor own_persistence_;
  checkpointer_actor own_checkpointer_;
  mirror_publisher_actor own_publisher_;
};

} // namespace makima
