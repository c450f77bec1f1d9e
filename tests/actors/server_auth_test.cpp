// The SERVER's authentication (actors/server_auth.hpp) on plain requests:
// which key opens which route, what a refusal looks like and what the io
// thread's gate counts. No actor, no sockets.
#include "actors/server_auth.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "actors/server_state.hpp"

namespace makima::server_detail {
namespace {

net::request request(const std::string& target, const std::string& key = {}) {
  net::request r;
  r.method = "GET";
  r.target = target;
  if (!key.empty())
    r.headers["authorization"] = "Bearer " + key;
  return r;
}

authenticator keys() {
  return authenticator{key_set{{"user-key", "second-user-key"}},
                       key_set{{"daemon-key"}}, false};
}

std::string error_code_of(const net::response& res) {
  return nlohmann::json::parse(res.body)["error"]["code"].get<std::string>();
}

TEST(server_auth, key_set_matches_exactly_its_keys) {
  key_set ks{{"alpha", "beta"}};
  EXPECT_TRUE(ks.matches("alpha"));
  EXPECT_TRUE(ks.matches("beta"));
  EXPECT_FALSE(ks.matches("alph"));
  EXPECT_FALSE(ks.matches("alpha "));
  EXPECT_FALSE(ks.matches(""));
  EXPECT_FALSE(key_set{std::vector<std::string>{}}.matches(""));
}

TEST(server_auth, each_key_opens_its_own_routes) {
  auto auth = keys();
  using v = authenticator;
  EXPECT_EQ(auth.check(request("/api/v1/tasks", "user-key"), access::user),
            v::ok);
  EXPECT_EQ(
      auth.check(request("/api/v1/tasks", "second-user-key"), access::user),
      v::ok);
  EXPECT_EQ(auth.check(request("/ws/daemon", "daemon-key"), access::daemon),
            v::ok);
  // The other kind of key is known but not allowed here: 403.
  EXPECT_EQ(auth.check(request("/api/v1/tasks", "daemon-key"), access::user),
            v::forbidden);
  EXPECT_EQ(auth.check(request("/ws/daemon", "user-key"), access::daemon),
            v::forbidden);
  // No key, an unknown key, another scheme: 401.
  EXPECT_EQ(auth.check(request("/api/v1/tasks"), access::user),
            v::unauthorized);
  EXPECT_EQ(auth.check(request("/api/v1/tasks", "nope"), access::user),
            v::unauthorized);
  auto basic = request("/api/v1/tasks");
  basic.headers["authorization"] = "Basic user-key";
  EXPECT_EQ(auth.check(basic, access::user), v::unauthorized);
  // The scheme is case-insensitive.
  auto lower = request("/api/v1/tasks");
  lower.headers["authorization"] = "bearer user-key";
  EXPECT_EQ(auth.check(lower, access::user), v::ok);
}

TEST(server_auth, the_principal_names_the_key_without_its_secret) {
  auto auth = keys();
  std::string who = "preset by the client";
  ASSERT_EQ(auth.check(request("/api/v1/tasks", "second-user-key"),
                       access::user, &who),
            authenticator::ok);
  EXPECT_EQ(who, "user:1");
  ASSERT_EQ(
      auth.check(request("/api/v1/tasks", "user-key"), access::user, &who),
      authenticator::ok);
  EXPECT_EQ(who, "user:0");
  ASSERT_EQ(
      auth.check(request("/ws/daemon", "daemon-key"), access::daemon, &who),
      authenticator::ok);
  EXPECT_EQ(who, "daemon:0");
  EXPECT_EQ(key_set({"a", "b", "c"}).find("c"), std::optional<size_t>{2});
  EXPECT_EQ(key_set({"a", "b", "c"}).find("d"), std::nullopt);
  // admit() sets it only for a passed request, and clears what was there.
  shared_counters counters;
  std::string p = "stale";
  EXPECT_FALSE(admit(auth, counters, request("/api/v1/tasks", "user-key"), &p));
  EXPECT_EQ(p, "user:0");
  p = "stale";
  EXPECT_TRUE(admit(auth, counters, request("/api/v1/tasks", "wrong"), &p));
  EXPECT_EQ(p, "");
  p = "stale";
  EXPECT_FALSE(admit(auth, counters, request("/healthz"), &p));
  EXPECT_EQ(p, "");
}

TEST(server_auth, open_routes_and_no_auth_need_no_key) {
  auto auth = keys();
  EXPECT_EQ(auth.check(request("/healthz"), access::open), authenticator::ok);
  auth.no_auth = true;
  EXPECT_EQ(auth.check(request("/api/v1/tasks"), access::user),
            authenticator::ok);
  EXPECT_EQ(auth.check(request("/ws/daemon"), access::daemon),
            authenticator::ok);
}

TEST(server_auth, two_authorization_headers_are_refused_everywhere) {
  auto auth = keys();
  auth.no_auth = true;
  auto r = request("/healthz", "user-key");
  r.repeated_headers = {"authorization"};
  EXPECT_EQ(auth.check(r, access::open), authenticator::duplicate);
}

TEST(server_auth, refusals_name_their_reason) {
  auto dup = auth_response(authenticator::duplicate);
  EXPECT_EQ(dup.status, 400u);
  EXPECT_EQ(error_code_of(dup), "duplicate_authorization");
  EXPECT_EQ(dup.headers.count("WWW-Authenticate"), 0u);
  auto unauthorized = auth_response(authenticator::unauthorized);
  EXPECT_EQ(unauthorized.status, 401u);
  EXPECT_EQ(error_code_of(unauthorized), "unauthorized");
  EXPECT_EQ(unauthorized.headers["WWW-Authenticate"], "Bearer");
  auto forbidden = auth_response(authenticator::forbidden);
  EXPECT_EQ(forbidden.status, 403u);
  EXPECT_EQ(error_code_of(forbidden), "forbidden");
  EXPECT_EQ(forbidden.headers["WWW-Authenticate"], "Bearer");
}

TEST(server_auth, admit_counts_what_it_refuses) {
  auto auth = keys();
  shared_counters counters;
  EXPECT_FALSE(admit(auth, counters, request("/api/v1/tasks", "user-key")));
  EXPECT_FALSE(admit(auth, counters, request("/healthz")));
  auto missing = admit(auth, counters, request("/api/v1/tasks"));
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 401u);
  auto wrong = admit(auth, counters, request("/ws/daemon", "user-key"));
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 403u);
  auto bad = admit(auth, counters, request("/api//v1/tasks", "user-key"));
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400u);
  EXPECT_EQ(error_code_of(*bad), "bad_target");
  EXPECT_EQ(counters.auth_rejected, 2u);
  EXPECT_EQ(counters.bad_target, 1u);
  EXPECT_EQ(counters.http_codes[401], 1u);
  EXPECT_EQ(counters.http_codes[403], 1u);
  EXPECT_EQ(counters.http_codes[400], 1u);
  EXPECT_EQ(counters.http_codes.count(200), 0u);
}

} // namespace
} // namespace makima::server_detail
