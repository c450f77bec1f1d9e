// The TASK actor with a real reactor, real children and real RocksDB: the
// state machine's outcomes, and the rule that every fact reaches the LINK
// only after it is stored.
#include "actors/task.hpp"

#include <signal.h>

#include "actors/repo.hpp"
#include "tests/fixtures/git_repo.hpp"

#include <map>
#include <thread>

#include "tests/actors/actor_fixture.hpp"
#include "tests/fixtures/temp_dir.hpp"

using namespace makima;
using makima::test::actor_test;

namespace {

class task_actor_test : public actor_test {
protected:
  task_context context() {
    return task_context{persist,
                        link,
                        repo,
                        reactor,
                        dir.path() / "worktrees",
                        dir.path() / "state",
                        {"PATH=/usr/local/bin:/usr/bin:/bin", "KEEP=base"}};
  }

  /// Creates `rec`, runs one attempt and returns the final record.
  task_record run(task_record rec, std::function<void(task_actor)> poke = {}) {
    if (rec.attempt == 1)
      create(rec);
    auto before = log->results.size();
    auto handle = sys->spawn(task, rec, context());
    if (poke)
      poke(handle);
    EXPECT_TRUE(log->wait_results(before + 1, std::chrono::seconds(30)))
        << "no result";
    std::lock_guard<std::mutex> guard{log->mtx};
    return log->results.empty() ? task_record{} : log->results.back();
  }

  std::shared_ptr<process::reactor> reactor =
      std::make_shared<process::reactor>();
  repo_actor repo; // none: scratch tasks
};

// A TASK on a real REPO whose origin takes seconds to clone.
class task_prepare_test : public task_actor_test {
protected:
  void SetUp() override {
    task_actor_test::SetUp();
    origin =
        makima::test::make_large_repo(dir.path() / "origin", 800, 32 * 1024);
    repo = spawn_repo(*sys, origin.string(), dir.path() / "repos", "makima",
                      "makima@localhost");
  }
  void TearDown() override {
    caf::anon_send_exit(repo, caf::exit_reason::user_shutdown);
    repo = repo_actor{};
    task_actor_test::TearDown();
  }

