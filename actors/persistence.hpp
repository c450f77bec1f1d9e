// The PERSISTENCE actor: the only user of a node's RocksDB (runtime/store).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"

namespace makima {

namespace store {
class db;
} // namespace store

/// State of the PERSISTENCE actor. Receives from TASK, DAEMON and the
/// command-line readers; sends nothing on its own. Runs detached: every
/// handler blocks on RocksDB.
struct persistence_state {
  std::shared_ptr<store::db> db;
  /// Next history event number per task (cache of the last stored one).
  std::unordered_map<std::string, uint64_t> next_event;
  static inline const char* name = "persistence";
};

/// Behavior of the PERSISTENCE actor over an open database.
persistence_actor::behavior_type
persistence(persistence_actor::stateful_pointer<persistence_state> self,
            std::shared_ptr<store::db> db);

/// Spawns the PERSISTENCE actor detached.
persistence_actor spawn_persistence(caf::actor_system& sys,
                                    std::shared_ptr<store::db> db);

} // namespace makima
