// Eviction and resume on another daemon (issue 11, docs/protocol.md §14):
// real `makima server` and two `makima daemon`s (pools k8s and cloudflare)
// sharing one checkpoint store (a real S3 server, or a file:// dir where
// the test tampers with it). A SIGTERMed daemon hands its task over with a
// final checkpoint; a SIGKILLed one loses it after the lease and the task
// resumes from the last periodic checkpoint; a task without checkpoints
// reruns from scratch; a checkpoint that fails verification is never run
// from.
#include "tests/fixtures/git_daemon.hpp"
#include "tests/fixtures/s3_server.hpp"
#include "tests/integration/fleet.hpp"
#include "tests/integration/migration.hpp"

#include <algorithm>
#include <fstream>
#include <set>

namespace makima::it {
namespace {

using namespace makima::it::migration;

using clock_type = std::chrono::steady_clock;

/// The steps of `stepper`: 0..last_step.
constexpr int last_step = 8;

TEST(migration, an_evicted_task_finishes_on_another_pool) {
  REQUIRE_S3();
  env e;
  auto store = shared_store::on_s3(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  // Only A is up: the task lands on A.
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA",
                           daemon_flags("k8s", &store), store.vars()));
  const std::string id = "mig-evict";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 3")) << dump(http, id, a, b);
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store), store.vars()));
  // Eviction: A hands the task over and exits 0 within its deadline.
  auto t0 = clock_type::now();
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  auto took = clock_type::now() - t0;
  EXPECT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  EXPECT_LT(took, 15s);
  ASSERT_TRUE(http.wait_terminal({id}, 40000ms)) << dump(http, id, a, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump();
  auto from = rec.value("resume_from", "");
  EXPECT_GE(ref_number(id, from), 1) << rec.dump();
  // It finished on B, with every step (A's and B's) in B's worktree.
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump();
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  // The eviction signal reached the task; the second attempt was resumed
  // and went on from A's counter.
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "saved\n"), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 1 resumed=0 from=0\n"), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from="), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from=0\n"), 0u) << out.text;
  // The final checkpoint is taken once the task is gone: no step is done
  // twice, none is lost.
  for (int i = 0; i <= last_step; ++i)
    EXPECT_EQ(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << "step " << i << " in:\n"
        << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "migrating"), (std::set<int>{1})) << h.dump(1);
  EXPECT_TRUE(says(h, "", "re-queued from checkpoint " + from)) << h.dump(1);
  EXPECT_FALSE(says(h, "", "from scratch")) << h.dump(1);
  // The task's record at the server knows its latest checkpoint.
  EXPECT_GE(ref_number(id, rec.value("checkpoint", "")), ref_number(id, from))
      << rec.dump();
  // B had never mirrored the repository: the restore was cold, and B
  // reported it (the `restore` of its state event) with what it downloaded.
  EXPECT_EQ(http.metric("makima_restore_seconds_count{node_state=\"cold\"}"),
            1)
      << dump(http, id, a, b);
  EXPECT_EQ(http.metric("makima_restore_seconds_count{node_state=\"warm\"}"),
            0);
  EXPECT_GE(http.metric("makima_restore_seconds_sum{node_state=\"cold\"}"), 0);
  EXPECT_GT(http.metric("makima_restore_bytes_total"), 0);
  b.stop();
}

