// The child-process reactor: one thread, one epoll set, every child's
// stdout/stderr pipe and pidfd. See reactor.hpp for the contract.
//
// Design notes
// ------------
// * Where children are started. Every fork happens on the reactor thread:
//   spawn() resolves the command and builds argv/envp on the caller's thread,
//   posts the request to the reactor thread (eventfd wakeup) and waits for
//   the result on a future. Reason: PR_SET_PDEATHSIG fires when the *thread*
//   that forked exits, not the process. spawn() may be called from a CAF
//   detached actor (which owns a thread that ends with the actor) or any
//   short-lived thread; forking there would SIGKILL the task as soon as that
//   thread ends. The reactor thread lives exactly as long as the reactor, and
//   the reactor's destructor kills every child anyway, so tying the death
//   signal to it is correct. The price is one thread hop (a few µs) and
//   serialised spawns, which is negligible next to exec itself.
//   (spawn() called *from* the reactor thread, i.e. from an observer
//   callback, runs inline instead of deadlocking on its own queue.)
//
// * How children are started. clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)
//   on a private stack, the way glibc's posix_spawn does it: no page tables
//   are copied (fork of a big multi-threaded daemon costs milliseconds; this
//   costs tens of µs), the parent thread is suspended until the child
//   execs or exits, and the pidfd is created atomically with the child.
//   posix_spawn itself cannot be used because it has no PR_SET_PDEATHSIG.
//   Safety rules for the child, which shares our memory:
//     - the reactor thread blocks every signal, so the child starts with all
//       signals blocked and no parent handler can run in it; the child resets
//       every disposition to SIG_DFL *before* it unblocks signals;
//     - the child only makes raw, async-signal-safe calls (setpgid, prctl,
//       getppid, chdir, dup2, close_range, sigaction, sigprocmask, execve,
//       _exit) and
//       writes its failure (stage + errno) into a struct owned by the parent
//       frame. This replaces the classic CLOEXEC error pipe: with
//       CLONE_VFORK the parent resumes only after execve succeeded (the
//       struct is untouched) or the child _exit()ed (the struct holds the
//       cause), so the result is known without an extra pipe and read().
//   Sanitizer builds (and -DMAKIMA_REACTOR_FORK) use fork() plus the
//   classic CLOEXEC error pipe instead; see `use_fork`.
//
// * Exit and pid reuse. When a pidfd becomes readable the child is a zombie;
//   the status is read with waitid(WNOWAIT) and the zombie is reaped only
//   when on_exit is delivered. While the table holds a child its pid (and so
//   its process group id) therefore cannot be reused, which keeps ack(pid)
//   and signal() unambiguous.
//
// * Locking. `mu` guards the table (insert/erase, only by the reactor
//   thread), the per-child unacked/paused counters and the request queues.
//   Descriptors and exit state of a child are touched only by the reactor
//   thread. Observer callbacks run on the reactor thread without `mu` held,
//   so observers may call ack()/signal()/size()/spawn() from inside them.
#include "runtime/process/reactor.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>

#include "runtime/error.hpp"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace makima::process {

observer::~observer() = default;

namespace {

using steady = std::chrono::steady_clock;

constexpr uint64_t wake_tag = ~uint64_t{0};
constexpr uint64_t kind_out = 1;
constexpr uint64_t kind_err = 2;
constexpr uint64_t kind_pidfd = 3;

uint64_t make_tag(pid_t pid, uint64_t kind) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(pid)) << 2) | kind;
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns the message (maybe not in buf).
  return strerror_r(err, buf, sizeof(buf));
}

void close_fd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

/// Moves `fd` to a number >= 3 so that dup2 onto 0/1/2 in the child never
/// clobbers another descriptor we still need (only when makima runs with
/// 0/1/2 closed). Keeps O_CLOEXEC.
bool lift_fd(int& fd) {
  if (fd > 2)
    return true;
  int nfd = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (nfd < 0)
    return false;
  ::close(fd);
  fd = nfd;
  return true;
}

// -- child side --------------------------------------------------------------

enum child_stage : int { stage_ok = 0, stage_setup, stage_chdir, stage_exec };

