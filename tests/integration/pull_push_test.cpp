// A task moves between the fleet and a laptop (issue 11, docs/protocol.md
// §14): `makima task pull` has the task's daemon checkpoint it, the server
// ends it handed_off and the laptop's data dir gets it back to resume;
// `makima task push` checkpoints a local task into the store and the fleet
// takes it (back). Real server, daemon and CLI processes on 127.0.0.1, a
// file:// store both sides share.
#include "tests/integration/fleet.hpp"

using namespace makima::it;

namespace {

// Counts in its state dir up to 10, a file per step, 0.25 s apart: a
// resumed attempt starts at the counter it finds.
const char* stepper =
    "i=$(cat \"$MAKIMA_STATE_DIR/n\" 2>/dev/null || echo 0); "
    "echo \"start $i resumed=$MAKIMA_RESUMED\"; "
    "while [ $i -lt 10 ]; do echo $i > step-$i; i=$((i+1)); "
    "echo $i > \"$MAKIMA_STATE_DIR/n\"; sleep 0.25; done; echo done";

struct fleet_with_store {
  env e;
  fs::path origin;
  std::string store;
  server_proc srv;
  daemon_proc d;
  std::unique_ptr<api> http;

  bool start(bool with_store = true) {
    origin = makima::test::make_repo(e.root() / "origin", {5, 1});
    store = "file://" + (e.root() / "store").string();
    if (!srv.launch(e, server_args(e.root() / "server")))
      return false;
    std::vector<std::string> extra{"--pool", "k8s", "--checkpoint-interval",
                                   "0.5"};
    if (with_store) {
      extra.push_back("--store");
      extra.push_back(store);
    }
    if (!d.launch(e, srv.ws(), "d1", e.root() / "d1", extra))
      return false;
    http = std::make_unique<api>(api{srv.http()});
    return true;
  }
  /// `makima task SUB ID --server … --api-key … EXTRA…`
  run_result task(const std::string& sub, const std::string& id,
                  std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{MAKIMA_BINARY, "task",     sub,
                                  id,            "--server", srv.http(),
                                  "--api-key",   user_key};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return makima::test::run(argv, e.opts(60000ms));
  }
  bool running_with_a_checkpoint(const std::string& id) {
    return eventually(
        [&] {
          auto t = http->task(id);
          return t.value("state", "") == "running"
                 && !t.value("checkpoint", "").empty();
        },
        20000ms);
  }
};

} // namespace

TEST(task_pull_push, a_pulled_task_resumes_on_the_laptop_and_goes_back) {
  fleet_with_store f;
  ASSERT_TRUE(f.start());
  ASSERT_EQ(f.http->submit({{"id", "pp1"},
                            {"repo", f.origin.string()},
                            {"argv", {"sh", "-c", stepper}}}),
            "pp1");
  ASSERT_TRUE(f.running_with_a_checkpoint("pp1")) << f.d.output();
  auto laptop = f.e.root() / "laptop";
  auto pull = f.task("pull", "pp1",
                     {"--data-dir", laptop.string(), "--store", f.store});
  ASSERT_EQ(pull.exit_code, 0) << pull.err << f.d.output();
  // The server let go of it at the final checkpoint.
  auto rec = f.http->task("pp1");
  EXPECT_EQ(rec.value("state", ""), "handed_off") << rec.dump();
  auto ref = rec.value("checkpoint", "");
  EXPECT_EQ(ref.rfind("pp1/", 0), 0u) << rec.dump();
  EXPECT_NE(pull.err.find(ref), std::string::npos) << pull.err;
  // On the laptop: interrupted, then resumed to the end from the counter.
  auto resume = makima::test::run({MAKIMA_BINARY, "task", "resume", "pp1",
                                   "--data-dir", laptop.string(), "--quiet"},
                                  f.e.opts(60000ms));
  ASSERT_EQ(resume.exit_code, 0) << resume.err;
  EXPECT_NE(resume.out.find("resumed=1"), std::string::npos) << resume.out;
  EXPECT_EQ(resume.out.find("start 0 "), std::string::npos) << resume.out;
  for (int i = 0; i < 10; ++i)
    EXPECT_TRUE(fs::exists(laptop / "worktrees/pp1" / ("step-" + std::to_string(i))))
        << i;
  // Back to the fleet: it is taken back and goes on from the pushed
  // checkpoint (nothing left to do but say so).
  auto push = f.task("push", "pp1",
                     {"--data-dir", laptop.string(), "--store", f.store});
  ASSERT_EQ(push.exit_code, 0) << push.err;
  EXPECT_EQ(push.out, "pp1\n");
  ASSERT_TRUE(f.http->wait_terminal({"pp1"}, 30000ms)) << f.d.output();
  rec = f.http->task("pp1");
  EXPECT_EQ(rec.value("state", ""), "succeeded") << rec.dump();
  EXPECT_NE(rec.value("resume_from", ""), ref) << rec.dump();
  auto out = f.http->output("pp1").out;
  EXPECT_NE(out.find("start 10 resumed=1"), std::string::npos) << out;
  EXPECT_EQ(f.http->metric("makima_migrations_total{cause=\"push\",from_pool="
                           "\"laptop\",to_pool=\"k8s\"}"),
            1);
}

