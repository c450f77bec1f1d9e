// Helpers of the migration tests (migration_test.cpp,
// migration_faults_test.cpp): what the server says of a task (its output
// and seqs, its history, its checkpoints) and of its worktree, read
// through the fleet harness (fleet.hpp).
#pragma once

#include <set>

#include "tests/fixtures/s3_server.hpp"
#include "tests/integration/fleet.hpp"

namespace makima::it::migration {

/// The task's output at the server: the text and every chunk's seq.
struct seqs_t {
  std::string text;
  std::vector<uint64_t> seqs;
};
inline seqs_t output_seqs(const api& http, const std::string& id) {
  seqs_t o;
  uint64_t from = 0;
  for (int i = 0; i < 10000; ++i) {
    auto j = http.get_json("/api/v1/tasks/" + id
                           + "/output?from=" + std::to_string(from));
    if (!j.contains("chunks"))
      break;
    for (auto& c : j["chunks"]) {
      o.seqs.push_back(c.value("seq", uint64_t{0}));
      o.text += api::proto_decode(c.value("data", ""));
    }
    auto next = j.value("next", from);
    if (j["chunks"].empty() || next == from)
      break;
    from = next;
  }
  return o;
}

/// "" when `seqs` is 0, 1, 2, ... without gap or duplicate, else what is
/// wrong.
inline std::string contiguity(const std::vector<uint64_t>& seqs) {
  for (size_t i = 0; i < seqs.size(); ++i)
    if (seqs[i] != i)
      return "chunk " + std::to_string(i) + " has seq "
             + std::to_string(seqs[i]);
  return {};
}

/// Occurrences of `needle` in `hay`.
inline size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t p = 0; (p = hay.find(needle, p)) != std::string::npos;
       p += needle.size())
    ++n;
  return n;
}

/// The task's history (GET ?history=1).
inline json history(const api& http, const std::string& id) {
  auto j = http.get_json("/api/v1/tasks/" + id + "?history=1");
  return j.value("history", json::array());
}

/// Whether an entry of `h` has `state` (any when empty) and a detail
/// containing `needle`.
inline bool says(const json& h, const std::string& state, const std::string& needle) {
  for (auto& x : h)
    if ((state.empty() || x.value("state", "") == state)
        && x.value("detail", "").find(needle) != std::string::npos)
      return true;
  return false;
}

/// How many entries of `h` have a detail containing `needle`.
inline size_t entries_saying(const json& h, const std::string& needle) {
  size_t n = 0;
  for (auto& x : h)
    if (x.value("detail", "").find(needle) != std::string::npos)
      ++n;
  return n;
}

/// The attempts of `h` that ended in `state`.
inline std::set<int> attempts_in(const json& h, const std::string& state) {
  std::set<int> out;
  for (auto& x : h)
    if (x.value("state", "") == state)
      out.insert(x.value("attempt", 0));
  return out;
}

/// The step-* files (0..last) missing from `worktree`.
inline std::string missing_steps(const fs::path& worktree, int last = 8) {
  std::string out;
  for (int i = 0; i <= last; ++i) {
    auto f = worktree / ("step-" + std::to_string(i));
    if (slurp(f) != "step " + std::to_string(i) + "\n")
      out += " step-" + std::to_string(i);
  }
  return out;
}

/// The number n of a ref `id`/n, 0 when it is not one.
inline int ref_number(const std::string& id, const std::string& ref) {
  if (ref.rfind(id + "/", 0) != 0)
    return 0;
  try {
    return std::stoi(ref.substr(id.size() + 1));
  } catch (const std::exception&) {
    return 0;
  }
}

/// Waits until the output of `id` at the server contains `needle`.
inline bool output_has(const api& http, const std::string& id,
                const std::string& needle,
                std::chrono::milliseconds timeout = 30000ms) {
  return eventually(
      [&] { return http.output(id).all.find(needle) != std::string::npos; },
      timeout);
}

/// Waits until the server knows checkpoint `at_least` (or a later one)
/// of `id`; returns its latest ("" if none came).
inline std::string known_checkpoint(const api& http, const std::string& id,
                             int at_least = 1,
                             std::chrono::milliseconds timeout = 10000ms) {
  std::string ref;
  eventually(
      [&] {
        ref = http.task(id).value("checkpoint", "");
        return ref_number(id, ref) >= at_least;
      },
      timeout);
  return ref;
}

/// Everything a failed assertion should show.
inline std::string dump(const api& http, const std::string& id, const proc& a,
                 const proc& b) {
  auto j = http.get_json("/api/v1/tasks/" + id + "?history=1");
  return "record: " + j.dump(1) + "\n--- output:\n" + http.output(id).all
         + "\n--- daemon A:\n" + a.output() + "\n--- daemon B:\n" + b.output();
}

/// Kills what is left of the task `id`'s processes (a SIGKILLed daemon's
/// orphans), so that nothing outlives the test.
inline void reap(const std::string& id) {
  for (auto pid : pids_with_env("MAKIMA_TASK_ID=" + id))
    ::kill(pid, SIGKILL);
}

