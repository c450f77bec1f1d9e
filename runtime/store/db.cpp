// RocksDB implementation of makima::store::db (see db.hpp for the layout).
#include "runtime/store/db.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>
#include <limits>
#include <mutex>
#include <set>
#include <system_error>
#include <utility>

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/sst_file_reader.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/status.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include "runtime/error.hpp"

namespace fs = std::filesystem;

namespace makima::store {

namespace {

constexpr const char* schema_key = "schema";
constexpr const char* schema_version = "1";
// Written by db::writable() to find out whether writes work again.
constexpr const char* probe_key = "probe";

// Indexes of our column families in impl::cfs.
enum cf_index : size_t {
  cf_tasks = 0,
  cf_events,
  cf_output,
  cf_meta,
  cf_outbox,
  cf_count
};
constexpr const char* cf_names[cf_count] = {"tasks", "events", "output", "meta",
                                            "outbox"};

// Meta keys of callers live under "k/" so they never meet "schema".
constexpr std::string_view user_meta_prefix = "k/";

void put_be64(std::string& out, uint64_t n) {
  for (int shift = 56; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((n >> shift) & 0xff));
}

uint64_t get_be64(const char* p) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n = (n << 8) | static_cast<uint8_t>(p[i]);
  return n;
}

bool valid_id(std::string_view id) {
  return !id.empty() && id.find('\0') == std::string_view::npos;
}

caf::error bad_id(std::string_view id) {
  if (id.empty())
    return make_error(ec::invalid_argument, "empty task id");
  return make_error(ec::invalid_argument,
                    "task id contains a NUL byte: \""
                        + std::string{id.substr(0, id.find('\0'))}
                        + "\\0...\"");
}

// id '\0' be64(n)
std::string seq_key(std::string_view id, uint64_t n) {
  std::string k;
  k.reserve(id.size() + 9);
  k.append(id.data(), id.size());
  k.push_back('\0');
  put_be64(k, n);
  return k;
}

// Lower and (exclusive) upper bound of every key of `id` in events/output.
std::string lower_bound_of(std::string_view id) {
  std::string k{id};
  k.push_back('\0');
  return k;
}

std::string upper_bound_of(std::string_view id) {
  std::string k{id};
  k.push_back('\x01');
  return k;
}

// Decodes the number of a seq_key of `id`; false when `key` is not one.
bool decode_seq(std::string_view id, const rocksdb::Slice& key, uint64_t& n) {
  if (key.size() != id.size() + 9)
    return false;
  if (std::memcmp(key.data(), id.data(), id.size()) != 0
      || key.data()[id.size()] != '\0')
    return false;
  n = get_be64(key.data() + id.size() + 1);
  return true;
}

bool contains(const std::string& haystack, const char* needle) {
  return haystack.find(needle) != std::string::npos;
}

bool is_no_space(const rocksdb::Status& s) {
  return s.IsNoSpace()
         || (s.IsIOError() && contains(s.ToString(), "No space left"));
}

// Maps a failed status of a read or write to a makima error. `what` says what
// was being done ("write to", "read from"), `dir` is the data dir.
caf::error map_status(const rocksdb::Status& s, const std::string& what,
                      const fs::path& dir) {
  auto msg = s.ToString();
  if (is_no_space(s))
    return make_error(ec::store_full, "cannot " + what + " the database in "
                                          + dir.string()
                                          + ": the disk is full (" + msg + ")");
  if (s.IsCorruption())
    return make_error(ec::store_corrupt, "the database in " + dir.string()
                                             + " is corrupt (" + msg + ")");
  return make_error(ec::store_error, "cannot " + what + " the database in "
                                         + dir.string() + ": " + msg);
}

bool is_lock_failure(const rocksdb::Status& s) {
  if (!s.IsIOError())
    return false;
  auto msg = s.ToString();
  // Other process: "While lock file: <dir>/LOCK: Resource temporarily
  // unavailable"; same process: "lock hold by current process ...".
  return contains(msg, "Resource temporarily unavailable")
         || contains(msg, "While lock file") || contains(msg, "lock hold by")
         || contains(msg, "/LOCK");
}

bool is_permission_failure(const rocksdb::Status& s) {
  auto msg = s.ToString();
  return contains(msg, "Permission denied") || contains(msg, "Not a directory")
         || contains(msg, "Read-only file system");
}

caf::error corrupt_error(const fs::path& dir, const std::string& detail) {
  return make_error(ec::store_corrupt,
                    "the database in " + dir.string() + " is corrupt (" + detail
                        + "); makima did not modify it: `makima db repair` "
                          "salvages the consistent part (it backs the "
                          "directory up first and prints what it dropped), or "
                          "restore it from a backup");
}

// Maps a failed open.
caf::error map_open_status(const rocksdb::Status& s, const fs::path& dir) {
  auto msg = s.ToString();
  if (is_lock_failure(s))
    return make_error(ec::store_locked,
                      "data dir " + dir.string()
                          + " is in use by another makima process (" + msg
                          + ")");
  if (is_no_space(s))
    return make_error(ec::store_full, "cannot open the database in "
                                          + dir.string()
                                          + ": the disk is full (" + msg + ")");
  if (s.IsCorruption())
    return corrupt_error(dir, msg);
  if (is_permission_failure(s))
    return make_error(ec::io_error,
                      "cannot open the database in " + dir.string()
                          + ": the directory is not writable (" + msg + ")");
  return make_error(ec::store_error,
                    "cannot open the database in " + dir.string() + ": " + msg);
}

bool has_db_files(const fs::path& dir) {
  std::error_code err;
  for (fs::directory_iterator it{dir, err}, end; !err && it != end;
       it.increment(err)) {
    auto name = it->path().filename().string();
    auto ext = it->path().extension().string();
    if (name.rfind("MANIFEST-", 0) == 0 || name.rfind("OPTIONS-", 0) == 0
        || name == "IDENTITY" || ext == ".sst" || ext == ".log"
        || ext == ".blob")
      return true;
  }
  return false;
}

// Keeps RocksDB from recovering by itself after a disk-full error, so that
// db::write's own DB::Resume() does it. RocksDB's automatic recovery (its
// SstFileManager polls free space) resumes only once the free space reaches
// the largest write buffer (16 MiB here): on a small volume, or one that is
// shared, that never happens and every write keeps failing until a restart
// (measured: a 12 MiB tmpfs, 8 MiB freed, writes refused for 30 s and more).
// While the automatic recovery is pending, DB::Resume() answers Busy. Our
// Resume() flushes the memtables and switches the WAL; it succeeds as soon as
// that fits on the disk, and fails (leaving the error in place) otherwise.
class manual_recovery : public rocksdb::EventListener {
public:
  const char* Name() const override { return "makima.manual_recovery"; }

  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason,
                            rocksdb::Status bg_error,
                            bool* auto_recovery) override {
    if (auto_recovery && is_no_space(bg_error))
      *auto_recovery = false;
    bg_error.PermitUncheckedError();
  }
};