// The cold node of the issue: B has never seen the repository, and its
// origin (a real git:// server) goes down after A cloned it. B restores
// the task from the store alone: A published the pack its clone received
// (mirror packs), B seeds its mirror from it and does not need origin.
TEST(migration, a_cold_node_restores_from_the_mirror_packs_when_origin_is_down) {
  REQUIRE_S3();
  env e;
  auto store = shared_store::on_s3(e);
  test::git_daemon origin_host{e.root() / "served"};
  test::make_repo(e.root() / "served" / "origin", {300, 10});
  auto origin = origin_host.url("origin");
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA",
                           daemon_flags("k8s", &store), store.vars()));
  const std::string id = "mig-cold";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  // A's first checkpoint had it publish the mirror packs of the origin.
  ASSERT_TRUE(a.wait_for("mirror packs 1 of " + origin))
      << dump(http, id, a, b);
  // Origin goes down; B, a new node, joins.
  origin_host.stop();
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store), store.vars()));
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  EXPECT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  ASSERT_TRUE(http.wait_terminal({id}, 40000ms)) << dump(http, id, a, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump();
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump();
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  // B said how it got the repository: seeded, origin unreachable.
  EXPECT_TRUE(b.wait_for("seeded from mirror packs 1")) << b.output();
  EXPECT_NE(b.output().find("unreachable"), std::string::npos) << b.output();
  // A seeded mirror is a cold restore too (/metrics).
  EXPECT_EQ(http.metric("makima_restore_seconds_count{node_state=\"cold\"}"),
            1);
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from="), 1u) << out.text;
  for (int i = 0; i <= last_step; ++i)
    EXPECT_EQ(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << "step " << i << " in:\n"
        << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  b.stop();
}

TEST(migration, sigkill_resumes_from_the_last_periodic_checkpoint) {
  REQUIRE_S3();
  env e;
  auto store = shared_store::on_s3(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(
      srv.launch(e, server_args(e.root() / "server", {"--lease", "3"})));
  api http{srv.http()};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA",
                           daemon_flags("k8s", &store), store.vars()));
  const std::string id = "mig-kill";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 3")) << dump(http, id, a, b);
  // The server has a periodic checkpoint of it.
  ASSERT_TRUE(eventually(
      [&] { return ref_number(id, http.task(id).value("checkpoint", "")) > 0; },
      10000ms))
      << dump(http, id, a, b);
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store), store.vars()));
  a.kill(SIGKILL);
  auto r = a.bg->wait(5000ms);
  EXPECT_EQ(r.signal, SIGKILL);
  reap(id); // A's orphan would go on in A's worktree
  // What the server knows once A is gone: its latest checkpoint.
  std::this_thread::sleep_for(200ms);
  auto known = http.task(id).value("checkpoint", "");
  ASSERT_GE(ref_number(id, known), 1);
  // After the lease (3 s) and the backoff (1 s) it resumes on B.
  ASSERT_TRUE(http.wait_terminal({id}, 40000ms)) << dump(http, id, a, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump();
  EXPECT_EQ(rec.value("resume_from", ""), known) << rec.dump();
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump();
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  auto h = history(http, id);
  // (The server names daemons by their id, d-..., not by --name.)
  EXPECT_TRUE(says(h, "queued", "lease of daemon d-")) << h.dump(1);
  EXPECT_TRUE(says(h, "", "re-queued from checkpoint " + known)) << h.dump(1);
  EXPECT_TRUE(attempts_in(h, "migrating").empty()) << h.dump(1);
  // The second attempt started from the counter of that checkpoint (read
  // back by restoring it elsewhere), not from 0.
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  auto vars = store.vars();
  auto o = e.opts(60000ms);
  for (auto& [k, v] : vars)
    o.env[k] = v;
  std::vector<std::string> restore{
      MAKIMA_BINARY, "task",       "restore",
      known,         "--data-dir", (e.root() / "laptop").string()};
  for (auto& f : store.flags())
    restore.push_back(f);
  auto res = test::run(restore, o);
  ASSERT_EQ(res.exit_code, 0) << res.err;
  auto counter = slurp(e.root() / "laptop/state" / id / "n");
  ASSERT_FALSE(counter.empty());
  counter.pop_back();
  EXPECT_GE(std::stoi(counter), 1);
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from=" + counter + "\n"), 1u)
      << "counter " << counter << " at " << known << ", output:\n"
      << out.text;
  // Output up to the checkpoint is kept; the steps done after it are done
  // again, so every step is there at least once.
  for (int i = 0; i <= last_step; ++i)
    EXPECT_GE(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  b.stop();
}

TEST(migration, a_task_without_checkpoints_reruns_from_scratch) {
  env e;
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA",
                           daemon_flags("k8s", nullptr)));
  const std::string id = "mig-scratch";
  ASSERT_EQ(http.submit(stepper_spec(id, origin, "0.4")), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", nullptr)));
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  EXPECT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  ASSERT_TRUE(http.wait_terminal({id}, 30000ms)) << dump(http, id, a, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump();
  // Empty fields are left out of the record.
  EXPECT_EQ(rec.value("resume_from", ""), "") << rec.dump();
  EXPECT_EQ(rec.value("checkpoint", ""), "") << rec.dump();
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump();
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "migrating"), (std::set<int>{1})) << h.dump(1);
  EXPECT_TRUE(says(h, "", "re-queued from scratch (no checkpoint)"))
      << h.dump(1);
  EXPECT_FALSE(says(h, "", "re-queued from checkpoint")) << h.dump(1);
  // From scratch: a fresh state dir, so attempt 2 starts at step 0 again;
  // the output of both attempts is kept, one after the other; it is told
  // it does not continue anything (MAKIMA_RESUMED=0).
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "attempt 1 resumed=0 from=0\n"), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=0 from=0\n"), 1u) << out.text;
  EXPECT_NE(out.text.find(" from=0\nstep 0\n", out.text.find("attempt 2 ")),
            std::string::npos)
      << out.text;
  EXPECT_LT(out.text.find("attempt 1 "), out.text.find("attempt 2 "))
      << out.text;
  EXPECT_EQ(count(out.text, "saved\n"), 1u) << out.text;
  EXPECT_EQ(count(out.text, "step 0\n"), 2u) << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  b.stop();
}

