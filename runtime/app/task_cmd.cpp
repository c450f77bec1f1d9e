// Cleaning up after tasks in local mode: `makima task rm ID…`, `makima task
// prune` and `makima gc`. They work on the data dir directly (RocksDB, the
// mirrors, the worktree and state dirs) from the main thread, without an
// actor system, and only while no other makima holds the data dir: holding
// its database as primary is what keeps every other makima (and so every
// task) out while files go.
#include "runtime/app/cli.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include <CLI/CLI.hpp>

#include "actors/messages.hpp"
#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/ids.hpp"
#include "runtime/store/db.hpp"

namespace makima::app {

namespace fs = std::filesystem;

// "512 B", "3.4 KiB", "1.2 MiB", "2.0 GiB".
std::string format_bytes(uint64_t n) {
  char buf[32];
  if (n < 1024)
    std::snprintf(buf, sizeof buf, "%llu B",
                  static_cast<unsigned long long>(n));
  else if (n < (uint64_t{1} << 20))
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(n) / 1024);
  else if (n < (uint64_t{1} << 30))
    std::snprintf(buf, sizeof buf, "%.1f MiB",
                  static_cast<double>(n) / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.1f GiB",
                  static_cast<double>(n) / (1024.0 * 1024 * 1024));
  return buf;
}

