// Shared pieces of the `makima` subcommands (see cli.hpp).
#include "runtime/app/cli.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string_view>

#include <CLI/CLI.hpp>

#include "actors/daemon.hpp"
#include "actors/messages.hpp"
#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"
#include "runtime/process/environment.hpp"
#include "runtime/store/db.hpp"
#include "runtime/utf8.hpp"

namespace makima::app {

[[noreturn]] void fail(int status, std::string message) {
  throw command_exit{status, std::move(message)};
}

int status_for(const caf::error& err) {
  switch (code_of(err)) {
  case ec::invalid_argument:
  case ec::invalid_config:
  case ec::task_exists:
  case ec::task_not_found:
  case ec::bad_state:
    return exit_usage;
  default:
    return exit_internal;
  }
}

config resolve_config(const common_options& opts,
                      const std::function<void(config&)>& apply_flags,
                      log::level default_level) {
  auto env = process_env();
  std::optional<std::filesystem::path> file;
  if (!opts.config_file.empty())
    file = opts.config_file;
  auto cfg = load_config(file, env);
  if (!cfg)
    fail(exit_usage, describe(cfg.error()));
  if (!opts.data_dir.empty()) {
    cfg->data_dir = opts.data_dir;
    cfg->origins["paths.data_dir"] = "--data-dir";
  }
  if (apply_flags)
    apply_flags(*cfg);
  finalize(*cfg, env);
  log::level lvl = default_level;
  if (!cfg->log_level.empty())
    log::parse_level(cfg->log_level, lvl);
  log::setup(lvl, cfg->log_format == "json");
  return std::move(*cfg);
}

system_config::system_config() {
  set("scheduler.max-threads", 2);
  set("logger.verbosity", caf::atom("quiet"));
  makima::add_message_types(*this);
}

opened_db::~opened_db() {
  db.reset();
  if (!secondary_dir.empty()) {
    std::error_code err;
    std::filesystem::remove_all(secondary_dir, err);
  }
}

/// Opens the data dir's database read-write; fails when another makima
/// holds it.
node_workspace node_workspace_for(const config& cfg) {
  node_workspace w;
  w.repos_dir = cfg.repos_dir;
  w.worktrees_dir = cfg.worktrees_dir;
  w.state_dir = cfg.state_dir;
  w.author_name = cfg.author_name;
  w.author_email = cfg.author_email;
  w.max_tasks = cfg.max_tasks;
  w.base_env = task_base_env(cfg);
  w.remove_worktree_on_push = cfg.remove_worktree_on_push;
  w.checkpoint_interval = cfg.checkpoint_interval;
  return w;
}

std::string locked_data_dir_message(const config& cfg) {
  auto pid = store::lock_holder(cfg.db_dir);
  return "another makima is using the data dir " + cfg.data_dir.string()
         + (pid ? " (pid " + std::to_string(*pid) + ")" : std::string{})
         + "; give this one its own with --data-dir DIR, or run tasks side "
           "by side with `makima local` and `makima task submit`";
}

std::unique_ptr<opened_db> open_primary(const config& cfg) {
  std::error_code err;
  std::filesystem::create_directories(cfg.db_dir, err);
  if (err)
    fail(exit_internal, "cannot create data dir " + cfg.db_dir.string() + ": "
                            + err.message());
  store::db_options opts;
  opts.mode = store::open_mode::primary;
  opts.sync = cfg.sync;
  auto db = store::db::open(cfg.db_dir, opts);
  if (!db && code_of(db.error()) == ec::store_locked)
    fail(status_for(db.error()), locked_data_dir_message(cfg));
  if (!db)
    fail(status_for(db.error()), describe(db.error()));
  auto out = std::make_unique<opened_db>();
  out->db = std::shared_ptr<store::db>(std::move(*db));
  out->primary = true;
  return out;
}

/// Opens the database for reading without changing a byte of it: read-only
/// when no makima holds it, else as a secondary next to the running makima.
/// Only when a read-only look finds unfinished tasks of a dead makima does
/// it reopen read-write so that they get recorded as interrupted (and a
/// full disk then keeps the read-only view). Returns null when the data dir
/// has no database yet.
std::unique_ptr<opened_db> open_for_reading(const config& cfg) {
  std::error_code err;
  if (!std::filesystem::exists(cfg.db_dir / "CURRENT", err)) {
    // No CURRENT beside database files is corruption, not "no tasks".
    store::db_options probe;
    probe.mode = store::open_mode::read_only;
    if (std::filesystem::is_directory(cfg.db_dir, err)
        && !std::filesystem::is_empty(cfg.db_dir, err)) {
      auto db = store::db::open(cfg.db_dir, probe);
      if (!db && code_of(db.error()) != ec::store_error)
        fail(status_for(db.error()), describe(db.error()));
    }
    return nullptr;
  }
  store::db_options opts;
  opts.mode = store::open_mode::read_only;
  opts.sync = cfg.sync;
  auto db = store::db::open(cfg.db_dir, opts);
  if (db) {
    bool unfinished = false;
    auto scan =
        (*db)->for_each_task([&](std::string_view, std::string_view json) {
          if (auto rec = record_from_json(std::string{json});
              rec && !is_terminal(rec->state))
            unfinished = true;
        });
    if (scan)
      fail(status_for(scan), describe(scan));
    if (unfinished) {
      db->reset();
      store::db_options rw;
      rw.mode = store::open_mode::primary;
      rw.sync = cfg.sync;
      auto primary = store::db::open(cfg.db_dir, rw);
      if (primary) {
        auto out = std::make_unique<opened_db>();
        out->db = std::shared_ptr<store::db>(std::move(*primary));
        out->primary = true;
        return out;
      }
      if (code_of(primary.error()) == ec::store_full)
        log::warn("store", describe(primary.error())
                               + "; showing unfinished tasks as stored");
      else if (code_of(primary.error()) != ec::store_locked)
        fail(status_for(primary.error()), describe(primary.error()));
      db = store::db::open(cfg.db_dir, opts);
    }
  }
  if (db) {
    auto out = std::make_unique<opened_db>();
    out->db = std::shared_ptr<store::db>(std::move(*db));
    return out;
  }
  if (code_of(db.error()) != ec::store_locked)
    fail(status_for(db.error()), describe(db.error()));
  char tmpl[] = "/tmp/makima-reader-XXXXXX";
  if (mkdtemp(tmpl) == nullptr)
    fail(exit_internal, "cannot create a temporary directory for reading "
                            + cfg.db_dir.string());
  opts.mode = store::open_mode::secondary;
  opts.secondary_dir = tmpl;
  auto sec = store::db::open(cfg.db_dir, opts);
  auto out = std::make_unique<opened_db>();
  out->secondary_dir = tmpl;
  if (!sec)
    fail(status_for(sec.error()), describe(sec.error()));
  out->db = std::shared_ptr<store::db>(std::move(*sec));
  return out;
}

namespace {

int cmd_db_repair(const common_options& common, const std::string& db_flag) {
  auto cfg = resolve_config(common);
  std::filesystem::path dir =
      db_flag.empty() ? cfg.db_dir : std::filesystem::path{db_flag};
  auto r = store::db::repair(dir);
  if (!r)
    fail(status_for(r.error()), describe(r.error()));
  std::printf("backup of %s as it was: %s\n", dir.c_str(), r->backup.c_str());
  if (r->damage.empty()) {
    std::printf("found no damage; nothing dropped\n");
  } else {
    std::printf("damage: %s\n", r->damage.c_str());
    std::printf("repair: %s\n", r->method.c_str());
    std::printf("dropped: %llu write batches: %llu task records, %llu output "
                "chunks, %llu state events, %llu other operations\n",
                static_cast<unsigned long long>(r->dropped_batches),
                static_cast<unsigned long long>(r->dropped_task_records),
                static_cast<unsigned long long>(r->dropped_output_chunks),
                static_cast<unsigned long long>(r->dropped_events),
                static_cast<unsigned long long>(r->dropped_other));
    if (r->dropped_unreadable)
      std::printf("dropped: %llu operations in unreadable bytes\n",
                  static_cast<unsigned long long>(*r->dropped_unreadable));
    else
      std::printf("dropped: unknown (not countable) operations in unreadable "
                  "bytes, if any\n");
    if (r->rebuilt)
      std::printf("note: the database was rebuilt from its table files; what "
                  "a damaged table file held cannot be counted, only the "
                  "output gaps below\n");
  }
  std::printf("now: %llu tasks, %llu output chunks, %llu output chunks "
              "missing between stored ones\n",
              static_cast<unsigned long long>(r->tasks),
              static_cast<unsigned long long>(r->output_chunks),
              static_cast<unsigned long long>(r->output_gaps));
  return exit_ok;
}

} // namespace

void add_db_commands(CLI::App& app, command_table& out) {
  auto db = app.add_subcommand("db", "inspect and salvage the database");
  db->require_subcommand(1);
  auto opts = std::make_shared<std::pair<common_options, std::string>>();
  auto repair = db->add_subcommand(
      "repair",
      "salvage a corrupt database: back it up next to itself, keep the "
      "consistent prefix, print what was dropped");
  add_common(repair, opts->first);
  repair->add_option("--db", opts->second,
                     "database directory (default: the data dir's db; "
                     "`makima local`'s server keeps DATA/server)");
  out.emplace_back(repair,
                   [opts] { return cmd_db_repair(opts->first, opts->second); });
}

void add_common(CLI::App* cmd, common_options& o) {
  cmd->add_option("--data-dir", o.data_dir,
                  "data dir (default: $MAKIMA_DATA_DIR, else "
                  "$XDG_DATA_HOME/makima, else ~/.local/share/makima)");
  cmd->add_option("--config", o.config_file,
                  "TOML config file (default: $MAKIMA_CONFIG, else "
                  "~/.config/makima/makima.toml if present)");
}

namespace {

/// "2592000 (30 days)" for max_timeout_seconds, else the number as written.
std::string bound_text(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  std::string out = buf;
  if (v == max_timeout_seconds)
    out += " (30 days)";
  return out;
}

} // namespace

void check_number(CLI::Option* opt, number_kind kind, double min, double max,
                  bool min_exclusive) {
  bool seconds = kind == number_kind::seconds;
  std::string what = seconds ? "seconds" : "a whole number";
  std::string range =
      min_exclusive ? "above " + bound_text(min) + " up to " + bound_text(max)
                    : "from " + bound_text(min) + " to " + bound_text(max);
  opt->type_name(seconds ? "SECONDS" : "N");
  opt->check(CLI::Validator(
      [=](std::string& text) -> std::string {
        // Checked on the text: CLI11 would accept "1e308" for an int's
        // range check and print DBL_MAX in full.
        const char* p = text.c_str();
        char* end = nullptr;
        errno = 0;
        double d = std::strtod(p, &end);
        bool number = !text.empty() && end != nullptr && *end == '\0'
                      && !std::isspace(static_cast<unsigned char>(text[0]));
        if (number && !seconds)
          number = text.find_first_not_of("+-0123456789") == std::string::npos;
        if (!number)
          return "expected " + what
                 + (seconds ? " (e.g. 30, 1.5)" : " (e.g. 4)") + ", got '"
                 + text + "'";
        if (!std::isfinite(d) || d < min || d > max
            || (min_exclusive && d == min))
          return "expected " + what + " " + range + ", got '" + text + "'";
        return {};
      },
      "", "number"));
}

bool is_loopback_address(const std::string& host) {
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1)
    return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

std::string listen_host(const std::string& host, const std::string& flag) {
  in_addr v4{};
  in6_addr v6{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1
      || inet_pton(AF_INET6, host.c_str(), &v6) == 1)
    return host;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0)
    fail(exit_usage, flag + ": cannot resolve host '" + host
                         + "': " + gai_strerror(rc)
                         + " (give an IP address or a name of loopback)");
  std::vector<std::string> addrs;
  for (auto* ai = res; ai != nullptr; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    const void* src =
        ai->ai_family == AF_INET
            ? static_cast<const void*>(
                &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr)
            : static_cast<const void*>(
                &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr);
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
      continue;
    if (inet_ntop(ai->ai_family, src, buf, sizeof buf) != nullptr)
      addrs.emplace_back(buf);
  }
  freeaddrinfo(res);
  bool all_loopback = !addrs.empty();
  for (auto& a : addrs)
    all_loopback = all_loopback && is_loopback_address(a);
  if (!all_loopback)
    fail(exit_usage,
         flag + ": host '" + host
             + "' is a name that does not resolve to loopback only; give "
               "an IP address to listen on (e.g. 0.0.0.0 or 127.0.0.1)");
  for (auto& a : addrs)
    if (a == "127.0.0.1")
      return a;
  return addrs.front();
}

