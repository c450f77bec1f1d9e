// Checkpoints of one task (docs/checkpoint-format.md): the domain mapping of
// a task's worktree, state dir and records onto an object store, written
// once for every caller — `makima task checkpoint` / `task restore` /
// `checkpoint …` in the CLI, and the periodic checkpoints of a running task.
// Not an actor: every function blocks (git, RocksDB, disk, network) and runs
// on the caller's thread, which must not be one of CAF's scheduler threads
// (the CLI's main thread, a detached actor).
//
// It walks catalogue → wrappers: records come from `store::db`, the worktree
// from `git::mirror`, the state dir from `archive::`, blobs go to a
// `store::object_store`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/expected.hpp>

#include "actors/messages.hpp"
#include "runtime/archive/archive.hpp"
#include "runtime/store/db.hpp"
#include "runtime/store/object_store.hpp"

namespace makima::checkpoint {

/// The format name and the newest version this code reads and writes.
inline constexpr const char* format_name = "makima-checkpoint";
inline constexpr int format_version = 1;

/// Bounds a restore (and a checkpoint) enforces; each refusal is
/// ec::checkpoint_limit naming the limit.
struct limits {
  uint64_t max_manifest = 1ull << 20;
  uint64_t max_chain = 10'000;
  uint64_t max_pack = 2ull << 30;
  uint64_t max_records = 1ull << 30;
  archive::limits state;
};

/// Where a data dir keeps things, and how checkpoints are made.
struct settings {
  std::filesystem::path repos_dir;
  std::filesystem::path worktrees_dir;
  std::filesystem::path state_root;
  /// Staging dirs and the per-task cache of the last state index:
  /// DATA/checkpoints.
  std::filesystem::path work_dir;
  /// HMAC-SHA256 key of the fleet; empty: manifests are not signed, and
  /// signatures are not checked.
  std::string key;
  /// Written into manifests as `node`.
  std::string node;
  /// Stop the task's processes (SIGSTOP … SIGCONT) while its worktree and
  /// state dir are captured (checkpoint.stop_task): a consistent point in
  /// time. Off: they go on, and a file written meanwhile may be captured
  /// half-written.
  bool stop_task = true;
  /// Write no checkpoint when nothing changed since the latest one (same
  /// WIP commit, state dir, records and output): what periodic checkpoints
  /// do, so an idle task costs no writes. `task checkpoint` writes one
  /// anyway (a manifest only).
  bool skip_unchanged = false;
  /// Every `full_every`-th checkpoint is full (parent null).
  uint32_t full_every = 20;
  checkpoint::limits limits;
};

/// One blob a manifest names.
struct blob_ref {
  /// "git-pack", "state-index", "state-archive", "state-chunk",
  /// "scratch-index", "scratch-archive", "scratch-chunk", "records-sst".
  std::string role;
  std::string sha256;
  uint64_t size = 0;
  /// Column family of a records-sst.
  std::string cf;
};

/// A manifest, parsed and checked.
struct manifest {
  std::string task;
  uint64_t n = 0;
  /// nullopt: a full checkpoint.
  std::optional<uint64_t> parent;
  std::string created_at;
  std::string node;
  uint32_t attempt = 1;
  std::string state;
  /// Output chunks with seq < covers_seq are in the chain's records.
  uint64_t covers_seq = 0;
  int64_t pause_ms = 0;
  /// Empty for a task without a repository.
  std::string origin;
  std::string base_commit;
  std::string branch;
  std::string branch_head;
  std::string wip_commit;
  /// Fingerprint of the record and history (their SHA-256): equal in a
  /// child means no records-sst of tasks/events was needed.
  std::string records_digest;
  std::vector<blob_ref> blobs;
  bool signed_ = false;
  /// The manifest as stored.
  std::string text;
};

/// `REF` as the user gives it: `<task-id>` or `<task-id>/<n>`.
struct reference {
  std::string task;
  /// nullopt: the task's latest checkpoint.
  std::optional<uint64_t> n;
};

/// Parses `<task-id>` or `<task-id>/<n>`. Errors: ec::invalid_argument.
caf::expected<reference> parse_reference(const std::string& text);

/// The store key of manifest `n` of `task`.
std::string manifest_key(const std::string& task, uint64_t n);

/// The store key of blob `sha256`.
std::string blob_key(const std::string& sha256);

/// Checks and parses a manifest's text: size, format and version, HMAC
/// (when `key` is set), members. Errors: ec::checkpoint_limit,
/// ec::checkpoint_corrupt (not a manifest), ec::checkpoint_version,
/// ec::checkpoint_unsigned, ec::checkpoint_bad_signature.
caf::expected<manifest> parse_manifest(const std::string& text,
                                       const std::string& key,
                                       const limits& lim = {});

/// The checkpoint numbers of `task` in the store, ascending.
caf::expected<std::vector<uint64_t>> numbers(store::object_store& os,
                                             const std::string& task);

/// Reads and checks the manifest `ref` names. Errors: as parse_manifest,
/// ec::checkpoint_not_found.
caf::expected<manifest> read_manifest(store::object_store& os,
                                      const reference& ref,
                                      const std::string& key,
                                      const limits& lim = {});

/// Reads the chain ending at `ref`: the nearest full checkpoint first,
/// `ref` last. Errors: as read_manifest; ec::checkpoint_corrupt (a parent
/// is missing or not older), ec::checkpoint_limit (chain too long).
caf::expected<std::vector<manifest>> read_chain(store::object_store& os,
                                                const reference& ref,
                                                const std::string& key,
                                                const limits& lim = {});

/// Suspends and resumes the task's processes around the capture (SIGSTOP /
/// SIGCONT of its process group). Both optional.
struct pause_hooks {
  std::function<void()> stop;
  std::function<void()> resume;
};

/// What `take` did.
struct taken {
  manifest m;
  /// Blobs uploaded now (the rest were in the store already) and their
  /// bytes, manifest included.
  uint64_t blobs_uploaded = 0;
  uint64_t bytes_uploaded = 0;
  /// How long the task was stopped.
  int64_t pause_ms = 0;
  /// How long the whole checkpoint took.
  int64_t total_ms = 0;
  /// Nothing changed and `skip_unchanged` was set: nothing was written,
  /// `m` is the latest checkpoint.
  bool skipped = false;
};

/// Takes checkpoint n+1 of the task `rec` (its record as stored in `db`):
/// the worktree as a WIP commit and a pack of what the chain lacks, the
/// state dir, the records since the parent. Uploads the blobs the store
/// lacks, then the manifest. `mirror_path` is the task's mirror (empty for a
/// task without a repository). Nothing of the task is modified except its
/// `refs/wip/<id>` ref. Errors: the store's (the checkpoint is not written;
/// a later one retries), ec::checkpoint_limit, git and I/O errors.
///
/// `parent_at_most`: the parent is the latest checkpoint numbered at most
/// this (a task restored from an older checkpoint than the store's latest,
/// after a newer one was refused, must not build on the refused one).
caf::expected<taken> take(store::db& db, const task_record& rec,
                          store::object_store& os, const settings& s,
                          const pause_hooks& pause = {},
                          std::optional<uint64_t> parent_at_most = {});

/// What `restore` did.
struct restored {
  task_record rec;
  manifest m;
  /// Whether the mirror was missing (a cold data dir) and had to be made:
  /// cloned from origin, or seeded from the store's mirror packs.
  bool cloned = false;
  /// The new mirror was seeded from the store's mirror packs (`seed_n`,
  /// `seed_objects` objects); `fetched_objects` came from origin after
  /// them. `offline`: origin was unreachable and the packs sufficed.
  bool seeded = false;
  uint64_t seed_n = 0;
  uint64_t seed_objects = 0;
  uint64_t fetched_objects = 0;
  bool offline = false;
  uint64_t bytes_downloaded = 0;
  int64_t total_ms = 0;
};

/// Recreates the task `ref` names in this data dir: reads and checks the
/// chain, downloads and verifies every blob into a staging dir, opens or
/// clones the mirror of its origin and adds the packs, restores the state
/// dir and the worktree, ingests the records and records the task as
/// `interrupted` at the checkpoint's attempt. Nothing is left behind on
/// failure (no worktree, no state dir, no record). Errors: ec::task_exists,
/// every checkpoint_* refusal, the store's, ec::repo_not_found.
///
/// `replace` (a daemon resuming an assignment): whatever this data dir
/// holds of the task — its records, worktree, branch and state dir, left by
/// an earlier attempt or the assignment itself — is removed once the chain
/// and every blob were read and verified, instead of refusing with
/// ec::task_exists; a refused checkpoint leaves it as it was.
caf::expected<restored> restore(store::db& db, store::object_store& os,
                                const reference& ref, const settings& s,
                                bool replace = false);

/// One result of `verify`.
struct verified {
  std::vector<manifest> chain;
  uint64_t blobs = 0;
  uint64_t bytes = 0;
};

/// Reads the chain of `ref` and every blob it names, checking SHA-256 and
/// size, without writing anything. Errors: as restore's reading steps.
caf::expected<verified> verify(store::object_store& os, const reference& ref,
                               const settings& s);

/// What `gc` did.
struct collected {
  uint64_t manifests_kept = 0;
  uint64_t manifests_deleted = 0;
  uint64_t blobs_kept = 0;
  uint64_t blobs_deleted = 0;
  uint64_t bytes_deleted = 0;
};

/// Keeps, per task, the newest `keep` manifests and their chains, and per
/// mirror the newest two mirror manifests; deletes the other manifests and
/// the blobs no kept manifest names that are older than `grace_s` seconds.
/// `now` is seconds since the epoch.
caf::expected<collected> gc(store::object_store& os, uint64_t keep,
                            const settings& s, int64_t now,
                            int64_t grace_s = 3600);

// -- mirror packs -------------------------------------------------------------
//
// A cold node restoring a task needs the task's repository. Instead of a
// full clone from origin (tens of seconds for a large repository, or
// impossible while origin is down), it seeds its mirror from packs of the
// origin's objects that another node published to the same store, and
// fetches only the difference (docs/checkpoint-format.md, "Mirror packs").
// The first node that checkpoints a task on a repository publishes the
// pack its clone wrote, as is; later ones add a pack of the objects new
// since the latest published set, at most once per interval.

/// Format name and version of a mirror manifest.
inline constexpr const char* mirror_format_name = "makima-mirror-packs";
inline constexpr int mirror_format_version = 1;

/// One pack of a mirror manifest: its blob and, for the pack a clone
/// received, the blob of its index (installed as is: no indexing).
struct mirror_pack {
  blob_ref pack;
  std::optional<blob_ref> idx;
};

/// One published set of mirror packs: `mirrors/<mirror dir>/<n>.json`,
/// self-contained (it names every pack a seed needs).
struct mirror_manifest {
  std::string origin;
  uint64_t n = 0;
  std::string created_at;
  /// Seconds since the epoch (from created_at).
  int64_t created = 0;
  std::string node;
  /// refs/remotes/origin/<branch> → commit: the packs hold each whole.
  std::vector<std::pair<std::string, std::string>> refs;
  /// The branch origin/HEAD names.
  std::string head;
  /// Roles "mirror-pack" and "mirror-index", in the order they are added.
  std::vector<mirror_pack> packs;
  bool signed_ = false;
  std::string text;
};

/// The store key of mirror manifest `n` of `origin`.
std::string mirror_manifest_key(const std::string& origin, uint64_t n);

/// Checks and parses a mirror manifest (size, format, version, HMAC when
/// `key` is set, members). Errors: as parse_manifest's.
caf::expected<mirror_manifest> parse_mirror_manifest(const std::string& text,
                                                     const std::string& key,
                                                     const limits& lim = {});

/// The newest mirror manifest of `origin` that reads and checks (a
/// refused newer one is logged and skipped), or nullopt when there is none.
/// Errors: the store's.
caf::expected<std::optional<mirror_manifest>>
latest_mirror_manifest(store::object_store& os, const std::string& origin,
                       const std::string& key, const limits& lim = {});

/// What `publish_mirror` did.
struct published {
  /// Nothing was written; `why` says why ("a local origin", "recent",
  /// "unchanged", "no mirror").
  bool skipped = false;
  std::string why;
  /// The manifest written (or the latest one, when skipped).
  uint64_t n = 0;
  uint64_t packs = 0;
  uint64_t packs_uploaded = 0;
  uint64_t bytes_uploaded = 0;
  int64_t total_ms = 0;
};

/// Publishes the mirror of `origin` (in `s.repos_dir`) to the store, when
/// the origin is a network one: the first time, the pack its clone wrote
/// (or, for a mirror without a clone record, a pack of every origin
/// branch); then, when the origin branches moved and the latest manifest
/// is older than `min_interval_s`, a pack of the objects new since it. A
/// set that reaches `max_packs` packs is replaced by one pack of
/// everything. `now`: seconds since the epoch. Reads the mirror only
/// (safe beside the REPO actor's fetches). Errors: the store's, git's.
caf::expected<published> publish_mirror(store::object_store& os,
                                        const std::string& origin,
                                        const settings& s,
                                        int64_t min_interval_s, int64_t now,
                                        size_t max_packs = 32);

/// The manifest as JSON text for `checkpoint show --json` (the stored
/// text, pretty-printed).
std::string manifest_json(const manifest& m);

} // namespace makima::checkpoint