struct child_args {
  const char* path;
  char* const* argv;
  char* const* envp;
  const char* cwd; // nullptr: inherit
  int devnull;
  int out_w;
  int err_w;
  pid_t parent;
  // Written by the child on failure, read by the parent after clone returns.
  volatile int stage;
  volatile int err;
  // fork mode only (see use_fork): CLOEXEC pipe the failure is written to.
  int report_fd;
};

[[noreturn]] void child_fail(child_args* a, int stage) {
  a->err = errno;
  a->stage = stage;
  if (a->report_fd >= 0) {
    int msg[2] = {stage, a->err};
    ssize_t r = ::write(a->report_fd, msg, sizeof(msg));
    (void)r;
  }
  _exit(127);
}

// Sanitizers cannot follow a child that shares the address space (their
// shadow state gets written by the child), so sanitized builds use a plain
// fork() and a CLOEXEC error pipe. Also selectable with MAKIMA_REACTOR_FORK.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)              \
    || defined(MAKIMA_REACTOR_FORK)
constexpr bool use_fork = true;
#else
constexpr bool use_fork = false;
#endif

int child_main(void* p) {
  auto* a = static_cast<child_args*>(p);
  // All signals are blocked (inherited from the reactor thread). Reset every
  // disposition first so that nothing of the parent can run in this child
  // once the mask is cleared, and SIG_IGN does not survive exec.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP)
      continue;
    ::sigaction(sig, &dfl, nullptr); // EINVAL for glibc-internal signals: fine
  }
  if (::setpgid(0, 0) != 0)
    child_fail(a, stage_setup);
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
    child_fail(a, stage_setup);
  // The parent died between clone and prctl: the death signal was missed.
  if (::getppid() != a->parent)
    _exit(127);
  if (a->cwd != nullptr && ::chdir(a->cwd) != 0)
    child_fail(a, stage_chdir);
  if (::dup2(a->devnull, 0) < 0 || ::dup2(a->out_w, 1) < 0
      || ::dup2(a->err_w, 2) < 0)
    child_fail(a, stage_setup);
#ifdef SYS_close_range
  // Descriptors makima leaked without O_CLOEXEC (its own stdio redirections,
  // a library's files) must not reach the task. Best effort (Linux >= 5.9).
  if (a->report_fd < 0) {
    ::syscall(SYS_close_range, 3u, ~0u, 0u);
  } else { // keep the (CLOEXEC) report pipe of fork mode
    unsigned rfd = static_cast<unsigned>(a->report_fd);
    if (rfd > 3)
      ::syscall(SYS_close_range, 3u, rfd - 1, 0u);
    ::syscall(SYS_close_range, rfd + 1, ~0u, 0u);
  }
#endif
  sigset_t none;
  sigemptyset(&none);
  if (::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, _NSIG / 8)
      != 0)
    child_fail(a, stage_setup);
  ::execve(a->path, a->argv, a->envp);
  child_fail(a, stage_exec);
}

// -- parent side helpers ------------------------------------------------------

std::string env_value(const std::vector<std::string>& env,
                      const std::string& key, const char* fallback) {
  std::string prefix = key + "=";
  for (const auto& kv : env)
    if (kv.compare(0, prefix.size(), prefix) == 0)
      return kv.substr(prefix.size());
  return fallback;
}

enum class probe { missing, not_executable, ok };

probe probe_file(const std::string& path, int& err) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    err = errno;
    return (errno == ENOENT || errno == ENOTDIR) ? probe::missing
                                                 : probe::not_executable;
  }
  if (S_ISDIR(st.st_mode)) {
    err = EISDIR;
    return probe::not_executable;
  }
  if (!S_ISREG(st.st_mode) || ::access(path.c_str(), X_OK) != 0) {
    err = EACCES;
    return probe::not_executable;
  }
  return probe::ok;
}

