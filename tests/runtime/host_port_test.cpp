// net::parse_host_port: the one "HOST:PORT" parser of --listen and
// --health-listen (IPv6 in brackets).
#include "runtime/net/net.hpp"

#include <gtest/gtest.h>

using makima::net::parse_host_port;

TEST(host_port, parses_names_v4_and_bracketed_v6) {
  struct ok_case {
    std::string text, host;
    uint16_t port;
  };
  for (auto& c :
       std::vector<ok_case>{{"127.0.0.1:0", "127.0.0.1", 0},
                            {"localhost:7420", "localhost", 7420},
                            {"0.0.0.0:65535", "0.0.0.0", 65535},
                            {"[::1]:8080", "::1", 8080},
                            {"[::]:0", "::", 0},
                            {"[fe80::1%eth0]:9", "fe80::1%eth0", 9},
                            {"my-host.example:80", "my-host.example", 80}}) {
    auto r = parse_host_port(c.text);
    ASSERT_TRUE(r) << c.text;
    EXPECT_EQ(r->host, c.host) << c.text;
    EXPECT_EQ(r->port, c.port) << c.text;
  }
}

TEST(host_port, refuses_what_cannot_be_split_unambiguously) {
  for (std::string bad :
       {"", ":", "7420", ":7420", "host:", "host:65536", "host:99999999",
        "host:-1", "host:+1", "host: 1", "host:1x", "::1:8080", "[::1]",
        "[::1]8080", "[::1:8080", "[]:80", "a:b:80"})
    EXPECT_FALSE(parse_host_port(bad)) << "'" << bad << "'";
}
