// The TASK actor: one attempt of one task.
#pragma once

#include <chrono>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "actors/actors.hpp"
#include "runtime/process/reactor.hpp"

namespace makima {

/// What a TASK actor needs from its node, handed over by DAEMON.
struct task_context {
  persistence_actor persistence;
  link_actor link;
  /// Null for a task without a repository.
  repo_actor repo;
  std::shared_ptr<process::reactor> reactor;
  std::filesystem::path worktrees_dir;
  std::filesystem::path state_root;
  /// The environment every child starts from (KEY=VALUE): what
  /// process::base_environment kept of makima's environment — never
  /// makima's own environment as a whole. The task's own env and the
  /// MAKIMA_* task variables are applied on top (child_env).
  std::vector<std::string> base_env;
  /// Remove the worktree (REPO, branch kept) after a successful push.
  bool remove_worktree_on_push = false;
  /// Takes periodic checkpoints while the child runs, every
  /// `checkpoint_interval`; null or 0: none.
  checkpointer_actor checkpointer;
  std::chrono::milliseconds checkpoint_interval{0};
};

/// State of the TASK actor (`task_state` is the enum of a task's states).
/// Receives `cancel` from DAEMON and output/exit from the process reactor;
/// sends to REPO (prepare, reopen, commit, push),
/// PERSISTENCE (put, output) and LINK (state, output, result), in that
/// order for every fact: persisted first, reported second.
struct task_actor_state {
  task_record rec;
  task_context ctx;
  std::optional<process::child> child;
  /// Output chunks received but not yet handed to PERSISTENCE.
  std::vector<output_chunk> pending;
  /// A PERSISTENCE output write is in flight.
  bool writing = false;
  /// Chunks persisted but not yet accepted by the LINK.
  size_t reporting = 0;
  bool exited = false;
  process::exit_status status;
  bool cancel_requested = false;
  bool timed_out = false;
  /// Aborts the REPO's clone, fetch, checkout or push of this attempt.
  cancel_token git_cancel;
  /// Set when a RocksDB write failed; the attempt then fails.
  caf::error store_failure;
  /// Increments with every SIGTERM sent; a kill timer carries it.
  uint32_t term_generation = 0;
  bool finishing = false;
  /// A checkpoint request is in flight (ticks meanwhile are skipped).
  bool checkpointing = false;
  /// The node is evicted: the attempt ends `migrating` after a final
  /// checkpoint.
  bool evicting = false;
  /// The attempt continues earlier work (a restored checkpoint, or a
  /// preserved worktree): it runs spec.resume_command when there is one.
  bool continues = false;
  static inline const char* name = "task";
};

/// Behavior of the TASK actor running attempt `rec.attempt` of `rec`.
task_actor::behavior_type
task(task_actor::stateful_pointer<task_actor_state> self, task_record rec,
     task_context ctx);

/// Builds the child's environment (process::child_environment): `base`,
/// then the task's env, then MAKIMA_TASK_ID, MAKIMA_ATTEMPT,
/// MAKIMA_RESUMED (1 when `resumed`: the attempt continues earlier work — a
/// restored checkpoint, a preserved worktree or scratch dir — else 0),
/// MAKIMA_STATE_DIR, MAKIMA_WORKTREE. Later entries replace earlier ones
/// with the same key, so a task's env cannot set makima's.
std::vector<std::string> child_env(const std::vector<std::string>& base,
                                   const task_record& rec, bool resumed);

} // namespace makima
