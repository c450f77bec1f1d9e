// Migration under faults (issue 11, docs/protocol.md §14), beyond
// migration_test.cpp: the store failing during the eviction checkpoint,
// the evicted daemon coming back (fenced), the server restarted while a
// migration is in flight, on-demand checkpoint and migrate from the CLI
// (with their metrics), and a task to resume while only daemons without a
// store are free (it waits for one with a store). Real `makima server` / `makima daemon` processes on 127.0.0.1;
// the readers of the server's view are shared (migration.hpp); the task
// and the store are those of migration_test.cpp with the step count, the
// S3 endpoint and the eviction deadline made parameters.
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

/// `makima task restore REF --data-dir DIR` from `store`; then the counter
/// of the stepper in that checkpoint (-1 when it cannot be read).
int counter_in(const env& e, const shared_store& store, const std::string& id,
               const std::string& ref, const fs::path& dir) {
  auto o = e.opts(60000ms);
  for (auto& [k, v] : store.vars())
    o.env[k] = v;
  std::vector<std::string> argv{MAKIMA_BINARY, "task",       "restore",
                                ref,           "--data-dir", dir.string()};
  for (auto& f : store.flags())
    argv.push_back(f);
  auto r = test::run(argv, o);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto c = slurp(dir / "state" / id / "n");
  if (c.empty())
    return -1;
  try {
    return std::stoi(c);
  } catch (const std::exception&) {
    return -1;
  }
}

/// `makima task ARGS... --server URL --api-key KEY`.
run_result cli(const env& e, const server_proc& srv,
               std::vector<std::string> args,
               std::chrono::milliseconds timeout = 60000ms) {
  std::vector<std::string> argv{MAKIMA_BINARY, "task"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.insert(argv.end(), {"--server", srv.http(), "--api-key", user_key});
  return test::run(argv, e.opts(timeout));
}

/// The record of task `id` in a daemon's own data dir (`task show --json`
/// while it is stopped); an empty object when unreadable.
json local_record(const env& e, const fs::path& data, const std::string& id) {
  auto r = test::run({MAKIMA_BINARY, "task", "show", id, "--data-dir",
                      data.string(), "--json"},
                     e.opts());
  auto j = json::parse(r.out, nullptr, false);
  return j.is_object() ? j : json::object();
}


TEST(
    migration_more,
    store_failing_during_the_eviction_checkpoint_falls_back_to_the_previous_one) {
  REQUIRE_S3();
  env e;
  auto store = shared_store::on_s3(e);
  test::fault_proxy proxy{store.s3->port()};
  store.endpoint = proxy.endpoint();
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b;
  // A deadline of 20 s: each failing request is tried 5 times with backoff.
  ASSERT_TRUE(start_daemon(a, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store, "1", "20"),
                           store.vars()));
  const std::string id = "mig-s3fail";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  // Two periodic checkpoints: the fallback is the latest, not the first.
  ASSERT_GE(ref_number(id, known_checkpoint(http, id, 2)), 2)
      << dump(http, id, a, b);
  // The store breaks: every request gets a 500. A periodic checkpoint in
  // flight fails or lands; after a moment the server's latest is final.
  proxy.always(test::fault_proxy::fault::http_500);
  std::this_thread::sleep_for(1500ms);
  auto previous = http.task(id).value("checkpoint", "");
  int n = ref_number(id, previous);
  ASSERT_GE(n, 2);
  auto t0 = clock_type::now();
  int injected_before = proxy.injected();
  a.kill(SIGTERM);
  auto r = a.bg->wait(30000ms);
  auto took = clock_type::now() - t0;
  // The acks came: exit 0, within the deadline.
  EXPECT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  EXPECT_LT(took, 20s);
  EXPECT_GT(proxy.injected(), injected_before) << "the final checkpoint "
                                                  "never reached the store";
  EXPECT_NE(a.output().find("the final checkpoint failed"), std::string::npos)
      << a.output();
  // A's attempt ended migrating, saying the final checkpoint failed.
  auto local = local_record(e, e.root() / "dA", id);
  EXPECT_EQ(local.value("state", ""), "migrating") << local.dump(1);
  EXPECT_NE(local.value("error", "").find("final checkpoint"),
            std::string::npos)
      << local.dump(1);
  // The server still knows the periodic one as the latest and re-queued
  // the task from it.
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "queued") << rec.dump(1);
  EXPECT_EQ(rec.value("checkpoint", ""), previous) << rec.dump(1);
  EXPECT_NE(rec.value("error", "").find("final checkpoint"), std::string::npos)
      << rec.dump(1);
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "migrating"), (std::set<int>{1})) << h.dump(1);
  EXPECT_TRUE(says(h, "", "re-queued from checkpoint " + previous))
      << h.dump(1);
  // The history keeps why it is not A's final checkpoint (the record's
  // error goes with the next attempt), naming no credential.
  EXPECT_TRUE(says(h, "migrating", "the final checkpoint at eviction failed"))
      << h.dump(1);
  EXPECT_TRUE(says(h, "queued",
                   "the final checkpoint at eviction failed: object store "))
      << h.dump(1);
  EXPECT_EQ(h.dump().find(test::s3_server::secret_key), std::string::npos);
  // The store heals; B resumes from the periodic checkpoint.
  proxy.arm(test::fault_proxy::fault::none, 0);
  ASSERT_TRUE(start_daemon(b, e, srv.ws(), "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store), store.vars()));
  ASSERT_TRUE(http.wait_terminal({id}, 40000ms)) << dump(http, id, a, b);
  rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump(1);
  EXPECT_EQ(rec.value("resume_from", ""), previous) << rec.dump(1);
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump(1);
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  // The counter went on from that checkpoint's value.
  int counter = counter_in(e, store, id, previous, e.root() / "laptop");
  ASSERT_GE(counter, 1) << previous;
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "attempt 1 resumed=0 from=0\n"), 1u) << out.text;
  EXPECT_EQ(count(out.text,
                  "attempt 2 resumed=1 from=" + std::to_string(counter) + "\n"),
            1u)
      << "counter " << counter << " at " << previous << ", output:\n"
      << out.text;
  for (int i = 0; i <= 8; ++i)
    EXPECT_GE(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  b.stop();
}

