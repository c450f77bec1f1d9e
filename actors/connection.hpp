// The CONNECTION actor: the LINK of a networked daemon. It speaks the
// daemon side of docs/protocol.md over a net::ws_client: hello/welcome,
// the per-attempt event outbox (persisted before sending, replayed after a
// reconnect or restart, deleted on ack), heartbeats, reconnect with backoff,
// and the server's assign/cancel/drain.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <utility>

#include <caf/fwd.hpp>
#include <caf/typed_response_promise.hpp>

#include "actors/actors.hpp"
#include "actors/outbox_window.hpp"

namespace makima {

namespace net {
class io_thread;
class ws_client;
} // namespace net

/// What the CONNECTION needs to know about its daemon and server.
struct connection_options {
  /// ws://HOST:PORT/ws/daemon
  std::string url;
  /// Sent as `Authorization: Bearer <key>`; empty = no header. Never logged.
  std::string api_key;
  /// Human name (hello.name).
  std::string name;
  std::string pool = "local";
  std::map<std::string, std::string> labels;
  /// hello.capacity (the DAEMON's max_tasks).
  uint32_t capacity = 4;
  /// Where free disk space is measured.
  std::filesystem::path data_dir;
  /// Bare mirrors here are reported as cached repos.
  std::filesystem::path repos_dir;
  /// hello.checkpoints: the node has a checkpoint store (a CHECKPOINTER).
  bool checkpoints = false;
  /// PEM CA bundle for wss:// (empty = system store).
  std::string ca_file;
  /// Seconds between heartbeats until a welcome says otherwise.
  double heartbeat = 5;
  /// Read limit for server frames.
  size_t max_frame_bytes = 1 << 20;
  /// Reconnect backoff (docs/protocol.md §8), seconds.
  double backoff_base = 0.5;
  double backoff_cap = 30;
  /// Unacked events / frame bytes beyond which sending stops and output
  /// `ok`s to TASK actors are held (docs/protocol.md §6).
  size_t window_events = 1024;
  size_t window_bytes = 8 << 20;
  /// makima version (hello.version).
  std::string version;
};

/// Callbacks of the CONNECTION to whoever runs the node. They run on the
/// actor's thread and must not block.
struct connection_hooks {
  /// After every welcome, with the server URL (no credentials).
  std::function<void(const std::string&)> on_welcome;
  /// Once, when the actor ends: 0 after a drain (everything acked, closed
  /// with 1000), 1 after stop_atom.
  std::function<void(int)> on_exit;
  /// True while connected and welcomed (readiness probe).
  std::shared_ptr<std::atomic<bool>> ready;
};

/// State of the CONNECTION actor. Receives from TASK (output, state,
/// result), DAEMON (results of queued cancellations), its ws_client
/// callbacks and its timers; sends to PERSISTENCE (outbox, put, recover,
/// list), DAEMON (assign, cancel) and the server. Runs detached: replacing
/// a ws_client waits for the I/O thread.
struct connection_state {
  using attempt_key = outbox_window::attempt_key;
  enum class phase {
    starting,
    waiting,
    connecting,
    hello_sent,
    welcomed,
    closing,
    stopped
  };

  connection_options opts;
  connection_hooks hooks;
  persistence_actor persistence;
  daemon_actor daemon;
  std::shared_ptr<net::io_thread> io;
  std::unique_ptr<net::ws_client> client;
  /// Increments with every connection attempt; callbacks and timers of an
  /// older one are ignored.
  uint64_t generation = 0;
  phase ph = phase::starting;
  std::string daemon_id;
  /// Every attempt's outbox and the window over them.
  outbox_window window;
  /// Attempts the server fenced: their events are dropped.
  std::set<attempt_key> fenced;
  /// Attempts finished and fully acked (duplicate assignments are ignored).
  std::set<attempt_key> done;
  /// Outbox writes not answered by PERSISTENCE yet.
  size_t pending_writes = 0;
  /// Output `ok`s held while the outbox is over the window.
  std::deque<caf::typed_response_promise<ok_atom>> held;
  /// Consecutive failed connection attempts (backoff exponent).
  uint32_t failures = 0;
  double heartbeat = 5;
  /// The lease the last welcome gave (s; 0 = none yet): the reconnect
  /// backoff stays below a third of it, so that a server restart does not
  /// cost the daemon its tasks.
  double lease = 0;
  /// The server's frame limit from welcome (0 = none yet): no event frame
  /// sent is larger.
  uint64_t server_max_frame = 0;
  int64_t last_sent = 0;
  int64_t last_received = 0;
  bool auth_error_logged = false;
  /// Why the last connection attempt failed ("" when it did not): logged
  /// with the backoff that follows it.
  std::string failure;
  bool draining = false;
  /// Evicted (evict_atom): draining, and the server is told so (`drain`).
  bool evicting = false;
  /// The connection was closed (1000) because a drain completed.
  bool drain_closed = false;
  bool stopping = false;
  std::mt19937_64 rng{std::random_device{}()};
  static inline const char* name = "connection";
};

/// Behavior of the CONNECTION actor.
connection_actor::behavior_type
connection(connection_actor::stateful_pointer<connection_state> self,
           connection_options opts, connection_hooks hooks,
           persistence_actor persistence, std::shared_ptr<net::io_thread> io);

/// Spawns the CONNECTION (detached). It does nothing until it gets
/// `start_atom` with the DAEMON, which must have been spawned with it as
/// its LINK.
connection_actor spawn_connection(caf::actor_system& sys,
                                  connection_options opts,
                                  connection_hooks hooks,
                                  persistence_actor persistence,
                                  std::shared_ptr<net::io_thread> io);

} // namespace makima
