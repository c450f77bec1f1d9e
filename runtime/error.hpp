// Error codes of makima. Every failure that crosses a function or actor
// boundary is a `caf::error` in the "makima" category whose context carries a
// human-readable sentence; `describe()` turns any caf::error into that
// sentence for the user. Numbers are stable (they appear in logs and, for the
// CLI, decide the exit status): add new values, never renumber.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <caf/atom.hpp>
#include <caf/error.hpp>

namespace makima {

/// makima's error codes. Numbers are stable; every tenth starts a group.
enum class ec : uint8_t {
  /// No error.
  none = 0,
  /// A failure without a more specific code.
  unspecified = 1,
  /// Bad input from the user (flags, ids, arguments).
  invalid_argument = 2,
  /// A configuration value is invalid; the message names the key.
  invalid_config = 3,
  /// A task with this id already exists.
  task_exists = 4,
  /// No task with this id.
  task_not_found = 5,
  /// The task is in a state that does not allow the operation.
  bad_state = 6,
  /// The operation was cancelled (Ctrl-C, `task cancel`, a timeout).
  cancelled = 7,
  /// The repository does not exist or cannot be reached.
  repo_not_found = 10,
  /// The ref (branch, tag, commit) does not exist in the repository.
  ref_not_found = 11,
  /// Any other libgit2 failure.
  git_error = 12,
  /// The remote refused a push (non-fast-forward, permissions).
  push_rejected = 13,
  /// A task's preserved worktree is gone.
  worktree_missing = 14,
  /// The local database failed (I/O error, unexpected status).
  store_error = 20,
  /// The local database is corrupt.
  store_corrupt = 21,
  /// The data dir is locked by another running makima.
  store_locked = 22,
  /// The disk is full (ENOSPC while writing).
  store_full = 23,
  /// A filesystem operation failed (mkdir, write, permissions).
  io_error = 30,
  /// The task's command was not found on PATH.
  command_not_found = 40,
  /// The task's command exists but cannot be executed.
  command_not_executable = 41,
  /// fork/exec or pipe setup failed.
  spawn_failed = 42,
  /// A network connection failed (refused, reset, closed unexpectedly).
  net_error = 50,
  /// A network operation did not complete in time.
  net_timeout = 51,
  /// The peer broke the HTTP/WebSocket/makima protocol.
  protocol_error = 52,
  /// The object store failed (an unexpected answer, a local I/O error).
  object_store_error = 60,
  /// The object store cannot be reached or kept failing (connect errors,
  /// timeouts, 5xx and 429 after the bounded retries).
  object_store_unreachable = 61,
  /// The object store refused the credentials or the signature (401, 403).
  object_store_denied = 62,
  /// No object under this key.
  object_not_found = 63,
  /// No checkpoint matches the reference.
  checkpoint_not_found = 64,
  /// A checkpoint blob or manifest is damaged (SHA-256 or size mismatch,
  /// unreadable content); the message names the blob.
  checkpoint_corrupt = 65,
  /// A manifest of an unknown format or a newer version.
  checkpoint_version = 66,
  /// A checkpoint key is configured and the manifest carries no HMAC.
  checkpoint_unsigned = 67,
  /// The manifest's HMAC does not match the configured checkpoint key.
  checkpoint_bad_signature = 68,
  /// A checkpoint exceeds a configured limit (manifest, pack, archive,
  /// entries, records, chain length); the message names the limit.
  checkpoint_limit = 69,
  /// A checkpoint names a path that would escape its directory (absolute,
  /// `..`, a symlink leading out).
  checkpoint_unsafe_path = 70,
};

/// The error category atom of makima's errors.
constexpr caf::atom_value error_category = caf::atom("makima");

/// Builds a makima error carrying a human-readable message.
caf::error make_error(ec code, std::string message);

/// Returns the makima code of `err`, or `ec::unspecified` for foreign errors
/// and `ec::none` for an empty error.
ec code_of(const caf::error& err);

/// Returns a sentence describing `err` for the user (no code numbers).
std::string describe(const caf::error& err);

/// Returns the stable name of `code`, e.g. "repo_not_found".
const char* to_string(ec code);

/// The code named `name` (the inverse of to_string, e.g. for an `error_code`
/// read back from a record or an API body); false for an unknown name.
bool from_string(std::string_view name, ec& out);

} // namespace makima