TEST(migration_more, the_evicted_daemon_returning_is_fenced) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b, a2;
  ASSERT_TRUE(start_daemon(a, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store)));
  const std::string id = "mig-return";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  ASSERT_TRUE(start_daemon(b, e, srv.ws(), "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store)));
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  ASSERT_EQ(r.exit_code, 0) << dump(http, id, a, b);
  // The task runs on B as attempt 2.
  ASSERT_TRUE(eventually(
      [&] {
        auto rec = http.task(id);
        return rec.value("attempt", 0) == 2
               && rec.value("state", "") == "running";
      },
      20000ms))
      << dump(http, id, a, b);
  auto during = output_seqs(http, id);
  ASSERT_EQ(count(during.text, "attempt 2 resumed=1 from="), 1u) << during.text;
  // A comes back on the same data dir (the same node: its id, its task
  // record of attempt 1, its worktree) while B still runs the task.
  ASSERT_TRUE(start_daemon(a2, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store)));
  // A2 is known again, takes assignments (it is not draining) and has
  // nothing in its outbox.
  ASSERT_TRUE(eventually(
      [&] {
        auto list = http.get_json("/api/v1/daemons");
        for (auto& d : list["daemons"])
          if (d.value("name", "") == "a" && d.value("connected", false)
              && d.value("outbox_events", 1) == 0)
            return true;
        return false;
      },
      20000ms))
      << http.get_json("/api/v1/daemons").dump(1) << a2.output();
  ASSERT_TRUE(http.wait_terminal({id}, 40000ms)) << dump(http, id, a2, b);
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a2, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump(1);
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump(1);
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "succeeded"), (std::set<int>{2})) << h.dump(1);
  EXPECT_EQ(count(h.dump(), "\"succeeded\""), 1u) << h.dump(1);
  EXPECT_EQ(entries_saying(h, "re-queued"), 1u) << h.dump(1);
  // No attempt of the task ran on A again: its record still says
  // attempt 1 migrating, its log has no restore or run of the task, the
  // output has one run per attempt.
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "attempt 1 "), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 "), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 3 "), 0u) << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  for (int i = 0; i <= 8; ++i)
    EXPECT_EQ(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << out.text;
  auto log = a2.output();
  EXPECT_EQ(log.find("task " + id + "#"), std::string::npos) << log;
  EXPECT_EQ(log.find("restored"), std::string::npos) << log;
  a2.stop();
  b.stop();
  auto local = local_record(e, e.root() / "dA", id);
  EXPECT_EQ(local.value("state", ""), "migrating") << local.dump(1);
  EXPECT_EQ(local.value("attempt", 0), 1) << local.dump(1);
}

