// The JSON codec of the daemon <-> server frames (docs/protocol.md §3-5).
#include "actors/protocol.hpp"

#include <openssl/evp.h>

#include <limits>

#include <nlohmann/json.hpp>

#include "actors/json_codec.hpp"

namespace makima::proto {

using json = nlohmann::json;

namespace {

// -- field readers (throw bad_field) ----------------------------------------

constexpr const char* kinds[] = {"", "output", "state", "result",
                                  "checkpoint"};

// Thrown by the field readers; turned into a decode_failure.
struct bad_field {
  std::string message;
};

const json& field(const json& j, const char* key) {
  auto i = j.find(key);
  if (i == j.end())
    throw bad_field{std::string{"field '"} + key + "' is missing"};
  return *i;
}

std::string str(const json& j, const char* key) {
  auto& v = field(j, key);
  if (!v.is_string())
    throw bad_field{std::string{"field '"} + key + "' must be a string"};
  return v.get<std::string>();
}

std::string opt_str(const json& j, const char* key) {
  auto i = j.find(key);
  if (i == j.end() || i->is_null())
    return {};
  if (!i->is_string())
    throw bad_field{std::string{"field '"} + key + "' must be a string"};
  return i->get<std::string>();
}

template <class T>
T uint(const json& j, const char* key) {
  auto& v = field(j, key);
  if (!v.is_number_unsigned()
      || v.get<uint64_t>() > std::numeric_limits<T>::max())
    throw bad_field{std::string{"field '"} + key
                    + "' must be a non-negative integer"};
  return static_cast<T>(v.get<uint64_t>());
}

template <class T>
T opt_uint(const json& j, const char* key, T fallback = 0) {
  return j.contains(key) ? uint<T>(j, key) : fallback;
}

int64_t int64(const json& j, const char* key, int64_t fallback = 0) {
  auto i = j.find(key);
  if (i == j.end())
    return fallback;
  if (!i->is_number_integer())
    throw bad_field{std::string{"field '"} + key + "' must be an integer"};
  return i->get<int64_t>();
}

double number(const json& j, const char* key, double fallback) {
  auto i = j.find(key);
  if (i == j.end())
    return fallback;
  if (!i->is_number())
    throw bad_field{std::string{"field '"} + key + "' must be a number"};
  return i->get<double>();
}

std::map<std::string, std::string> string_map(const json& j, const char* key) {
  std::map<std::string, std::string> out;
  auto i = j.find(key);
  if (i == j.end())
    return out;
  if (!i->is_object())
    throw bad_field{std::string{"field '"} + key + "' must be an object"};
  for (auto& [k, v] : i->items()) {
    if (!v.is_string())
      throw bad_field{std::string{"field '"} + key + "." + k
                      + "' must be a string"};
    out.emplace(k, v.get<std::string>());
  }
  return out;
}

std::vector<std::string> string_list(const json& j, const char* key) {
  std::vector<std::string> out;
  auto i = j.find(key);
  if (i == j.end())
    return out;
  if (!i->is_array())
    throw bad_field{std::string{"field '"} + key + "' must be an array"};
  for (auto& v : *i) {
    if (!v.is_string())
      throw bad_field{std::string{"field '"} + key
                      + "' must hold only strings"};
    out.push_back(v.get<std::string>());
  }
  return out;
}

json positions(const std::vector<attempt_seq>& xs) {
  auto out = json::array();
  for (auto& x : xs)
    out.push_back({{"task", x.task}, {"attempt", x.attempt}, {"seq", x.seq}});
  return out;
}

std::vector<attempt_seq> positions_from(const json& j, const char* key) {
  std::vector<attempt_seq> out;
  auto i = j.find(key);
  if (i == j.end())
    return out;
  if (!i->is_array())
    throw bad_field{std::string{"field '"} + key + "' must be an array"};
  for (auto& e : *i) {
    if (!e.is_object())
      throw bad_field{std::string{"field '"} + key
                      + "' must hold {task, attempt, seq} objects"};
    out.push_back({str(e, "task"), uint<uint32_t>(e, "attempt"),
                   uint<uint64_t>(e, "seq")});
  }
  return out;
}

json record_json(const task_record& rec) {
  return record_value(rec);
}

task_record record_from(const json& j, const char* key) {
  auto& v = field(j, key);
  if (!v.is_object())
    throw bad_field{std::string{"field '"} + key + "' must be an object"};
  auto rec = record_from_value(v);
  if (!rec)
    throw bad_field{std::string{"field '"} + key
                    + "' is not a valid task record"};
  return std::move(*rec);
}

// Whether `ref` is `<task>/<n>` (n decimal digits).
bool is_ref_of(const std::string& ref, const std::string& task) {
  auto slash = ref.rfind('/');
  return slash != std::string::npos && ref.substr(0, slash) == task
         && slash + 1 < ref.size()
         && ref.find_first_not_of("0123456789", slash + 1)
                == std::string::npos;
}

json to_json_value(const frame& f, int v) {
  json j{{"v", v}};
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, hello>) {
          j["type"] = "hello";
          j["daemon_id"] = x.daemon_id;
          j["name"] = x.name;
          j["pool"] = x.pool;
          j["labels"] = x.labels;
          j["capacity"] = x.capacity;
          j["free_disk_bytes"] = x.free_disk_bytes;
          j["cached_repos"] = x.cached_repos;
          if (x.checkpoints)
            j["checkpoints"] = *x.checkpoints;
          auto running = json::array();
          for (auto& r : x.running)
            running.push_back({{"task", r.task},
                               {"attempt", r.attempt},
                               {"last_seq", r.seq}});
          j["running"] = std::move(running);
          j["version"] = x.version;
        } else if constexpr (std::is_same_v<T, heartbeat>) {
          j["type"] = "heartbeat";
          if (x.running != 0 || x.outbox_events != 0
              || x.outbox_oldest_at != 0) {
            j["running"] = x.running;
            j["outbox_events"] = x.outbox_events;
            j["outbox_oldest_at"] = x.outbox_oldest_at;
          }
        } else if constexpr (std::is_same_v<T, event>) {
          j["type"] = "event";
          j["task"] = x.task;
          j["attempt"] = x.attempt;
          j["seq"] = x.seq;
          j["kind"] = to_string(x.kind);
          j["at"] = x.at;
          if (x.kind == event_kind::output) {
            auto chunks = json::array();
            for (auto& c : x.chunks)
              chunks.push_back({{"seq", c.seq},
                                {"stream", c.stream},
                                {"data", base64_encode(c.bytes)}});
            j["chunks"] = std::move(chunks);
          } else if (x.kind == event_kind::checkpoint) {
            auto& c = x.checkpoint;
            j["checkpoint"] = {{"ref", c.ref},
                               {"covers_seq", c.covers_seq},
                               {"bytes", c.bytes},
                               {"blobs", c.blobs},
                               {"pause_ms", c.pause_ms}};
          } else {
            j["record"] = record_json(x.record);
            if (x.kind == event_kind::state && x.restore) {
              auto& r = *x.restore;
              j["restore"] = {{"ref", r.ref},
                              {"total_ms", r.total_ms},
                              {"bytes", r.bytes_downloaded},
                              {"cloned", r.cloned}};
            }
          }
        } else if constexpr (std::is_same_v<T, welcome>) {
          j["type"] = "welcome";
          j["server_version"] = x.server_version;
          j["heartbeat"] = x.heartbeat;
          j["lease"] = x.lease;
          j["max_frame_bytes"] = x.max_frame_bytes;
          j["acked"] = positions(x.acked);
        } else if constexpr (std::is_same_v<T, assign>) {
          j["type"] = "assign";
          j["attempt"] = x.record.attempt;
          j["record"] = record_json(x.record);
        } else if constexpr (std::is_same_v<T, cancel>) {
          j["type"] = "cancel";
          j["task"] = x.task;
          j["attempt"] = x.attempt;
          j["reason"] = x.reason;
        } else if constexpr (std::is_same_v<T, drain>) {
          j["type"] = "drain";
          j["reason"] = x.reason;
        } else if constexpr (std::is_same_v<T, ack>) {
          j["type"] = "ack";
          j["task"] = x.task;
          j["attempt"] = x.attempt;
          j["seq"] = x.seq;
        } else if constexpr (std::is_same_v<T, checkpoint_now>) {
          j["type"] = "checkpoint";
          j["task"] = x.task;
          j["attempt"] = x.attempt;
        } else if constexpr (std::is_same_v<T, migrate>) {
          j["type"] = "migrate";
          j["task"] = x.task;
          j["attempt"] = x.attempt;
        } else if constexpr (std::is_same_v<T, error>) {
          j["type"] = "error";
          j["code"] = x.code;
          j["message"] = x.message;
          if (!x.task.empty()) {
            j["task"] = x.task;
            j["attempt"] = x.attempt;
          }
        }
      },
      f);
  return j;
}

