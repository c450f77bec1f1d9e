// The state dir as content-addressed blobs (docs/checkpoint-format.md §3):
// a zstd-compressed JSON index, one zstd-compressed pax tar of the small
// files and zstd-compressed 4 MiB chunks of the large ones, and back. Every
// libarchive, zstd and OpenSSL call of the checkpoint's state dir is here;
// every failure leaves as a makima error naming the path, blob or limit.
#include "runtime/archive/archive.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <system_error>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

#include "runtime/error.hpp"
#include "runtime/hex.hpp"
#include "runtime/utf8.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace makima::archive {

namespace {

constexpr const char* index_format = "makima-state-index";
constexpr int index_version = 1;
constexpr int zstd_level = 3;
constexpr size_t io_block = 64 << 10;

// -- small helpers ------------------------------------------------------------

caf::error io_fail(const std::string& what, int err) {
  return make_error(ec::io_error, what + ": " + std::strerror(err));
}

caf::error corrupt(const std::string& what) {
  return make_error(ec::checkpoint_corrupt, what);
}

/// `s` in single quotes, control bytes (a NUL in a hostile path) as \xNN.
std::string in_quotes(const std::string& s) {
  std::string out = "'";
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "'";
}

/// Closes a file descriptor on scope exit.
struct fd_guard {
  int fd = -1;
  explicit fd_guard(int f) : fd(f) {}
  ~fd_guard() {
    if (fd >= 0)
      ::close(fd);
  }
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
};

bool write_all(int fd, const void* data, size_t n) {
  auto p = static_cast<const char*>(data);
  while (n > 0) {
    auto w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

/// Reads up to `n` bytes (fewer only at end of file); -1 on error.
ssize_t read_full(int fd, void* data, size_t n) {
  auto p = static_cast<char*>(data);
  size_t got = 0;
  while (got < n) {
    auto r = ::read(fd, p + got, n - got);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0)
      break;
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

/// SHA-256 through OpenSSL's EVP interface.
class sha256_hasher {
public:
  sha256_hasher() : ctx_(EVP_MD_CTX_new()) {
    EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr);
  }
  ~sha256_hasher() { EVP_MD_CTX_free(ctx_); }
  sha256_hasher(const sha256_hasher&) = delete;
  sha256_hasher& operator=(const sha256_hasher&) = delete;

  void update(const void* data, size_t n) { EVP_DigestUpdate(ctx_, data, n); }

  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    return to_hex(md, len);
  }


private:
  EVP_MD_CTX* ctx_;
};

bool is_sha256_hex(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

struct cctx_deleter {
  void operator()(ZSTD_CCtx* p) const { ZSTD_freeCCtx(p); }
};
struct dctx_deleter {
  void operator()(ZSTD_DCtx* p) const { ZSTD_freeDCtx(p); }
};
using cctx_ptr = std::unique_ptr<ZSTD_CCtx, cctx_deleter>;
using dctx_ptr = std::unique_ptr<ZSTD_DCtx, dctx_deleter>;

/// A compression context with the format's fixed parameters: level 3, no
/// worker threads, so the same input gives the same bytes.
cctx_ptr make_cctx() {
  cctx_ptr c{ZSTD_createCCtx()};
  if (c) {
    ZSTD_CCtx_setParameter(c.get(), ZSTD_c_compressionLevel, zstd_level);
    ZSTD_CCtx_setParameter(c.get(), ZSTD_c_nbWorkers, 0);
  }
  return c;
}

// -- blobs in staging ---------------------------------------------------------

/// Writes one blob into staging under a temporary name, hashing it on the
/// way; `commit` renames it to its SHA-256. Removed unless committed.
class blob_writer {
public:
  caf::error open(const fs::path& staging) {
    auto tmpl = (staging / ".tmp-XXXXXX").string();
    fd_ = ::mkstemp(tmpl.data());
    if (fd_ < 0)
      return io_fail("cannot create a file in " + staging.string(), errno);
    staging_ = staging;
    tmp_ = tmpl;
    return {};
  }

  ~blob_writer() {
    if (fd_ >= 0)
      ::close(fd_);
    if (!tmp_.empty())
      ::unlink(tmp_.c_str());
  }

  caf::error write(const void* data, size_t n) {
    hash_.update(data, n);
    size_ += n;
    if (!write_all(fd_, data, n))
      return io_fail("cannot write " + tmp_.string(), errno);
    return {};
  }

  caf::expected<blob> commit(const std::string& role) {
    blob b;
    b.role = role;
    b.sha256 = hash_.hex();
    b.size = size_;
    b.file = staging_ / b.sha256;
    if (::close(fd_) != 0) {
      fd_ = -1;
      return io_fail("cannot write " + tmp_.string(), errno);
    }
    fd_ = -1;
    if (::rename(tmp_.c_str(), b.file.c_str()) != 0)
      return io_fail(
          "cannot rename " + tmp_.string() + " to " + b.file.string(), errno);
    tmp_.clear();
    return b;
  }

private:
  int fd_ = -1;
  fs::path staging_;
  fs::path tmp_;
  sha256_hasher hash_;
  uint64_t size_ = 0;
};

/// Writes `data` as one blob (unless staging already holds it).
caf::expected<blob> write_blob(const fs::path& staging, const std::string& role,
                               const char* data, size_t n) {
  sha256_hasher h;
  h.update(data, n);
  blob b;
  b.role = role;
  b.sha256 = h.hex();
  b.size = n;
  b.file = staging / b.sha256;
  std::error_code err;
  if (fs::is_regular_file(b.file, err) && fs::file_size(b.file, err) == n)
    return b;
  blob_writer w;
  if (auto e = w.open(staging))
    return e;
  if (auto e = w.write(data, n))
    return e;
  return w.commit(role);
}

// -- entries and the index ----------------------------------------------------

enum class kind { file, dir, symlink };

struct chunk_ref {
  std::string sha256;
  /// Uncompressed bytes.
  uint64_t size = 0;
  /// Bytes of the blob.
  uint64_t compressed = 0;
};

struct entry {
  std::string path;
  kind type = kind::file;
  uint32_t mode = 0;
  int64_t mtime = 0; // nanoseconds since the epoch
  uint64_t size = 0;
  std::string target;
  bool chunked = false;
  std::vector<chunk_ref> chunks;
};

const char* kind_name(kind k) {
  switch (k) {
  case kind::file:
    return "file";
  case kind::dir:
    return "dir";
  case kind::symlink:
    return "symlink";
  }
  return "file";
}

json to_json(const entry& e) {
  json j = json::object();
  j["path"] = e.path;
  j["type"] = kind_name(e.type);
  j["mode"] = e.mode;
  j["mtime"] = e.mtime;
  if (e.type == kind::file) {
    j["size"] = e.size;
    if (e.chunked) {
      json cs = json::array();
      for (const auto& c : e.chunks)
        cs.push_back(json{{"sha256", c.sha256},
                          {"size", c.size},
                          {"compressed", c.compressed}});
      j["chunks"] = std::move(cs);
    }
  } else if (e.type == kind::symlink) {
    j["target"] = e.target;
  }
  return j;
}

/// Why `p` is not a safe relative path (empty when it is): the checks of
/// libarchive's secure extraction flags, applied to index paths and
/// archive member names alike.
std::string unsafe_reason(const std::string& p) {
  if (p.empty())
    return "it is empty";
  if (p.find('\0') != std::string::npos)
    return "it contains a NUL byte";
  if (p.front() == '/')
    return "it is absolute";
  size_t start = 0;
  while (start <= p.size()) {
    auto end = p.find('/', start);
    if (end == std::string::npos)
      end = p.size();
    auto part = std::string_view{p}.substr(start, end - start);
    if (part.empty())
      return "it has an empty component";
    if (part == "..")
      return "it has a '..' component";
    if (part == ".")
      return "it has a '.' component";
    start = end + 1;
  }
  return {};
}

std::string parent_of(const std::string& p) {
  auto slash = p.rfind('/');
  return slash == std::string::npos ? std::string{} : p.substr(0, slash);
}

/// Index of the entry with path `p` among `entries[0, end)` (sorted).
const entry* find_entry(const std::vector<entry>& entries, size_t end,
                        const std::string& p) {
  auto last = entries.begin() + static_cast<ptrdiff_t>(end);
  auto it = std::lower_bound(
      entries.begin(), last, p,
      [](const entry& e, const std::string& key) { return e.path < key; });
  return it != last && it->path == p ? &*it : nullptr;
}

caf::error limit_error(const std::string& what, const char* name,
                       uint64_t value) {
  return make_error(ec::checkpoint_limit, what + " (limit " + name + " = "
                                              + std::to_string(value) + ")");
}

/// Decompresses the zstd file `file` into memory, at most `bound` bytes
/// (beyond: checkpoint_limit naming `limit_name`).
caf::expected<std::string> read_zstd_file(const fs::path& file, uint64_t bound,
                                          const char* limit_name,
                                          const std::string& what) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return io_fail("cannot open " + what + " " + file.string(), errno);
  fd_guard guard{fd};
  dctx_ptr d{ZSTD_createDCtx()};
  std::vector<char> in(io_block);
  std::vector<char> out(ZSTD_DStreamOutSize());
  std::string text;
  size_t last = 1;
  bool any = false;
  for (;;) {
    auto n = read_full(fd, in.data(), in.size());
    if (n < 0)
      return io_fail("cannot read " + what + " " + file.string(), errno);
    if (n == 0)
      break;
    any = true;
    ZSTD_inBuffer ib{in.data(), static_cast<size_t>(n), 0};
    // A full output buffer may leave output inside zstd: drain it too.
    for (bool full = true; ib.pos < ib.size || full;) {
      ZSTD_outBuffer ob{out.data(), out.size(), 0};
      last = ZSTD_decompressStream(d.get(), &ob, &ib);
      if (ZSTD_isError(last))
        return corrupt(what + " " + file.string()
                       + " is not valid zstd: " + ZSTD_getErrorName(last));
      if (text.size() + ob.pos > bound)
        return limit_error(what + " " + file.string()
                               + " decompresses to more than "
                               + std::to_string(bound) + " bytes",
                           limit_name, bound);
      text.append(out.data(), ob.pos);
      full = ob.pos == ob.size;
    }
  }
  if (!any || last != 0)
    return corrupt(what + " " + file.string() + " is truncated");
  return text;
}

/// Reads and checks an index: format, types, sorted unique safe paths whose
/// parents are directories (not symlinks), chunk sizes, and `lim`.
caf::expected<std::vector<entry>> read_index(const fs::path& file,
                                             const limits& lim) {
  auto text = read_zstd_file(file, lim.max_index, "max_index", "state index");
  if (!text)
    return text.error();
  auto doc = json::parse(*text, nullptr, false);
  text->clear();
  text->shrink_to_fit();
  auto where = "state index " + file.string();
  if (doc.is_discarded())
    return corrupt(where + " is not JSON");
  std::vector<entry> entries;
  try {
    if (!doc.is_object() || doc.value("format", "") != index_format)
      return corrupt(where + " is not a makima state index");
    if (!doc.at("version").is_number_unsigned()
        || doc.at("version").get<uint64_t>() != index_version)
      return corrupt(where + " has an unknown version");
    const auto& list = doc.at("entries");
    if (!list.is_array())
      return corrupt(where + " has no entry list");
    if (list.size() > lim.max_entries)
      return limit_error(where + " lists " + std::to_string(list.size())
                             + " entries",
                         "max_entries", lim.max_entries);
    entries.reserve(list.size());
    uint64_t bytes = 0;
    for (const auto& j : list) {
      entry e;
      if (!j.is_object() || !j.at("path").is_string())
        return corrupt(where + " has an entry without a path");
      e.path = j.at("path").get<std::string>();
      if (auto why = unsafe_reason(e.path); !why.empty())
        return make_error(ec::checkpoint_unsafe_path, where + ": unsafe path "
                                                          + in_quotes(e.path)
                                                          + ": " + why);
      auto type = j.at("type").get<std::string>();
      if (type == "file")
        e.type = kind::file;
      else if (type == "dir")
        e.type = kind::dir;
      else if (type == "symlink")
        e.type = kind::symlink;
      else
        return corrupt(where + ": " + in_quotes(e.path) + " has unknown type "
                       + type);
      if (!j.at("mode").is_number_unsigned()
          || j.at("mode").get<uint64_t>() > 07777)
        return corrupt(where + ": " + in_quotes(e.path) + " has a bad mode");
      e.mode = j.at("mode").get<uint32_t>();
      if (!j.at("mtime").is_number_integer())
        return corrupt(where + ": " + in_quotes(e.path) + " has a bad mtime");
      e.mtime = j.at("mtime").get<int64_t>();
      if (e.type == kind::file) {
        if (!j.at("size").is_number_unsigned())
          return corrupt(where + ": " + in_quotes(e.path) + " has a bad size");
        e.size = j.at("size").get<uint64_t>();
        if (bytes + e.size < bytes || bytes + e.size > lim.max_bytes)
          return limit_error(
              where + " holds more than " + std::to_string(lim.max_bytes)
                  + " bytes of files (at " + in_quotes(e.path) + ")",
              "max_bytes", lim.max_bytes);
        bytes += e.size;
        if (auto it = j.find("chunks"); it != j.end()) {
          e.chunked = true;
          uint64_t sum = 0;
          for (const auto& c : *it) {
            chunk_ref r;
            r.sha256 = c.at("sha256").get<std::string>();
            r.size = c.at("size").get<uint64_t>();
            r.compressed = c.value("compressed", uint64_t{0});
            if (!is_sha256_hex(r.sha256) || r.size == 0 || r.size > chunk_size)
              return corrupt(where + ": " + in_quotes(e.path)
                             + " has a bad chunk");
            sum += r.size;
            e.chunks.push_back(std::move(r));
          }
          if (sum != e.size)
            return corrupt(where + ": the chunks of " + in_quotes(e.path)
                           + " add up to " + std::to_string(sum)
                           + " bytes, not " + std::to_string(e.size));
        }
      } else if (e.type == kind::symlink) {
        e.target = j.at("target").get<std::string>();
        if (e.target.empty() || e.target.find('\0') != std::string::npos)
          return corrupt(where + ": symlink " + in_quotes(e.path)
                         + " has a bad target");
      }
      if (!entries.empty() && !(entries.back().path < e.path))
        return corrupt(where + " is not sorted by path (at " + in_quotes(e.path)
                       + ")");
      if (auto parent = parent_of(e.path); !parent.empty()) {
        auto p = find_entry(entries, entries.size(), parent);
        if (p != nullptr && p->type == kind::symlink)
          return make_error(ec::checkpoint_unsafe_path,
                            where + ": unsafe path " + in_quotes(e.path)
                                + ": it passes through the symlink "
                                + in_quotes(parent));
        if (p == nullptr || p->type != kind::dir)
          return corrupt(where + ": the parent of " + in_quotes(e.path)
                         + " is not a directory of the index");
      }
      entries.push_back(std::move(e));
    }
  } catch (const json::exception& ex) {
    return corrupt(where + " is malformed: " + ex.what());
  }
  return entries;
}

// -- capture ------------------------------------------------------------------

int64_t mtime_ns(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000
         + st.st_mtim.tv_nsec;
}

/// Collects the entries under `root` (relative paths, not sorted).
caf::error walk(const fs::path& root, const std::string& rel,
                std::vector<entry>& out, uint64_t& bytes, const limits& lim) {
  auto dir = rel.empty() ? root : root / rel;
  std::error_code err;
  fs::directory_iterator it{dir, err};
  if (err)
    return make_error(ec::io_error, "cannot read the directory " + dir.string()
                                        + ": " + err.message());
  std::vector<std::string> subdirs;
  for (; it != fs::directory_iterator{}; it.increment(err)) {
    auto name = it->path().filename().string();
    auto path = rel.empty() ? name : rel + "/" + name;
    auto full = root / path;
    if (!valid_utf8(name))
      return make_error(ec::io_error, "cannot capture " + full.string()
                                          + ": its name is not valid UTF-8");
    struct stat st;
    if (::lstat(full.c_str(), &st) != 0) {
      if (errno == ENOENT)
        continue; // removed meanwhile
      return io_fail("cannot stat " + full.string(), errno);
    }
    entry e;
    e.path = path;
    e.mode = st.st_mode & 07777;
    e.mtime = mtime_ns(st);
    if (S_ISREG(st.st_mode)) {
      e.type = kind::file;
      e.size = static_cast<uint64_t>(st.st_size);
      bytes += e.size;
      if (bytes > lim.max_bytes)
        return limit_error("state dir " + root.string() + " holds more than "
                               + std::to_string(lim.max_bytes)
                               + " bytes of files",
                           "max_bytes", lim.max_bytes);
    } else if (S_ISDIR(st.st_mode)) {
      e.type = kind::dir;
      subdirs.push_back(path);
    } else if (S_ISLNK(st.st_mode)) {
      e.type = kind::symlink;
      std::vector<char> buf(static_cast<size_t>(st.st_size) + 1);
      for (;;) {
        auto n = ::readlink(full.c_str(), buf.data(), buf.size());
        if (n < 0)
          return io_fail("cannot read the symlink " + full.string(), errno);
        if (static_cast<size_t>(n) < buf.size()) {
          e.target.assign(buf.data(), static_cast<size_t>(n));
          break;
        }
        buf.resize(buf.size() * 2);
      }
      if (!valid_utf8(e.target))
        return make_error(ec::io_error,
                          "cannot capture the symlink " + full.string()
                              + ": its target is not valid UTF-8");
    } else {
      continue; // sockets, fifos, devices
    }
    out.push_back(std::move(e));
    if (out.size() > lim.max_entries)
      return limit_error("state dir " + root.string() + " has more than "
                             + std::to_string(lim.max_entries) + " entries",
                         "max_entries", lim.max_entries);
  }
  if (err)
    return make_error(ec::io_error, "cannot read the directory " + dir.string()
                                        + ": " + err.message());
  for (const auto& sub : subdirs)
    if (auto e = walk(root, sub, out, bytes, lim))
      return e;
  return {};
}

/// Opens a captured regular file without following a symlink and checks
/// that it still has the size the walk saw.
caf::expected<int> open_captured(const fs::path& full, const entry& e) {
  int fd = ::open(full.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0)
    return io_fail("cannot open " + full.string(), errno);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)
      || static_cast<uint64_t>(st.st_size) != e.size) {
    ::close(fd);
    return make_error(ec::io_error, "cannot capture " + full.string()
                                        + ": it changed while being captured");
  }
  return fd;
}

