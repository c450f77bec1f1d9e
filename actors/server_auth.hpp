// Who may talk to the SERVER (docs/protocol.md §2), as plain code run on the
// io thread before a request or a WebSocket upgrade reaches the actor: the
// API keys as SHA-256 digests compared in constant time (`key_set`), the
// decision per route (`authenticator`), the refusal sent back
// (`auth_response`) and the gate that combines them with parse_target
// (`admit`). No actor: tests/actors/server_auth_test.cpp checks it on plain
// requests.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "actors/server_target.hpp"
#include "runtime/net/net.hpp"

namespace makima::server_detail {

struct shared_counters;

/// SHA-256 digests of a set of keys, compared in constant time (§2). The
/// keys themselves are not kept.
class key_set {
public:
  explicit key_set(const std::vector<std::string>& keys);

  /// Whether `key` is one of the set; compares against every key, without
  /// an early exit.
  bool matches(const std::string& key) const;

  /// The position of `key` in the set (as given to the constructor), or
  /// nullopt; compares against every key, like matches().
  std::optional<size_t> find(const std::string& key) const;

private:
  using sha = std::array<unsigned char, 32>;
  static sha digest(const std::string& k);
  std::vector<sha> digests_;
};

/// The server's keys and the rule of which key opens which route.
struct authenticator {
  key_set users;
  key_set daemons;
  /// Every route is open (loopback only; the caller checks).
  bool no_auth = false;

  /// What check() decided: let it pass, 401, 403, or 400 for more than one
  /// Authorization header.
  enum verdict { ok, unauthorized, forbidden, duplicate };

  /// The key `need`s (docs/protocol.md §2). More than one Authorization
  /// header is refused whatever the route: which one counts would be a
  /// guess, and proxies and the server might guess differently.
  /// On ok for a route that needs a key, `*principal` (when given) is set
  /// to who the key is: "user:N" or "daemon:N", N its position among the
  /// configured keys — an opaque, non-secret id (net::request::principal).
  verdict check(const net::request& req, access need,
                std::string* principal = nullptr) const;
};

/// A JSON error body `{"error":{"code":…,"message":…}}` with `status`.
net::response error_response(unsigned status, const char* code,
                             const std::string& message);

/// The refusal for a verdict other than ok: 400 duplicate_authorization, or
/// 401/403 with `WWW-Authenticate: Bearer`.
net::response auth_response(authenticator::verdict v);

/// What the io thread decides before a request (or a WebSocket upgrade)
/// reaches the SERVER actor: a refusal to send (counted in `counters`), or
/// nullopt to pass it on. The target is read by parse_target, the same
/// function the actor routes with, so what is authenticated is what is
/// dispatched. `principal` as authenticator::check.
std::optional<net::response> admit(const authenticator& auth,
                                   shared_counters& counters,
                                   const net::request& req,
                                   std::string* principal = nullptr);

} // namespace makima::server_detail
