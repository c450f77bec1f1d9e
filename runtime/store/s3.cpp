// The s3:// backend of the object store: S3 (and R2, MinIO, …) over libcurl,
// signed by libcurl's CURLOPT_AWS_SIGV4, path-style URLs
// <endpoint>/<bucket>/<prefix>/<key>.
//
// libcurl 7.88 pitfalls (docs/notes): it does not add x-amz-content-sha256,
// so every request sets it (the body's SHA-256, or UNSIGNED-PAYLOAD for a
// streamed file); every CURLOPT_HTTPHEADER entry is signed, so no removal
// header (`Expect:`) is ever added; the query string is signed as given, so
// it is built sorted and RFC 3986-encoded (`?uploads=`, not `?uploads`).
//
// One easy handle per store keeps the connection alive between requests
// (curl_easy_reset keeps the connection cache). Requests retry on connect
// errors, timeouts, stalls, 5xx, 408 and 429 with exponential backoff and
// full jitter. Messages name the operation, the key, the store and the HTTP
// status or the curl error; credentials never appear (they are also scrubbed
// from anything the server or curl says).
#include "runtime/store/s3.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <utility>

#include <curl/curl.h>

#include "runtime/error.hpp"
#include "runtime/hex.hpp"

namespace fs = std::filesystem;

namespace makima::store::detail {

namespace {

// -- encoding -----------------------------------------------------------------

// RFC 3986 percent-encoding of everything but the unreserved characters
// (and '/', for paths).
std::string uri_encode(std::string_view s, bool keep_slash) {
  static const char digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3 / 2);
  for (unsigned char c : s) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
        || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'
        || c == '~' || (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(digits[c >> 4]);
      out.push_back(digits[c & 15]);
    }
  }
  return out;
}


std::string uri_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex_digit(s[i + 1]) >= 0
        && hex_digit(s[i + 2]) >= 0) {
      out.push_back(
          static_cast<char>(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2])));
      i += 2;
    } else if (s[i] == '+') {
      out.push_back(' '); // encoding-type=url encodes spaces as '+'
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

void append_utf8(std::string& out, unsigned long cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x110000) {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes XML's predefined entities and character references once.
std::string xml_unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    auto semi = s.find(';', i);
    if (semi == std::string_view::npos || semi - i > 10) {
      out.push_back(s[i]);
      continue;
    }
    auto name = s.substr(i + 1, semi - i - 1);
    if (name == "amp")
      out.push_back('&');
    else if (name == "lt")
      out.push_back('<');
    else if (name == "gt")
      out.push_back('>');
    else if (name == "quot")
      out.push_back('"');
    else if (name == "apos")
      out.push_back('\'');
    else if (name.size() > 1 && name[0] == '#') {
      char* end = nullptr;
      std::string digits{name.substr(1)};
      bool hex = !digits.empty() && (digits[0] == 'x' || digits[0] == 'X');
      auto cp =
          std::strtoul(digits.c_str() + (hex ? 1 : 0), &end, hex ? 16 : 10);
      if (end == nullptr || *end != '\0') {
        out.push_back(s[i]);
        continue;
      }
      append_utf8(out, cp);
    } else {
      out.push_back(s[i]);
      continue;
    }
    i = semi;
  }
  return out;
}

std::string xml_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
    case '&':
      out += "&amp;";
      break;
    case '<':
      out += "&lt;";
      break;
    case '>':
      out += "&gt;";
      break;
    case '"':
      out += "&quot;";
      break;
    default:
      out.push_back(c);
    }
  }
  return out;
}

// The raw text of the first <tag>…</tag> in doc[from, to), or nullopt; sets
// `next` past it. Enough for S3's flat, attribute-free answers.
std::optional<std::string_view> xml_text(std::string_view doc,
                                         std::string_view tag, size_t from,
                                         size_t* next = nullptr) {
  std::string open = "<" + std::string{tag} + ">";
  std::string close = "</" + std::string{tag} + ">";
  auto b = doc.find(open, from);
  if (b == std::string_view::npos)
    return std::nullopt;
  b += open.size();
  auto e = doc.find(close, b);
  if (e == std::string_view::npos)
    return std::nullopt;
  if (next != nullptr)
    *next = e + close.size();
  return doc.substr(b, e - b);
}