/// libarchive's write callback: compresses the tar stream into the blob.
struct tar_sink {
  ZSTD_CCtx* cctx = nullptr;
  blob_writer* out = nullptr;
  std::vector<char> buf;
  caf::error err;

  bool push(const void* data, size_t n, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{data, n, 0};
    for (;;) {
      ZSTD_outBuffer o{buf.data(), buf.size(), 0};
      auto r = ZSTD_compressStream2(cctx, &o, &in, mode);
      if (ZSTD_isError(r)) {
        err = make_error(ec::io_error,
                         std::string{"zstd failed: "} + ZSTD_getErrorName(r));
        return false;
      }
      if (o.pos > 0)
        if (auto e = out->write(buf.data(), o.pos)) {
          err = std::move(e);
          return false;
        }
      if (mode == ZSTD_e_end ? r == 0 : in.pos == in.size)
        return true;
    }
  }
};

la_ssize_t tar_write_cb(struct archive*, void* ctx, const void* data,
                        size_t n) {
  auto* sink = static_cast<tar_sink*>(ctx);
  if (!sink->push(data, n, ZSTD_e_continue))
    return -1;
  return static_cast<la_ssize_t>(n);
}

struct archive_write_deleter {
  void operator()(struct archive* a) const { archive_write_free(a); }
};
struct archive_read_deleter {
  void operator()(struct archive* a) const { archive_read_free(a); }
};
struct entry_deleter {
  void operator()(struct archive_entry* e) const { archive_entry_free(e); }
};
using write_ptr = std::unique_ptr<struct archive, archive_write_deleter>;
using read_ptr = std::unique_ptr<struct archive, archive_read_deleter>;
using entry_ptr = std::unique_ptr<struct archive_entry, entry_deleter>;

