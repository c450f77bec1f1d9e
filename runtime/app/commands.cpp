// The `makima` subcommands of local mode: `run`, `task list|show|logs|resume`.
// Each command resolves the configuration (flag > env > file > default),
// opens the data dir, starts a CAF actor system with the node's actors
// (PERSISTENCE, DAEMON, local LINK) and talks to them by message.
#include "runtime/app/commands.hpp"
#include "runtime/app/cli.hpp"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <future>
#include <iostream>
#include <optional>
#include <thread>

#include <CLI/CLI.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <nlohmann/json.hpp>

#include "actors/actors.hpp"
#include "actors/checkpoint.hpp"
#include "actors/checkpointer.hpp"
#include "actors/json_codec.hpp"
#include "actors/local_node.hpp"
#include "actors/persistence.hpp"
#include "config/config.hpp"
#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"
#include "runtime/process/environment.hpp"
#include "runtime/process/io.hpp"
#include "runtime/process/leftovers.hpp"
#include "runtime/process/reactor.hpp"
#include "runtime/process/signals.hpp"
#include "runtime/store/db.hpp"
#include "runtime/store/object_store.hpp"

#ifndef MAKIMA_VERSION
#define MAKIMA_VERSION "0.0.0"
#endif

namespace makima::app {

namespace {

/// An opened data dir with its actor system and PERSISTENCE actor; the
/// destructor stops the actors before the system waits for them.
struct store_session {
  explicit store_session(std::unique_ptr<opened_db> opened)
      : db(std::move(opened)), sys(sys_cfg),
        persist(spawn_persistence(sys, db->db)) {}
  ~store_session() {
    caf::anon_send_exit(persist, caf::exit_reason::user_shutdown);
    persist = persistence_actor{};
  }
  std::unique_ptr<opened_db> db;
  system_config sys_cfg;
  caf::actor_system sys;
  persistence_actor persist;
};

/// Marks tasks of a dead makima as interrupted (primary only).
void recover(caf::scoped_actor& self, const persistence_actor& persist) {
  self->request(persist, caf::infinite, recover_atom::value)
      .receive(
          [&](const std::vector<std::string>& ids) {
            for (auto& id : ids)
              log::warn("recovery",
                        "task " + id
                            + " was interrupted (its makima process "
                              "died); `makima task resume "
                            + id + "` runs it again");
          },
          [&](caf::error& err) { fail(status_for(err), describe(err)); });
}

task_record get_record(caf::scoped_actor& self,
                       const persistence_actor& persist,
                       const std::string& id) {
  task_record out;
  self->request(persist, caf::infinite, get_atom::value, id)
      .receive([&](task_record& rec) { out = std::move(rec); },
               [&](caf::error& err) { fail(status_for(err), describe(err)); });
  return out;
}

/// Runs one attempt of `rec` on a local node (actors/local_node.hpp) and
/// returns its final record. Output streams to the terminal as it is
/// persisted; stop signals cancel the task (the node's policy).
task_record run_attempt(caf::actor_system& sys, const config& cfg,
                        const persistence_actor& persist,
                        const std::shared_ptr<store::db>& db, task_record rec,
                        bool quiet) {
  local_settings s;
  s.workspace = node_workspace_for(cfg);
  if (cfg.checkpoint_interval > 0) {
    // Opened before the secrets leave the environment (they are in cfg).
    std::shared_ptr<store::object_store> os = open_checkpoint_store(cfg);
    auto cs = checkpoint_settings(cfg);
    cs.skip_unchanged = true; // an idle task costs no writes
    s.checkpointer = spawn_checkpointer(sys, db, std::move(os), std::move(cs));
    if (!quiet)
      std::fprintf(stderr, "makima: checkpoints every %g s to %s\n",
                   cfg.checkpoint_interval, log::redact(cfg.store_url).c_str());
  }
  s.out_fd = STDOUT_FILENO;
  s.err_fd = STDERR_FILENO;
  s.progress = quiet                   ? progress_mode::quiet
               : isatty(STDERR_FILENO) ? progress_mode::live
                                       : progress_mode::lines;
  // Config read: makima's keys leave this process's environment before the
  // task starts (a task could read /proc/$PPID/environ).
  process::hide_own_secrets();
  auto node = local_node::start(sys, std::move(s), persist);
  if (!node)
    fail(status_for(node.error()), describe(node.error()));
  auto final_record = (*node)->run(std::move(rec));
  (*node)->stop();
  if (s.checkpointer)
    caf::anon_send_exit(s.checkpointer, caf::exit_reason::user_shutdown);
  return final_record;
}

/// The one-line summary on stderr: `makima: task ID STATE (exit N) in S s`
/// with the commit and branch when there is one. An error is always
/// printed (`makima: task ID failed: ERROR`), the rest not with --quiet.
void report_outcome(const task_record& rec, double seconds, bool quiet) {
  auto id = rec.spec.id.c_str();
  if (rec.state == task_state::failed && !rec.error.empty()) {
    std::fprintf(stderr, "makima: task %s failed: %s\n", id, rec.error.c_str());
    return;
  }
  if (quiet)
    return;
  std::string line = "makima: task " + rec.spec.id + " ";
  line +=
      rec.state == task_state::timed_out ? "timed out" : to_string(rec.state);
  char buf[64];
  if (rec.state == task_state::timed_out) {
    std::snprintf(buf, sizeof buf, " after %g s", rec.spec.timeout);
    line += buf;
  }
  line += " (exit " + std::to_string(exit_status_of(rec)) + ")";
  std::snprintf(buf, sizeof buf, " in %.1f s", seconds);
  line += buf;
  if (!rec.commit.empty())
    line += "; committed " + rec.commit.substr(0, 7) + " on " + rec.branch
            + (rec.pushed ? " (pushed)" : "");
  std::fprintf(stderr, "%s\n", line.c_str());
}

/// Runs one attempt of `rec` on `node`, reports its outcome on stderr and
/// returns the exit status of `makima run` / `task resume`.
int run_to_completion(store_session& node, const config& cfg, task_record rec,
                      bool quiet) {
  auto start = std::chrono::steady_clock::now();
  auto final_record = run_attempt(node.sys, cfg, node.persist, node.db->db,
                                  std::move(rec), quiet);
  report_outcome(
      final_record,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count(),
      quiet);
  return exit_status_of(final_record);
}

// --- commands ---------------------------------------------------------------

struct run_options {
  common_options common;
  task_flags task;
  std::vector<std::string> pass_env;
  bool quiet = false;
  store_flags store;
  /// Seconds; -1 = not given.
  double checkpoint_interval = -1;
};

int cmd_run(run_options& o) {
  auto& t = o.task;
  if (!t.command.empty() && t.command.front() == "--")
    t.command.erase(t.command.begin());
  // CLI11 hands over a trailing "--" when it saw one after the options.
  if (!t.command.empty() && t.command.back() == "--")
    t.command.pop_back();
  if (t.command.empty())
    fail(exit_usage, "run: no command given (usage: makima run [OPTIONS] -- "
                     "COMMAND [ARGS...])");
  auto cfg = resolve_config(o.common, [&](config& c) {
    if (t.timeout >= 0)
      c.timeout = t.timeout;
    if (t.grace >= 0)
      c.grace = t.grace;
    apply_pass_env(c, o.pass_env);
    apply_checkpoint_flags(c, o.store, o.checkpoint_interval);
  });
  check_task_flags(t);
  task_record rec;
  rec.spec.id = t.id_given ? t.id : make_task_id();
  rec.spec.argv = t.command;
  rec.spec.repo = t.repo.empty() ? std::string{} : git::canonical_url(t.repo);
  rec.spec.ref = t.ref;
  rec.spec.env = t.env;
  rec.spec.timeout = cfg.timeout;
  rec.spec.grace = cfg.grace;
  // --push implies --commit: pushing the unchanged base is never meant.
  rec.spec.commit = t.commit || !t.push.empty();
  rec.spec.push_url =
      t.push.empty() ? std::string{} : git::canonical_url(t.push);
  rec.spec.created_at = now_ms();
  rec.updated_at = rec.spec.created_at;
  rec.attempt = 1;
  rec.state = task_state::preparing;
  store_session node{open_primary(cfg)};
  caf::scoped_actor self{node.sys};
  recover(self, node.persist);
  self->request(node.persist, caf::infinite, create_atom::value, rec)
      .receive([](ok_atom) {},
               [&](caf::error& err) { fail(status_for(err), describe(err)); });
  if (!o.quiet)
    std::fprintf(stderr, "makima: task %s\n", rec.spec.id.c_str());
  return run_to_completion(node, cfg, std::move(rec), o.quiet);
}

int cmd_resume(const common_options& common, const std::string& id, bool quiet,
               const store_flags& store, double interval) {
  auto cfg = resolve_config(
      common, [&](config& c) { apply_checkpoint_flags(c, store, interval); });
  store_session node{open_primary(cfg)};
  caf::scoped_actor self{node.sys};
  recover(self, node.persist);
  auto rec = get_record(self, node.persist, id);
  if (rec.state != task_state::interrupted)
    fail(exit_usage, "task " + id + " is " + to_string(rec.state)
                         + "; only an interrupted task can be resumed");
  // Processes of the dead attempt still running in the worktree would
  // race the new attempt: stop them first.
  if (auto n = process::kill_processes_with_env("MAKIMA_TASK_ID=" + id))
    std::fprintf(stderr,
                 "makima: task %s: killed %zu leftover process(es) of "
                 "attempt %u\n",
                 id.c_str(), n, rec.attempt);
  rec.attempt += 1;
  std::fprintf(stderr, "makima: task %s: resuming as attempt %u\n", id.c_str(),
               rec.attempt);
  return run_to_completion(node, cfg, std::move(rec), quiet);
}

std::string shorten(std::string s, size_t n) {
  if (s.size() <= n)
    return s;
  return s.substr(0, n - 1) + "~";
}

std::string command_line(const task_spec& spec) {
  std::string out;
  for (auto& a : spec.argv) {
    if (!out.empty())
      out += ' ';
    out += a;
  }
  return out;
}

} // namespace

std::string format_span(int64_t ms, bool coarse) {
  if (ms < 0)
    ms = 0;
  char buf[32];
  int64_t s = ms / 1000;
  if (ms < 1000 && !coarse)
    std::snprintf(buf, sizeof buf, "%lldms", static_cast<long long>(ms));
  else if (s < 60 && coarse)
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  else if (s < 60)
    std::snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(ms) / 1000);
  else if (s < 3600 && coarse)
    std::snprintf(buf, sizeof buf, "%lldm", static_cast<long long>(s / 60));
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%lldm%02llds",
                  static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else if (s < 86400 && coarse)
    std::snprintf(buf, sizeof buf, "%lldh", static_cast<long long>(s / 3600));
  else if (s < 86400)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm",
                  static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  else if (coarse)
    std::snprintf(buf, sizeof buf, "%lldd", static_cast<long long>(s / 86400));
  else
    std::snprintf(buf, sizeof buf, "%lldd%02lldh",
                  static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600));
  return buf;
}

