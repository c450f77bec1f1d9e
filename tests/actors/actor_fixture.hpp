// Fixture for actor tests: a real actor system, a real RocksDB in a temp
// dir behind the PERSISTENCE actor, and a recording LINK that checks, for
// every message it receives, that the reported fact is already stored.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <gtest/gtest.h>

#include "actors/actors.hpp"
#include "actors/persistence.hpp"
#include "runtime/error.hpp"
#include "runtime/store/db.hpp"
#include "tests/fixtures/actor_system.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace makima::test {

/// What the recording LINK saw.
struct link_log {
  std::mutex mtx;
  std::condition_variable cv;
  std::string out;
  std::string err;
  std::vector<uint64_t> seqs;
  std::vector<task_state> states;
  std::vector<task_record> results;
  std::vector<task_progress> progress;
  /// Checkpoints reported by TASK actors.
  std::vector<checkpoint_report> checkpoints;
  std::vector<std::string> checkpoint_failures;
  /// Restores reported with a state transition (resumed attempts).
  std::vector<restore_report> restores;
  /// Facts that reached the LINK before they were in RocksDB.
  std::vector<std::string> violations;

  bool wait_results(size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> guard{mtx};
    return cv.wait_for(guard, timeout, [&] { return results.size() >= n; });
  }
};

struct recording_link_state {
  std::shared_ptr<link_log> log;
  std::shared_ptr<store::db> db;
  static inline const char* name = "recording_link";
};

inline link_actor::behavior_type
recording_link(link_actor::stateful_pointer<recording_link_state> self,
               std::shared_ptr<link_log> log, std::shared_ptr<store::db> db) {
  self->state.log = std::move(log);
  self->state.db = std::move(db);
  auto check_record = [self](const task_record& rec, const char* what) {
    auto stored = self->state.db->get_task(rec.spec.id);
    std::lock_guard<std::mutex> guard{self->state.log->mtx};
    if (!stored || !*stored) {
      self->state.log->violations.push_back(std::string{what}
                                            + ": record missing");
      return;
    }
    auto parsed = record_from_json(**stored);
    if (!parsed || parsed->state != rec.state)
      self->state.log->violations.push_back(
          std::string{what} + ": stored state differs from reported "
          + to_string(rec.state));
  };
  return {
      [self](output_atom, const std::string& id, uint32_t,
             const std::vector<output_chunk>& chunks) -> caf::result<ok_atom> {
        auto& st = self->state;
        for (auto& c : chunks) {
          bool found = false;
          st.db->for_each_output(id, c.seq, [&](const store::stored_chunk& s) {
            found =
                s.seq == c.seq && s.bytes == c.bytes && s.stream == c.stream;
            return false;
          });
          std::lock_guard<std::mutex> guard{st.log->mtx};
          if (!found)
            st.log->violations.push_back("chunk " + std::to_string(c.seq)
                                         + " reported before it was stored");
          (c.stream == 2 ? st.log->err : st.log->out) += c.bytes;
          st.log->seqs.push_back(c.seq);
        }
        return ok_atom::value;
      },
      [self, check_record](state_atom, const task_record& rec) {
        check_record(rec, "state");
        std::lock_guard<std::mutex> guard{self->state.log->mtx};
        self->state.log->states.push_back(rec.state);
      },
      [self, check_record](state_atom, const task_record& rec,
                           const restore_report& r) {
        check_record(rec, "state");
        std::lock_guard<std::mutex> guard{self->state.log->mtx};
        self->state.log->states.push_back(rec.state);
        self->state.log->restores.push_back(r);
      },
      [self, check_record](result_atom, const task_record& rec) {
        if (rec.error_code != "store_full" && rec.error_code != "store_error")
          check_record(rec, "result");
        std::lock_guard<std::mutex> guard{self->state.log->mtx};
        self->state.log->results.push_back(rec);
        self->state.log->cv.notify_all();
      },
      [self](progress_atom, const task_progress& p) {
        std::lock_guard<std::mutex> guard{self->state.log->mtx};
        self->state.log->progress.push_back(p);
      },
      [self](checkpoint_atom, const std::string&, uint32_t,
             const checkpoint_report& r) {
        std::lock_guard<std::mutex> guard{self->state.log->mtx};
        self->state.log->checkpoints.push_back(r);
      },
      [self](checkpoint_atom, const std::string&, uint32_t,
             const std::string& why) {
        std::lock_guard<std::mutex> guard{self->state.log->mtx};
        self->state.log->checkpoint_failures.push_back(why);
      },
  };
}

/// A node's persistence plus an actor system, per test.
class actor_test : public ::testing::Test {
protected:
  void SetUp() override {
    store::db_options opts;
    auto opened = store::db::open(dir.path() / "db", opts);
    ASSERT_TRUE(opened) << describe(opened.error());
    db = std::shared_ptr<store::db>(std::move(*opened));
    sys = std::make_unique<caf::actor_system>(cfg);
    persist = spawn_persistence(*sys, db);
    self = std::make_unique<caf::scoped_actor>(*sys);
    log = std::make_shared<link_log>();
    link = sys->spawn<caf::detached>(recording_link, log, db);
  }

  void TearDown() override {
    caf::anon_send_exit(persist, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(link, caf::exit_reason::user_shutdown);
    self.reset();
    // Detached actors' threads wait until the last handle is gone.
    persist = persistence_actor{};
    link = link_actor{};
    release_handles();
    sys.reset();
    db.reset();
  }

  /// Subclasses drop their actor handles here.
  virtual void release_handles() {}

  /// A fresh record for `argv`.
  static task_record make_record(std::string id,
                                 std::vector<std::string> argv) {
    task_record rec;
    rec.spec.id = std::move(id);
    rec.spec.argv = std::move(argv);
    rec.spec.grace = 1;
    rec.spec.created_at = 1;
    return rec;
  }

  /// Creates `rec` through PERSISTENCE; fails the test on error.
  void create(const task_record& rec) {
    (*self)
        ->request(persist, std::chrono::seconds(10), create_atom::value, rec)
        .receive([](ok_atom) {},
                 [](caf::error& err) { FAIL() << describe(err); });
  }

  /// Reads the record of `id` through PERSISTENCE.
  task_record get(const std::string& id) {
    task_record out;
    (*self)
        ->request(persist, std::chrono::seconds(10), get_atom::value, id)
        .receive([&](task_record& r) { out = std::move(r); },
                 [](caf::error& err) { FAIL() << describe(err); });
    return out;
  }

  temp_dir dir;
  actor_config cfg;
  std::shared_ptr<store::db> db;
  std::unique_ptr<caf::actor_system> sys;
  persistence_actor persist;
  std::unique_ptr<caf::scoped_actor> self;
  std::shared_ptr<link_log> log;
  link_actor link;
};

} // namespace makima::test
