// The CONNECTION's outbox window (actors/outbox_window.hpp) without an
// actor or a socket: what is sent when, what an ack, a fence and a lost
// connection do to the counts, and that the counts always agree with the
// frames (invariant()).
#include "actors/outbox_window.hpp"

#include <gtest/gtest.h>

namespace makima {
namespace {

using key = outbox_window::attempt_key;

// Writes events 1..n of `k` (frames of `bytes` bytes) as write_event does:
// last_seq first, then the stored frame.
void write(outbox_window& w, const key& k, uint64_t n, size_t bytes = 10) {
  auto& a = w.attempts()[k];
  for (uint64_t i = 0; i < n; ++i) {
    auto seq = ++a.last_seq;
    ASSERT_TRUE(w.stored(k, seq, std::string(bytes, 'a' + seq % 26), 100));
  }
}

std::vector<std::string> sent(outbox_window& w, uint64_t limit = 1 << 20) {
  std::vector<std::string> out;
  for (auto* f : w.next_to_send(limit).frames)
    out.push_back(*f);
  return out;
}

TEST(outbox_window, sends_stored_events_once_in_seq_order) {
  outbox_window w;
  key t1{"t1", 1};
  write(w, t1, 3);
  EXPECT_EQ(w.unacked_events(), 3u);
  EXPECT_EQ(w.unacked_bytes(), 30u);
  EXPECT_EQ(sent(w).size(), 3u);
  EXPECT_EQ(w.inflight_events(), 3u);
  EXPECT_TRUE(sent(w).empty());
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, a_gap_holds_the_rest_of_the_attempt) {
  outbox_window w;
  key t1{"t1", 1};
  auto& a = w.attempts()[t1];
  a.last_seq = 3;
  ASSERT_TRUE(w.stored(t1, 1, "one", 0));
  ASSERT_TRUE(w.stored(t1, 3, "three", 0)); // 2 is still being written
  EXPECT_EQ(sent(w), std::vector<std::string>{"one"});
  ASSERT_TRUE(w.stored(t1, 2, "two", 0));
  EXPECT_EQ(sent(w), (std::vector<std::string>{"two", "three"}));
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, in_flight_bound_stops_sending_until_acked) {
  outbox_window w{2, 1 << 20};
  key t1{"t1", 1};
  write(w, t1, 5);
  EXPECT_EQ(sent(w).size(), 2u);
  EXPECT_TRUE(sent(w).empty());
  EXPECT_FALSE(w.under_window()); // 5 unacked > 2
  auto r = w.ack(t1, 2);
  EXPECT_TRUE(r.applied);
  EXPECT_FALSE(r.forget);
  EXPECT_EQ(w.inflight_events(), 0u);
  EXPECT_EQ(sent(w).size(), 2u);
  w.ack(t1, 4);
  EXPECT_TRUE(w.under_window());
  EXPECT_EQ(sent(w).size(), 1u);
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, byte_bound_counts_frame_bytes) {
  outbox_window w{100, 25};
  key t1{"t1", 1};
  write(w, t1, 4, 10);
  // 10 + 10 = 20 < 25 lets a third frame go; then 30 >= 25 stops.
  EXPECT_EQ(sent(w).size(), 3u);
  EXPECT_FALSE(w.under_window()); // 40 bytes unacked > 25
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, ack_is_cumulative_clamped_and_idempotent) {
  outbox_window w;
  key t1{"t1", 1};
  write(w, t1, 3);
  sent(w);
  auto r = w.ack(t1, 9);
  EXPECT_TRUE(r.clamped);
  EXPECT_EQ(r.seq, 3u);
  EXPECT_EQ(r.last_seq, 3u);
  EXPECT_TRUE(r.applied);
  EXPECT_FALSE(r.forget); // not finished: more may follow
  EXPECT_EQ(w.unacked_events(), 0u);
  EXPECT_EQ(w.inflight_events(), 0u);
  EXPECT_FALSE(w.ack(t1, 2).applied);
  EXPECT_FALSE(w.ack({"unknown", 1}, 1).applied);
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, finished_and_fully_acked_attempt_is_forgotten) {
  outbox_window w;
  key t1{"t1", 1};
  write(w, t1, 2);
  w.attempts()[t1].finished = true;
  sent(w);
  EXPECT_FALSE(w.ack(t1, 1).forget);
  auto r = w.ack(t1, 2);
  EXPECT_TRUE(r.forget);
  EXPECT_EQ(w.attempts().count(t1), 0u);
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, stored_after_ack_or_for_unknown_attempt_is_dropped) {
  outbox_window w;
  key t1{"t1", 1};
  write(w, t1, 2);
  w.ack(t1, 2);
  w.attempts()[t1].last_seq = 3;
  EXPECT_FALSE(w.stored(t1, 2, "late", 0));
  EXPECT_FALSE(w.stored({"t2", 1}, 1, "x", 0));
  EXPECT_EQ(w.unacked_events(), 0u);
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, fence_drops_the_attempt_and_its_counts) {
  outbox_window w;
  key t1{"t1", 1};
  key t2{"t2", 1};
  write(w, t1, 3);
  write(w, t2, 2);
  w.attempts()[t1].active = true;
  sent(w);
  auto gone = w.fence(t1);
  ASSERT_TRUE(gone);
  EXPECT_TRUE(gone->active);
  EXPECT_EQ(w.unacked_events(), 2u);
  EXPECT_EQ(w.inflight_events(), 2u);
  EXPECT_FALSE(w.fence(t1));
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, disconnect_resends_what_was_not_acked) {
  outbox_window w;
  key t1{"t1", 1};
  write(w, t1, 3);
  sent(w);
  w.ack(t1, 1);
  w.disconnected();
  EXPECT_EQ(w.inflight_events(), 0u);
  EXPECT_EQ(w.inflight_bytes(), 0u);
  EXPECT_EQ(w.unacked_events(), 2u);
  EXPECT_TRUE(w.invariant());
  EXPECT_EQ(sent(w).size(), 2u);
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, oversized_frame_holds_its_attempt_and_is_reported_once) {
  outbox_window w;
  key big{"a-big", 1};
  key small{"b-small", 1};
  write(w, big, 1, 100);
  write(w, big, 1, 10);
  write(w, small, 1, 10);
  auto b = w.next_to_send(50);
  ASSERT_EQ(b.held.size(), 1u);
  EXPECT_EQ(b.held[0].key, big);
  EXPECT_EQ(b.held[0].seq, 1u);
  EXPECT_EQ(b.held[0].bytes, 100u);
  EXPECT_EQ(b.frames.size(), 1u); // the other attempt goes on
  b = w.next_to_send(50);
  EXPECT_TRUE(b.held.empty());
  EXPECT_TRUE(b.frames.empty());
  // A server with a larger limit gets it.
  EXPECT_EQ(w.next_to_send(1000).frames.size(), 2u);
  EXPECT_TRUE(w.invariant());
}

TEST(outbox_window, restore_takes_over_the_persisted_outbox) {
  outbox_contents box;
  box.attempts.push_back({"t1", 1, 5, false});
  box.attempts.push_back({"t2", 1, 2, true});
  box.events.push_back({"t1", 1, 4, "four"});
  box.events.push_back({"t1", 1, 5, "five"});
  outbox_window w;
  w.restore(box, 42);
  auto& a = w.attempts().at({"t1", 1});
  EXPECT_EQ(a.last_seq, 5u);
  EXPECT_EQ(a.acked, 3u);
  EXPECT_EQ(a.sent, 3u);
  EXPECT_EQ(a.frames.begin()->second.second, 42);
  auto& done = w.attempts().at({"t2", 1});
  EXPECT_EQ(done.acked, 2u);
  EXPECT_TRUE(done.finished);
  EXPECT_EQ(w.unacked_events(), 2u);
  EXPECT_EQ(w.unacked_bytes(), 8u);
  EXPECT_TRUE(w.invariant());
  EXPECT_EQ(sent(w), (std::vector<std::string>{"four", "five"}));
  EXPECT_TRUE(w.invariant());
}

} // namespace
} // namespace makima