std::optional<int64_t> parse_span(const std::string& text) {
  if (text.empty())
    return std::nullopt;
  char* end = nullptr;
  double n = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || !std::isfinite(n) || n < 0)
    return std::nullopt;
  std::string unit{end};
  double factor = 0;
  if (unit.empty() || unit == "s")
    factor = 1000;
  else if (unit == "ms")
    factor = 1;
  else if (unit == "m")
    factor = 60e3;
  else if (unit == "h")
    factor = 3600e3;
  else if (unit == "d")
    factor = 86400e3;
  else if (unit == "w")
    factor = 7 * 86400e3;
  else
    return std::nullopt;
  double ms = n * factor;
  if (ms > 1e15) // about 30 000 years
    return std::nullopt;
  return static_cast<int64_t>(ms);
}

std::optional<task_record> stored_record(store::db& db, const std::string& id) {
  auto json = db.get_task(id);
  if (!json)
    fail(status_for(json.error()), describe(json.error()));
  if (!*json)
    return std::nullopt;
  return record_from_json(**json);
}

std::optional<task_state> parse_state_flag(const std::string& name) {
  if (name.empty())
    return std::nullopt;
  task_state st;
  if (from_string(name, st))
    return st;
  std::string valid;
  for (uint8_t n = 1; n <= 9; ++n) {
    if (!valid.empty())
      valid += ", ";
    valid += to_string(static_cast<task_state>(n));
  }
  fail(exit_usage,
       "unknown task state '" + name + "' for --state (one of: " + valid + ")");
}

