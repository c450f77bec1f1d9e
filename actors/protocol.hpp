// The frames of the daemon <-> server WebSocket protocol (docs/protocol.md,
// version 2; version 1 is still read and spoken to v1 daemons) as plain structs, and their one JSON codec. Both ends use this
// file: the server's DAEMON-facing code and the daemon's CONNECTION actor.
// No transport here; `encode` gives the text of a frame, `decode` parses
// one and says which §9 error (and close code) bad input deserves.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "actors/messages.hpp"

namespace makima::proto {

/// The protocol version this build speaks (`v` of every frame it starts).
constexpr int version = 2;

/// The oldest version this build reads (and answers in: docs/protocol.md
/// §14 — a server answers each daemon in the `v` of its hello).
constexpr int min_version = 1;

/// Raw output bytes in one `event` frame at most (before base64).
constexpr size_t max_event_output_bytes = 256 << 10;

/// The smallest frame limit makima works with: one output chunk (the
/// reactor reads up to 128 KiB) takes about 175 KiB in base64. A daemon
/// whose server announces less holds events that do not fit (logged).
constexpr size_t min_frame_bytes = 256 << 10;

/// Bytes a daemon's `state`/`result` event may add to the record of its
/// `assign` (envelope fields, worktree and state dir paths, branch,
/// commits, error): a submission is refused (413) unless its assign frame
/// plus this fits in the frame limit.
constexpr size_t record_headroom = 8 << 10;

/// Close codes of docs/protocol.md §9.
enum close_code : uint16_t {
  close_normal = 1000,
  close_going_away = 1001,
  close_unsupported_data = 1003,
  close_invalid_payload = 1007,
  close_policy = 1008,
  close_too_big = 1009,
  close_internal = 1011,
  close_unsupported_version = 4001,
  close_unknown_type = 4002,
  close_hello_required = 4003,
  close_replaced = 4004,
  close_lease_expired = 4005,
  close_seq_gap = 4006,
};

/// (task, attempt, seq): one event's identity, or an ack position — an
/// attempt_id (messages.hpp) plus a seq; `{task, attempt, seq}` initializes it.
struct attempt_seq : attempt_id {
  uint64_t seq = 0;
  bool operator==(const attempt_seq& o) const {
    return static_cast<const attempt_id&>(*this) == o && seq == o.seq;
  }
};

// -- daemon -> server ---------------------------------------------------------

struct hello {
  std::string daemon_id;
  std::string name;
  std::string pool;
  std::map<std::string, std::string> labels;
  uint32_t capacity = 1;
  uint64_t free_disk_bytes = 0;
  std::vector<std::string> cached_repos;
  /// Attempts the daemon still knows; `seq` = last event seq in its outbox.
  std::vector<attempt_seq> running;
  std::string version;
  /// Version 2: whether the daemon has a checkpoint store (it can restore
  /// an assignment's `resume_from`); nullopt when the hello does not say
  /// (a v1 daemon, or a v2 one older than the field).
  std::optional<bool> checkpoints;
  /// The `v` of the frame (decode fills it; encode ignores it).
  int v = proto::version;
};

/// Both directions; the server's has every field 0 (and sends none).
struct heartbeat {
  uint32_t running = 0;
  uint64_t outbox_events = 0;
  int64_t outbox_oldest_at = 0;
};

enum class event_kind : uint8_t {
  output = 1,
  state = 2,
  result = 3,
  /// Version 2: a checkpoint the daemon uploaded.
  checkpoint = 4,
};

/// What a `checkpoint` event reports (docs/protocol.md §14).
struct checkpoint_info {
  /// `<task>/<n>`.
  std::string ref;
  uint64_t covers_seq = 0;
  uint64_t bytes = 0;
  uint64_t blobs = 0;
  int64_t pause_ms = 0;
};

const char* to_string(event_kind k);

struct event {
  std::string task;
  uint32_t attempt = 0;
  /// 1, 2, … per attempt.
  uint64_t seq = 0;
  event_kind kind = event_kind::output;
  int64_t at = 0;
  /// kind == output: chunks with their task-wide output seq.
  std::vector<output_chunk> chunks;
  /// kind == state | result: the record after the transition.
  task_record record;
  /// kind == checkpoint.
  checkpoint_info checkpoint;
  /// Version 2, kind == state: the attempt was just restored from this
  /// checkpoint, at this cost (the `restore` field; absent otherwise).
  std::optional<restore_report> restore;
};

// -- server -> daemon ---------------------------------------------------------

struct welcome {
  std::string server_version;
  /// Seconds.
  double heartbeat = 5;
  double lease = 30;
  uint64_t max_frame_bytes = 1 << 20;
  std::vector<attempt_seq> acked;
};

struct assign {
  /// record.attempt is the attempt; record.next_seq the first output seq.
  task_record record;
};

struct cancel {
  std::string task;
  uint32_t attempt = 0;
  /// "user", "fenced" or "lease".
  std::string reason;
};

struct drain {
  std::string reason;
};

/// Version 2: checkpoint the attempt now and report it (an event of kind
/// checkpoint, even when nothing changed), or say why not (an `error`
/// frame `checkpoint_failed` naming the task and attempt).
struct checkpoint_now {
  std::string task;
  uint32_t attempt = 0;
};

/// Version 2: end the attempt as for an eviction (the task's signal and
/// grace, a final checkpoint, result `migrating`) so that it resumes on
/// another daemon.
struct migrate {
  std::string task;
  uint32_t attempt = 0;
};

struct ack {
  std::string task;
  uint32_t attempt = 0;
  uint64_t seq = 0;
};

/// An `error` frame (both directions).
struct error {
  /// malformed, unsupported_version, unknown_type, hello_required,
  /// bad_message, seq_gap, stale_attempt, internal.
  std::string code;
  std::string message;
  /// Set when the error concerns an event.
  std::string task;
  uint32_t attempt = 0;
};

using frame = std::variant<hello, heartbeat, event, welcome, assign, cancel,
                           drain, ack, error, checkpoint_now, migrate>;

/// The JSON text of a frame (with "v" = `v` and "type"). Output bytes are
/// base64.
std::string encode(const frame& f, int v = version);

/// Why a text could not be decoded: the error frame to answer with and the
/// close code (docs/protocol.md §9).
struct decode_failure {
  std::string code;
  std::string message;
  uint16_t close = close_invalid_payload;
};

/// Parses one frame. Unknown fields are ignored; a missing or mistyped
/// required field is `malformed` (1007), `v` not in [min_version, version]
/// `unsupported_version`
/// (4001), an unknown type `unknown_type` (4002).
std::variant<frame, decode_failure> decode(std::string_view text);

/// The close code that goes with an error code ("seq_gap" -> 4006); 0 for
/// `stale_attempt`, which does not close.
uint16_t close_code_of(std::string_view error_code);

/// RFC 4648 base64 with padding.
std::string base64_encode(std::string_view bytes);
/// Decodes base64 (padding required); nullopt when malformed.
std::optional<std::string> base64_decode(std::string_view text);

} // namespace makima::proto