/// Resolves argv[0] to the path handed to execve (absolute when relative
/// paths had to be anchored at the child's cwd).
caf::expected<std::string> resolve(const spawn_spec& spec) {
  const std::string& name = spec.argv.front();
  std::filesystem::path base;
  if (!spec.cwd.empty()) {
    std::error_code ec_;
    base = std::filesystem::absolute(spec.cwd, ec_);
    if (ec_)
      base = spec.cwd;
  }
  auto anchor = [&](const std::string& p) -> std::string {
    if (!p.empty() && p[0] == '/')
      return p;
    if (base.empty())
      return p;
    return (base / p).string();
  };
  int err = 0;
  if (name.find('/') != std::string::npos) {
    std::string path = anchor(name);
    switch (probe_file(path, err)) {
    case probe::ok:
      return path;
    case probe::missing:
      return make_error(ec::command_not_found, "command not found: " + name);
    case probe::not_executable:
      return make_error(ec::command_not_executable,
                        "command not executable: " + name + ": "
                            + errno_text(err));
    }
  }
  std::string path_var =
      env_value(spec.env, "PATH", "/usr/local/bin:/usr/bin:/bin");
  std::string non_exec;
  int non_exec_err = 0;
  size_t start = 0;
  while (start <= path_var.size()) {
    size_t end = path_var.find(':', start);
    if (end == std::string::npos)
      end = path_var.size();
    std::string dir = path_var.substr(start, end - start);
    if (dir.empty())
      dir = ".";
    std::string candidate = anchor(dir + "/" + name);
    switch (probe_file(candidate, err)) {
    case probe::ok:
      return candidate;
    case probe::not_executable:
      if (non_exec.empty()) {
        non_exec = candidate;
        non_exec_err = err;
      }
      break;
    case probe::missing:
      break;
    }
    start = end + 1;
  }
  if (!non_exec.empty())
    return make_error(ec::command_not_executable,
                      "command not executable: " + name + " (" + non_exec
                          + "): " + errno_text(non_exec_err));
  return make_error(ec::command_not_found, "command not found: " + name);
}

} // namespace

// -- impl ---------------------------------------------------------------------

struct reactor::impl {
  struct request {
    std::string name; // argv[0] as given, for messages
    std::string path; // resolved
    std::vector<std::string> argv_s;
    std::vector<std::string> env_s;
    std::vector<char*> argv;
    std::vector<char*> envp;
    std::string cwd;
    bool has_cwd = false;
    std::shared_ptr<observer> obs;
    std::promise<caf::expected<child>> result;
  };

  struct record {
    pid_t pid = -1;
    int out_fd = -1;
    int err_fd = -1;
    int pidfd = -1;
    std::shared_ptr<observer> obs;
    // Guarded by `mu`.
    size_t unacked = 0;
    bool paused = false;
    bool resume_queued = false;
    // Reactor thread only.
    bool exited = false;
    exit_status status;
    steady::time_point drain_deadline;
  };

  reactor_options opts;
  int epfd = -1;
  int wakefd = -1;
  int devnull = -1;
  void* stack = nullptr;
  size_t stack_size = 256 * 1024;
  std::vector<char> buf;
  std::thread thread;
  std::thread::id thread_id;

  mutable std::mutex mu;
  std::unordered_map<pid_t, std::unique_ptr<record>> table; // guarded by mu
  std::deque<request*> requests;                            // guarded by mu
  std::vector<pid_t> resumes;                               // guarded by mu
  bool stopping = false;                                    // guarded by mu

  explicit impl(reactor_options o) : opts(o) {
    if (opts.chunk_size == 0)
      opts.chunk_size = 1;
    if (opts.max_unacked == 0)
      opts.max_unacked = 1;
    if (opts.drain_timeout.count() < 0)
      opts.drain_timeout = std::chrono::milliseconds{0};
    buf.resize(opts.chunk_size);
  }

  void wake() {
    uint64_t one = 1;
    ssize_t r;
    do {
      r = ::write(wakefd, &one, sizeof(one));
    } while (r < 0 && errno == EINTR);
  }

  // -- epoll helpers (reactor thread) --