std::vector<task_record> select_tasks(std::vector<task_record> records,
                                      std::optional<task_state> state) {
  if (state)
    records.erase(
        std::remove_if(records.begin(), records.end(),
                       [&](const task_record& r) { return r.state != *state; }),
        records.end());
  std::stable_sort(records.begin(), records.end(),
                   [](const task_record& a, const task_record& b) {
                     if (a.spec.created_at != b.spec.created_at)
                       return a.spec.created_at < b.spec.created_at;
                     return a.spec.id < b.spec.id;
                   });
  return records;
}

namespace {

/// How long the last attempt of `r` ran (so far, while it runs); "-"
/// before it started.
std::string run_duration(const task_record& r, int64_t now) {
  if (r.started_at <= 0)
    return "-";
  int64_t end = r.finished_at >= r.started_at ? r.finished_at
                : is_terminal(r.state)        ? r.updated_at
                                              : now;
  return format_span(end - r.started_at, false);
}

} // namespace

void print_task_list(const std::vector<task_record>& records, bool json) {
  if (json) {
    auto arr = nlohmann::json::array();
    for (auto& r : records)
      arr.push_back(record_value(r));
    std::cout << arr.dump(2, ' ', false,
                          nlohmann::json::error_handler_t::replace)
              << "\n";
    return;
  }
  auto now = now_ms();
  std::printf("%-28s %-12s %-7s %-5s %-24s %-5s %-8s %s\n", "ID", "STATE",
              "ATTEMPT", "EXIT", "CREATED", "AGE", "DURATION", "COMMAND");
  for (auto& r : records)
    std::printf("%-28s %-12s %-7u %-5s %-24s %-5s %-8s %s\n", r.spec.id.c_str(),
                to_string(r.state), r.attempt,
                r.exit_code < 0 ? "-" : std::to_string(r.exit_code).c_str(),
                format_time(r.spec.created_at).c_str(),
                format_span(now - r.spec.created_at, true).c_str(),
                run_duration(r, now).c_str(),
                shorten(command_line(r.spec), 60).c_str());
}

