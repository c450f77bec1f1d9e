// The CONNECTION's outbox window (outbox_window.hpp).
#include "actors/outbox_window.hpp"

#include <algorithm>

namespace makima {

void outbox_window::restore(outbox_contents& box, int64_t at) {
  for (auto& a : box.attempts) {
    auto& o = attempts_[{a.task, a.attempt}];
    o.last_seq = a.last_seq;
    o.acked = a.last_seq;
    o.finished = a.finished;
  }
  for (auto& e : box.events) {
    auto& o = attempts_[{e.task, e.attempt}];
    o.last_seq = std::max(o.last_seq, e.seq);
    if (o.frames.empty())
      o.acked = e.seq - 1;
    unacked_events_ += 1;
    unacked_bytes_ += e.frame.size();
    o.frames.emplace(e.seq, std::make_pair(std::move(e.frame), at));
  }
  for (auto& [key, o] : attempts_)
    o.sent = o.acked;
}

bool outbox_window::stored(const attempt_key& key, uint64_t seq,
                           std::string frame, int64_t at) {
  auto i = attempts_.find(key);
  if (i == attempts_.end() || seq <= i->second.acked)
    return false;
  auto size = frame.size();
  if (!i->second.frames.emplace(seq, std::make_pair(std::move(frame), at))
           .second)
    return false;
  unacked_events_ += 1;
  unacked_bytes_ += size;
  return true;
}

void outbox_window::uncount(const attempt_outbox& a, uint64_t seq,
                            const std::string& f) {
  unacked_events_ -= 1;
  unacked_bytes_ -= f.size();
  if (seq <= a.sent) {
    inflight_events_ -= 1;
    inflight_bytes_ -= f.size();
  }
}

outbox_window::ack_result outbox_window::ack(const attempt_key& key,
                                             uint64_t seq) {
  ack_result out;
  auto i = attempts_.find(key);
  if (i == attempts_.end())
    return out;
  auto& a = i->second;
  out.last_seq = a.last_seq;
  if (seq > a.last_seq) {
    out.clamped = true;
    seq = a.last_seq;
  }
  out.seq = seq;
  if (seq <= a.acked)
    return out;
  for (auto f = a.frames.begin(); f != a.frames.end() && f->first <= seq;) {
    uncount(a, f->first, f->second.first);
    f = a.frames.erase(f);
  }
  a.acked = seq;
  a.sent = std::max(a.sent, seq);
  out.applied = true;
  out.forget = a.finished && a.acked >= a.last_seq;
  if (out.forget)
    attempts_.erase(i);
  return out;
}

std::optional<attempt_outbox> outbox_window::fence(const attempt_key& key) {
  auto i = attempts_.find(key);
  if (i == attempts_.end())
    return std::nullopt;
  for (auto& [seq, f] : i->second.frames)
    uncount(i->second, seq, f.first);
  auto out = std::move(i->second);
  attempts_.erase(i);
  return out;
}

void outbox_window::disconnected() {
  for (auto& [key, a] : attempts_)
    a.sent = a.acked;
  inflight_events_ = 0;
  inflight_bytes_ = 0;
}

outbox_window::batch outbox_window::next_to_send(uint64_t frame_limit) {
  batch out;
  for (auto& [key, a] : attempts_) {
    for (auto i = a.frames.upper_bound(a.sent); i != a.frames.end(); ++i) {
      if (inflight_events_ >= max_events_ || inflight_bytes_ >= max_bytes_)
        return out;
      if (i->first != a.sent + 1)
        break; // a gap: the missing event is still being written
      auto& frame = i->second.first;
      if (frame.size() > frame_limit) {
        // Sending it would make the server close the connection (1009)
        // and the replay would send it again, forever: hold the attempt
        // (written before a smaller limit was known; a server with a
        // larger limit gets it).
        if (!a.oversized)
          out.held.push_back({key, i->first, frame.size()});
        a.oversized = true;
        break;
      }
      out.frames.push_back(&frame);
      a.sent = i->first;
      inflight_events_ += 1;
      inflight_bytes_ += frame.size();
    }
  }
  return out;
}

bool outbox_window::invariant() const {
  size_t events = 0;
  size_t bytes = 0;
  size_t inflight = 0;
  size_t inflight_bytes = 0;
  for (auto& [key, a] : attempts_) {
    if (a.acked > a.last_seq || a.sent < a.acked)
      return false;
    for (auto& [seq, f] : a.frames) {
      if (seq <= a.acked || seq > a.last_seq)
        return false;
      events += 1;
      bytes += f.first.size();
      if (seq <= a.sent) {
        inflight += 1;
        inflight_bytes += f.first.size();
      }
    }
  }
  return events == unacked_events_ && bytes == unacked_bytes_
         && inflight == inflight_events_ && inflight_bytes == inflight_bytes_;
}

} // namespace makima
