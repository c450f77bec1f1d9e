// Bad input and hostile environments: missing/invalid repos and refs, id
// reuse, unusable/locked/corrupt data dirs, bad config, a full disk.
#include "tests/integration/helpers.hpp"

#include "tests/fixtures/tmpfs.hpp"

#include <sys/mount.h>

#include <cstring>
#include <random>

namespace makima::it {
namespace {

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

TEST(errors, missing_repo_path_is_125) {
  env e;
  auto r = e.run(
      {"--id", "m", "--repo", (e.root() / "nope").string(), "--", "true"});
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_TRUE(contains(r.err, "makima: task m failed:")) << r.err;
  EXPECT_TRUE(contains(r.err, "repository not found")) << r.err;
  auto j = e.show("m");
  EXPECT_EQ(j["state"], "failed");
  EXPECT_TRUE(
      j["error"].is_string()
      && contains(j["error"].get<std::string>(), "repository not found"))
      << j.dump(2);
}

TEST(errors, directory_that_is_not_a_repo_is_125) {
  env e;
  fs::create_directories(e.root() / "plain");
  test::write_file(e.root() / "plain" / "f.txt", "x");
  auto r = e.run(
      {"--id", "p", "--repo", (e.root() / "plain").string(), "--", "true"});
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_TRUE(contains(r.err, "makima: task p failed:")) << r.err;
  EXPECT_TRUE(contains(r.err, "not a git repository")) << r.err;
}

TEST(errors, bad_ref_is_125) {
  env e;
  auto src = test::make_repo(e.root() / "src");
  auto r = e.run({"--id", "br", "--repo", src.string(), "--ref", "no-such-ref",
                  "--", "true"});
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_TRUE(contains(r.err, "no-such-ref")) << r.err;
  EXPECT_TRUE(contains(r.err, "not found")) << r.err;
  EXPECT_EQ(e.show("br")["state"], "failed");
  // An unknown full-length sha is not found either.
  auto r2 = e.run({"--id", "br2", "--repo", src.string(), "--ref",
                   std::string(40, 'a'), "--", "true"});
  EXPECT_EQ(r2.exit_code, 125) << r2.err;
}

TEST(errors, reused_id_is_2_and_keeps_the_first_task) {
  env e;
  ASSERT_EQ(e.run({"--id", "dup", "--", "sh", "-c", "exit 4"}).exit_code, 4);
  auto r = e.run({"--id", "dup", "--", "sh", "-c", "echo second; exit 0"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "already exists")) << r.err;
  EXPECT_EQ(r.out, "");
  auto j = e.show("dup");
  EXPECT_EQ(j["exit_code"], 4);
  EXPECT_EQ(j["spec"]["argv"][2], "exit 4");
}

TEST(errors, data_dir_under_a_regular_file_is_125) {
  env e;
  test::write_file(e.root() / "file", "not a dir");
  e.set_data(e.root() / "file" / "data");
  auto r = e.run({"--", "true"});
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_TRUE(contains(r.err, (e.root() / "file").string())) << r.err;
  EXPECT_TRUE(contains(r.err, "Not a directory")
              || contains(r.err, "not a directory"))
      << r.err;
  EXPECT_EQ(test::read_file(e.root() / "file"), "not a dir");
}

TEST(errors, locked_data_dir_is_125_while_reads_still_work) {
  env e;
  test::background bg(
      e.run_argv({"--id", "long", "--", "sh", "-c", "echo ready; sleep 30"}),
      e.opts());
  ASSERT_TRUE(bg.wait_for_output("ready", 10000ms));
  auto r = e.run({"--id", "other", "--", "true"});
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_TRUE(contains(r.err, "another makima is using the data dir")) << r.err;
  // Read-only commands work meanwhile and see the running task.
  auto l = e.list();
  ASSERT_EQ(l.size(), 1u) << l.dump(2);
  EXPECT_EQ(l[0]["id"], "long");
  EXPECT_EQ(l[0]["state"], "running");
  EXPECT_EQ(e.show("long")["state"], "running");
  auto logs = e.task("logs", {"long"});
  EXPECT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_EQ(logs.out, "ready\n");
  // Resume of a running task is refused.
  auto res = e.task("resume", {"long"});
  EXPECT_NE(res.exit_code, 0) << res.err;
  bg.kill(SIGTERM);
  auto done = bg.wait(10000ms);
  EXPECT_EQ(done.exit_code, 130) << done.err;
  // The refused run did not create a task.
  auto after = e.list();
  EXPECT_EQ(after.size(), 1u) << after.dump(2);
  EXPECT_EQ(e.show("long")["state"], "cancelled");
}

TEST(errors, corrupt_database_is_125_and_untouched) {
  env e;
  ASSERT_EQ(e.run({"--id", "t", "--", "true"}).exit_code, 0);
  auto db = e.data() / "db";
  test::write_file(db / "CURRENT", std::string("garbage\xff\0\n", 10));
  std::map<std::string, std::string> before;
  for (auto& f : fs::directory_iterator(db))
    before[f.path().filename().string()] = slurp(f.path());
  auto r = e.run({"--id", "u", "--", "true"});
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_TRUE(contains(r.err, "corrupt")) << r.err;
  auto l = e.task("list", {});
  EXPECT_EQ(l.exit_code, 125) << l.err;
  EXPECT_TRUE(contains(l.err, "corrupt")) << l.err;
  std::map<std::string, std::string> after;
  for (auto& f : fs::directory_iterator(db))
    after[f.path().filename().string()] = slurp(f.path());
  EXPECT_EQ(before.size(), after.size());
  for (auto& [name, bytes] : before) {
    ASSERT_TRUE(after.count(name)) << name << " was removed";
    EXPECT_TRUE(after[name] == bytes) << name << " was modified";
  }
}

TEST(errors, bad_config_value_is_2_naming_the_key) {
  env e;
  test::write_file(e.root() / "bad.toml", "[log]\nlevel = \"loud\"\n");
  auto r = e.run({"--config", (e.root() / "bad.toml").string(), "--", "true"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "log.level")) << r.err;
  EXPECT_TRUE(contains(r.err, "loud")) << r.err;

  test::write_file(e.root() / "bad2.toml", "[task]\ngrace = \"soon\"\n");
  auto r2 =
      e.run({"--config", (e.root() / "bad2.toml").string(), "--", "true"});
  EXPECT_EQ(r2.exit_code, 2) << r2.err;
  EXPECT_TRUE(contains(r2.err, "grace")) << r2.err;

  test::write_file(e.root() / "syntax.toml", "[task\n");
  auto r3 =
      e.run({"--config", (e.root() / "syntax.toml").string(), "--", "true"});
  EXPECT_EQ(r3.exit_code, 2) << r3.err;
  EXPECT_TRUE(contains(r3.err, "syntax.toml")) << r3.err;
  // Nothing ran, so nothing was recorded.
  EXPECT_FALSE(fs::exists(e.data() / "db") && !e.list().empty());
}


TEST(errors, disk_full_fails_cleanly_and_keeps_acknowledged_output) {
  env e;
  test::tmpfs_mount mnt(e.root() / "small", "2m");
  ASSERT_TRUE(mnt.mounted()) << "mount -t tmpfs -o size=2m failed: " << mnt.error()
                           << " (this test needs a real full filesystem)";
  // Leave ~1 MB free; 8 MB of output cannot fit.
  test::write_file(mnt.dir() / "filler", std::string(1'000'000, 'F'));
  std::string payload;
  std::mt19937 rng(7);
  while (payload.size() < 8'000'000)
    payload.push_back(static_cast<char>(rng() & 0xff));
  test::write_file(e.root() / "payload.bin", payload);
  e.set_data(mnt.dir() / "data");

  auto t0 = std::chrono::steady_clock::now();
  auto r =
      e.run({"--id", "full", "--", "cat", (e.root() / "payload.bin").string()},
            60000ms);
  auto dt = std::chrono::steady_clock::now() - t0;
  EXPECT_FALSE(r.timed_out) << "makima hung on a full disk";
  EXPECT_EQ(r.signal, 0) << "makima crashed on a full disk";
  EXPECT_LT(dt, 30s);
  EXPECT_EQ(r.exit_code, 125) << r.err.substr(0, 2000);
  EXPECT_TRUE(contains(r.err, "disk is full")
              || contains(r.err, "No space left"))
      << r.err.substr(0, 2000);
  EXPECT_TRUE(contains(r.err, "makima: task full failed:"))
      << r.err.substr(0, 2000);
  // What makima printed is a prefix of what the child wrote.
  EXPECT_TRUE(payload.compare(0, r.out.size(), r.out) == 0);

  // Free space: the store recovers and keeps what it acknowledged.
  fs::remove(mnt.dir() / "filler");
  auto logs = e.task("logs", {"full"}, 30000ms);
  ASSERT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_LT(logs.out.size(), payload.size());
  EXPECT_TRUE(payload.compare(0, logs.out.size(), logs.out) == 0)
      << "task logs is not a prefix of the child's output (" << logs.out.size()
      << " bytes)";
  auto j = e.show("full");
  EXPECT_TRUE(j["state"] == "failed" || j["state"] == "interrupted")
      << j.dump(2);
  // The data dir is usable again.
  auto again = e.run({"--id", "after", "--", "echo", "ok"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, "ok\n");
}

} // namespace
} // namespace makima::it
