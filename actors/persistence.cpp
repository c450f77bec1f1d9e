// The PERSISTENCE actor: maps task records, state history and output chunks
// onto the column families of runtime/store/db.
#include "actors/persistence.hpp"

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/task_store.hpp"
#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"
#include "runtime/store/db.hpp"

namespace makima {

namespace {

caf::expected<uint64_t> next_event_of(persistence_state& st,
                                      const std::string& id) {
  if (auto i = st.next_event.find(id); i != st.next_event.end())
    return i->second;
  auto last = st.db->last_event(id);
  if (!last)
    return last.error();
  uint64_t n = *last ? **last + 1 : 0;
  st.next_event.emplace(id, n);
  return n;
}

caf::expected<uint64_t> next_seq_of(store::db& db, const std::string& id) {
  auto last = db.last_output_seq(id);
  if (!last)
    return last.error();
  return *last ? **last + 1 : 0;
}

// Builds the batch that stores `rec` and its state as the next event.
caf::expected<store::write_batch> record_batch(persistence_state& st,
                                               const task_record& rec,
                                               std::string detail) {
  auto n = next_event_of(st, rec.spec.id);
  if (!n)
    return n.error();
  store::write_batch batch;
  put_record(batch, rec, *n, std::move(detail));
  return batch;
}

caf::error commit_batch(persistence_state& st, const std::string& id,
                        store::write_batch&& batch) {
  if (auto err = st.db->write(std::move(batch))) {
    // The cached event counter may now be ahead of the store; re-read it.
    st.next_event.erase(id);
    log::error("persistence",
               "write for task " + id + " failed: " + describe(err));
    return err;
  }
  st.next_event[id] += 1;
  return caf::none;
}

std::string detail_of(const task_record& rec) {
  if (!rec.error.empty())
    return rec.error;
  if (rec.state == task_state::preparing && rec.attempt > 1)
    return "attempt " + std::to_string(rec.attempt) + " (resumed)";
  if (rec.state == task_state::publishing)
    return "committing and pushing";
  if (rec.state == task_state::succeeded || rec.state == task_state::failed
      || rec.state == task_state::timed_out
      || rec.state == task_state::cancelled) {
    if (rec.signal != 0)
      return "killed by signal " + std::to_string(rec.signal);
    if (rec.exit_code >= 0)
      return "exit code " + std::to_string(rec.exit_code);
  }
  return {};
}

// Meta key holding the last event seq of an attempt's outbox:
// "outbox/<task>/<attempt>" -> "<seq>" or "<seq> result".
std::string outbox_key(const std::string& task, uint32_t attempt) {
  return "outbox/" + task + "/" + std::to_string(attempt);
}

constexpr std::string_view outbox_prefix = "outbox/";

// Parses an outbox meta key and value; false when malformed.
bool parse_outbox_meta(std::string_view key, std::string_view value,
                       outbox_attempt& out) {
  if (key.substr(0, outbox_prefix.size()) != outbox_prefix)
    return false;
  key.remove_prefix(outbox_prefix.size());
  auto slash = key.rfind('/');
  if (slash == std::string_view::npos || slash == 0)
    return false;
  try {
    out.task = std::string{key.substr(0, slash)};
    out.attempt =
        static_cast<uint32_t>(std::stoul(std::string{key.substr(slash + 1)}));
    std::string v{value};
    size_t used = 0;
    out.last_seq = std::stoull(v, &used);
    out.finished = v.substr(used) == " result";
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

} // namespace

persistence_actor::behavior_type
persistence(persistence_actor::stateful_pointer<persistence_state> self,
            std::shared_ptr<store::db> db) {
  self->state.db = std::move(db);
  return {
      [self](create_atom, task_record& rec) -> caf::result<ok_atom> {
        auto& st = self->state;
        auto existing = st.db->get_task(rec.spec.id);
        if (!existing)
          return existing.error();
        if (*existing)
          return make_error(ec::task_exists, "a task with id '" + rec.spec.id
                                                 + "' already exists");
        st.next_event[rec.spec.id] = 0;
        auto batch = record_batch(st, rec, "created");
        if (!batch)
          return batch.error();
        if (auto err = commit_batch(st, rec.spec.id, std::move(*batch)))
          return err;
        return ok_atom::value;
      },
      [self](put_atom, task_record& rec) -> caf::result<ok_atom> {
        auto& st = self->state;
        auto batch = record_batch(st, rec, detail_of(rec));
        if (!batch)
          return batch.error();
        if (auto err = commit_batch(st, rec.spec.id, std::move(*batch)))
          return err;
        return ok_atom::value;
      },
      [self](output_atom, const std::string& id,
             std::vector<output_chunk>& chunks)
          -> caf::result<std::vector<output_chunk>> {
        store::write_batch batch;
        for (auto& c : chunks)
          batch.put_output(id, c.seq, c.stream, c.bytes);
        if (auto err = self->state.db->write(std::move(batch))) {
          log::error("persistence", "output write for task " + id
                                        + " failed: " + describe(err));
          return err;
        }
        return std::move(chunks);
      },
      [self](get_atom, const std::string& id) -> caf::result<task_record> {
        auto& db = *self->state.db;
        auto text = db.get_task(id);
        if (!text)
          return text.error();
        if (!*text)
          return make_error(ec::task_not_found, "no task with id '" + id + "'");
        auto rec = record_from_json(**text);
        if (!rec)
          return make_error(ec::store_corrupt, "the stored record of task '"
                                                   + id + "' is corrupt");
        auto seq = next_seq_of(db, id);
        if (!seq)
          return seq.error();
        rec->next_seq = *seq;
        return std::move(*rec);
      },
      [self](list_atom) -> caf::result<std::vector<task_record>> {
        std::vector<task_record> out;
        auto err = self->state.db->for_each_task(
            [&](std::string_view id, std::string_view json) {
              if (auto rec = record_from_json(std::string{json}))
                out.push_back(std::move(*rec));
              else
                log::warn("persistence",
                          "skipping corrupt record of task " + std::string{id});
            });
        if (err)
          return err;
        return out;
      },
      [self](get_atom, output_atom, const std::string& id, uint64_t from,
             uint64_t max_bytes) -> caf::result<std::vector<output_chunk>> {
        auto out = read_output(*self->state.db, id, from, max_bytes);
        if (!out)
          return out.error();
        return std::move(*out);
      },
      [self](get_atom, history_atom,
             const std::string& id) -> caf::result<std::vector<state_change>> {
        std::vector<state_change> out;
        auto err = self->state.db->for_each_event(
            id, [&](uint64_t, std::string_view json) {
              if (auto ch = state_change_from_json(std::string{json}))
                out.push_back(std::move(*ch));
            });
        if (err)
          return err;
        return out;
      },
      [self](recover_atom) -> caf::result<std::vector<std::string>> {
        auto& st = self->state;
        std::vector<task_record> stale;
        auto err =
            st.db->for_each_task([&](std::string_view, std::string_view json) {
              if (auto rec = record_from_json(std::string{json});
                  rec && !is_terminal(rec->state))
                stale.push_back(std::move(*rec));
            });
        if (err)
          return err;
        std::vector<std::string> ids;
        for (auto& rec : stale) {
          auto was = rec.state;
          rec.state = task_state::interrupted;
          rec.updated_at = now_ms();
          auto batch = record_batch(
              st, rec,
              std::string{"the makima process running attempt "}
                  + std::to_string(rec.attempt) + " ended while the task was "
                  + to_string(was) + "; detected at the next start");
          if (!batch)
            return batch.error();
          if (auto err = commit_batch(st, rec.spec.id, std::move(*batch)))
            return err;
          ids.push_back(rec.spec.id);
        }
        return ids;
      },
      [self](meta_atom, const std::string& key,
             const std::string& fallback) -> caf::result<std::string> {
        auto& db = *self->state.db;
        auto value = db.get_meta(key);
        if (!value)
          return value.error();
        if (*value)
          return std::move(**value);
        store::write_batch batch;
        batch.put_meta(key, fallback);
        if (auto err = db.write(std::move(batch)))
          return err;
        return fallback;
      },
      [self](outbox_atom, const outbox_write& w) -> caf::result<ok_atom> {
        auto& [task, attempt] = w.id;
        store::write_batch batch;
        batch.put_outbox(task, attempt, w.seq, w.frame);
        batch.put_meta(outbox_key(task, attempt),
                       std::to_string(w.seq) + (w.finished ? " result" : ""));
        if (auto err = self->state.db->write(std::move(batch))) {
          log::error("persistence", "outbox write for task " + task
                                        + " failed: " + describe(err));
          return err;
        }
        return ok_atom::value;
      },
      [self](ack_atom, const outbox_ack& a) -> caf::result<ok_atom> {
        auto& [task, attempt] = a.id;
        store::write_batch batch;
        batch.delete_outbox(task, attempt, a.seq);
        if (a.forget)
          batch.delete_meta(outbox_key(task, attempt));
        if (auto err = self->state.db->write(std::move(batch)))
          return err;
        return ok_atom::value;
      },
      [self](drop_atom, const attempt_id& id) -> caf::result<ok_atom> {
        auto& [task, attempt] = id;
        store::write_batch batch;
        batch.delete_outbox(task, attempt, UINT64_MAX);
        batch.delete_meta(outbox_key(task, attempt));
        if (auto err = self->state.db->write(std::move(batch)))
          return err;
        return ok_atom::value;
      },
      [self](outbox_atom) -> caf::result<outbox_contents> {
        auto& db = *self->state.db;
        outbox_contents out;
        auto err = db.for_each_meta(
            outbox_prefix, [&](std::string_view key, std::string_view value) {
              outbox_attempt a;
              if (parse_outbox_meta(key, value, a))
                out.attempts.push_back(std::move(a));
              else
                log::warn("persistence",
                          "skipping malformed outbox key " + std::string{key});
            });
        if (err)
          return err;
        err = db.for_each_outbox([&](std::string_view task, uint32_t attempt,
                                     uint64_t seq, std::string_view frame) {
          out.events.push_back(outbox_entry{std::string{task}, attempt, seq,
                                            std::string{frame}});
        });
        if (err)
          return err;
        return out;
      },
  };
}

persistence_actor spawn_persistence(caf::actor_system& sys,
                                    std::shared_ptr<store::db> db) {
  return sys.spawn<caf::detached>(persistence, std::move(db));
}

} // namespace makima