rocksdb::Options make_options(open_mode mode) {
  rocksdb::Options o;
  o.create_if_missing = mode == open_mode::primary;
  o.create_missing_column_families = mode == open_mode::primary;
  o.paranoid_checks = true;
  // Keep the data dir small and quiet: only warnings in LOG, few old LOGs.
  o.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  o.keep_log_file_num = 3;
  o.max_log_file_size = 1 << 20;
  o.max_manifest_file_size = 64 << 20;
  o.max_background_jobs = 2;
  // The small CFs (meta, tasks, events) hold few bytes in their memtables
  // but would pin every WAL file since their first write: without a cap,
  // output written through the WAL piles up in old .log files (measured:
  // 9 x 60 MB after 512 MB of output). Past this size RocksDB flushes the
  // CFs that keep the oldest WAL alive so it can be deleted.
  o.max_total_wal_size = 128 << 20;
  // Task start latency: by default DB::Open starts 16 threads per column
  // family to load table handlers (75 of the 86 threads of one `makima run`
  // were these). The DB of a node holds few SST files; one thread suffices.
  o.max_file_opening_threads = 1;
  if (mode == open_mode::secondary)
    o.max_open_files = -1;
  // Never replay a WAL only up to damage and drop the rest silently (the
  // default kPointInTimeRecovery does): db::open checks every WAL first
  // and refuses a damaged one; this mode is RocksDB's own second line.
  // A torn last record is refused as well: the bytes cannot prove that it
  // was an unfinished (unacknowledged) write rather than a truncation.
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kAbsoluteConsistency;
  o.listeners.push_back(std::make_shared<manual_recovery>());
  return o;
}

rocksdb::ColumnFamilyOptions cf_options(const std::string& name) {
  rocksdb::ColumnFamilyOptions o;
  if (name == "output") {
    // Output chunks are large (up to 64-128 KiB) and written once. With
    // BlobDB the values go to blob files and only small index entries go
    // through the LSM tree, so compactions do not rewrite the output again
    // and again: write amplification stays low and new files per round stay
    // close to the bytes actually written (what incremental checkpoints to
    // S3 need, see docs/architecture.md §4). Throughput does not decide it:
    // 512 MiB of 128 KiB values, no sync, measured 70-100 MB/s wall clock
    // with and without blob files on a 2-core VM loaded by other builds, for
    // the same ~2.8 CPU-seconds (~190 MB per CPU-second in total, half of it
    // the software CRC32C of this RocksDB build; the writing thread alone
    // needs ~1.5 s, i.e. ~340 MB/s when it has a core to itself).
    o.enable_blob_files = true;
    o.min_blob_size = 4096;
    o.blob_file_size = 64 << 20;
    o.enable_blob_garbage_collection = true;
    // Blob values bypass the memtable's size accounting only partly; a
    // smaller write buffer caps makima's RSS while a task streams output
    // (measured 150-180 MiB peak with the default 64 MiB).
    o.write_buffer_size = 16 << 20;
  } else {
    // Records and history are tiny.
    o.write_buffer_size = 4 << 20;
  }
  return o;
}

std::vector<rocksdb::ColumnFamilyDescriptor>
descriptors_for(const std::vector<std::string>& names) {
  std::vector<rocksdb::ColumnFamilyDescriptor> result;
  for (auto& name : names)
    result.emplace_back(name, cf_options(name));
  return result;
}

// -- info log -----------------------------------------------------------------

// RocksDB's own info LOG aborts the process (an assertion in
// WritableFileWriter, this build has assertions on) when it logs again after
// one write of it failed, i.e. on every full disk; it also rotates LOG files
// at every open, even one that then fails. makima's LOG instead writes
// nothing until the database opened (`arm`), ignores write errors, and a
// logger with an empty path discards everything (read-only opens and
// probes never create or change a file).
class info_log final : public rocksdb::Logger {
public:
  explicit info_log(fs::path file)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL),
        file_(std::move(file)) {}
  ~info_log() override {
    if (fd_ >= 0)
      ::close(fd_);
  }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    if (file_.empty())
      return;
    char buf[2048];
    va_list copy;
    va_copy(copy, ap);
    int n = std::vsnprintf(buf, sizeof(buf), format, copy);
    va_end(copy);
    if (n < 0)
      return;
    std::string line = std::to_string(now_us()) + " ";
    line.append(buf, std::min<size_t>(static_cast<size_t>(n), sizeof(buf) - 1));
    line.push_back('\n');
    std::lock_guard<std::mutex> guard{mu_};
    if (!armed_) {
      if (pending_.size() < (64 << 10))
        pending_ += line;
      return;
    }
    write_all(line);
  }

  // Starts writing to the file (after a successful open): keeps one old LOG
  // of at most 1 MiB.
  void arm() {
    std::lock_guard<std::mutex> guard{mu_};
    if (armed_ || file_.empty())
      return;
    armed_ = true;
    std::error_code err;
    if (fs::file_size(file_, err) > (1u << 20) && !err) {
      auto old = file_;
      old += ".old";
      fs::rename(file_, old, err);
    }
    fd_ =
        ::open(file_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    write_all(pending_);
    pending_.clear();
  }

private:
  static uint64_t now_us() {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(
            std::chrono::system_clock::now().time_since_epoch())
            .count());
  }
  void write_all(const std::string& s) {
    if (fd_ < 0)
      return;
    size_t off = 0;
    while (off < s.size()) {
      auto n = ::write(fd_, s.data() + off, s.size() - off);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return; // ENOSPC and friends: lose the line, never the process
      off += static_cast<size_t>(n);
    }
  }

  fs::path file_;
  std::mutex mu_;
  bool armed_ = false;
  int fd_ = -1;
  std::string pending_;
};

// -- strict WAL check ---------------------------------------------------------

// RocksDB's WAL format (db/log_format.h): 32 KiB blocks of physical records
// crc32c(4, masked, over type + payload) | length(2, LE) | type(1) | payload;
// a block's last < 7 bytes are zero padding. Logical records (write
// batches: seq(8, LE) count(4, LE) entries) are one kFullType record or
// kFirstType, kMiddleType..., kLastType fragments.
constexpr size_t wal_block = 32768;
constexpr size_t wal_header = 7;

uint32_t crc32c_extend(uint32_t crc, const unsigned char* p, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k)
        c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i)
    crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t unmask_crc(uint32_t masked) {
  uint32_t rot = masked - 0xa282ead8u;
  return (rot >> 17) | (rot << 15);
}

uint32_t get_le32(const unsigned char* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16
         | uint32_t{p[3]} << 24;
}

uint64_t get_le64(const unsigned char* p) {
  return uint64_t{get_le32(p)} | uint64_t{get_le32(p + 4)} << 32;
}

bool get_varint32(const unsigned char*& p, const unsigned char* end,
                  uint32_t& v) {
  v = 0;
  for (int shift = 0; shift <= 28 && p < end; shift += 7) {
    uint32_t b = *p++;
    v |= (b & 0x7f) << shift;
    if ((b & 0x80) == 0)
      return true;
  }
  return false;
}

bool get_slice(const unsigned char*& p, const unsigned char* end,
               std::string_view& out) {
  uint32_t n = 0;
  if (!get_varint32(p, end, n) || static_cast<size_t>(end - p) < n)
    return false;
  out = std::string_view{reinterpret_cast<const char*>(p), n};
  p += n;
  return true;
}

// Counts the operations of write batches by what makima stores in them.
struct batch_tally {
  uint64_t batches = 0;
  uint64_t ops = 0;
  uint64_t task_records = 0;
  uint64_t output_chunks = 0;
  uint64_t events = 0;
  uint64_t other = 0;
  std::set<std::string> tasks;

  void add(std::string_view rep) {
    ++batches;
    auto* p = reinterpret_cast<const unsigned char*>(rep.data());
    auto* end = p + rep.size();
    if (rep.size() < 12) {
      ++other;
      return;
    }
    uint32_t count = get_le32(p + 8);
    ops += count;
    p += 12;
    uint32_t seen = 0;
    for (; seen < count && p < end; ++seen) {
      unsigned tag = *p++;
      uint32_t cf = 0;
      std::string_view key, value;
      bool ok = true;
      switch (tag) {
      case 0x4:
      case 0x8: // CF deletion, CF single deletion
        ok = get_varint32(p, end, cf) && get_slice(p, end, key);
        ++other;
        break;
      case 0x0:
      case 0x7: // deletion, single deletion
        ok = get_slice(p, end, key);
        ++other;
        break;
      case 0x5:
      case 0x6:
      case 0xE:
      case 0x10: // CF put, merge, range del, blob
        ok = get_varint32(p, end, cf) && get_slice(p, end, key)
             && get_slice(p, end, value);
        if (ok)
          classify(tag == 0x5, key, value);
        break;
      case 0x1:
      case 0x2:
      case 0xF:
      case 0x11: // put, merge, range del, blob
        ok = get_slice(p, end, key) && get_slice(p, end, value);
        if (ok)
          classify(tag == 0x1, key, value);
        break;
      case 0x3: // log data: no seq
        ok = get_slice(p, end, key);
        --seen;
        break;
      default:
        ok = false;
      }
      if (!ok)
        break;
    }
    if (seen < count)
      other += count - seen;
  }

