// Tests of the RocksDB wrapper makima::store::db against real databases on
// disk (and a real, small tmpfs for the disk-full case).
#include "runtime/store/db.hpp"

#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

// Only to craft a database with a foreign schema version.
#include <rocksdb/db.h>

#include "runtime/error.hpp"
#include "tests/fixtures/temp_dir.hpp"
#include "tests/fixtures/tmpfs.hpp"

namespace fs = std::filesystem;
using namespace makima;
using namespace makima::store;

namespace {

std::unique_ptr<db> open_ok(const fs::path& dir, db_options opts = {}) {
  auto r = db::open(dir, opts);
  if (!r) {
    ADD_FAILURE() << "open " << dir << ": " << describe(r.error());
    return nullptr;
  }
  return std::move(*r);
}

db_options secondary(const fs::path& sdir) {
  db_options o;
  o.mode = open_mode::secondary;
  o.secondary_dir = sdir;
  return o;
}

std::vector<stored_chunk> outputs(db& d, std::string_view id,
                                  uint64_t from = 0) {
  std::vector<stored_chunk> result;
  auto err = d.for_each_output(id, from, [&](const stored_chunk& c) {
    result.push_back(c);
    return true;
  });
  EXPECT_FALSE(err) << describe(err);
  return result;
}

std::vector<std::pair<uint64_t, std::string>> events(db& d,
                                                     std::string_view id) {
  std::vector<std::pair<uint64_t, std::string>> result;
  auto err = d.for_each_event(id, [&](uint64_t n, std::string_view json) {
    result.emplace_back(n, std::string{json});
  });
  EXPECT_FALSE(err) << describe(err);
  return result;
}

std::optional<uint64_t> last_seq(db& d, std::string_view id) {
  auto r = d.last_output_seq(id);
  EXPECT_TRUE(r) << describe(r.error());
  return r ? *r : std::nullopt;
}

std::string pattern(size_t n, uint64_t seed) {
  std::string s(n, '\0');
  std::mt19937_64 rng{seed};
  for (auto& c : s)
    c = static_cast<char>(rng());
  return s;
}

// Contents of every file of `dir` except RocksDB's info logs.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> result;
  for (auto& e : fs::directory_iterator{dir}) {
    auto name = e.path().filename().string();
    if (name.rfind("LOG", 0) == 0 || !e.is_regular_file())
      continue;
    result[name] = test::read_file(e.path());
  }
  return result;
}

fs::path manifest_of(const fs::path& dir) {
  for (auto& e : fs::directory_iterator{dir})
    if (e.path().filename().string().rfind("MANIFEST-", 0) == 0)
      return e.path();
  return {};
}

} // namespace

TEST(store, round_trip_across_reopen) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  {
    auto d = open_ok(dir);
    ASSERT_TRUE(d);
    write_batch b;
    b.put_task("t1", R"({"id":"t1"})");
    b.put_task("t2", R"({"id":"t2"})");
    b.put_event("t1", 0, R"({"state":"queued"})");
    b.put_event("t1", 1, R"({"state":"running"})");
    b.put_output("t1", 0, 1, "hello\n");
    b.put_output("t1", 1, 2, std::string("err\0bin", 7));
    EXPECT_EQ(b.size(), 6u);
    ASSERT_FALSE(d->write(std::move(b)));
  }
  auto d = open_ok(dir);
  ASSERT_TRUE(d);
  auto t1 = d->get_task("t1");
  ASSERT_TRUE(t1);
  ASSERT_TRUE(*t1);
  EXPECT_EQ(**t1, R"({"id":"t1"})");
  auto none = d->get_task("nope");
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);

  std::vector<std::string> ids;
  ASSERT_FALSE(
      d->for_each_task([&](std::string_view id, std::string_view json) {
        ids.emplace_back(id);
        EXPECT_EQ(json, R"({"id":")" + std::string{id} + R"("})");
      }));
  EXPECT_EQ(ids, (std::vector<std::string>{"t1", "t2"}));

  auto ev = events(*d, "t1");
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0],
            (std::pair<uint64_t, std::string>{0, R"({"state":"queued"})"}));
  EXPECT_EQ(ev[1],
            (std::pair<uint64_t, std::string>{1, R"({"state":"running"})"}));
  EXPECT_TRUE(events(*d, "t2").empty());

  auto out = outputs(*d, "t1");
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].seq, 0u);
  EXPECT_EQ(out[0].stream, 1);
  EXPECT_EQ(out[0].bytes, "hello\n");
  EXPECT_EQ(out[1].seq, 1u);
  EXPECT_EQ(out[1].stream, 2);
  EXPECT_EQ(out[1].bytes, std::string("err\0bin", 7));

  auto le = d->last_event("t1");
  ASSERT_TRUE(le);
  EXPECT_EQ(*le, std::optional<uint64_t>{1});
  auto le2 = d->last_event("t2");
  ASSERT_TRUE(le2);
  EXPECT_FALSE(*le2);
}