TEST(migration_more,
     an_evicted_daemon_returning_with_unacked_events_is_fenced) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  // A fixed port: a restarted server is where the daemons reconnect.
  auto port = free_port();
  auto args = server_args(e.root() / "server", {"--lease", "3"});
  args[2] = "127.0.0.1:" + std::to_string(port);
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, args));
  api http{srv.http()};
  daemon_proc a, b, a2;
  ASSERT_TRUE(start_daemon(a, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store, "1", "5")));
  const std::string id = "mig-unacked";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  auto known = known_checkpoint(http, id);
  ASSERT_GE(ref_number(id, known), 1);
  // The server goes away; A is evicted meanwhile: its final checkpoint
  // and its result stay in its outbox, and it gives up after 5 s.
  srv.stop(SIGKILL);
  a.kill(SIGTERM);
  auto r = a.bg->wait(15000ms);
  EXPECT_EQ(r.exit_code, 1) << a.output();
  EXPECT_NE(a.output().find("evicted: final checkpoint"), std::string::npos)
      << a.output();
  reap(id);
  // The server comes back; A's lease runs out and the task resumes on B
  // from the last checkpoint the server knows.
  server_proc again;
  ASSERT_TRUE(again.launch(e, args));
  api http2{again.http()};
  known = http2.task(id).value("checkpoint", "");
  ASSERT_GE(ref_number(id, known), 1) << http2.task(id).dump(1);
  ASSERT_TRUE(start_daemon(b, e, again.ws(), "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store)));
  ASSERT_TRUE(eventually(
      [&] {
        auto rec = http2.task(id);
        return rec.value("attempt", 0) == 2
               && rec.value("state", "") == "running";
      },
      20000ms))
      << dump(http2, id, a, b);
  EXPECT_EQ(http2.task(id).value("resume_from", ""), known);
  // A comes back with attempt 1's events: the server fences them.
  ASSERT_TRUE(start_daemon(a2, e, again.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store, "1", "5")));
  EXPECT_TRUE(a2.wait_for("fenced", 10000ms)) << a2.output();
  ASSERT_TRUE(http2.wait_terminal({id}, 40000ms)) << dump(http2, id, a2, b);
  auto rec = http2.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http2, id, a2, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump(1);
  EXPECT_EQ(rec.value("resume_from", ""), known) << rec.dump(1);
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump(1);
  auto h = history(http2, id);
  EXPECT_TRUE(says(h, "queued", "lease of daemon d-")) << h.dump(1);
  EXPECT_TRUE(attempts_in(h, "migrating").empty()) << h.dump(1);
  EXPECT_EQ(attempts_in(h, "succeeded"), (std::set<int>{2})) << h.dump(1);
  // Nothing of attempt 1 that the server had not acked got in: no
  // "saved" (A's task wrote it after the server was gone), one run per
  // attempt, seqs contiguous.
  auto out = output_seqs(http2, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "saved\n"), 0u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 1 "), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from="), 1u) << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  for (int i = 0; i <= 8; ++i)
    EXPECT_GE(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << out.text;
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http2, id, a2, b);
  a2.stop();
  b.stop();
}