TEST(migration, resume_command_runs_on_resume) {
  REQUIRE_S3();
  env e;
  auto store = shared_store::on_s3(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA",
                           daemon_flags("k8s", &store), store.vars()));
  const std::string id = "mig-rescmd";
  auto spec = stepper_spec(id, origin, "0.5");
  spec["resume_command"] = {"sh", "-c",
                            "echo resumed-$MAKIMA_ATTEMPT-$MAKIMA_RESUMED\n"
                                + stepper("0.5")};
  ASSERT_EQ(http.submit(spec), id);
  EXPECT_EQ(http.task(id)
                .value("spec", json::object())
                .value("resume_command", json::array()),
            spec["resume_command"]);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store), store.vars()));
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  EXPECT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  ASSERT_TRUE(http.wait_terminal({id}, 30000ms)) << dump(http, id, a, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump();
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  // Attempt 1 ran argv, attempt 2 the resume command (and only it).
  EXPECT_EQ(count(out.text, "resumed-2-1\n"), 1u) << out.text;
  EXPECT_EQ(count(out.text, "resumed-"), 1u) << out.text;
  EXPECT_LT(out.text.find("attempt 1 "), out.text.find("resumed-2-1"))
      << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from="), 1u) << out.text;
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  b.stop();
}

TEST(migration, a_task_ignoring_the_eviction_signal_is_killed_after_the_grace) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA",
                           daemon_flags("k8s", &store)));
  const std::string id = "mig-grace";
  // TERM ignored by the shell and (inherited) by its sleeps.
  auto spec = stepper_spec(id, origin, "0.5");
  auto script = stepper("0.5");
  auto trap = script.find("trap 'term=1' TERM");
  ASSERT_NE(trap, std::string::npos);
  script.replace(trap, std::string{"trap 'term=1' TERM"}.size(),
                 "trap '' TERM");
  spec["argv"][2] = script;
  ASSERT_EQ(http.submit(spec), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store)));
  auto t0 = clock_type::now();
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  auto took = clock_type::now() - t0;
  EXPECT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  // The grace (3 s) was waited for, then SIGKILL; well within the deadline.
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(took);
  EXPECT_GE(ms.count(), 2900);
  EXPECT_LT(ms.count(), 10000);
  ASSERT_TRUE(http.wait_terminal({id}, 30000ms)) << dump(http, id, a, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump();
  EXPECT_GE(ref_number(id, rec.value("resume_from", "")), 1) << rec.dump();
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "migrating"), (std::set<int>{1})) << h.dump(1);
  // Killed mid-run: no "saved", and the second attempt went on from the
  // counter of the final checkpoint (taken after the kill).
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "saved\n"), 0u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from=0\n"), 0u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from="), 1u) << out.text;
  for (int i = 0; i <= last_step; ++i)
    EXPECT_GE(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  b.stop();
}

