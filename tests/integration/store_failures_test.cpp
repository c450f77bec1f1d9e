// A damaged or full store: every command says so (exit 125, naming the
// file), read-only commands change no byte of the database, and
// `makima db repair` salvages the consistent part and says what it dropped.
#include "tests/integration/helpers.hpp"

#include "tests/fixtures/tmpfs.hpp"

#include <sys/mount.h>

#include <cstring>
#include <map>
#include <regex>

namespace makima::it {
namespace {

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// Every file of the db dir with its bytes.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (auto& f : fs::directory_iterator(dir))
    if (f.is_regular_file())
      out[f.path().filename().string()] = slurp(f.path());
  return out;
}

std::string lines(const std::string& prefix, int n) {
  std::string s;
  for (int i = 1; i <= n; ++i)
    s += prefix + std::to_string(i) + "\n";
  return s;
}

fs::path only_wal(const fs::path& db) {
  fs::path wal;
  for (auto& f : fs::directory_iterator(db))
    if (f.path().extension() == ".log") {
      EXPECT_TRUE(wal.empty()) << "more than one WAL file";
      wal = f.path();
    }
  return wal;
}

// Two real tasks of 5,000 output lines each; the second one's output sits
// in the WAL.
void make_tasks(env& e) {
  auto a = e.run({"--id", "a", "--", "seq", "1", "5000"});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto b = e.run({"--id", "b", "--", "sh", "-c",
                  "i=1; while [ $i -le 5000 ]; do echo line$i; "
                  "i=$((i+1)); done"});
  ASSERT_EQ(b.exit_code, 0) << b.err;
  ASSERT_EQ(b.out, lines("line", 5000));
}

void overwrite(const fs::path& f, size_t at, const std::string& bytes) {
  std::fstream io(f, std::ios::binary | std::ios::in | std::ios::out);
  io.seekp(static_cast<std::streamoff>(at));
  io.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Every command refuses the damaged db with 125 naming `file`, and no byte
// of the db dir changes.
void expect_refused_untouched(env& e, const std::string& file) {
  auto db = e.data() / "db";
  auto before = snapshot(db);
  std::vector<run_result> results{
      e.task("list", {}),    e.task("list", {"--json"}),
      e.task("show", {"b"}), e.task("logs", {"b"}),
      e.task("logs", {"a"}), e.run({"--id", "c", "--", "echo", "c"})};
  for (auto& r : results) {
    EXPECT_EQ(r.signal, 0) << r.err;
    EXPECT_EQ(r.exit_code, 125) << r.err;
    EXPECT_TRUE(contains(r.err, "corrupt")) << r.err;
    EXPECT_TRUE(contains(r.err, file)) << r.err;
    EXPECT_TRUE(contains(r.err, "makima db repair")) << r.err;
    EXPECT_EQ(r.out, "");
  }
  auto after = snapshot(db);
  EXPECT_EQ(before.size(), after.size());
  for (auto& [name, bytes] : before) {
    auto it = after.find(name);
    ASSERT_NE(it, after.end()) << name << " disappeared";
    EXPECT_TRUE(it->second == bytes) << name << " was modified";
  }
  for (auto& [name, bytes] : after)
    EXPECT_TRUE(before.count(name)) << name << " was created";
}

// Runs `db repair`, checks its report and that the db works again.
std::string repair_and_check(env& e) {
  auto r = test::run(
      {MAKIMA_BINARY, "db", "repair", "--data-dir", e.data().string()},
      e.opts());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "backup of ")) << r.out;
  EXPECT_TRUE(contains(r.out, "dropped: ")) << r.out;
  // The backup is the damaged db as it was.
  std::smatch m;
  std::regex backup_re{"as it was: (\\S+)"};
  EXPECT_TRUE(std::regex_search(r.out, m, backup_re)) << r.out;
  if (!m.empty())
    EXPECT_TRUE(fs::is_directory(m[1].str())) << m[1].str();
  // Usable again: list and logs work, logs are a prefix of what ran.
  auto l = e.task("list", {});
  EXPECT_EQ(l.exit_code, 0) << l.err;
  auto logs = e.task("logs", {"b"});
  if (logs.exit_code == 0) {
    auto full = lines("line", 5000);
    EXPECT_TRUE(full.compare(0, logs.out.size(), logs.out) == 0);
  } else {
    EXPECT_TRUE(contains(logs.err, "no task")) << logs.err;
  }
  auto c = e.run({"--id", "c", "--", "echo", "after repair"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "after repair\n");
  return r.out;
}

uint64_t number_after(const std::string& text, const std::string& what) {
  std::smatch m;
  std::regex re{"([0-9]+) " + what};
  if (!std::regex_search(text, m, re))
    return 0;
  return std::stoull(m[1].str());
}

TEST(store_failures, garbage_in_the_middle_of_the_wal) {
  env e;
  make_tasks(e);
  auto wal = only_wal(e.data() / "db");
  ASSERT_FALSE(wal.empty());
  overwrite(wal, fs::file_size(wal) / 2, "GARBAGE\xff\x00GARBAGE");
  expect_refused_untouched(e, wal.string());
  auto out = repair_and_check(e);
  EXPECT_GT(number_after(out, "output chunks,"), 0u) << out;
}

TEST(store_failures, garbage_at_the_end_of_the_wal) {
  env e;
  make_tasks(e);
  auto wal = only_wal(e.data() / "db");
  ASSERT_FALSE(wal.empty());
  {
    std::ofstream app(wal, std::ios::binary | std::ios::app);
    app << std::string(100, '\x5a');
  }
  expect_refused_untouched(e, wal.string());
  auto out = repair_and_check(e);
  // Only the garbage was cut: both tasks are whole.
  auto logs = e.task("logs", {"b"});
  EXPECT_EQ(logs.out, lines("line", 5000));
  EXPECT_EQ(e.task("logs", {"a"}).out, lines("", 5000));
}

TEST(store_failures, wal_truncated_inside_a_record) {
  env e;
  make_tasks(e);
  auto wal = only_wal(e.data() / "db");
  ASSERT_FALSE(wal.empty());
  fs::resize_file(wal, fs::file_size(wal) - 100);
  expect_refused_untouched(e, wal.string());
  repair_and_check(e);
}

TEST(store_failures, zeroed_block_in_the_wal) {
  env e;
  make_tasks(e);
  auto wal = only_wal(e.data() / "db");
  ASSERT_FALSE(wal.empty());
  ASSERT_GT(fs::file_size(wal), 40000u);
  overwrite(wal, 32768, std::string(4096, '\0'));
  expect_refused_untouched(e, wal.string());
  auto out = repair_and_check(e);
  EXPECT_GT(number_after(out, "output chunks,")
                + number_after(out, "operations in unreadable"),
            0u)
      << out;
}

TEST(store_failures, missing_current_is_corruption_not_an_empty_store) {
  env e;
  make_tasks(e);
  auto db = e.data() / "db";
  fs::remove(db / "CURRENT");
  expect_refused_untouched(e, (db).string());
  repair_and_check(e);
}

TEST(store_failures, corrupt_manifest) {
  env e;
  make_tasks(e);
  auto db = e.data() / "db";
  fs::path manifest;
  for (auto& f : fs::directory_iterator(db))
    if (f.path().filename().string().rfind("MANIFEST-", 0) == 0)
      manifest = f.path();
  ASSERT_FALSE(manifest.empty());
  overwrite(manifest, fs::file_size(manifest) / 2, "GARBAGEGARBAGE");
  expect_refused_untouched(e, db.string());
  // RocksDB 7.8's RepairDB cannot rebuild a database with blob files: the
  // repair says so and leaves the database as it was.
  auto before = snapshot(db);
  auto r = test::run(
      {MAKIMA_BINARY, "db", "repair", "--data-dir", e.data().string()},
      e.opts());
  if (r.exit_code == 0) {
    EXPECT_TRUE(contains(r.out, "dropped: ")) << r.out;
  } else {
    EXPECT_EQ(r.exit_code, 125) << r.err;
    EXPECT_TRUE(contains(r.err, "back as it was")) << r.err;
    auto after = snapshot(db);
    for (auto& [name, bytes] : before)
      EXPECT_TRUE(after[name] == bytes) << name;
  }
}

TEST(store_failures, corrupt_table_file) {
  env e;
  make_tasks(e);
  auto db = e.data() / "db";
  fs::path sst;
  for (auto& f : fs::directory_iterator(db))
    if (f.path().extension() == ".sst"
        && (sst.empty() || fs::file_size(f.path()) > fs::file_size(sst)))
      sst = f.path();
  ASSERT_FALSE(sst.empty());
  overwrite(sst, fs::file_size(sst) - 48, std::string(48, '\x77'));
  expect_refused_untouched(e, db.string());
}



TEST(store_failures, already_full_disk_is_a_clear_error_not_an_abort) {
  env e;
  test::tmpfs_mount mnt(e.root() / "small", "3m");
  ASSERT_TRUE(mnt.mounted()) << "mount -t tmpfs failed: " << mnt.error();
  e.set_data(mnt.dir() / "data");
  auto a = e.run({"--id", "a", "--", "seq", "1", "5000"});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  test::fill_disk(mnt.dir() / "filler");
  auto db = e.data() / "db";
  auto before = snapshot(db);
  // Reads work on a full disk and change nothing.
  auto l = e.task("list", {});
  EXPECT_EQ(l.signal, 0) << l.err;
  EXPECT_EQ(l.exit_code, 0) << l.err;
  EXPECT_TRUE(contains(l.out, "succeeded")) << l.out;
  auto logs = e.task("logs", {"a"});
  EXPECT_EQ(logs.signal, 0) << logs.err;
  EXPECT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_EQ(logs.out, lines("", 5000));
  auto show = e.task("show", {"a"});
  EXPECT_EQ(show.signal, 0) << show.err;
  EXPECT_EQ(show.exit_code, 0) << show.err;
  EXPECT_TRUE(snapshot(db) == before) << "a read changed the db";
  // A write is a clear error.
  for (int i = 0; i < 2; ++i) {
    auto r = e.run({"--id", "b" + std::to_string(i), "--", "echo", "x"});
    EXPECT_EQ(r.signal, 0) << r.err;
    EXPECT_EQ(r.exit_code, 125) << r.err;
    EXPECT_TRUE(contains(r.err, "disk is full")) << r.err;
  }
  // Space back: everything works and nothing was lost.
  test::free_disk(mnt.dir() / "filler");
  auto r = e.run({"--id", "c", "--", "echo", "ok"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ok\n");
  EXPECT_EQ(e.task("logs", {"a"}).out, lines("", 5000));
}

} // namespace
} // namespace makima::it