frame from_json_value(const std::string& type, const json& j) {
  if (type == "hello") {
    hello x;
    x.daemon_id = str(j, "daemon_id");
    if (x.daemon_id.empty())
      throw bad_field{"field 'daemon_id' must not be empty"};
    x.name = opt_str(j, "name");
    x.pool = opt_str(j, "pool");
    x.labels = string_map(j, "labels");
    x.capacity = uint<uint32_t>(j, "capacity");
    if (x.capacity == 0)
      throw bad_field{"field 'capacity' must be at least 1"};
    x.free_disk_bytes = opt_uint<uint64_t>(j, "free_disk_bytes");
    x.cached_repos = string_list(j, "cached_repos");
    if (auto i = j.find("checkpoints"); i != j.end()) {
      if (!i->is_boolean())
        throw bad_field{"field 'checkpoints' must be a boolean"};
      x.checkpoints = i->get<bool>();
    }
    if (auto i = j.find("running"); i != j.end()) {
      if (!i->is_array())
        throw bad_field{"field 'running' must be an array"};
      for (auto& e : *i) {
        if (!e.is_object())
          throw bad_field{"field 'running' must hold objects"};
        x.running.push_back({str(e, "task"), uint<uint32_t>(e, "attempt"),
                             uint<uint64_t>(e, "last_seq")});
      }
    }
    x.version = opt_str(j, "version");
    return x;
  }
  if (type == "heartbeat") {
    heartbeat x;
    x.running = opt_uint<uint32_t>(j, "running");
    x.outbox_events = opt_uint<uint64_t>(j, "outbox_events");
    x.outbox_oldest_at = int64(j, "outbox_oldest_at");
    return x;
  }
  if (type == "event") {
    event x;
    x.task = str(j, "task");
    x.attempt = uint<uint32_t>(j, "attempt");
    x.seq = uint<uint64_t>(j, "seq");
    if (x.attempt == 0 || x.seq == 0)
      throw bad_field{"fields 'attempt' and 'seq' start at 1"};
    auto kind = str(j, "kind");
    x.at = int64(j, "at");
    if (kind == "output") {
      x.kind = event_kind::output;
      auto& chunks = field(j, "chunks");
      if (!chunks.is_array())
        throw bad_field{"field 'chunks' must be an array"};
      for (auto& c : chunks) {
        if (!c.is_object())
          throw bad_field{"field 'chunks' must hold objects"};
        output_chunk chunk;
        chunk.seq = uint<uint64_t>(c, "seq");
        chunk.stream = uint<uint8_t>(c, "stream");
        if (chunk.stream != 1 && chunk.stream != 2)
          throw bad_field{"chunk 'stream' must be 1 or 2"};
        auto bytes = base64_decode(str(c, "data"));
        if (!bytes)
          throw bad_field{"chunk 'data' is not valid base64"};
        chunk.bytes = std::move(*bytes);
        x.chunks.push_back(std::move(chunk));
      }
    } else if (kind == "state" || kind == "result") {
      x.kind = kind == "state" ? event_kind::state : event_kind::result;
      x.record = record_from(j, "record");
      if (x.record.spec.id != x.task || x.record.attempt != x.attempt)
        throw bad_field{"the record's id and attempt must match the event's"};
      if (x.kind == event_kind::result && !is_terminal(x.record.state))
        throw bad_field{"a result record must be in a terminal state"};
      if (auto i = j.find("restore");
          i != j.end() && x.kind == event_kind::state) {
        if (!i->is_object())
          throw bad_field{"field 'restore' must be an object"};
        restore_report r;
        r.ref = str(*i, "ref");
        if (!is_ref_of(r.ref, x.task))
          throw bad_field{"restore 'ref' must be <task>/<n> of the event's "
                          "task"};
        r.total_ms = int64(*i, "total_ms");
        if (r.total_ms < 0)
          throw bad_field{"restore 'total_ms' must be >= 0"};
        r.bytes_downloaded = opt_uint<uint64_t>(*i, "bytes");
        if (auto c = i->find("cloned"); c != i->end()) {
          if (!c->is_boolean())
            throw bad_field{"restore 'cloned' must be a boolean"};
          r.cloned = c->get<bool>();
        }
        x.restore = std::move(r);
      }
    } else if (kind == "checkpoint") {
      x.kind = event_kind::checkpoint;
      auto& c = field(j, "checkpoint");
      if (!c.is_object())
        throw bad_field{"field 'checkpoint' must be an object"};
      x.checkpoint.ref = str(c, "ref");
      if (!is_ref_of(x.checkpoint.ref, x.task))
        throw bad_field{"checkpoint 'ref' must be <task>/<n> of the event's "
                        "task"};
      x.checkpoint.covers_seq = opt_uint<uint64_t>(c, "covers_seq");
      x.checkpoint.bytes = opt_uint<uint64_t>(c, "bytes");
      x.checkpoint.blobs = opt_uint<uint64_t>(c, "blobs");
      x.checkpoint.pause_ms = int64(c, "pause_ms");
    } else {
      throw bad_field{
          "field 'kind' must be output, state, result or checkpoint"};
    }
    return x;
  }
  if (type == "welcome") {
    welcome x;
    x.server_version = opt_str(j, "server_version");
    x.heartbeat = number(j, "heartbeat", 5);
    x.lease = number(j, "lease", 30);
    if (!(x.heartbeat > 0) || !(x.lease > 0))
      throw bad_field{"fields 'heartbeat' and 'lease' must be > 0"};
    x.max_frame_bytes = opt_uint<uint64_t>(j, "max_frame_bytes", 1 << 20);
    x.acked = positions_from(j, "acked");
    return x;
  }
  if (type == "assign") {
    assign x;
    auto attempt = uint<uint32_t>(j, "attempt");
    x.record = record_from(j, "record");
    if (attempt == 0 || x.record.attempt != attempt)
      throw bad_field{"'attempt' must be >= 1 and equal the record's"};
    return x;
  }
  if (type == "cancel") {
    cancel x;
    x.task = str(j, "task");
    x.attempt = uint<uint32_t>(j, "attempt");
    x.reason = str(j, "reason");
    if (x.reason != "user" && x.reason != "fenced" && x.reason != "lease")
      throw bad_field{"field 'reason' must be user, fenced or lease"};
    return x;
  }
  if (type == "drain") {
    drain x;
    x.reason = opt_str(j, "reason");
    return x;
  }
  if (type == "ack") {
    ack x;
    x.task = str(j, "task");
    x.attempt = uint<uint32_t>(j, "attempt");
    x.seq = uint<uint64_t>(j, "seq");
    return x;
  }
  if (type == "checkpoint" || type == "migrate") {
    auto task = str(j, "task");
    auto attempt = uint<uint32_t>(j, "attempt");
    if (type == "checkpoint")
      return checkpoint_now{task, attempt};
    return migrate{task, attempt};
  }
  if (type == "error") {
    error x;
    x.code = str(j, "code");
    x.message = opt_str(j, "message");
    x.task = opt_str(j, "task");
    x.attempt = opt_uint<uint32_t>(j, "attempt");
    return x;
  }
  throw std::out_of_range{type};
}

} // namespace

