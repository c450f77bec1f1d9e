// The local database of a makima data dir: RocksDB behind a small interface
// that knows column families and key layout but not the task domain (records
// arrive as JSON text). No RocksDB header leaks out of this file (pimpl). Not
// thread-safe: one actor owns a db — the PERSISTENCE actor of a daemon or of
// `makima run`, the SERVER actor of a server (both detached).
//
// Column families and keys (`id` is a task id, which never contains '\0'):
//   tasks  : id                         -> task record (JSON)
//   events : id '\0' be64(n)            -> state transition (JSON), n = 0,1,…
//   output : id '\0' be64(seq)          -> 1 byte stream (1=stdout,2=stderr)
//                                          + bytes
//   meta   : "schema"                   -> "1"
//            "k/" key                   -> value (put_meta/get_meta)
//   outbox : id '\0' be64(attempt) be64(seq) -> event frame (daemon side)
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace makima::store {

/// How a process opens the database.
enum class open_mode {
  /// Read-write; takes the RocksDB lock. Fails with ec::store_locked when
  /// another process holds it.
  primary,
  /// Read-only view that works while another process is the primary
  /// (RocksDB secondary instance); sees data as of open time.
  secondary,
  /// Read-only view of a database no process holds (RocksDB
  /// OpenForReadOnly): creates, rotates and writes no file. Fails with
  /// ec::store_locked when another process is the primary.
  read_only,
};

/// Options of the database.
struct db_options {
  open_mode mode = open_mode::primary;
  /// fsync the WAL on every write batch (survives machine loss), otherwise
  /// writes survive process death only.
  bool sync = false;
  /// Directory for the secondary instance's own files (mode secondary only).
  std::filesystem::path secondary_dir;
};

/// One output chunk as stored.
struct stored_chunk {
  uint64_t seq = 0;
  uint8_t stream = 1; // 1 = stdout, 2 = stderr
  std::string bytes;
};

/// A set of writes applied atomically by `db::write`.
class write_batch {
public:
  write_batch();
  ~write_batch();
  write_batch(write_batch&&) noexcept;
  write_batch& operator=(write_batch&&) noexcept;

  /// Sets the task record of `id`.
  void put_task(std::string_view id, std::string_view json);
  /// Sets the state-transition event number `n` of `id`.
  void put_event(std::string_view id, uint64_t n, std::string_view json);
  /// Sets the output chunk `seq` of `id`.
  void put_output(std::string_view id, uint64_t seq, uint8_t stream,
                  std::string_view bytes);
  /// Sets the caller's key `key` (kept apart from the schema key).
  void put_meta(std::string_view key, std::string_view value);
  /// Deletes the caller's key `key`.
  void delete_meta(std::string_view key);
  /// Sets outbox entry (task, attempt, seq) — a daemon's unacked event.
  void put_outbox(std::string_view task, uint32_t attempt, uint64_t seq,
                  std::string_view value);
  /// Deletes the outbox entries of (task, attempt) with seq <= `upto`
  /// (UINT64_MAX: all of the attempt).
  void delete_outbox(std::string_view task, uint32_t attempt, uint64_t upto);
  /// Deletes everything stored of task `id`: its record, state events,
  /// output chunks and outbox entries (range deletes; other tasks' keys,
  /// also of ids that `id` is a prefix of, stay).
  void delete_task(std::string_view id);
  /// Number of operations in the batch.
  size_t size() const;

private:
  friend class db;
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// One SST file of a task's records, as `db::export_task` writes it.
struct sst_file {
  /// Column family: "tasks", "events" or "output".
  std::string family;
  std::filesystem::path path;
  /// Keys in the file.
  uint64_t entries = 0;
};

/// What `db::repair` found and did.
struct repair_report {
  /// Copy of the directory as it was, made before anything changed.
  std::filesystem::path backup;
  /// What was wrong, in words; empty when nothing was found.
  std::string damage;
  /// How the database was repaired, in words.
  std::string method;
  /// What the repair dropped from the write-ahead log, counted in the
  /// batches that could still be decoded behind the damage.
  uint64_t dropped_batches = 0;
  uint64_t dropped_task_records = 0;
  uint64_t dropped_output_chunks = 0;
  uint64_t dropped_events = 0;
  uint64_t dropped_other = 0;
  /// Operations in bytes that could not be decoded, when their sequence
  /// numbers tell how many; nullopt when that is unknown.
  std::optional<uint64_t> dropped_unreadable;
  /// Whether RocksDB's RepairDB had to rebuild the database (MANIFEST,
  /// CURRENT or a table file was damaged): what a damaged table file held
  /// cannot be counted, only the gaps it left.
  bool rebuilt = false;
  /// The database after the repair.
  uint64_t tasks = 0;
  uint64_t output_chunks = 0;
  /// Output seqs missing between stored chunks (holes left by the damage).
  uint64_t output_gaps = 0;
};

/// The pid of the process holding the RocksDB lock of the database in
/// `dir` (fcntl F_GETLK on its LOCK file), or nullopt when none holds it or
/// it cannot be told.
std::optional<long> lock_holder(const std::filesystem::path& dir);

/// The database of one data dir.
class db {
public:
  ~db();
  /// Opens (creating if missing, in primary mode) the database in `dir`.
  /// Errors: ec::store_locked (another process holds it), ec::store_corrupt,
  /// ec::store_full, ec::io_error (unwritable dir), ec::store_error.
  static caf::expected<std::unique_ptr<db>>
  open(const std::filesystem::path& dir, const db_options& opts);

  /// Salvages a database that `open` refused as corrupt: copies `dir`
  /// aside (`<dir>.backup-<UTC time>`), cuts a damaged WAL back to its last
  /// whole write batch (dropping later WAL files), and when that is not
  /// enough rebuilds the database with RocksDB's RepairDB. Fails with
  /// ec::store_locked when another process holds `dir`.
  static caf::expected<repair_report> repair(const std::filesystem::path& dir);

  /// Applies `batch` atomically (WAL first). Errors: ec::store_full on
  /// ENOSPC, ec::store_error otherwise.
  caf::error write(write_batch&& batch);

  /// Whether writes work: none, or the error of the last failed write while
  /// it persists. After a failed write (disk full) it first tries to clear
  /// the error (what the next `write` does too), so it turns none as soon as
  /// space is back. Cheap when the last write succeeded.
  caf::error writable();

  /// Returns the record of `id`, or nullopt.
  caf::expected<std::optional<std::string>> get_task(std::string_view id);

  /// Calls `f(id, json)` for every task in key order.
  caf::error for_each_task(
      const std::function<void(std::string_view, std::string_view)>& f);

  /// Calls `f(n, json)` for every event of `id` in order.
  caf::error
  for_each_event(std::string_view id,
                 const std::function<void(uint64_t, std::string_view)>& f);

  /// Calls `f(chunk)` for every output chunk of `id` with seq >= `from`, in
  /// seq order, until `f` returns false.
  caf::error for_each_output(std::string_view id, uint64_t from,
                             const std::function<bool(const stored_chunk&)>& f);

  /// Returns the highest output seq of `id`, or nullopt when it has none.
  caf::expected<std::optional<uint64_t>> last_output_seq(std::string_view id);

  /// Returns the highest event number of `id`, or nullopt when it has none.
  caf::expected<std::optional<uint64_t>> last_event(std::string_view id);

  /// Returns the caller's key `key` (see write_batch::put_meta), or nullopt.
  caf::expected<std::optional<std::string>> get_meta(std::string_view key);

  /// Calls `f(key, value)` for every caller key starting with `prefix`, in
  /// key order.
  caf::error for_each_meta(
      std::string_view prefix,
      const std::function<void(std::string_view, std::string_view)>& f);

  /// Calls `f(task, attempt, seq, value)` for every outbox entry, ordered by
  /// task, attempt, seq. ec::store_corrupt on a malformed key.
  caf::error for_each_outbox(
      const std::function<void(std::string_view task, uint32_t attempt,
                               uint64_t seq, std::string_view value)>& f);

  /// Writes the records of task `id` as SST files (RocksDB SstFileWriter)
  /// into `dir` (created if missing), one per column family that has keys:
  /// its record ("tasks"), every state event ("events") and the output
  /// chunks with `from_seq` <= seq < `to_seq` ("output"). Files are named
  /// `<family>.sst`. Errors: ec::store_error, ec::io_error.
  caf::expected<std::vector<sst_file>>
  export_task(std::string_view id, uint64_t from_seq, uint64_t to_seq,
              const std::filesystem::path& dir);

  /// Primary only: ingests `files` (as export_task writes them, possibly
  /// from another database) in one RocksDB IngestExternalFiles call, all of
  /// them or none (atomic across the column families), in order: a later
  /// file's keys win over earlier ones and over what the database held.
  /// Every file is checked before anything is ingested; each file's keys
  /// must all belong to one task. Errors: ec::checkpoint_corrupt (not an
  /// SST of this layout, or one RocksDB refuses), ec::store_full,
  /// ec::store_error.
  caf::error ingest(const std::vector<sst_file>& files);

  /// Secondary only: reads what the primary wrote since the open or the
  /// last catch-up (RocksDB TryCatchUpWithPrimary). A no-op otherwise.
  caf::error catch_up();

  /// Primary only: compacts every column family (RocksDB CompactRange),
  /// dropping deleted keys from the table files.
  caf::error compact();

private:
  struct impl;
  explicit db(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace makima::store
