// The domain mapping shared by PERSISTENCE and the SERVER (actors/
// task_store.hpp) over a real RocksDB: a record and its history event in one
// batch, and output pages bounded by bytes but never empty while output is
// left.
#include "actors/task_store.hpp"

#include <gtest/gtest.h>

#include "runtime/error.hpp"
#include "tests/fixtures/temp_dir.hpp"

using namespace makima;

TEST(task_store, put_record_writes_the_record_and_its_history_event) {
  test::temp_dir tmp;
  auto db = store::db::open(tmp.path() / "db", store::db_options{});
  ASSERT_TRUE(db) << describe(db.error());
  task_record rec;
  rec.spec.id = "t1";
  rec.spec.argv = {"true"};
  rec.attempt = 2;
  rec.state = task_state::running;
  rec.updated_at = 1234;
  store::write_batch b;
  put_record(b, rec, 7, "started");
  ASSERT_FALSE((*db)->write(std::move(b)));
  auto stored = (*db)->get_task("t1");
  ASSERT_TRUE(stored && *stored);
  auto back = record_from_json(**stored);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->state, task_state::running);
  EXPECT_EQ(back->attempt, 2u);
  std::vector<std::pair<uint64_t, state_change>> events;
  ASSERT_FALSE((*db)->for_each_event("t1", [&](uint64_t n, std::string_view j) {
    auto ch = state_change_from_json(std::string{j});
    ASSERT_TRUE(ch);
    events.emplace_back(n, *ch);
  }));
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].first, 7u);
  EXPECT_EQ(events[0].second.at, 1234);
  EXPECT_EQ(events[0].second.detail, "started");
  EXPECT_EQ(events[0].second.attempt, 2u);
}

TEST(task_store, read_output_is_bounded_but_never_empty_while_output_is_left) {
  test::temp_dir tmp;
  auto db = store::db::open(tmp.path() / "db", store::db_options{});
  ASSERT_TRUE(db) << describe(db.error());
  store::write_batch b;
  for (uint64_t seq = 0; seq < 5; ++seq)
    b.put_output("t1", seq, seq % 2 ? 2 : 1, std::string(100, char('a' + seq)));
  ASSERT_FALSE((*db)->write(std::move(b)));
  auto page = read_output(**db, "t1", 0, 250);
  ASSERT_TRUE(page);
  ASSERT_EQ(page->size(), 2u);
  EXPECT_EQ((*page)[0].seq, 0u);
  EXPECT_EQ((*page)[1].stream, 2);
  // A bound smaller than one chunk still returns that chunk.
  page = read_output(**db, "t1", 3, 1);
  ASSERT_TRUE(page);
  ASSERT_EQ(page->size(), 1u);
  EXPECT_EQ((*page)[0].seq, 3u);
  EXPECT_EQ((*page)[0].bytes, std::string(100, 'd'));
  page = read_output(**db, "t1", 5, 1000);
  ASSERT_TRUE(page);
  EXPECT_TRUE(page->empty());
  EXPECT_EQ(read_output(**db, "t1", 0, UINT64_MAX)->size(), 5u);
}
