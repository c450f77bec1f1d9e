// `makima task checkpoint|restore` and `makima checkpoint list|show|verify|gc`:
// checkpoints of a data dir's tasks in the object store (file:// or s3://),
// see docs/checkpoint-format.md. Every command runs on the main thread (no
// actor system): the blocking calls of actors/checkpoint.hpp are fine here.
#include "runtime/app/cli.hpp"

#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <map>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "actors/checkpoint.hpp"
#include "actors/messages.hpp"
#include "runtime/error.hpp"
#include "runtime/ids.hpp"
#include "runtime/store/db.hpp"
#include "runtime/store/object_store.hpp"

namespace makima::app {

namespace fs = std::filesystem;
using json = nlohmann::json;

void add_store_flags(CLI::App* cmd, store_flags& f) {
  cmd->add_option("--store", f.url,
                  "object store of checkpoints: file:///abs/path or "
                  "s3://BUCKET[/PREFIX] (default: $MAKIMA_STORE, else "
                  "file://DATA/store)");
  cmd->add_option("--s3-endpoint", f.s3_endpoint,
                  "S3 endpoint URL, e.g. https://ACCOUNT.r2.cloudflarestorage."
                  "com (default: $MAKIMA_S3_ENDPOINT)");
  cmd->add_option("--s3-region", f.s3_region,
                  "SigV4 region (default: $MAKIMA_S3_REGION, else auto)");
  cmd->add_option("--checkpoint-key", f.key,
                  "HMAC key: sign manifests, refuse unsigned or mis-signed "
                  "ones (prefer $MAKIMA_CHECKPOINT_KEY: a flag shows in ps)");
}

void apply_store_flags(config& cfg, const store_flags& f) {
  auto set = [&](const char* key, const std::string& v, const char* flag) {
    if (v.empty())
      return;
    if (auto err = set_config_value(cfg, key, v, flag))
      fail(exit_usage, describe(err));
    cfg.origins[key] = flag;
  };
  set("checkpoint.store", f.url, "--store");
  set("checkpoint.s3_endpoint", f.s3_endpoint, "--s3-endpoint");
  set("checkpoint.s3_region", f.s3_region, "--s3-region");
  set("checkpoint.key", f.key, "--checkpoint-key");
}

// Adds --store, --s3-endpoint, --s3-region and --checkpoint-interval to
/// `cmd` (run, task resume).
void add_checkpoint_flags(CLI::App* cmd, store_flags& store, double& interval) {
  add_store_flags(cmd, store);
  check_number(cmd->add_option("--checkpoint-interval", interval,
                               "seconds between checkpoints while a task runs "
                               "(0 = off; default: checkpoint.interval, else "
                               "0 for run and task resume, 10 for daemon)"),
               number_kind::seconds, 0, max_timeout_seconds);
}

// Applies the flags of add_checkpoint_flags to `cfg`.
void apply_checkpoint_flags(config& c, const store_flags& store,
                            double interval) {
  apply_store_flags(c, store);
  if (interval >= 0) {
    c.checkpoint_interval = interval;
    c.origins["checkpoint.interval"] = "--checkpoint-interval";
  }
}

std::unique_ptr<store::object_store> open_checkpoint_store(const config& cfg) {
  store::object_store_options o;
  o.url = cfg.store_url;
  o.s3_endpoint = cfg.s3_endpoint;
  o.s3_region = cfg.s3_region;
  o.access_key = cfg.s3_access_key_id;
  o.secret_key = cfg.s3_secret_access_key;
  o.session_token = cfg.s3_session_token;
  auto os = store::open_object_store(o);
  if (!os)
    fail(status_for(os.error()), describe(os.error()));
  return std::move(*os);
}

checkpoint::settings checkpoint_settings(const config& cfg) {
  checkpoint::settings s;
  s.repos_dir = cfg.repos_dir;
  s.worktrees_dir = cfg.worktrees_dir;
  s.state_root = cfg.state_dir;
  s.work_dir = cfg.data_dir / "checkpoints";
  s.key = cfg.checkpoint_key;
  s.stop_task = cfg.checkpoint_stop_task;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) == 0)
    s.node = host;
  return s;
}

