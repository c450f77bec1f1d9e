// `makima task submit|cancel|wait --server URL` and the server side of
// `task list|show|logs` (with --server or MAKIMA_SERVER): a client of the
// HTTP API of docs/protocol.md §10 over the blocking net::http_request and
// net::http_stream (server-sent events for `logs -f` and `wait`).
#include "runtime/app/cli.hpp"
#include "runtime/process/io.hpp"
#include "runtime/process/signals.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "actors/api.hpp"
#include "actors/json_codec.hpp"
#include "actors/messages.hpp"
#include "actors/protocol.hpp"
#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"
#include "runtime/net/net.hpp"

namespace makima::app {

using json = nlohmann::json;

namespace {

/// The http(s) base URL of a server URL: ws(s)://HOST:PORT/ws/daemon maps
/// to http(s)://HOST:PORT; a path (behind a proxy) is kept. nullopt when it
/// is no http, https, ws or wss URL.
std::optional<std::string> base_of(const std::string& url) {
  auto u = net::parse_url(url);
  if (!u)
    return std::nullopt;
  bool ws = u->scheme == "ws" || u->scheme == "wss";
  auto scheme = u->scheme == "ws"    ? std::string{"http"}
                : u->scheme == "wss" ? std::string{"https"}
                                     : u->scheme;
  auto host =
      u->host.find(':') != std::string::npos ? "[" + u->host + "]" : u->host;
  auto path = u->target.substr(0, u->target.find('?'));
  const std::string daemon_path = "/ws/daemon";
  if (ws && path.size() >= daemon_path.size()
      && path.compare(path.size() - daemon_path.size(), daemon_path.size(),
                      daemon_path)
             == 0)
    path.resize(path.size() - daemon_path.size());
  while (!path.empty() && path.back() == '/')
    path.pop_back();
  return scheme + "://" + host + ":" + std::to_string(u->port) + path;
}

/// Percent-encodes `s` for a path segment or a query value.
std::string encode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

/// One output chunk written to stdout or stderr (while `writable`);
/// returns its seq.
uint64_t write_chunk(const output_chunk& c, bool& writable) {
  if (writable)
    writable = process::write_all(c.stream == 2 ? STDERR_FILENO : STDOUT_FILENO,
                                  c.bytes);
  return c.seq;
}

/// A task record sent by the server; leaves when it is malformed.
task_record parse_record(const std::string& text) {
  auto rec = record_from_json(text);
  if (!rec)
    fail(exit_internal, "the server sent a malformed task record");
  return std::move(*rec);
}

/// run_cli blocks SIGINT, SIGTERM and SIGHUP for the watcher of a local
/// task; a client command has nothing to clean up, so they end it at once
/// again (`task logs -f` / `wait` stopped with Ctrl-C).
void default_signals() {
  process::unblock_stop_signals();
}

/// Requests to one server, with its key and CA file. Every failure leaves
/// the command with the exit status of the issue: 125 when the server
/// cannot be reached, 2 when it refuses the key or does not know the task.
class api_client {
public:
  explicit api_client(server_target t) : t_(std::move(t)) {
    default_signals();
    opts_.ca_file = t_.ca_file;
    opts_.timeout = std::chrono::seconds(30);
    if (!t_.api_key.empty())
      opts_.headers.emplace_back("Authorization", "Bearer " + t_.api_key);
  }

  const std::string& base() const { return t_.base; }

  std::string url(const std::string& path) const { return t_.base + path; }

  const net::http_client_options& options() const { return opts_; }

  /// Sends a request and returns a response with a status < 400. `id`:
  /// the task the request is about (a 404 means there is no such task).
  net::response call(const std::string& method, const std::string& path,
                     std::string body = {}, const std::string& id = {}) {
    auto res = net::http_request(method, url(path), std::move(body), opts_);
    if (!res)
      unreachable(res.error());
    if (res->status >= 400)
      refused(*res, id);
    return std::move(*res);
  }

  /// Leaves after a transport failure.
  [[noreturn]] void unreachable(const caf::error& err) const {
    auto code = code_of(err);
    if (code == ec::invalid_config || code == ec::invalid_argument)
      fail(exit_usage, describe(err));
    fail(exit_internal,
         "cannot reach the server at " + t_.base + ": " + describe(err));
  }