TEST(store, overwrite_and_large_values_round_trip) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  auto big = pattern(128 * 1024, 7);
  {
    auto d = open_ok(dir);
    ASSERT_TRUE(d);
    write_batch b;
    b.put_task("t", "v1");
    b.put_output("t", 5, 1, big);
    b.put_output("t", 6, 2, "");
    ASSERT_FALSE(d->write(std::move(b)));
    write_batch b2;
    b2.put_task("t", "v2");
    ASSERT_FALSE(d->write(std::move(b2)));
  }
  auto d = open_ok(dir);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->get_task("t").value(), std::optional<std::string>{"v2"});
  auto out = outputs(*d, "t");
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].bytes, big);
  EXPECT_EQ(out[1].bytes, "");
  EXPECT_EQ(out[1].stream, 2);
}

TEST(store, output_scan_from_seq_in_numeric_order) {
  test::temp_dir tmp;
  auto d = open_ok(tmp / "data");
  ASSERT_TRUE(d);
  std::vector<uint64_t> seqs;
  for (uint64_t i = 0; i < 300; ++i)
    seqs.push_back(i);
  for (uint64_t s : {65534ull, 65535ull, 65536ull, 65537ull, 1ull << 24,
                     (1ull << 32) + 1, (1ull << 56) + 3, ~0ull})
    seqs.push_back(s);
  // Insert in a shuffled order, several batches.
  auto shuffled = seqs;
  std::shuffle(shuffled.begin(), shuffled.end(), std::mt19937{42});
  for (size_t i = 0; i < shuffled.size(); i += 37) {
    write_batch b;
    for (size_t j = i; j < std::min(shuffled.size(), i + 37); ++j)
      b.put_output("task", shuffled[j], 1,
                   "chunk " + std::to_string(shuffled[j]));
    ASSERT_FALSE(d->write(std::move(b)));
  }
  auto all = outputs(*d, "task");
  ASSERT_EQ(all.size(), seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    EXPECT_EQ(all[i].seq, seqs[i]);
    EXPECT_EQ(all[i].bytes, "chunk " + std::to_string(seqs[i]));
  }
  // From the middle, from a gap, past the end.
  auto from250 = outputs(*d, "task", 250);
  ASSERT_FALSE(from250.empty());
  EXPECT_EQ(from250.front().seq, 250u);
  EXPECT_EQ(from250.size(), seqs.size() - 250);
  auto from_gap = outputs(*d, "task", 1000);
  ASSERT_FALSE(from_gap.empty());
  EXPECT_EQ(from_gap.front().seq, 65534u);
  auto from_256 = outputs(*d, "task", 256);
  EXPECT_EQ(from_256.front().seq, 256u);
  EXPECT_EQ(outputs(*d, "task", ~0ull).size(), 1u);
  // Stop early.
  std::vector<uint64_t> got;
  ASSERT_FALSE(d->for_each_output("task", 10, [&](const stored_chunk& c) {
    got.push_back(c.seq);
    return got.size() < 3;
  }));
  EXPECT_EQ(got, (std::vector<uint64_t>{10, 11, 12}));
  EXPECT_EQ(last_seq(*d, "task"), std::optional<uint64_t>{~0ull});
}

