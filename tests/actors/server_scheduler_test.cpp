// The SERVER's scheduling decisions (actors/server_scheduler.hpp) on plain
// tables: selectors, the choice of daemon, the dispatch plan and the retry
// backoff. No actor, no store, no sockets.
#include "actors/server_scheduler.hpp"

#include <gtest/gtest.h>

namespace makima::server_detail {
namespace {

using daemons_t = std::map<std::string, daemon_entry>;
using tasks_t = std::map<std::string, task_entry>;

daemon_entry daemon(const std::string& id, uint32_t capacity,
                    size_t running = 0, bool connected = true) {
  daemon_entry d;
  d.id = id;
  d.pool = "local";
  d.capacity = capacity;
  d.connected = connected;
  for (size_t i = 0; i < running; ++i)
    d.tasks.insert(id + "-running-" + std::to_string(i));
  return d;
}

daemons_t table(std::initializer_list<daemon_entry> ds) {
  daemons_t out;
  for (auto& d : ds)
    out.emplace(d.id, d);
  return out;
}

task_entry queued(const std::string& id, std::string repo = {}) {
  task_entry e;
  e.rec.spec.id = id;
  e.rec.spec.repo = std::move(repo);
  e.rec.state = task_state::queued;
  return e;
}

tasks_t tasks_of(std::initializer_list<task_entry> es) {
  tasks_t out;
  for (auto& e : es)
    out.emplace(e.rec.spec.id, e);
  return out;
}

TEST(server_scheduler, selector_matches_pool_and_labels) {
  auto d = daemon("d1", 1);
  d.pool = "gpu";
  d.labels = {{"arch", "arm64"}};
  task_spec spec;
  EXPECT_TRUE(matches(d, spec));
  spec.selector = {{"pool", "gpu"}, {"arch", "arm64"}};
  EXPECT_TRUE(matches(d, spec));
  spec.selector = {{"pool", "cpu"}};
  EXPECT_FALSE(matches(d, spec));
  spec.selector = {{"arch", "amd64"}};
  EXPECT_FALSE(matches(d, spec));
  spec.selector = {{"zone", "a"}};
  EXPECT_FALSE(matches(d, spec));
}

TEST(server_scheduler, has_repo_needs_a_repo_and_its_mirror) {
  auto d = daemon("d1", 1);
  d.cached_repos = {"https://git.example/r.git"};
  EXPECT_TRUE(has_repo(d, "https://git.example/r.git"));
  EXPECT_FALSE(has_repo(d, "https://git.example/other.git"));
  EXPECT_FALSE(has_repo(d, ""));
}

TEST(server_scheduler, picks_least_loaded_daemon) {
  // d1 runs 2 of 4 (0.5), d2 1 of 4 (0.25), d3 1 of 2 (0.5).
  auto ds = table({daemon("d1", 4, 2), daemon("d2", 4, 1), daemon("d3", 2, 1)});
  auto d = pick_daemon(ds, task_spec{});
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->id, "d2");
}

TEST(server_scheduler, ties_go_to_the_first_daemon_in_id_order) {
  auto ds = table({daemon("b", 2, 1), daemon("a", 4, 2)});
  auto d = pick_daemon(ds, task_spec{});
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->id, "a");
}

TEST(server_scheduler, prefers_a_daemon_with_the_repo_cached) {
  auto warm = daemon("d2", 4, 3);
  warm.cached_repos = {"https://git.example/r.git"};
  auto ds = table({daemon("d1", 4, 0), warm});
  task_spec spec;
  spec.repo = "https://git.example/r.git";
  auto d = pick_daemon(ds, spec);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->id, "d2");
  spec.repo = "https://git.example/cold.git";
  d = pick_daemon(ds, spec);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->id, "d1");
}

TEST(server_scheduler, skips_disconnected_full_and_unmatched_daemons) {
  auto other_pool = daemon("d4", 4);
  other_pool.pool = "gpu";
  auto ds = table({daemon("d1", 2, 0, false), daemon("d2", 2, 2),
                   daemon("d3", 1, 1), other_pool});
  task_spec local;
  local.selector = {{"pool", "local"}};
  EXPECT_EQ(pick_daemon(ds, local), nullptr);
  task_spec gpu;
  gpu.selector = {{"pool", "gpu"}};
  auto d = pick_daemon(ds, gpu);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->id, "d4");
}

