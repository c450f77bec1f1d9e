// The CHECKPOINTER actor: one checkpoint at a time, on its own thread.
#include "actors/checkpointer.hpp"

#include <signal.h>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "actors/messages.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/store/db.hpp"
#include "runtime/store/object_store.hpp"

namespace makima {

checkpointer_actor::behavior_type
checkpointer(checkpointer_actor::stateful_pointer<checkpointer_state> self,
             std::shared_ptr<store::db> db,
             std::shared_ptr<store::object_store> store,
             checkpoint::settings settings, mirror_publisher_actor publisher) {
  auto& st = self->state;
  st.db = std::move(db);
  st.store = std::move(store);
  st.settings = std::move(settings);
  st.publisher = std::move(publisher);
  return {
      [self](checkpoint_atom, const std::string& id,
             int32_t pgid) -> caf::result<checkpoint_report> {
        auto& st = self->state;
        auto text = st.db->get_task(id);
        if (!text)
          return text.error();
        if (!*text)
          return make_error(ec::task_not_found, "no task " + id);
        auto rec = record_from_json(**text);
        if (!rec)
          return make_error(ec::store_corrupt,
                            "the record of task " + id + " is malformed");
        checkpoint::pause_hooks pause;
        if (pgid > 0 && st.settings.stop_task) {
          // The child leads its group; the reactor watches it by pidfd, so
          // a stop is not an exit. Resumed on every path (take's contract).
          pause.stop = [pgid] { ::kill(-pgid, SIGSTOP); };
          pause.resume = [pgid] { ::kill(-pgid, SIGCONT); };
        }
        std::optional<uint64_t> base;
        if (auto i = st.restored_from.find(id); i != st.restored_from.end())
          base = i->second;
        auto t = checkpoint::take(*st.db, *rec, *st.store, st.settings, pause,
                                  base);
        if (!t) {
          log::warn("checkpointer", "task " + id + ": checkpoint failed ("
                                        + describe(t.error())
                                        + "); the task goes on");
          return t.error();
        }
        checkpoint_report r;
        r.ref = id + "/" + std::to_string(t->m.n);
        r.covers_seq = t->m.covers_seq;
        r.skipped = t->skipped;
        if (!t->skipped)
          st.restored_from.erase(id);
        if (t->skipped) {
          log::debug("checkpointer", "task " + id + ": nothing changed since "
                                         + r.ref + "; no checkpoint written");
          r.pause_ms = t->pause_ms;
          r.total_ms = t->total_ms;
          return r;
        }
        if (st.publisher && !rec->spec.repo.empty())
          self->send(st.publisher, publish_atom::value, rec->spec.repo);
        r.blobs = t->blobs_uploaded;
        r.bytes = t->bytes_uploaded;
        r.pause_ms = t->pause_ms;
        r.total_ms = t->total_ms;
        log::info("checkpointer",
                  "task " + id + ": checkpoint " + r.ref + " in "
                      + st.store->describe() + ": " + std::to_string(r.blobs)
                      + " blobs, " + std::to_string(r.bytes)
                      + " bytes uploaded, paused " + std::to_string(r.pause_ms)
                      + " ms, " + std::to_string(r.total_ms) + " ms in all");
        return r;
      },
      [self](restore_atom,
             const std::string& text)
          -> caf::result<task_record, restore_report> {
        auto& st = self->state;
        auto ref = checkpoint::parse_reference(text);
        if (!ref)
          return ref.error();
        auto r = checkpoint::restore(*st.db, *st.store, *ref, st.settings,
                                     /*replace=*/true);
        if (!r) {
          log::warn("checkpointer", "cannot restore " + text + " from "
                                        + st.store->describe() + ": "
                                        + describe(r.error()));
          return r.error();
        }
        st.restored_from[r->m.task] = r->m.n;
        log::info("checkpointer",
                  "task " + r->m.task + ": restored " + text + " from "
                      + st.store->describe() + " in "
                      + std::to_string(r->total_ms) + " ms ("
                      + std::to_string(r->bytes_downloaded) + " bytes"
                      + (r->seeded ? ", mirror seeded from mirror packs "
                                         + std::to_string(r->seed_n) + " ("
                                         + std::to_string(r->seed_objects)
                                         + " objects), "
                                         + (r->offline
                                                ? std::string{"origin "
                                                              "unreachable"}
                                                : std::to_string(
                                                      r->fetched_objects)
                                                      + " fetched from origin")
                         : r->cloned ? ", mirror cloned"
                                     : "")
                      + ")");
        restore_report report;
        report.ref = text;
        report.total_ms = r->total_ms;
        report.bytes_downloaded = r->bytes_downloaded;
        report.cloned = r->cloned;
        return {std::move(r->rec), std::move(report)};
      },
  };
}

checkpointer_actor
spawn_checkpointer(caf::actor_system& sys, std::shared_ptr<store::db> db,
                   std::shared_ptr<store::object_store> store,
                   checkpoint::settings settings,
                   mirror_publisher_actor publisher) {
  return sys.spawn<caf::detached>(checkpointer, std::move(db), std::move(store),
                                  std::move(settings), std::move(publisher));
}

} // namespace makima
