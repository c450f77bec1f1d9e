// What the SERVER actor (actors.hpp; server.cpp and the server_*.cpp files)
// is configured with. The node that runs it is in server_node.hpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "actors/actors.hpp"

namespace makima {

/// What a server needs (config keys in brackets).
struct server_settings {
  /// Address to listen on [server.listen]; port 0 = any free port.
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  /// The server's RocksDB directory (e.g. config::db_dir).
  std::filesystem::path db_dir;
  /// fsync the WAL on every write [store.sync].
  bool sync = false;
  /// Keys of the HTTP API and of `/ws/daemon` [server.user_keys,
  /// server.daemon_keys]. Never logged.
  std::vector<std::string> user_keys;
  std::vector<std::string> daemon_keys;
  /// Accept requests without a key (loopback only; the caller checks).
  bool no_auth = false;
  /// Seconds of silence after which a daemon loses its tasks
  /// [server.lease].
  double lease = 30;
  /// Attempts a task gets at most before it fails, unless its submission
  /// says otherwise (`max_attempts`) [server.max_attempts].
  uint32_t max_attempts = 5;
  /// Delay before a re-queued task is dispatched again: `retry_backoff`
  /// seconds after the first lost attempt, doubling per attempt, at most
  /// `retry_backoff_max` [server.retry_backoff, server.retry_backoff_max].
  double retry_backoff = 1;
  double retry_backoff_max = 60;
  /// Timeout and grace of a submitted task whose submission names none
  /// [task.timeout, task.grace].
  double task_timeout = 0;
  double task_grace = 10;
  /// Heartbeat interval told to daemons [server.heartbeat].
  double heartbeat = 5;
  /// Limits [net.max_frame_bytes, net.max_body_bytes].
  uint64_t max_frame_bytes = 1 << 20;
  uint64_t max_body_bytes = 1 << 20;
  /// PEM files; both set = TLS (implemented by runtime/net).
  std::string tls_cert;
  std::string tls_key;
  /// Time from upgrade to `hello` (§1; tests shorten it).
  std::chrono::milliseconds hello_timeout{10000};
  /// Bounds of open `output?follow=1` streams per key and in total
  /// [server.max_streams_per_key, server.max_streams]; beyond: 429.
  uint32_t max_streams_per_key = 64;
  uint32_t max_streams = 1024;
  /// Interval of `: keep-alive` comments on SSE streams (§10).
  std::chrono::milliseconds keep_alive{15000};
  /// The version reported in `welcome` and /metrics' makima_build_info.
  std::string version = "0.0.0";
  /// The source commit of this build (makima_build_info).
  std::string commit = "unknown";
};

} // namespace makima