TEST(store, task_id_prefixes_do_not_bleed) {
  test::temp_dir tmp;
  auto d = open_ok(tmp / "data");
  ASSERT_TRUE(d);
  const std::vector<std::string> ids = {"a",
                                        "ab",
                                        std::string("a\x01", 2),
                                        std::string("a\x01x", 3),
                                        "a b",
                                        "\xff",
                                        "a\xff",
                                        "b",
                                        "aa"};
  {
    write_batch b;
    for (size_t i = 0; i < ids.size(); ++i) {
      b.put_task(ids[i], "task " + std::to_string(i));
      for (uint64_t n = 0; n <= i; ++n) {
        b.put_event(ids[i], n, ids[i] + " ev " + std::to_string(n));
        b.put_output(ids[i], n * 1000, 1, ids[i] + " out " + std::to_string(n));
      }
    }
    ASSERT_FALSE(d->write(std::move(b)));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    SCOPED_TRACE("id index " + std::to_string(i));
    auto out = outputs(*d, ids[i]);
    ASSERT_EQ(out.size(), i + 1);
    for (uint64_t n = 0; n <= i; ++n) {
      EXPECT_EQ(out[n].seq, n * 1000);
      EXPECT_EQ(out[n].bytes, ids[i] + " out " + std::to_string(n));
    }
    auto ev = events(*d, ids[i]);
    ASSERT_EQ(ev.size(), i + 1);
    for (uint64_t n = 0; n <= i; ++n)
      EXPECT_EQ(ev[n].second, ids[i] + " ev " + std::to_string(n));
    EXPECT_EQ(last_seq(*d, ids[i]), std::optional<uint64_t>{i * 1000});
    auto le = d->last_event(ids[i]);
    ASSERT_TRUE(le);
    EXPECT_EQ(*le, std::optional<uint64_t>{i});
    EXPECT_EQ(d->get_task(ids[i]).value(),
              std::optional<std::string>{"task " + std::to_string(i)});
  }
  // Ids without records next to ones with records.
  for (std::string id : {"", "c", "0", "a\x02", "ab\x01"}) {
    if (id.empty())
      continue;
    EXPECT_TRUE(outputs(*d, id).empty()) << id;
    EXPECT_EQ(last_seq(*d, id), std::nullopt) << id;
  }
  size_t count = 0;
  ASSERT_FALSE(
      d->for_each_task([&](std::string_view, std::string_view) { ++count; }));
  EXPECT_EQ(count, ids.size());
}

TEST(store, last_output_seq_none_and_some) {
  test::temp_dir tmp;
  auto d = open_ok(tmp / "data");
  ASSERT_TRUE(d);
  EXPECT_EQ(last_seq(*d, "x"), std::nullopt);
  write_batch b;
  b.put_output("x", 3, 1, "a");
  b.put_output("y", 9, 1, "b"); // a later id must not be seen as x's
  ASSERT_FALSE(d->write(std::move(b)));
  EXPECT_EQ(last_seq(*d, "x"), std::optional<uint64_t>{3});
  EXPECT_EQ(last_seq(*d, "w"), std::nullopt);  // before x
  EXPECT_EQ(last_seq(*d, "xx"), std::nullopt); // between x and y
  write_batch b2;
  b2.put_output("x", 256, 2, "c");
  ASSERT_FALSE(d->write(std::move(b2)));
  EXPECT_EQ(last_seq(*d, "x"), std::optional<uint64_t>{256});
}

TEST(store, invalid_ids_are_rejected) {
  test::temp_dir tmp;
  auto d = open_ok(tmp / "data");
  ASSERT_TRUE(d);
  const std::string nul("a\0b", 3);
  for (const auto& id : {std::string{}, nul}) {
    write_batch b;
    b.put_task("fine", "x");
    b.put_output(id, 0, 1, "y");
    EXPECT_EQ(code_of(d->write(std::move(b))), ec::invalid_argument);
    EXPECT_EQ(code_of(d->get_task(id).error()), ec::invalid_argument);
    EXPECT_EQ(code_of(d->last_output_seq(id).error()), ec::invalid_argument);
    EXPECT_EQ(code_of(d->last_event(id).error()), ec::invalid_argument);
    EXPECT_EQ(code_of(d->for_each_output(
                  id, 0, [](const stored_chunk&) { return true; })),
              ec::invalid_argument);
    EXPECT_EQ(code_of(d->for_each_event(id, [](uint64_t, std::string_view) {})),
              ec::invalid_argument);
  }
  // The whole batch was refused.
  EXPECT_EQ(d->get_task("fine").value(), std::nullopt);
}

TEST(store, second_primary_in_same_process_is_locked) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  auto first = open_ok(dir);
  ASSERT_TRUE(first);
  auto second = db::open(dir, {});
  ASSERT_FALSE(second);
  EXPECT_EQ(code_of(second.error()), ec::store_locked)
      << describe(second.error());
  EXPECT_NE(describe(second.error())
                .find("data dir " + dir.string()
                      + " is in use by another makima process"),
            std::string::npos)
      << describe(second.error());
  first.reset();
  EXPECT_TRUE(open_ok(dir));
}

