// parse_target and access_for (actors/server_target.hpp): the one canonical
// reading of a request target that both the key check and the routing use.
// Every spelling that once reached a route without its key (issue 7) is
// refused here, and what is accepted decodes to exactly one route.
#include "actors/server_target.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace makima::server_detail {
namespace {

std::vector<std::string> parts(const std::string& raw) {
  auto t = parse_target(raw);
  EXPECT_TRUE(t) << raw << ": " << t.error;
  return t.value.parts;
}

void refused(const std::string& raw) {
  auto t = parse_target(raw);
  EXPECT_FALSE(t) << "accepted: " << raw;
  EXPECT_TRUE(t.value.parts.empty()) << raw;
  EXPECT_FALSE(t.error.empty()) << raw;
  // The message is a fixed sentence: it never quotes the request.
  if (raw.size() > 3)
    EXPECT_EQ(t.error.find(raw), std::string::npos) << raw;
}

using v = std::vector<std::string>;

TEST(server_target, canonical_paths_decode_to_their_segments) {
  EXPECT_EQ(parts("/api/v1/tasks"), (v{"api", "v1", "tasks"}));
  EXPECT_EQ(parts("/api/v1/tasks?state=queued"), (v{"api", "v1", "tasks"}));
  EXPECT_EQ(parts("/"), v{});
  EXPECT_EQ(parts("/healthz"), v{"healthz"});
  // Reserved and non-ASCII bytes may be (and must be) percent-encoded.
  EXPECT_EQ(parts("/api/v1/tasks/a%20b"), (v{"api", "v1", "tasks", "a b"}));
  EXPECT_EQ(parts("/api/v1/tasks/%C3%A9"),
            (v{"api", "v1", "tasks", "\xC3\xA9"}));
  EXPECT_EQ(parts("/api/v1/tasks/%c3%a9"),
            (v{"api", "v1", "tasks", "\xC3\xA9"}));
  // '+' is a plus in a path (a space only in a query).
  EXPECT_EQ(parts("/api/v1/tasks/a+b"), (v{"api", "v1", "tasks", "a+b"}));
  EXPECT_EQ(parts("/a/.x/..y/..."), (v{"a", ".x", "..y", "..."}));
  EXPECT_EQ(parts("/a:b@c!$&'()*,;="), v{"a:b@c!$&'()*,;="});
}

TEST(server_target, the_bypass_spellings_of_issue_7_are_refused) {
  for (auto raw : {"//api/v1/tasks",
                   "/%61pi/v1/tasks",
                   "/./api/v1/tasks",
                   "/api/../api/v1/tasks",
                   "/api/v1//tasks",
                   "/api/v1/tasks/",
                   "/api/v1/tasks/.",
                   "/api/v1/tasks/..",
                   "/api/v1/./tasks",
                   "/%2e/api/v1/tasks",
                   "/%2E%2E/api/v1/tasks",
                   "/api%2Fv1/tasks",
                   "/api%2fv1/tasks",
                   "/api/v1/%74asks",
                   "/api/v1/task%73",
                   "/api/v1/tasks%2F",
                   "/api/v1/tasks%5Cx",
                   "/%7Eapi",
                   "/%5Fx",
                   "/%2Dx",
                   "/%30",
                   "/%41",
                   "/%7a",
                   "//",
                   "///",
                   "/healthz/",
                   "//healthz",
                   "/./healthz",
                   "/%68ealthz"})
    refused(raw);
}

TEST(server_target, malformed_escapes_and_raw_bytes_are_refused) {
  for (std::string raw : {"/api/v1/tasks/%",
                          "/api/v1/tasks/%F",
                          "/api/v1/tasks/%G0",
                          "/api/v1/tasks/%0G",
                          "/api/v1/tasks/%%41",
                          "/api/v1/tasks/%00",
                          "/api/v1/tasks/%0A",
                          "/api/v1/tasks/%7F",
                          "/api/v1/tasks/a b",
                          "/api/v1/tasks/a\"b",
                          "/api/v1/tasks/<x>",
                          "/api/v1/tasks/a\\b",
                          "/api/v1/tasks/a#b",
                          "/api/v1/tasks/a{b}",
                          "/api/v1/tasks/a|b",
                          "/api/v1/tasks/a^b",
                          "/api/v1/tasks/a`b",
                          "api/v1/tasks",
                          "*",
                          "http://h/api/v1/tasks",
                          ""})
    refused(raw);
  for (int b = 0; b < 256; ++b) {
    auto c = static_cast<char>(b);
    bool allowed =
        (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')
        || (b >= '0' && b <= '9')
        || std::string{"-._~!$&'()*+,;=:@"}.find(c) != std::string::npos
        // A '/' splits the segment, a '?' starts the query.
        || c == '/' || c == '?';
    auto raw = std::string{"/api/v1/tasks/x"} + c + "y";
    EXPECT_EQ(static_cast<bool>(parse_target(raw)), allowed) << "byte " << b;
  }
}

TEST(server_target, invalid_utf8_in_the_path_is_refused) {
  for (std::string raw :
       {"/api/v1/tasks/%FF", "/api/v1/tasks/%FF/cancel", "/%FF/cancel",
        "/api/v1/tasks/%C3", "/api/v1/tasks/%C0%AF", "/api/v1/tasks/%ED%A0%80",
        "/api/v1/tasks/%F4%90%80%80", "/api/v1/tasks/%E2%82",
        "/api/v1/tasks/\xFF", "/api/v1/tasks/\xC3\xA9"})
    refused(raw);
}

TEST(server_target, query_strings_decode_plus_and_escapes) {
  auto t = parse_target("/api/v1/tasks?state=a+b%2Bc&limit=5&flag&&x=%FF");
  ASSERT_TRUE(t) << t.error;
  EXPECT_EQ(t.value.query["state"], "a b+c");
  EXPECT_EQ(t.value.query["limit"], "5");
  EXPECT_EQ(t.value.query["flag"], "");
  // Bytes in a query value are carried (the handlers validate them; JSON
  // encoding replaces invalid UTF-8).
  EXPECT_EQ(t.value.query["x"], "\xFF");
  EXPECT_EQ(parse_target("/x?a=1&a=2").value.query["a"], "2");
  EXPECT_EQ(parse_target("/x?next=/a/b?c").value.query["next"], "/a/b?c");
  for (std::string raw :
       {"/x?a=%", "/x?a=%4", "/x?a=%ZZ", "/x?a=%00", "/x?a=b c", "/x?a=\xFF",
        "/x?a=\x01", "/x?a#b", "//x?a=1", "/x/../y?a=1"})
    refused(raw);
}

TEST(server_target, only_listed_routes_are_public) {
  auto of = [](const std::string& raw) {
    auto t = parse_target(raw);
    EXPECT_TRUE(t) << raw;
    return access_for(t.value);
  };
  EXPECT_EQ(of("/healthz"), access::open);
  EXPECT_EQ(of("/readyz"), access::open);
  EXPECT_EQ(of("/metrics"), access::open);
  EXPECT_EQ(of("/metrics?x=1"), access::open);
  EXPECT_EQ(of("/ws/daemon"), access::daemon);
  for (auto raw :
       {"/", "/api/v1/tasks", "/API/v1/tasks", "/Api/v1/tasks", "/HEALTHZ",
        "/healthz/x", "/x/healthz", "/metrics.txt", "/nothing", "/ws",
        "/ws/daemon/x", "/WS/daemon", "/api", "/api/v2/tasks",
        "/api/v1/daemons", "/api/v1/tasks/x/output"})
    EXPECT_EQ(of(raw), access::user) << raw;
}

} // namespace
} // namespace makima::server_detail
