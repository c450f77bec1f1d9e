// See signals.hpp.
#include "runtime/process/signals.hpp"

#include <pthread.h>
#include <signal.h>
#include <time.h>

namespace makima::process {

namespace {

sigset_t stop_set(bool with_wakeup) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP})
    sigaddset(&set, s);
  if (with_wakeup)
    sigaddset(&set, SIGUSR1);
  return set;
}

} // namespace

void block_stop_signals() {
  auto set = stop_set(true);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

void unblock_stop_signals() {
  auto set = stop_set(false);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

int wait_signal(std::chrono::milliseconds timeout) {
  auto set = stop_set(false);
  if (timeout.count() < 0) {
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    return sig;
  }
  timespec ts{static_cast<time_t>(timeout.count() / 1000),
              static_cast<long>(timeout.count() % 1000) * 1000000L};
  int sig = sigtimedwait(&set, nullptr, &ts);
  return sig > 0 ? sig : 0;
}

signal_watcher::signal_watcher(std::function<void(int)> on_signal)
    : on_signal_(std::move(on_signal)) {
  // The thread starts with the signals blocked whatever the caller's mask
  // (it inherits the mask it is created with): sigwait needs them blocked,
  // and the SIGUSR1 that wakes it must never take its default action (end
  // the process) in a program that did not call block_stop_signals.
  auto set = stop_set(true);
  sigset_t old;
  pthread_sigmask(SIG_BLOCK, &set, &old);
  thread_ = std::thread([this] { loop(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

signal_watcher::~signal_watcher() {
  done_ = true;
  pthread_kill(thread_.native_handle(), SIGUSR1);
  thread_.join();
}

void signal_watcher::loop() {
  auto set = stop_set(true);
  while (!done_) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0)
      continue;
    if (done_)
      break;
    if (sig != SIGUSR1)
      on_signal_(sig);
  }
}

} // namespace makima::process