std::string la_error(struct archive* a) {
  auto s = archive_error_string(a);
  return s != nullptr ? s : "unknown libarchive error";
}

/// Writes the small files of `entries` as one zstd-compressed pax tar.
caf::expected<blob> write_archive(const fs::path& dir, const fs::path& staging,
                                  const std::vector<entry>& entries) {
  blob_writer out;
  if (auto e = out.open(staging))
    return e;
  auto cctx = make_cctx();
  tar_sink sink;
  sink.cctx = cctx.get();
  sink.out = &out;
  sink.buf.resize(ZSTD_CStreamOutSize());
  write_ptr a{archive_write_new()};
  auto what = "cannot write the state archive of " + dir.string();
  if (archive_write_set_format_pax(a.get()) != ARCHIVE_OK
      || archive_write_set_format_option(a.get(), "pax", "hdrcharset", "BINARY")
             != ARCHIVE_OK
      || archive_write_add_filter_none(a.get()) != ARCHIVE_OK
      || archive_write_open(a.get(), &sink, nullptr, tar_write_cb, nullptr)
             != ARCHIVE_OK)
    return make_error(ec::io_error, what + ": " + la_error(a.get()));
  std::vector<char> buf(io_block);
  for (const auto& e : entries) {
    if (e.type != kind::file || e.size >= large_file)
      continue;
    auto full = dir / e.path;
    auto fd = open_captured(full, e);
    if (!fd)
      return fd.error();
    fd_guard guard{*fd};
    entry_ptr ae{archive_entry_new()};
    archive_entry_set_pathname(ae.get(), e.path.c_str());
    archive_entry_set_filetype(ae.get(), AE_IFREG);
    archive_entry_set_perm(ae.get(), e.mode);
    archive_entry_set_size(ae.get(), static_cast<la_int64_t>(e.size));
    archive_entry_set_mtime(ae.get(), 0, 0);
    archive_entry_set_uid(ae.get(), 0);
    archive_entry_set_gid(ae.get(), 0);
    if (archive_write_header(a.get(), ae.get()) != ARCHIVE_OK)
      return sink.err ? sink.err
                      : make_error(ec::io_error, what + ": " + e.path + ": "
                                                     + la_error(a.get()));
    uint64_t left = e.size;
    while (left > 0) {
      auto n = read_full(*fd, buf.data(), std::min<uint64_t>(left, buf.size()));
      if (n < 0)
        return io_fail("cannot read " + full.string(), errno);
      if (n == 0)
        return make_error(ec::io_error,
                          "cannot capture " + full.string()
                              + ": it changed while being captured");
      if (archive_write_data(a.get(), buf.data(), static_cast<size_t>(n)) != n)
        return sink.err
                   ? sink.err
                   : make_error(ec::io_error, what + ": " + la_error(a.get()));
      left -= static_cast<uint64_t>(n);
    }
    char extra;
    if (read_full(*fd, &extra, 1) != 0)
      return make_error(ec::io_error,
                        "cannot capture " + full.string()
                            + ": it changed while being captured");
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK)
    return sink.err ? sink.err
                    : make_error(ec::io_error, what + ": " + la_error(a.get()));
  if (!sink.push(nullptr, 0, ZSTD_e_end))
    return sink.err;
  return out.commit("state-archive");
}

