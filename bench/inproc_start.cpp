// In-process task start latency: the cost of starting a task inside a
// running makima node (what a daemon pays per task), without the one-shot
// CLI's process start and RocksDB open. Submit = the task's record is
// created through PERSISTENCE and the attempt assigned to DAEMON; the clock
// stops when the LINK receives the `running` state, which the TASK sends
// only after the child exec'd and the running record is stored.
//
//   makima_bench_inproc_start DIR RUNS OUT.json
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <mutex>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include "actors/daemon.hpp"
#include "actors/local_link.hpp"
#include "actors/persistence.hpp"
#include "runtime/error.hpp"
#include "runtime/store/db.hpp"

using namespace makima;
using clock_type = std::chrono::steady_clock;

namespace {

struct bench_config : caf::actor_system_config {
  bench_config() {
    set("scheduler.max-threads", 2);
    set("logger.verbosity", caf::atom("quiet"));
    makima::add_message_types(*this);
  }
};

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1,
                    static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s DIR RUNS OUT.json\n", argv[0]);
    return 2;
  }
  std::filesystem::path dir = argv[1];
  int runs = std::atoi(argv[2]);
  auto db = store::db::open(dir / "db", {});
  if (!db) {
    std::fprintf(stderr, "%s\n", describe(db.error()).c_str());
    return 1;
  }
  std::shared_ptr<store::db> shared{std::move(*db)};
  std::mutex mtx;
  std::condition_variable cv;
  clock_type::time_point running_at;
  bool running = false;
  int results = 0;
  std::vector<double> start_ms, total_ms;
  {
    bench_config cfg;
    caf::actor_system sys{cfg};
    auto persist = spawn_persistence(sys, shared);
    int devnull = ::open("/dev/null", O_WRONLY);
    auto link = spawn_local_link(
        sys, devnull, devnull,
        [&](const task_record& r) {
          if (r.state != task_state::running)
            return;
          std::lock_guard<std::mutex> guard{mtx};
          running_at = clock_type::now();
          running = true;
          cv.notify_all();
        },
        [&](const task_record&) {
          std::lock_guard<std::mutex> guard{mtx};
          ++results;
          cv.notify_all();
        });
    auto reactor = std::make_shared<process::reactor>();
    auto node = spawn_daemon(sys, daemon_context{persist,
                                                 link,
                                                 reactor,
                                                 dir / "repos",
                                                 dir / "worktrees",
                                                 dir / "state",
                                                 "b",
                                                 "b@x",
                                                 4,
                                                 {"PATH=/usr/bin:/bin"}});
    caf::scoped_actor self{sys};
    for (int i = 0; i < runs + 5; ++i) {
      task_record rec;
      rec.spec.id = "b" + std::to_string(i);
      rec.spec.argv = {"/bin/true"};
      {
        std::lock_guard<std::mutex> guard{mtx};
        running = false;
      }
      auto t0 = clock_type::now();
      bool ok = true;
      self->request(persist, caf::infinite, create_atom::value, rec)
          .receive([](ok_atom) {},
                   [&](caf::error& e) {
                     std::fprintf(stderr, "%s\n", describe(e).c_str());
                     ok = false;
                   });
      if (!ok)
        return 1;
      caf::anon_send(node, assign_atom::value, rec);
      std::unique_lock<std::mutex> guard{mtx};
      cv.wait(guard, [&] { return results == i + 1; });
      auto t2 = clock_type::now();
      if (i >= 5) { // warm-up excluded
        start_ms.push_back(
            std::chrono::duration<double, std::milli>(running_at - t0).count());
        total_ms.push_back(
            std::chrono::duration<double, std::milli>(t2 - t0).count());
      }
    }
    caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(link, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(persist, caf::exit_reason::user_shutdown);
  }
  std::ofstream out(argv[3]);
  out << "{\"runs\":" << runs << ",\"start_p50_ms\":" << pct(start_ms, 0.5)
      << ",\"start_p90_ms\":" << pct(start_ms, 0.9)
      << ",\"result_p50_ms\":" << pct(total_ms, 0.5)
      << ",\"result_p90_ms\":" << pct(total_ms, 0.9) << "}\n";
  std::printf("in-process submit -> running (exec'd, stored): p50 %.2f ms, p90 "
              "%.2f ms; "
              "submit -> result p50 %.2f ms\n",
              pct(start_ms, 0.5), pct(start_ms, 0.9), pct(total_ms, 0.5));
  return 0;
}