namespace {

std::unique_ptr<store::object_store> open_store(const config& cfg) {
  return open_checkpoint_store(cfg);
}

checkpoint::settings settings_for(const config& cfg) {
  return checkpoint_settings(cfg);
}

/// Leaves with the error of a checkpoint operation: the user's mistakes
/// (a bad reference, an existing task) exit 2, the rest 125.
[[noreturn]] void fail_with(const caf::error& err) {
  fail(status_for(err), describe(err));
}

checkpoint::reference reference_of(const std::string& text) {
  auto r = checkpoint::parse_reference(text);
  if (!r)
    fail(exit_usage, describe(r.error()));
  return *r;
}

struct store_command {
  common_options common;
  store_flags store;
  bool json = false;
};

config resolve(const store_command& o) {
  return resolve_config(o.common,
                        [&](config& c) { apply_store_flags(c, o.store); });
}

// --- task checkpoint ---------------------------------------------------------

// A task of this data dir that no makima runs: the database (opened
// read-write) and its record. Leaves with exit_usage when the data dir is
// held (`locked_why` says what to do) or has no such task.
std::pair<std::unique_ptr<opened_db>, task_record>
idle_task(const config& cfg, const std::string& id,
          const std::string& locked_why) {
  if (store::lock_holder(cfg.db_dir))
    fail(exit_usage, locked_data_dir_message(cfg) + locked_why);
  std::error_code fec;
  if (!fs::exists(cfg.db_dir / "CURRENT", fec))
    fail(exit_usage, "no task with id '" + id + "'");
  auto opened = open_primary(cfg);
  auto rec = stored_record(*opened->db, id);
  if (!rec)
    fail(exit_usage, "no task with id '" + id + "'");
  return {std::move(opened), std::move(*rec)};
}

struct checkpoint_options : store_command {
  std::string id;
  server_flags server;
};

int cmd_checkpoint(checkpoint_options& o) {
  // A task in a fleet: its daemon takes the checkpoint (with --server, or
  // MAKIMA_SERVER without --data-dir, as `task show`).
  if (auto target = resolve_server(o.common, o.server, false))
    return remote_checkpoint(*target, o.id);
  auto cfg = resolve(o);
  if (auto err = validate_task_id(o.id))
    fail(exit_usage, describe(err));
  auto [opened, rec] = idle_task(
      cfg, o.id,
      " (a task that makima runs is checkpointed by it: `makima run "
      "--checkpoint-interval SECONDS`)");
  auto os = open_store(cfg);
  auto t = checkpoint::take(*opened->db, rec, *os, settings_for(cfg));
  if (!t)
    fail_with(t.error());
  std::fprintf(stderr,
               "makima: checkpoint %s/%" PRIu64 " of task %s in %s: %" PRIu64
               " blobs uploaded (%s), %" PRId64 " ms\n",
               o.id.c_str(), t->m.n, o.id.c_str(), os->describe().c_str(),
               t->blobs_uploaded, format_bytes(t->bytes_uploaded).c_str(),
               t->total_ms);
  std::printf("%s/%" PRIu64 "\n", o.id.c_str(), t->m.n);
  return exit_ok;
}

// --- task restore ------------------------------------------------------------

struct restore_options : store_command {
  std::string ref;
};

int cmd_restore(restore_options& o) {
  auto cfg = resolve(o);
  auto ref = reference_of(o.ref);
  auto os = open_store(cfg);
  auto opened = open_primary(cfg);
  auto r = checkpoint::restore(*opened->db, *os, ref, settings_for(cfg));
  if (!r)
    fail_with(r.error());
  std::fprintf(stderr,
               "makima: restored task %s from checkpoint %s/%" PRIu64
               " (%s downloaded%s, %" PRId64
               " ms): %s at attempt %u; continue it with `makima task "
               "resume %s`\n",
               r->rec.spec.id.c_str(), r->m.task.c_str(), r->m.n,
               format_bytes(r->bytes_downloaded).c_str(),
               r->cloned ? ", mirror cloned" : "", r->total_ms,
               to_string(r->rec.state), r->rec.attempt, r->rec.spec.id.c_str());
  std::printf("%s\n", r->rec.spec.id.c_str());
  return exit_ok;
}

// --- task pull / push: between a fleet and this data dir -----------------

struct pull_options : store_command {
  std::string id;
  server_flags server;
};

// Fleet → here: the server hands the task off at its final checkpoint,
// which is restored into this data dir (state interrupted).
int cmd_pull(pull_options& o) {
  if (auto err = validate_task_id(o.id))
    fail(exit_usage, describe(err));
  auto target = resolve_server(o.common, o.server, true);
  auto cfg = resolve(o);
  auto os = open_store(cfg);
  {
    // Refuse before the fleet lets go of it.
    auto opened = open_primary(cfg);
    if (stored_record(*opened->db, o.id))
      fail(exit_usage, "task " + o.id + " already exists in "
                           + cfg.data_dir.string()
                           + "; remove it first (makima task rm " + o.id
                           + ")");
  }
  auto ref = remote_pull(*target, o.id);
  std::fprintf(stderr, "makima: task %s left the fleet at checkpoint %s\n",
               o.id.c_str(), ref.c_str());
  restore_options r;
  r.common = o.common;
  r.store = o.store;
  r.ref = ref;
  return cmd_restore(r);
}

struct push_options : store_command {
  std::string id;
  server_flags server;
  std::vector<std::string> selector;
};

// Here → fleet: a checkpoint of the local task (not running) into the
// store, then a submission that goes on from it.
int cmd_push(push_options& o) {
  if (auto err = validate_task_id(o.id))
    fail(exit_usage, describe(err));
  auto target = resolve_server(o.common, o.server, true);
  auto cfg = resolve(o);
  auto [opened, rec] = idle_task(
      cfg, o.id, " (stop the task first: a running task cannot be pushed)");
  auto spec = rec.spec;
  if (!o.selector.empty())
    spec.selector = selector_of(o.selector);
  auto os = open_store(cfg);
  auto t = checkpoint::take(*opened->db, rec, *os, settings_for(cfg));
  if (!t)
    fail_with(t.error());
  auto ref = o.id + "/" + std::to_string(t->m.n);
  auto id = remote_push(*target, spec, ref, t->m.covers_seq);
  std::fprintf(stderr,
               "makima: task %s goes on in the fleet from checkpoint %s "
               "(%s uploaded); this data dir keeps its copy (makima task rm "
               "%s removes it)\n",
               id.c_str(), ref.c_str(), format_bytes(t->bytes_uploaded).c_str(),
               id.c_str());
  std::printf("%s\n", id.c_str());
  return exit_ok;
}

// --- checkpoint list / show / verify / gc -----------------------------------

uint64_t blob_bytes(const checkpoint::manifest& m) {
  uint64_t n = 0;
  for (auto& b : m.blobs)
    n += b.size;
  return n;
}

json summary(const checkpoint::manifest& m) {
  return {{"ref", m.task + "/" + std::to_string(m.n)},
          {"task", m.task},
          {"n", m.n},
          {"parent", m.parent ? json(*m.parent) : json(nullptr)},
          {"created_at", m.created_at},
          {"node", m.node},
          {"attempt", m.attempt},
          {"state", m.state},
          {"covers_seq", m.covers_seq},
          {"blobs", m.blobs.size()},
          {"bytes", blob_bytes(m)},
          {"signed", m.signed_}};
}

struct list_options : store_command {
  std::string task;
};

int cmd_list(list_options& o) {
  auto cfg = resolve(o);
  if (!o.task.empty())
    if (auto err = validate_task_id(o.task))
      fail(exit_usage, describe(err));
  auto os = open_store(cfg);
  auto s = settings_for(cfg);
  std::vector<std::string> tasks;
  if (!o.task.empty()) {
    tasks.push_back(o.task);
  } else {
    auto objs = os->list("tasks/");
    if (!objs)
      fail_with(objs.error());
    for (auto& obj : *objs) {
      auto rest = obj.key.substr(6);
      auto slash = rest.find('/');
      if (slash != std::string::npos
          && (tasks.empty() || tasks.back() != rest.substr(0, slash)))
        tasks.push_back(rest.substr(0, slash));
    }
  }
  auto rows = json::array();
  int status = exit_ok;
  for (auto& task : tasks) {
    auto ns = checkpoint::numbers(*os, task);
    if (!ns)
      fail_with(ns.error());
    for (auto n : *ns) {
      auto m = checkpoint::read_manifest(*os, {task, n}, s.key, s.limits);
      if (!m) {
        std::fprintf(stderr, "makima: %s/%" PRIu64 ": %s\n", task.c_str(), n,
                     describe(m.error()).c_str());
        status = exit_internal;
        continue;
      }
      rows.push_back(summary(*m));
    }
  }
  if (o.json) {
    std::printf("%s\n", rows.dump(2).c_str());
    return status;
  }
  if (rows.empty()) {
    std::fprintf(stderr, "makima: no checkpoints in %s\n",
                 os->describe().c_str());
    return status;
  }
  std::printf("%-34s %-24s %-6s %-7s %-11s %-8s %s\n", "REF", "CREATED",
              "PARENT", "ATTEMPT", "STATE", "SEQ", "ADDED");
  for (auto& r : rows) {
    auto parent = r["parent"].is_null()
                      ? std::string{"full"}
                      : std::to_string(r["parent"].get<uint64_t>());
    std::printf("%-34s %-24s %-6s %-7u %-11s %-8" PRIu64 " %s\n",
                r["ref"].get<std::string>().c_str(),
                r["created_at"].get<std::string>().c_str(), parent.c_str(),
                r["attempt"].get<unsigned>(),
                r["state"].get<std::string>().c_str(),
                r["covers_seq"].get<uint64_t>(),
                format_bytes(r["bytes"].get<uint64_t>()).c_str());
  }
  return status;
}

struct ref_options : store_command {
  std::string ref;
};

int cmd_show(ref_options& o) {
  auto cfg = resolve(o);
  auto ref = reference_of(o.ref);
  auto os = open_store(cfg);
  auto s = settings_for(cfg);
  auto m = checkpoint::read_manifest(*os, ref, s.key, s.limits);
  if (!m)
    fail_with(m.error());
  if (o.json) {
    std::printf("%s\n", checkpoint::manifest_json(*m).c_str());
    return exit_ok;
  }
  auto line = [](const char* k, const std::string& v) {
    std::printf("%-13s %s\n", k, v.empty() ? "-" : v.c_str());
  };
  line("checkpoint:", m->task + "/" + std::to_string(m->n));
  line("parent:", m->parent ? m->task + "/" + std::to_string(*m->parent)
                            : std::string{"none (full checkpoint)"});
  line("created:", m->created_at);
  line("node:", m->node);
  line("attempt:", std::to_string(m->attempt));
  line("state:", m->state);
  line("output:", "seqs below " + std::to_string(m->covers_seq));
  line("paused:", std::to_string(m->pause_ms) + " ms");
  line("signed:", m->signed_ ? "yes (HMAC-SHA256)" : "no");
  if (!m->origin.empty()) {
    line("origin:", m->origin);
    line("base commit:", m->base_commit);
    line("branch:", m->branch);
    line("branch head:", m->branch_head);
    line("wip commit:", m->wip_commit);
  }
  std::printf("blobs:        %zu (%s added by this checkpoint)\n",
              m->blobs.size(), format_bytes(blob_bytes(*m)).c_str());
  for (auto& b : m->blobs)
    std::printf("  %-15s %s %10s%s\n", b.role.c_str(), b.sha256.c_str(),
                format_bytes(b.size).c_str(),
                b.cf.empty() ? "" : ("  " + b.cf).c_str());
  return exit_ok;
}

int cmd_verify(ref_options& o) {
  auto cfg = resolve(o);
  auto ref = reference_of(o.ref);
  auto os = open_store(cfg);
  auto v = checkpoint::verify(*os, ref, settings_for(cfg));
  if (!v) {
    // A failed verification is the answer, not makima failing: exit 1
    // (like fsck and `git fsck`); the store being down stays 125.
    auto code = code_of(v.error());
    bool answer =
        code == ec::checkpoint_corrupt || code == ec::checkpoint_version
        || code == ec::checkpoint_unsigned
        || code == ec::checkpoint_bad_signature || code == ec::checkpoint_limit;
    fail(answer ? 1 : status_for(v.error()), describe(v.error()));
  }
  auto& last = v->chain.back();
  std::printf("ok: checkpoint %s/%" PRIu64 ": %zu manifest%s back to the full "
              "checkpoint %" PRIu64 ", %" PRIu64 " blobs (%s) verified\n",
              last.task.c_str(), last.n, v->chain.size(),
              v->chain.size() == 1 ? "" : "s", v->chain.front().n, v->blobs,
              format_bytes(v->bytes).c_str());
  return exit_ok;
}

struct gc_options : store_command {
  uint64_t keep = 3;
};

int cmd_gc(gc_options& o) {
  auto cfg = resolve(o);
  auto os = open_store(cfg);
  auto c = checkpoint::gc(*os, o.keep, settings_for(cfg),
                          static_cast<int64_t>(std::time(nullptr)));
  if (!c)
    fail_with(c.error());
  std::printf("manifests: %" PRIu64 " kept, %" PRIu64 " deleted\n",
              c->manifests_kept, c->manifests_deleted);
  std::printf("blobs: %" PRIu64 " kept, %" PRIu64 " deleted (%s)\n",
              c->blobs_kept, c->blobs_deleted,
              format_bytes(c->bytes_deleted).c_str());
  return exit_ok;
}

template <class Options>
std::shared_ptr<Options> with_store(CLI::App* cmd) {
  auto o = std::make_shared<Options>();
  add_common(cmd, o->common);
  add_store_flags(cmd, o->store);
  return o;
}

} // namespace

