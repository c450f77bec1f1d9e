// The PERSISTENCE actor over a real RocksDB: creating, updating, reading
// records, state history, output paging, and recovery of tasks left behind
// by a dead process.
#include "tests/actors/actor_fixture.hpp"

using namespace makima;
using makima::test::actor_test;

namespace {

using persistence_actor_test = actor_test;
constexpr auto timeout = std::chrono::seconds(10);

} // namespace

TEST_F(persistence_actor_test, create_refuses_an_existing_id) {
  auto rec = make_record("t1", {"true"});
  create(rec);
  (*self)
      ->request(persist, timeout, create_atom::value, rec)
      .receive([](ok_atom) { FAIL() << "second create succeeded"; },
               [](caf::error& err) {
                 EXPECT_EQ(code_of(err), ec::task_exists);
                 EXPECT_NE(describe(err).find("t1"), std::string::npos);
               });
}

TEST_F(persistence_actor_test, get_unknown_task_is_task_not_found) {
  (*self)
      ->request(persist, timeout, get_atom::value, std::string{"nope"})
      .receive(
          [](task_record&) { FAIL() << "found a task that does not exist"; },
          [](caf::error& err) { EXPECT_EQ(code_of(err), ec::task_not_found); });
}

TEST_F(persistence_actor_test, put_updates_record_and_appends_history) {
  auto rec = make_record("t1", {"echo", "x"});
  create(rec);
  rec.state = task_state::running;
  (*self)
      ->request(persist, timeout, put_atom::value, rec)
      .receive([](ok_atom) {},
               [](caf::error& err) { FAIL() << describe(err); });
  rec.state = task_state::failed;
  rec.exit_code = 3;
  (*self)
      ->request(persist, timeout, put_atom::value, rec)
      .receive([](ok_atom) {},
               [](caf::error& err) { FAIL() << describe(err); });
  auto got = get("t1");
  EXPECT_EQ(got.state, task_state::failed);
  EXPECT_EQ(got.exit_code, 3);
  EXPECT_EQ(got.spec.argv, (std::vector<std::string>{"echo", "x"}));
  std::vector<state_change> history;
  (*self)
      ->request(persist, timeout, get_atom::value, history_atom::value,
                std::string{"t1"})
      .receive([&](std::vector<state_change>& h) { history = std::move(h); },
               [](caf::error& err) { FAIL() << describe(err); });
  ASSERT_EQ(history.size(), 3u);
  EXPECT_EQ(history[0].state, task_state::preparing);
  EXPECT_EQ(history[1].state, task_state::running);
  EXPECT_EQ(history[2].state, task_state::failed);
  EXPECT_EQ(history[2].detail, "exit code 3");
}

TEST_F(persistence_actor_test,
       output_is_read_back_in_pages_and_next_seq_follows) {
  create(make_record("t1", {"true"}));
  std::vector<output_chunk> chunks;
  for (uint64_t i = 0; i < 300; ++i)
    chunks.push_back(
        output_chunk{i, static_cast<uint8_t>(1 + i % 2),
                     std::string(1000, static_cast<char>('a' + i % 26))});
  (*self)
      ->request(persist, timeout, output_atom::value, std::string{"t1"}, chunks)
      .receive(
          [](std::vector<output_chunk>& back) { EXPECT_EQ(back.size(), 300u); },
          [](caf::error& err) { FAIL() << describe(err); });
  EXPECT_EQ(get("t1").next_seq, 300u);
  std::vector<output_chunk> all;
  uint64_t from = 0;
  for (int pages = 0; pages < 100; ++pages) {
    std::vector<output_chunk> page;
    (*self)
        ->request(persist, timeout, get_atom::value, output_atom::value,
                  std::string{"t1"}, from, uint64_t{10'000})
        .receive([&](std::vector<output_chunk>& p) { page = std::move(p); },
                 [](caf::error& err) { FAIL() << describe(err); });
    if (page.empty())
      break;
    EXPECT_LE(page.size(), 10u);
    from = page.back().seq + 1;
    all.insert(all.end(), page.begin(), page.end());
  }
  ASSERT_EQ(all.size(), chunks.size());
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].seq, chunks[i].seq);
    EXPECT_EQ(all[i].stream, chunks[i].stream);
    EXPECT_EQ(all[i].bytes, chunks[i].bytes);
  }
}

TEST_F(persistence_actor_test,
       recover_marks_only_unfinished_tasks_interrupted) {
  auto running = make_record("run", {"sleep", "1"});
  create(running);
  running.state = task_state::running;
  (*self)
      ->request(persist, timeout, put_atom::value, running)
      .receive([](ok_atom) {},
               [](caf::error& err) { FAIL() << describe(err); });
  create(make_record("prep", {"true"}));
  auto done = make_record("done", {"true"});
  create(done);
  done.state = task_state::succeeded;
  done.exit_code = 0;
  (*self)
      ->request(persist, timeout, put_atom::value, done)
      .receive([](ok_atom) {},
               [](caf::error& err) { FAIL() << describe(err); });
  std::vector<std::string> ids;
  (*self)
      ->request(persist, timeout, recover_atom::value)
      .receive([&](std::vector<std::string>& v) { ids = std::move(v); },
               [](caf::error& err) { FAIL() << describe(err); });
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<std::string>{"prep", "run"}));
  EXPECT_EQ(get("run").state, task_state::interrupted);
  EXPECT_EQ(get("prep").state, task_state::interrupted);
  EXPECT_EQ(get("done").state, task_state::succeeded);
  // A second recovery finds nothing left to do.
  (*self)
      ->request(persist, timeout, recover_atom::value)
      .receive([&](std::vector<std::string>& v) { EXPECT_TRUE(v.empty()); },
               [](caf::error& err) { FAIL() << describe(err); });
}

TEST_F(persistence_actor_test, list_returns_every_record) {
  for (auto id : {"b", "a", "c"})
    create(make_record(id, {"true"}));
  std::vector<task_record> all;
  (*self)
      ->request(persist, timeout, list_atom::value)
      .receive([&](std::vector<task_record>& v) { all = std::move(v); },
               [](caf::error& err) { FAIL() << describe(err); });
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].spec.id, "a");
  EXPECT_EQ(all[2].spec.id, "c");
}