/// Cuts a large file into compressed chunks, writing the new ones.
caf::error write_chunks(const fs::path& dir, const fs::path& staging, entry& e,
                        std::vector<blob>& blobs,
                        std::unordered_set<std::string>& seen) {
  auto full = dir / e.path;
  auto fd = open_captured(full, e);
  if (!fd)
    return fd.error();
  fd_guard guard{*fd};
  auto cctx = make_cctx();
  std::vector<char> in(chunk_size);
  std::vector<char> out(ZSTD_compressBound(chunk_size));
  e.chunked = true;
  uint64_t left = e.size;
  while (left > 0) {
    auto want = static_cast<size_t>(std::min<uint64_t>(left, chunk_size));
    auto n = read_full(*fd, in.data(), want);
    if (n < 0)
      return io_fail("cannot read " + full.string(), errno);
    if (static_cast<size_t>(n) != want)
      return make_error(ec::io_error,
                        "cannot capture " + full.string()
                            + ": it changed while being captured");
    auto z =
        ZSTD_compress2(cctx.get(), out.data(), out.size(), in.data(), want);
    if (ZSTD_isError(z))
      return make_error(ec::io_error, "cannot compress a chunk of "
                                          + full.string() + ": "
                                          + ZSTD_getErrorName(z));
    auto b = write_blob(staging, "state-chunk", out.data(), z);
    if (!b)
      return b.error();
    e.chunks.push_back(chunk_ref{b->sha256, want, b->size});
    if (seen.insert(b->sha256).second)
      blobs.push_back(std::move(*b));
    left -= want;
  }
  char extra;
  if (read_full(*fd, &extra, 1) != 0)
    return make_error(ec::io_error, "cannot capture " + full.string()
                                        + ": it changed while being captured");
  return {};
}

