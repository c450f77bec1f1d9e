// The HTTP API's codec (actors/api.hpp): what `task submit` encodes is what
// the SERVER decodes, defaults stay defaults, bad bodies get the message the
// API answers with, and error bodies never throw on invalid UTF-8.
#include "actors/api.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/error.hpp"

using namespace makima;

TEST(api, submit_round_trips_every_field) {
  task_spec spec;
  spec.id = "t-1";
  spec.argv = {"sh", "-c", "echo \"hi\"; exit 3"};
  spec.repo = "https://git.example/r.git";
  spec.ref = "main";
  spec.env = {"A=1", "B="};
  spec.timeout = 12.5;
  spec.grace = 0;
  spec.commit = true;
  spec.push_url = "file:///srv/push.git";
  spec.selector = {{"pool", "k8s"}, {"gpu", "1"}};
  spec.max_attempts = 7;
  auto back = api::decode_submit(api::encode_submit(spec));
  ASSERT_TRUE(back) << describe(back.error());
  EXPECT_EQ(back->id, spec.id);
  EXPECT_EQ(back->argv, spec.argv);
  EXPECT_EQ(back->repo, spec.repo);
  EXPECT_EQ(back->ref, spec.ref);
  EXPECT_EQ(back->env, spec.env);
  EXPECT_EQ(back->timeout, 12.5);
  EXPECT_EQ(back->grace, 0);
  EXPECT_TRUE(back->commit);
  EXPECT_EQ(back->push_url, spec.push_url);
  EXPECT_EQ(back->selector, spec.selector);
  EXPECT_EQ(back->max_attempts, 7u);
}

TEST(api, defaults_are_omitted_and_stay_defaults) {
  task_spec spec;
  spec.argv = {"true"};
  auto body = api::encode_submit(spec);
  EXPECT_EQ(body, R"({"argv":["true"]})");
  auto back = api::decode_submit(body);
  ASSERT_TRUE(back);
  task_spec defaults;
  EXPECT_EQ(back->timeout, defaults.timeout);
  EXPECT_EQ(back->grace, defaults.grace);
  EXPECT_EQ(back->max_attempts, 0u);
  EXPECT_TRUE(back->id.empty());
}

TEST(api, server_defaults_fill_what_a_submit_omits_and_named_fields_are_sent) {
  task_spec server;
  server.timeout = 600;
  server.grace = 3;
  auto back = api::decode_submit(R"({"argv":["true"]})", server);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->timeout, 600);
  EXPECT_EQ(back->grace, 3);
  back = api::decode_submit(R"({"argv":["true"],"timeout":0,"grace":10})",
                            server);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->timeout, 0);
  EXPECT_EQ(back->grace, 10);
  // A user's explicit `--timeout 0` equals task_spec's default but must
  // reach the server, or its default would replace it.
  task_spec spec;
  spec.argv = {"true"};
  EXPECT_EQ(api::encode_submit(spec, {true, false}),
            R"({"argv":["true"],"timeout":0.0})");
  EXPECT_EQ(api::encode_submit(spec, {false, true}),
            R"({"argv":["true"],"grace":10.0})");
}

TEST(api, bad_submit_bodies_are_invalid_arguments_with_the_reason) {
  struct bad_case {
    std::string body, reason;
  };
  for (auto& c : std::vector<bad_case>{
           {"", "JSON object"},
           {"[1]", "JSON object"},
           {R"({"argv":[]})", "argv"},
           {R"({"argv":["a\u0000b"]})", "NUL"},
           {R"({"argv":["x"],"env":["=1"]})", "empty name"},
           {R"({"argv":["x"],"env":["NOEQ"]})", "KEY=VALUE"},
           {R"({"argv":["x"],"timeout":1e308})", "timeout"},
           {R"({"argv":["x"],"grace":-1})", "grace"},
           {R"({"argv":["x"],"max_attempts":0})", "max_attempts"},
           {R"({"argv":["x"],"commit":true})", "need a repo"},
           {R"({"argv":["x"],"selector":{"a":1}})", "selector"}}) {
    auto r = api::decode_submit(c.body);
    ASSERT_FALSE(r) << c.body;
    EXPECT_EQ(code_of(r.error()), ec::invalid_argument) << c.body;
    EXPECT_NE(describe(r.error()).find(c.reason), std::string::npos)
        << c.body << ": " << describe(r.error());
  }
}

TEST(api, error_body_has_code_and_message_and_survives_bad_utf8) {
  auto j = nlohmann::json::parse(api::error_body("not_found", "no task t"));
  EXPECT_EQ(j["error"]["code"], "not_found");
  EXPECT_EQ(j["error"]["message"], "no task t");
  auto bad = api::error_body("bad_target", std::string{"\xff\xfe"});
  EXPECT_NO_THROW((void)nlohmann::json::parse(bad));
  auto e = api::decode_error(api::error_body("store_full", "disk is full"));
  EXPECT_EQ(e.code, "store_full");
  EXPECT_EQ(e.message, "disk is full");
  for (std::string other : {"", "<html>502</html>", R"({"error":"x"})",
                            R"({"error":{"code":1}})"}) {
    auto d = api::decode_error(other);
    EXPECT_TRUE(d.code.empty()) << other;
    EXPECT_TRUE(d.message.empty()) << other;
  }
}

TEST(api, output_chunks_and_pages_round_trip_any_bytes) {
  std::string bytes;
  for (int i = 0; i < 256; ++i)
    bytes.push_back(static_cast<char>(i));
  output_chunk c{41, 2, bytes};
  auto back = api::decode_chunk(api::encode_chunk(c));
  ASSERT_TRUE(back) << describe(back.error());
  EXPECT_EQ(back->seq, 41u);
  EXPECT_EQ(back->stream, 2);
  EXPECT_TRUE(back->bytes == bytes);
  api::output_page page{{c, output_chunk{42, 1, "x"}}, 43, true};
  auto p = api::decode_page(api::encode_page(page));
  ASSERT_TRUE(p) << describe(p.error());
  ASSERT_EQ(p->chunks.size(), 2u);
  EXPECT_EQ(p->chunks[1].bytes, "x");
  EXPECT_EQ(p->next, 43u);
  EXPECT_TRUE(p->done);
}

TEST(api, malformed_chunks_and_pages_are_protocol_errors) {
  for (std::string bad :
       {"", "[]", R"({"data":"eA=="})", R"({"seq":-1,"data":"eA=="})",
        R"({"seq":1})", R"({"seq":1,"data":"%%%"})",
        R"({"seq":1,"data":"eA==","stream":3})"}) {
    auto r = api::decode_chunk(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(code_of(r.error()), ec::protocol_error) << bad;
  }
  for (std::string bad :
       {"", "{}", R"({"chunks":{}})", R"({"chunks":[{"seq":1}]})"}) {
    auto r = api::decode_page(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(code_of(r.error()), ec::protocol_error) << bad;
  }
}