  // Waits until the REPO has started the clone (its temp mirror exists).
  bool clone_started() {
    for (int i = 0; i < 3000; ++i) {
      std::error_code err;
      for (auto it =
               std::filesystem::directory_iterator(dir.path() / "repos", err);
           !err && it != std::filesystem::directory_iterator();
           it.increment(err))
        if (it->path().filename().string().find(".tmp-") != std::string::npos)
          return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  // Nothing half-made: no worktree dir, no task branch, and the repos dir
  // holds no temp mirror (a finished mirror may stay).
  void expect_nothing_half_made(const std::string& id) {
    EXPECT_FALSE(std::filesystem::exists(dir.path() / "worktrees" / id));
    std::error_code err;
    for (auto it =
             std::filesystem::directory_iterator(dir.path() / "repos", err);
         !err && it != std::filesystem::directory_iterator();
         it.increment(err)) {
      auto name = it->path().filename().string();
      EXPECT_EQ(name.find(".tmp-"), std::string::npos) << name;
      EXPECT_EQ(
          makima::test::git(it->path(), {"for-each-ref", "refs/heads/makima/"}),
          "")
          << name;
    }
  }

  std::filesystem::path origin;
};

} // namespace

TEST_F(task_actor_test, output_is_stored_before_it_is_reported) {
  auto rec =
      make_record("t1", {"sh", "-c",
                         "printf 'one\\n'; printf 'err\\n' >&2; "
                         "head -c 2000000 /dev/zero | tr '\\0' x; printf end"});
  auto result = run(rec);
  EXPECT_EQ(result.state, task_state::succeeded);
  EXPECT_EQ(result.exit_code, 0);
  std::lock_guard<std::mutex> guard{log->mtx};
  EXPECT_TRUE(log->violations.empty()) << log->violations.front();
  EXPECT_EQ(log->out, "one\n" + std::string(2'000'000, 'x') + "end");
  EXPECT_EQ(log->err, "err\n");
  for (size_t i = 0; i < log->seqs.size(); ++i)
    ASSERT_EQ(log->seqs[i], i) << "seqs must be dense and ordered";
  ASSERT_GE(log->states.size(), 1u);
  EXPECT_EQ(log->states.front(), task_state::running);
}

TEST_F(task_actor_test, final_record_is_stored) {
  auto result = run(make_record("t1", {"sh", "-c", "exit 3"}));
  EXPECT_EQ(result.state, task_state::failed);
  EXPECT_EQ(result.exit_code, 3);
  auto stored = get("t1");
  EXPECT_EQ(stored.state, task_state::failed);
  EXPECT_EQ(stored.exit_code, 3);
  EXPECT_GT(stored.finished_at, 0);
  EXPECT_EQ(exit_status_of(stored), 3);
}

TEST_F(task_actor_test, death_by_signal_is_128_plus_n) {
  auto result = run(make_record("t1", {"sh", "-c", "kill -9 $$"}));
  EXPECT_EQ(result.state, task_state::failed);
  EXPECT_EQ(result.signal, 9);
  EXPECT_EQ(result.exit_code, 137);
}

TEST_F(task_actor_test, command_not_found_fails_with_127) {
  auto result = run(make_record("t1", {"makima-no-such-command"}));
  EXPECT_EQ(result.state, task_state::failed);
  EXPECT_EQ(result.exit_code, 127);
  EXPECT_EQ(result.error_code, "command_not_found");
  EXPECT_NE(result.error.find("makima-no-such-command"), std::string::npos);
  EXPECT_EQ(exit_status_of(result), 127);
  EXPECT_EQ(get("t1").state, task_state::failed);
}

TEST_F(task_actor_test, environment_and_directories) {
  auto rec = make_record(
      "t1", {"sh", "-c",
             "printf '%s|%s|%s|%s|%s|%s|%s' \"$MAKIMA_TASK_ID\" "
             "\"$MAKIMA_ATTEMPT\" \"$MAKIMA_RESUMED\" \"$MAKIMA_STATE_DIR\" "
             "\"$MAKIMA_WORKTREE\" \"$KEEP\" \"$EXTRA\"; pwd >&2; ls -A >&2"});
  rec.spec.env = {"EXTRA=yes", "KEEP=task"};
  auto result = run(rec);
  ASSERT_EQ(result.state, task_state::succeeded);
  auto wt = (dir.path() / "worktrees/t1").string();
  auto sd = (dir.path() / "state/t1").string();
  std::lock_guard<std::mutex> guard{log->mtx};
  EXPECT_EQ(log->out, "t1|1|0|" + sd + "|" + wt + "|task|yes");
  EXPECT_EQ(log->err, wt + "\n"); // cwd is the (empty) scratch dir
  EXPECT_TRUE(std::filesystem::is_directory(sd));
}

TEST_F(task_actor_test, resumed_attempt_continues_seq_and_sees_resumed) {
  auto rec = make_record("t1", {"sh", "-c", "echo first"});
  run(rec);
  auto stored = get("t1");
  ASSERT_EQ(stored.next_seq, 1u);
  stored.attempt = 2;
  stored.spec.argv = {"sh", "-c", "echo $MAKIMA_ATTEMPT $MAKIMA_RESUMED"};
  auto result = run(stored);
  EXPECT_EQ(result.state, task_state::succeeded);
  EXPECT_EQ(result.attempt, 2u);
  std::lock_guard<std::mutex> guard{log->mtx};
  EXPECT_EQ(log->out, "first\n2 1\n");
  EXPECT_EQ(log->seqs, (std::vector<uint64_t>{0, 1}));
}

TEST_F(task_actor_test, cancel_terminates_the_process_group) {
  auto marker = dir.path() / "grandchild.pid";
  // Written aside and renamed, so the file exists only once it holds the
  // pid (a cancel between create and write left it empty: stoi threw).
  auto rec =
      make_record("t1", {"sh", "-c",
                         "sleep 60 & echo $! > " + marker.string()
                             + ".tmp && mv " + marker.string() + ".tmp "
                             + marker.string() + "; echo started; wait"});
  auto result = run(rec, [&](task_actor handle) {
    // Wait until the child is up before cancelling.
    for (int i = 0; i < 500 && !std::filesystem::exists(marker); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    caf::anon_send(handle, cancel_atom::value);
  });
  EXPECT_EQ(result.state, task_state::cancelled);
  EXPECT_EQ(exit_status_of(result), 130);
  auto pid = std::stoi(makima::test::read_file(marker));
  // The grandchild got SIGTERM with its group; give the kernel a moment.
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = ::kill(pid, 0) != 0
           || makima::test::read_file("/proc/" + std::to_string(pid) + "/stat")
                      .find(") Z ")
                  != std::string::npos;
    if (!gone)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone) << "grandchild " << pid << " survived the cancel";
}

TEST_F(task_actor_test, timeout_escalates_to_sigkill_after_grace) {
  auto rec = make_record("t1", {"sh", "-c", "trap '' TERM; echo up; sleep 60"});
  rec.spec.timeout = 0.3;
  rec.spec.grace = 0.3;
  auto start = std::chrono::steady_clock::now();
  auto result = run(rec);
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(result.state, task_state::timed_out);
  EXPECT_EQ(result.signal, SIGKILL);
  EXPECT_EQ(exit_status_of(result), 124);
  EXPECT_LT(took, std::chrono::seconds(20)) << "SIGKILL never came";
}

TEST_F(task_prepare_test, cancel_while_cloning_aborts_the_clone) {
  auto rec = make_record("t1", {"sh", "-c", "echo ran > ran.txt"});
  auto result = run(rec, [&](task_actor handle) {
    ASSERT_TRUE(clone_started());
    caf::anon_send(handle, cancel_atom::value);
  });
  EXPECT_EQ(result.state, task_state::cancelled);
  EXPECT_EQ(result.error_code, "cancelled") << result.error;
  EXPECT_EQ(result.started_at, 0); // the child never ran
  expect_nothing_half_made("t1");
  // The next task clones afresh and runs.
  auto next = run(make_record("t2", {"sh", "-c", "test -f README.md"}));
  EXPECT_EQ(next.state, task_state::succeeded) << next.error;
  // REPO's progress reached the LINK through the TASK: each phase starts,
  // updates and ends with its counts.
  std::lock_guard<std::mutex> guard{log->mtx};
  std::map<std::string, task_progress> ended;
  for (const auto& p : log->progress)
    if (p.task == "t2" && p.finished)
      ended[p.phase] = p;
  ASSERT_EQ(ended.count("cloning"), 1u);
  EXPECT_EQ(ended["cloning"].done, ended["cloning"].total);
  EXPECT_GT(ended["cloning"].bytes, 800u * 32 * 1024);
  EXPECT_EQ(ended["cloning"].target, origin.string());
  ASSERT_EQ(ended.count("checking_out"), 1u);
  EXPECT_EQ(ended["checking_out"].done, 801u); // the blobs and README.md
}

TEST_F(task_prepare_test, timeout_while_cloning_ends_as_timed_out) {
  auto rec = make_record("t1", {"true"});
  rec.spec.timeout = 0.05;
  auto result = run(rec);
  EXPECT_EQ(result.state, task_state::timed_out) << result.error;
  EXPECT_EQ(result.started_at, 0);
  expect_nothing_half_made("t1");
}
