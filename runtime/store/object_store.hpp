// The object store where checkpoints live: one interface, chosen by URL.
//   file:///abs/path           a directory (the default, DATA/store)
//   s3://BUCKET[/PREFIX]       S3 or R2 (path-style, libcurl's SigV4)
// Keys are relative, '/'-separated (e.g. "cas/<sha256>",
// "tasks/<id>/checkpoints/3.json"); the URL's path or prefix is prepended.
// Every call blocks (disk or network): callers run it on a detached actor or
// a dedicated thread, never on CAF's scheduler threads. No libcurl header
// leaks out of this file. A store object is not thread-safe; open one per
// thread.
//
// Failures are makima errors:
//   ec::object_not_found          the key does not exist (get, get_file;
//                                 a missing bucket is object_store_error)
//   ec::object_store_denied       401/403 (credentials, signature)
//   ec::object_store_unreachable  connect errors, timeouts, 5xx and 429 after
//                                 the bounded retries
//   ec::object_store_error        any other answer, local I/O errors
//   ec::invalid_argument          a bad URL or key
// No message ever contains a credential: URLs are printed without userinfo
// and query strings, and no header is echoed.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace makima::store {

/// How to reach an object store.
struct object_store_options {
  /// file:///abs/path or s3://BUCKET[/PREFIX].
  std::string url;
  /// s3:// only: the endpoint, e.g. https://<account>.r2.cloudflarestorage.com
  /// or http://127.0.0.1:PORT. Empty: https://s3.<region>.amazonaws.com.
  std::string s3_endpoint;
  /// s3:// only: the SigV4 region ("auto" for R2).
  std::string s3_region = "auto";
  /// s3:// only: credentials (from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
  /// / AWS_SESSION_TOKEN or the config file; never logged).
  std::string access_key;
  std::string secret_key;
  std::string session_token;
  /// Time to establish a connection.
  std::chrono::milliseconds connect_timeout{5000};
  /// A transfer fails when it moves fewer than 1 KiB/s for this long (curl's
  /// low-speed limit, in whole seconds, at least 1 s): slow is fine, stalled
  /// is not.
  std::chrono::milliseconds stall_timeout{30000};
  /// Attempts per request (1 = no retry) on connect errors, timeouts, 5xx
  /// and 429; waits grow exponentially from `retry_base` with full jitter,
  /// capped at `retry_max`.
  int attempts = 5;
  std::chrono::milliseconds retry_base{200};
  std::chrono::milliseconds retry_max{5000};
  /// put_file uses a multipart upload at and above this size.
  uint64_t multipart_threshold = 64ull << 20;
  /// Size of each part of a multipart upload (S3 needs >= 5 MiB but the
  /// last).
  uint64_t part_size = 16ull << 20;
  /// s3:// only: keys per ListObjectsV2 page (`max-keys`, at most 1000);
  /// `list` follows the continuation tokens over all pages. Tests make it
  /// small to check the pagination.
  int list_page_size = 1000;
};

/// One stored object, as head and list report it.
struct object_info {
  /// The key, relative to the store's URL.
  std::string key;
  uint64_t size = 0;
  /// Last modification, seconds since the Unix epoch.
  int64_t modified = 0;
};

/// An object store. Open one with `open_object_store`.
class object_store {
public:
  virtual ~object_store();

  /// Stores `bytes` under `key`, replacing what was there. For file://, the
  /// object appears whole or not at all (write to a temp file, fsync,
  /// rename).
  virtual caf::error put(std::string_view key, std::string_view bytes) = 0;

  /// Stores the file at `path` under `key`, streaming it (multipart at and
  /// above `multipart_threshold` for s3://).
  virtual caf::error put_file(std::string_view key,
                              const std::filesystem::path& path) = 0;

  /// Returns the object's bytes. Fails with ec::object_store_error when it
  /// is larger than `max_size` (the limit is checked before or while
  /// reading, never after reading everything).
  virtual caf::expected<std::string> get(std::string_view key,
                                         uint64_t max_size = 1ull << 30)
      = 0;

  /// Writes the object to the file at `path` (created or truncated),
  /// streaming it; fails like `get` above `max_size`, leaving no file.
  virtual caf::error get_file(std::string_view key,
                              const std::filesystem::path& path,
                              uint64_t max_size = 1ull << 34)
      = 0;

  /// The object's size and time, or nullopt when there is no such key.
  virtual caf::expected<std::optional<object_info>> head(std::string_view key)
      = 0;

  /// Every object whose key starts with `prefix`, sorted by key (all pages).
  virtual caf::expected<std::vector<object_info>> list(std::string_view prefix)
      = 0;

  /// Deletes `key`; deleting a missing key succeeds.
  virtual caf::error remove(std::string_view key) = 0;

  /// The store's URL as a user may see it (no credentials).
  virtual std::string describe() const = 0;
};

/// Opens the store `opts.url` names. Checks the URL and, for file://,
/// creates the directory; does not contact a network store. Errors:
/// ec::invalid_argument (unknown scheme, relative file path, missing
/// bucket, s3:// without credentials), ec::object_store_error.
caf::expected<std::unique_ptr<object_store>>
open_object_store(const object_store_options& opts);

/// The lowercase hex SHA-256 of `bytes`.
std::string sha256_hex(std::string_view bytes);

/// The lowercase hex SHA-256 of the file at `path`. Errors: ec::io_error.
caf::expected<std::string> sha256_file(const std::filesystem::path& path);

} // namespace makima::store
