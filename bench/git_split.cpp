// makima_bench_git_split: where a repo task's preparation time goes, using
// the same runtime/git code the REPO actor calls (in-process, no actors,
// no RocksDB, no child process).
//
//   makima_bench_git_split URL REPOS_DIR WORKTREES_DIR N
//
// Opens (or clones) the mirror of URL in REPOS_DIR once, then N times:
// fetch() + resolve("") + add_worktree() — what `prepare` does for every
// task — and prints one JSON object per iteration with the milliseconds of
// each step.
#include "runtime/git/git.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

namespace git = makima::git;
using clk = std::chrono::steady_clock;

static double ms_since(clk::time_point t) {
  return std::chrono::duration<double, std::milli>(clk::now() - t).count();
}

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(
        stderr,
        "usage: makima_bench_git_split URL REPOS_DIR WORKTREES_DIR N\n");
    return 2;
  }
  git::init();
  std::string url = git::canonical_url(argv[1]);
  std::filesystem::path repos = argv[2], wts = argv[3];
  int n = std::atoi(argv[4]);
  auto t = clk::now();
  auto m = git::mirror::open(url, repos, false);
  if (!m) {
    std::fprintf(stderr, "open failed\n");
    return 1;
  }
  std::printf("{\"open_ms\":%.3f}\n", ms_since(t));
  for (int i = 0; i < n; ++i) {
    auto name = "split-" + std::to_string(::getpid()) + "-" + std::to_string(i);
    t = clk::now();
    if (auto err = m->fetch()) {
      std::fprintf(stderr, "fetch failed\n");
      return 1;
    }
    double fetch_ms = ms_since(t);
    t = clk::now();
    auto commit = m->resolve("");
    if (!commit) {
      std::fprintf(stderr, "resolve failed\n");
      return 1;
    }
    double resolve_ms = ms_since(t);
    t = clk::now();
    auto wt = m->add_worktree(name, wts / name, *commit, "makima/" + name);
    if (!wt) {
      std::fprintf(stderr, "add_worktree failed\n");
      return 1;
    }
    double add_ms = ms_since(t);
    std::printf(
        "{\"fetch_ms\":%.3f,\"resolve_ms\":%.3f,\"add_worktree_ms\":%.3f}\n",
        fetch_ms, resolve_ms, add_ms);
    std::fflush(stdout);
  }
  return 0;
}
