// The DAEMON actor: supervisor of a node's tasks and repositories.
#pragma once

#include <atomic>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor_addr.hpp>
#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "runtime/process/reactor.hpp"

namespace makima {

/// Where a node's tasks work and what they start from: the part of a
/// DAEMON's context that comes from the configuration (the CLI fills it;
/// local_node and daemon_node take it).
struct node_workspace {
  std::filesystem::path repos_dir;
  std::filesystem::path worktrees_dir;
  std::filesystem::path state_dir;
  /// Author of the commits tasks make.
  std::string author_name;
  std::string author_email;
  /// Attempts run at once.
  int max_tasks = 4;
  /// The environment every task starts from (runtime/process/environment).
  std::vector<std::string> base_env;
  /// Remove a task's worktree (not its branch) once it succeeded and was
  /// pushed (task.remove_worktree_on_push).
  bool remove_worktree_on_push = false;
  /// Seconds between checkpoints of a running task; 0: none
  /// (checkpoint.interval; needs daemon_context::checkpointer).
  double checkpoint_interval = 0;
};

/// What a node is made of, handed to DAEMON at spawn: its peers and its
/// workspace (`{persist, link, reactor, workspace}`).
struct daemon_context {
  persistence_actor persistence;
  link_actor link;
  std::shared_ptr<process::reactor> reactor;
  node_workspace workspace;
  /// Takes the periodic checkpoints; null when they are off.
  checkpointer_actor checkpointer = {};
  /// When set, kept equal to the attempts running plus queued (read by
  /// daemon_node for --exit-when-idle).
  std::shared_ptr<std::atomic<uint32_t>> active = {};
};

/// State of the DAEMON actor. Receives `assign`/`cancel` from the LINK (or
/// the local front end) and down messages from its TASK actors; spawns TASK
/// actors (monitored) and one REPO actor per repository URL.
struct daemon_state {
  daemon_context ctx;
  std::map<std::string, repo_actor> repos;
  /// Running attempts by task id, and the reverse map for down messages.
  std::map<std::string, task_actor> running;
  std::map<caf::actor_addr, std::string> ids;
  /// Assignments waiting for a free slot.
  std::deque<task_record> queue;
  /// Evicted: running attempts were told, nothing new starts.
  bool evicting = false;
  static inline const char* name = "daemon";
};

/// Behavior of the DAEMON actor.
daemon_actor::behavior_type
daemon(daemon_actor::stateful_pointer<daemon_state> self, daemon_context ctx);

/// Spawns the DAEMON actor (event-based: it never blocks).
daemon_actor spawn_daemon(caf::actor_system& sys, daemon_context ctx);

} // namespace makima
