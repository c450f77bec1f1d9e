// Child processes without a thread each: one reactor thread waits (epoll) on
// every child's stdout/stderr pipes and pidfd, and hands output chunks and
// the exit status to an observer. The TASK actor implements the observer by
// sending itself messages, so no actor ever blocks on read() or waitpid().
//
// Backpressure: each child may have at most `max_unacked` chunks delivered
// but not yet acknowledged with `ack()`; beyond that the reactor stops
// reading its pipes, so a child that writes faster than makima persists is
// slowed down by the kernel (full pipe) instead of growing makima's memory.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace makima::process {

/// Which pipe a chunk came from.
enum class stream : uint8_t { out = 1, err = 2 };

/// How a child ended.
struct exit_status {
  /// Exit code when the child exited normally, else -1.
  int code = -1;
  /// Signal number when the child was killed by a signal, else 0.
  int signal = 0;
  /// Shell convention: `code`, or 128 + `signal`.
  int shell_code() const { return signal != 0 ? 128 + signal : code; }
};

/// What to run.
struct spawn_spec {
  /// argv[0] is looked up on the PATH of `env` when it has no '/'.
  std::vector<std::string> argv;
  /// Working directory of the child.
  std::filesystem::path cwd;
  /// The child's complete environment as KEY=VALUE strings.
  std::vector<std::string> env;
};

/// Receives a child's output and exit. Called on the reactor thread: must
/// not block (e.g. send an actor message and return).
class observer {
public:
  virtual ~observer();
  /// One chunk of output (never empty), in the order read per pipe.
  virtual void on_output(stream s, std::string bytes) = 0;
  /// Called once, after the last `on_output`, when the child has exited
  /// and its pipes are drained (or closed `drain_timeout` after the exit
  /// when a grandchild keeps them open).
  virtual void on_exit(exit_status status) = 0;
};

/// Options of the reactor.
struct reactor_options {
  /// Largest chunk passed to `on_output`.
  size_t chunk_size = 128 * 1024;
  /// Chunks delivered but not acknowledged before reading pauses.
  size_t max_unacked = 8;
  /// Pipe buffer size requested with F_SETPIPE_SZ (best effort).
  int pipe_size = 1024 * 1024;
  /// How long pipes may stay open after the child exited.
  std::chrono::milliseconds drain_timeout{1000};
};

/// Handle of a spawned child.
struct child {
  pid_t pid = -1;
  /// Process group id (== pid: every child leads its own group).
  pid_t pgid = -1;
};

/// The reactor thread and the children it watches.
class reactor {
public:
  explicit reactor(reactor_options opts = {});
  /// Stops the thread. Children still running get SIGKILL to their group.
  ~reactor();
  reactor(const reactor&) = delete;
  reactor& operator=(const reactor&) = delete;

  /// Starts a child: new process group, stdin from /dev/null, stdout and
  /// stderr to pipes, cwd and env from `spec`, default signal mask and
  /// dispositions, SIGKILL when makima dies (PR_SET_PDEATHSIG). Returns
  /// once exec succeeded or failed. Errors: ec::command_not_found (127),
  /// ec::command_not_executable (126), ec::spawn_failed, with a message
  /// naming the command and the cause.
  caf::expected<child> spawn(const spawn_spec& spec,
                             std::shared_ptr<observer> obs);

  /// Acknowledges one chunk of child `pid`, letting reading resume.
  void ack(pid_t pid);

  /// Sends `sig` to the process group of `c`. Signalling a group that is
  /// already gone is not an error.
  caf::error signal(const child& c, int sig);

  /// Number of children currently watched.
  size_t size() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace makima::process