// -- restore ------------------------------------------------------------------

/// libarchive's read callback: the decompressed tar stream, bounded.
struct tar_source {
  int fd = -1;
  ZSTD_DCtx* dctx = nullptr;
  std::vector<char> in;
  std::vector<char> out;
  ZSTD_inBuffer ib{nullptr, 0, 0};
  size_t last = 1;
  bool eof = false;
  bool any = false;
  bool full = false; // the last output filled the buffer: more may wait
  uint64_t total = 0;
  uint64_t bound = 0;
  std::string file;
  caf::error err;
};

la_ssize_t tar_read_cb(struct archive*, void* ctx, const void** buf) {
  auto* s = static_cast<tar_source*>(ctx);
  for (;;) {
    if (s->ib.pos == s->ib.size && !s->full && !s->eof) {
      auto n = read_full(s->fd, s->in.data(), s->in.size());
      if (n < 0) {
        s->err = io_fail("cannot read the state archive " + s->file, errno);
        return -1;
      }
      if (n == 0)
        s->eof = true;
      else
        s->any = true;
      s->ib = ZSTD_inBuffer{s->in.data(), static_cast<size_t>(n), 0};
    }
    if (s->ib.pos == s->ib.size && !s->full && s->eof) {
      if (!s->any || s->last != 0) {
        s->err = corrupt("state archive " + s->file + " is truncated");
        return -1;
      }
      return 0;
    }
    ZSTD_outBuffer ob{s->out.data(), s->out.size(), 0};
    s->last = ZSTD_decompressStream(s->dctx, &ob, &s->ib);
    if (ZSTD_isError(s->last)) {
      s->err = corrupt("state archive " + s->file
                       + " is not valid zstd: " + ZSTD_getErrorName(s->last));
      return -1;
    }
    s->full = ob.pos == ob.size;
    s->total += ob.pos;
    if (s->total > s->bound) {
      s->err =
          limit_error("state archive " + s->file + " decompresses to more than "
                          + std::to_string(s->bound) + " bytes",
                      "max_bytes", s->bound);
      return -1;
    }
    if (ob.pos > 0) {
      *buf = s->out.data();
      return static_cast<la_ssize_t>(ob.pos);
    }
  }
}

