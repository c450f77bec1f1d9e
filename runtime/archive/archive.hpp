// A directory as content-addressed blobs, and back: how a task's state dir
// (MAKIMA_STATE_DIR) travels in a checkpoint (docs/checkpoint-format.md §3).
// libarchive and zstd behind a small interface; no libarchive or zstd header
// leaks out of this file. Every call blocks (disk): run it off CAF's
// scheduler threads.
//
// A captured directory is:
//   index    zstd-compressed JSON: every entry (file, dir, symlink) sorted by
//            path, with mode, mtime, size, symlink target and, for a large
//            file, the SHA-256s of its chunks. Empty directories are entries.
//   archive  one pax tar compressed with zstd (level 3, single-threaded)
//            holding the contents of the files under `large_file` bytes, in
//            path order, uid/gid 0, no user names, mtime 0: the same content
//            gives the same bytes. Absent when there is no such file.
//   chunks   each file of `large_file` bytes or more, cut into `chunk_size`
//            pieces, each compressed with zstd on its own, so a small change
//            in a large file re-uploads only the chunks that changed.
// Each blob is a file in the caller's staging dir named by the lowercase hex
// SHA-256 of its bytes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace makima::archive {

/// Bounds on what capture writes and restore accepts. Exceeding one is
/// ec::checkpoint_limit naming the limit.
struct limits {
  /// Sum of the sizes of all files.
  uint64_t max_bytes = 10ull << 30;
  /// Number of entries (files, dirs, symlinks).
  uint64_t max_entries = 1'000'000;
  /// Size of the decompressed index.
  uint64_t max_index = 256ull << 20;
};

/// Files of this size or more are chunked instead of archived.
inline constexpr uint64_t large_file = 1ull << 20;
/// Uncompressed size of one chunk.
inline constexpr uint64_t chunk_size = 4ull << 20;

/// One blob written to the staging dir.
struct blob {
  /// "state-index", "state-archive" or "state-chunk".
  std::string role;
  /// Lowercase hex SHA-256 of the blob's bytes (also its file name).
  std::string sha256;
  /// Size of the blob in bytes (compressed).
  uint64_t size = 0;
  /// `staging / sha256`.
  std::filesystem::path file;
  /// Whether `file` was written by this capture. False only for a chunk
  /// reused from `previous_index` (its bytes are in the caller's store, not
  /// in staging); `sha256` and `size` are still exact.
  bool staged = true;
};

/// What `capture` produced.
struct captured {
  blob index;
  /// Absent when the directory holds no file under `large_file`.
  std::optional<blob> archive;
  /// Every chunk of every large file, in path and offset order, each once
  /// (a chunk shared by two files or two offsets appears once). Chunks
  /// reused from `previous_index` are listed too, with `staged == false`.
  std::vector<blob> chunks;
  /// Entries in the index and bytes of all files (uncompressed).
  uint64_t entries = 0;
  uint64_t bytes = 0;
};

/// Captures the directory `dir` into blobs in `staging` (created if
/// missing). A missing `dir` captures as an empty directory. Regular files,
/// directories and symlinks are captured; other types (sockets, fifos,
/// devices) are skipped. A symlink is recorded as its target text, never
/// followed. When `previous_index` (a file written by an earlier capture of
/// the same dir) is given, a large file whose size, mtime and mode match its
/// entry there reuses that entry's chunk digests without being read, and
/// its chunks are not written to `staging` again (the caller's store has
/// them); an unreadable `previous_index` is ignored (every file is read).
/// Errors: ec::io_error (unreadable entry, a name or symlink target that is
/// not UTF-8, a file whose size changed while it was read),
/// ec::checkpoint_limit. Blobs written before a failure stay in `staging`.
caf::expected<captured>
capture(const std::filesystem::path& dir, const std::filesystem::path& staging,
        const limits& lim = {},
        const std::optional<std::filesystem::path>& previous_index = {});

/// Finds the file of the chunk with digest `sha256` (already verified by
/// the caller), or fails.
using chunk_source =
    std::function<caf::expected<std::filesystem::path>(const std::string&)>;

/// Recreates the captured directory at `target`, which must not exist (its
/// parent must): every entry with its mode and mtime, symlinks as recorded,
/// empty directories. Refuses, with ec::checkpoint_unsafe_path naming the
/// path, absolute paths, `..` components, and any entry whose path passes
/// through a symlink (libarchive's ARCHIVE_EXTRACT_SECURE_NODOTDOT and
/// _SECURE_SYMLINKS for the archive, with the member names checked by
/// makima in place of _SECURE_NOABSOLUTEPATHS, since members are written
/// under an absolute temporary path; the same checks for the index; a link
/// member is refused too). Refuses archive members the index does not list
/// or lists with another size, and chunks that decompress to another size
/// than recorded (ec::checkpoint_corrupt), and indexes or archives beyond
/// `lim` (ec::checkpoint_limit, checked while reading). Owners, setuid and
/// setgid bits are not restored. An existing `target` is ec::io_error;
/// errors from `chunks` are returned as they are. On any failure `target` is
/// removed: nothing half-restored stays (the work happens in a sibling
/// `.<name>.restore-XXXXXX` renamed at the end).
caf::error restore(const std::filesystem::path& index_file,
                   const std::optional<std::filesystem::path>& archive_file,
                   const chunk_source& chunks,
                   const std::filesystem::path& target, const limits& lim = {});

/// The chunk digests the index file lists (for a restore to fetch them
/// before calling `restore`). Errors: ec::checkpoint_corrupt (unreadable
/// index), ec::checkpoint_limit.
caf::expected<std::vector<std::string>>
chunk_digests(const std::filesystem::path& index_file, const limits& lim = {});

} // namespace makima::archive
