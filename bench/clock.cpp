// makima_bench_clock: the timing helper of bench/run.sh.
//
//   makima_bench_clock stamp FILE
//       Appends CLOCK_REALTIME in ns (one line) to FILE and exits 0. Used as
//       the task's command: the stamp is taken first thing in main(), so it
//       marks "the child has exec'd" (plus this tiny binary's own startup,
//       which the `direct` floor measures too).
//
//   makima_bench_clock launch [--sample-ms N] [--out FILE] -- CMD [ARGS...]
//       Takes CLOCK_REALTIME, posix_spawn()s CMD (stdio inherited), waits
//       for it and prints one JSON object:
//         {"t0":ns,"t1":ns,"status":N,"rss_max_kb":..,"hwm_kb":..,
//          "rss_samples_kb":[..]}
//       t0 is taken immediately before posix_spawn, t1 right after the wait
//       returns. With --sample-ms N (N > 0) the helper polls
//       /proc/PID/status of CMD (the makima process itself, not its
//       children) every N ms and reports its VmRSS samples, the largest one
//       and the last VmHWM it saw; t1 is then precise to about N ms.
//       Without it, it blocks in waitpid and t1 is exact.
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace {

long long now_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

// Reads "Key:   1234 kB" from /proc/PID/status; -1 when gone.
void read_status(pid_t pid, long& rss, long& hwm) {
  rss = hwm = -1;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/status", static_cast<int>(pid));
  FILE* f = std::fopen(path, "r");
  if (!f)
    return;
  char line[256];
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "VmRSS:", 6) == 0)
      rss = std::strtol(line + 6, nullptr, 10);
    else if (std::strncmp(line, "VmHWM:", 6) == 0)
      hwm = std::strtol(line + 6, nullptr, 10);
  }
  std::fclose(f);
}

int stamp(const char* file) {
  long long t = now_ns();
  FILE* f = std::fopen(file, "a");
  if (!f)
    return 2;
  std::fprintf(f, "%lld\n", t);
  std::fclose(f);
  return 0;
}

int launch(int argc, char** argv) {
  int sample_ms = 0;
  const char* out = nullptr;
  int i = 0;
  for (; i < argc; ++i) {
    if (std::strcmp(argv[i], "--sample-ms") == 0 && i + 1 < argc)
      sample_ms = std::atoi(argv[++i]);
    else if (std::strcmp(argv[i], "--out") == 0 && i + 1 < argc)
      out = argv[++i];
    else if (std::strcmp(argv[i], "--") == 0) {
      ++i;
      break;
    } else
      break;
  }
  if (i >= argc) {
    std::fprintf(stderr, "launch: no command\n");
    return 2;
  }
  std::vector<long> samples;
  long rss_max = -1, hwm = -1;
  pid_t pid = 0;
  long long t0 = now_ns();
  int rc = posix_spawnp(&pid, argv[i], nullptr, nullptr, argv + i, environ);
  if (rc != 0) {
    std::fprintf(stderr, "launch: %s: %s\n", argv[i], std::strerror(rc));
    return 2;
  }
  int status = 0;
  if (sample_ms <= 0) {
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  } else {
    timespec pause{sample_ms / 1000, (sample_ms % 1000) * 1000000L};
    for (;;) {
      pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid)
        break;
      long rss, h;
      read_status(pid, rss, h);
      if (rss > 0) {
        samples.push_back(rss);
        if (rss > rss_max)
          rss_max = rss;
      }
      if (h > hwm)
        hwm = h;
      nanosleep(&pause, nullptr);
    }
  }
  long long t1 = now_ns();
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::string json =
      "{\"t0\":" + std::to_string(t0) + ",\"t1\":" + std::to_string(t1)
      + ",\"status\":" + std::to_string(code)
      + ",\"rss_max_kb\":" + std::to_string(rss_max)
      + ",\"hwm_kb\":" + std::to_string(hwm) + ",\"rss_samples_kb\":[";
  for (size_t k = 0; k < samples.size(); ++k)
    json += (k ? "," : "") + std::to_string(samples[k]);
  json += "]}\n";
  FILE* f = out ? std::fopen(out, "w") : stdout;
  if (!f)
    return 2;
  std::fputs(json.c_str(), f);
  if (out)
    std::fclose(f);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "stamp") == 0)
    return stamp(argv[2]);
  if (argc >= 2 && std::strcmp(argv[1], "launch") == 0)
    return launch(argc - 2, argv + 2);
  std::fprintf(stderr,
               "usage: makima_bench_clock stamp FILE\n"
               "       makima_bench_clock launch [--sample-ms N] [--out FILE] "
               "-- CMD [ARGS...]\n");
  return 2;
}