/// Makes everything under `root` removable, then removes it.
void remove_tree(const fs::path& root) {
  std::error_code err;
  ::chmod(root.c_str(), 0700);
  for (fs::recursive_directory_iterator it{root, err}, end; !err && it != end;
       it.increment(err)) {
    if (it->is_directory(err) && !it->is_symlink(err))
      ::chmod(it->path().c_str(), 0700);
  }
  fs::remove_all(root, err);
}

/// Extracts the archive's members into `root`, each checked against the
/// index.
caf::error extract_archive(const fs::path& file, const fs::path& root,
                           const std::vector<entry>& entries,
                           std::vector<bool>& seen, const limits& lim) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return io_fail("cannot open the state archive " + file.string(), errno);
  fd_guard guard{fd};
  dctx_ptr dctx{ZSTD_createDCtx()};
  tar_source src;
  src.fd = fd;
  src.dctx = dctx.get();
  src.in.resize(io_block);
  src.out.resize(ZSTD_DStreamOutSize());
  src.file = file.string();
  // The tar of `n` members of at most max_bytes: headers (with pax records
  // for long names), padding and the end blocks stay well under 16 KiB a
  // member plus 1 MiB.
  uint64_t members = 0;
  for (const auto& e : entries)
    members += e.type == kind::file && !e.chunked;
  src.bound = lim.max_bytes + (members + 1) * 16384 + (1u << 20);
  read_ptr r{archive_read_new()};
  archive_read_support_format_tar(r.get());
  if (archive_read_open(r.get(), &src, nullptr, tar_read_cb, nullptr)
      != ARCHIVE_OK)
    return src.err ? src.err
                   : corrupt("state archive " + src.file
                             + " is not a tar: " + la_error(r.get()));
  write_ptr w{archive_write_disk_new()};
  archive_write_disk_set_options(
      w.get(), ARCHIVE_EXTRACT_SECURE_NODOTDOT | ARCHIVE_EXTRACT_SECURE_SYMLINKS
                   | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_NO_OVERWRITE);
  auto where = "state archive " + src.file;
  for (;;) {
    struct archive_entry* ae = nullptr;
    auto rc = archive_read_next_header(r.get(), &ae);
    if (rc == ARCHIVE_EOF)
      break;
    if (rc != ARCHIVE_OK)
      return src.err ? src.err
                     : corrupt(where + " is damaged: " + la_error(r.get()));
    auto raw = archive_entry_pathname(ae);
    std::string name = raw != nullptr ? raw : "";
    if (auto why = unsafe_reason(name); !why.empty())
      return make_error(ec::checkpoint_unsafe_path, where + ": unsafe member "
                                                        + in_quotes(name) + ": "
                                                        + why);
    if (archive_entry_hardlink(ae) != nullptr
        || archive_entry_filetype(ae) == AE_IFLNK)
      return make_error(ec::checkpoint_unsafe_path,
                        where + ": unsafe member " + in_quotes(name)
                            + ": it is a link (the archive holds only files)");
    if (archive_entry_filetype(ae) != AE_IFREG)
      return corrupt(where + ": member " + in_quotes(name)
                     + " is not a regular file");
    auto e = find_entry(entries, entries.size(), name);
    if (e == nullptr || e->type != kind::file || e->chunked)
      return corrupt(where + ": member " + in_quotes(name)
                     + " is not a file of the index");
    auto pos = static_cast<size_t>(e - entries.data());
    if (!archive_entry_size_is_set(ae)
        || static_cast<uint64_t>(archive_entry_size(ae)) != e->size)
      return corrupt(where + ": member " + in_quotes(name) + " has "
                     + std::to_string(archive_entry_size(ae))
                     + " bytes, the index says " + std::to_string(e->size));
    if (seen[pos])
      return corrupt(where + ": member " + in_quotes(name) + " appears twice");
    seen[pos] = true;
    auto dest = (root / name).string();
    archive_entry_set_pathname(ae, dest.c_str());
    archive_entry_set_perm(ae, 0600);
    if (archive_write_header(w.get(), ae) != ARCHIVE_OK) {
      auto msg = la_error(w.get());
      if (msg.find("symlink") != std::string::npos
          || msg.find("..") != std::string::npos)
        return make_error(ec::checkpoint_unsafe_path, where + ": unsafe member "
                                                          + in_quotes(name)
                                                          + ": " + msg);
      return make_error(ec::io_error, "cannot write " + dest + ": " + msg);
    }
    for (;;) {
      const void* buf = nullptr;
      size_t len = 0;
      la_int64_t off = 0;
      auto d = archive_read_data_block(r.get(), &buf, &len, &off);
      if (d == ARCHIVE_EOF)
        break;
      if (d != ARCHIVE_OK)
        return src.err ? src.err
                       : corrupt(where + ": member " + in_quotes(name)
                                 + " is damaged: " + la_error(r.get()));
      if (archive_write_data_block(w.get(), buf, len, off) != ARCHIVE_OK)
        return make_error(ec::io_error,
                          "cannot write " + dest + ": " + la_error(w.get()));
    }
    if (archive_write_finish_entry(w.get()) != ARCHIVE_OK)
      return make_error(ec::io_error,
                        "cannot write " + dest + ": " + la_error(w.get()));
  }
  if (archive_write_close(w.get()) != ARCHIVE_OK)
    return make_error(ec::io_error, "cannot finish the extraction into "
                                        + root.string() + ": "
                                        + la_error(w.get()));
  return {};
}

