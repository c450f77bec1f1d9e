// What the SERVER stores for the events of protocol version 2
// (actors/server_store.hpp, docs/protocol.md §14): a checkpoint event
// becomes the record's checkpoint and joins the task's known checkpoints
// (bounded), the daemon's record never overwrites what the server owns,
// and a restore_failed result drops the refused checkpoint and every newer
// one. No actor, no store: the batch is inspected through its outcome.
#include "actors/server_store.hpp"

#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/fixtures/temp_dir.hpp"

namespace makima::server_detail {
namespace {

task_entry running_entry() {
  task_entry e;
  e.rec.spec.id = "t1";
  e.rec.spec.argv = {"true"};
  e.rec.attempt = 2;
  e.rec.state = task_state::running;
  e.rec.resume_from = "t1/2";
  e.daemon = "d1";
  e.acked = 3;
  e.events = 5;
  return e;
}

proto::event checkpoint_event(const std::string& ref, uint64_t seq) {
  proto::event ev;
  ev.task = "t1";
  ev.attempt = 2;
  ev.seq = seq;
  ev.kind = proto::event_kind::checkpoint;
  ev.at = 1000;
  ev.checkpoint = {ref, 7, 742, 1, 20};
  return ev;
}

TEST(server_store_v2, a_checkpoint_event_sets_the_record_and_the_known_list) {
  auto e = running_entry();
  e.checkpoints = {"t1/1", "t1/2"};
  auto s = event_batch(e, "d1", checkpoint_event("t1/3", 4), 2000);
  EXPECT_EQ(s.rec.checkpoint, "t1/3");
  EXPECT_EQ(s.rec.state, task_state::running);
  EXPECT_FALSE(s.requeue);
  EXPECT_EQ(s.checkpoints, (std::vector<std::string>{"t1/1", "t1/2", "t1/3"}));
  // A replayed ref is not listed twice.
  e.checkpoints = s.checkpoints;
  auto again = event_batch(e, "d1", checkpoint_event("t1/3", 5), 2000);
  EXPECT_EQ(again.checkpoints.size(), 3u);
}

TEST(server_store_v2, the_known_list_keeps_the_newest_ones) {
  auto e = running_entry();
  for (int n = 1; n <= 20; ++n) {
    auto s = event_batch(e, "d1", checkpoint_event("t1/" + std::to_string(n),
                                                   3 + n),
                         2000);
    e.checkpoints = s.checkpoints;
  }
  ASSERT_EQ(e.checkpoints.size(), max_known_checkpoints);
  EXPECT_EQ(e.checkpoints.front(), "t1/13");
  EXPECT_EQ(e.checkpoints.back(), "t1/20");
}

TEST(server_store_v2, a_daemons_record_does_not_overwrite_the_servers_refs) {
  auto e = running_entry();
  e.rec.checkpoint = "t1/3";
  proto::event ev;
  ev.task = "t1";
  ev.attempt = 2;
  ev.seq = 4;
  ev.kind = proto::event_kind::state;
  ev.record = e.rec;
  ev.record.checkpoint = "t1/99";
  ev.record.resume_from = "t1/98";
  ev.record.state = task_state::publishing;
  auto s = event_batch(e, "d1", ev, 2000);
  EXPECT_EQ(s.rec.state, task_state::publishing);
  EXPECT_EQ(s.rec.checkpoint, "t1/3");
  EXPECT_EQ(s.rec.resume_from, "t1/2");
}

proto::event result_event(task_state st, const std::string& error = {}) {
  proto::event ev;
  ev.task = "t1";
  ev.attempt = 2;
  ev.seq = 4;
  ev.kind = proto::event_kind::result;
  ev.record.spec.id = "t1";
  ev.record.spec.argv = {"true"};
  ev.record.attempt = 2;
  ev.record.state = st;
  ev.record.error = error;
  return ev;
}

TEST(server_store_v2, migrating_and_restore_failed_results_are_requeued) {
  auto e = running_entry();
  e.checkpoints = {"t1/1", "t1/2", "t1/3"};
  auto m = event_batch(e, "d1", result_event(task_state::migrating), 2000);
  EXPECT_TRUE(m.requeue);
  EXPECT_EQ(m.checkpoints, e.checkpoints);
  EXPECT_NE(m.detail.find("evicted"), std::string::npos) << m.detail;
  // The attempt resumed from t1/2, which was refused: t1/2 and the newer
  // t1/3 (built on it) go; t1/1 is what is left.
  auto r = event_batch(
      e, "d1", result_event(task_state::restore_failed, "blob sha mismatch"),
      2000);
  EXPECT_TRUE(r.requeue);
  EXPECT_EQ(r.checkpoints, (std::vector<std::string>{"t1/1"}));
  EXPECT_NE(r.detail.find("t1/2"), std::string::npos) << r.detail;
  EXPECT_NE(r.detail.find("blob sha mismatch"), std::string::npos);
}

TEST(server_store_v2, the_meta_key_keeps_the_known_checkpoints) {
  auto j = nlohmann::json::parse(meta_json(2, 7, "d1", {"t1/1", "t1/2"}));
  EXPECT_EQ(j["attempt"], 2);
  EXPECT_EQ(j["seq"], 7);
  EXPECT_EQ(j["checkpoints"], (nlohmann::json{"t1/1", "t1/2"}));
  EXPECT_FALSE(nlohmann::json::parse(meta_json(1, 0, "", {}))
                   .contains("checkpoints"));
}

TEST(server_store_v2, a_result_whose_requeue_was_lost_is_requeued_at_load) {
  test::temp_dir dir;
  store::db_options opts;
  opts.mode = store::open_mode::primary;
  auto db = store::db::open(dir.path() / "db", opts);
  ASSERT_TRUE(db) << to_string(db.error());
  // Stored as the result batch leaves them, before requeue() ran.
  for (auto [id, st] : {std::pair{"m1", task_state::migrating},
                        {"i1", task_state::interrupted},
                        {"r1", task_state::restore_failed},
                        {"s1", task_state::succeeded}}) {
    auto e = running_entry();
    e.rec.spec.id = id;
    e.rec.state = st;
    e.checkpoints = {std::string{id} + "/1"};
    ASSERT_FALSE(persist(**db, e, "result"));
  }
  auto loaded = load(**db);
  ASSERT_TRUE(loaded) << to_string(loaded.error());
  std::set<std::string> ids(loaded->unrequeued.begin(),
                            loaded->unrequeued.end());
  EXPECT_EQ(ids, (std::set<std::string>{"m1", "i1", "r1"}));
  EXPECT_TRUE(loaded->queue.empty());
  // Its known checkpoints came back with it.
  EXPECT_EQ(loaded->tasks["m1"].checkpoints,
            (std::vector<std::string>{"m1/1"}));
}

} // namespace
} // namespace makima::server_detail