  void watch(int fd, uint64_t tag) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    ::epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
  }

  void unwatch(int fd) {
    if (fd >= 0)
      ::epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
  }

  // Pausing removes the pipes from the set entirely: EPOLLHUP is reported
  // even for an empty event mask, which would spin on a finished writer.
  void pause_pipes(record& r) {
    unwatch(r.out_fd);
    unwatch(r.err_fd);
  }

  void resume_pipes(record& r) {
    if (r.out_fd >= 0)
      watch(r.out_fd, make_tag(r.pid, kind_out));
    if (r.err_fd >= 0)
      watch(r.err_fd, make_tag(r.pid, kind_err));
    if (r.exited && steady::now() >= r.drain_deadline)
      // The deadline passed while we held the pipes back ourselves: give the
      // remaining buffered output a fresh drain period.
      r.drain_deadline = steady::now() + opts.drain_timeout;
  }

  void close_pipe(record& r, int& fd) {
    if (fd < 0)
      return;
    std::lock_guard<std::mutex> guard{mu};
    if (!r.paused)
      unwatch(fd);
    close_fd(fd);
  }

  record* find(pid_t pid) {
    std::lock_guard<std::mutex> guard{mu};
    auto i = table.find(pid);
    return i == table.end() ? nullptr : i->second.get();
  }

  // -- spawning (reactor thread) --

  caf::expected<child> do_spawn(request& rq) {
    int out[2] = {-1, -1};
    int err[2] = {-1, -1};
    auto fail_close = [&] {
      close_fd(out[0]);
      close_fd(out[1]);
      close_fd(err[0]);
      close_fd(err[1]);
    };
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
      int e = errno;
      fail_close();
      return make_error(ec::spawn_failed,
                        "cannot start " + rq.name + ": pipe: " + errno_text(e));
    }
    if (!lift_fd(out[0]) || !lift_fd(out[1]) || !lift_fd(err[0])
        || !lift_fd(err[1])) {
      int e = errno;
      fail_close();
      return make_error(ec::spawn_failed, "cannot start " + rq.name
                                              + ": fcntl: " + errno_text(e));
    }
    for (int fd : {out[0], err[0]}) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      if (opts.pipe_size > 0)
        ::fcntl(fd, F_SETPIPE_SZ, opts.pipe_size); // best effort
    }
    child_args a{};
    a.path = rq.path.c_str();
    a.argv = rq.argv.data();
    a.envp = rq.envp.data();
    a.cwd = rq.has_cwd ? rq.cwd.c_str() : nullptr;
    a.devnull = devnull;
    a.out_w = out[1];
    a.err_w = err[1];
    a.parent = ::getpid();
    a.stage = stage_ok;
    a.err = 0;
    a.report_fd = -1;
    char* top = static_cast<char*>(stack) + stack_size;
    int pidfd = -1;
    pid_t pid = -1;
    int clone_errno = 0;
    if constexpr (use_fork) {
      int rep[2];
      if (::pipe2(rep, O_CLOEXEC) != 0 || !lift_fd(rep[1])) {
        int e = errno;
        fail_close();
        return make_error(ec::spawn_failed, "cannot start " + rq.name
                                                + ": pipe: " + errno_text(e));
      }
      a.report_fd = rep[1];
      pid = ::fork();
      clone_errno = errno;
      if (pid == 0)
        child_main(&a);
      ::close(rep[1]);
      if (pid > 0) {
        int msg[2];
        ssize_t n;
        do {
          n = ::read(rep[0], msg, sizeof(msg));
        } while (n < 0 && errno == EINTR);
        if (n == static_cast<ssize_t>(sizeof(msg))) { // else EOF: exec'd
          a.stage = msg[0];
          a.err = msg[1];
        }
        pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
      }
      ::close(rep[0]);
    } else {
      pid = ::clone(child_main, top,
                    CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &a, &pidfd);
      if (pid < 0 && errno == EINVAL) { // kernel without CLONE_PIDFD
        pid = ::clone(child_main, top, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
        if (pid > 0)
          pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
      }
      clone_errno = errno;
    }
    close_fd(out[1]);
    close_fd(err[1]);
    if (pid < 0) {
      fail_close();
      return make_error(ec::spawn_failed, "cannot start " + rq.name + ": "
                                              + errno_text(clone_errno));
    }
    if (a.stage != stage_ok) {
      int e = a.err;
      int stage = a.stage;
      int st;
      while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
      close_fd(pidfd);
      fail_close();
      if (stage == stage_chdir)
        return make_error(ec::spawn_failed,
                          "cannot enter " + rq.cwd + ": " + errno_text(e));
      if (stage == stage_exec) {
        if (e == ENOENT || e == ENOTDIR)
          return make_error(ec::command_not_found,
                            "command not found: " + rq.name);
        if (e == EACCES || e == ENOEXEC || e == EISDIR || e == EPERM)
          return make_error(ec::command_not_executable,
                            "command not executable: " + rq.name + ": "
                                + errno_text(e));
      }
      return make_error(ec::spawn_failed,
                        "cannot start " + rq.name + ": " + errno_text(e));
    }
    if (pidfd < 0) {
      // Cannot watch it: do not leave an orphan behind.
      int e = errno;
      ::kill(-pid, SIGKILL);
      int st;
      while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
      fail_close();
      return make_error(ec::spawn_failed, "cannot start " + rq.name
                                              + ": pidfd: " + errno_text(e));
    }
    auto rec = std::make_unique<record>();
    rec->pid = pid;
    rec->out_fd = out[0];
    rec->err_fd = err[0];
    rec->pidfd = pidfd;
    rec->obs = std::move(rq.obs);
    watch(rec->out_fd, make_tag(pid, kind_out));
    watch(rec->err_fd, make_tag(pid, kind_err));
    watch(rec->pidfd, make_tag(pid, kind_pidfd));
    {
      std::lock_guard<std::mutex> guard{mu};
      table.emplace(pid, std::move(rec));
    }
    return child{pid, pid};
  }

  // -- event handling (reactor thread) --

  void handle_pipe(record& r, stream s) {
    int& fd = s == stream::out ? r.out_fd : r.err_fd;
    // `paused` is only written by this thread: no lock needed to read it.
    // (A stale event of this batch may arrive after pausing.)
    if (fd < 0 || r.paused)
      return;
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n > 0) {
      std::string bytes(buf.data(), static_cast<size_t>(n));
      {
        std::lock_guard<std::mutex> guard{mu};
        if (++r.unacked >= opts.max_unacked && !r.paused) {
          r.paused = true;
          pause_pipes(r);
        }
      }
      r.obs->on_output(s, std::move(bytes));
      return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      return;
    close_pipe(r, fd); // EOF or a read error
    maybe_finish(r);
  }

  void handle_pidfd(record& r) {
    if (r.exited)
      return;
    siginfo_t info;
    std::memset(&info, 0, sizeof(info));
    int rc = ::waitid(P_PIDFD, static_cast<id_t>(r.pidfd), &info,
                      WEXITED | WNOHANG | WNOWAIT);
    if (rc == 0 && info.si_pid == 0)
      return; // spurious
    if (rc == 0) {
      if (info.si_code == CLD_EXITED)
        r.status = exit_status{info.si_status, 0};
      else
        r.status = exit_status{-1, info.si_status};
    } else {
      // ECHILD: someone else reaped it (e.g. SIGCHLD set to SIG_IGN).
      r.status = exit_status{-1, 0};
    }
    r.exited = true;
    r.drain_deadline = steady::now() + opts.drain_timeout;
    unwatch(r.pidfd);
    maybe_finish(r);
  }

  void maybe_finish(record& r) {
    if (r.exited && r.out_fd < 0 && r.err_fd < 0)
      finish(r.pid);
  }

  void finish(pid_t pid) {
    std::unique_ptr<record> rec;
    {
      std::lock_guard<std::mutex> guard{mu};
      auto i = table.find(pid);
      if (i == table.end())
        return;
      rec = std::move(i->second);
      table.erase(i);
      if (!rec->paused) {
        unwatch(rec->out_fd);
        unwatch(rec->err_fd);
      }
    }
    close_fd(rec->out_fd);
    close_fd(rec->err_fd);
    siginfo_t info;
    while (::waitid(P_PIDFD, static_cast<id_t>(rec->pidfd), &info, WEXITED) < 0
           && errno == EINTR) {
    }
    close_fd(rec->pidfd);
    // Erased from the table before the callback so that size() is already
    // consistent when the observer learns about the exit.
    rec->obs->on_exit(rec->status);
  }

  /// Drains the request and resume queues; returns false when stopping.
  bool handle_wakeup() {
    uint64_t v;
    while (::read(wakefd, &v, sizeof(v)) < 0 && errno == EINTR) {
    }
    std::deque<request*> rqs;
    {
      std::lock_guard<std::mutex> guard{mu};
      if (stopping)
        return false;
      rqs.swap(requests);
      for (pid_t pid : resumes) {
        auto i = table.find(pid);
        if (i == table.end())
          continue;
        record& r = *i->second;
        r.resume_queued = false;
        if (r.paused && r.unacked < opts.max_unacked) {
          r.paused = false;
          resume_pipes(r);
        }
      }
      resumes.clear();
    }
    for (request* rq : rqs)
      rq->result.set_value(do_spawn(*rq));
    return true;
  }

  int next_timeout_ms() {
    std::lock_guard<std::mutex> guard{mu};
    bool any = false;
    steady::time_point earliest;
    for (auto& kv : table) {
      record& r = *kv.second;
      if (!r.exited || r.paused)
        continue;
      if (!any || r.drain_deadline < earliest) {
        earliest = r.drain_deadline;
        any = true;
      }
    }
    if (!any)
      return -1;
    auto now = steady::now();
    if (earliest <= now)
      return 0;
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(earliest - now)
            .count()
        + 1;
    return static_cast<int>(std::min<int64_t>(ms, 60000));
  }

  void expire_drains() {
    std::vector<pid_t> due;
    {
      std::lock_guard<std::mutex> guard{mu};
      auto now = steady::now();
      for (auto& kv : table) {
        record& r = *kv.second;
        if (r.exited && !r.paused && r.drain_deadline <= now)
          due.push_back(r.pid);
      }
    }
    for (pid_t pid : due)
      finish(pid); // closes the pipes a grandchild still holds
  }

  void run() {
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr); // see the notes at the top
    epoll_event events[64];
    for (;;) {
      int n = ::epoll_wait(epfd, events, 64, next_timeout_ms());
      if (n < 0 && errno != EINTR)
        n = 0; // should not happen; keep going
      for (int i = 0; i < n; ++i) {
        uint64_t tag = events[i].data.u64;
        if (tag == wake_tag) {
          if (!handle_wakeup())
            return;
          continue;
        }
        pid_t pid = static_cast<pid_t>(tag >> 2);
        record* r = find(pid); // stable: only this thread erases
        if (r == nullptr)
          continue;
        switch (tag & 3) {
        case kind_out:
          handle_pipe(*r, stream::out);
          break;
        case kind_err:
          handle_pipe(*r, stream::err);
          break;
        case kind_pidfd:
          handle_pidfd(*r);
          break;
        }
      }
      expire_drains();
    }
  }

  caf::expected<child> submit(request& rq) {
    if (std::this_thread::get_id() == thread_id)
      return do_spawn(rq); // from an observer callback: no queue hop
    auto fut = rq.result.get_future();
    {
      std::lock_guard<std::mutex> guard{mu};
      if (stopping)
        return make_error(ec::spawn_failed,
                          "cannot start " + rq.name + ": reactor stopped");
      requests.push_back(&rq);
    }
    wake();
    return fut.get();
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> guard{mu};
      stopping = true;
    }
    wake();
    if (thread.joinable())
      thread.join();
    // Requests that raced with the stop.
    std::deque<request*> rqs;
    {
      std::lock_guard<std::mutex> guard{mu};
      rqs.swap(requests);
    }
    for (request* rq : rqs)
      rq->result.set_value(make_error(
          ec::spawn_failed, "cannot start " + rq->name + ": reactor stopped"));
    for (auto& kv : table) {
      record& r = *kv.second;
      ::kill(-r.pid, SIGKILL);
      if (r.pidfd >= 0)
        ::syscall(SYS_pidfd_send_signal, r.pidfd, SIGKILL, nullptr, 0);
      siginfo_t info;
      while (::waitid(P_PID, static_cast<id_t>(r.pid), &info, WEXITED) < 0
             && errno == EINTR) {
      }
      close_fd(r.out_fd);
      close_fd(r.err_fd);
      close_fd(r.pidfd);
    }
    table.clear();
  }
};