/// Reassembles a chunked file from its chunks, each decompressed with the
/// bound of its recorded size.
caf::error write_chunked(const fs::path& root, const entry& e,
                         const chunk_source& chunks) {
  auto dest = root / e.path;
  int out = ::open(dest.c_str(),
                   O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (out < 0)
    return io_fail("cannot create " + dest.string(), errno);
  fd_guard out_guard{out};
  dctx_ptr dctx{ZSTD_createDCtx()};
  std::vector<char> in(io_block);
  std::vector<char> buf(ZSTD_DStreamOutSize());
  for (const auto& c : e.chunks) {
    auto what = "chunk " + c.sha256 + " of " + in_quotes(e.path);
    auto file = chunks(c.sha256);
    if (!file)
      return file.error();
    int fd = ::open(file->c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return io_fail("cannot open " + what + " (" + file->string() + ")",
                     errno);
    fd_guard guard{fd};
    ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
    uint64_t total = 0;
    size_t last = 1;
    for (;;) {
      auto n = read_full(fd, in.data(), in.size());
      if (n < 0)
        return io_fail("cannot read " + what, errno);
      if (n == 0)
        break;
      ZSTD_inBuffer ib{in.data(), static_cast<size_t>(n), 0};
      for (bool full = true; ib.pos < ib.size || full;) {
        ZSTD_outBuffer ob{buf.data(), buf.size(), 0};
        last = ZSTD_decompressStream(dctx.get(), &ob, &ib);
        if (ZSTD_isError(last))
          return corrupt(what
                         + " is not valid zstd: " + ZSTD_getErrorName(last));
        total += ob.pos;
        if (total > c.size)
          return corrupt(what + " decompresses to more than the "
                         + std::to_string(c.size) + " bytes the index says");
        if (!write_all(out, buf.data(), ob.pos))
          return io_fail("cannot write " + dest.string(), errno);
        full = ob.pos == ob.size;
      }
    }
    if (last != 0)
      return corrupt(what + " is truncated");
    if (total != c.size)
      return corrupt(what + " decompresses to " + std::to_string(total)
                     + " bytes, the index says " + std::to_string(c.size));
  }
  if (::close(out) != 0) {
    out_guard.fd = -1;
    return io_fail("cannot write " + dest.string(), errno);
  }
  out_guard.fd = -1;
  return {};
}

caf::error restore_into(const fs::path& root, const std::vector<entry>& entries,
                        const std::optional<fs::path>& archive_file,
                        const chunk_source& chunks, const limits& lim) {
  for (const auto& e : entries)
    if (e.type == kind::dir)
      if (::mkdir((root / e.path).c_str(), 0700) != 0)
        return io_fail("cannot create " + (root / e.path).string(), errno);
  std::vector<bool> seen(entries.size(), false);
  if (archive_file)
    if (auto err = extract_archive(*archive_file, root, entries, seen, lim))
      return err;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    if (e.type != kind::file)
      continue;
    if (e.chunked) {
      if (auto err = write_chunked(root, e, chunks))
        return err;
    } else if (!seen[i]) {
      return corrupt(archive_file ? "state archive " + archive_file->string()
                                        + " lacks the file " + in_quotes(e.path)
                                  : "the state archive holding "
                                        + in_quotes(e.path) + " is missing");
    }
  }
  // Symlinks last: nothing is ever written through one.
  for (const auto& e : entries)
    if (e.type == kind::symlink)
      if (::symlink(e.target.c_str(), (root / e.path).c_str()) != 0)
        return io_fail("cannot create the symlink " + (root / e.path).string(),
                       errno);
  // Modes and times, children before their directory. No setuid/setgid
  // bit is restored (owners are not either).
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    auto p = root / it->path;
    if (it->type != kind::symlink)
      if (::chmod(p.c_str(), it->mode & 01777) != 0)
        return io_fail("cannot set the mode of " + p.string(), errno);
    struct timespec times[2];
    times[0].tv_sec = it->mtime / 1'000'000'000;
    times[0].tv_nsec = it->mtime % 1'000'000'000;
    if (times[0].tv_nsec < 0) {
      times[0].tv_nsec += 1'000'000'000;
      times[0].tv_sec -= 1;
    }
    times[1] = times[0];
    if (::utimensat(AT_FDCWD, p.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0)
      return io_fail("cannot set the mtime of " + p.string(), errno);
  }
  return {};
}

} // namespace