void print_task(const task_record& rec,
                const std::vector<state_change>* history, bool json) {
  if (json) {
    auto j = record_value(rec);
    j["exit_status"] =
        is_terminal(rec.state) && rec.state != task_state::interrupted
            ? nlohmann::json(exit_status_of(rec))
            : nlohmann::json();
    if (history) {
      auto hist = nlohmann::json::array();
      for (auto& h : *history)
        hist.push_back(change_value(h));
      j["history"] = hist;
    }
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
    return;
  }
  auto line = [](const char* k, const std::string& v) {
    std::printf("%-12s %s\n", k, v.c_str());
  };
  line("id:", rec.spec.id);
  line("state:", to_string(rec.state));
  line("attempt:", std::to_string(rec.attempt));
  line("command:", command_line(rec.spec));
  line("exit code:", rec.exit_code < 0 ? "-" : std::to_string(rec.exit_code));
  if (!rec.spec.repo.empty()) {
    line("repo:", log::redact(rec.spec.repo));
    line("ref:", rec.spec.ref.empty() ? "(default branch)" : rec.spec.ref);
    line("branch:", rec.branch);
    line("base:", rec.base_commit);
    line("commit:", rec.commit.empty() ? "-" : rec.commit);
    if (!rec.spec.push_url.empty())
      line("pushed:",
           rec.pushed ? "yes, to " + log::redact(rec.spec.push_url) : "no");
  }
  line("worktree:", rec.worktree.empty() ? "-" : rec.worktree);
  line("state dir:", rec.state_dir.empty() ? "-" : rec.state_dir);
  if (!rec.error.empty())
    line("error:", rec.error);
  line("output:", std::to_string(rec.next_seq) + " chunks");
  if (!history)
    return;
  // Each change with how long the task stayed in that state: until the
  // next change, or until now while it is the current, unfinished one.
  std::printf("history:\n");
  auto now = now_ms();
  for (size_t i = 0; i < history->size(); ++i) {
    auto& h = (*history)[i];
    std::string stayed = i + 1 < history->size()
                             ? format_span((*history)[i + 1].at - h.at, false)
                         : is_terminal(h.state)
                             ? "-"
                             : format_span(now - h.at, false) + "+";
    std::printf("  %s  #%u %-12s %-9s %s\n", format_time(h.at).c_str(),
                h.attempt, to_string(h.state), stayed.c_str(),
                h.detail.c_str());
  }
}