  /// Leaves with the error of a response whose status is >= 400.
  [[noreturn]] void refused(const net::response& res,
                            const std::string& id) const {
    if (res.status == 401 || res.status == 403)
      fail(exit_usage, t_.api_key.empty()
                           ? "the server refused the request: it needs an "
                             "API key (--api-key or MAKIMA_API_KEY)"
                           : "the server refused the API key");
    auto [code, message] = makima::api::decode_error(res.body);
    if (res.status == 404 && !id.empty()
        && (code.empty() || code == "task_not_found" || code == "not_found"))
      fail(exit_usage, "no task " + id);
    if (message.empty())
      message = "the server answered " + std::to_string(res.status)
                + (code.empty() ? "" : " (" + code + ")");
    fail(res.status < 500 ? exit_usage : exit_internal, message);
  }

private:
  server_target t_;
  net::http_client_options opts_;
};

/// Pages GET /output until the task is done or nothing more is there yet
/// (the output so far of a running task).
void print_output(api_client& api, const std::string& id) {
  uint64_t from = 0;
  bool writable = true;
  for (;;) {
    auto res = api.call("GET",
                        "/api/v1/tasks/" + encode(id)
                            + "/output?from=" + std::to_string(from),
                        {}, id);
    auto page = makima::api::decode_page(res.body);
    if (!page)
      fail(exit_internal, "the server sent malformed output of task " + id
                              + " (" + describe(page.error()) + ")");
    for (auto& c : page->chunks)
      from = write_chunk(c, writable) + 1;
    from = std::max(from, page->next);
    if (page->done || page->chunks.empty() || !writable)
      return;
  }
}

/// Follows the task's event stream (§10, follow=1) from output seq `from`
/// until its `end` event and returns the task's exit status; writes the
/// output when `print`. Reconnects with Last-Event-ID when the stream
/// drops; gives up after ~30 s without getting through.
int follow(api_client& api, const std::string& id, uint64_t from, bool print) {
  std::string last_id;
  bool writable = print;
  bool connected_once = false;
  int failures = 0;
  for (;;) {
    auto opts = api.options();
    // The server sends a keep-alive comment every 15 s.
    opts.timeout = std::chrono::seconds(45);
    if (!last_id.empty())
      opts.headers.emplace_back("Last-Event-ID", last_id);
    net::response head;
    std::string error_body;
    std::optional<task_record> end;
    bool progressed = false;
    net::sse_parser parser;
    auto on_event = [&](const net::sse_event& e) {
      if (end)
        return;
      progressed = true;
      if (e.event == "output") {
        auto c = makima::api::decode_chunk(e.data);
        if (!c)
          fail(exit_internal, "the server sent a malformed output event ("
                                  + describe(c.error()) + ")");
        last_id = std::to_string(write_chunk(*c, writable));
      } else if (e.event == "end") {
        end = parse_record(e.data);
      }
    };
    auto err = net::http_stream(
        "GET",
        api.url("/api/v1/tasks/" + encode(id)
                + "/output?follow=1&from=" + std::to_string(from)),
        opts,
        [&](const net::response& r) {
          head = r;
          connected_once = true;
          return true;
        },
        [&](const std::string& bytes) {
          if (head.status != 200) {
            error_body += bytes;
            return error_body.size() < (1u << 20);
          }
          parser.feed(bytes, on_event);
          return !end;
        });
    if (end)
      return exit_status_of(*end);
    if (head.status >= 400) {
      head.body = std::move(error_body);
      api.refused(head, id);
    }
    if (err && !connected_once)
      api.unreachable(err);
    if (progressed)
      failures = 0;
    if (++failures > 8) {
      if (err)
        api.unreachable(err);
      fail(exit_internal,
           "the output stream of task " + id + " ended without its end event");
    }
    auto delay = std::min(5000, 125 << std::min(failures, 6));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay));
  }
}

// --- commands ---------------------------------------------------------------

struct submit_options {
  common_options common;
  server_flags server;
  task_flags task;
  std::vector<std::string> selector;
  /// 0 = the server's default (server.max_attempts).
  uint32_t max_attempts = 0;
  std::vector<std::string> resume_command;
};