void add_checkpoint_commands(CLI::App& task, CLI::App& app,
                             command_table& out) {
  auto take = task.add_subcommand(
      "checkpoint", "checkpoint a task now: its uncommitted work, state dir "
                    "and records; prints the reference TASK-ID/N. Locally a "
                    "task that is not running (interrupted, finished); with "
                    "--server a task running on a daemon");
  auto take_opts = with_store<checkpoint_options>(take);
  take->add_option("id", take_opts->id, "task id")->required();
  add_server_flags(take, take_opts->server);
  out.emplace_back(take, [take_opts] { return cmd_checkpoint(*take_opts); });

  auto restore = task.add_subcommand(
      "restore", "recreate a task from a checkpoint in this data dir (state "
                 "interrupted); then `makima task resume ID`");
  auto restore_opts = with_store<restore_options>(restore);
  restore
      ->add_option("ref", restore_opts->ref,
                   "TASK-ID (its latest checkpoint) or TASK-ID/N")
      ->required();
  out.emplace_back(restore,
                   [restore_opts] { return cmd_restore(*restore_opts); });

  auto pull = task.add_subcommand(
      "pull", "take a task out of the fleet into this data dir: its daemon "
              "checkpoints it, the server hands it off (handed_off), it is "
              "restored here; then `makima task resume ID`");
  auto pull_opts = with_store<pull_options>(pull);
  pull->add_option("id", pull_opts->id, "task id")->required();
  add_server_flags(pull, pull_opts->server);
  out.emplace_back(pull, [pull_opts] { return cmd_pull(*pull_opts); });

  auto push = task.add_subcommand(
      "push", "send a task of this data dir (not running) to the fleet: "
              "checkpoint it into the store and submit it to go on there");
  auto push_opts = with_store<push_options>(push);
  push->add_option("id", push_opts->id, "task id")->required();
  add_server_flags(push, push_opts->server);
  push->add_option("--selector", push_opts->selector,
                   "K=V a daemon must have (replaces the task's selector); "
                   "repeatable")
      ->type_size(1)
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  out.emplace_back(push, [push_opts] { return cmd_push(*push_opts); });

  auto cp = app.add_subcommand("checkpoint",
                               "list, show, verify and collect checkpoints "
                               "in the object store");
  cp->require_subcommand(1);
  auto list = cp->add_subcommand("list", "list checkpoints, oldest first");
  auto list_opts = with_store<list_options>(list);
  list->add_option("--task", list_opts->task, "only this task's");
  list->add_flag("--json", list_opts->json, "JSON output");
  out.emplace_back(list, [list_opts] { return cmd_list(*list_opts); });

  auto show = cp->add_subcommand(
      "show", "print a checkpoint's manifest (never a credential)");
  auto show_opts = with_store<ref_options>(show);
  show->add_option("ref", show_opts->ref, "TASK-ID or TASK-ID/N")->required();
  show->add_flag("--json", show_opts->json, "the manifest as JSON");
  out.emplace_back(show, [show_opts] { return cmd_show(*show_opts); });

  auto verify = cp->add_subcommand(
      "verify", "download a checkpoint and its chain and check every blob's "
                "SHA-256 (exit 1 when damaged)");
  auto verify_opts = with_store<ref_options>(verify);
  verify->add_option("ref", verify_opts->ref, "TASK-ID or TASK-ID/N")
      ->required();
  out.emplace_back(verify, [verify_opts] { return cmd_verify(*verify_opts); });

  auto gc = cp->add_subcommand(
      "gc", "keep each task's newest N checkpoints (and what they build "
            "on), delete the rest and the blobs nothing names (older than "
            "an hour)");
  auto gc_opts = with_store<gc_options>(gc);
  check_number(gc->add_option("--keep", gc_opts->keep,
                              "checkpoints kept per task (default 3)"),
               number_kind::whole, 1, 1000000);
  out.emplace_back(gc, [gc_opts] { return cmd_gc(*gc_opts); });
}

} // namespace makima::app