/// Polls the history of `id` every 10 ms until attempt `attempt` ended
/// `migrating` at the server; whether it did within `timeout`.
bool migrating_stored(const api& http, const std::string& id, int attempt,
                      std::chrono::milliseconds timeout = 20000ms) {
  auto until = clock_type::now() + timeout;
  while (clock_type::now() < until) {
    if (attempts_in(history(http, id), "migrating").count(attempt) > 0)
      return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

/// The checks of a task that migrated once (attempt 1 evicted after
/// "saved", attempt 2 resumed from `from` on B) and succeeded.
void expect_one_migration(const api& http, const std::string& id,
                          const std::string& from, const env& e, const proc& a,
                          const proc& b) {
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 2) << dump(http, id, a, b);
  EXPECT_EQ(rec.value("resume_from", ""), from) << rec.dump(1);
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump(1);
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, a, b);
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "migrating"), (std::set<int>{1})) << h.dump(1);
  EXPECT_EQ(entries_saying(h, "re-queued"), 1u) << h.dump(1);
  EXPECT_TRUE(says(h, "queued", "re-queued from checkpoint " + from))
      << h.dump(1);
  EXPECT_EQ(attempts_in(h, "succeeded"), (std::set<int>{2})) << h.dump(1);
  // Contiguous: every step once (the final checkpoint came after
  // "saved"), nothing lost or doubled by the restart.
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "saved\n"), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 1 resumed=0 from=0\n"), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from="), 1u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from=0\n"), 0u) << out.text;
  for (int i = 0; i <= 8; ++i)
    EXPECT_EQ(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << "step " << i << " in:\n"
        << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
}

TEST(migration_more, server_restarted_while_a_migration_is_in_flight) {
  REQUIRE_S3();
  env e;
  auto store = shared_store::on_s3(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  // A fixed port: the daemons reconnect to the restarted server by
  // themselves.
  auto port = free_port();
  auto args = server_args(e.root() / "server", {"--lease", "5"});
  args[2] = "127.0.0.1:" + std::to_string(port);
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, args));
  api http{srv.http()};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store), store.vars()));
  const std::string id = "mig-srvrestart";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  ASSERT_GE(ref_number(id, known_checkpoint(http, id)), 1);
  ASSERT_TRUE(start_daemon(b, e, srv.ws(), "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store), store.vars()));
  // A is evicted; the moment its result is stored (and the task re-queued
  // and assigned to B), the server dies.
  a.kill(SIGTERM);
  ASSERT_TRUE(migrating_stored(http, id, 1)) << dump(http, id, a, b);
  srv.stop(SIGKILL);
  server_proc again;
  ASSERT_TRUE(again.launch(e, args));
  api http2{again.http()};
  // What the restarted server read back: the final checkpoint, and the
  // task is not lost in `migrating`.
  auto rec = http2.task(id);
  auto final_ref = rec.value("checkpoint", "");
  EXPECT_GE(ref_number(id, final_ref), 2) << rec.dump(1);
  EXPECT_NE(rec.value("state", ""), "migrating") << rec.dump(1);
  // A gets its last acks from the new server (or gives up at its
  // deadline) and exits.
  auto r = a.bg->wait(15000ms);
  EXPECT_EQ(r.signal, 0) << a.output();
  EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 1) << a.output();
  ASSERT_TRUE(http2.wait_terminal({id}, 40000ms)) << dump(http2, id, a, b);
  expect_one_migration(http2, id, final_ref, e, a, b);
  b.stop();
}