TEST(server_scheduler, free_slots_counts_connected_daemons_only) {
  auto ds = table(
      {daemon("d1", 4, 1), daemon("d2", 2, 2), daemon("d3", 8, 0, false)});
  EXPECT_EQ(free_slots(ds), 3u);
  EXPECT_EQ(free_slots({}), 0u);
}

TEST(server_scheduler, plan_assigns_in_queue_order_counting_its_own_load) {
  auto ds = table({daemon("d1", 2), daemon("d2", 1)});
  auto ts = tasks_of({queued("t1"), queued("t2"), queued("t3"), queued("t4")});
  std::deque<std::string> queue{"t1", "t2", "t3", "t4"};
  auto plan = dispatch_plan(queue, ts, ds, clock::now());
  // t1 -> d1 (tie, first id), then d2 (0/1 < 1/2), then d1; no slot for t4.
  std::vector<assignment> want{{"t1", "d1"}, {"t2", "d2"}, {"t3", "d1"}};
  EXPECT_EQ(plan.assignments, want);
  EXPECT_EQ(plan.scanned, 3u);
}

TEST(server_scheduler, plan_passes_over_backoff_held_stale_and_unknown) {
  auto ds = table({daemon("d1", 8)});
  auto now = clock::now();
  auto backoff = queued("t-backoff");
  backoff.not_before = now + std::chrono::seconds(5);
  auto done = queued("t-done");
  done.rec.state = task_state::cancelled;
  auto ts =
      tasks_of({queued("t1"), backoff, done, queued("t-held"), queued("t2")});
  std::deque<std::string> queue{"t1",     "t-backoff", "t-done", "t-gone",
                                "t-held", "t2",        "t1"};
  auto plan = dispatch_plan(queue, ts, ds, now, {"t-held"});
  std::vector<assignment> want{{"t1", "d1"}, {"t2", "d1"}};
  EXPECT_EQ(plan.assignments, want);
  EXPECT_EQ(plan.scanned, queue.size());
}

TEST(server_scheduler, plan_leaves_tasks_no_daemon_can_run) {
  auto ds = table({daemon("d1", 1)});
  auto gpu = queued("t-gpu");
  gpu.rec.spec.selector = {{"pool", "gpu"}};
  auto ts = tasks_of({gpu, queued("t1"), queued("t2")});
  std::deque<std::string> queue{"t-gpu", "t1", "t2"};
  auto plan = dispatch_plan(queue, ts, ds, clock::now());
  std::vector<assignment> want{{"t1", "d1"}};
  EXPECT_EQ(plan.assignments, want);
  EXPECT_EQ(plan.scanned, 2u); // stops once the one slot is planned
}

TEST(server_scheduler, plan_without_free_slots_is_empty) {
  auto ds = table({daemon("d1", 1, 1), daemon("d2", 4, 0, false)});
  auto ts = tasks_of({queued("t1")});
  auto plan = dispatch_plan({"t1"}, ts, ds, clock::now());
  EXPECT_TRUE(plan.assignments.empty());
  EXPECT_EQ(plan.scanned, 0u);
}

TEST(server_scheduler, retry_delay_doubles_up_to_its_cap) {
  server_settings s;
  s.retry_backoff = 1;
  s.retry_backoff_max = 5;
  using ms = std::chrono::milliseconds;
  EXPECT_EQ(retry_delay(s, 1), ms{1000});
  EXPECT_EQ(retry_delay(s, 2), ms{2000});
  EXPECT_EQ(retry_delay(s, 3), ms{4000});
  EXPECT_EQ(retry_delay(s, 4), ms{5000});
  EXPECT_EQ(retry_delay(s, 1000), ms{5000});
  s.retry_backoff = 0;
  EXPECT_EQ(retry_delay(s, 3), ms{0});
  s.retry_backoff = -1;
  EXPECT_EQ(retry_delay(s, 3), ms{0});
}

