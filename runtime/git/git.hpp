// libgit2 behind a small interface: a bare mirror cache of one remote, and
// the worktrees, commits and pushes of tasks on it. No libgit2 header leaks
// out of this file. A `mirror` is not thread-safe; the REPO actor (one per
// repository URL, detached) is its only user, which also serializes fetches
// (libgit2 fails concurrent fetches on ref lock files).
//
// Layout: the mirror is a bare repository whose origin fetchspecs are
// `+refs/heads/*:refs/remotes/origin/*` and `+refs/tags/*:refs/tags/*`, so a
// prune-fetch never deletes task branches, which live in `refs/heads/`.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace makima::git {

/// Initializes libgit2 once per process (idempotent, thread-safe).
void init();

/// Returns the canonical form of a repository location: an existing local
/// path becomes an absolute, normalized path; URLs are returned unchanged.
std::string canonical_url(const std::string& url);

/// Returns the directory name of the mirror of `url` under the repos dir:
/// `<last path component, sanitized>-<first 16 hex of sha256(canonical
/// url)>.git`.
std::string mirror_dir_name(const std::string& url);

/// The origin URLs (`remote.origin.url`) of the mirrors in `repos_dir`,
/// sorted: the repositories a daemon reports as cached. Entries without a
/// readable config or an origin are skipped; a missing `repos_dir` gives
/// none.
std::vector<std::string> mirror_origins(const std::filesystem::path& repos_dir);

/// A task's worktree.
struct worktree_info {
  std::filesystem::path path;
  /// Short branch name, e.g. "makima/<task id>".
  std::string branch;
  /// Hex id of the commit the branch started from.
  std::string base_commit;
};

/// Author/committer identity for task commits.
struct signature {
  std::string name = "makima";
  std::string email = "makima@localhost";
  /// Seconds since the epoch (UTC offset 0) for author and committer;
  /// nullopt: now. A checkpoint's WIP commit uses 0, so an unchanged
  /// worktree gives the same commit id.
  std::optional<int64_t> time = std::nullopt;
};

/// A pack file written by `mirror::write_pack`.
struct pack_info {
  /// Objects in the pack (0: an empty pack, nothing to ship).
  uint64_t objects = 0;
  /// Size of the pack file in bytes.
  uint64_t size = 0;
};

/// A long operation's phase, as reported to a `progress_fn`.
enum class phase : uint8_t { cloning, fetching, checking_out, pushing };

/// "cloning", "fetching", "checking_out", "pushing".
const char* to_string(phase p);

/// One progress report: `done` of `total` units (objects for cloning,
/// fetching and pushing, files for checking out; `total` 0 when unknown)
/// and the bytes transferred so far.
struct progress {
  git::phase phase = phase::cloning;
  uint64_t done = 0;
  uint64_t total = 0;
  uint64_t bytes = 0;
};

/// Receives progress reports on the calling thread, from inside libgit2's
/// callbacks (often: the sink rate-limits). Must not throw.
using progress_fn = std::function<void(const progress&)>;

/// Set to true (from any thread) to abort the operation holding it.
using cancel_flag = std::shared_ptr<std::atomic<bool>>;

/// Observes and may abort a long operation (clone, fetch, checkout, push).
/// libgit2's callbacks check `cancel` and abort the transfer, the checkout
/// analysis or the push; the operation then fails with ec::cancelled and
/// leaves nothing half-made (see each operation). Both members are optional.
struct control {
  cancel_flag cancel;
  progress_fn on_progress;
  bool cancelled() const { return cancel && cancel->load(); }
};

/// What a new mirror can start from instead of a full clone: packs of the
/// origin's objects kept in the checkpoint store by another node
/// (actors/checkpoint.hpp, "mirror packs"), and the origin branches they
/// hold whole.
/// One pack of a seed: the pack file and, when it came with one, its index
/// (as libgit2's indexer wrote it for a clone). With an index, the pair is
/// put in place as is, after a consistency check (same object count, the
/// index names the pack's checksum); libgit2 then checks each object's id
/// as it reads it. Without, the pack is indexed here (index_pack).
struct seed_pack {
  std::filesystem::path pack;
  std::filesystem::path idx;
};

struct seed {
  /// Self-contained packs (as `write_pack` or a clone writes them), added
  /// in order.
  std::vector<seed_pack> packs;
  /// `refs/remotes/origin/<branch>` → commit id: every object reachable
  /// from each commit is in `packs`. The refs tell the fetch that follows
  /// what the mirror has, so origin sends only the difference.
  std::vector<std::pair<std::string, std::string>> refs;
  /// The branch origin/HEAD names (e.g. "refs/remotes/origin/main"); may be
  /// empty.
  std::string head;
};

