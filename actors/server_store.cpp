// The SERVER's tasks on its store (server_store.hpp).
#include "actors/server_store.hpp"

#include <algorithm>
#include <utility>

#include <nlohmann/json.hpp>

#include "actors/task_store.hpp"
#include "runtime/error.hpp"

namespace makima::server_detail {

namespace {

constexpr const char* meta_prefix = "task/";

} // namespace

std::string meta_key(const std::string& id) {
  return meta_prefix + id;
}

std::string meta_json(uint32_t attempt, uint64_t seq,
                      const std::string& daemon,
                      const std::vector<std::string>& checkpoints) {
  nlohmann::json j{{"attempt", attempt}, {"seq", seq}, {"daemon", daemon}};
  if (!checkpoints.empty())
    j["checkpoints"] = checkpoints;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

caf::error persist(store::db& db, task_entry& e, const std::string& detail) {
  store::write_batch batch;
  auto& id = e.rec.spec.id;
  put_record(batch, e.rec, e.events, detail);
  batch.put_meta(meta_key(id),
                 meta_json(e.rec.attempt, e.acked, e.daemon, e.checkpoints));
  if (auto err = db.write(std::move(batch)))
    return err;
  ++e.events;
  return caf::none;
}

stored_event event_batch(const task_entry& e, const std::string& daemon,
                         const proto::event& ev, int64_t now) {
  stored_event out;
  auto& batch = out.batch;
  uint64_t next = e.rec.next_seq;
  out.rec = e.rec;
  out.checkpoints = e.checkpoints;
  if (ev.kind == proto::event_kind::checkpoint) {
    auto& c = ev.checkpoint;
    out.rec.checkpoint = c.ref;
    out.rec.updated_at = ev.at > 0 ? ev.at : now;
    auto& known = out.checkpoints;
    known.erase(std::remove(known.begin(), known.end(), c.ref), known.end());
    known.push_back(c.ref);
    if (known.size() > max_known_checkpoints)
      known.erase(known.begin(),
                  known.end() - static_cast<std::ptrdiff_t>(max_known_checkpoints));
    put_record(batch, out.rec, e.events,
               "checkpoint " + c.ref + " (" + std::to_string(c.bytes)
                   + " bytes uploaded) on daemon " + daemon);
  } else if (ev.kind == proto::event_kind::output) {
    for (auto& ch : ev.chunks) {
      if (ch.seq < next)
        continue; // already stored (put-if-absent)
      batch.put_output(ev.task, ch.seq, ch.stream, ch.bytes);
      next = ch.seq + 1;
      out.fresh.push_back(ch);
    }
  } else {
    auto& rec = out.rec;
    rec = ev.record;
    rec.spec = e.rec.spec;
    rec.attempt = e.rec.attempt;
    rec.checkpoint = e.rec.checkpoint;
    rec.resume_from = e.rec.resume_from;
    rec.updated_at = ev.at > 0 ? ev.at : now;
    if (ev.kind == proto::event_kind::result) {
      if (rec.state == task_state::interrupted) {
        out.requeue = true;
        out.detail = "attempt interrupted on daemon " + daemon;
      } else if (rec.state == task_state::migrating) {
        out.requeue = true;
        out.detail = e.migrate_requested
                         ? "attempt moved off daemon " + daemon + " on demand"
                         : "attempt evicted from daemon " + daemon;
      }
      // Why the attempt was lost (no store to restore from, the final
      // checkpoint failed, ...) stays in the history, and in the error of
      // a task whose budget runs out on it: the next attempt's record
      // replaces this one's error.
      if (out.requeue && !rec.error.empty())
        out.detail += ": " + rec.error;
      if (rec.state == task_state::restore_failed) {
        // Never again from that checkpoint, nor from one built on it.
        out.requeue = true;
        auto& known = out.checkpoints;
        auto bad = std::find(known.begin(), known.end(), rec.resume_from);
        known.erase(bad, known.end());
        out.detail = "daemon " + daemon + " could not restore checkpoint "
                     + rec.resume_from + ": " + rec.error;
      }
    }
    rec.next_seq = next;
    put_record(batch, rec, e.events,
               out.requeue ? out.detail : "daemon " + daemon);
  }
  batch.put_meta(meta_key(ev.task),
                 meta_json(ev.attempt, ev.seq, e.daemon, out.checkpoints));
  out.rec.next_seq = next;
  return out;
}

caf::expected<loaded_state> load(store::db& db) {
  loaded_state out;
  std::vector<std::pair<int64_t, std::string>> queued;
  caf::error bad;
  auto err = db.for_each_task([&](std::string_view id, std::string_view js) {
    auto rec = record_from_json(std::string{js});
    if (!rec) {
      bad = make_error(ec::store_corrupt,
                       "task " + std::string{id} + ": malformed record");
      return;
    }
    task_entry e;
    e.rec = std::move(*rec);
    e.queued_at = clock::now();
    out.tasks.emplace(std::string{id}, std::move(e));
  });
  if (err)
    return err;
  if (bad)
    return bad;
  auto now = clock::now();
  for (auto& [id, e] : out.tasks) {
    auto last = db.last_output_seq(id);
    if (!last)
      return last.error();
    // A task pushed from a laptop starts past the output its checkpoint
    // holds (the record says where); otherwise the output decides.
    e.rec.next_seq = std::max(e.rec.next_seq, *last ? **last + 1 : 0);
    auto ev = db.last_event(id);
    if (!ev)
      return ev.error();
    e.events = *ev ? **ev + 1 : 0;
    auto meta = db.get_meta(meta_key(id));
    if (!meta)
      return meta.error();
    if (*meta) {
      auto j = nlohmann::json::parse(**meta, nullptr, false);
      if (j.is_object() && j.value("attempt", 0u) == e.rec.attempt) {
        e.acked = j.value("seq", uint64_t{0});
        e.daemon = j.value("daemon", std::string{});
      }
      if (j.is_object() && j.contains("checkpoints")
          && j["checkpoints"].is_array())
        for (auto& c : j["checkpoints"])
          if (c.is_string())
            e.checkpoints.push_back(c.get<std::string>());
    }
    if (e.rec.state == task_state::interrupted
        || e.rec.state == task_state::migrating
        || e.rec.state == task_state::restore_failed) {
      // A result the server never finishes a task with: its re-queue was
      // lost (crash, failed write). The actor re-queues it.
      out.unrequeued.push_back(id);
    } else if (e.rec.state == task_state::queued) {
      e.daemon.clear();
      queued.emplace_back(e.rec.updated_at, id);
    } else if (!is_terminal(e.rec.state) && !e.daemon.empty()) {
      // Waits for its daemon; the lease counts from now.
      auto& d = out.daemons[e.daemon];
      d.id = e.daemon;
      d.last_frame = now;
      d.tasks.insert(id);
    } else if (!is_terminal(e.rec.state)) {
      queued.emplace_back(e.rec.updated_at, id);
      e.rec.state = task_state::queued;
    }
  }
  std::sort(queued.begin(), queued.end());
  for (auto& q : queued)
    out.queue.push_back(q.second);
  return out;
}

} // namespace makima::server_detail
