// The HTTP API's codec (docs/protocol.md §10), used by both ends like
// actors/protocol.hpp is for frames: the submit body that `makima task
// submit` sends and the SERVER parses, and the error body every refusal
// carries. nlohmann stays inside api.cpp.
#pragma once

#include <string>
#include <string_view>

#include <caf/expected.hpp>

#include "actors/messages.hpp"

namespace makima::api {

/// The body of `POST /api/v1/tasks` for `spec`: `argv` always, every other
/// field only when it differs from task_spec's default (the server applies
/// the same defaults), `created_at` never (the server stamps it). Invalid
/// UTF-8 is replaced, never thrown on.
std::string encode_submit(const task_spec& spec);

/// Parses and validates a submit body: argv a non-empty array of strings,
/// no NUL byte anywhere, env entries KEY=VALUE with a name, timeout and grace
/// from 0 to max_timeout_seconds, max_attempts from 1 to
/// max_attempts_limit, commit/push_url only with a repo. Errors:
/// ec::invalid_argument with the message the API answers with (400).
caf::expected<task_spec> decode_submit(const std::string& body);

/// `{"error":{"code":CODE,"message":MESSAGE}}`; invalid UTF-8 replaced.
std::string error_body(std::string_view code, const std::string& message);

} // namespace makima::api
