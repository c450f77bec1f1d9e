// Spawn latency of the process reactor: spawn /bin/true (or argv[1..]) and
// wait for on_exit, N times; prints p50/p90/p99 of spawn() returning and of
// on_exit arriving. Not registered in CMake; build by hand, e.g.
//   g++ -std=c++17 -O2 -I. bench/spawn_latency.cpp \
//     build-proc/libmakima_process.a build-proc/libmakima_core.a \
//     -lcaf_core -lpthread -o /tmp/spawn_latency && /tmp/spawn_latency
#include "runtime/process/reactor.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace proc = makima::process;
using steady = std::chrono::steady_clock;

struct waiter : proc::observer {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  void on_output(proc::stream, std::string) override {}
  void on_exit(proc::exit_status) override {
    std::lock_guard<std::mutex> g{mu};
    done = true;
    cv.notify_all();
  }
};

int main(int argc, char** argv) {
  int runs = std::getenv("RUNS") ? std::atoi(std::getenv("RUNS")) : 200;
  proc::spawn_spec spec;
  spec.argv = {"/bin/true"};
  if (argc > 1)
    spec.argv.assign(argv + 1, argv + argc);
  spec.cwd = "/";
  spec.env = {"PATH=/usr/local/bin:/usr/bin:/bin"};
  proc::reactor r;
  std::vector<double> started, exited;
  for (int i = 0; i < runs; ++i) {
    auto obs = std::make_shared<waiter>();
    auto t0 = steady::now();
    auto c = r.spawn(spec, obs);
    auto t1 = steady::now();
    if (!c) {
      std::fprintf(stderr, "spawn failed\n");
      return 1;
    }
    std::unique_lock<std::mutex> lock{obs->mu};
    if (!obs->cv.wait_for(lock, std::chrono::seconds(10),
                          [&] { return obs->done; })) {
      std::fprintf(stderr, "timeout\n");
      return 1;
    }
    auto t2 = steady::now();
    started.push_back(
        std::chrono::duration<double, std::micro>(t1 - t0).count());
    exited.push_back(
        std::chrono::duration<double, std::micro>(t2 - t0).count());
  }
  auto report = [&](const char* what, std::vector<double>& v) {
    std::sort(v.begin(), v.end());
    std::printf("%-22s p50 %6.0f us  p90 %6.0f us  p99 %6.0f us\n", what,
                v[v.size() / 2], v[v.size() * 9 / 10], v[v.size() * 99 / 100]);
  };
  std::printf("%d runs of %s\n", runs, spec.argv[0].c_str());
  report("spawn() returned", started);
  report("on_exit delivered", exited);
}
