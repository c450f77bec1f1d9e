// The JSON values of the domain types, for the .cpp files that build or read
// larger JSON documents (frames, API bodies, `--json` output) so that no
// record makes a round trip through a JSON string. Private: included only by
// .cpp files, so that nlohmann stays out of every public header; the string
// forms (`to_json`, `record_from_json`) are in messages.hpp.
#pragma once

#include <optional>

#include <nlohmann/json.hpp>

#include "actors/messages.hpp"

namespace makima {

/// The JSON value of a record (what `to_json` prints).
nlohmann::json record_value(const task_record& x);

/// A record from its JSON value; nullopt when malformed.
std::optional<task_record> record_from_value(const nlohmann::json& j);

/// The JSON value of a history entry.
nlohmann::json change_value(const state_change& x);

/// A history entry from its JSON value; nullopt when malformed.
std::optional<state_change> change_from_value(const nlohmann::json& j);

} // namespace makima