int cmd_submit(submit_options& o) {
  auto& t = o.task;
  if (t.command.empty())
    fail(exit_usage, "submit: no command given (usage: makima task submit "
                     "--server URL [OPTIONS] -- COMMAND [ARGS...])");
  check_task_flags(t);
  task_spec spec;
  spec.argv = t.command;
  if (t.id_given)
    spec.id = t.id;
  spec.selector = selector_of(o.selector);
  if (!t.repo.empty())
    spec.repo = git::canonical_url(t.repo);
  spec.ref = t.ref;
  spec.env = t.env;
  if (t.timeout >= 0)
    spec.timeout = t.timeout;
  if (t.grace >= 0)
    spec.grace = t.grace;
  // --push implies --commit: pushing the unchanged base is never meant.
  spec.commit = t.commit || !t.push.empty();
  if (!t.push.empty())
    spec.push_url = git::canonical_url(t.push);
  spec.max_attempts = o.max_attempts;
  for (auto& a : o.resume_command)
    check_utf8(a, "--resume-command");
  spec.resume_command = o.resume_command;
  api_client api{*resolve_server(o.common, o.server, true)};
  auto res = api.call(
      "POST", "/api/v1/tasks",
      makima::api::encode_submit(spec, {t.timeout >= 0, t.grace >= 0}));
  auto rec = parse_record(res.body);
  std::printf("%s\n", rec.spec.id.c_str());
  return exit_ok;
}

int cmd_cancel(const common_options& common, const server_flags& flags,
               const std::string& id) {
  api_client api{*resolve_server(common, flags, true)};
  api.call("POST", "/api/v1/tasks/" + encode(id) + "/cancel", {}, id);
  std::fprintf(stderr, "makima: cancelling task %s\n", id.c_str());
  return exit_ok;
}

int cmd_wait(const common_options& common, const server_flags& flags,
             const std::string& id) {
  api_client api{*resolve_server(common, flags, true)};
  auto res = api.call("GET", "/api/v1/tasks/" + encode(id), {}, id);
  auto rec = parse_record(res.body);
  if (is_terminal(rec.state) && rec.state != task_state::interrupted)
    return exit_status_of(rec);
  // Only the end matters: skip the output there is so far.
  return follow(api, id, rec.next_seq, false);
}

} // namespace

void add_server_flags(CLI::App* cmd, server_flags& o) {
  cmd->add_option("--server", o.url,
                  "server URL, http[s]://HOST:PORT (or its ws[s]:// daemon "
                  "URL; default: $MAKIMA_SERVER, config server.url)");
  cmd->add_option("--api-key", o.api_key,
                  "user key sent as a bearer token (default: "
                  "$MAKIMA_API_KEY, config server.api_key)");
  cmd->add_option("--ca-file", o.ca_file,
                  "CA bundle to verify an https server (default: "
                  "$MAKIMA_CA_FILE, config server.ca_file, else the system's)");
}