const char* to_string(event_kind k) {
  auto i = static_cast<size_t>(k);
  return i < std::size(kinds) ? kinds[i] : "";
}

std::string encode(const frame& f, int v) {
  return to_json_value(f, v).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::variant<frame, decode_failure> decode(std::string_view text) {
  auto j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded())
    return decode_failure{"malformed", "the frame is not valid JSON",
                          close_invalid_payload};
  if (!j.is_object())
    return decode_failure{"malformed", "the frame is not a JSON object",
                          close_invalid_payload};
  auto v = j.find("v");
  if (v == j.end() || !v->is_number_integer()
      || v->get<int64_t>() < min_version || v->get<int64_t>() > version)
    return decode_failure{
        "unsupported_version",
        "this side speaks protocol versions " + std::to_string(min_version)
            + " to " + std::to_string(version) + "; got "
            + (v == j.end() ? std::string{"no 'v'"} : "v=" + v->dump()),
        close_unsupported_version};
  auto t = j.find("type");
  if (t == j.end() || !t->is_string())
    return decode_failure{"malformed",
                          "field 'type' is missing or not a string",
                          close_invalid_payload};
  auto type = t->get<std::string>();
  try {
    auto f = from_json_value(type, j);
    if (auto* h = std::get_if<hello>(&f))
      h->v = static_cast<int>(v->get<int64_t>());
    return f;
  } catch (const bad_field& e) {
    return decode_failure{"malformed", type + ": " + e.message,
                          close_invalid_payload};
  } catch (const std::out_of_range&) {
    return decode_failure{"unknown_type", "unknown frame type '" + type + "'",
                          close_unknown_type};
  } catch (const json::exception& e) {
    return decode_failure{"malformed", type + ": " + e.what(),
                          close_invalid_payload};
  }
}