TEST(store, second_primary_in_another_process_is_locked) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  int ready[2];
  int release[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(release), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(ready[0]);
    close(release[1]);
    auto r = db::open(dir, {});
    char c = r ? 'y' : 'n';
    if (write(ready[1], &c, 1) != 1)
      _exit(2);
    char x;
    (void)!read(release[0], &x, 1); // until the parent closes it
    _exit(r ? 0 : 1);
  }
  close(ready[1]);
  close(release[0]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y') << "child could not open the database";
  auto second = db::open(dir, {});
  ASSERT_FALSE(second);
  EXPECT_EQ(code_of(second.error()), ec::store_locked)
      << describe(second.error());
  EXPECT_NE(describe(second.error()).find("in use by another makima process"),
            std::string::npos);
  EXPECT_EQ(lock_holder(dir), std::optional<long>{pid});
  // A secondary works while the other process is the primary.
  auto sec = db::open(dir, secondary(tmp / "sec"));
  EXPECT_TRUE(sec) << describe(sec.error());
  close(release[1]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(ready[0]);
  // The lock dies with its process.
  EXPECT_TRUE(open_ok(dir));
}

TEST(store, secondary_sees_data_written_before_open) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  auto primary = open_ok(dir);
  ASSERT_TRUE(primary);
  write_batch b;
  b.put_task("t", "rec");
  b.put_event("t", 0, "ev0");
  b.put_output("t", 0, 1, "out0");
  b.put_output("t", 1, 1, pattern(100000, 3));
  ASSERT_FALSE(primary->write(std::move(b)));

  auto sec = db::open(dir, secondary(tmp / "sec"));
  ASSERT_TRUE(sec) << describe(sec.error());
  auto& s = **sec;
  EXPECT_EQ(s.get_task("t").value(), std::optional<std::string>{"rec"});
  EXPECT_EQ(events(s, "t").size(), 1u);
  auto out = outputs(s, "t");
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].bytes, pattern(100000, 3));
  EXPECT_EQ(last_seq(s, "t"), std::optional<uint64_t>{1});

  // Read-only.
  write_batch w;
  w.put_task("u", "x");
  auto err = s.write(std::move(w));
  EXPECT_EQ(code_of(err), ec::store_error);
  EXPECT_NE(describe(err).find("read-only"), std::string::npos)
      << describe(err);

  // The primary still writes.
  write_batch b2;
  b2.put_task("t2", "rec2");
  EXPECT_FALSE(primary->write(std::move(b2)));
}

TEST(store, secondary_without_database_fails) {
  test::temp_dir tmp;
  auto dir = tmp / "empty";
  fs::create_directories(dir);
  auto r = db::open(dir, secondary(tmp / "sec"));
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), ec::store_error);
  EXPECT_EQ(describe(r.error()), "no makima database in " + dir.string());
  auto r2 = db::open(tmp / "missing", secondary(tmp / "sec"));
  ASSERT_FALSE(r2);
  EXPECT_EQ(code_of(r2.error()), ec::store_error);
  EXPECT_FALSE(fs::exists(tmp / "missing"));
}

TEST(store, corrupt_current_is_reported_and_left_alone) {
  for (std::string garbage :
       {std::string("\x13\x37garbage"), std::string("MANIFEST-999999\n")}) {
    SCOPED_TRACE(garbage);
    test::temp_dir tmp;
    auto dir = tmp / "data";
    {
      auto d = open_ok(dir);
      ASSERT_TRUE(d);
      write_batch b;
      b.put_task("t", "x");
      ASSERT_FALSE(d->write(std::move(b)));
    }
    test::write_file(dir / "CURRENT", garbage);
    auto before = snapshot(dir);
    auto r = db::open(dir, {});
    ASSERT_FALSE(r);
    EXPECT_EQ(code_of(r.error()), ec::store_corrupt) << describe(r.error());
    auto msg = describe(r.error());
    EXPECT_NE(msg.find(dir.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("did not modify"), std::string::npos) << msg;
    EXPECT_EQ(snapshot(dir), before);
    // Secondary as well.
    auto s = db::open(dir, secondary(tmp / "sec"));
    ASSERT_FALSE(s);
    EXPECT_EQ(code_of(s.error()), ec::store_corrupt) << describe(s.error());
    EXPECT_EQ(snapshot(dir), before);
  }
}

TEST(store, corrupt_manifest_is_reported_and_left_alone) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  {
    auto d = open_ok(dir);
    ASSERT_TRUE(d);
    write_batch b;
    b.put_task("t", "x");
    ASSERT_FALSE(d->write(std::move(b)));
  }
  auto manifest = manifest_of(dir);
  ASSERT_FALSE(manifest.empty());
  auto size = fs::file_size(manifest);
  test::write_file(manifest, pattern(size, 99));
  auto before = snapshot(dir);
  auto r = db::open(dir, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), ec::store_corrupt) << describe(r.error());
  EXPECT_NE(describe(r.error()).find(dir.string()), std::string::npos);
  EXPECT_EQ(snapshot(dir), before);
}