TEST(migration_more, server_restarted_while_an_evicted_task_waits) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  auto port = free_port();
  auto args = server_args(e.root() / "server");
  args[2] = "127.0.0.1:" + std::to_string(port);
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, args));
  api http{srv.http()};
  daemon_proc a, b;
  ASSERT_TRUE(start_daemon(a, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store)));
  const std::string id = "mig-srvwait";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  ASSERT_GE(ref_number(id, known_checkpoint(http, id)), 1);
  // No other daemon: the evicted task waits in the queue when the server
  // dies.
  a.kill(SIGTERM);
  ASSERT_TRUE(migrating_stored(http, id, 1)) << dump(http, id, a, b);
  auto final_ref = http.task(id).value("checkpoint", "");
  srv.stop(SIGKILL);
  auto r = a.bg->wait(15000ms);
  EXPECT_EQ(r.signal, 0) << a.output();
  server_proc again;
  ASSERT_TRUE(again.launch(e, args));
  api http2{again.http()};
  auto rec = http2.task(id);
  EXPECT_EQ(rec.value("state", ""), "queued") << rec.dump(1);
  EXPECT_EQ(rec.value("checkpoint", ""), final_ref) << rec.dump(1);
  ASSERT_TRUE(start_daemon(b, e, again.ws(), "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store)));
  ASSERT_TRUE(http2.wait_terminal({id}, 40000ms)) << dump(http2, id, a, b);
  expect_one_migration(http2, id, final_ref, e, a, b);
  b.stop();
}

TEST(migration_more, on_demand_migrate_and_checkpoint) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b;
  // Periodic checkpoints rarely (60 s): the ones that matter are asked for.
  ASSERT_TRUE(start_daemon(a, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store, "60")));
  ASSERT_TRUE(start_daemon(b, e, srv.ws(), "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store, "60")));
  const std::string id = "mig-demand";
  constexpr int last = 30;
  auto spec = stepper_spec(id, origin, "0.5", last);
  spec["selector"] = {{"pool", "k8s"}};
  ASSERT_EQ(http.submit(spec), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, b);
  EXPECT_NE(http.task(id).value("worktree", "").find("dA"), std::string::npos);
  // A checkpoint now: the CLI prints its ref once it is uploaded and known.
  auto c = cli(e, srv, {"checkpoint", id});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  int n = ref_number(id, c.out.substr(0, c.out.find('\n')));
  EXPECT_GE(n, 1) << c.out;
  EXPECT_EQ(c.out, id + "/" + std::to_string(n) + "\n");
  EXPECT_EQ(http.task(id).value("checkpoint", ""),
            id + "/" + std::to_string(n));
  EXPECT_TRUE(says(history(http, id), "running",
                   "checkpoint " + id + "/" + std::to_string(n)));
  // k8s → cloudflare: --wait returns once attempt 2 runs on B.
  auto m =
      cli(e, srv, {"migrate", id, "--selector", "pool=cloudflare", "--wait"});
  ASSERT_EQ(m.exit_code, 0) << m.err << dump(http, id, a, b);
  EXPECT_NE(m.err.find("runs again (attempt 2, from checkpoint " + id + "/"),
            std::string::npos)
      << m.err;
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump(1);
  EXPECT_EQ(rec.value("state", ""), "running") << rec.dump(1);
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump(1);
  auto to_b = rec.value("resume_from", "");
  EXPECT_GT(ref_number(id, to_b), n) << rec.dump(1);
  ASSERT_TRUE(output_has(http, id, "attempt 2 resumed=1"))
      << dump(http, id, a, b);
  // Let B do a step of its own, then back: cloudflare → k8s.
  auto steps_now = count(http.output(id).all, "step ");
  ASSERT_TRUE(eventually(
      [&] { return count(http.output(id).all, "step ") > steps_now; },
      10000ms));
  m = cli(e, srv, {"migrate", id, "--selector", "pool=k8s", "--wait"});
  ASSERT_EQ(m.exit_code, 0) << m.err << dump(http, id, a, b);
  rec = http.task(id);
  EXPECT_EQ(rec.value("attempt", 0), 3) << rec.dump(1);
  EXPECT_NE(rec.value("worktree", "").find("dA"), std::string::npos)
      << rec.dump(1);
  EXPECT_GT(ref_number(id, rec.value("resume_from", "")), ref_number(id, to_b))
      << rec.dump(1);
  EXPECT_EQ(http.metric("makima_migrations_total{cause=\"on_demand\",from_pool="
                        "\"k8s\",to_pool=\"cloudflare\"}"),
            1);
  EXPECT_EQ(http.metric("makima_migrations_total{cause=\"on_demand\",from_pool="
                        "\"cloudflare\",to_pool=\"k8s\"}"),
            1);
  // To B, which had never mirrored the repository: a cold restore; back to
  // A, whose mirror is there: a warm one. Each reported once.
  EXPECT_EQ(http.metric("makima_restore_seconds_count{node_state=\"cold\"}"),
            1);
  EXPECT_EQ(http.metric("makima_restore_seconds_count{node_state=\"warm\"}"),
            1);
  EXPECT_GT(http.metric("makima_restore_bytes_total"), 0);
  ASSERT_TRUE(http.wait_terminal({id}, 40000ms)) << dump(http, id, a, b);
  rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, a, b);
  EXPECT_EQ(rec.value("attempt", 0), 3) << rec.dump(1);
  auto h = history(http, id);
  EXPECT_EQ(attempts_in(h, "migrating"), (std::set<int>{1, 2})) << h.dump(1);
  EXPECT_EQ(entries_saying(h, "on demand"), 4u) << h.dump(1);
  // Each step once, the work in A's worktree again (restored from B's).
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "saved\n"), 2u) << out.text;
  EXPECT_EQ(count(out.text, "attempt 3 resumed=1 from="), 1u) << out.text;
  for (int i = 0; i <= last; ++i)
    EXPECT_EQ(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << "step " << i << " in:\n"
        << out.text;
  EXPECT_EQ(count(out.text, "finished\n"), 1u) << out.text;
  EXPECT_EQ(missing_steps(e.root() / "dA/worktrees" / id, last), "")
      << dump(http, id, a, b);
  // A finished task has nothing to checkpoint or move: usage errors.
  c = cli(e, srv, {"checkpoint", id});
  EXPECT_EQ(c.exit_code, 2) << c.out << c.err;
  EXPECT_EQ(c.out, "");
  EXPECT_NE(c.err.find("makima: "), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("succeeded"), std::string::npos) << c.err;
  m = cli(e, srv, {"migrate", id, "--selector", "pool=cloudflare"});
  EXPECT_EQ(m.exit_code, 2) << m.err;
  EXPECT_NE(m.err.find("already succeeded"), std::string::npos) << m.err;
  a.stop();
  b.stop();
}