TEST(server_scheduler, remaining_backoff_counts_from_the_requeue) {
  server_settings s;
  s.retry_backoff = 2;
  s.retry_backoff_max = 60;
  using ms = std::chrono::milliseconds;
  const int64_t t = 1'700'000'000'000;
  // Attempt 3 was taken away: 8 s of backoff.
  EXPECT_EQ(remaining_backoff(s, 3, t, t), ms{8000});
  EXPECT_EQ(remaining_backoff(s, 3, t, t + 5000), ms{3000});
  EXPECT_EQ(remaining_backoff(s, 3, t, t + 8000), ms{0});
  EXPECT_EQ(remaining_backoff(s, 3, t, t + 999'999), ms{0});
  // A clock that went back waits at most one delay.
  EXPECT_EQ(remaining_backoff(s, 3, t, t - 50'000), ms{8000});
  // Never ran: no backoff.
  EXPECT_EQ(remaining_backoff(s, 0, t, t), ms{0});
}

TEST(server_scheduler, attempt_budget_of_the_task_wins) {
  server_settings s;
  s.max_attempts = 5;
  task_spec spec;
  EXPECT_EQ(attempt_budget(s, spec), 5u);
  spec.max_attempts = 2;
  EXPECT_EQ(attempt_budget(s, spec), 2u);
}

TEST(server_scheduler, a_resumed_task_goes_only_to_a_daemon_that_can_restore) {
  // d1: no store (its hello said so); d2: a store, busier; d3: did not say
  // (v1, or older v2), treated as before the field.
  auto none = daemon("d1", 4);
  none.checkpoints = false;
  auto store = daemon("d2", 4, 3);
  store.checkpoints = true;
  auto ds = table({none, store});
  EXPECT_FALSE(can_resume(none));
  EXPECT_TRUE(can_resume(store));
  EXPECT_TRUE(can_resume(daemon("d3", 1)));
  // From scratch: the least loaded, store or not.
  auto d = pick_daemon(ds, task_spec{});
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->id, "d1");
  // Resumed: the one with the store, although busier.
  d = pick_daemon(ds, task_spec{}, true);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->id, "d2");
  // A daemon that did not say is eligible.
  auto ds3 = table({none, daemon("d3", 1)});
  d = pick_daemon(ds3, task_spec{}, true);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->id, "d3");
  // Only the storeless one: none.
  EXPECT_EQ(pick_daemon(table({none}), task_spec{}, true), nullptr);
}

TEST(server_scheduler, plan_keeps_a_resumed_task_queued_when_only_storeless_daemons_are_free) {
  auto none = daemon("d1", 2);
  none.checkpoints = false;
  auto full = daemon("d2", 1, 1); // has a store, but no free slot
  full.checkpoints = true;
  auto ds = table({none, full});
  auto resumed = queued("t-resumed");
  resumed.checkpoints = {"t-resumed/3"};
  auto ts = tasks_of({resumed, queued("t1")});
  std::deque<std::string> queue{"t-resumed", "t1"};
  auto plan = dispatch_plan(queue, ts, ds, clock::now());
  // The fresh task behind it takes the storeless daemon's slot.
  std::vector<assignment> want{{"t1", "d1"}};
  EXPECT_EQ(plan.assignments, want);
  EXPECT_EQ(plan.need_store, std::vector<std::string>{"t-resumed"});
  // Once the storeful daemon has a slot, the resumed task goes there.
  ds["d2"].tasks.clear();
  plan = dispatch_plan(queue, ts, ds, clock::now());
  want = {{"t-resumed", "d2"}, {"t1", "d1"}};
  EXPECT_EQ(plan.assignments, want);
  EXPECT_TRUE(plan.need_store.empty());
  // No daemon matches its selector at all: it waits, but not for a store.
  ts["t-resumed"].rec.spec.selector = {{"pool", "gpu"}};
  plan = dispatch_plan(queue, ts, table({none}), clock::now());
  EXPECT_TRUE(plan.need_store.empty());
}

} // namespace
} // namespace makima::server_detail