uint16_t close_code_of(std::string_view code) {
  if (code == "malformed")
    return close_invalid_payload;
  if (code == "unsupported_version")
    return close_unsupported_version;
  if (code == "unknown_type")
    return close_unknown_type;
  if (code == "hello_required")
    return close_hello_required;
  if (code == "seq_gap")
    return close_seq_gap;
  if (code == "internal")
    return close_internal;
  if (code == "stale_attempt")
    return 0;
  return close_policy; // bad_message and anything else
}

std::string base64_encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  auto n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                           reinterpret_cast<const unsigned char*>(bytes.data()),
                           static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0)
    return std::nullopt;
  for (size_t i = 0; i < text.size(); ++i) {
    auto c = text[i];
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
              || (c >= '0' && c <= '9') || c == '+' || c == '/'
              || (c == '=' && i + 2 >= text.size());
    if (!ok)
      return std::nullopt;
  }
  if (text.size() >= 2 && text[text.size() - 2] == '=' && text.back() != '=')
    return std::nullopt;
  std::string out(3 * (text.size() / 4), '\0');
  auto n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                           reinterpret_cast<const unsigned char*>(text.data()),
                           static_cast<int>(text.size()));
  if (n < 0)
    return std::nullopt;
  // EVP_DecodeBlock counts padding as zero bytes; drop them.
  size_t pad = 0;
  if (!text.empty() && text.back() == '=')
    pad = text[text.size() - 2] == '=' ? 2 : 1;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

} // namespace makima::proto
