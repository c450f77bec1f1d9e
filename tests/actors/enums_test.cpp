// Consistency of makima's stable enums (in the spirit of CAF's
// add_enum_consistency_check): every `ec` and every `task_state` keeps its
// pinned number and its pinned name, names are unique and non-empty, every
// task_state name parses back to its value, and no other value of the
// underlying type has a name, so a value added without a name (or to the
// enum but not to this list) fails here. Numbers and names are stored
// (task records, `error_code`) and printed: they never change.
#include <cstdint>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "actors/messages.hpp"
#include "runtime/error.hpp"

namespace makima {
namespace {

/// Every error code with its pinned number and name.
const std::vector<std::tuple<ec, int, std::string>> all_codes = {
    {ec::none, 0, "none"},
    {ec::unspecified, 1, "unspecified"},
    {ec::invalid_argument, 2, "invalid_argument"},
    {ec::invalid_config, 3, "invalid_config"},
    {ec::task_exists, 4, "task_exists"},
    {ec::task_not_found, 5, "task_not_found"},
    {ec::bad_state, 6, "bad_state"},
    {ec::cancelled, 7, "cancelled"},
    {ec::repo_not_found, 10, "repo_not_found"},
    {ec::ref_not_found, 11, "ref_not_found"},
    {ec::git_error, 12, "git_error"},
    {ec::push_rejected, 13, "push_rejected"},
    {ec::worktree_missing, 14, "worktree_missing"},
    {ec::store_error, 20, "store_error"},
    {ec::store_corrupt, 21, "store_corrupt"},
    {ec::store_locked, 22, "store_locked"},
    {ec::store_full, 23, "store_full"},
    {ec::io_error, 30, "io_error"},
    {ec::command_not_found, 40, "command_not_found"},
    {ec::command_not_executable, 41, "command_not_executable"},
    {ec::spawn_failed, 42, "spawn_failed"},
    {ec::net_error, 50, "net_error"},
    {ec::net_timeout, 51, "net_timeout"},
    {ec::protocol_error, 52, "protocol_error"},
    {ec::object_store_error, 60, "object_store_error"},
    {ec::object_store_unreachable, 61, "object_store_unreachable"},
    {ec::object_store_denied, 62, "object_store_denied"},
    {ec::object_not_found, 63, "object_not_found"},
    {ec::checkpoint_not_found, 64, "checkpoint_not_found"},
    {ec::checkpoint_corrupt, 65, "checkpoint_corrupt"},
    {ec::checkpoint_version, 66, "checkpoint_version"},
    {ec::checkpoint_unsigned, 67, "checkpoint_unsigned"},
    {ec::checkpoint_bad_signature, 68, "checkpoint_bad_signature"},
    {ec::checkpoint_limit, 69, "checkpoint_limit"},
    {ec::checkpoint_unsafe_path, 70, "checkpoint_unsafe_path"},
};

/// Every task state with its pinned number and name.
const std::vector<std::tuple<task_state, int, std::string>> all_states = {
    {task_state::preparing, 1, "preparing"},
    {task_state::running, 2, "running"},
    {task_state::publishing, 3, "publishing"},
    {task_state::succeeded, 4, "succeeded"},
    {task_state::failed, 5, "failed"},
    {task_state::cancelled, 6, "cancelled"},
    {task_state::timed_out, 7, "timed_out"},
    {task_state::interrupted, 8, "interrupted"},
    {task_state::queued, 9, "queued"},
    {task_state::migrating, 10, "migrating"},
    {task_state::restore_failed, 11, "restore_failed"},
    {task_state::handed_off, 12, "handed_off"},
};

TEST(enums, every_ec_keeps_its_number_and_round_trips_through_its_unique_name) {
  std::set<std::string> names;
  for (const auto& [code, number, name] : all_codes) {
    EXPECT_EQ(static_cast<int>(code), number) << name;
    std::string got = to_string(code);
    EXPECT_EQ(got, name);
    EXPECT_FALSE(got.empty()) << number;
    EXPECT_NE(got, "unknown") << number;
    EXPECT_TRUE(names.insert(got).second) << "duplicate name " << got;
    ec back = ec::unspecified;
    ASSERT_TRUE(from_string(got, back)) << got;
    EXPECT_EQ(back, code) << got;
  }
  ec untouched = ec::io_error;
  for (std::string bad : {"", "unknown", "Repo_not_found", "repo_not_found "})
    EXPECT_FALSE(from_string(bad, untouched)) << bad;
  EXPECT_EQ(untouched, ec::io_error);
}

TEST(enums, no_other_ec_value_has_a_name) {
  std::set<int> pinned;
  for (const auto& entry : all_codes)
    pinned.insert(std::get<1>(entry));
  for (int i = 0; i <= UINT8_MAX; ++i)
    if (pinned.count(i) == 0)
      EXPECT_STREQ(to_string(static_cast<ec>(i)), "unknown") << i;
}

TEST(enums, every_task_state_round_trips_through_its_unique_name) {
  std::set<std::string> names;
  for (const auto& [state, number, name] : all_states) {
    EXPECT_EQ(static_cast<int>(state), number) << name;
    std::string got = to_string(state);
    EXPECT_EQ(got, name);
    EXPECT_FALSE(got.empty()) << number;
    EXPECT_NE(got, "unknown") << number;
    EXPECT_TRUE(names.insert(got).second) << "duplicate name " << got;
    task_state parsed = task_state::preparing;
    ASSERT_TRUE(from_string(got, parsed)) << got;
    EXPECT_EQ(parsed, state) << got;
  }
}

TEST(enums, no_other_task_state_value_has_a_name_and_unknown_names_fail) {
  std::set<int> pinned;
  for (const auto& entry : all_states)
    pinned.insert(std::get<1>(entry));
  for (int i = 0; i <= UINT8_MAX; ++i)
    if (pinned.count(i) == 0)
      EXPECT_STREQ(to_string(static_cast<task_state>(i)), "unknown") << i;
  task_state out = task_state::queued;
  for (std::string bad : {"", "unknown", "Running", "running ", "done"})
    EXPECT_FALSE(from_string(bad, out)) << '"' << bad << '"';
}

} // namespace
} // namespace makima