TEST(migration, the_eviction_signal_is_configurable) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b;
  auto flags = daemon_flags("k8s", &store);
  flags.insert(flags.end(), {"--eviction-signal", "USR1"});
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA", flags));
  const std::string id = "mig-usr1";
  // USR1 saves; TERM would go unnoticed (ignored).
  auto spec = stepper_spec(id, origin, "0.5");
  auto script = stepper("0.5");
  auto trap = script.find("trap 'term=1' TERM");
  ASSERT_NE(trap, std::string::npos);
  script.replace(trap, std::string{"trap 'term=1' TERM"}.size(),
                 "trap '' TERM\ntrap 'term=1' USR1");
  spec["argv"][2] = script;
  ASSERT_EQ(http.submit(spec), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store)));
  auto t0 = clock_type::now();
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  EXPECT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  // It stopped on USR1, before the grace (3 s) ran out.
  EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(
                clock_type::now() - t0)
                .count(),
            2900);
  ASSERT_TRUE(http.wait_terminal({id}, 30000ms)) << dump(http, id, a, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "saved\n"), 1u) << out.text;
  for (int i = 0; i <= last_step; ++i)
    EXPECT_EQ(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << out.text;
  b.stop();
}

/// The ref numbers of the manifests of `id` in a file:// store at `dir`.
std::vector<int> manifests(const fs::path& dir, const std::string& id) {
  std::vector<int> out;
  auto d = dir / "tasks" / id / "checkpoints";
  std::error_code ec;
  for (auto& f : fs::directory_iterator(d, ec))
    if (f.path().extension() == ".json")
      out.push_back(std::stoi(f.path().stem().string()));
  std::sort(out.begin(), out.end());
  return out;
}

/// Damages every blob of manifest `n` of `id` that no earlier manifest
/// lists (so the chain up to n-1 stays intact); returns how many. A
/// damaged blob keeps no size of its own (a HEAD would not take it for the
/// original).
int damage_own_blobs(const fs::path& dir, const std::string& id, int n) {
  std::set<std::string> older;
  auto blobs_of = [&](int k) {
    auto m = json::parse(slurp(dir / "tasks" / id / "checkpoints"
                               / (std::to_string(k) + ".json")),
                         nullptr, false);
    std::vector<std::string> out;
    if (m.is_object())
      for (auto& b : m.value("blobs", json::array()))
        out.push_back(b.value("sha256", ""));
    return out;
  };
  for (auto k : manifests(dir, id))
    if (k < n)
      for (auto& s : blobs_of(k))
        older.insert(s);
  int damaged = 0;
  for (auto& s : blobs_of(n)) {
    if (older.count(s) != 0)
      continue;
    auto p = dir / "cas" / s;
    if (!fs::exists(p))
      continue;
    std::ofstream{p, std::ios::binary | std::ios::trunc}
        << "tampered by migration_faults";
    ++damaged;
  }
  return damaged;
}

/// Runs `makima checkpoint verify REF` on a file:// store; its exit code.
int verify(const env& e, const shared_store& store, const std::string& ref,
           const std::map<std::string, std::string>& vars = {}) {
  std::vector<std::string> argv{MAKIMA_BINARY, "checkpoint", "verify", ref};
  for (auto& f : store.flags())
    argv.push_back(f);
  auto o = e.opts(60000ms);
  for (auto& [k, v] : vars)
    o.env[k] = v;
  return test::run(argv, o).exit_code;
}

