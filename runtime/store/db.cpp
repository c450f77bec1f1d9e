// RocksDB implementation of makima::store::db (see db.hpp for the layout).
#include "runtime/store/db.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <system_error>
#include <utility>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include "runtime/error.hpp"

namespace fs = std::filesystem;

namespace makima::store {

namespace {

constexpr const char* schema_key = "schema";
constexpr const char* schema_version = "1";

// Indexes of our column families in impl::cfs.
enum cf_index : size_t {
  cf_tasks = 0,
  cf_events,
  cf_output,
  cf_meta,
  cf_outbox,
  cf_count
};
constexpr const char* cf_names[cf_count] = {"tasks", "events", "output",
                                            "meta", "outbox"};

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
                        + "); makima did not modify it: restore it from a "
                          "backup or move the directory away");
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
    if (name.rfind("MANIFEST-", 0) == 0 || ext == ".sst" || ext == ".log"
        || ext == ".blob")
      return true;
  }
  return false;
}

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
    // S3 need, see notes/git-rocksdb-s3.md). Throughput does not decide it:
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

} // namespace

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
  impl_->ops.push_back({cf_outbox, outbox_key(task, attempt, 0),
                        std::move(end), impl::kind::del_range});
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
  // Set after a failed write: the next write first tries DB::Resume().
  bool write_failed = false;

  ~impl() {
    if (rdb) {
      for (auto* h : handles)
        rdb->DestroyColumnFamilyHandle(h);
      handles.clear();
      rdb->Close().PermitUncheckedError();
      rdb.reset();
    }
  }

  bool secondary() const { return opts.mode == open_mode::secondary; }

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
  } else if (opts.secondary_dir.empty()) {
    return make_error(ec::invalid_argument,
                      "opening the database in " + dir_str
                          + " read-only needs a secondary dir");
  }
  // Look before RocksDB touches anything (DB::Open rotates LOG files even
  // when it then fails): a broken database must stay exactly as it is.
  auto current = dir / "CURRENT";
  std::vector<std::string> names;
  if (!fs::exists(current, err)) {
    if (opts.mode == open_mode::secondary)
      return make_error(ec::store_error, "no makima database in " + dir_str);
    if (has_db_files(dir))
      return corrupt_error(dir, "CURRENT is missing but database files exist");
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
    if (opts.mode == open_mode::secondary && !s.IsCorruption()
        && !is_no_space(s))
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
  if (d.write_failed) {
    // After a failed write (typically ENOSPC) RocksDB stops accepting writes
    // until the background error is cleared. Try to clear it now: this works
    // once space is available again, otherwise the write below reports it.
    auto rs = d.rdb->Resume();
    if (rs.ok())
      d.write_failed = false;
  }
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
      return make_error(ec::store_full,
                        describe(e)
                            + "; every write fails until space is freed (the "
                              "database then recovers by itself within "
                              "seconds, or on the next start)");
    return e;
  }
  return caf::none;
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

caf::expected<std::optional<std::string>>
db::get_meta(std::string_view key) {
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
