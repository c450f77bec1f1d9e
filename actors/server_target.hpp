// The one canonical reading of an HTTP request target for the server: the
// authentication decision (server_auth.cpp, on the io thread) and the routing
// (server_http.cpp, in the SERVER actor) both call parse_target, so a path
// is authenticated exactly as it is dispatched. A target that is not in
// canonical form (`//`, `/./`, `/../`, percent-encoded unreserved
// characters, malformed escapes, raw bytes outside RFC 3986, ...) is refused
// with 400 before either decision is taken. Which routes are public is one
// list here (access_for); every other path needs a key (deny by default).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace makima::server_detail {

/// A canonical request target.
struct target {
  /// Decoded path segments ("/api/v1/tasks" -> {"api", "v1", "tasks"});
  /// never empty strings, never "." or "..", always valid UTF-8.
  std::vector<std::string> parts;
  /// Decoded query parameters ('+' is a space here, not in the path); the
  /// last of a repeated name wins. Values may hold any bytes but NUL.
  std::map<std::string, std::string> query;
};

/// The result of parse_target: a target, or why the raw one is refused.
struct parsed_target {
  target value;
  /// Empty when the target is canonical; else a fixed sentence (it never
  /// echoes the request) for the 400 answer.
  std::string error;
  explicit operator bool() const { return error.empty(); }
};

/// Parses `raw` (origin-form: "/path?query"), refusing everything that is
/// not its one canonical spelling.
parsed_target parse_target(const std::string& raw);

/// Who may use a route.
enum class access {
  /// No key: /healthz, /readyz, /metrics.
  open,
  /// A user key: every other path, known or not.
  user,
  /// A daemon key: /ws/daemon.
  daemon,
};

/// The access a canonical target needs (segments compare case-sensitively:
/// "/HEALTHZ" is not public).
access access_for(const target& t);

} // namespace makima::server_detail