namespace {

/// Bytes of the regular files under `p` (symlinks not followed).
uint64_t dir_bytes(const fs::path& p) {
  std::error_code err;
  auto st = fs::symlink_status(p, err);
  if (err || !fs::exists(st))
    return 0;
  if (fs::is_regular_file(st))
    return fs::file_size(p, err);
  uint64_t n = 0;
  for (fs::recursive_directory_iterator
           it{p, fs::directory_options::skip_permission_denied, err},
       end;
       !err && it != end; it.increment(err)) {
    auto s = it->symlink_status(err);
    if (!err && fs::is_regular_file(s)) {
      auto size = it->file_size(err);
      if (!err)
        n += size;
    }
    err.clear();
  }
  return n;
}


/// Whether `p` lies inside `root` (lexically, after normalization).
bool inside(const fs::path& p, const fs::path& root) {
  auto rel = p.lexically_normal().lexically_relative(root.lexically_normal());
  return !rel.empty() && *rel.begin() != ".." && rel != ".";
}

/// The directory of a task under `root`: the record's path when it lies
/// there, else `root`/ID (never a path outside `root`).
fs::path task_dir(const std::string& recorded, const fs::path& root,
                  const std::string& id) {
  if (!recorded.empty() && inside(recorded, root))
    return recorded;
  return root / id;
}

/// The start of locked_data_dir_message: "another makima is using the
/// data dir DIR (pid N)".
std::string locked_message(const config& cfg) {
  auto m = locked_data_dir_message(cfg);
  return m.substr(0, m.find(';'));
}

/// Every task record of the database.
std::map<std::string, task_record> all_tasks(store::db& db) {
  std::map<std::string, task_record> out;
  auto err = db.for_each_task([&](std::string_view id, std::string_view json) {
    if (auto rec = record_from_json(std::string{json}))
      out.emplace(std::string{id}, std::move(*rec));
  });
  if (err)
    fail(status_for(err), describe(err));
  return out;
}

/// Bytes of output stored for `id`.
uint64_t output_bytes(store::db& db, const std::string& id) {
  uint64_t n = 0;
  auto err = db.for_each_output(id, 0, [&](const store::stored_chunk& c) {
    n += c.bytes.size();
    return true;
  });
  if (err)
    fail(status_for(err), describe(err));
  return n;
}

/// Removes task `rec`'s worktree (through its mirror, which also deletes
/// branch makima/ID there), its state dir and, unless `keep_records`, its
/// records. Returns the bytes freed; leaves nothing of the records when a
/// file could not be removed (so that a later `rm` tries again).
caf::expected<uint64_t> remove_task(const config& cfg, store::db& db,
                                    const task_record& rec, bool keep_records,
                                    bool dry_run) {
  auto& id = rec.spec.id;
  auto wt = task_dir(rec.worktree, cfg.worktrees_dir, id);
  auto sd = task_dir(rec.state_dir, cfg.state_dir, id);
  uint64_t freed = dir_bytes(wt) + dir_bytes(sd);
  if (!keep_records)
    freed += output_bytes(db, id);
  if (dry_run)
    return freed;
  std::error_code err;
  if (!rec.spec.repo.empty()
      && fs::exists(cfg.repos_dir / git::mirror_dir_name(rec.spec.repo), err)) {
    auto m = git::mirror::open(rec.spec.repo, cfg.repos_dir, false);
    if (!m)
      return m.error();
    auto branch = rec.branch.empty() ? "makima/" + id : rec.branch;
    if (auto e = m->remove_worktree(id, branch))
      return e;
  }
  fs::remove_all(wt, err);
  if (err)
    return make_error(ec::io_error, "cannot remove the worktree " + wt.string()
                                        + ": " + err.message());
  fs::remove_all(sd, err);
  if (err)
    return make_error(ec::io_error, "cannot remove the state dir " + sd.string()
                                        + ": " + err.message());
  store::write_batch b;
  if (keep_records) {
    // The record stays; its paths no longer name anything.
    auto kept = rec;
    kept.worktree.clear();
    kept.state_dir.clear();
    b.put_task(id, to_json(kept));
  } else {
    b.delete_task(id);
  }
  if (auto e = db.write(std::move(b)))
    return e;
  return freed;
}

/// A task of a data dir nobody else holds: one left unfinished was its
/// dead makima's and counts as interrupted.
task_state effective_state(const task_record& rec) {
  return is_terminal(rec.state) ? rec.state : task_state::interrupted;
}

// --- task rm -----------------------------------------------------------------

struct rm_options {
  common_options common;
  std::vector<std::string> ids;
  bool keep_records = false;
};

/// With the data dir held by another makima: says for each id why it
/// cannot go (unknown, running, or the data dir in use).
int rm_while_locked(const config& cfg, const rm_options& o) {
  auto msg = locked_message(cfg);
  auto reader = open_for_reading(cfg);
  for (auto& id : o.ids) {
    std::optional<task_record> rec;
    if (reader) {
      auto json = reader->db->get_task(id);
      if (json && *json)
        rec = record_from_json(**json);
    }
    if (!rec)
      std::fprintf(stderr, "makima: no task with id '%s'\n", id.c_str());
    else if (!is_terminal(rec->state))
      std::fprintf(stderr,
                   "makima: task %s is %s; only a finished task can be "
                   "removed (stop it first)\n",
                   id.c_str(), to_string(rec->state));
    else
      std::fprintf(stderr,
                   "makima: cannot remove task %s: %s; try again once it "
                   "ended\n",
                   id.c_str(), msg.c_str());
  }
  return exit_usage;
}

int cmd_rm(rm_options& o) {
  auto cfg = resolve_config(o.common);
  for (auto& id : o.ids)
    if (auto err = validate_task_id(id))
      fail(exit_usage, describe(err));
  if (store::lock_holder(cfg.db_dir))
    return rm_while_locked(cfg, o);
  std::error_code err;
  if (!fs::exists(cfg.db_dir / "CURRENT", err)) {
    for (auto& id : o.ids)
      std::fprintf(stderr, "makima: no task with id '%s'\n", id.c_str());
    return exit_usage;
  }
  auto opened = open_primary(cfg);
  auto& db = *opened->db;
  int status = exit_ok;
  for (auto& id : o.ids) {
    auto rec = stored_record(db, id);
    if (!rec) {
      std::fprintf(stderr, "makima: no task with id '%s'\n", id.c_str());
      status = exit_usage;
      continue;
    }
    auto freed = remove_task(cfg, db, *rec, o.keep_records, false);
    if (!freed) {
      std::fprintf(stderr, "makima: cannot remove task %s: %s\n", id.c_str(),
                   describe(freed.error()).c_str());
      if (status == exit_ok)
        status = status_for(freed.error());
      continue;
    }
    std::printf("removed %s (%s freed)\n", id.c_str(),
                format_bytes(*freed).c_str());
  }
  return status;
}

// --- task prune --------------------------------------------------------------

struct prune_options {
  common_options common;
  std::string older_than;
  std::string state;
  bool dry_run = false;
  bool keep_records = false;
};

int cmd_prune(prune_options& o) {
  auto cfg = resolve_config(o.common);
  std::optional<int64_t> older;
  if (!o.older_than.empty()) {
    older = parse_span(o.older_than);
    if (!older)
      fail(exit_usage, "--older-than expects a duration such as 30s, 10m, "
                       "2h or 7d, got '"
                           + o.older_than + "'");
  }
  auto state = parse_state_flag(o.state);
  if (state && !is_terminal(*state))
    fail(exit_usage, std::string{"--state "} + to_string(*state)
                         + ": prune removes only finished tasks (succeeded, "
                           "failed, cancelled, timed_out, interrupted)");
  if (store::lock_holder(cfg.db_dir))
    fail(exit_usage, locked_message(cfg)
                         + "; prune needs it to itself: try again once it "
                           "ended");
  std::error_code err;
  if (!fs::exists(cfg.db_dir / "CURRENT", err)) {
    std::printf("nothing to prune\n");
    return exit_ok;
  }
  auto opened = open_primary(cfg);
  auto& db = *opened->db;
  auto now = now_ms();
  std::vector<task_record> picked;
  for (auto& [id, rec] : all_tasks(db)) {
    auto st = effective_state(rec);
    if (state && st != *state)
      continue;
    if (older) {
      int64_t ended = rec.finished_at > 0  ? rec.finished_at
                      : rec.updated_at > 0 ? rec.updated_at
                                           : rec.spec.created_at;
      if (now - ended < *older)
        continue;
    }
    picked.push_back(rec);
  }
  picked = select_tasks(std::move(picked), std::nullopt);
  uint64_t total = 0;
  size_t removed = 0;
  int status = exit_ok;
  for (auto& rec : picked) {
    auto freed = remove_task(cfg, db, rec, o.keep_records, o.dry_run);
    if (!freed) {
      std::fprintf(stderr, "makima: cannot remove task %s: %s\n",
                   rec.spec.id.c_str(), describe(freed.error()).c_str());
      status = status_for(freed.error());
      continue;
    }
    std::printf("%s %s (%s, %s)\n", o.dry_run ? "would remove" : "removed",
                rec.spec.id.c_str(), to_string(effective_state(rec)),
                format_bytes(*freed).c_str());
    total += *freed;
    ++removed;
  }
  std::printf("%s %zu task%s, %s %s\n", o.dry_run ? "would prune" : "pruned",
              removed, removed == 1 ? "" : "s", format_bytes(total).c_str(),
              o.dry_run ? "to free" : "freed");
  return status;
}

// --- gc
// ------------------------------------------------------------------------

/// Runs `git args…` (stdout and stderr to /dev/null); its exit status, or
/// -1 when git could not be started.
int run_git(const std::vector<std::string>& args) {
  pid_t pid = ::fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> argv;
    std::string git = "git";
    argv.push_back(git.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    if (auto* f = std::freopen("/dev/null", "w", stdout); f == nullptr)
      ::_exit(126);
    if (auto* f = std::freopen("/dev/null", "w", stderr); f == nullptr)
      ::_exit(126);
    ::execvp("git", argv.data());
    ::_exit(127);
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      return -1;
  if (WIFEXITED(st))
    return WEXITSTATUS(st) == 127 ? -1 : WEXITSTATUS(st);
  return 128 + WTERMSIG(st);
}

int cmd_gc(const common_options& common) {
  auto cfg = resolve_config(common);
  if (store::lock_holder(cfg.db_dir))
    fail(exit_usage, locked_message(cfg)
                         + "; gc needs it to itself: try again once it ended");
  // Held for the whole gc: no other makima starts (or runs a task) here
  // meanwhile.
  auto opened = open_primary(cfg);
  auto& db = *opened->db;
  auto tasks = all_tasks(db);
  std::error_code err;
  // Orphans: worktree and state dirs whose task records are gone.
  uint64_t orphan_bytes = 0;
  size_t orphans = 0;
  for (auto* root : {&cfg.worktrees_dir, &cfg.state_dir}) {
    std::vector<fs::path> doomed;
    for (fs::directory_iterator it{*root, err}, end; !err && it != end;
         it.increment(err))
      if (tasks.count(it->path().filename().string()) == 0)
        doomed.push_back(it->path());
    err.clear();
    for (auto& p : doomed) {
      auto n = dir_bytes(p);
      fs::remove_all(p, err);
      if (err) {
        std::fprintf(stderr, "makima: cannot remove %s: %s\n", p.c_str(),
                     err.message().c_str());
        err.clear();
        continue;
      }
      std::printf("removed orphan %s (%s)\n", p.c_str(),
                  format_bytes(n).c_str());
      orphan_bytes += n;
      ++orphans;
    }
  }
  // Mirrors: libgit2 has no gc; the git CLI does it when installed.
  std::vector<fs::path> mirrors;
  for (fs::directory_iterator it{cfg.repos_dir, err}, end; !err && it != end;
       it.increment(err))
    if (it->is_directory() && it->path().extension() == ".git")
      mirrors.push_back(it->path());
  err.clear();
  std::sort(mirrors.begin(), mirrors.end());
  for (auto& m : mirrors) {
    // Branches makima/<id> and refs/wip/<id> of tasks whose records are gone.
    if (auto mm = git::mirror::open_path(m)) {
      auto n = mm->prune_task_refs(
          [&](const std::string& id) { return tasks.count(id) > 0; });
      if (!n)
        std::fprintf(stderr, "makima: %s\n", describe(n.error()).c_str());
      else if (*n > 0)
        std::printf("mirror %s: %zu orphan task ref%s deleted\n",
                    m.filename().c_str(), *n, *n == 1 ? "" : "s");
    }
  }
  uint64_t repos_before = dir_bytes(cfg.repos_dir);
  bool have_git = mirrors.empty() || run_git({"--version"}) == 0;
  if (!have_git)
    std::printf("mirrors: git is not installed; %zu mirror%s not compacted "
                "(%s)\n",
                mirrors.size(), mirrors.size() == 1 ? "" : "s",
                format_bytes(repos_before).c_str());
  for (auto& m : have_git ? mirrors : std::vector<fs::path>{}) {
    auto before = dir_bytes(m);
    // Worktree metadata of removed worktrees first, then the objects.
    run_git({"-C", m.string(), "worktree", "prune"});
    int rc = run_git({"-C", m.string(), "gc", "--quiet"});
    auto after = dir_bytes(m);
    if (rc != 0)
      std::fprintf(stderr, "makima: git gc failed in %s (exit %d)\n", m.c_str(),
                   rc);
    std::printf("mirror %s: %s -> %s\n", m.filename().c_str(),
                format_bytes(before).c_str(), format_bytes(after).c_str());
  }
  auto db_before = dir_bytes(cfg.db_dir);
  if (auto e = db.compact())
    fail(status_for(e), describe(e));
  auto db_after = dir_bytes(cfg.db_dir);
  std::printf("database: %s -> %s\n", format_bytes(db_before).c_str(),
              format_bytes(db_after).c_str());
  if (have_git && !mirrors.empty())
    std::printf("mirrors: %s -> %s\n", format_bytes(repos_before).c_str(),
                format_bytes(dir_bytes(cfg.repos_dir)).c_str());
  std::printf("orphans: %zu removed (%s)\n", orphans,
              format_bytes(orphan_bytes).c_str());
  return exit_ok;
}

} // namespace

void add_task_commands(CLI::App& task, CLI::App& app, command_table& out) {
  auto rm_opts = std::make_shared<rm_options>();
  auto rm = task.add_subcommand(
      "rm", "remove finished tasks: worktree, branch makima/ID in the "
            "mirror, state dir and records");
  add_common(rm, rm_opts->common);
  rm->add_option("id", rm_opts->ids, "task ids")->required();
  rm->add_flag("--keep-records", rm_opts->keep_records,
               "keep the task's spec, history and output (remove only its "
               "files)");
  out.emplace_back(rm, [rm_opts] { return cmd_rm(*rm_opts); });

  auto prune_opts = std::make_shared<prune_options>();
  auto prune = task.add_subcommand(
      "prune", "remove every finished task (as `task rm` does) matching the "
               "filters; prints what it removed and the bytes freed");
  add_common(prune, prune_opts->common);
  prune->add_option("--older-than", prune_opts->older_than,
                    "only tasks that ended longer ago than this (30s, 10m, "
                    "2h, 7d)");
  prune->add_option("--state", prune_opts->state,
                    "only tasks in this final state (succeeded, failed, "
                    "cancelled, timed_out, interrupted)");
  prune->add_flag("--dry-run", prune_opts->dry_run,
                  "print what would be removed, remove nothing");
  prune->add_flag("--keep-records", prune_opts->keep_records,
                  "keep the tasks' records (remove only their files)");
  out.emplace_back(prune, [prune_opts] { return cmd_prune(*prune_opts); });

  auto gc_opts = std::make_shared<common_options>();
  auto gc = app.add_subcommand(
      "gc", "compact the data dir: git gc of every mirror (needs git), "
            "orphan worktree and state dirs removed, database compacted");
  add_common(gc, *gc_opts);
  out.emplace_back(gc, [gc_opts] { return cmd_gc(*gc_opts); });
}

} // namespace makima::app