namespace {

int cmd_list(const common_options& common, bool json,
             std::optional<task_state> state) {
  auto cfg = resolve_config(common);
  auto db = open_for_reading(cfg);
  std::vector<task_record> records;
  if (db) {
    bool primary = db->primary;
    store_session node{std::move(db)};
    caf::scoped_actor self{node.sys};
    if (primary)
      recover(self, node.persist);
    self->request(node.persist, caf::infinite, list_atom::value)
        .receive(
            [&](std::vector<task_record>& v) { records = std::move(v); },
            [&](caf::error& err) { fail(status_for(err), describe(err)); });
  }
  print_task_list(select_tasks(std::move(records), state), json);
  return exit_ok;
}

int cmd_show(const common_options& common, const std::string& id, bool json) {
  auto cfg = resolve_config(common);
  auto db = open_for_reading(cfg);
  if (!db)
    fail(exit_usage, "no task with id '" + id + "'");
  task_record rec;
  std::vector<state_change> history;
  {
    bool primary = db->primary;
    store_session node{std::move(db)};
    caf::scoped_actor self{node.sys};
    if (primary)
      recover(self, node.persist);
    rec = get_record(self, node.persist, id);
    self->request(node.persist, caf::infinite, get_atom::value,
                  history_atom::value, id)
        .receive(
            [&](std::vector<state_change>& h) { history = std::move(h); },
            [&](caf::error& err) { fail(status_for(err), describe(err)); });
  }
  print_task(rec, &history, json);
  return exit_ok;
}

int cmd_logs(const common_options& common, const std::string& id) {
  auto cfg = resolve_config(common);
  auto db = open_for_reading(cfg);
  if (!db)
    fail(exit_usage, "no task with id '" + id + "'");
  {
    store_session node{std::move(db)};
    caf::scoped_actor self{node.sys};
    get_record(self, node.persist, id); // a clear error for an unknown id
    uint64_t from = 0;
    bool more = true;
    while (more) {
      self->request(node.persist, caf::infinite, get_atom::value,
                    output_atom::value, id, from, uint64_t{8} << 20)
          .receive(
              [&](std::vector<output_chunk>& chunks) {
                more = !chunks.empty();
                for (auto& c : chunks) {
                  auto fd = c.stream == 2 ? STDERR_FILENO : STDOUT_FILENO;
                  if (!process::write_all(fd, c.bytes))
                    more = false;
                  from = c.seq + 1;
                }
              },
              [&](caf::error& err) { fail(status_for(err), describe(err)); });
    }
  }
  return exit_ok;
}

/// `task logs -f` in local mode: prints the output so far, then, while
/// another makima runs the task (this one reads as a RocksDB secondary),
/// catches up with it every 150 ms and prints what is new, until the task
/// ends: returns its exit status. A task nobody runs any more (its makima
/// died) ends the follow as interrupted (exit 125). SIGINT, SIGTERM and
/// SIGHUP (blocked by run_cli) end it with 128+N.
int cmd_logs_follow(const common_options& common, const std::string& id) {
  auto cfg = resolve_config(common);
  auto opened = open_for_reading(cfg);
  if (!opened)
    fail(exit_usage, "no task with id '" + id + "'");
  auto& db = *opened->db;
  bool secondary = !opened->primary && store::lock_holder(cfg.db_dir);
  uint64_t from = 0;
  auto drain = [&] {
    auto err = db.for_each_output(id, from, [&](const store::stored_chunk& c) {
      auto fd = c.stream == 2 ? STDERR_FILENO : STDOUT_FILENO;
      from = c.seq + 1;
      return process::write_all(fd, c.bytes);
    });
    if (err)
      fail(status_for(err), describe(err));
  };
  auto record = [&]() -> task_record {
    auto rec = stored_record(db, id);
    if (!rec)
      fail(exit_usage, "no task with id '" + id + "'");
    return std::move(*rec);
  };
  auto interrupted = [&] {
    std::fprintf(stderr,
                 "makima: task %s is interrupted (the makima process running "
                 "it ended); `makima task resume %s` runs it again\n",
                 id.c_str(), id.c_str());
    return int{exit_internal};
  };
  for (;;) {
    auto rec = record();
    drain();
    if (rec.state == task_state::interrupted)
      return interrupted();
    if (is_terminal(rec.state))
      return exit_status_of(rec);
    if (!secondary)
      return interrupted(); // nobody holds the data dir: nobody runs it
    if (int sig = process::wait_signal(std::chrono::milliseconds{150}))
      return 128 + sig;
    bool held = store::lock_holder(cfg.db_dir).has_value();
    if (auto err = db.catch_up())
      fail(status_for(err), describe(err));
    if (!held) {
      // The primary is gone: what it wrote last decides.
      rec = record();
      drain();
      if (is_terminal(rec.state) && rec.state != task_state::interrupted)
        return exit_status_of(rec);
      return interrupted();
    }
  }
}

} // namespace

