// Internal to runtime/store: the s3:// backend's constructor and helpers
// shared by the two backends (object_store.cpp, s3.cpp). Not for callers:
// they use open_object_store.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <caf/error.hpp>

#include "runtime/store/object_store.hpp"

namespace makima::store::detail {

/// Checks a key (or, with `allow_empty`, a list prefix): relative,
/// '/'-separated, no empty, "." or ".." component, no NUL. Returns
/// ec::invalid_argument naming `op` otherwise.
caf::error check_key(std::string_view op, std::string_view key,
                     bool allow_empty = false);

/// Opens the s3:// backend for `bucket` and `prefix` (no leading or trailing
/// '/', may be empty). `opts` is checked by the caller except for the
/// endpoint.
caf::expected<std::unique_ptr<object_store>>
open_s3_store(const object_store_options& opts, std::string bucket,
              std::string prefix);

} // namespace makima::store::detail