TEST(migration_faults, a_tampered_checkpoint_falls_back_to_the_previous_one) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA",
                           daemon_flags("k8s", &store)));
  const std::string id = "mig-tamper";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 3")) << dump(http, id, a, b);
  ASSERT_TRUE(eventually(
      [&] { return ref_number(id, http.task(id).value("checkpoint", "")) > 0; },
      10000ms))
      << dump(http, id, a, b);
  // A is evicted while no other daemon is up: the task waits in the queue
  // with A's final checkpoint.
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  ASSERT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "queued") << rec.dump();
  auto final_ref = rec.value("checkpoint", "");
  int n = ref_number(id, final_ref);
  ASSERT_GE(n, 2) << rec.dump();
  ASSERT_EQ(manifests(store.dir, id).back(), n);
  // Damage what only the final checkpoint has.
  ASSERT_GE(damage_own_blobs(store.dir, id, n), 1) << slurp(
      store.dir / "tasks" / id / "checkpoints" / (std::to_string(n) + ".json"));
  EXPECT_EQ(verify(e, store, final_ref), 1);
  auto previous = id + "/" + std::to_string(n - 1);
  EXPECT_EQ(verify(e, store, previous), 0);
  // B refuses it (restore_failed) and the server falls back.
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store)));
  ASSERT_TRUE(http.wait_terminal({id}, 40000ms)) << dump(http, id, a, b);
  rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 3) << rec.dump();
  auto from = rec.value("resume_from", "");
  EXPECT_GE(ref_number(id, from), 1) << rec.dump();
  EXPECT_LT(ref_number(id, from), n) << rec.dump();
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "migrating"), (std::set<int>{1})) << h.dump(1);
  EXPECT_EQ(attempts_in(h, "restore_failed"), (std::set<int>{2})) << h.dump(1);
  EXPECT_TRUE(says(h, "", "re-queued from checkpoint " + final_ref))
      << h.dump(1);
  EXPECT_TRUE(says(h, "", "re-queued from checkpoint " + from)) << h.dump(1);
  // Attempt 2 never ran the task; attempt 3 did, from the older checkpoint.
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 "), 0u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 3 resumed=1 from="), 1u) << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  // What B checkpointed after the fallback does not build on the refused
  // checkpoint: the task's latest checkpoint is sound.
  auto latest = http.task(id).value("checkpoint", "");
  EXPECT_GT(ref_number(id, latest), n) << rec.dump();
  EXPECT_EQ(verify(e, store, latest), 0)
      << latest << " builds on the damaged " << final_ref;
  b.stop();
}

TEST(migration_faults, a_tampered_only_checkpoint_fails_the_task) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  // Signed manifests; no periodic checkpoint before the eviction (every
  // 600 s), so the final one is the only one.
  std::map<std::string, std::string> key{
      {"MAKIMA_CHECKPOINT_KEY", "migration-test-checkpoint-key"}};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv, "a", e.root() / "dA",
                           daemon_flags("k8s", &store, "600"), key));
  const std::string id = "mig-tamper1";
  ASSERT_EQ(http.submit(stepper_spec(id, origin, "0.5")), id);
  ASSERT_TRUE(output_has(http, id, "step 1")) << dump(http, id, a, b);
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  ASSERT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  auto rec = http.task(id);
  auto final_ref = rec.value("checkpoint", "");
  // The final checkpoint is the first one (none every 600 s).
  EXPECT_EQ(final_ref, id + "/1") << rec.dump();
  ASSERT_GE(ref_number(id, final_ref), 1) << rec.dump();
  // Rewrite every manifest: none matches its signature any more.
  auto all = manifests(store.dir, id);
  ASSERT_FALSE(all.empty());
  for (auto k : all) {
    auto path = store.dir / "tasks" / id / "checkpoints"
                / (std::to_string(k) + ".json");
    auto m = json::parse(slurp(path));
    ASSERT_TRUE(m.contains("hmac")) << m.dump();
    m["node"] = "mallory";
    std::ofstream{path, std::ios::trunc} << m.dump();
  }
  EXPECT_NE(verify(e, store, final_ref, key), 0);
  ASSERT_TRUE(start_daemon(b, e, srv, "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store, "600"), key));
  ASSERT_TRUE(http.wait_terminal({id}, 30000ms)) << dump(http, id, a, b);
  rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "failed") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("error_code", ""), "checkpoint_bad_signature")
      << rec.dump();
  EXPECT_FALSE(rec.value("error", "").empty()) << rec.dump();
  EXPECT_EQ(rec.value("error", "").find("migration-test-checkpoint-key"),
            std::string::npos);
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "restore_failed").count(2), 1u) << h.dump(1);
  EXPECT_FALSE(says(h, "", "from scratch")) << h.dump(1);
  // Only attempt 1 ever ran the task.
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "attempt "), 1u) << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 0u) << out.text;
  b.stop();
}

} // namespace
} // namespace makima::it
