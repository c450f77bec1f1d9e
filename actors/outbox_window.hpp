// The CONNECTION's outbox window (docs/protocol.md §6): every attempt's
// persisted, unacked event frames and how far the server has them, with
// the two counts the window is made of — unacked (persisted, not acked:
// bounds what TASK actors may produce) and in flight (sent on this
// connection, not acked: bounds what is sent). Every change of a frame or a
// count goes through one method here, so the counts cannot drift from the
// frames; invariant() says whether they agree (tests/actors/
// outbox_window_test.cpp). No actor, no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "actors/messages.hpp"

namespace makima {

/// What the CONNECTION keeps of one attempt: its outbox and how far the
/// server has it.
struct attempt_outbox {
  /// Highest event seq written (or being written) to the outbox.
  uint64_t last_seq = 0;
  /// Highest seq the server acknowledged.
  uint64_t acked = 0;
  /// Highest seq sent on the current connection.
  uint64_t sent = 0;
  /// Persisted, unacked events: seq -> (frame, written at ms). Changed only
  /// through outbox_window.
  std::map<uint64_t, std::pair<std::string, int64_t>> frames;
  /// The result event was written: nothing follows.
  bool finished = false;
  /// Assigned here and not finished yet (running or queued in DAEMON).
  bool active = false;
  /// An event over the server's frame limit holds the rest (logged once).
  bool oversized = false;
};

/// Every attempt's outbox and the window over them.
class outbox_window {
public:
  using attempt_key = attempt_id;
  using attempt_map = std::map<attempt_key, attempt_outbox>;

  /// A window of at most `max_events` events and `max_bytes` frame bytes.
  outbox_window(size_t max_events = 1024, size_t max_bytes = 8 << 20)
      : max_events_(max_events), max_bytes_(max_bytes) {}

  /// The attempts, in key order. Their flags and `last_seq` belong to the
  /// caller; frames and positions change only through the methods below.
  attempt_map& attempts() { return attempts_; }
  const attempt_map& attempts() const { return attempts_; }

  /// Takes over what PERSISTENCE loaded at start: attempts with their
  /// last seq (all acked but the events still in the outbox), events
  /// written at `at` ms. Nothing counts as sent.
  void restore(outbox_contents& box, int64_t at);

  /// Event `seq` of `key` is persisted as `frame` (written at `at` ms).
  /// Kept and counted unless the attempt is gone or has it acked already;
  /// returns whether it was kept.
  bool stored(const attempt_key& key, uint64_t seq, std::string frame,
              int64_t at);

  /// What ack() did.
  struct ack_result {
    /// The attempt is known and the ack moved it forward.
    bool applied = false;
    /// The server acked beyond `last_seq`: `seq` was lowered to it.
    bool clamped = false;
    /// The seq applied (after clamping).
    uint64_t seq = 0;
    /// The attempt's last seq, for the log of a clamped ack.
    uint64_t last_seq = 0;
    /// Finished and fully acked: the attempt was removed.
    bool forget = false;
  };

  /// A cumulative ack of `key` up to `seq`: drops the frames up to it.
  ack_result ack(const attempt_key& key, uint64_t seq);

  /// Removes attempt `key` and everything it has in the window (the server
  /// fenced it); returns what it was, nullopt when unknown.
  std::optional<attempt_outbox> fence(const attempt_key& key);

  /// The connection is gone: nothing is in flight, and what was sent but
  /// not acked is sent again on the next one.
  void disconnected();

  /// A frame next_to_send will not send: over the server's frame limit.
  struct oversized_frame {
    attempt_key key;
    uint64_t seq = 0;
    size_t bytes = 0;
  };

  /// What to send now.
  struct batch {
    /// The frames, in order; valid until the window changes.
    std::vector<const std::string*> frames;
    /// Attempts held from now on because their next frame is larger than
    /// the limit (reported once per attempt).
    std::vector<oversized_frame> held;
  };

  /// Marks as sent and returns, per attempt in key order, the persisted
  /// frames after the last one sent, in seq order and without gaps, while
  /// the in-flight count is under the window; an attempt whose next frame
  /// exceeds `frame_limit` bytes is held.
  batch next_to_send(uint64_t frame_limit);

  /// Unacked events and bytes within the window: output `ok`s may go back
  /// to TASK actors.
  bool under_window() const {
    return unacked_events_ <= max_events_ && unacked_bytes_ <= max_bytes_;
  }

  size_t unacked_events() const { return unacked_events_; }
  size_t unacked_bytes() const { return unacked_bytes_; }
  size_t inflight_events() const { return inflight_events_; }
  size_t inflight_bytes() const { return inflight_bytes_; }

  /// Whether the counts agree with the frames and every attempt's
  /// positions are ordered (acked <= sent, frames after acked, up to
  /// last_seq). For tests.
  bool invariant() const;

private:
  /// Drops frame `f` of `a` from the counts.
  void uncount(const attempt_outbox& a, uint64_t seq, const std::string& f);

  size_t max_events_;
  size_t max_bytes_;
  attempt_map attempts_;
  size_t unacked_events_ = 0;
  size_t unacked_bytes_ = 0;
  size_t inflight_events_ = 0;
  size_t inflight_bytes_ = 0;
};

} // namespace makima