namespace {

/// Overwrites the values of --api-key, --user-key, --daemon-key and
/// --checkpoint-key in the
/// process's own argv (after it was copied), so that /proc/PID/cmdline and
/// `ps` show "--user-key ******" instead of the key — the approach of
/// MySQL's client. Before this runs (the first microseconds of the process)
/// the key is visible; the environment or the config file never shows it.
void hide_key_arguments(int argc, char** argv) {
  static constexpr const char* flags[] = {"--api-key", "--user-key",
                                          "--daemon-key", "--checkpoint-key"};
  auto blank = [](char* p) {
    for (; *p != '\0'; ++p)
      *p = '*';
  };
  for (int i = 1; i < argc; ++i) {
    std::string_view a{argv[i]};
    for (auto* f : flags) {
      std::string_view flag{f};
      if (a == flag && i + 1 < argc)
        blank(argv[i + 1]);
      else if (a.size() > flag.size() && a.substr(0, flag.size()) == flag
               && a[flag.size()] == '=')
        blank(argv[i] + flag.size() + 1);
    }
  }
}

} // namespace

int run_cli(int argc, char** argv) {
  // Signals are handled by a watcher thread (sigwait) during a task, or
  // waited for by the node commands; block them before any thread exists
  // so that every thread inherits the mask.
  process::block_stop_signals();

  CLI::App app{"makima — run tasks in isolated git worktrees, durably",
               "makima"};
  app.set_version_flag("--version", std::string{"makima "} + build_version()
                                        + " (" + build_commit() + ")");
  app.require_subcommand(1);
  // Every usage error reads "makima: ..." like the others.
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "makima: " + std::string{e.what()}
           + "\nRun with --help for more information.\n";
  });

  run_options run_opts;
  auto run = app.add_subcommand(
      "run", "run one task in this process; exits with the task's exit code");
  add_common(run, run_opts.common);
  auto id_opt = add_task_flags(run, run_opts.task);
  add_pass_env_flag(run, run_opts.pass_env);
  run->add_flag("--quiet", run_opts.quiet,
                "no phase lines or summary on stderr (errors still print)");
  add_checkpoint_flags(run, run_opts.store, run_opts.checkpoint_interval);

  run->footer(
      "Usage: makima run [OPTIONS] [--] COMMAND [ARGS...]\n\n"
      "Exit status: the task's exit code; 128+N if the child died of signal "
      "N;\n"
      "127 command not found; 126 not executable; 124 timed out; 130 "
      "cancelled;\n"
      "2 usage or config error; 125 makima failed (repository, ref, store).");

  auto task = app.add_subcommand("task", "inspect and resume tasks");
  task->require_subcommand(1);
  common_options list_opts;
  server_flags list_server;
  bool list_json = false;
  std::string list_state;
  auto list = task->add_subcommand(
      "list", "list tasks, oldest first (AGE: since created; DURATION: of "
              "the last attempt)");
  add_common(list, list_opts);
  add_server_flags(list, list_server);
  list->add_flag("--json", list_json, "JSON output");
  list->add_option("--state", list_state,
                   "only tasks in this state (succeeded, failed, running, "
                   "interrupted, …)");

  common_options show_opts;
  server_flags show_server;
  std::string show_id;
  bool show_json = false;
  auto show = task->add_subcommand("show", "show one task");
  add_common(show, show_opts);
  add_server_flags(show, show_server);
  show->add_option("id", show_id, "task id")->required();
  show->add_flag("--json", show_json, "JSON output");

  common_options logs_opts;
  server_flags logs_server;
  std::string logs_id;
  bool logs_follow = false;
  auto logs = task->add_subcommand("logs", "print a task's whole output");
  add_common(logs, logs_opts);
  add_server_flags(logs, logs_server);
  logs->add_option("id", logs_id, "task id")->required();
  logs->add_flag("-f,--follow", logs_follow,
                 "follow the output until the task ends (of a server's task "
                 "or one another `makima run` runs); exits with the task's "
                 "exit status");

  common_options resume_opts;
  std::string resume_id;
  auto resume = task->add_subcommand(
      "resume", "run an interrupted task again (next attempt) in its worktree");
  add_common(resume, resume_opts);
  resume->add_option("id", resume_id, "task id")->required();
  bool resume_quiet = false;
  resume->add_flag("--quiet", resume_quiet,
                   "no phase lines or summary on stderr (errors still print)");
  store_flags resume_store;
  double resume_interval = -1;
  add_checkpoint_flags(resume, resume_store, resume_interval);

  command_table network;
  trailing_table trailing{{run, &run_opts.task.command}};
  add_client_commands(*task, network, trailing);
  add_task_commands(*task, app, network);
  add_checkpoint_commands(*task, app, network);
  add_server_commands(app, network);
  add_daemon_command(app, network);
  add_db_commands(app, network);
  add_help_commands(app, network);

  // `makima run [OPTIONS] [--] COMMAND [ARGS...]` (and `task submit`):
  // everything from the first word that is not an option of the
  // subcommand (or after "--") is the command, passed to CLI11 untouched
  // by option parsing.
  std::vector<std::string> args(argv + 1, argv + argc);
  hide_key_arguments(argc, argv);
  for (auto& [cmd, out] : trailing) {
    // The words naming `cmd`, e.g. {"task", "submit"}.
    std::vector<std::string> path;
    for (auto* c = cmd; c != nullptr && c->get_parent() != nullptr;
         c = c->get_parent())
      path.insert(path.begin(), c->get_name());
    if (args.size() < path.size()
        || !std::equal(path.begin(), path.end(), args.begin()))
      continue;
    size_t i = path.size();
    while (i < args.size()) {
      auto& a = args[i];
      if (a == "--") {
        out->assign(args.begin() + static_cast<long>(i) + 1, args.end());
        break;
      }
      if (a.size() > 1 && a[0] == '-') {
        auto opt = cmd->get_option_no_throw(a.substr(0, a.find('=')));
        bool takes_value = opt != nullptr && opt->get_expected_max() != 0
                           && a.find('=') == std::string::npos;
        i += takes_value ? 2 : 1;
        continue;
      }
      out->assign(args.begin() + static_cast<long>(i), args.end());
      break;
    }
    args.resize(std::min(i, args.size()));
    break;
  }
  if (auto unknown = unknown_command(app, args)) {
    std::fprintf(stderr, "makima: %s\n", unknown->c_str());
    return exit_usage;
  }
  try {
    std::vector<std::string> reversed(args.rbegin(), args.rend());
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : exit_usage;
  }
  try {
    if (*run) {
      run_opts.task.id_given = id_opt->count() > 0;
      return cmd_run(run_opts);
    }
    if (*list) {
      auto state = parse_state_flag(list_state);
      process::unblock_stop_signals();
      if (auto target = resolve_server(list_opts, list_server, false))
        return remote_list(*target, list_json, state);
      return cmd_list(list_opts, list_json, state);
    }
    if (*show) {
      process::unblock_stop_signals();
      if (auto target = resolve_server(show_opts, show_server, false))
        return remote_show(*target, show_id, show_json);
      return cmd_show(show_opts, show_id, show_json);
    }
    if (*logs) {
      if (auto target = resolve_server(logs_opts, logs_server, false))
        return remote_logs(*target, logs_id, logs_follow);
      if (logs_follow)
        return cmd_logs_follow(logs_opts, logs_id);
      // Nothing to clean up but a reader's temporary dir: Ctrl-C ends a
      // read command at once (130).
      process::unblock_stop_signals();
      return cmd_logs(logs_opts, logs_id);
    }
    if (*resume)
      return cmd_resume(resume_opts, resume_id, resume_quiet, resume_store,
                        resume_interval);
    for (auto& [cmd, fn] : network)
      if (*cmd)
        return fn();
  } catch (const command_exit& e) {
    // With log.format = json every line on stderr is JSON, this one too.
    if (!e.message.empty() && log::json())
      log::error("makima", e.message);
    else if (!e.message.empty())
      std::fprintf(stderr, "makima: %s\n", e.message.c_str());
    return e.status;
  }
  return exit_usage;
}

} // namespace makima::app