TEST(store, missing_current_with_data_is_corrupt_not_recreated) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  {
    auto d = open_ok(dir);
    ASSERT_TRUE(d);
  }
  fs::remove(dir / "CURRENT");
  auto before = snapshot(dir);
  auto r = db::open(dir, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), ec::store_corrupt) << describe(r.error());
  EXPECT_EQ(snapshot(dir), before);
}

TEST(store, unwritable_dir_is_io_error) {
  // Tests run as root, so permission bits do not stop us: put the data dir
  // under a regular file instead.
  test::temp_dir tmp;
  test::write_file(tmp / "file", "not a directory");
  auto dir = tmp / "file" / "db";
  auto r = db::open(dir, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), ec::io_error) << describe(r.error());
  EXPECT_NE(describe(r.error()).find(dir.string()), std::string::npos)
      << describe(r.error());
}

TEST(store, unknown_schema_version_is_refused) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  ASSERT_TRUE(open_ok(dir));
  {
    // Rewrite meta/schema with RocksDB directly.
    rocksdb::DBOptions o;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (auto name : {"default", "tasks", "events", "output", "meta", "outbox"})
      cfs.emplace_back(name, rocksdb::ColumnFamilyOptions{});
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    auto s = rocksdb::DB::Open(o, dir.string(), cfs, &handles, &raw);
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::string v;
    ASSERT_TRUE(raw->Get({}, handles[4], "schema", &v).ok());
    EXPECT_EQ(v, "1");
    ASSERT_TRUE(raw->Put({}, handles[4], "schema", "2").ok());
    for (auto* h : handles)
      raw->DestroyColumnFamilyHandle(h);
    delete raw;
  }
  auto r = db::open(dir, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), ec::store_error);
  EXPECT_NE(describe(r.error()).find("schema version"), std::string::npos)
      << describe(r.error());
}

namespace {

// A real tmpfs of `size`, unmounted on destruction.
using test::tmpfs_mount;

} // namespace

TEST(store, disk_full_is_reported_and_acknowledged_writes_survive) {
  test::temp_dir tmp;
  auto mnt = tmp / "mnt";
  tmpfs_mount m{mnt, "4m"};
  ASSERT_TRUE(m.mounted()) << "mount -t tmpfs -o size=4m on " << mnt
                           << " failed: " << m.error()
                           << " (this test needs root and mount permission)";
  // Filler to free later, so that the reopened database has room to recover.
  auto filler = mnt / "filler";
  test::write_file(filler, std::string(2 * 1024 * 1024 + 512 * 1024, 'f'));
  auto dir = mnt / "db";
  const size_t chunk = 64 * 1024;
  std::vector<uint64_t> acked;
  uint64_t failed_seq = 0;
  {
    auto d = open_ok(dir);
    ASSERT_TRUE(d);
    caf::error err;
    uint64_t seq = 0;
    for (; seq < 1000; ++seq) {
      write_batch b;
      b.put_output("t", seq, 1, pattern(chunk, seq));
      b.put_event("t", seq, "ev " + std::to_string(seq));
      err = d->write(std::move(b));
      if (err)
        break;
      acked.push_back(seq);
    }
    ASSERT_TRUE(err) << "the 4 MiB tmpfs never filled up";
    failed_seq = seq;
    EXPECT_EQ(code_of(err), ec::store_full) << describe(err);
    EXPECT_NE(describe(err).find(dir.string()), std::string::npos)
        << describe(err);
    EXPECT_FALSE(acked.empty());
    // Every later write fails cleanly (no crash) while the disk is full.
    for (int i = 0; i < 3; ++i) {
      write_batch b;
      b.put_task("later", "x");
      auto e = d->write(std::move(b));
      EXPECT_TRUE(e);
      EXPECT_TRUE(code_of(e) == ec::store_full || code_of(e) == ec::store_error)
          << describe(e);
    }
    // Reads still work.
    EXPECT_EQ(last_seq(*d, "t").value_or(~0ull) >= acked.back(), true);
  }
  fs::remove(filler);
  {
    auto d = open_ok(dir);
    ASSERT_TRUE(d);
    auto out = outputs(*d, "t");
    ASSERT_GE(out.size(), acked.size());
    ASSERT_LE(out.size(), acked.size() + 1);
    for (size_t i = 0; i < out.size(); ++i) {
      EXPECT_EQ(out[i].seq, i);
      EXPECT_TRUE(out[i].bytes == pattern(chunk, i)) << "chunk " << i;
    }
    auto ev = events(*d, "t");
    EXPECT_EQ(ev.size(), out.size()); // the failed batch is all or nothing
    if (out.size() > acked.size()) {
      EXPECT_EQ(out.back().seq, failed_seq);
    }
    EXPECT_EQ(d->get_task("later").value(), std::nullopt);
    // And the database accepts writes again.
    write_batch b;
    b.put_task("after", "y");
    EXPECT_FALSE(d->write(std::move(b)));
  }
}

