// The HTTP API's codec (docs/protocol.md §10), used by both ends like
// actors/protocol.hpp is for frames: the submit body that `makima task
// submit` sends and the SERVER parses, and the error body every refusal
// carries. nlohmann stays inside api.cpp.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

#include "actors/messages.hpp"

namespace makima::api {

/// Fields of a submit body sent even when they equal task_spec's default:
/// the user named them, so the server's own defaults (its task.timeout and
/// task.grace) must not replace them.
struct submit_fields {
  bool timeout = false;
  bool grace = false;
};

/// The body of `POST /api/v1/tasks` for `spec`: `argv` always, every other
/// field only when it differs from task_spec's default or is in `given`
/// (the server applies its defaults to the rest), `created_at` never (the
/// server stamps it). Invalid UTF-8 is replaced, never thrown on.
std::string encode_submit(const task_spec& spec, submit_fields given = {});

/// Parses and validates a submit body: argv a non-empty array of strings,
/// no NUL byte anywhere, env entries KEY=VALUE with a name, timeout and grace
/// from 0 to max_timeout_seconds, max_attempts from 1 to
/// max_attempts_limit, commit/push_url only with a repo. A body without
/// timeout or grace gets those of `defaults` (the server's task.timeout and
/// task.grace). Errors: ec::invalid_argument with the message the API
/// answers with (400).
caf::expected<task_spec> decode_submit(const std::string& body,
                                       const task_spec& defaults = {});

/// One output chunk as the API carries it: `{"seq":N,"stream":1|2,
/// "data":BASE64}` (a page's element, an SSE `output` event's data).
std::string encode_chunk(const output_chunk& c);

/// Parses `encode_chunk` output. Errors: ec::protocol_error (not an object, no
/// unsigned seq, data not a base64 string, stream not 1 or 2).
caf::expected<output_chunk> decode_chunk(const std::string& text);

/// A page of `GET /api/v1/tasks/ID/output`.
struct output_page {
  std::vector<output_chunk> chunks;
  /// The seq to ask for next.
  uint64_t next = 0;
  /// The task ended and nothing is left after `next`.
  bool done = false;
};

/// `{"chunks":[…],"next":N,"done":B}`.
std::string encode_page(const output_page& page);

/// Parses `encode_page` output (a missing `next` is the seq after the last
/// chunk, or 0). Errors: ec::protocol_error.
caf::expected<output_page> decode_page(const std::string& text);

/// `{"error":{"code":CODE,"message":MESSAGE}}`; invalid UTF-8 replaced.
std::string error_body(std::string_view code, const std::string& message);

/// The code and message of an error body.
struct api_error {
  std::string code;
  std::string message;
};

/// Parses `error_body` output; empty fields when `text` is not one (a
/// proxy's HTML page, say), never an exception.
api_error decode_error(const std::string& text);

} // namespace makima::api