// "2026-12-03T13:09:07.000Z" → seconds since the epoch.
bool parse_iso8601(std::string_view s, int64_t& out) {
  std::tm tm{};
  std::string str{s};
  if (std::sscanf(str.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year,
                  &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec)
      != 6)
    return false;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  out = static_cast<int64_t>(::timegm(&tm));
  return true;
}

const std::string empty_sha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr const char* unsigned_payload = "UNSIGNED-PAYLOAD";

std::once_flag curl_once;
CURLcode curl_init_rc = CURLE_OK;

// -- requests -----------------------------------------------------------------

// Where a request body comes from: bytes in memory or a range of a file.
struct body_source {
  std::string_view bytes;
  int fd = -1;
  uint64_t offset = 0; // file only
  uint64_t length = 0;
  uint64_t pos = 0;
  int read_errno = 0;
};

// Where a 2xx response body goes: a string or a file, at most `max` bytes.
struct body_sink {
  std::string* str = nullptr;
  int fd = -1;
  uint64_t max = UINT64_MAX;
  uint64_t got = 0;
  bool too_large = false;
  curl_off_t announced = -1; // the Content-Length, when known
  int write_errno = 0;
};

struct request {
  const char* op = "";
  std::string_view key; // for messages
  const char* method = "GET";
  std::string path; // encoded, from the bucket on: /bucket/prefix/key
  std::vector<std::pair<std::string, std::string>> query; // raw
  std::string payload_hash = empty_sha256;
  std::vector<std::string> headers;
  body_source* source = nullptr;
  body_sink* sink = nullptr;
};

struct response {
  long status = 0;
  // A non-2xx body (capped), or a 2xx body when the request has no sink.
  std::string body;
  bool body_too_large = false;
  std::string etag;
  curl_off_t content_length = -1;
  curl_off_t filetime = -1;
};

constexpr size_t max_error_body = 64 << 10;
constexpr size_t max_answer_body = 64 << 20; // list pages, multipart answers

struct call {
  CURL* h;
  request* rq;
  response* rs;
};

long status_of(CURL* h) {
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  return status;
}

size_t on_write(char* p, size_t size, size_t n, void* ud) {
  auto& c = *static_cast<call*>(ud);
  auto len = size * n;
  auto status = status_of(c.h);
  if (status >= 200 && status < 300 && c.rq->sink != nullptr) {
    auto& sink = *c.rq->sink;
    if (sink.got == 0) {
      curl_off_t cl = -1;
      curl_easy_getinfo(c.h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
      sink.announced = cl;
      if (cl > 0 && static_cast<uint64_t>(cl) > sink.max) {
        sink.too_large = true;
        return 0;
      }
    }
    if (sink.got + len > sink.max) {
      sink.too_large = true;
      return 0;
    }
    sink.got += len;
    if (sink.str != nullptr) {
      sink.str->append(p, len);
      return len;
    }
    size_t done = 0;
    while (done < len) {
      auto w = ::write(sink.fd, p + done, len - done);
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0) {
        sink.write_errno = errno;
        return 0;
      }
      done += static_cast<size_t>(w);
    }
    return len;
  }
  bool ok = status >= 200 && status < 300;
  auto cap = ok ? max_answer_body : max_error_body;
  if (c.rs->body.size() + len > cap) {
    if (ok) {
      c.rs->body_too_large = true;
      return 0;
    }
    c.rs->body.append(p, cap - c.rs->body.size()); // keep the start
    return len;
  }
  c.rs->body.append(p, len);
  return len;
}

size_t on_header(char* p, size_t size, size_t n, void* ud) {
  auto& c = *static_cast<call*>(ud);
  auto len = size * n;
  std::string_view line{p, len};
  if (line.substr(0, 5) == "HTTP/") {
    c.rs->etag.clear(); // a new response (after 100 Continue)
    return len;
  }
  constexpr std::string_view name = "etag:";
  if (line.size() > name.size()) {
    bool match = true;
    for (size_t i = 0; i < name.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(line[i])) != name[i])
        match = false;
    if (match) {
      auto v = line.substr(name.size());
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
        v.remove_prefix(1);
      while (!v.empty()
             && (v.back() == '\r' || v.back() == '\n' || v.back() == ' '))
        v.remove_suffix(1);
      c.rs->etag = std::string{v};
    }
  }
  return len;
}

