// The SERVER's authentication (server_auth.hpp): key digests, the per-route
// rule and the refusals.
#include "actors/server_auth.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <strings.h>

#include <algorithm>

#include "actors/api.hpp"
#include "actors/server_state.hpp"

namespace makima::server_detail {

static_assert(SHA256_DIGEST_LENGTH == 32);

key_set::key_set(const std::vector<std::string>& keys) {
  for (auto& k : keys)
    digests_.push_back(digest(k));
}

bool key_set::matches(const std::string& key) const {
  return find(key).has_value();
}

std::optional<size_t> key_set::find(const std::string& key) const {
  auto d = digest(key);
  // Every key is compared; the index is picked without a branch on the
  // comparison (keys are distinct, so at most one matches).
  size_t index = 0;
  int found = 0;
  for (size_t i = 0; i < digests_.size(); ++i) {
    int eq = CRYPTO_memcmp(d.data(), digests_[i].data(), d.size()) == 0;
    found |= eq;
    index |= i * static_cast<size_t>(eq);
  }
  if (!found)
    return std::nullopt;
  return index;
}

key_set::sha key_set::digest(const std::string& k) {
  sha out;
  SHA256(reinterpret_cast<const unsigned char*>(k.data()), k.size(),
         out.data());
  return out;
}

authenticator::verdict authenticator::check(const net::request& req,
                                            access need,
                                            std::string* principal) const {
  auto& rep = req.repeated_headers;
  if (std::find(rep.begin(), rep.end(), "authorization") != rep.end())
    return duplicate;
  if (need == access::open || no_auth)
    return ok;
  std::string key;
  auto h = req.headers.find("authorization");
  if (h != req.headers.end() && h->second.size() > 7
      && strncasecmp(h->second.c_str(), "Bearer ", 7) == 0)
    key = h->second.substr(7);
  if (key.empty())
    return unauthorized;
  auto user = users.find(key);
  auto daemon = daemons.find(key);
  bool daemon_endpoint = need == access::daemon;
  if (daemon_endpoint ? daemon.has_value() : user.has_value()) {
    if (principal)
      *principal = daemon_endpoint ? "daemon:" + std::to_string(*daemon)
                                   : "user:" + std::to_string(*user);
    return ok;
  }
  return (daemon_endpoint ? user.has_value() : daemon.has_value())
             ? forbidden
             : unauthorized;
}

net::response error_response(unsigned status, const char* code,
                             const std::string& message) {
  net::response res;
  res.status = status;
  res.body = api::error_body(code, message);
  return res;
}

net::response auth_response(authenticator::verdict v) {
  if (v == authenticator::duplicate)
    return error_response(400, "duplicate_authorization",
                          "more than one Authorization header");
  auto res =
      v == authenticator::unauthorized
          ? error_response(401, "unauthorized", "missing or unknown API key")
          : error_response(403, "forbidden",
                           "this key may not use this endpoint");
  res.headers["WWW-Authenticate"] = "Bearer";
  return res;
}

std::optional<net::response> admit(const authenticator& auth,
                                   shared_counters& counters,
                                   const net::request& req,
                                   std::string* principal) {
  if (principal)
    principal->clear();
  auto t = parse_target(req.target);
  if (!t) {
    counters.count_bad_target();
    return error_response(400, "bad_target",
                          "the request target is not canonical: " + t.error);
  }
  auto v = auth.check(req, access_for(t.value), principal);
  if (v == authenticator::ok)
    return std::nullopt;
  auto res = auth_response(v);
  counters.count_auth_rejected(res.status);
  return res;
}

} // namespace makima::server_detail
