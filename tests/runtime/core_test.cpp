// Core helpers: task ids (sortable, unique, validated), redaction of
// credentials in URLs, and the error descriptions users see.
#include <gtest/gtest.h>

#include <set>
#include <thread>

#include <caf/sec.hpp>

#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"

using namespace makima;

TEST(ids, generated_ids_are_valid_unique_and_sort_by_time) {
  std::set<std::string> seen;
  std::string previous;
  for (int i = 0; i < 2000; ++i) {
    auto id = make_task_id();
    EXPECT_EQ(id.size(), 26u);
    EXPECT_FALSE(validate_task_id(id)) << id;
    EXPECT_TRUE(seen.insert(id).second) << "duplicate id " << id;
    if (i % 500 == 0) {
      // Ids made in a later millisecond sort after earlier ones.
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      auto later = make_task_id();
      EXPECT_LT(id, later);
    }
  }
}

TEST(ids, user_ids_are_validated) {
  for (std::string good :
       {std::string{"a"}, std::string{"fix-1"}, std::string{"A.b_c-9"},
        std::string(64, 'x')})
    EXPECT_FALSE(validate_task_id(good)) << good;
  for (auto bad : {"", "a/b", "..", "a..b", ".hidden", "-x", "a b", "x.lock",
                   "é", "a\nb"}) {
    auto err = validate_task_id(bad);
    ASSERT_TRUE(err) << bad;
    EXPECT_EQ(code_of(err), ec::invalid_argument);
    EXPECT_NE(describe(err).find("invalid task id"), std::string::npos);
  }
  EXPECT_TRUE(validate_task_id(std::string(65, 'x')));
}

TEST(log, redact_removes_credentials_from_urls) {
  EXPECT_EQ(log::redact("https://user:token@github.com/o/r.git"),
            "https://***@github.com/o/r.git");
  EXPECT_EQ(log::redact("https://token@host/x@y"), "https://***@host/x@y");
  EXPECT_EQ(log::redact("https://github.com/o/r.git"),
            "https://github.com/o/r.git");
  EXPECT_EQ(log::redact("/srv/git/repo"), "/srv/git/repo");
  EXPECT_EQ(log::redact("git@github.com:o/r.git"), "git@github.com:o/r.git");
}

TEST(error, describe_gives_the_message_and_code_of_gives_the_code) {
  auto err = make_error(ec::repo_not_found, "repository not found: /x");
  EXPECT_EQ(code_of(err), ec::repo_not_found);
  EXPECT_EQ(describe(err), "repository not found: /x");
  EXPECT_EQ(code_of(caf::error{}), ec::none);
  EXPECT_STREQ(to_string(ec::store_full), "store_full");
  auto foreign = caf::make_error(caf::sec::unexpected_message);
  EXPECT_EQ(code_of(foreign), ec::unspecified);
  EXPECT_NE(describe(foreign).find("internal error"), std::string::npos);
}

TEST(time, format_time_is_rfc3339_utc) {
  EXPECT_EQ(format_time(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_time(1700000000123), "2023-11-14T22:13:20.123Z");
}
