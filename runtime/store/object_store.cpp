// The object store: open_object_store (URL parsing), SHA-256 helpers and the
// file:// backend. The s3:// backend is in s3.cpp.
//
// file:// maps a key to the file <dir>/<key>. A put writes a temporary file
// `.makima-tmp.XXXXXX` in the target's directory, fsyncs it, renames it over
// the target and fsyncs the directory, so an object appears whole or not at
// all, even across a crash. list skips those temporary files (a crashed put
// may leave one behind) and keys may not use that name.
#include "runtime/store/object_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

#include <openssl/evp.h>

#include "runtime/error.hpp"
#include "runtime/hex.hpp"
#include "runtime/store/s3.hpp"

namespace fs = std::filesystem;

namespace makima::store {

object_store::~object_store() = default;

// -- SHA-256 ------------------------------------------------------------------

namespace {

struct evp_ctx {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~evp_ctx() { EVP_MD_CTX_free(ctx); }
};


} // namespace

std::string sha256_hex(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &n, EVP_sha256(), nullptr);
  return to_hex(md, n);
}

caf::expected<std::string> sha256_file(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return make_error(ec::io_error, "cannot open " + path.string() + ": "
                                        + std::strerror(errno));
  evp_ctx h;
  EVP_DigestInit_ex(h.ctx, EVP_sha256(), nullptr);
  std::string buf(1 << 20, '\0');
  for (;;) {
    auto n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      auto err = errno;
      ::close(fd);
      return make_error(ec::io_error, "cannot read " + path.string() + ": "
                                          + std::strerror(err));
    }
    if (n == 0)
      break;
    EVP_DigestUpdate(h.ctx, buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(h.ctx, md, &len);
  return to_hex(md, len);
}

// -- keys ---------------------------------------------------------------------

namespace detail {

caf::error check_key(std::string_view op, std::string_view key,
                     bool allow_empty) {
  auto bad = [&](const char* why) {
    // Name the key unless it is unprintable or long.
    std::string shown;
    if (key.size() <= 200 && std::none_of(key.begin(), key.end(), [](char c) {
          return static_cast<unsigned char>(c) < 0x20;
        }))
      shown = " '" + std::string{key} + "'";
    return make_error(ec::invalid_argument, "object store: " + std::string{op}
                                                + shown
                                                + ": invalid key: " + why);
  };
  if (key.empty())
    return allow_empty ? caf::error{} : bad("empty");
  if (key.find('\0') != std::string_view::npos)
    return bad("contains a NUL byte");
  if (key.front() == '/')
    return bad("absolute (starts with '/')");
  // A list prefix may end anywhere: only its complete components count.
  auto checked = key;
  if (allow_empty) {
    auto slash = checked.rfind('/');
    checked = slash == std::string_view::npos ? std::string_view{}
                                              : checked.substr(0, slash + 1);
    if (checked.empty())
      return {};
    checked.remove_suffix(1);
  }
  size_t pos = 0;
  for (;;) {
    auto end = checked.find('/', pos);
    auto part = checked.substr(pos, end == std::string_view::npos
                                        ? std::string_view::npos
                                        : end - pos);
    if (part.empty())
      return bad("empty path component ('//' or a trailing '/')");
    if (part == "." || part == "..")
      return bad("'.' or '..' path component");
    if (end == std::string_view::npos)
      break;
    pos = end + 1;
  }
  return {};
}

} // namespace detail

// -- file:// ------------------------------------------------------------------

namespace {

constexpr std::string_view tmp_prefix = ".makima-tmp.";

struct fd_guard {
  int fd = -1;
  ~fd_guard() {
    if (fd >= 0)
      ::close(fd);
  }
};

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    auto w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

class file_store final : public object_store {
public:
  explicit file_store(fs::path root) : root_(std::move(root)) {}

  caf::error put(std::string_view key, std::string_view bytes) override {
    return write_object("put", key, [&](int fd) -> std::string {
      if (!write_all(fd, bytes.data(), bytes.size()))
        return std::string{"write: "} + std::strerror(errno);
      return {};
    });
  }

  caf::error put_file(std::string_view key, const fs::path& path) override {
    fd_guard in{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (in.fd < 0)
      return fail(ec::object_store_error, "put_file", key,
                  "cannot open " + path.string() + ": " + std::strerror(errno));
    return write_object("put_file", key, [&](int fd) -> std::string {
      std::string buf(1 << 20, '\0');
      for (;;) {
        auto n = ::read(in.fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR)
          continue;
        if (n < 0)
          return "read " + path.string() + ": " + std::strerror(errno);
        if (n == 0)
          return {};
        if (!write_all(fd, buf.data(), static_cast<size_t>(n)))
          return std::string{"write: "} + std::strerror(errno);
      }
    });
  }

  caf::expected<std::string> get(std::string_view key,
                                 uint64_t max_size) override {
    if (auto err = check("get", key))
      return err;
    fd_guard in;
    uint64_t size = 0;
    if (auto err = open_object("get", key, max_size, in.fd, size))
      return err;
    std::string out;
    out.resize(size);
    size_t got = 0;
    while (got < out.size()) {
      auto n = ::read(in.fd, out.data() + got, out.size() - got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        return fail(ec::object_store_error, "get", key,
                    std::string{"read: "} + std::strerror(errno));
      if (n == 0)
        break; // shrank meanwhile
      got += static_cast<size_t>(n);
    }
    out.resize(got);
    return out;
  }

  caf::error get_file(std::string_view key, const fs::path& path,
                      uint64_t max_size) override {
    if (auto err = check("get_file", key))
      return err;
    fd_guard in;
    uint64_t size = 0;
    if (auto err = open_object("get_file", key, max_size, in.fd, size)) {
      std::error_code ignored; // "created or truncated", or no file
      fs::remove(path, ignored);
      return err;
    }
    fd_guard out{
        ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
    if (out.fd < 0)
      return fail(ec::object_store_error, "get_file", key,
                  "cannot create " + path.string() + ": "
                      + std::strerror(errno));
    std::string buf(1 << 20, '\0');
    uint64_t total = 0;
    std::string problem;
    for (;;) {
      auto n = ::read(in.fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0) {
        problem = std::string{"read: "} + std::strerror(errno);
        break;
      }
      if (n == 0)
        break;
      total += static_cast<uint64_t>(n);
      if (total > max_size) { // grew meanwhile
        problem =
            "larger than the limit of " + std::to_string(max_size) + " bytes";
        break;
      }
      if (!write_all(out.fd, buf.data(), static_cast<size_t>(n))) {
        problem = "write " + path.string() + ": " + std::strerror(errno);
        break;
      }
    }
    if (problem.empty() && ::close(std::exchange(out.fd, -1)) != 0)
      problem = "close " + path.string() + ": " + std::strerror(errno);
    if (!problem.empty()) {
      std::error_code ignored;
      fs::remove(path, ignored);
      return fail(ec::object_store_error, "get_file", key, problem);
    }
    return {};
  }

  caf::expected<std::optional<object_info>>
  head(std::string_view key) override {
    if (auto err = check("head", key))
      return err;
    struct stat st;
    auto p = root_ / std::string{key};
    if (::stat(p.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR)
        return std::optional<object_info>{};
      return fail(ec::object_store_error, "head", key,
                  std::string{"stat: "} + std::strerror(errno));
    }
    if (!S_ISREG(st.st_mode))
      return std::optional<object_info>{};
    return object_info{std::string{key}, static_cast<uint64_t>(st.st_size),
                       static_cast<int64_t>(st.st_mtime)};
  }

  caf::expected<std::vector<object_info>>
  list(std::string_view prefix) override {
    if (auto err = detail::check_key("list", prefix, true))
      return err;
    std::vector<object_info> out;
    // Walk only the directory the prefix's complete components name.
    auto slash = prefix.rfind('/');
    std::string dir_part = slash == std::string_view::npos
                               ? std::string{}
                               : std::string{prefix.substr(0, slash)};
    auto start = dir_part.empty() ? root_ : root_ / dir_part;
    std::string problem;
    walk(start, dir_part, prefix, out, problem);
    if (!problem.empty())
      return fail(ec::object_store_error, "list", prefix, problem);
    std::sort(out.begin(), out.end(),
              [](const object_info& a, const object_info& b) {
                return a.key < b.key;
              });
    return out;
  }

  caf::error remove(std::string_view key) override {
    if (auto err = check("remove", key))
      return err;
    auto p = root_ / std::string{key};
    if (::unlink(p.c_str()) != 0 && errno != ENOENT && errno != ENOTDIR)
      return fail(ec::object_store_error, "remove", key,
                  std::string{"unlink: "} + std::strerror(errno));
    return {};
  }

  std::string describe() const override { return "file://" + root_.string(); }

private:
  caf::error fail(ec code, std::string_view op, std::string_view key,
                  const std::string& detail) const {
    return make_error(code, "object store " + describe() + ": "
                                + std::string{op} + " '" + std::string{key}
                                + "': " + detail);
  }

  caf::error check(std::string_view op, std::string_view key) const {
    if (auto err = detail::check_key(op, key))
      return err;
    auto base = key.substr(key.rfind('/') + 1);
    if (base.substr(0, tmp_prefix.size()) == tmp_prefix)
      return make_error(ec::invalid_argument,
                        "object store: " + std::string{op}
                            + ": invalid key: names a temporary file ("
                            + std::string{tmp_prefix} + "…)");
    return {};
  }

  // Opens the object for reading and checks its size against max_size.
  caf::error open_object(std::string_view op, std::string_view key,
                         uint64_t max_size, int& fd, uint64_t& size) const {
    auto p = root_ / std::string{key};
    fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT || errno == ENOTDIR)
        return fail(ec::object_not_found, op, key, "no such object");
      return fail(ec::object_store_error, op, key,
                  std::string{"open: "} + std::strerror(errno));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0)
      return fail(ec::object_store_error, op, key,
                  std::string{"stat: "} + std::strerror(errno));
    if (!S_ISREG(st.st_mode))
      return fail(ec::object_not_found, op, key, "no such object");
    size = static_cast<uint64_t>(st.st_size);
    if (size > max_size)
      return fail(ec::object_store_error, op, key,
                  std::to_string(size) + " bytes, larger than the limit of "
                      + std::to_string(max_size) + " bytes");
    return {};
  }

  // Writes an object through a temporary file in its directory.
  template <class Fill>
  caf::error write_object(std::string_view op, std::string_view key,
                          Fill fill) {
    if (auto err = check(op, key))
      return err;
    auto target = root_ / std::string{key};
    auto dir = target.parent_path();
    std::error_code ec_mkdir;
    fs::create_directories(dir, ec_mkdir);
    if (ec_mkdir)
      return fail(ec::object_store_error, op, key,
                  "mkdir " + dir.string() + ": " + ec_mkdir.message());
    auto tmpl = (dir / (std::string{tmp_prefix} + "XXXXXX")).string();
    fd_guard out{::mkstemp(tmpl.data())};
    if (out.fd < 0)
      return fail(ec::object_store_error, op, key,
                  "create a temporary file in " + dir.string() + ": "
                      + std::strerror(errno));
    auto abandon = [&](const std::string& problem) {
      ::unlink(tmpl.c_str());
      return fail(ec::object_store_error, op, key, problem);
    };
    ::fchmod(out.fd, 0644);
    if (auto problem = fill(out.fd); !problem.empty())
      return abandon(problem);
    if (::fsync(out.fd) != 0)
      return abandon(std::string{"fsync: "} + std::strerror(errno));
    if (::close(std::exchange(out.fd, -1)) != 0)
      return abandon(std::string{"close: "} + std::strerror(errno));
    if (::rename(tmpl.c_str(), target.c_str()) != 0)
      return abandon("rename to " + target.string() + ": "
                     + std::strerror(errno));
    fd_guard d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
    if (d.fd >= 0)
      ::fsync(d.fd); // best effort: the rename is durable
    return {};
  }

  // Appends every regular file under `dir` (whose key prefix is `rel`) with
  // a key starting with `prefix`.
  void walk(const fs::path& dir, const std::string& rel,
            std::string_view prefix, std::vector<object_info>& out,
            std::string& problem) const {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
      if (errno != ENOENT && errno != ENOTDIR)
        problem = "opendir " + dir.string() + ": " + std::strerror(errno);
      return;
    }
    while (auto* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..")
        continue;
      auto key = rel.empty() ? name : rel + "/" + name;
      // Prune subtrees that cannot hold a match.
      auto n = std::min(key.size(), prefix.size());
      if (key.compare(0, n, prefix.substr(0, n)) != 0)
        continue;
      struct stat st;
      auto p = dir / name;
      if (::lstat(p.c_str(), &st) != 0)
        continue; // removed meanwhile
      if (S_ISDIR(st.st_mode)) {
        walk(p, key, prefix, out, problem);
        if (!problem.empty())
          break;
      } else if (S_ISREG(st.st_mode) && key.size() >= prefix.size()
                 && name.compare(0, tmp_prefix.size(), tmp_prefix) != 0) {
        out.push_back(object_info{key, static_cast<uint64_t>(st.st_size),
                                  static_cast<int64_t>(st.st_mtime)});
      }
    }
    ::closedir(d);
  }

  fs::path root_;
};


caf::error bad_url(const std::string& why) {
  return make_error(ec::invalid_argument, "object store URL: " + why);
}

} // namespace

caf::expected<std::unique_ptr<object_store>>
open_object_store(const object_store_options& opts) {
  std::string_view url = opts.url;
  if (url.find('\0') != std::string_view::npos)
    return bad_url("contains a NUL byte");
  constexpr std::string_view file_scheme = "file://";
  constexpr std::string_view s3_scheme = "s3://";
  if (url.substr(0, file_scheme.size()) == file_scheme) {
    auto rest = url.substr(file_scheme.size());
    if (rest.find_first_of("?#") != std::string_view::npos)
      return bad_url("a file:// URL takes no query or fragment");
    // file://localhost/abs is the same as file:///abs.
    if (rest.substr(0, 9) == "localhost")
      rest.remove_prefix(9);
    if (rest.empty() || rest.front() != '/')
      return bad_url("file:// needs an absolute path (file:///abs/path), got "
                     + std::string{opts.url});
    std::string path;
    if (!percent_decode(rest, path) || path.find('\0') != std::string::npos)
      return bad_url("bad %-escape in " + std::string{opts.url});
    while (path.size() > 1 && path.back() == '/')
      path.pop_back();
    fs::path root = fs::path{path}.lexically_normal();
    if (root.filename().empty() && root != "/")
      root = root.parent_path();
    std::error_code ec_mkdir;
    fs::create_directories(root, ec_mkdir);
    if (ec_mkdir)
      return make_error(ec::object_store_error,
                        "object store file://" + root.string()
                            + ": cannot create the directory: "
                            + ec_mkdir.message());
    if (!fs::is_directory(root, ec_mkdir))
      return make_error(ec::object_store_error, "object store file://"
                                                    + root.string()
                                                    + ": not a directory");
    return std::unique_ptr<object_store>{new file_store(std::move(root))};
  }
  if (url.substr(0, s3_scheme.size()) == s3_scheme) {
    auto rest = url.substr(s3_scheme.size());
    if (rest.find_first_of("?#") != std::string_view::npos)
      return bad_url("an s3:// URL takes no query or fragment");
    auto slash = rest.find('/');
    auto bucket = rest.substr(0, slash);
    // Never echo a URL with userinfo: it may hold a secret.
    if (bucket.find('@') != std::string_view::npos
        || bucket.find(':') != std::string_view::npos)
      return bad_url("credentials or a port in an s3:// URL are not "
                     "supported; use the endpoint option and "
                     "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY");
    if (bucket.empty())
      return bad_url("s3:// needs a bucket (s3://BUCKET[/PREFIX]), got "
                     + std::string{opts.url});
    for (char c : bucket)
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'
            || c == '.' || c == '_' || (c >= 'A' && c <= 'Z')))
        return bad_url("bad bucket name in " + std::string{opts.url}
                       + " (letters, digits, '-', '.', '_')");
    std::string prefix;
    if (slash != std::string_view::npos) {
      auto p = rest.substr(slash + 1);
      while (!p.empty() && p.back() == '/')
        p.remove_suffix(1);
      if (!p.empty()) {
        if (auto err = detail::check_key("open", p))
          return bad_url("bad prefix in " + std::string{opts.url});
        prefix = std::string{p};
      }
    }
    if (opts.access_key.empty() || opts.secret_key.empty())
      return make_error(ec::invalid_argument,
                        "object store s3://" + std::string{rest}
                            + ": no credentials (set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY)");
    return detail::open_s3_store(opts, std::string{bucket}, std::move(prefix));
  }
  auto colon = url.find(':');
  return bad_url("unknown scheme "
                 + (colon == std::string_view::npos
                        ? std::string{"(none)"}
                        : "'" + std::string{url.substr(0, colon)} + "'")
                 + ": use file:///abs/path or s3://BUCKET[/PREFIX]");
}

} // namespace makima::store