  void classify(bool put, std::string_view key, std::string_view value) {
    auto nul = key.find('\0');
    if (!put) {
      ++other;
    } else if (nul != std::string_view::npos && key.size() == nul + 9
               && !value.empty() && value[0] != '{') {
      ++output_chunks;
      note_task(key.substr(0, nul));
    } else if (nul != std::string_view::npos && key.size() == nul + 9) {
      ++events;
      note_task(key.substr(0, nul));
    } else if (nul == std::string_view::npos && !value.empty()
               && value[0] == '{') {
      ++task_records;
      note_task(key);
    } else {
      ++other;
    }
  }

  void note_task(std::string_view id) {
    if (tasks.size() < 1000)
      tasks.emplace(id);
  }

  std::string describe() const {
    std::string s = std::to_string(batches) + " write batch"
                    + (batches == 1 ? "" : "es") + " ("
                    + std::to_string(task_records) + " task record writes, "
                    + std::to_string(output_chunks) + " output chunks, "
                    + std::to_string(events) + " state events, "
                    + std::to_string(other) + " other operations)";
    if (!tasks.empty()) {
      s += " of task" + std::string{tasks.size() == 1 ? " " : "s "};
      size_t n = 0;
      for (auto& t : tasks) {
        if (n++ == 10) {
          s += ", ...";
          break;
        }
        s += (n > 1 ? ", " : "") + t;
      }
    }
    return s;
  }
};

// The first damage found in a WAL file: where its consistent prefix ends
// and what follows that cannot be replayed.
struct wal_damage {
  fs::path file;
  uint64_t file_size = 0;
  /// Offset where the damage was found.
  uint64_t at = 0;
  /// End of the last whole write batch before the damage (the repair
  /// truncates the file there).
  uint64_t keep = 0;
  std::string what;
  /// Write batches readable behind the damage (in this file).
  batch_tally after;
  /// Sequence numbers missing between the last good batch and the first
  /// readable one after the damage (operations in the damaged bytes), when
  /// a batch after it could be read.
  std::optional<uint64_t> missing_ops;
};

// Reads a WAL file strictly. Returns nullopt when it is whole, else the
// first damage. `good` gets every whole batch before the damage.
std::optional<wal_damage> check_wal_file(const fs::path& file,
                                         batch_tally* good, std::string& io) {
  std::ifstream in{file, std::ios::binary};
  std::string data{std::istreambuf_iterator<char>{in},
                   std::istreambuf_iterator<char>{}};
  if (!in.good() && !in.eof()) {
    io = "cannot read " + file.string();
    return std::nullopt;
  }
  auto* d = reinterpret_cast<const unsigned char*>(data.data());
  size_t size = data.size();
  std::optional<wal_damage> damage;
  // The next offset from `from` on (within its block) that holds a whole
  // physical record with a good checksum, else the next block: where to
  // read on behind damage.
  auto resync = [&](size_t from) {
    size_t block_end = std::min(size, (from / wal_block + 1) * wal_block);
    for (size_t p = from; p + wal_header <= block_end; ++p) {
      unsigned t = d[p + 6];
      size_t l = d[p + 4] | size_t{d[p + 5]} << 8;
      if (t < 1 || t > 4 || p + wal_header + l > block_end)
        continue;
      if (unmask_crc(get_le32(d + p)) == crc32c_extend(0, d + p + 6, l + 1))
        return p;
    }
    return (from / wal_block + 1) * wal_block;
  };
  size_t resume_at = 0; // where the lenient pass starts
  auto fail = [&](size_t at, uint64_t keep, std::string what,
                  bool whole_record = false) {
    resume_at = whole_record ? at : resync(at + 1);
    damage = wal_damage{};
    damage->file = file;
    damage->file_size = size;
    damage->at = at;
    damage->keep = keep;
    damage->what = std::move(what);
  };
  size_t pos = 0;
  uint64_t keep = 0; // end of the last whole batch
  std::string record;
  bool in_fragment = false;
  bool have_seq = false;
  uint64_t next_seq = 0;
  // Lenient pass after the damage: counts what could still be read.
  bool lenient = false;
  std::optional<uint64_t> first_seq_after;
  auto deliver = [&](size_t rec_start, size_t end) {
    if (lenient) {
      if (!first_seq_after && record.size() >= 12)
        first_seq_after =
            get_le64(reinterpret_cast<const unsigned char*>(record.data()));
      damage->after.add(record);
      return true;
    }
    if (record.size() < 12) {
      fail(rec_start, keep, "write batch shorter than its header");
      return false;
    }
    auto* r = reinterpret_cast<const unsigned char*>(record.data());
    uint64_t seq = get_le64(r);
    uint64_t count = get_le32(r + 8);
    if (have_seq && seq != next_seq) {
      fail(rec_start, keep,
           "sequence gap: batch starts at sequence " + std::to_string(seq)
               + ", expected " + std::to_string(next_seq),
           true);
      return false;
    }
    have_seq = true;
    next_seq = seq + count;
    if (good)
      good->add(record);
    keep = end;
    return true;
  };
  size_t rec_start = 0;
  while (pos < size) {
    size_t left = wal_block - pos % wal_block;
    if (left < wal_header) {
      size_t stop = std::min(size, pos + left);
      if (!lenient
          && std::any_of(d + pos, d + stop, [](unsigned char c) { return c; }))
        fail(pos, keep, "garbage in a block trailer");
      pos = stop;
      if (!damage || lenient)
        continue;
    }
    if (damage && !lenient) {
      // Count what follows the damage: resume at the next block.
      lenient = true;
      in_fragment = false;
      record.clear();
      pos = resume_at;
      continue;
    }
    if (size - pos < wal_header) {
      if (!lenient)
        fail(pos, keep, "the file ends inside a record header");
      break;
    }
    uint32_t masked = get_le32(d + pos);
    size_t len = d[pos + 4] | size_t{d[pos + 5]} << 8;
    unsigned type = d[pos + 6];
    const char* bad = nullptr;
    if (type == 0 && len == 0 && masked == 0)
      bad = "zeroed bytes where a record should be";
    else if (len > left - wal_header)
      bad = "bad record length";
    else if (pos + wal_header + len > size)
      bad = "the file ends inside a record (truncated)";
    else if (unmask_crc(masked) != crc32c_extend(0, d + pos + 6, len + 1))
      bad = "checksum mismatch";
    if (bad) {
      if (lenient) {
        pos = resync(pos + 1);
        in_fragment = false;
        record.clear();
        continue;
      }
      fail(pos, keep, bad);
      continue;
    }
    std::string_view payload{
        reinterpret_cast<const char*>(d + pos + wal_header), len};
    size_t end = pos + wal_header + len;
    const char* bad_type = nullptr;
    switch (type) {
    case 1: // full
      if (in_fragment)
        bad_type = "a fragmented record has no end";
      else {
        record.assign(payload);
        if (!deliver(pos, end))
          continue;
      }
      break;
    case 2: // first
      if (in_fragment)
        bad_type = "a fragmented record has no end";
      record.assign(payload);
      rec_start = pos;
      in_fragment = true;
      break;
    case 3: // middle
    case 4: // last
      if (!in_fragment)
        bad_type = "a record fragment has no start";
      else {
        record.append(payload);
        if (type == 4) {
          in_fragment = false;
          if (!deliver(rec_start, end))
            continue;
        }
      }
      break;
    case 9: // compression type record
      if (!in_fragment && !lenient)
        keep = end;
      break;
    default:
      bad_type = "unknown record type";
    }
    if (bad_type) {
      if (lenient) {
        in_fragment = false;
        record.clear();
      } else {
        fail(in_fragment ? rec_start : pos, keep, bad_type);
        continue;
      }
    }
    pos = end;
  }
  if (!damage && in_fragment)
    fail(rec_start, keep, "the file ends inside a record (truncated)");
  if (damage && first_seq_after && have_seq && *first_seq_after >= next_seq)
    damage->missing_ops = *first_seq_after - next_seq;
  return damage;
}