TEST(task_pull_push, a_laptop_task_is_pushed_into_the_fleet) {
  fleet_with_store f;
  ASSERT_TRUE(f.start());
  // A local task, interrupted after 3 steps (it kills its own makima).
  auto laptop = f.e.root() / "laptop";
  auto local = makima::test::run(
      {MAKIMA_BINARY, "run", "--data-dir", laptop.string(), "--id", "lp1",
       "--repo", f.origin.string(), "--quiet", "--", "sh", "-c",
       "i=$(cat \"$MAKIMA_STATE_DIR/n\" 2>/dev/null || echo 0); "
       "if [ \"$MAKIMA_RESUMED\" != 1 ]; then echo 3 > \"$MAKIMA_STATE_DIR/n\"; "
       "touch early; kill -9 $PPID; sleep 5; fi; "
       "echo \"fleet from $i\"; touch late"},
      f.e.opts(30000ms));
  ASSERT_NE(local.exit_code, 0);
  auto push = f.task("push", "lp1",
                     {"--data-dir", laptop.string(), "--store", f.store,
                      "--selector", "pool=k8s"});
  ASSERT_EQ(push.exit_code, 0) << push.err;
  ASSERT_TRUE(f.http->wait_terminal({"lp1"}, 30000ms)) << f.d.output();
  auto rec = f.http->task("lp1");
  EXPECT_EQ(rec.value("state", ""), "succeeded") << rec.dump();
  EXPECT_EQ(rec.value("resume_from", "").rfind("lp1/", 0), 0u) << rec.dump();
  EXPECT_NE(f.http->output("lp1").out.find("fleet from 3"), std::string::npos);
  // The daemon's worktree has the laptop's file and its own.
  EXPECT_TRUE(fs::exists(f.e.root() / "d1/worktrees/lp1/early"));
  EXPECT_TRUE(fs::exists(f.e.root() / "d1/worktrees/lp1/late"));
}

TEST(task_pull_push, refusals_keep_the_task_where_it_is) {
  fleet_with_store f;
  ASSERT_TRUE(f.start(/*with_store=*/false));
  ASSERT_EQ(f.http->submit({{"id", "nr1"}, {"argv", {"sleep", "30"}}}), "nr1");
  ASSERT_TRUE(eventually([&] { return f.http->state("nr1") == "running"; },
                         20000ms));
  auto laptop = f.e.root() / "laptop";
  // No checkpoint anywhere (the daemon has no store): refused, and the
  // attempt is not disturbed.
  auto pull = f.task("pull", "nr1",
                     {"--data-dir", laptop.string(), "--store", f.store});
  EXPECT_EQ(pull.exit_code, 2) << pull.err;
  EXPECT_NE(pull.err.find("no checkpoint"), std::string::npos) << pull.err;
  auto rec = f.http->task("nr1");
  EXPECT_EQ(rec.value("state", ""), "running") << rec.dump();
  EXPECT_EQ(rec.value("attempt", 0), 1) << rec.dump();
  EXPECT_FALSE(fs::exists(laptop / "worktrees/nr1"));
  // An unknown task, and pushing what the laptop does not have.
  auto unknown = f.task("pull", "nope", {"--data-dir", laptop.string()});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.err;
  auto push = f.task("push", "nope", {"--data-dir", laptop.string(),
                                      "--store", f.store});
  EXPECT_EQ(push.exit_code, 2) << push.err;
  EXPECT_NE(push.err.find("no task"), std::string::npos) << push.err;
  // A pull into a data dir that already has the task: refused before the
  // fleet lets go.
  auto had = makima::test::run({MAKIMA_BINARY, "run", "--data-dir",
                                laptop.string(), "--id", "nr1", "--quiet",
                                "--", "true"},
                               f.e.opts());
  ASSERT_EQ(had.exit_code, 0) << had.err;
  auto again = f.task("pull", "nr1",
                      {"--data-dir", laptop.string(), "--store", f.store});
  EXPECT_EQ(again.exit_code, 2) << again.err;
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
  EXPECT_NE(f.http->state("nr1"), "handed_off");
}
