// Implementation of makima's error helpers.
#include "runtime/error.hpp"

#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace makima {

caf::error make_error(ec code, std::string message) {
  return caf::error{static_cast<uint8_t>(code), error_category,
                    caf::make_message(std::move(message))};
}

ec code_of(const caf::error& err) {
  if (!err)
    return ec::none;
  if (err.category() != error_category)
    return ec::unspecified;
  return static_cast<ec>(err.code());
}

std::string describe(const caf::error& err) {
  if (!err)
    return "no error";
  if (err.category() == error_category) {
    const auto& ctx = err.context();
    if (ctx.match_elements<std::string>())
      return ctx.get_as<std::string>(0);
    return to_string(static_cast<ec>(err.code()));
  }
  if (err.category() == caf::atom("system"))
    return "internal error: "
           + caf::to_string(static_cast<caf::sec>(err.code()));
  return "internal error: " + caf::to_string(err);
}

bool from_string(std::string_view name, ec& out) {
  // Every value of the uint8_t range: the names are to_string's, so the two
  // cannot disagree.
  for (int i = 0; i <= 255; ++i) {
    auto code = static_cast<ec>(i);
    std::string_view n = to_string(code);
    if (n != "unknown" && n == name) {
      out = code;
      return true;
    }
  }
  return false;
}

const char* to_string(ec code) {
  switch (code) {
  case ec::none:
    return "none";
  case ec::unspecified:
    return "unspecified";
  case ec::invalid_argument:
    return "invalid_argument";
  case ec::invalid_config:
    return "invalid_config";
  case ec::task_exists:
    return "task_exists";
  case ec::task_not_found:
    return "task_not_found";
  case ec::bad_state:
    return "bad_state";
  case ec::cancelled:
    return "cancelled";
  case ec::repo_not_found:
    return "repo_not_found";
  case ec::ref_not_found:
    return "ref_not_found";
  case ec::git_error:
    return "git_error";
  case ec::push_rejected:
    return "push_rejected";
  case ec::worktree_missing:
    return "worktree_missing";
  case ec::store_error:
    return "store_error";
  case ec::store_corrupt:
    return "store_corrupt";
  case ec::store_locked:
    return "store_locked";
  case ec::store_full:
    return "store_full";
  case ec::io_error:
    return "io_error";
  case ec::command_not_found:
    return "command_not_found";
  case ec::command_not_executable:
    return "command_not_executable";
  case ec::spawn_failed:
    return "spawn_failed";
  case ec::net_error:
    return "net_error";
  case ec::net_timeout:
    return "net_timeout";
  case ec::protocol_error:
    return "protocol_error";
  case ec::object_store_error:
    return "object_store_error";
  case ec::object_store_unreachable:
    return "object_store_unreachable";
  case ec::object_store_denied:
    return "object_store_denied";
  case ec::object_not_found:
    return "object_not_found";
  case ec::checkpoint_not_found:
    return "checkpoint_not_found";
  case ec::checkpoint_corrupt:
    return "checkpoint_corrupt";
  case ec::checkpoint_version:
    return "checkpoint_version";
  case ec::checkpoint_unsigned:
    return "checkpoint_unsigned";
  case ec::checkpoint_bad_signature:
    return "checkpoint_bad_signature";
  case ec::checkpoint_limit:
    return "checkpoint_limit";
  case ec::checkpoint_unsafe_path:
    return "checkpoint_unsafe_path";
  }
  return "unknown";
}

} // namespace makima