std::map<std::string, std::string>
selector_of(const std::vector<std::string>& flags) {
  std::map<std::string, std::string> out;
  for (auto& kv : flags) {
    check_utf8(kv, "--selector");
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      fail(exit_usage, "--selector expects KEY=VALUE, got '" + kv + "'");
    out[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return out;
}

std::optional<server_target> resolve_server(const common_options& common,
                                            const server_flags& flags,
                                            bool required) {
  if (!required && flags.url.empty() && !common.data_dir.empty())
    return std::nullopt;
  auto cfg = resolve_config(common, [&](config& c) {
    if (!flags.url.empty())
      c.server_url = flags.url;
    if (!flags.api_key.empty())
      c.api_key = flags.api_key;
    if (!flags.ca_file.empty())
      c.ca_file = flags.ca_file;
  });
  if (cfg.server_url.empty()) {
    if (required)
      fail(exit_usage, "no server given: use --server URL or MAKIMA_SERVER");
    return std::nullopt;
  }
  auto base = base_of(cfg.server_url);
  if (!base)
    fail(exit_usage, "the server URL must be http[s]://HOST:PORT or "
                     "ws[s]://HOST:PORT/ws/daemon, got '"
                         + log::redact(cfg.server_url) + "'");
  return server_target{*base, cfg.api_key, cfg.ca_file.string()};
}

int remote_list(const server_target& target, bool json_out,
                std::optional<task_state> state) {
  api_client api{target};
  std::vector<task_record> records;
  std::string after;
  for (;;) {
    auto path = std::string{"/api/v1/tasks?limit=1000"};
    if (!after.empty())
      path += "&after=" + encode(after);
    auto res = api.call("GET", path);
    json page;
    try {
      page = json::parse(res.body);
    } catch (const std::exception&) {
      fail(exit_internal, "the server sent a malformed task list");
    }
    if (!page.is_object() || !page.contains("tasks")
        || !page["tasks"].is_array())
      fail(exit_internal, "the server sent a malformed task list");
    for (auto& t : page["tasks"]) {
      auto rec = record_from_value(t);
      if (!rec)
        fail(exit_internal, "the server sent a malformed task record");
      records.push_back(std::move(*rec));
    }
    auto next = page.value("next", json());
    if (!next.is_string() || next.get<std::string>().empty()
        || next.get<std::string>() == after)
      break;
    after = next.get<std::string>();
  }
  print_task_list(select_tasks(std::move(records), state), json_out);
  return exit_ok;
}

int remote_show(const server_target& target, const std::string& id,
                bool json_out) {
  api_client api{target};
  auto res =
      api.call("GET", "/api/v1/tasks/" + encode(id) + "?history=1", {}, id);
  // The history says why each lost attempt was lost.
  std::vector<state_change> history;
  auto j = json::parse(res.body, nullptr, false);
  if (j.is_object() && j.contains("history") && j["history"].is_array())
    for (auto& h : j["history"])
      if (auto sc = change_from_value(h))
        history.push_back(std::move(*sc));
  print_task(parse_record(res.body), &history, json_out);
  return exit_ok;
}

int remote_logs(const server_target& target, const std::string& id,
                bool follow_output) {
  api_client api{target};
  if (!follow_output) {
    print_output(api, id);
    return exit_ok;
  }
  return follow(api, id, 0, true);
}

int remote_checkpoint(const server_target& target, const std::string& id) {
  api_client api{target};
  // The daemon checkpoints, uploads and reports; the server answers then.
  auto res = api.call("POST", "/api/v1/tasks/" + encode(id) + "/checkpoint",
                      {}, id);
  auto j = json::parse(res.body, nullptr, false);
  if (!j.is_object() || !j.contains("ref") || !j["ref"].is_string())
    fail(exit_internal, "the server sent a malformed checkpoint answer");
  std::fprintf(stderr, "makima: checkpoint %s of task %s: %s uploaded\n",
               j["ref"].get<std::string>().c_str(), id.c_str(),
               format_bytes(j.value("bytes", uint64_t{0})).c_str());
  std::printf("%s\n", j["ref"].get<std::string>().c_str());
  return exit_ok;
}

std::string remote_pull(const server_target& target, const std::string& id) {
  api_client api{target};
  auto res = api.call("POST", "/api/v1/tasks/" + encode(id) + "/pull", {}, id);
  auto j = json::parse(res.body, nullptr, false);
  if (!j.is_object() || !j.contains("ref") || !j["ref"].is_string())
    fail(exit_internal, "the server sent a malformed pull answer");
  return j["ref"].get<std::string>();
}

std::string remote_push(const server_target& target, const task_spec& spec,
                        const std::string& ref, uint64_t next_seq) {
  api_client api{target};
  auto body = json::parse(makima::api::encode_submit(spec, {true, true}));
  body["resume_from"] = ref;
  body["next_seq"] = next_seq;
  auto res = api.call("POST", "/api/v1/tasks", body.dump(), spec.id);
  return parse_record(res.body).spec.id;
}

namespace {

struct migrate_options {
  common_options common;
  server_flags server;
  std::string id;
  std::vector<std::string> selector;
  bool wait = false;
};

// `task migrate`: the server checkpoints the task on its daemon, ends that
// attempt and re-queues it (on a daemon matching the new selector); with
// --wait, until its next attempt runs (or the task ended).
int cmd_migrate(migrate_options& o) {
  json body = json::object();
  if (!o.selector.empty())
    body["selector"] = selector_of(o.selector);
  api_client api{*resolve_server(o.common, o.server, true)};
  auto path = "/api/v1/tasks/" + encode(o.id);
  auto res = api.call("POST", path + "/migrate", body.dump(), o.id);
  auto before = parse_record(res.body);
  std::fprintf(stderr, "makima: moving task %s (attempt %u, %s)\n",
               o.id.c_str(), before.attempt, to_string(before.state));
  if (!o.wait)
    return exit_ok;
  // Bounded: 10 minutes, 5 polls a second.
  for (int i = 0; i < 3000; ++i) {
    auto rec = parse_record(api.call("GET", path, {}, o.id).body);
    if (is_terminal(rec.state)) {
      std::fprintf(stderr, "makima: task %s ended %s\n", o.id.c_str(),
                   to_string(rec.state));
      return exit_status_of(rec);
    }
    if (rec.attempt > before.attempt && rec.state == task_state::running) {
      std::fprintf(stderr, "makima: task %s runs again (attempt %u%s%s)\n",
                   o.id.c_str(), rec.attempt,
                   rec.resume_from.empty() ? ", from scratch"
                                           : ", from checkpoint ",
                   rec.resume_from.c_str());
      return exit_ok;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  fail(exit_internal, "task " + o.id + " did not run again within 10 minutes");
}

} // namespace

void add_client_commands(CLI::App& task, command_table& out,
                         trailing_table& trailing) {
  {
    auto o = std::make_shared<migrate_options>();
    auto cmd = task.add_subcommand(
        "migrate", "move a running task to another daemon: checkpoint, end "
                   "its attempt, resume it on a daemon matching --selector");
    cmd->add_option("--config", o->common.config_file,
                    "TOML config file (default: $MAKIMA_CONFIG)");
    add_server_flags(cmd, o->server);
    cmd->add_option("id", o->id, "task id")->required();
    cmd->add_option("--selector", o->selector,
                    "K=V the next daemon must have (pool=NAME: its pool); "
                    "replaces the task's selector; repeatable")
        ->type_size(1)
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    cmd->add_flag("--wait", o->wait,
                  "wait until the task runs again (or ended)");
    out.emplace_back(cmd, [o] { return cmd_migrate(*o); });
  }
  auto so = std::make_shared<submit_options>();
  auto submit =
      task.add_subcommand("submit", "submit a task to a server; prints its id");
  submit->add_option("--config", so->common.config_file,
                     "TOML config file (default: $MAKIMA_CONFIG, else "
                     "~/.config/makima/makima.toml if present)");
  add_server_flags(submit, so->server);
  auto id_opt = add_task_flags(submit, so->task);
  submit
      ->add_option("--selector", so->selector,
                   "K=V a daemon must have as a label (pool=NAME: its "
                   "pool); repeatable")
      ->type_size(1)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  check_number(submit->add_option("--max-attempts", so->max_attempts,
                                  "attempts the server makes before the task "
                                  "fails (default: its server.max_attempts)"),
               number_kind::whole, 1, max_attempts_limit);
  submit
      ->add_option("--resume-command", so->resume_command,
                   "argv of the command run instead when the task resumes "
                   "from a checkpoint (one ARG per flag, in order)")
      ->type_size(1)
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  submit->footer("Usage: makima task submit --server URL [OPTIONS] -- COMMAND "
                 "[ARGS...]\nPrints the task id on stdout.");
  trailing.emplace_back(submit, &so->task.command);
  out.emplace_back(submit, [so, id_opt] {
    so->task.id_given = id_opt->count() > 0;
    return cmd_submit(*so);
  });

  struct id_options {
    common_options common;
    server_flags server;
    std::string id;
  };
  auto add_id_command = [&](const char* name, const char* help,
                            int (*run)(const common_options&,
                                       const server_flags&,
                                       const std::string&)) {
    auto o = std::make_shared<id_options>();
    auto cmd = task.add_subcommand(name, help);
    cmd->add_option("--config", o->common.config_file,
                    "TOML config file (default: $MAKIMA_CONFIG)");
    add_server_flags(cmd, o->server);
    cmd->add_option("id", o->id, "task id")->required();
    out.emplace_back(cmd,
                     [o, run] { return run(o->common, o->server, o->id); });
    return cmd;
  };
  add_id_command("cancel", "cancel a task on a server", cmd_cancel);
  add_id_command("wait",
                 "wait until a task on a server ends; exits with its exit "
                 "status (as `makima run`)",
                 cmd_wait);
}

} // namespace makima::app