// WAL files of `dir`, oldest first.
std::vector<fs::path> wal_files(const fs::path& dir) {
  std::vector<std::pair<uint64_t, fs::path>> found;
  std::error_code err;
  for (fs::directory_iterator it{dir, err}, end; !err && it != end;
       it.increment(err)) {
    auto name = it->path().filename().string();
    if (it->path().extension() != ".log" || name.size() < 5)
      continue;
    auto stem = name.substr(0, name.size() - 4);
    if (stem.empty() || !std::all_of(stem.begin(), stem.end(), [](char c) {
          return c >= '0' && c <= '9';
        }))
      continue;
    found.emplace_back(std::stoull(stem), it->path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& f : found)
    out.push_back(f.second);
  return out;
}

// Result of checking every WAL file of a dir.
struct wal_report {
  std::optional<wal_damage> damage;
  /// Whole WAL files after the damaged one (a repair drops them too).
  std::vector<fs::path> later_files;
  batch_tally later;
  std::string io_error;
};

wal_report check_wals(const fs::path& dir) {
  wal_report out;
  for (auto& f : wal_files(dir)) {
    if (out.damage) {
      out.later_files.push_back(f);
      std::string io;
      batch_tally t;
      check_wal_file(f, &t, io); // counts its whole batches
      // Damage in a later file: its readable batches were counted anyway.
      out.later.batches += t.batches;
      out.later.ops += t.ops;
      out.later.task_records += t.task_records;
      out.later.output_chunks += t.output_chunks;
      out.later.events += t.events;
      out.later.other += t.other;
      out.later.tasks.insert(t.tasks.begin(), t.tasks.end());
      continue;
    }
    out.damage = check_wal_file(f, nullptr, out.io_error);
    if (!out.io_error.empty())
      return out;
  }
  return out;
}

// What a damaged WAL costs, in words.
std::string describe_wal_damage(const wal_report& r) {
  auto& d = *r.damage;
  batch_tally lost = d.after;
  lost.batches += r.later.batches;
  lost.ops += r.later.ops;
  lost.task_records += r.later.task_records;
  lost.output_chunks += r.later.output_chunks;
  lost.events += r.later.events;
  lost.other += r.later.other;
  lost.tasks.insert(r.later.tasks.begin(), r.later.tasks.end());
  std::string s = "write-ahead log " + d.file.string() + ": " + d.what
                  + " at byte " + std::to_string(d.at) + " of "
                  + std::to_string(d.file_size)
                  + "; a replay would stop there, losing "
                  + std::to_string(d.file_size - d.keep) + " bytes";
  if (!r.later_files.empty())
    s += " and " + std::to_string(r.later_files.size()) + " later WAL file"
         + (r.later_files.size() == 1 ? "" : "s");
  s += ": " + lost.describe() + " still readable behind the damage";
  if (d.missing_ops)
    s += ", plus " + std::to_string(*d.missing_ops)
         + " operations in the damaged bytes";
  else
    s += ", plus what the damaged bytes held (not countable)";
  return s;
}

// Whether another process holds the RocksDB lock of `dir` (fcntl, like
// RocksDB). Opens LOCK read-only; creates nothing.
bool locked_elsewhere(const fs::path& dir) {
  return lock_holder(dir).has_value();
}

} // namespace

