// The REPO actor: all git work on one repository, serialized.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"

namespace makima {

namespace git {
class mirror;
struct signature;
} // namespace git

/// State of the REPO actor. Receives from TASK; sends nothing on its own.
/// Detached: libgit2 blocks (clone, fetch, checkout, push).
struct repo_state {
  /// Canonical URL or path of the repository.
  std::string url;
  std::filesystem::path repos_dir;
  std::string author_name;
  std::string author_email;
  /// Opened on first use; fetched before every new worktree.
  std::unique_ptr<git::mirror> mirror;
  static inline const char* name = "repo";
  repo_state();
  ~repo_state();
};

/// Behavior of the REPO actor for repository `url`.
repo_actor::behavior_type repo(repo_actor::stateful_pointer<repo_state> self,
                               std::string url, std::filesystem::path repos_dir,
                               std::string author_name,
                               std::string author_email);

/// Spawns a REPO actor (detached).
repo_actor spawn_repo(caf::actor_system& sys, std::string url,
                      std::filesystem::path repos_dir, std::string author_name,
                      std::string author_email);

} // namespace makima