caf::expected<captured> capture(const fs::path& dir, const fs::path& staging,
                                const limits& lim,
                                const std::optional<fs::path>& previous_index) {
  std::error_code err;
  fs::create_directories(staging, err);
  if (err)
    return make_error(ec::io_error, "cannot create " + staging.string() + ": "
                                        + err.message());
  std::vector<entry> entries;
  uint64_t bytes = 0;
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      return make_error(ec::io_error, "cannot capture " + dir.string()
                                          + ": it is not a directory");
    if (auto e = walk(dir, "", entries, bytes, lim))
      return e;
  } else if (errno != ENOENT) {
    return io_fail("cannot stat " + dir.string(), errno);
  }
  std::sort(entries.begin(), entries.end(),
            [](const entry& a, const entry& b) { return a.path < b.path; });
  captured out;
  out.entries = entries.size();
  out.bytes = bytes;
  // The archive of the small files.
  bool any_small = std::any_of(entries.begin(), entries.end(), [](auto& e) {
    return e.type == kind::file && e.size < large_file;
  });
  if (any_small) {
    auto b = write_archive(dir, staging, entries);
    if (!b)
      return b.error();
    out.archive = std::move(*b);
  }
  // The chunks of the large ones, reusing the previous index's when the
  // file looks unchanged.
  std::vector<entry> previous;
  if (previous_index) {
    auto p = read_index(*previous_index, lim);
    if (p)
      previous = std::move(*p); // an unreadable one only costs a re-read
  }
  std::unordered_set<std::string> seen;
  for (auto& e : entries) {
    if (e.type != kind::file || e.size < large_file)
      continue;
    auto old = find_entry(previous, previous.size(), e.path);
    if (old != nullptr && old->type == kind::file && old->chunked
        && old->size == e.size && old->mtime == e.mtime && old->mode == e.mode
        && std::all_of(old->chunks.begin(), old->chunks.end(),
                       [](const chunk_ref& c) { return c.compressed > 0; })) {
      e.chunked = true;
      e.chunks = old->chunks;
      for (const auto& c : e.chunks) {
        if (!seen.insert(c.sha256).second)
          continue;
        blob b;
        b.role = "state-chunk";
        b.sha256 = c.sha256;
        b.size = c.compressed;
        b.file = staging / c.sha256;
        b.staged = false;
        out.chunks.push_back(std::move(b));
      }
      continue;
    }
    if (auto err = write_chunks(dir, staging, e, out.chunks, seen))
      return err;
  }
  // The index: the same bytes as dump() of the whole document, built one
  // entry at a time.
  std::string text = "{\"entries\":[";
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i > 0)
      text += ',';
    text += to_json(entries[i]).dump();
    if (text.size() > lim.max_index)
      return limit_error("the state index of " + dir.string() + " is over "
                             + std::to_string(lim.max_index) + " bytes",
                         "max_index", lim.max_index);
  }
  text += "],\"format\":\"";
  text += index_format;
  text += "\",\"version\":" + std::to_string(index_version) + "}";
  if (text.size() > lim.max_index)
    return limit_error("the state index of " + dir.string() + " is over "
                           + std::to_string(lim.max_index) + " bytes",
                       "max_index", lim.max_index);
  std::vector<char> z(ZSTD_compressBound(text.size()));
  auto cctx = make_cctx();
  auto n =
      ZSTD_compress2(cctx.get(), z.data(), z.size(), text.data(), text.size());
  if (ZSTD_isError(n))
    return make_error(ec::io_error, std::string{"cannot compress the index: "}
                                        + ZSTD_getErrorName(n));
  auto idx = write_blob(staging, "state-index", z.data(), n);
  if (!idx)
    return idx.error();
  out.index = std::move(*idx);
  return out;
}

caf::error restore(const fs::path& index_file,
                   const std::optional<fs::path>& archive_file,
                   const chunk_source& chunks, const fs::path& target_in,
                   const limits& lim) {
  auto target = target_in.lexically_normal();
  if (!target.has_filename())
    target = target.parent_path();
  struct stat st;
  if (::lstat(target.c_str(), &st) == 0)
    return make_error(ec::io_error, "cannot restore into " + target.string()
                                        + ": it already exists");
  auto parent = target.has_parent_path() ? target.parent_path() : fs::path{"."};
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return make_error(ec::io_error, "cannot restore into " + target.string()
                                        + ": its parent is not a directory");
  auto entries = read_index(index_file, lim);
  if (!entries)
    return entries.error();
  auto tmpl = (parent / ("." + target.filename().string() + ".restore-XXXXXX"))
                  .string();
  if (::mkdtemp(tmpl.data()) == nullptr)
    return io_fail("cannot create a directory in " + parent.string(), errno);
  std::error_code err;
  auto root = fs::canonical(tmpl, err);
  if (err) {
    remove_tree(tmpl);
    return make_error(ec::io_error,
                      "cannot resolve " + tmpl + ": " + err.message());
  }
  auto fail = restore_into(root, *entries, archive_file, chunks, lim);
  if (!fail && ::chmod(root.c_str(), 0755) != 0)
    fail = io_fail("cannot set the mode of " + root.string(), errno);
  if (!fail
      && ::renameat2(AT_FDCWD, root.c_str(), AT_FDCWD, target.c_str(),
                     RENAME_NOREPLACE)
             != 0)
    fail = io_fail("cannot rename " + root.string() + " to " + target.string(),
                   errno);
  if (fail) {
    remove_tree(root);
    return fail;
  }
  return {};
}

caf::expected<std::vector<std::string>>
chunk_digests(const fs::path& index_file, const limits& lim) {
  auto entries = read_index(index_file, lim);
  if (!entries)
    return entries.error();
  std::vector<std::string> out;
  std::unordered_set<std::string> seen;
  for (const auto& e : *entries)
    for (const auto& c : e.chunks)
      if (seen.insert(c.sha256).second)
        out.push_back(c.sha256);
  return out;
}

} // namespace makima::archive