TEST(store, writes_resume_in_process_after_space_is_freed) {
  test::temp_dir tmp;
  auto mnt = tmp / "mnt";
  // RocksDB clears a hard ENOSPC error only when the free space reaches its
  // disk buffer (the 64 MiB memtable size): the tmpfs must be larger than
  // that once the filler is gone.
  tmpfs_mount m{mnt, "80m"};
  ASSERT_TRUE(m.mounted()) << "mount -t tmpfs -o size=80m on " << mnt
                           << " failed: " << m.error();
  auto filler = mnt / "filler";
  test::write_file(filler, std::string(72 * 1024 * 1024, 'f'));
  auto dir = mnt / "db";
  auto d = open_ok(dir);
  ASSERT_TRUE(d);
  uint64_t seq = 0;
  caf::error err;
  for (; seq < 1000 && !err; ++seq) {
    write_batch b;
    b.put_output("t", seq, 1, pattern(64 * 1024, seq));
    err = d->write(std::move(b));
  }
  ASSERT_EQ(code_of(err), ec::store_full) << describe(err);
  fs::remove(filler);
  // RocksDB's own recovery (SstFileManager) polls free space every few
  // seconds; the wrapper also tries DB::Resume() before each write. Either
  // way writes must work again within a bounded time.
  auto start = std::chrono::steady_clock::now();
  caf::error e;
  do {
    write_batch b;
    b.put_task("after", "y");
    e = d->write(std::move(b));
    if (e)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (
      e && std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
  EXPECT_FALSE(e) << describe(e);
  EXPECT_EQ(d->get_task("after").value(), std::optional<std::string>{"y"});
  d.reset();
  auto d2 = open_ok(dir);
  ASSERT_TRUE(d2);
  EXPECT_EQ(d2->get_task("after").value(), std::optional<std::string>{"y"});
}

// -- meta keys and the outbox (network mode) ----------------------------------

TEST(store, meta_keys_round_trip_survive_reopen_and_stay_apart_from_schema) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  {
    auto d = open_ok(dir);
    ASSERT_TRUE(d);
    write_batch b;
    b.put_meta("seq/t1", "7");
    b.put_meta("seq/t2", "9");
    b.put_meta("other", "x");
    b.put_meta("schema", "not the schema");
    ASSERT_FALSE(d->write(std::move(b)));
    write_batch del;
    del.delete_meta("seq/t2");
    ASSERT_FALSE(d->write(std::move(del)));
  }
  auto d = open_ok(dir); // the schema key was not overwritten
  ASSERT_TRUE(d);
  auto v = d->get_meta("seq/t1");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->value_or(""), "7");
  auto gone = d->get_meta("seq/t2");
  ASSERT_TRUE(gone);
  EXPECT_FALSE(gone->has_value());
  std::vector<std::pair<std::string, std::string>> seen;
  ASSERT_FALSE(d->for_each_meta("seq/", [&](auto k, auto val) {
    seen.emplace_back(std::string{k}, std::string{val});
  }));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].first, "seq/t1");
  EXPECT_EQ(seen[0].second, "7");
}