size_t on_read(char* p, size_t size, size_t n, void* ud) {
  auto& src = *static_cast<body_source*>(ud);
  auto room = size * n;
  auto left = src.length - src.pos;
  auto want = static_cast<size_t>(std::min<uint64_t>(room, left));
  if (want == 0)
    return 0;
  if (src.fd < 0) {
    std::memcpy(p, src.bytes.data() + src.pos, want);
    src.pos += want;
    return want;
  }
  for (;;) {
    auto r = ::pread(src.fd, p, want, static_cast<off_t>(src.offset + src.pos));
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      src.read_errno = r < 0 ? errno : EIO; // the file shrank
      return CURL_READFUNC_ABORT;
    }
    src.pos += static_cast<uint64_t>(r);
    return static_cast<size_t>(r);
  }
}

int on_seek(void* ud, curl_off_t offset, int origin) {
  auto& src = *static_cast<body_source*>(ud);
  if (origin != SEEK_SET || offset < 0
      || static_cast<uint64_t>(offset) > src.length)
    return CURL_SEEKFUNC_FAIL;
  src.pos = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

bool retryable(CURLcode rc) {
  switch (rc) {
  case CURLE_COULDNT_RESOLVE_PROXY:
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_CONNECT:
  case CURLE_OPERATION_TIMEDOUT:
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
    return true;
  default:
    return false;
  }
}

bool retryable(long status) {
  return status >= 500 || status == 429 || status == 408;
}

// -- the store ----------------------------------------------------------------

class s3_store final : public object_store {
public:
  s3_store(const object_store_options& opts, std::string bucket,
           std::string prefix, std::string endpoint)
      : opts_(opts), bucket_(std::move(bucket)), prefix_(std::move(prefix)),
        endpoint_(std::move(endpoint)), rng_(std::random_device{}()) {
    url_ = "s3://" + bucket_ + (prefix_.empty() ? "" : "/" + prefix_);
    sigv4_ = "aws:amz:" + opts_.s3_region + ":s3";
    userpwd_ = opts_.access_key + ":" + opts_.secret_key;
    if (opts_.attempts < 1)
      opts_.attempts = 1;
    if (opts_.list_page_size < 1 || opts_.list_page_size > 1000)
      opts_.list_page_size = 1000;
    if (opts_.part_size < 1)
      opts_.part_size = 1;
    h_ = curl_easy_init();
  }

  ~s3_store() override {
    if (h_ != nullptr)
      curl_easy_cleanup(h_);
  }

  caf::error put(std::string_view key, std::string_view bytes) override {
    if (auto err = check_key("put", key))
      return err;
    body_source src;
    src.bytes = bytes;
    src.length = bytes.size();
    request rq;
    rq.op = "put";
    rq.key = key;
    rq.method = "PUT";
    rq.path = object_path(key);
    rq.payload_hash = sha256_hex(bytes);
    rq.source = &src;
    response rs;
    return execute(rq, rs);
  }

  caf::error put_file(std::string_view key, const fs::path& path) override {
    if (auto err = check_key("put_file", key))
      return err;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return fail(ec::object_store_error, "put_file", key,
                  "cannot open " + path.string() + ": " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return fail(ec::object_store_error, "put_file", key,
                  path.string() + " is not a readable regular file");
    }
    auto size = static_cast<uint64_t>(st.st_size);
    auto err = size >= opts_.multipart_threshold
                   ? put_multipart(key, path, fd, size)
                   : put_range("put_file", key, path, fd, 0, size, {});
    ::close(fd);
    return err;
  }

  caf::expected<std::string> get(std::string_view key,
                                 uint64_t max_size) override {
    if (auto err = check_key("get", key))
      return err;
    std::string out;
    body_sink sink;
    sink.str = &out;
    sink.max = max_size;
    request rq;
    rq.op = "get";
    rq.key = key;
    rq.path = object_path(key);
    rq.sink = &sink;
    response rs;
    if (auto err = execute(rq, rs))
      return err;
    return out;
  }

  caf::error get_file(std::string_view key, const fs::path& path,
                      uint64_t max_size) override {
    if (auto err = check_key("get_file", key))
      return err;
    int fd =
        ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
      return fail(ec::object_store_error, "get_file", key,
                  "cannot create " + path.string() + ": "
                      + std::strerror(errno));
    body_sink sink;
    sink.fd = fd;
    sink.max = max_size;
    request rq;
    rq.op = "get_file";
    rq.key = key;
    rq.path = object_path(key);
    rq.sink = &sink;
    response rs;
    auto err = execute(rq, rs);
    if (::close(fd) != 0 && !err)
      err = fail(ec::object_store_error, "get_file", key,
                 "close " + path.string() + ": " + std::strerror(errno));
    if (err)
      ::unlink(path.c_str());
    return err;
  }

  caf::expected<std::optional<object_info>>
  head(std::string_view key) override {
    if (auto err = check_key("head", key))
      return err;
    request rq;
    rq.op = "head";
    rq.key = key;
    rq.method = "HEAD";
    rq.path = object_path(key);
    response rs;
    if (auto err = execute(rq, rs)) {
      if (code_of(err) == ec::object_not_found)
        return std::optional<object_info>{};
      return err;
    }
    object_info info;
    info.key = std::string{key};
    info.size =
        rs.content_length > 0 ? static_cast<uint64_t>(rs.content_length) : 0;
    info.modified = rs.filetime > 0 ? static_cast<int64_t>(rs.filetime) : 0;
    return std::optional<object_info>{std::move(info)};
  }

  caf::expected<std::vector<object_info>>
  list(std::string_view prefix) override {
    if (auto err = check_key("list", prefix, true))
      return err;
    auto base = prefix_.empty() ? std::string{} : prefix_ + "/";
    auto full = base + std::string{prefix};
    std::vector<object_info> out;
    std::string token;
    for (;;) {
      request rq;
      rq.op = "list";
      rq.key = prefix;
      rq.path = "/" + uri_encode(bucket_, false);
      if (!token.empty())
        rq.query.emplace_back("continuation-token", token);
      rq.query.emplace_back("encoding-type", "url");
      rq.query.emplace_back("list-type", "2");
      rq.query.emplace_back("max-keys", std::to_string(opts_.list_page_size));
      rq.query.emplace_back("prefix", full);
      response rs;
      if (auto err = execute(rq, rs))
        return err;
      std::string_view doc = rs.body;
      if (doc.find("<ListBucketResult") == std::string_view::npos)
        return fail(ec::object_store_error, "list", prefix,
                    "unexpected answer (no ListBucketResult)");
      // Keys are URL-encoded when the server honours encoding-type=url
      // (S3, R2); others send them as XML text only.
      bool url_encoded = false;
      if (auto et = xml_text(doc, "EncodingType", 0))
        url_encoded = *et == "url";
      size_t pos = 0;
      while (auto item = xml_text(doc, "Contents", pos, &pos)) {
        auto k = xml_text(*item, "Key", 0);
        if (!k)
          continue;
        auto key = xml_unescape(*k);
        if (url_encoded)
          key = uri_decode(key);
        if (key.compare(0, base.size(), base) != 0)
          continue;
        object_info info;
        info.key = key.substr(base.size());
        if (auto sz = xml_text(*item, "Size", 0))
          info.size = std::strtoull(std::string{*sz}.c_str(), nullptr, 10);
        if (auto lm = xml_text(*item, "LastModified", 0))
          parse_iso8601(*lm, info.modified);
        out.push_back(std::move(info));
      }
      auto truncated = xml_text(doc, "IsTruncated", 0);
      if (!truncated || *truncated != "true")
        break;
      auto next = xml_text(doc, "NextContinuationToken", 0);
      if (!next || next->empty())
        return fail(ec::object_store_error, "list", prefix,
                    "a truncated page without NextContinuationToken");
      auto next_token = xml_unescape(*next);
      if (next_token == token)
        return fail(ec::object_store_error, "list", prefix,
                    "the server repeated its continuation token");
      token = std::move(next_token);
    }
    std::sort(out.begin(), out.end(),
              [](const object_info& a, const object_info& b) {
                return a.key < b.key;
              });
    return out;
  }

  caf::error remove(std::string_view key) override {
    if (auto err = check_key("remove", key))
      return err;
    request rq;
    rq.op = "remove";
    rq.key = key;
    rq.method = "DELETE";
    rq.path = object_path(key);
    response rs;
    auto err = execute(rq, rs);
    if (code_of(err) == ec::object_not_found)
      return {};
    return err;
  }

  std::string describe() const override { return url_; }

private:
  std::string object_path(std::string_view key) const {
    std::string full =
        prefix_.empty() ? std::string{key} : prefix_ + "/" + std::string{key};
    return "/" + uri_encode(bucket_, false) + "/" + uri_encode(full, true);
  }

  // Removes anything credential-like from text the server or curl produced.
  std::string scrub(std::string s) const {
    for (const auto* secret :
         {&opts_.secret_key, &opts_.access_key, &opts_.session_token}) {
      if (secret->empty())
        continue;
      for (auto p = s.find(*secret); p != std::string::npos;
           p = s.find(*secret, p))
        s.replace(p, secret->size(), "***");
    }
    return s;
  }

  caf::error fail(ec code, std::string_view op, std::string_view key,
                  const std::string& detail) const {
    std::string what{op};
    if (!key.empty() || op == "list")
      what += " '" + std::string{key} + "'";
    return make_error(
        code, scrub("object store " + url_ + ": " + what + ": " + detail));
  }

  // PUTs [offset, offset + length) of the file (a whole object or a part).
  caf::error put_range(const char* op, std::string_view key,
                       const fs::path& path, int fd, uint64_t offset,
                       uint64_t length,
                       std::vector<std::pair<std::string, std::string>> query,
                       std::string* etag = nullptr) {
    body_source src;
    src.fd = fd;
    src.offset = offset;
    src.length = length;
    request rq;
    rq.op = op;
    rq.key = key;
    rq.method = "PUT";
    rq.path = object_path(key);
    rq.query = std::move(query);
    rq.payload_hash = unsigned_payload;
    rq.source = &src;
    response rs;
    if (auto err = execute(rq, rs))
      return err;
    if (src.read_errno != 0)
      return fail(ec::object_store_error, op, key,
                  "read " + path.string() + ": "
                      + std::strerror(src.read_errno));
    if (etag != nullptr)
      *etag = rs.etag;
    return {};
  }

  caf::error put_multipart(std::string_view key, const fs::path& path, int fd,
                           uint64_t size) {
    // S3 allows 10,000 parts.
    auto part = std::max<uint64_t>(opts_.part_size, (size + 9999) / 10000);
    request create;
    create.op = "put_file (create multipart upload)";
    create.key = key;
    create.method = "POST";
    create.path = object_path(key);
    create.query = {{"uploads", ""}};
    create.headers = {"Content-Type: application/octet-stream"};
    std::string empty;
    response rs;
    if (auto err = execute(create, rs, &empty))
      return err;
    auto id = xml_text(rs.body, "UploadId", 0);
    if (!id || id->empty())
      return fail(ec::object_store_error, create.op, key,
                  "no UploadId in the answer");
    auto upload_id = xml_unescape(*id);
    auto err = upload_parts(key, path, fd, size, part, upload_id);
    if (err) {
      // Best effort: the parts would otherwise be billed until a lifecycle
      // rule removes them.
      request abort;
      abort.op = "put_file (abort multipart upload)";
      abort.key = key;
      abort.method = "DELETE";
      abort.path = object_path(key);
      abort.query = {{"uploadId", upload_id}};
      response ars;
      auto saved = opts_.attempts;
      opts_.attempts = std::min(saved, 2);
      static_cast<void>(execute(abort, ars));
      opts_.attempts = saved;
    }
    return err;
  }

  caf::error upload_parts(std::string_view key, const fs::path& path, int fd,
                          uint64_t size, uint64_t part,
                          const std::string& upload_id) {
    std::string xml = "<CompleteMultipartUpload>";
    int number = 1;
    for (uint64_t off = 0; off < size; off += part, ++number) {
      std::string etag;
      auto len = std::min(part, size - off);
      if (auto err = put_range(
              "put_file (upload part)", key, path, fd, off, len,
              {{"partNumber", std::to_string(number)}, {"uploadId", upload_id}},
              &etag))
        return err;
      if (etag.empty())
        return fail(ec::object_store_error, "put_file (upload part)", key,
                    "no ETag for part " + std::to_string(number));
      xml += "<Part><PartNumber>" + std::to_string(number)
             + "</PartNumber><ETag>" + xml_escape(etag) + "</ETag></Part>";
    }
    xml += "</CompleteMultipartUpload>";
    request complete;
    complete.op = "put_file (complete multipart upload)";
    complete.key = key;
    complete.method = "POST";
    complete.path = object_path(key);
    complete.query = {{"uploadId", upload_id}};
    complete.headers = {"Content-Type: application/xml"};
    complete.payload_hash = sha256_hex(xml);
    response rs;
    if (auto err = execute(complete, rs, &xml)) {
      // A retried Complete whose first try succeeded (the answer was lost)
      // finds no upload any more: the object is there.
      if (code_of(err) == ec::object_not_found) {
        request check;
        check.op = "put_file (check the completed upload)";
        check.key = key;
        check.method = "HEAD";
        check.path = object_path(key);
        response hrs;
        if (!execute(check, hrs) && hrs.content_length >= 0
            && static_cast<uint64_t>(hrs.content_length) == size)
          return {};
      }
      return err;
    }
    // S3 may answer 200 and report the failure in the body.
    if (rs.body.find("<Error>") != std::string::npos)
      return fail(ec::object_store_error, complete.op, key,
                  "HTTP " + std::to_string(rs.status) + " "
                      + error_detail(rs.body));
    return {};
  }

  // "Code: Message" from an S3 error body, or "".
  std::string error_detail(std::string_view body) const {
    std::string out;
    if (auto code = xml_text(body, "Code", 0))
      out = xml_unescape(*code);
    if (auto msg = xml_text(body, "Message", 0)) {
      auto m = xml_unescape(*msg);
      if (m.size() > 200)
        m = m.substr(0, 200) + "…";
      out += (out.empty() ? "" : ": ") + m;
    }
    return out;
  }

  std::string query_string(const request& rq) const {
    std::vector<std::pair<std::string, std::string>> q;
    for (auto& [k, v] : rq.query)
      q.emplace_back(uri_encode(k, false), uri_encode(v, false));
    std::sort(q.begin(), q.end());
    std::string out;
    for (auto& [k, v] : q)
      out += (out.empty() ? "?" : "&") + k + "=" + v;
    return out;
  }

  // One attempt. `post` is the body of a POST.
  CURLcode perform(request& rq, response& rs, const std::string* post,
                   char* errbuf) {
    curl_easy_reset(h_);
    errbuf[0] = '\0';
    auto url = endpoint_ + rq.path + query_string(rq);
    curl_easy_setopt(h_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h_, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h_, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h_, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h_, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(opts_.connect_timeout.count()));
    curl_easy_setopt(h_, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(
        h_, CURLOPT_LOW_SPEED_TIME,
        std::max(
            1L, static_cast<long>((opts_.stall_timeout.count() + 999) / 1000)));
    curl_easy_setopt(h_, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h_, CURLOPT_AWS_SIGV4, sigv4_.c_str());
    curl_easy_setopt(h_, CURLOPT_USERPWD, userpwd_.c_str());
    curl_slist* headers = nullptr;
    auto add = [&](const std::string& h) {
      headers = curl_slist_append(headers, h.c_str());
    };
    add("x-amz-content-sha256: " + rq.payload_hash);
    if (!opts_.session_token.empty())
      add("x-amz-security-token: " + opts_.session_token);
    for (auto& h : rq.headers)
      add(h);
    curl_easy_setopt(h_, CURLOPT_HTTPHEADER, headers);
    call c{h_, &rq, &rs};
    curl_easy_setopt(h_, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h_, CURLOPT_WRITEDATA, &c);
    curl_easy_setopt(h_, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h_, CURLOPT_HEADERDATA, &c);
    std::string method = rq.method;
    if (method == "PUT") {
      curl_easy_setopt(h_, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h_, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(h_, CURLOPT_READDATA, rq.source);
      curl_easy_setopt(h_, CURLOPT_SEEKFUNCTION, on_seek);
      curl_easy_setopt(h_, CURLOPT_SEEKDATA, rq.source);
      curl_easy_setopt(h_, CURLOPT_INFILESIZE_LARGE,
                       static_cast<curl_off_t>(rq.source->length));
    } else if (method == "POST") {
      curl_easy_setopt(h_, CURLOPT_POST, 1L);
      curl_easy_setopt(h_, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(post->size()));
      curl_easy_setopt(h_, CURLOPT_POSTFIELDS, post->data());
    } else if (method == "HEAD") {
      curl_easy_setopt(h_, CURLOPT_NOBODY, 1L);
      curl_easy_setopt(h_, CURLOPT_FILETIME, 1L);
    } else if (method == "DELETE") {
      curl_easy_setopt(h_, CURLOPT_CUSTOMREQUEST, "DELETE");
    }
    auto rc = curl_easy_perform(h_);
    rs.status = status_of(h_);
    curl_easy_getinfo(h_, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T,
                      &rs.content_length);
    curl_easy_getinfo(h_, CURLINFO_FILETIME_T, &rs.filetime);
    curl_easy_setopt(h_, CURLOPT_HTTPHEADER, nullptr);
    curl_slist_free_all(headers);
    return rc;
  }

  void backoff(int attempt) {
    auto cap = opts_.retry_base.count();
    for (int i = 1; i < attempt && cap < opts_.retry_max.count(); ++i)
      cap *= 2;
    cap = std::min<int64_t>(cap, opts_.retry_max.count());
    if (cap <= 0)
      return;
    std::uniform_int_distribution<int64_t> dist{0, cap};
    std::this_thread::sleep_for(std::chrono::milliseconds{dist(rng_)});
  }

  // Runs a request with the retries; 2xx → no error.
  caf::error execute(request& rq, response& rs,
                     const std::string* post = nullptr) {
    if (h_ == nullptr)
      return fail(ec::object_store_error, rq.op, rq.key,
                  "curl_easy_init failed");
    if (curl_init_rc != CURLE_OK)
      return fail(ec::object_store_error, rq.op, rq.key,
                  std::string{"curl_global_init failed: "}
                      + curl_easy_strerror(curl_init_rc));
    char errbuf[CURL_ERROR_SIZE];
    std::string last;
    for (int attempt = 1;; ++attempt) {
      rs = response{};
      if (rq.source != nullptr) {
        rq.source->pos = 0;
        rq.source->read_errno = 0;
      }
      if (rq.sink != nullptr) {
        auto& sink = *rq.sink;
        sink.got = 0;
        sink.too_large = false;
        if (sink.str != nullptr)
          sink.str->clear();
        if (sink.fd >= 0
            && (::ftruncate(sink.fd, 0) != 0
                || ::lseek(sink.fd, 0, SEEK_SET) != 0))
          return fail(ec::object_store_error, rq.op, rq.key,
                      std::string{"truncate the target file: "}
                          + std::strerror(errno));
      }
      auto rc = perform(rq, rs, post, errbuf);
      bool again = attempt < opts_.attempts;
      if (rc == CURLE_OK) {
        if (rs.status >= 200 && rs.status < 300)
          return {};
        auto detail = "HTTP " + std::to_string(rs.status);
        auto what = error_detail(rs.body);
        if (!what.empty())
          detail += " (" + what + ")";
        if (retryable(rs.status)) {
          last = detail;
          if (again) {
            backoff(attempt);
            continue;
          }
          return fail(ec::object_store_unreachable, rq.op, rq.key,
                      "failing after " + std::to_string(attempt)
                          + " attempt(s) at " + endpoint_ + ", last: " + last);
        }
        // A missing bucket is a configuration error, not a missing object
        // (HEAD has no body to tell them apart).
        if (rs.status == 404
            && rs.body.find("<Code>NoSuchBucket</Code>") != std::string::npos)
          return fail(ec::object_store_error, rq.op, rq.key,
                      detail + "; check the bucket name and the endpoint");
        if (rs.status == 404)
          return fail(ec::object_not_found, rq.op, rq.key, detail);
        if (rs.status == 401 || rs.status == 403)
          return fail(ec::object_store_denied, rq.op, rq.key,
                      detail + "; check the credentials and the region");
        return fail(ec::object_store_error, rq.op, rq.key, detail);
      }
      if (rq.sink != nullptr && rq.sink->too_large)
        return fail(ec::object_store_error, rq.op, rq.key,
                    (rq.sink->announced >= 0
                         ? std::to_string(rq.sink->announced) + " bytes, "
                         : std::string{"the object is "})
                        + "larger than the limit of "
                        + std::to_string(rq.sink->max) + " bytes");
      if (rq.sink != nullptr && rq.sink->write_errno != 0)
        return fail(ec::object_store_error, rq.op, rq.key,
                    std::string{"write the target file: "}
                        + std::strerror(rq.sink->write_errno));
      if (rq.source != nullptr && rq.source->read_errno != 0)
        return fail(ec::object_store_error, rq.op, rq.key,
                    std::string{"read the source: "}
                        + std::strerror(rq.source->read_errno));
      if (rs.body_too_large)
        return fail(ec::object_store_error, rq.op, rq.key,
                    "the answer exceeds " + std::to_string(max_answer_body)
                        + " bytes");
      // curl's error buffer says more than curl_easy_strerror (the host,
      // the port, the time), and never a credential.
      last = errbuf[0] != '\0' ? std::string{errbuf}
                               : std::string{curl_easy_strerror(rc)};
      last += " (curl " + std::to_string(static_cast<int>(rc)) + ")";
      if (!retryable(rc))
        return fail(ec::object_store_error, rq.op, rq.key, last);
      if (again) {
        backoff(attempt);
        continue;
      }
      return fail(ec::object_store_unreachable, rq.op, rq.key,
                  "cannot reach " + endpoint_ + " after "
                      + std::to_string(attempt) + " attempt(s): " + last);
    }
  }

  object_store_options opts_;
  std::string bucket_;
  std::string prefix_;
  std::string endpoint_;
  std::string url_;
  std::string sigv4_;
  std::string userpwd_;
  std::mt19937_64 rng_;
  CURL* h_ = nullptr;
};

} // namespace

caf::expected<std::unique_ptr<object_store>>
open_s3_store(const object_store_options& opts, std::string bucket,
              std::string prefix) {
  std::call_once(curl_once,
                 [] { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); });
  auto bad = [](const std::string& why) {
    return make_error(ec::invalid_argument, "object store endpoint: " + why);
  };
  if (opts.s3_region.empty()
      || opts.s3_region.find_first_of(":/ \t\r\n") != std::string::npos)
    return bad("bad region '" + opts.s3_region + "'");
  std::string endpoint = opts.s3_endpoint;
  auto region = opts.s3_region;
  if (endpoint.empty())
    endpoint = region == "auto" ? "https://s3.amazonaws.com"
                                : "https://s3." + region + ".amazonaws.com";
  while (!endpoint.empty() && endpoint.back() == '/')
    endpoint.pop_back();
  auto scheme_end = endpoint.find("://");
  if (scheme_end == std::string::npos
      || (endpoint.compare(0, scheme_end, "http") != 0
          && endpoint.compare(0, scheme_end, "https") != 0))
    return bad("use http://HOST[:PORT] or https://HOST[:PORT]");
  auto authority = endpoint.substr(scheme_end + 3);
  // Never echo an endpoint that carries userinfo: it may hold a secret.
  if (authority.find('@') != std::string::npos)
    return bad("credentials in the endpoint are not supported; use "
               "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY");
  if (authority.empty()
      || authority.find_first_of("?# \t\r\n") != std::string::npos)
    return bad("'" + endpoint + "' is not http(s)://HOST[:PORT]");
  object_store_options o = opts;
  // AWS's global endpoint signs as us-east-1; "auto" is R2's region.
  if (opts.s3_endpoint.empty() && region == "auto")
    o.s3_region = "us-east-1";
  auto store = std::make_unique<s3_store>(
      o, std::move(bucket), std::move(prefix), std::move(endpoint));
  return std::unique_ptr<object_store>{std::move(store)};
}

} // namespace makima::store::detail
