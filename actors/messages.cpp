// JSON forms of the message types and the exit-status rule.
#include "actors/messages.hpp"
#include "actors/json_codec.hpp"

#include <caf/actor_system_config.hpp>
#include <nlohmann/json.hpp>

#include "runtime/error.hpp"

namespace makima {

namespace {

constexpr std::pair<task_state, const char*> state_names[] = {
    {task_state::preparing, "preparing"},
    {task_state::running, "running"},
    {task_state::publishing, "publishing"},
    {task_state::succeeded, "succeeded"},
    {task_state::failed, "failed"},
    {task_state::cancelled, "cancelled"},
    {task_state::timed_out, "timed_out"},
    {task_state::interrupted, "interrupted"},
    {task_state::queued, "queued"},
    {task_state::migrating, "migrating"},
    {task_state::restore_failed, "restore_failed"},
    {task_state::handed_off, "handed_off"},
};

} // namespace

const char* to_string(task_state s) {
  for (auto& [st, name] : state_names)
    if (st == s)
      return name;
  return "unknown";
}

bool from_string(const std::string& name, task_state& out) {
  for (auto& [st, n] : state_names)
    if (name == n) {
      out = st;
      return true;
    }
  return false;
}

bool is_terminal(task_state s) {
  switch (s) {
  case task_state::succeeded:
  case task_state::failed:
  case task_state::cancelled:
  case task_state::timed_out:
  case task_state::interrupted:
  case task_state::migrating:
  case task_state::restore_failed:
  case task_state::handed_off:
    return true;
  default:
    return false;
  }
}

nlohmann::json record_value(const task_record& x) {
  nlohmann::json j;
  j["id"] = x.spec.id;
  j["state"] = to_string(x.state);
  j["attempt"] = x.attempt;
  j["exit_code"] =
      x.exit_code < 0 ? nlohmann::json() : nlohmann::json(x.exit_code);
  j["signal"] = x.signal;
  j["branch"] = x.branch.empty() ? nlohmann::json() : nlohmann::json(x.branch);
  j["base_commit"] =
      x.base_commit.empty() ? nlohmann::json() : nlohmann::json(x.base_commit);
  j["commit"] = x.commit.empty() ? nlohmann::json() : nlohmann::json(x.commit);
  j["pushed"] = x.pushed;
  j["worktree"] = x.worktree;
  j["state_dir"] = x.state_dir;
  j["error_code"] =
      x.error_code.empty() ? nlohmann::json() : nlohmann::json(x.error_code);
  j["error"] = x.error.empty() ? nlohmann::json() : nlohmann::json(x.error);
  j["next_seq"] = x.next_seq;
  j["created_at"] = x.spec.created_at;
  j["updated_at"] = x.updated_at;
  j["started_at"] = x.started_at;
  j["finished_at"] = x.finished_at;
  j["spec"] = {{"argv", x.spec.argv},       {"repo", x.spec.repo},
               {"ref", x.spec.ref},         {"env", x.spec.env},
               {"timeout", x.spec.timeout}, {"grace", x.spec.grace},
               {"commit", x.spec.commit},   {"push_url", x.spec.push_url}};
  if (!x.spec.selector.empty())
    j["spec"]["selector"] = x.spec.selector;
  if (x.spec.max_attempts != 0)
    j["spec"]["max_attempts"] = x.spec.max_attempts;
  if (!x.spec.resume_command.empty())
    j["spec"]["resume_command"] = x.spec.resume_command;
  if (!x.checkpoint.empty())
    j["checkpoint"] = x.checkpoint;
  if (!x.resume_from.empty())
    j["resume_from"] = x.resume_from;
  return j;
}

std::string to_json(const task_record& x) {
  // Invalid UTF-8 in argv/env must not make serialization throw.
  return record_value(x).dump(-1, ' ', false,
                              nlohmann::json::error_handler_t::replace);
}

std::optional<task_record> record_from_json(const std::string& text) {
  return record_from_value(nlohmann::json::parse(text, nullptr, false));
}

std::optional<task_record> record_from_value(const nlohmann::json& j) {
  if (j.is_discarded() || !j.is_object())
    return std::nullopt;
  try {
    task_record x;
    auto str = [&](const char* key) {
      auto i = j.find(key);
      return i == j.end() || i->is_null() ? std::string{}
                                          : i->get<std::string>();
    };
    x.spec.id = j.at("id").get<std::string>();
    if (!from_string(j.at("state").get<std::string>(), x.state))
      return std::nullopt;
    x.attempt = j.at("attempt").get<uint32_t>();
    x.exit_code =
        j.at("exit_code").is_null() ? -1 : j.at("exit_code").get<int>();
    x.signal = j.value("signal", 0);
    x.branch = str("branch");
    x.base_commit = str("base_commit");
    x.commit = str("commit");
    x.pushed = j.value("pushed", false);
    x.worktree = str("worktree");
    x.state_dir = str("state_dir");
    x.error_code = str("error_code");
    x.error = str("error");
    x.next_seq = j.value("next_seq", uint64_t{0});
    x.spec.created_at = j.value("created_at", int64_t{0});
    x.updated_at = j.value("updated_at", int64_t{0});
    x.started_at = j.value("started_at", int64_t{0});
    x.finished_at = j.value("finished_at", int64_t{0});
    auto& s = j.at("spec");
    x.spec.argv = s.at("argv").get<std::vector<std::string>>();
    x.spec.repo = s.value("repo", "");
    x.spec.ref = s.value("ref", "");
    x.spec.env = s.value("env", std::vector<std::string>{});
    x.spec.timeout = s.value("timeout", 0.0);
    x.spec.grace = s.value("grace", 10.0);
    x.spec.commit = s.value("commit", false);
    x.spec.push_url = s.value("push_url", "");
    x.spec.selector = s.value("selector", std::map<std::string, std::string>{});
    x.spec.max_attempts = s.value("max_attempts", uint32_t{0});
    x.spec.resume_command =
        s.value("resume_command", std::vector<std::string>{});
    x.checkpoint = str("checkpoint");
    x.resume_from = str("resume_from");
    return x;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

nlohmann::json change_value(const state_change& x) {
  return nlohmann::json{{"attempt", x.attempt},
                        {"state", to_string(x.state)},
                        {"at", x.at},
                        {"detail", x.detail}};
}

std::string to_json(const state_change& x) {
  return change_value(x).dump(-1, ' ', false,
                              nlohmann::json::error_handler_t::replace);
}

std::optional<state_change> state_change_from_json(const std::string& text) {
  return change_from_value(nlohmann::json::parse(text, nullptr, false));
}

std::optional<state_change> change_from_value(const nlohmann::json& j) {
  if (j.is_discarded() || !j.is_object())
    return std::nullopt;
  try {
    state_change x;
    x.attempt = j.at("attempt").get<uint32_t>();
    if (!from_string(j.at("state").get<std::string>(), x.state))
      return std::nullopt;
    x.at = j.at("at").get<int64_t>();
    x.detail = j.value("detail", "");
    return x;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

int exit_status_of(const task_record& x) {
  switch (x.state) {
  case task_state::succeeded:
    return 0;
  case task_state::timed_out:
    return 124;
  case task_state::cancelled:
    return 130;
  case task_state::failed: {
    if (x.error_code == to_string(ec::command_not_found))
      return 127;
    if (x.error_code == to_string(ec::command_not_executable))
      return 126;
    if (!x.error_code.empty())
      return 125;
    if (x.exit_code > 0)
      return x.exit_code;
    return 125;
  }
  default:
    return 125;
  }
}

void add_message_types(caf::actor_system_config& cfg) {
  cfg.add_message_type<task_spec>("makima::task_spec");
  cfg.add_message_type<task_record>("makima::task_record");
  cfg.add_message_type<std::vector<task_record>>(
      "std::vector<makima::task_record>");
  cfg.add_message_type<output_chunk>("makima::output_chunk");
  cfg.add_message_type<task_progress>("makima::task_progress");
  cfg.add_message_type<std::vector<output_chunk>>(
      "std::vector<makima::output_chunk>");
  cfg.add_message_type<state_change>("makima::state_change");
  cfg.add_message_type<std::vector<state_change>>(
      "std::vector<makima::state_change>");
  cfg.add_message_type<worktree>("makima::worktree");
  cfg.add_message_type<outbox_entry>("makima::outbox_entry");
  cfg.add_message_type<std::vector<outbox_entry>>(
      "std::vector<makima::outbox_entry>");
  cfg.add_message_type<outbox_attempt>("makima::outbox_attempt");
  cfg.add_message_type<std::vector<outbox_attempt>>(
      "std::vector<makima::outbox_attempt>");
  cfg.add_message_type<outbox_contents>("makima::outbox_contents");
  cfg.add_message_type<attempt_id>("makima::attempt_id");
  cfg.add_message_type<outbox_write>("makima::outbox_write");
  cfg.add_message_type<outbox_ack>("makima::outbox_ack");
  cfg.add_message_type<prepare_request>("makima::prepare_request");
  cfg.add_message_type<checkpoint_report>("makima::checkpoint_report");
  cfg.add_message_type<restore_report>("makima::restore_report");
}

std::string to_string(const attempt_id& x) {
  return x.task + "#" + std::to_string(x.attempt);
}

} // namespace makima