/// What `mirror::open` did with a seed.
struct seed_report {
  /// The mirror was made from the seed (false: cloned, or it existed).
  bool used = false;
  /// Objects the seed's packs held.
  uint64_t objects = 0;
  /// Objects the fetch after the seed received from origin.
  uint64_t fetched_objects = 0;
  /// The fetch from origin failed (e.g. unreachable) and the mirror is the
  /// seed alone; `fetch_error` says why.
  bool offline = false;
  std::string fetch_error;
  /// Why a seed that was given was not used (a bad pack, a ref whose
  /// commit is missing); the mirror was then cloned.
  std::string refused;
};

/// The pack files a clone from a network origin wrote, and the origin
/// branches they hold whole: the first mirror pack a node publishes
/// (`mirror::clone_record`).
struct clone_record {
  /// The clone's pack files and their indexes.
  std::vector<seed_pack> packs;
  std::vector<std::pair<std::string, std::string>> refs;
  std::string head;
};

/// Checks a pack file's trailing checksum (the SHA-1 of everything before
/// it, which git and libgit2 write when they make or receive a pack): a
/// pack damaged on disk since is ec::checkpoint_corrupt. Errors:
/// ec::io_error.
caf::error verify_pack_checksum(const std::filesystem::path& pack);

/// The bare mirror cache of one remote repository.
class mirror {
public:
  ~mirror();
  mirror(mirror&&) noexcept;
  mirror& operator=(mirror&&) noexcept;

  /// Opens the mirror of `url` in `repos_dir`, cloning it when missing and
  /// fetching from origin when it exists (`fetch_existing`). After this,
  /// `refs/remotes/origin/HEAD` names the remote's default branch.
  /// Errors: ec::repo_not_found (missing path, unreachable or not a git
  /// repository), ec::git_error, ec::io_error, ec::cancelled (`ctl` asked;
  /// a new mirror is removed, an existing one keeps its refs and a later
  /// fetch gets what is missing).
  ///
  /// `from_seed` (a mirror that does not exist yet, of a network origin):
  /// the new mirror is made from the seed's packs and refs, then fetched
  /// from origin, which sends only what the seed lacks. When that fetch
  /// fails (origin unreachable), the seeded mirror is kept as it is and
  /// `report->offline` says so: objects are checked by id and a later fetch
  /// brings the rest. A seed that cannot be used (a damaged pack, a ref
  /// whose commit is missing) is dropped and the mirror cloned
  /// (`report->refused`). Without a seed, a clone from a network origin
  /// writes its clone_record.
  static caf::expected<mirror> open(const std::string& url,
                                    const std::filesystem::path& repos_dir,
                                    bool fetch_existing = true,
                                    const control& ctl = {},
                                    const seed* from_seed = nullptr,
                                    seed_report* report = nullptr);

  /// Whether `url` is a local path or file:// URL (cloned by linking object
  /// files, so a seed would not help).
  static bool is_local(const std::string& url);

  /// Opens the existing bare mirror at `path` as it is (no fetch, no
  /// clone), e.g. for maintenance. Errors: ec::repo_not_found.
  static caf::expected<mirror> open_path(const std::filesystem::path& path);

  /// Fetches from origin (prune), updating refs/remotes/origin/* and tags.
  /// Errors: as open's; ec::cancelled leaves the refs as they were.
  caf::error fetch(const control& ctl = {});

  /// Resolves `ref` to a commit id (hex). Empty `ref` means the remote's
  /// default branch. Tries, in order: a full or abbreviated commit id,
  /// `refs/remotes/origin/<ref>`, `refs/tags/<ref>`, then any revspec.
  /// Errors: ec::ref_not_found.
  caf::expected<std::string> resolve(const std::string& ref);

  /// Creates branch `branch` at `commit` and a linked worktree named `name`
  /// (no '/') at `dir` (must not exist; its parent is created). On failure
  /// nothing is left behind (no branch, no dir, no worktree metadata),
  /// also when `ctl` cancels it (ec::cancelled): during the checkout's
  /// analysis, or checked once the files are written.
  caf::expected<worktree_info> add_worktree(const std::string& name,
                                            const std::filesystem::path& dir,
                                            const std::string& commit,
                                            const std::string& branch,
                                            const control& ctl = {});

  /// Returns the info of the existing worktree `name` if its directory and
  /// branch still exist (used to resume a task in its preserved worktree).
  /// Errors: ec::worktree_missing.
  caf::expected<worktree_info> open_worktree(const std::string& name,
                                             const std::string& branch);

  /// Commits every change in the worktree at `dir` (modified, deleted,
  /// untracked, not ignored) on its branch. Returns the new commit id, or
  /// nullopt when there is nothing to commit.
  caf::expected<std::optional<std::string>>
  commit_all(const std::filesystem::path& dir, const std::string& message,
             const signature& sig);

