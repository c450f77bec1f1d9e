// The MIRROR_PUBLISHER actor: publishes the mirror packs of the node's
// repositories (actors/checkpoint.hpp, "mirror packs").
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "actors/checkpoint.hpp"

namespace makima {

namespace store {
class object_store;
} // namespace store

/// State of the MIRROR_PUBLISHER actor. Reads the node's mirrors (beside
/// the REPO actors' fetches: packs and refs are written atomically) and
/// writes to its own connection to the object store. Detached.
struct mirror_publisher_state {
  std::shared_ptr<store::object_store> store;
  checkpoint::settings settings;
  /// At most one publication per origin per interval.
  std::chrono::seconds interval{3600};
  /// When each origin was last tried (a failure is retried after a minute).
  std::map<std::string, std::chrono::steady_clock::time_point> next_try;
  static inline const char* name = "mirror-publisher";
};

/// Behavior of the MIRROR_PUBLISHER actor.
mirror_publisher_actor::behavior_type mirror_publisher(
    mirror_publisher_actor::stateful_pointer<mirror_publisher_state> self,
    std::shared_ptr<store::object_store> store,
    checkpoint::settings settings, std::chrono::seconds interval);

/// Spawns a MIRROR_PUBLISHER actor (detached).
mirror_publisher_actor
spawn_mirror_publisher(caf::actor_system& sys,
                       std::shared_ptr<store::object_store> store,
                       checkpoint::settings settings,
                       std::chrono::seconds interval);

} // namespace makima