std::optional<long> lock_holder(const fs::path& dir) {
  int fd = ::open((dir / "LOCK").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return std::nullopt;
  struct flock f {};
  f.l_type = F_WRLCK;
  f.l_whence = SEEK_SET;
  bool locked = ::fcntl(fd, F_GETLK, &f) == 0 && f.l_type != F_UNLCK;
  ::close(fd);
  if (!locked)
    return std::nullopt;
  return static_cast<long>(f.l_pid);
}

// -- write_batch --------------------------------------------------------------

struct write_batch::impl {
  enum class kind { put, del, del_range };
  struct op {
    cf_index cf;
    std::string key;
    std::string value; // the end key for del_range
    kind what = kind::put;
  };
  std::vector<op> ops;
  // First invalid id seen; write() refuses the whole batch then.
  std::optional<std::string> bad_id;

  bool check(std::string_view id) {
    if (valid_id(id))
      return true;
    if (!bad_id)
      bad_id = std::string{id};
    return false;
  }
};

write_batch::write_batch() : impl_(std::make_unique<impl>()) {}

write_batch::~write_batch() = default;

write_batch::write_batch(write_batch&&) noexcept = default;

write_batch& write_batch::operator=(write_batch&&) noexcept = default;

void write_batch::put_task(std::string_view id, std::string_view json) {
  if (!impl_->check(id))
    return;
  impl_->ops.push_back({cf_tasks, std::string{id}, std::string{json}});
}

void write_batch::put_event(std::string_view id, uint64_t n,
                            std::string_view json) {
  if (!impl_->check(id))
    return;
  impl_->ops.push_back({cf_events, seq_key(id, n), std::string{json}});
}

void write_batch::put_output(std::string_view id, uint64_t seq, uint8_t stream,
                             std::string_view bytes) {
  if (!impl_->check(id))
    return;
  std::string value;
  value.reserve(bytes.size() + 1);
  value.push_back(static_cast<char>(stream));
  value.append(bytes.data(), bytes.size());
  impl_->ops.push_back({cf_output, seq_key(id, seq), std::move(value)});
}

void write_batch::put_meta(std::string_view key, std::string_view value) {
  std::string k{user_meta_prefix};
  k.append(key.data(), key.size());
  impl_->ops.push_back({cf_meta, std::move(k), std::string{value}});
}

void write_batch::delete_meta(std::string_view key) {
  std::string k{user_meta_prefix};
  k.append(key.data(), key.size());
  impl_->ops.push_back({cf_meta, std::move(k), {}, impl::kind::del});
}

namespace {

std::string outbox_key(std::string_view task, uint32_t attempt, uint64_t seq) {
  std::string k{task};
  k.push_back('\0');
  put_be64(k, attempt);
  put_be64(k, seq);
  return k;
}

} // namespace

void write_batch::put_outbox(std::string_view task, uint32_t attempt,
                             uint64_t seq, std::string_view value) {
  if (!impl_->check(task))
    return;
  impl_->ops.push_back(
      {cf_outbox, outbox_key(task, attempt, seq), std::string{value}});
}

void write_batch::delete_outbox(std::string_view task, uint32_t attempt,
                                uint64_t upto) {
  if (!impl_->check(task))
    return;
  auto end = upto == std::numeric_limits<uint64_t>::max()
                 ? outbox_key(task, attempt + 1, 0)
                 : outbox_key(task, attempt, upto + 1);
  impl_->ops.push_back({cf_outbox, outbox_key(task, attempt, 0), std::move(end),
                        impl::kind::del_range});
}

void write_batch::delete_task(std::string_view id) {
  if (!impl_->check(id))
    return;
  impl_->ops.push_back({cf_tasks, std::string{id}, {}, impl::kind::del});
  for (auto cf : {cf_events, cf_output, cf_outbox})
    impl_->ops.push_back(
        {cf, lower_bound_of(id), upper_bound_of(id), impl::kind::del_range});
}

size_t write_batch::size() const {
  return impl_ ? impl_->ops.size() : 0;
}

// -- db -----------------------------------------------------------------------

struct db::impl {
  fs::path dir;
  db_options opts;
  std::unique_ptr<rocksdb::DB> rdb;
  std::vector<rocksdb::ColumnFamilyHandle*> handles; // all opened
  // Our column families (null in a secondary whose primary lacks one).
  rocksdb::ColumnFamilyHandle* cfs[cf_count] = {};
  // Set after a failed write: the next write (and `writable`) first tries
  // DB::Resume(). `write_error` is what that write returned.
  bool write_failed = false;
  caf::error write_error;

  // Tries to clear the error of a failed write; true when writes work.
  bool try_resume() {
    if (!write_failed)
      return true;
    // After a failed write (typically ENOSPC) RocksDB stops accepting
    // writes until the background error is cleared (see manual_recovery).
    // Resume() flushes the memtables and switches to a new WAL: it works
    // once that fits on the disk again.
    auto rs = rdb->Resume();
    if (!rs.ok())
      return false;
    write_failed = false;
    write_error = caf::none;
    return true;
  }

  ~impl() {
    if (rdb) {
      for (auto* h : handles)
        rdb->DestroyColumnFamilyHandle(h);
      handles.clear();
      rdb->Close().PermitUncheckedError();
      rdb.reset();
    }
  }

  bool secondary() const { return opts.mode != open_mode::primary; }

  caf::error read_error(const rocksdb::Status& s) const {
    return map_status(s, "read from", dir);
  }

  // Iterates the keys of `id` in `cf` starting at `from`; calls f(n, value)
  // until it returns false.
  template <class F>
  caf::error scan(cf_index cf, std::string_view id, uint64_t from, F&& f) {
    if (!valid_id(id))
      return bad_id(id);
    if (!cfs[cf])
      return caf::none;
    auto upper = upper_bound_of(id);
    rocksdb::Slice upper_slice{upper};
    rocksdb::ReadOptions ro;
    ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it{rdb->NewIterator(ro, cfs[cf])};
    for (it->Seek(seq_key(id, from)); it->Valid(); it->Next()) {
      uint64_t n = 0;
      if (!decode_seq(id, it->key(), n))
        continue; // cannot happen with valid ids; skip foreign keys
      if (!f(n, it->value()))
        break;
    }
    if (!it->status().ok())
      return read_error(it->status());
    return caf::none;
  }

  caf::expected<std::optional<uint64_t>> last(cf_index cf,
                                              std::string_view id) {
    if (!valid_id(id))
      return bad_id(id);
    if (!cfs[cf])
      return std::optional<uint64_t>{};
    auto lower = lower_bound_of(id);
    rocksdb::Slice lower_slice{lower};
    rocksdb::ReadOptions ro;
    ro.iterate_lower_bound = &lower_slice;
    std::unique_ptr<rocksdb::Iterator> it{rdb->NewIterator(ro, cfs[cf])};
    it->SeekForPrev(seq_key(id, std::numeric_limits<uint64_t>::max()));
    std::optional<uint64_t> result;
    for (; it->Valid(); it->Prev()) {
      uint64_t n = 0;
      if (decode_seq(id, it->key(), n)) {
        result = n;
        break;
      }
      if (!it->key().starts_with(lower))
        break;
    }
    if (!it->status().ok())
      return read_error(it->status());
    return result;
  }
};

db::db(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

db::~db() = default;

caf::expected<std::unique_ptr<db>> db::open(const fs::path& dir,
                                            const db_options& opts) {
  auto p = std::make_unique<impl>();
  p->dir = dir;
  p->opts = opts;
  auto dir_str = dir.string();
  auto options = make_options(opts.mode);
  std::error_code err;
  if (opts.mode == open_mode::primary) {
    fs::create_directories(dir, err);
    if (err || !fs::is_directory(dir, err))
      return make_error(ec::io_error,
                        "cannot create the data dir " + dir_str + ": "
                            + (err ? err.message() : "not a directory"));
  } else if (opts.mode == open_mode::secondary && opts.secondary_dir.empty()) {
    return make_error(ec::invalid_argument,
                      "opening the database in " + dir_str
                          + " read-only needs a secondary dir");
  }
  // A live primary elsewhere: its WAL tail is being written, so it is not
  // checked (and not opened) here.
  if (opts.mode != open_mode::secondary && locked_elsewhere(dir))
    return make_error(ec::store_locked,
                      "data dir " + dir_str
                          + " is in use by another makima process");
  // Look before RocksDB touches anything (DB::Open rotates LOG files even
  // when it then fails): a broken database must stay exactly as it is.
  auto current = dir / "CURRENT";
  std::vector<std::string> names;
  if (!fs::exists(current, err)) {
    if (has_db_files(dir))
      return corrupt_error(dir, "CURRENT is missing but database files exist");
    if (opts.mode != open_mode::primary)
      return make_error(ec::store_error, "no makima database in " + dir_str);
    names.push_back(rocksdb::kDefaultColumnFamilyName);
  } else {
    auto s = rocksdb::DB::ListColumnFamilies(options, dir_str, &names);
    if (!s.ok()) {
      if (s.IsCorruption() || s.IsPathNotFound() || s.IsNotFound()
          || contains(s.ToString(), "No such file"))
        return corrupt_error(dir, s.ToString());
      return map_open_status(s, dir);
    }
  }
  // Every WAL must replay whole (see make_options).
  if (opts.mode != open_mode::secondary) {
    auto report = check_wals(dir);
    if (!report.io_error.empty())
      return make_error(ec::store_error, "cannot check the database in "
                                             + dir_str + ": "
                                             + report.io_error);
    if (report.damage)
      return corrupt_error(dir, describe_wal_damage(report));
  }
  // makima's LOG (see info_log); none for read-only and secondary opens.
  auto log = std::make_shared<info_log>(
      opts.mode == open_mode::primary ? dir / "LOG" : fs::path{});
  options.info_log = log;
  // Every existing CF must be opened; in primary mode add ours if missing.
  if (opts.mode == open_mode::primary)
    for (auto* name : cf_names)
      if (std::find(names.begin(), names.end(), name) == names.end())
        names.emplace_back(name);
  auto descriptors = descriptors_for(names);
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s;
  if (opts.mode == open_mode::primary) {
    s = rocksdb::DB::Open(options, dir_str, descriptors, &p->handles, &raw);
  } else if (opts.mode == open_mode::read_only) {
    s = rocksdb::DB::OpenForReadOnly(options, dir_str, descriptors, &p->handles,
                                     &raw);
  } else {
    fs::create_directories(opts.secondary_dir, err);
    if (err)
      return make_error(ec::io_error, "cannot create the secondary dir "
                                          + opts.secondary_dir.string() + ": "
                                          + err.message());
    s = rocksdb::DB::OpenAsSecondary(options, dir_str,
                                     opts.secondary_dir.string(), descriptors,
                                     &p->handles, &raw);
  }
  if (!s.ok()) {
    if (opts.mode != open_mode::primary && !s.IsCorruption() && !is_no_space(s))
      return make_error(ec::store_error, "cannot open the database in "
                                             + dir_str
                                             + " read-only: " + s.ToString());
    return map_open_status(s, dir);
  }
  p->rdb.reset(raw);
  for (size_t i = 0; i < p->handles.size(); ++i)
    for (size_t c = 0; c < cf_count; ++c)
      if (p->handles[i]->GetName() == cf_names[c])
        p->cfs[c] = p->handles[i];
  if (opts.mode == open_mode::secondary) {
    s = p->rdb->TryCatchUpWithPrimary();
    if (!s.ok())
      return map_status(s, "catch up with", dir);
  }
  // Schema version.
  if (p->cfs[cf_meta]) {
    std::string version;
    s = p->rdb->Get(rocksdb::ReadOptions{}, p->cfs[cf_meta], schema_key,
                    &version);
    if (s.ok()) {
      if (version != schema_version)
        return make_error(
            ec::store_error,
            "the database in " + dir_str + " has schema version \"" + version
                + "\", this makima supports only version " + schema_version
                + " (is it from a newer makima?)");
    } else if (!s.IsNotFound()) {
      return p->read_error(s);
    } else if (opts.mode == open_mode::primary) {
      // New database (or one whose creation was interrupted).
      rocksdb::WriteOptions wo;
      wo.sync = true;
      s = p->rdb->Put(wo, p->cfs[cf_meta], schema_key, schema_version);
      if (!s.ok())
        return map_status(s, "initialize", dir);
    }
  }
  log->arm();
  return std::unique_ptr<db>{new db(std::move(p))};
}

caf::error db::write(write_batch&& batch) {
  auto& d = *impl_;
  if (d.secondary())
    return make_error(ec::store_error,
                      "the database in " + d.dir.string()
                          + " is open read-only (secondary); cannot write");
  if (!batch.impl_)
    return caf::none;
  auto& b = *batch.impl_;
  if (b.bad_id)
    return bad_id(*b.bad_id);
  if (b.ops.empty())
    return caf::none;
  // Otherwise the write below reports why writes still fail.
  d.try_resume();
  rocksdb::WriteBatch wb;
  for (auto& op : b.ops) {
    if (!d.cfs[op.cf])
      return make_error(ec::store_error, std::string{"column family "}
                                             + cf_names[op.cf] + " missing in "
                                             + d.dir.string());
    rocksdb::Status s;
    switch (op.what) {
    case write_batch::impl::kind::put:
      s = wb.Put(d.cfs[op.cf], op.key, op.value);
      break;
    case write_batch::impl::kind::del:
      s = wb.Delete(d.cfs[op.cf], op.key);
      break;
    case write_batch::impl::kind::del_range:
      s = wb.DeleteRange(d.cfs[op.cf], op.key, op.value);
      break;
    }
    if (!s.ok())
      return map_status(s, "write to", d.dir);
  }
  rocksdb::WriteOptions wo;
  wo.sync = d.opts.sync;
  auto s = d.rdb->Write(wo, &wb);
  b.ops.clear();
  if (!s.ok()) {
    d.write_failed = true;
    auto e = map_status(s, "write to", d.dir);
    if (code_of(e) == ec::store_full)
      e = make_error(ec::store_full,
                     describe(e)
                         + "; every write fails until space is freed (the "
                           "next write after that succeeds)");
    d.write_error = e;
    return e;
  }
  return caf::none;
}

caf::error db::catch_up() {
  auto& d = *impl_;
  if (d.opts.mode != open_mode::secondary)
    return caf::none;
  auto s = d.rdb->TryCatchUpWithPrimary();
  if (!s.ok())
    return map_status(s, "catch up with", d.dir);
  return caf::none;
}

caf::error db::compact() {
  auto& d = *impl_;
  if (d.secondary())
    return make_error(ec::store_error, "the database in " + d.dir.string()
                                           + " is open read-only");
  rocksdb::CompactRangeOptions co;
  co.bottommost_level_compaction =
      rocksdb::BottommostLevelCompaction::kForceOptimized;
  for (auto* h : d.handles) {
    auto s = d.rdb->CompactRange(co, h, nullptr, nullptr);
    if (!s.ok())
      return map_status(s, "compact", d.dir);
  }
  return caf::none;
}

caf::error db::writable() {
  auto& d = *impl_;
  if (d.secondary())
    return make_error(ec::store_error, "the database in " + d.dir.string()
                                           + " is open read-only");
  if (!d.write_failed)
    return caf::none;
  if (!d.try_resume())
    return d.write_error;
  // Resume() also succeeds on a disk that is still full when it had
  // nothing to flush: only a write tells. A few bytes to the meta CF.
  write_batch probe;
  probe.impl_->ops.push_back(
      {cf_meta, probe_key, "1", write_batch::impl::kind::put});
  return write(std::move(probe));
}

caf::expected<std::optional<std::string>> db::get_task(std::string_view id) {
  auto& d = *impl_;
  if (!valid_id(id))
    return bad_id(id);
  if (!d.cfs[cf_tasks])
    return std::optional<std::string>{};
  std::string value;
  auto s = d.rdb->Get(rocksdb::ReadOptions{}, d.cfs[cf_tasks],
                      rocksdb::Slice{id.data(), id.size()}, &value);
  if (s.IsNotFound())
    return std::optional<std::string>{};
  if (!s.ok())
    return d.read_error(s);
  return std::optional<std::string>{std::move(value)};
}

caf::error db::for_each_task(
    const std::function<void(std::string_view, std::string_view)>& f) {
  auto& d = *impl_;
  if (!d.cfs[cf_tasks])
    return caf::none;
  std::unique_ptr<rocksdb::Iterator> it{
      d.rdb->NewIterator(rocksdb::ReadOptions{}, d.cfs[cf_tasks])};
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto k = it->key();
    auto v = it->value();
    f(std::string_view{k.data(), k.size()},
      std::string_view{v.data(), v.size()});
  }
  if (!it->status().ok())
    return d.read_error(it->status());
  return caf::none;
}

caf::error
db::for_each_event(std::string_view id,
                   const std::function<void(uint64_t, std::string_view)>& f) {
  return impl_->scan(cf_events, id, 0,
                     [&](uint64_t n, const rocksdb::Slice& v) {
                       f(n, std::string_view{v.data(), v.size()});
                       return true;
                     });
}

caf::error
db::for_each_output(std::string_view id, uint64_t from,
                    const std::function<bool(const stored_chunk&)>& f) {
  stored_chunk chunk;
  caf::error bad;
  auto err = impl_->scan(
      cf_output, id, from, [&](uint64_t n, const rocksdb::Slice& v) {
        if (v.empty()) {
          bad = make_error(ec::store_corrupt,
                           "empty output record " + std::to_string(n)
                               + " of task " + std::string{id}
                               + " in the database in " + impl_->dir.string());
          return false;
        }
        chunk.seq = n;
        chunk.stream = static_cast<uint8_t>(v.data()[0]);
        chunk.bytes.assign(v.data() + 1, v.size() - 1);
        return f(chunk);
      });
  if (err)
    return err;
  return bad;
}

caf::expected<std::optional<uint64_t>>
db::last_output_seq(std::string_view id) {
  return impl_->last(cf_output, id);
}

caf::expected<std::optional<uint64_t>> db::last_event(std::string_view id) {
  return impl_->last(cf_events, id);
}

caf::expected<std::optional<std::string>> db::get_meta(std::string_view key) {
  auto& d = *impl_;
  if (!d.cfs[cf_meta])
    return std::optional<std::string>{};
  std::string k{user_meta_prefix};
  k.append(key.data(), key.size());
  std::string value;
  auto s = d.rdb->Get(rocksdb::ReadOptions{}, d.cfs[cf_meta], k, &value);
  if (s.IsNotFound())
    return std::optional<std::string>{};
  if (!s.ok())
    return d.read_error(s);
  return std::optional<std::string>{std::move(value)};
}

caf::error db::for_each_meta(
    std::string_view prefix,
    const std::function<void(std::string_view, std::string_view)>& f) {
  auto& d = *impl_;
  if (!d.cfs[cf_meta])
    return caf::none;
  std::string start{user_meta_prefix};
  start.append(prefix.data(), prefix.size());
  std::unique_ptr<rocksdb::Iterator> it{
      d.rdb->NewIterator(rocksdb::ReadOptions{}, d.cfs[cf_meta])};
  for (it->Seek(start); it->Valid(); it->Next()) {
    auto k = it->key();
    std::string_view key{k.data(), k.size()};
    if (key.substr(0, start.size()) != start)
      break;
    auto v = it->value();
    f(key.substr(user_meta_prefix.size()),
      std::string_view{v.data(), v.size()});
  }
  if (!it->status().ok())
    return d.read_error(it->status());
  return caf::none;
}

caf::error db::for_each_outbox(
    const std::function<void(std::string_view task, uint32_t attempt,
                             uint64_t seq, std::string_view value)>& f) {
  auto& d = *impl_;
  if (!d.cfs[cf_outbox])
    return caf::none;
  std::unique_ptr<rocksdb::Iterator> it{
      d.rdb->NewIterator(rocksdb::ReadOptions{}, d.cfs[cf_outbox])};
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto k = it->key();
    std::string_view key{k.data(), k.size()};
    auto nul = key.find('\0');
    if (nul == std::string_view::npos || key.size() != nul + 17)
      return make_error(ec::store_corrupt, "malformed outbox key in the "
                                           "database in "
                                               + d.dir.string());
    auto v = it->value();
    f(key.substr(0, nul), static_cast<uint32_t>(get_be64(key.data() + nul + 1)),
      get_be64(key.data() + nul + 9), std::string_view{v.data(), v.size()});
  }
  if (!it->status().ok())
    return d.read_error(it->status());
  return caf::none;
}

} // namespace makima::store

