// The PERSISTENCE actor's daemon outbox over a real RocksDB: append with
// the attempt's last seq, cumulative ack-delete, drop of a fenced attempt,
// load at start (also after reopening the database), malformed keys, and
// the get-or-set meta value of the daemon id.
#include "tests/actors/actor_fixture.hpp"

using namespace makima;
using makima::test::actor_test;

namespace {

constexpr auto timeout = std::chrono::seconds(10);

class outbox_test : public actor_test {
protected:
  void append(const std::string& task, uint32_t attempt, uint64_t seq,
              bool finished = false) {
    (*self)
        ->request(persist, timeout, outbox_atom::value,
                  outbox_write{{task, attempt},
                               seq,
                               "frame " + task + "/" + std::to_string(attempt)
                                   + "/" + std::to_string(seq),
                               finished})
        .receive([](ok_atom) {},
                 [](caf::error& err) { FAIL() << describe(err); });
  }

  outbox_contents load() {
    outbox_contents out;
    (*self)
        ->request(persist, timeout, outbox_atom::value)
        .receive([&](outbox_contents& c) { out = std::move(c); },
                 [](caf::error& err) { FAIL() << describe(err); });
    return out;
  }

  void ack(const std::string& task, uint32_t attempt, uint64_t seq,
           bool forget) {
    (*self)
        ->request(persist, timeout, ack_atom::value,
                  outbox_ack{{task, attempt}, seq, forget})
        .receive([](ok_atom) {},
                 [](caf::error& err) { FAIL() << describe(err); });
  }
};

TEST_F(outbox_test, append_ack_and_load_keep_the_last_seq) {
  for (uint64_t s = 1; s <= 3; ++s)
    append("t1", 2, s);
  append("t1", 2, 4, true);
  append("t2", 1, 1);
  auto box = load();
  ASSERT_EQ(box.events.size(), 5u);
  EXPECT_EQ(box.events[0].task, "t1");
  EXPECT_EQ(box.events[0].attempt, 2u);
  EXPECT_EQ(box.events[0].seq, 1u);
  EXPECT_EQ(box.events[0].frame, "frame t1/2/1");
  EXPECT_EQ(box.events[3].seq, 4u);
  ASSERT_EQ(box.attempts.size(), 2u);
  EXPECT_EQ(box.attempts[0].task, "t1");
  EXPECT_EQ(box.attempts[0].last_seq, 4u);
  EXPECT_TRUE(box.attempts[0].finished);
  EXPECT_FALSE(box.attempts[1].finished);

  // A cumulative ack deletes up to its seq; the last seq survives a drained
  // outbox until `forget`.
  ack("t2", 1, 1, false);
  ack("t1", 2, 2, false);
  box = load();
  ASSERT_EQ(box.events.size(), 2u);
  EXPECT_EQ(box.events[0].seq, 3u);
  ASSERT_EQ(box.attempts.size(), 2u);
  EXPECT_EQ(box.attempts[1].task, "t2");
  EXPECT_EQ(box.attempts[1].last_seq, 1u);
  ack("t1", 2, 4, true);
  box = load();
  EXPECT_TRUE(box.events.empty());
  ASSERT_EQ(box.attempts.size(), 1u);
  EXPECT_EQ(box.attempts[0].task, "t2");
}

TEST_F(outbox_test, drop_forgets_a_fenced_attempt_only) {
  append("t1", 1, 1);
  append("t1", 1, 2);
  append("t1", 2, 1);
  (*self)
      ->request(persist, timeout, drop_atom::value, attempt_id{"t1", 1})
      .receive([](ok_atom) {},
               [](caf::error& err) { FAIL() << describe(err); });
  auto box = load();
  ASSERT_EQ(box.events.size(), 1u);
  EXPECT_EQ(box.events[0].attempt, 2u);
  ASSERT_EQ(box.attempts.size(), 1u);
  EXPECT_EQ(box.attempts[0].attempt, 2u);
}

TEST_F(outbox_test, malformed_last_seq_keys_are_skipped) {
  append("t1", 1, 1);
  store::write_batch batch;
  batch.put_meta("outbox/broken", "x");
  batch.put_meta("outbox/t9/1", "not a number");
  ASSERT_FALSE(db->write(std::move(batch)));
  auto box = load();
  ASSERT_EQ(box.attempts.size(), 1u);
  EXPECT_EQ(box.attempts[0].task, "t1");
  EXPECT_EQ(box.events.size(), 1u);
}

TEST_F(outbox_test, meta_is_set_once_and_then_kept) {
  std::string first, second;
  (*self)
      ->request(persist, timeout, meta_atom::value, std::string{"daemon_id"},
                std::string{"d-1"})
      .receive([&](std::string& v) { first = v; },
               [](caf::error& err) { FAIL() << describe(err); });
  (*self)
      ->request(persist, timeout, meta_atom::value, std::string{"daemon_id"},
                std::string{"d-2"})
      .receive([&](std::string& v) { second = v; },
               [](caf::error& err) { FAIL() << describe(err); });
  EXPECT_EQ(first, "d-1");
  EXPECT_EQ(second, "d-1");
}

} // namespace