TEST(store, outbox_entries_are_ordered_and_deleted_by_attempt_range) {
  test::temp_dir tmp;
  auto d = open_ok(tmp / "data");
  ASSERT_TRUE(d);
  write_batch b;
  for (uint64_t seq : {3, 1, 2, 300})
    b.put_outbox("t1", 2, seq, "e" + std::to_string(seq));
  b.put_outbox("t1", 1, 5, "old");
  b.put_outbox("t0", 7, 1, "other task");
  ASSERT_FALSE(d->write(std::move(b)));
  auto all = [&] {
    std::vector<std::string> out;
    auto err = d->for_each_outbox([&](std::string_view task, uint32_t attempt,
                                      uint64_t seq, std::string_view v) {
      out.push_back(std::string{task} + "/" + std::to_string(attempt) + "/"
                    + std::to_string(seq) + "=" + std::string{v});
    });
    EXPECT_FALSE(err) << describe(err);
    return out;
  };
  EXPECT_EQ(all(), (std::vector<std::string>{"t0/7/1=other task", "t1/1/5=old",
                                             "t1/2/1=e1", "t1/2/2=e2",
                                             "t1/2/3=e3", "t1/2/300=e300"}));
  write_batch ack;
  ack.delete_outbox("t1", 2, 2); // cumulative ack of seq 2
  ASSERT_FALSE(d->write(std::move(ack)));
  EXPECT_EQ(all(), (std::vector<std::string>{"t0/7/1=other task", "t1/1/5=old",
                                             "t1/2/3=e3", "t1/2/300=e300"}));
  write_batch fence;
  fence.delete_outbox("t1", 1, UINT64_MAX); // whole attempt
  ASSERT_FALSE(d->write(std::move(fence)));
  EXPECT_EQ(all(), (std::vector<std::string>{"t0/7/1=other task", "t1/2/3=e3",
                                             "t1/2/300=e300"}));
}

TEST(store, outbox_with_an_invalid_task_id_refuses_the_batch) {
  test::temp_dir tmp;
  auto d = open_ok(tmp / "data");
  ASSERT_TRUE(d);
  write_batch b;
  b.put_outbox(std::string_view{"a\0b", 3}, 1, 1, "x");
  auto err = d->write(std::move(b));
  EXPECT_EQ(code_of(err), ec::invalid_argument);
}

// A small disk (the size of a real server's full data dir, below the 16 MiB
// write buffer RocksDB's own recovery waits for): writes fail cleanly while
// it is full, `writable()` says so, and the first write after space is back
// works — no polling, no reopen — with every acknowledged write kept.
TEST(store, writes_resume_on_a_small_disk_after_space_is_freed) {
  test::temp_dir tmp;
  auto mnt = tmp / "mnt";
  tmpfs_mount m{mnt, "12m"};
  ASSERT_TRUE(m.mounted()) << m.error();
  auto filler = mnt / "filler";
  test::write_file(filler, std::string(8 * 1024 * 1024, 'f'));
  auto dir = mnt / "db";
  auto d = open_ok(dir);
  ASSERT_TRUE(d);
  EXPECT_FALSE(d->writable());
  uint64_t seq = 0;
  caf::error err;
  for (; seq < 1000; ++seq) {
    write_batch b;
    b.put_output("t", seq, 1, pattern(64 * 1024, seq));
    err = d->write(std::move(b));
    if (err)
      break;
  }
  ASSERT_EQ(code_of(err), ec::store_full) << describe(err);
  uint64_t acked = seq; // seqs 0..acked-1 were acknowledged
  // Still full: a second write is refused, no abort, and writable() says so.
  {
    write_batch b;
    b.put_output("t", acked, 1, pattern(64 * 1024, acked));
    EXPECT_EQ(code_of(d->write(std::move(b))), ec::store_full);
  }
  auto w = d->writable();
  EXPECT_EQ(code_of(w), ec::store_full) << describe(w);
  EXPECT_NE(describe(w).find("disk is full"), std::string::npos) << describe(w);
  // Reads work meanwhile.
  auto last = d->last_output_seq("t");
  ASSERT_TRUE(last);
  EXPECT_EQ(last->value_or(UINT64_MAX), acked - 1);
  fs::remove(filler);
  // Space is back: writable at once, and the next write works.
  w = d->writable();
  EXPECT_FALSE(w) << describe(w);
  {
    write_batch b;
    b.put_output("t", acked, 1, pattern(64 * 1024, acked));
    auto e = d->write(std::move(b));
    ASSERT_FALSE(e) << describe(e);
  }
  d.reset();
  auto d2 = open_ok(dir);
  ASSERT_TRUE(d2);
  uint64_t expect = 0;
  ASSERT_FALSE(d2->for_each_output("t", 0, [&](const stored_chunk& c) {
    EXPECT_EQ(c.seq, expect);
    EXPECT_TRUE(c.bytes == pattern(64 * 1024, c.seq)) << c.seq;
    ++expect;
    return true;
  }));
  EXPECT_EQ(expect, acked + 1);
}