namespace makima::store {

namespace {

std::string utc_stamp() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

// Reads every task's record and output; counts chunks and seq gaps.
caf::error count_contents(db& d, repair_report& r) {
  std::vector<std::string> ids;
  if (auto err = d.for_each_task(
          [&](std::string_view id, std::string_view) { ids.emplace_back(id); }))
    return err;
  r.tasks = ids.size();
  r.output_chunks = 0;
  r.output_gaps = 0;
  for (auto& id : ids) {
    uint64_t expect = 0;
    auto err = d.for_each_output(id, 0, [&](const stored_chunk& c) {
      ++r.output_chunks;
      if (c.seq > expect)
        r.output_gaps += c.seq - expect;
      expect = c.seq + 1;
      return true;
    });
    if (err)
      return err;
    if (auto err = d.for_each_event(id, [](uint64_t, std::string_view) {}))
      return err;
  }
  return caf::none;
}

} // namespace

caf::expected<repair_report> db::repair(const fs::path& dir) {
  repair_report r;
  std::error_code err;
  if (!fs::is_directory(dir, err))
    return make_error(ec::invalid_argument,
                      "no database directory " + dir.string());
  if (locked_elsewhere(dir))
    return make_error(ec::store_locked,
                      "data dir " + dir.string()
                          + " is in use by another makima process; stop it "
                            "before repairing");
  // 1. Back up everything as it is.
  auto name =
      dir.filename().empty() ? dir.parent_path().filename() : dir.filename();
  r.backup = dir.parent_path() / (name.string() + ".backup-" + utc_stamp());
  for (int i = 1; fs::exists(r.backup, err); ++i)
    r.backup =
        dir.parent_path()
        / (name.string() + ".backup-" + utc_stamp() + "-" + std::to_string(i));
  fs::copy(dir, r.backup, fs::copy_options::recursive, err);
  if (err) {
    std::error_code ignore;
    fs::remove_all(r.backup, ignore);
    return make_error(
        err == std::errc::no_space_on_device ? ec::store_full : ec::io_error,
        "cannot back up " + dir.string() + " to " + r.backup.string() + " ("
            + err.message() + "); nothing was changed");
  }
  // 2. A damaged WAL: keep its whole batches, drop the rest.
  auto report = check_wals(dir);
  if (!report.io_error.empty())
    return make_error(ec::store_error, report.io_error);
  if (report.damage) {
    auto& d = *report.damage;
    r.damage = describe_wal_damage(report);
    fs::resize_file(d.file, d.keep, err);
    if (err)
      return make_error(ec::io_error, "cannot truncate " + d.file.string()
                                          + ": " + err.message());
    for (auto& f : report.later_files)
      fs::remove(f, err);
    r.method = "cut " + d.file.string() + " back to its last whole write "
               + "batch (" + std::to_string(d.keep) + " of "
               + std::to_string(d.file_size) + " bytes)";
    if (!report.later_files.empty())
      r.method += " and removed " + std::to_string(report.later_files.size())
                  + " later WAL file(s)";
    r.dropped_batches = d.after.batches + report.later.batches;
    r.dropped_task_records = d.after.task_records + report.later.task_records;
    r.dropped_output_chunks =
        d.after.output_chunks + report.later.output_chunks;
    r.dropped_events = d.after.events + report.later.events;
    r.dropped_other = d.after.other + report.later.other;
    r.dropped_unreadable = d.missing_ops;
  }
  // A lost CURRENT: point it at the newest MANIFEST (RepairDB would do
  // worse: it does not know blob files).
  if (!fs::exists(dir / "CURRENT", err)) {
    std::string newest;
    uint64_t newest_n = 0;
    for (fs::directory_iterator it{dir, err}, end; !err && it != end;
         it.increment(err)) {
      auto n = it->path().filename().string();
      if (n.rfind("MANIFEST-", 0) != 0)
        continue;
      try {
        auto num = std::stoull(n.substr(9));
        if (newest.empty() || num > newest_n) {
          newest = n;
          newest_n = num;
        }
      } catch (const std::exception&) {
      }
    }
    if (!newest.empty()) {
      std::ofstream out{dir / "CURRENT", std::ios::binary | std::ios::trunc};
      out << newest << "\n";
      out.close();
      if (!r.damage.empty())
        r.damage += "; ";
      r.damage += "CURRENT was missing";
      if (!r.method.empty())
        r.method += ", ";
      r.method += "wrote CURRENT naming the newest manifest " + newest;
    }
  }
  // 3. Open and read everything; rebuild when that fails.
  db_options opts;
  opts.mode = open_mode::primary;
  opts.sync = true;
  {
    auto opened = open(dir, opts);
    if (opened) {
      auto cerr = count_contents(**opened, r);
      if (!cerr)
        return r;
      if (code_of(cerr) != ec::store_corrupt)
        return cerr;
      if (!r.damage.empty())
        r.damage += "; ";
      r.damage += describe(cerr);
    } else if (code_of(opened.error()) != ec::store_corrupt) {
      return opened.error();
    } else if (r.damage.empty()) {
      r.damage = describe(opened.error());
    }
  }
  auto options = make_options(open_mode::primary);
  auto log = std::make_shared<info_log>(dir / "LOG");
  log->arm();
  options.info_log = log;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  cfs.emplace_back(rocksdb::kDefaultColumnFamilyName,
                   cf_options(rocksdb::kDefaultColumnFamilyName));
  for (auto* cf : cf_names)
    cfs.emplace_back(cf, cf_options(cf));
  auto s = rocksdb::RepairDB(dir.string(), options, cfs);
  if (!s.ok())
    return map_status(s, "repair", dir);
  r.rebuilt = true;
  if (!r.method.empty())
    r.method += ", then ";
  r.method += "rebuilt the database from its table files with RocksDB's "
              "RepairDB (damaged table files are moved to "
              + (dir / "lost").string() + ")";
  caf::error failed;
  {
    auto opened = open(dir, opts);
    if (!opened)
      failed = opened.error();
    else
      failed = count_contents(**opened, r);
  }
  if (!failed)
    return r;
  // The rebuild did not give a readable database (RepairDB of RocksDB 7.8
  // does not know blob files, where large output chunks live): put the
  // directory back as it was.
  std::error_code e1, e2;
  fs::remove_all(dir, e1);
  fs::copy(r.backup, dir, fs::copy_options::recursive, e2);
  return make_error(ec::store_corrupt,
                    "cannot repair the database in " + dir.string() + " ("
                        + r.damage + "; after RocksDB's RepairDB: "
                        + describe(failed) + "); "
                        + (e1 || e2 ? "restoring it failed, the original is in "
                                    : "it is back as it was; a copy is in ")
                        + r.backup.string());
}

// -- task export and ingest (checkpoints)
// ---------------------------------------

namespace {

// The family index of `name` among those a task's records use, or cf_count.
cf_index task_family(std::string_view name) {
  for (auto cf : {cf_tasks, cf_events, cf_output})
    if (name == cf_names[cf])
      return cf;
  return cf_count;
}

// The task id a key of family `cf` belongs to, or nullopt when the key is not
// of makima's layout.
std::optional<std::string_view> key_task(cf_index cf, std::string_view key) {
  if (cf == cf_tasks)
    return valid_id(key) ? std::optional<std::string_view>{key} : std::nullopt;
  if (key.size() < 10 || key[key.size() - 9] != '\0')
    return std::nullopt;
  auto id = key.substr(0, key.size() - 9);
  if (!valid_id(id))
    return std::nullopt;
  return id;
}

} // namespace

caf::expected<std::vector<sst_file>> db::export_task(std::string_view id,
                                                     uint64_t from_seq,
                                                     uint64_t to_seq,
                                                     const fs::path& dir) {
  auto& d = *impl_;
  if (!valid_id(id))
    return bad_id(id);
  std::error_code fec;
  fs::create_directories(dir, fec);
  if (fec)
    return make_error(ec::io_error,
                      "cannot create " + dir.string() + ": " + fec.message());
  std::vector<sst_file> out;
  for (auto cf : {cf_tasks, cf_events, cf_output}) {
    if (!d.cfs[cf])
      continue;
    auto path = dir / (std::string{cf_names[cf]} + ".sst");
    fs::remove(path, fec);
    rocksdb::Options o{rocksdb::DBOptions{}, cf_options(cf_names[cf])};
    rocksdb::SstFileWriter writer{rocksdb::EnvOptions{}, o};
    bool opened = false;
    uint64_t entries = 0;
    caf::error failed;
    auto add = [&](const rocksdb::Slice& k, const rocksdb::Slice& v) {
      if (!opened) {
        auto s = writer.Open(path.string());
        if (!s.ok()) {
          failed = map_status(s, "write an export file of", d.dir);
          return false;
        }
        opened = true;
      }
      auto s = writer.Put(k, v);
      if (!s.ok()) {
        failed = map_status(s, "write an export file of", d.dir);
        return false;
      }
      ++entries;
      return true;
    };
    if (cf == cf_tasks) {
      std::string value;
      auto s = d.rdb->Get(rocksdb::ReadOptions{}, d.cfs[cf],
                          rocksdb::Slice{id.data(), id.size()}, &value);
      if (s.ok())
        add(rocksdb::Slice{id.data(), id.size()}, value);
      else if (!s.IsNotFound())
        return d.read_error(s);
    } else {
      uint64_t from = cf == cf_output ? from_seq : 0;
      uint64_t to =
          cf == cf_output ? to_seq : std::numeric_limits<uint64_t>::max();
      auto err = d.scan(cf, id, from, [&](uint64_t n, const rocksdb::Slice& v) {
        if (n >= to)
          return false;
        return add(rocksdb::Slice{seq_key(id, n)}, v);
      });
      if (err)
        return err;
    }
    if (failed) {
      fs::remove(path, fec);
      return failed;
    }
    if (entries == 0)
      continue;
    auto s = writer.Finish();
    if (!s.ok()) {
      fs::remove(path, fec);
      return map_status(s, "finish an export file of", d.dir);
    }
    out.push_back({cf_names[cf], path, entries});
  }
  return out;
}

caf::error db::ingest(const std::vector<sst_file>& files) {
  auto& d = *impl_;
  if (d.secondary())
    return make_error(ec::store_error, "the database in " + d.dir.string()
                                           + " is open read-only");
  // Check every file before the first is ingested: a damaged or foreign
  // file refuses the whole set.
  std::vector<cf_index> families;
  for (auto& f : files) {
    auto cf = task_family(f.family);
    if (cf == cf_count || !d.cfs[cf])
      return make_error(ec::checkpoint_corrupt,
                        "records file " + f.path.filename().string()
                            + " names an unknown column family '" + f.family
                            + "'");
    rocksdb::Options o{rocksdb::DBOptions{}, cf_options(cf_names[cf])};
    rocksdb::SstFileReader reader{o};
    auto s = reader.Open(f.path.string());
    if (s.ok())
      s = reader.VerifyChecksum();
    if (!s.ok())
      return make_error(ec::checkpoint_corrupt,
                        "records file " + f.path.filename().string()
                            + " is not a readable table file: " + s.ToString());
    std::unique_ptr<rocksdb::Iterator> it{
        reader.NewIterator(rocksdb::ReadOptions{})};
    std::optional<std::string> task;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto k = it->key();
      auto id = key_task(cf, std::string_view{k.data(), k.size()});
      if (!id || (task && *task != *id))
        return make_error(ec::checkpoint_corrupt,
                          "records file " + f.path.filename().string()
                              + " holds a key that is not of "
                              + (task ? "task " + *task : "one task"));
      if (!task)
        task = std::string{*id};
      if (cf == cf_output && it->value().empty())
        return make_error(ec::checkpoint_corrupt,
                          "records file " + f.path.filename().string()
                              + " holds an empty output record");
    }
    if (!it->status().ok())
      return make_error(ec::checkpoint_corrupt,
                        "records file " + f.path.filename().string()
                            + " cannot be read: " + it->status().ToString());
    families.push_back(cf);
  }
  // One IngestExternalFiles call for every family: one MANIFEST write (and
  // its fsyncs) instead of one per file, and atomic across the families —
  // after an error, or a crash during it, none of the files is in the
  // database. A family's files keep their order in `files`: overlapping
  // files of one call get increasing sequence numbers in list order, so a
  // later file's keys still win (RocksDB takes one arg per family).
  constexpr size_t none = std::numeric_limits<size_t>::max();
  std::vector<rocksdb::IngestExternalFileArg> args;
  std::vector<size_t> arg_of(cf_count, none);
  for (size_t i = 0; i < files.size(); ++i) {
    auto cf = families[i];
    if (arg_of[cf] == none) {
      arg_of[cf] = args.size();
      rocksdb::IngestExternalFileArg arg;
      arg.column_family = d.cfs[cf];
      arg.options.move_files = false; // the caller's staging files stay its own
      arg.options.allow_global_seqno = true;
      arg.options.allow_blocking_flush = true;
      args.push_back(std::move(arg));
    }
    args[arg_of[cf]].external_files.push_back(files[i].path.string());
  }
  if (args.empty())
    return caf::none;
  auto s = d.rdb->IngestExternalFiles(args);
  if (!s.ok()) {
    // Our checks passed, so RocksDB refused what it read of the files (a
    // damaged block, a table of another database's family): the set is
    // not a checkpoint's records.
    if (s.IsCorruption() || s.IsInvalidArgument()) {
      std::string names;
      for (auto& f : files)
        names += (names.empty() ? "" : ", ") + f.path.filename().string();
      return make_error(ec::checkpoint_corrupt,
                        "records files " + names
                            + " cannot be ingested: " + s.ToString());
    }
    return map_status(s, "ingest records into", d.dir);
  }
  return caf::none;
}

} // namespace makima::store