CLI::Option* add_task_flags(CLI::App* cmd, task_flags& f) {
  cmd->add_option("--repo", f.repo, "git repository (path or URL)");
  cmd->add_option("--ref", f.ref,
                  "branch, tag or commit (default: the remote's HEAD)");
  auto id = cmd->add_option("--id", f.id, "task id (default: generated)");
  check_number(
      cmd->add_option("--timeout", f.timeout,
                      "seconds until SIGTERM (0 = none; at most 30 days)"),
      number_kind::seconds, 0, max_timeout_seconds);
  check_number(cmd->add_option("--grace", f.grace,
                               "seconds from SIGTERM to SIGKILL (default 10)"),
               number_kind::seconds, 0, max_timeout_seconds);
  cmd->add_option("--env", f.env, "KEY=VALUE for the child (repeatable)")
      ->type_size(1)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_flag("--commit", f.commit,
                "commit every change on the task branch at the end");
  cmd->add_option("--push", f.push,
                  "push the task branch to URL at the end (implies --commit: "
                  "the task's changes are committed first)");
  return id;
}

void add_pass_env_flag(CLI::App* cmd, std::vector<std::string>& names) {
  cmd->add_option("--pass-env", names,
                  "pass this variable of makima's environment to every task "
                  "(repeatable; also task.pass_env; never makima's secrets)")
      ->type_size(1)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

void apply_pass_env(config& cfg, const std::vector<std::string>& names) {
  for (auto& n : names) {
    if (auto err = check_pass_env_name(n, "--pass-env"))
      fail(exit_usage, describe(err));
    cfg.pass_env.push_back(n);
  }
}

std::vector<std::string> task_base_env(const config& cfg) {
  return process::base_environment(process_env(), cfg.pass_env);
}

void check_utf8(const std::string& value, const std::string& what) {
  if (!valid_utf8(value))
    fail(exit_usage, what + " is not valid UTF-8 (makima carries text only)");
}

void check_seconds(double value, const std::string& flag) {
  if (value == -1)
    return; // not given
  if (!std::isfinite(value) || value < 0 || value > max_timeout_seconds)
    fail(exit_usage,
         flag + " must be a number of seconds from 0 to "
             + std::to_string(static_cast<long>(max_timeout_seconds))
             + " (30 days)");
}

void check_task_flags(const task_flags& f) {
  if (f.id_given) {
    if (f.id.empty())
      fail(exit_usage, "--id must not be empty");
    if (auto err = validate_task_id(f.id))
      fail(exit_usage, describe(err));
  }
  for (size_t i = 0; i < f.command.size(); ++i)
    check_utf8(f.command[i], "command argument " + std::to_string(i + 1));
  for (auto& kv : f.env) {
    check_utf8(kv, "--env");
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      fail(exit_usage, "--env expects KEY=VALUE, got '" + kv + "'");
    auto key = kv.substr(0, eq);
    if (process::is_task_variable(key))
      fail(exit_usage,
           "--env cannot set " + key + ": makima sets it for every task");
  }
  check_utf8(f.repo, "--repo");
  check_utf8(f.ref, "--ref");
  check_utf8(f.push, "--push");
  check_seconds(f.timeout, "--timeout");
  check_seconds(f.grace, "--grace");
  if (!f.push.empty() && f.repo.empty())
    fail(exit_usage, "--push needs --repo");
  if (f.commit && f.repo.empty())
    fail(exit_usage, "--commit needs --repo");
}

} // namespace makima::app