TEST(store, delete_task_removes_every_key_of_the_task_only) {
  test::temp_dir tmp;
  auto d = open_ok(tmp / "data");
  ASSERT_TRUE(d);
  {
    write_batch b;
    for (std::string id : {"a", "ab", "b"}) {
      b.put_task(id, "rec " + id);
      b.put_event(id, 0, id + " ev0");
      b.put_event(id, 1, id + " ev1");
      b.put_output(id, 0, 1, id + " out0");
      b.put_output(id, 7, 2, pattern(70000, 9));
      b.put_outbox(id, 1, 1, id + " frame");
    }
    ASSERT_FALSE(d->write(std::move(b)));
  }
  write_batch del;
  del.delete_task("a");
  ASSERT_FALSE(d->write(std::move(del)));
  EXPECT_EQ(d->get_task("a").value(), std::nullopt);
  EXPECT_TRUE(events(*d, "a").empty());
  EXPECT_TRUE(outputs(*d, "a").empty());
  EXPECT_EQ(last_seq(*d, "a"), std::nullopt);
  std::vector<std::string> tasks;
  ASSERT_FALSE(d->for_each_task(
      [&](std::string_view id, std::string_view) { tasks.emplace_back(id); }));
  EXPECT_EQ(tasks, (std::vector<std::string>{"ab", "b"}));
  std::vector<std::string> outbox;
  ASSERT_FALSE(
      d->for_each_outbox([&](std::string_view t, uint32_t, uint64_t,
                             std::string_view) { outbox.emplace_back(t); }));
  EXPECT_EQ(outbox, (std::vector<std::string>{"ab", "b"}));
  for (std::string id : {"ab", "b"}) {
    EXPECT_EQ(events(*d, id).size(), 2u) << id;
    EXPECT_EQ(outputs(*d, id).size(), 2u) << id;
  }
  // Compaction keeps what is left and drops the deleted keys for good.
  ASSERT_FALSE(d->compact());
  EXPECT_TRUE(outputs(*d, "a").empty());
  EXPECT_EQ(outputs(*d, "ab").size(), 2u);
  d.reset();
  auto again = open_ok(tmp / "data");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->get_task("a").value(), std::nullopt);
  EXPECT_EQ(again->get_task("b").value(), std::optional<std::string>{"rec b"});
  // An invalid id refuses the batch.
  write_batch bad;
  bad.delete_task("");
  EXPECT_EQ(code_of(again->write(std::move(bad))), ec::invalid_argument);
}

TEST(store, secondary_catches_up_with_the_primary) {
  test::temp_dir tmp;
  auto dir = tmp / "data";
  auto primary = open_ok(dir);
  ASSERT_TRUE(primary);
  // fcntl locks do not conflict within a process: no other holder.
  EXPECT_EQ(lock_holder(dir), std::nullopt);
  EXPECT_EQ(lock_holder(tmp / "nowhere"), std::nullopt);
  write_batch b;
  b.put_output("t", 0, 1, "first");
  ASSERT_FALSE(primary->write(std::move(b)));
  auto sec = db::open(dir, secondary(tmp / "sec"));
  ASSERT_TRUE(sec) << describe(sec.error());
  auto& s = **sec;
  EXPECT_EQ(outputs(s, "t").size(), 1u);
  write_batch b2;
  b2.put_output("t", 1, 1, "second");
  ASSERT_FALSE(primary->write(std::move(b2)));
  ASSERT_FALSE(s.catch_up());
  auto out = outputs(s, "t");
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].bytes, "second");
  EXPECT_EQ(code_of(s.compact()), ec::store_error);
  // catch_up is a no-op on a primary.
  EXPECT_FALSE(primary->catch_up());
}