TEST(migration_more, a_resumed_task_waits_for_a_daemon_with_a_store) {
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, b, c;
  ASSERT_TRUE(start_daemon(a, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store)));
  const std::string id = "mig-nostore";
  ASSERT_EQ(http.submit(stepper_spec(id, origin)), id);
  ASSERT_TRUE(output_has(http, id, "step 2")) << dump(http, id, a, c);
  a.kill(SIGTERM);
  ASSERT_EQ(a.bg->wait(15000ms).exit_code, 0) << a.output();
  auto final_ref = http.task(id).value("checkpoint", "");
  ASSERT_GE(ref_number(id, final_ref), 1) << http.task(id).dump(1);
  // C has no store (its hello says `checkpoints: false`): it could not
  // restore the checkpoint, so the server does not assign it there; the
  // task stays queued, its history says what it waits for.
  ASSERT_TRUE(start_daemon(c, e, srv.ws(), "c", e.root() / "dC",
                           daemon_flags("k8s", nullptr)));
  ASSERT_TRUE(eventually(
      [&] {
        return says(history(http, id), "queued",
                    "waiting for a daemon with a checkpoint store to resume "
                    "from "
                        + final_ref);
      },
      20000ms))
      << dump(http, id, a, c);
  auto daemons = http.get_json("/api/v1/daemons");
  bool c_said = false;
  for (auto& d : daemons.value("daemons", json::array()))
    if (d.value("name", "") == "c" && d.value("connected", false))
      c_said = d.contains("checkpoints") && d["checkpoints"] == false;
  EXPECT_TRUE(c_said) << daemons.dump(1);
  // C still takes tasks that start from scratch: one submitted now, behind
  // the waiting one in the queue, runs there (a dispatch that passed over
  // the waiting task again).
  auto plain = json{{"id", "plain"}, {"argv", {"sh", "-c", "echo plain"}}};
  ASSERT_EQ(http.submit(plain), "plain");
  ASSERT_TRUE(http.wait_terminal({"plain"}, 20000ms)) << c.output();
  EXPECT_EQ(http.state("plain"), "succeeded");
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "queued") << rec.dump(1);
  EXPECT_EQ(rec.value("attempt", 0), 1) << rec.dump(1);
  auto h = history(http, id);
  EXPECT_TRUE(attempts_in(h, "interrupted").empty()) << h.dump(1);
  // Said once for the wait, not at every dispatch.
  EXPECT_EQ(entries_saying(h, "waiting for a daemon with a checkpoint store"),
            1u)
      << h.dump(1);
  EXPECT_EQ(count(http.output(id).all, "attempt 2 "), 0u)
      << http.output(id).all;
  // B has the store: it resumes the task from that checkpoint, as attempt 2
  // (no attempt was spent on C).
  ASSERT_TRUE(start_daemon(b, e, srv.ws(), "b", e.root() / "dB",
                           daemon_flags("cloudflare", &store)));
  ASSERT_TRUE(http.wait_terminal({id}, 40000ms)) << dump(http, id, b, c);
  rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "succeeded") << dump(http, id, b, c);
  EXPECT_EQ(rec.value("attempt", 0), 2) << rec.dump(1);
  EXPECT_EQ(rec.value("resume_from", ""), final_ref) << rec.dump(1);
  EXPECT_NE(rec.value("worktree", "").find("dB"), std::string::npos)
      << rec.dump(1);
  auto out = output_seqs(http, id);
  EXPECT_EQ(contiguity(out.seqs), "") << out.text;
  EXPECT_EQ(count(out.text, "attempt 2 resumed=1 from="), 1u) << out.text;
  for (int i = 0; i <= 8; ++i)
    EXPECT_EQ(count(out.text, "step " + std::to_string(i) + "\n"), 1u)
        << out.text;
  EXPECT_EQ(missing_steps(e.root() / "dB/worktrees" / id), "")
      << dump(http, id, b, c);
  b.stop();
  c.stop();
}