/// A task that continues where it was: from the counter in
/// $MAKIMA_STATE_DIR/n (0 when absent) up to `last`, each step writes the
/// file step-$i in the worktree, echoes "step $i", advances the counter
/// and sleeps `pause` seconds. Its first line says which attempt runs,
/// whether it was resumed and where it starts. A SIGTERM (the eviction
/// signal) ends it between two steps ("saved", exit 143).
inline std::string stepper(const std::string& pause, int last = 8) {
  return R"(n="$MAKIMA_STATE_DIR/n"
i=$(cat "$n" 2>/dev/null || echo 0)
echo "attempt $MAKIMA_ATTEMPT resumed=${MAKIMA_RESUMED:-0} from=$i"
term=
trap 'term=1' TERM
while [ "$i" -le )"
         + std::to_string(last) + R"( ]; do
  echo "step $i" > "step-$i"
  echo "step $i"
  i=$((i + 1))
  echo "$i" > "$n"
  if [ -n "$term" ]; then echo saved; exit 143; fi
  sleep )"
         + pause + R"(
  if [ -n "$term" ]; then echo saved; exit 143; fi
done
echo finished
)";
}

/// The submit body of a `stepper` task on `origin`.
inline json stepper_spec(const std::string& id, const std::string& origin,
                  const std::string& pause = "1", int last = 8) {
  return {{"id", id},
          {"repo", origin},
          {"commit", true},
          {"argv", {"sh", "-c", stepper(pause, last)}}};
}

/// A shared checkpoint store: a real S3 server (SigV4), reached directly
/// or through `endpoint` (a fault proxy), or a file:// dir.
struct shared_store {
  std::unique_ptr<test::s3_server> s3;
  std::string url;
  std::string endpoint; // s3 only: where daemons send requests
  fs::path dir;         // file:// only

  /// A bucket "makima" on a local S3 server, prefix "mig".
  static shared_store on_s3(const env& e) {
    shared_store s;
    s.s3 = std::make_unique<test::s3_server>(e.root() / "s3", "makima");
    s.url = "s3://makima/mig";
    s.endpoint = s.s3->endpoint();
    return s;
  }
  /// A directory under the test's root.
  static shared_store on_disk(const env& e) {
    shared_store s;
    s.dir = e.root() / "store";
    s.url = "file://" + s.dir.string();
    return s;
  }
  /// The daemon (or `makima task restore`) flags naming the store.
  std::vector<std::string> flags() const {
    std::vector<std::string> f{"--store", url};
    if (s3)
      f.insert(f.end(), {"--s3-endpoint", endpoint, "--s3-region", "auto"});
    return f;
  }
  /// The environment a process reading the store needs (credentials).
  std::map<std::string, std::string> vars() const {
    if (!s3)
      return {};
    return {{"AWS_ACCESS_KEY_ID", test::s3_server::access_key},
            {"AWS_SECRET_ACCESS_KEY", test::s3_server::secret_key}};
  }
};

/// The flags of a daemon of `pool` that checkpoints every `interval`
/// seconds into `store` (none: no store, no checkpoints), with an
/// eviction grace of 3 s and a deadline of `deadline` s.
inline std::vector<std::string> daemon_flags(const std::string& pool,
                                      const shared_store* store,
                                      const std::string& interval = "1",
                                      const std::string& deadline = "10") {
  std::vector<std::string> f{
      "--pool",           pool, "--eviction-deadline", deadline,
      "--eviction-grace", "3",  "--heartbeat",         "1"};
  if (store) {
    auto s = store->flags();
    f.insert(f.end(), s.begin(), s.end());
    f.insert(f.end(), {"--checkpoint-interval", interval});
  } else {
    f.insert(f.end(), {"--checkpoint-interval", "0"});
  }
  return f;
}

/// Starts a daemon `name` over `data` connected to `ws` with `flags`,
/// reading the store with `vars`.
inline bool start_daemon(daemon_proc& d, const env& e, const std::string& ws,
                  const std::string& name, const fs::path& data,
                  std::vector<std::string> flags,
                  std::map<std::string, std::string> vars = {}) {
  d.extra_env = std::move(vars);
  return d.launch(e, ws, name, data, std::move(flags));
}

/// The same, connected to `srv`.
inline bool start_daemon(daemon_proc& d, const env& e, const server_proc& srv,
                         const std::string& name, const fs::path& data,
                         std::vector<std::string> flags,
                         std::map<std::string, std::string> vars = {}) {
  return start_daemon(d, e, srv.ws(), name, data, std::move(flags),
                      std::move(vars));
}

#define REQUIRE_S3()                                                           \
  ASSERT_TRUE(test::s3_server::installed())                                    \
      << test::s3_server::node_dir() << "/node_modules is missing: npm ci"

} // namespace makima::it::migration