// -- reactor ------------------------------------------------------------------

reactor::reactor(reactor_options opts) : impl_(std::make_unique<impl>(opts)) {
  auto& d = *impl_;
  d.epfd = ::epoll_create1(EPOLL_CLOEXEC);
  d.wakefd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  d.devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (d.devnull >= 0)
    lift_fd(d.devnull);
  void* mem = ::mmap(nullptr, d.stack_size + 4096, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (d.epfd < 0 || d.wakefd < 0 || d.devnull < 0 || mem == MAP_FAILED) {
    int e = errno;
    close_fd(d.epfd);
    close_fd(d.wakefd);
    close_fd(d.devnull);
    if (mem != MAP_FAILED)
      ::munmap(mem, d.stack_size + 4096);
    throw std::system_error(e, std::generic_category(),
                            "cannot set up the process reactor");
  }
  ::mprotect(mem, 4096, PROT_NONE); // guard page below the child stack
  d.stack = static_cast<char*>(mem) + 4096;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = wake_tag;
  ::epoll_ctl(d.epfd, EPOLL_CTL_ADD, d.wakefd, &ev);
  d.thread = std::thread([&d] { d.run(); });
  d.thread_id = d.thread.get_id();
}

reactor::~reactor() {
  auto& d = *impl_;
  d.shutdown();
  close_fd(d.epfd);
  close_fd(d.wakefd);
  close_fd(d.devnull);
  ::munmap(static_cast<char*>(d.stack) - 4096, d.stack_size + 4096);
}

caf::expected<child> reactor::spawn(const spawn_spec& spec,
                                    std::shared_ptr<observer> obs) {
  if (spec.argv.empty() || spec.argv.front().empty())
    return make_error(ec::spawn_failed, "cannot start: empty command");
  if (!obs)
    return make_error(ec::spawn_failed,
                      "cannot start " + spec.argv.front() + ": no observer");
  auto path = resolve(spec);
  if (!path)
    return path.error();
  impl::request rq;
  rq.name = spec.argv.front();
  rq.path = std::move(*path);
  rq.argv_s = spec.argv;
  rq.env_s = spec.env;
  for (auto& s : rq.argv_s)
    rq.argv.push_back(s.data());
  rq.argv.push_back(nullptr);
  for (auto& s : rq.env_s)
    rq.envp.push_back(s.data());
  rq.envp.push_back(nullptr);
  rq.has_cwd = !spec.cwd.empty();
  rq.cwd = spec.cwd.string();
  rq.obs = std::move(obs);
  return impl_->submit(rq);
}

void reactor::ack(pid_t pid) {
  auto& d = *impl_;
  bool need_wake = false;
  {
    std::lock_guard<std::mutex> guard{d.mu};
    auto i = d.table.find(pid);
    if (i == d.table.end())
      return;
    auto& r = *i->second;
    if (r.unacked > 0)
      --r.unacked;
    if (r.paused && r.unacked < d.opts.max_unacked && !r.resume_queued) {
      r.resume_queued = true;
      d.resumes.push_back(pid);
      need_wake = true;
    }
  }
  if (need_wake)
    d.wake();
}

caf::error reactor::signal(const child& c, int sig) {
  if (c.pgid <= 1)
    return make_error(ec::invalid_argument,
                      "invalid process group " + std::to_string(c.pgid));
  if (::kill(-c.pgid, sig) != 0 && errno != ESRCH) {
    int e = errno;
    return make_error(e == EINVAL ? ec::invalid_argument : ec::unspecified,
                      "cannot signal process group " + std::to_string(c.pgid)
                          + ": " + errno_text(e));
  }
  return caf::none;
}

size_t reactor::size() const {
  std::lock_guard<std::mutex> guard{impl_->mu};
  return impl_->table.size();
}

} // namespace makima::process