  /// Records every change in the worktree at `dir` (modified, deleted,
  /// untracked, not ignored) as a commit on top of its HEAD and points
  /// `ref_name` (e.g. `refs/wip/<task id>`) at it, without touching the
  /// worktree's index, files, HEAD or branch: a checkpoint of work in
  /// progress. Returns the commit id. When nothing differs from HEAD, no
  /// commit is made: the ref points at HEAD's commit and its id is returned.
  /// The staged/unstaged split is not recorded. Errors:
  /// ec::worktree_missing, ec::invalid_argument (bad ref name),
  /// ec::git_error.
  caf::expected<std::string> snapshot(const std::filesystem::path& dir,
                                      const std::string& ref_name,
                                      const std::string& message,
                                      const signature& sig);

  /// Whether the object `id` (hex) exists in the mirror.
  bool has_object(const std::string& id);

  /// The origin branches: `refs/remotes/origin/*` (not HEAD) → commit id,
  /// sorted by name; refs that do not name a commit are left out.
  std::vector<std::pair<std::string, std::string>> origin_branches();

  /// The branch `refs/remotes/origin/HEAD` names, or "".
  std::string origin_head();

  /// What the clone that made this mirror wrote (clone from a network
  /// origin by this version); nullopt otherwise, or when a pack it names
  /// is gone.
  std::optional<git::clone_record> clone_record();

  /// Writes to `out` a self-contained pack (no delta names an object outside
  /// it) of every object reachable from the commits `tips` and not from the
  /// commits `hide` (commits of `hide` missing from the mirror are ignored:
  /// the pack then holds more, never less). `max_size` bounds the pack
  /// (ec::checkpoint_limit, `out` removed). Errors: ec::ref_not_found (a
  /// tip is missing), ec::git_error, ec::io_error.
  ///
  /// `tips` and `hide` are full hex commit ids. Excluded are the trees and
  /// blobs of the `hide` commits themselves and every commit they reach
  /// (libgit2 marks the hidden commits' trees, not those of their
  /// ancestors, so a blob only an older hidden commit has is packed again).
  /// The pack is written to a temporary file beside `out` and renamed, and
  /// its bytes are reproducible (single-threaded delta search): the same
  /// objects give the same file. Nothing new (objects 0): `out` is still
  /// written, a valid 32-byte pack with no objects, which index_pack
  /// accepts.
  caf::expected<pack_info> write_pack(const std::vector<std::string>& tips,
                                      const std::vector<std::string>& hide,
                                      const std::filesystem::path& out,
                                      uint64_t max_size = 2ull << 30);

  /// Adds the objects of the pack file `pack` (as written by write_pack)
  /// to the mirror: indexes it (git_indexer, which checks every object's
  /// id) into objects/pack. A damaged pack is ec::checkpoint_corrupt and
  /// adds nothing. Errors: ec::git_error, ec::io_error.
  ///
  /// The indexer runs without the mirror's objects, so a thin pack (a delta
  /// against an object outside it) is refused as damaged too. It writes
  /// into a staging directory of the mirror; the .pack, then the .idx, are
  /// moved into objects/pack only once the whole pack checked out.
  caf::error index_pack(const std::filesystem::path& pack);

  /// Recreates a checkpointed worktree: creates branch `branch` at
  /// `branch_head` and worktree `name` at `dir` (like add_worktree, nothing
  /// left behind on failure), checks out `wip_commit`'s tree (FORCE:
  /// modified, deleted and untracked files as captured) and sets the index
  /// to `branch_head`'s tree, so the uncommitted work shows as unstaged
  /// changes and untracked files. Both commits must be in the mirror
  /// (index_pack). The returned (and recorded) base_commit is the merge
  /// base of `branch_head` with the remote's default branch, or
  /// `branch_head` when there is none. Errors: ec::ref_not_found,
  /// ec::git_error, ec::io_error, ec::cancelled.
  caf::expected<worktree_info>
  restore_worktree(const std::string& name, const std::filesystem::path& dir,
                   const std::string& branch, const std::string& branch_head,
                   const std::string& wip_commit, const control& ctl = {});

  /// Pushes `refs/heads/<branch>` to `url` (any path or URL libgit2
  /// accepts) under the same name. Errors: ec::push_rejected (the remote
  /// refused the update), ec::repo_not_found, ec::git_error,
  /// ec::cancelled (`ctl` asked before the remote's refs were updated).
  caf::error push(const std::string& branch, const std::string& url,
                  const control& ctl = {});

  /// Removes worktree `name` (files and metadata) and deletes `branch`
  /// and the snapshot ref `refs/wip/<name>`.
  caf::error remove_worktree(const std::string& name,
                             const std::string& branch);

  /// Deletes every task branch `refs/heads/makima/<id>` and snapshot ref
  /// `refs/wip/<id>` for which `live(id)` is false and that no worktree has
  /// checked out. Returns how many refs were deleted.
  caf::expected<size_t>
  prune_task_refs(const std::function<bool(const std::string&)>& live);

  /// Path of the bare mirror.
  const std::filesystem::path& path() const;

private:
  struct impl;
  explicit mirror(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace makima::git
