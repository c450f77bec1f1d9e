// The MIRROR_PUBLISHER actor: one publication at a time, on its own thread.
#include "actors/mirror_publisher.hpp"

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"
#include "runtime/store/object_store.hpp"

namespace makima {

mirror_publisher_actor::behavior_type mirror_publisher(
    mirror_publisher_actor::stateful_pointer<mirror_publisher_state> self,
    std::shared_ptr<store::object_store> store, checkpoint::settings settings,
    std::chrono::seconds interval) {
  auto& st = self->state;
  st.store = std::move(store);
  st.settings = std::move(settings);
  st.interval = interval;
  return {
      [self](publish_atom, const std::string& origin) {
        auto& st = self->state;
        auto now = std::chrono::steady_clock::now();
        if (auto i = st.next_try.find(origin);
            i != st.next_try.end() && now < i->second)
          return;
        auto r = checkpoint::publish_mirror(*st.store, origin, st.settings,
                                            st.interval.count(),
                                            now_ms() / 1000);
        if (!r) {
          st.next_try[origin] = now + std::chrono::minutes{1};
          log::warn("mirror-publisher",
                    "cannot publish the mirror packs of "
                        + log::redact(origin) + " to "
                        + st.store->describe() + " (" + describe(r.error())
                        + "); retrying in a minute");
          return;
        }
        // "recent": another node published; look again an interval later.
        st.next_try[origin] = now + st.interval;
        if (r->skipped) {
          log::debug("mirror-publisher", "mirror packs of "
                                             + log::redact(origin)
                                             + " not published: " + r->why);
          return;
        }
        log::info("mirror-publisher",
                  "mirror packs " + std::to_string(r->n) + " of "
                      + log::redact(origin) + " in " + st.store->describe()
                      + ": " + std::to_string(r->packs) + " packs, "
                      + std::to_string(r->packs_uploaded) + " uploaded ("
                      + std::to_string(r->bytes_uploaded) + " bytes) in "
                      + std::to_string(r->total_ms) + " ms");
      },
  };
}

mirror_publisher_actor
spawn_mirror_publisher(caf::actor_system& sys,
                       std::shared_ptr<store::object_store> store,
                       checkpoint::settings settings,
                       std::chrono::seconds interval) {
  return sys.spawn<caf::detached>(mirror_publisher, std::move(store),
                                  std::move(settings), interval);
}

} // namespace makima
