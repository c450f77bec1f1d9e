// The SERVER's authentication (server_auth.hpp): key digests, the per-route
// rule and the refusals.
#include "actors/server_auth.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <strings.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "actors/server_state.hpp"

namespace makima::server_detail {

static_assert(SHA256_DIGEST_LENGTH == 32);

key_set::key_set(const std::vector<std::string>& keys) {
  for (auto& k : keys)
    digests_.push_back(digest(k));
}

bool key_set::matches(const std::string& key) const {
  auto d = digest(key);
  int found = 0;
  for (auto& x : digests_)
    found |= CRYPTO_memcmp(d.data(), x.data(), d.size()) == 0 ? 1 : 0;
  return found != 0;
}

key_set::sha key_set::digest(const std::string& k) {
  sha out;
  SHA256(reinterpret_cast<const unsigned char*>(k.data()), k.size(),
         out.data());
  return out;
}

authenticator::verdict authenticator::check(const net::request& req,
                                            access need) const {
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
  bool user = users.matches(key);
  bool daemon = daemons.matches(key);
  bool daemon_endpoint = need == access::daemon;
  if (daemon_endpoint ? daemon : user)
    return ok;
  return (daemon_endpoint ? user : daemon) ? forbidden : unauthorized;
}

net::response error_response(unsigned status, const char* code,
                             const std::string& message) {
  net::response res;
  res.status = status;
  nlohmann::json j{{"error", {{"code", code}, {"message", message}}}};
  res.body = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
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
                                   const net::request& req) {
  auto t = parse_target(req.target);
  if (!t) {
    counters.count_bad_target();
    return error_response(400, "bad_target",
                          "the request target is not canonical: " + t.error);
  }
  auto v = auth.check(req, access_for(t.value));
  if (v == authenticator::ok)
    return std::nullopt;
  auto res = auth_response(v);
  counters.count_auth_rejected(res.status);
  return res;
}

} // namespace makima::server_detail
