// The signals makima's commands react to, and the one way they wait for
// them. `block_stop_signals` runs first thing in main, before any thread
// exists, so every thread inherits the mask and no handler ever runs on an
// actor thread; the commands then wait synchronously (sigtimedwait) or
// from a `signal_watcher` thread. Children get an empty mask back
// (runtime/process/reactor.cpp).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

namespace makima::process {

/// Blocks SIGINT, SIGTERM, SIGHUP (the stop signals) and SIGUSR1 (wakes a
/// signal_watcher) in the calling thread and ignores SIGPIPE.
void block_stop_signals();

/// Unblocks SIGINT, SIGTERM and SIGHUP in the calling thread: their default
/// action (end the process) applies again. For commands with nothing to
/// clean up (HTTP clients).
void unblock_stop_signals();

/// Waits for SIGINT, SIGTERM or SIGHUP; returns the signal, or 0 after
/// `timeout` (negative: wait forever). The signals must be blocked.
int wait_signal(std::chrono::milliseconds timeout);

/// A thread that calls `on_signal(sig)` for every SIGINT, SIGTERM or SIGHUP
/// until it is destroyed.
class signal_watcher {
public:
  explicit signal_watcher(std::function<void(int)> on_signal);
  ~signal_watcher();
  signal_watcher(const signal_watcher&) = delete;
  signal_watcher& operator=(const signal_watcher&) = delete;

private:
  void loop();
  std::function<void(int)> on_signal_;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

} // namespace makima::process