TEST(migration_more,
     a_resumed_task_only_storeless_daemons_match_keeps_its_attempts) {
  // Before hello said `checkpoints`, each storeless daemon cost the task an
  // attempt ("no checkpoint store") until its budget was spent. Now it
  // waits, with its budget whole, for a daemon that can restore it.
  env e;
  auto store = shared_store::on_disk(e);
  auto origin = test::make_repo(e.root() / "origin", {10, 1});
  server_proc srv;
  ASSERT_TRUE(srv.launch(e, server_args(e.root() / "server")));
  api http{srv.http()};
  daemon_proc a, c, c2;
  ASSERT_TRUE(start_daemon(a, e, srv.ws(), "a", e.root() / "dA",
                           daemon_flags("k8s", &store)));
  const std::string id = "mig-nostore2";
  auto spec = stepper_spec(id, origin, "0.5");
  spec["max_attempts"] = 2; // the eviction counts for nothing
  ASSERT_EQ(http.submit(spec), id);
  ASSERT_TRUE(output_has(http, id, "step 1")) << dump(http, id, a, c);
  a.kill(SIGTERM);
  ASSERT_EQ(a.bg->wait(15000ms).exit_code, 0) << a.output();
  // Two storeless daemons, one after the other: neither gets it.
  ASSERT_TRUE(start_daemon(c, e, srv.ws(), "c", e.root() / "dC",
                           daemon_flags("k8s", nullptr)));
  auto waiting = [&] {
    return entries_saying(history(http, id),
                          "waiting for a daemon with a checkpoint store");
  };
  ASSERT_TRUE(eventually([&] { return waiting() == 1; }, 20000ms))
      << dump(http, id, a, c);
  c.stop();
  ASSERT_TRUE(start_daemon(c2, e, srv.ws(), "c2", e.root() / "dC2",
                           daemon_flags("k8s", nullptr)));
  auto plain = json{{"id", "plain"}, {"argv", {"sh", "-c", "echo plain"}}};
  ASSERT_EQ(http.submit(plain), "plain");
  ASSERT_TRUE(http.wait_terminal({"plain"}, 20000ms)) << c2.output();
  auto rec = http.task(id);
  EXPECT_EQ(rec.value("state", ""), "queued") << rec.dump(1);
  EXPECT_EQ(rec.value("attempt", 0), 1) << rec.dump(1);
  EXPECT_EQ(rec.dump().find("attempts_exhausted"), std::string::npos)
      << rec.dump(1);
  auto h = history(http, id);
  EXPECT_TRUE(attempts_in(h, "interrupted").empty()) << h.dump(1);
  EXPECT_FALSE(says(h, "", "no checkpoint store (--store)")) << h.dump(1);
  EXPECT_EQ(waiting(), 1u) << h.dump(1); // one wait, said once
  EXPECT_EQ(count(http.output(id).all, "attempt 2 "), 0u);
  c2.stop();
}

} // namespace
} // namespace makima::it
