// The CHECKPOINTER actor: periodic checkpoints of running tasks into the
// node's object store (actors/checkpoint.hpp does the work).
#pragma once

#include <map>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "actors/checkpoint.hpp"

namespace makima {

namespace store {
class db;
class object_store;
} // namespace store

/// State of the CHECKPOINTER actor. Receives from TASK; reads the node's
/// database (concurrent reads beside PERSISTENCE, the one writer) and
/// writes to the object store. Detached: every step blocks.
struct checkpointer_state {
  std::shared_ptr<store::db> db;
  std::shared_ptr<store::object_store> store;
  checkpoint::settings settings;
  /// Tasks restored here from checkpoint n: their next checkpoint builds on
  /// n, not on a newer one in the store (which a restore may have refused).
  std::map<std::string, uint64_t> restored_from;
  /// Told the origin of each task checkpointed (null: no mirror packs).
  mirror_publisher_actor publisher;
  static inline const char* name = "checkpointer";
};

/// Behavior of the CHECKPOINTER actor.
checkpointer_actor::behavior_type
checkpointer(checkpointer_actor::stateful_pointer<checkpointer_state> self,
             std::shared_ptr<store::db> db,
             std::shared_ptr<store::object_store> store,
             checkpoint::settings settings, mirror_publisher_actor publisher);

/// Spawns a CHECKPOINTER actor (detached).
checkpointer_actor
spawn_checkpointer(caf::actor_system& sys, std::shared_ptr<store::db> db,
                   std::shared_ptr<store::object_store> store,
                   checkpoint::settings settings,
                   mirror_publisher_actor publisher = {});

} // namespace makima
