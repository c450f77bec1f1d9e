// Task ids: generated ids sort by creation time (ULID-like: 10 chars of
// millisecond timestamp + 16 random chars, Crockford base32, lowercase);
// user-chosen ids are validated so they are safe as file names, branch names
// and RocksDB key prefixes.
#pragma once

#include <string>
#include <string_view>

#include <caf/error.hpp>

namespace makima {

/// Returns a new sortable unique task id (26 characters).
std::string make_task_id();

/// Validates a user-given task id: 1..64 characters of [A-Za-z0-9._-],
/// not starting with '.' or '-'. Returns ec::invalid_argument otherwise.
caf::error validate_task_id(std::string_view id);

/// Milliseconds since the Unix epoch.
int64_t now_ms();

/// Formats milliseconds since the epoch as RFC 3339 UTC
/// ("2026-11-28T10:42:40.123Z").
std::string format_time(int64_t ms);

} // namespace makima
