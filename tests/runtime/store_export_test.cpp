// Tests of db::export_task and db::ingest: one task's records moved between
// two real databases as SST files, as checkpoints move them.
#include "runtime/store/db.hpp"

#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

// Only to craft a foreign table file.
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/sst_file_writer.h>

#include "runtime/error.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace makima;
using namespace makima::store;

namespace {

std::unique_ptr<db> open_db(const fs::path& dir) {
  auto r = db::open(dir, db_options{});
  if (!r) {
    ADD_FAILURE() << describe(r.error());
    return nullptr;
  }
  return std::move(*r);
}

// A task with a record, `events` state events and `chunks` output chunks,
// plus a neighbour task whose id extends this one's.
void fill(db& d, const std::string& id, int events, int chunks) {
  write_batch b;
  b.put_task(id, R"({"id":")" + id + R"(","state":"running"})");
  for (int i = 0; i < events; ++i)
    b.put_event(id, i, R"({"n":)" + std::to_string(i) + "}");
  for (int i = 0; i < chunks; ++i)
    b.put_output(id, i, 1 + i % 2,
                 "chunk " + std::to_string(i) + std::string(i * 100, 'x'));
  b.put_task(id + "x", R"({"id":"neighbour"})");
  b.put_output(id + "x", 0, 1, "not mine");
  ASSERT_FALSE(d.write(std::move(b)));
}

std::vector<stored_chunk> outputs(db& d, const std::string& id) {
  std::vector<stored_chunk> r;
  EXPECT_FALSE(d.for_each_output(id, 0, [&](const stored_chunk& c) {
    r.push_back(c);
    return true;
  }));
  return r;
}

} // namespace

TEST(StoreExport, records_move_between_databases_in_increments) {
  test::temp_dir tmp;
  auto a = open_db(tmp.path() / "a");
  auto b = open_db(tmp.path() / "b");
  ASSERT_TRUE(a && b);
  fill(*a, "t1", 3, 50);
  // First increment: everything below seq 30.
  auto first = a->export_task("t1", 0, 30, tmp.path() / "x1");
  ASSERT_TRUE(first) << describe(first.error());
  ASSERT_EQ(first->size(), 3u);
  EXPECT_EQ((*first)[0].family, "tasks");
  EXPECT_EQ((*first)[0].entries, 1u);
  EXPECT_EQ((*first)[1].family, "events");
  EXPECT_EQ((*first)[1].entries, 3u);
  EXPECT_EQ((*first)[2].family, "output");
  EXPECT_EQ((*first)[2].entries, 30u);
  ASSERT_FALSE(b->ingest(*first));
  EXPECT_EQ(outputs(*b, "t1").size(), 30u);
  // The task moves on; the second increment carries seqs 30..49 and the
  // newer record, which wins.
  write_batch more;
  more.put_task("t1", R"({"id":"t1","state":"interrupted"})");
  ASSERT_FALSE(a->write(std::move(more)));
  auto second = a->export_task("t1", 30, 1000, tmp.path() / "x2");
  ASSERT_TRUE(second) << describe(second.error());
  ASSERT_EQ(second->back().entries, 20u);
  ASSERT_FALSE(b->ingest(*second));
  auto got = outputs(*b, "t1");
  auto want = outputs(*a, "t1");
  ASSERT_EQ(got.size(), 50u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].seq, want[i].seq);
    EXPECT_EQ(got[i].stream, want[i].stream);
    EXPECT_EQ(got[i].bytes, want[i].bytes);
  }
  auto rec = b->get_task("t1");
  ASSERT_TRUE(rec && *rec);
  EXPECT_EQ(**rec, R"({"id":"t1","state":"interrupted"})");
  // The neighbour "t1x" did not travel.
  auto other = b->get_task("t1x");
  ASSERT_TRUE(other);
  EXPECT_FALSE(*other);
  EXPECT_TRUE(outputs(*b, "t1x").empty());
  // Events survive a reopen of the target (ingested files are durable).
  b.reset();
  b = open_db(tmp.path() / "b");
  int n = 0;
  ASSERT_FALSE(
      b->for_each_event("t1", [&](uint64_t, std::string_view) { ++n; }));
  EXPECT_EQ(n, 3);
}

TEST(StoreExport, an_empty_range_writes_no_output_file) {
  test::temp_dir tmp;
  auto a = open_db(tmp.path() / "a");
  ASSERT_TRUE(a);
  fill(*a, "t1", 1, 5);
  auto r = a->export_task("t1", 5, 5, tmp.path() / "x");
  ASSERT_TRUE(r) << describe(r.error());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ(r->back().family, "events");
  EXPECT_FALSE(fs::exists(tmp.path() / "x" / "output.sst"));
  auto none = a->export_task("nobody", 0, 100, tmp.path() / "y");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(StoreExport, a_damaged_or_foreign_file_is_refused_and_nothing_ingested) {
  test::temp_dir tmp;
  auto a = open_db(tmp.path() / "a");
  auto b = open_db(tmp.path() / "b");
  ASSERT_TRUE(a && b);
  fill(*a, "t1", 2, 10);
  auto files = a->export_task("t1", 0, 100, tmp.path() / "x");
  ASSERT_TRUE(files);
  ASSERT_EQ(files->size(), 3u);
  // A flipped byte in the middle of the output file.
  auto out = (*files)[2].path;
  {
    std::fstream f{out, std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(static_cast<std::streamoff>(fs::file_size(out) / 3));
    f.put('\xff');
  }
  auto err = b->ingest(*files);
  EXPECT_EQ(code_of(err), ec::checkpoint_corrupt) << describe(err);
  EXPECT_NE(describe(err).find("output.sst"), std::string::npos)
      << describe(err);
  // Refused as a set: the tasks file before it was not ingested either.
  auto rec = b->get_task("t1");
  ASSERT_TRUE(rec);
  EXPECT_FALSE(*rec);
  // A file claiming the wrong family.
  auto wrong = *files;
  wrong.resize(1);
  wrong[0].family = "meta";
  EXPECT_EQ(code_of(b->ingest(wrong)), ec::checkpoint_corrupt);
  // Not a table file at all.
  {
    std::ofstream f{tmp.path() / "junk.sst"};
    f << "not a table";
  }
  EXPECT_EQ(code_of(b->ingest({{"events", tmp.path() / "junk.sst", 1}})),
            ec::checkpoint_corrupt);
}

TEST(StoreExport, a_file_mixing_two_tasks_is_refused) {
  test::temp_dir tmp;
  auto b = open_db(tmp.path() / "b");
  ASSERT_TRUE(b);
  // Crafted with RocksDB directly: keys of t1 and t2 in one output file.
  auto path = tmp.path() / "mixed.sst";
  rocksdb::SstFileWriter w{rocksdb::EnvOptions{}, rocksdb::Options{}};
  ASSERT_TRUE(w.Open(path.string()).ok());
  for (std::string id : {"t1", "t2"}) {
    std::string k = id;
    k.push_back('\0');
    k.append(7, '\0');
    k.push_back('\x01');
    ASSERT_TRUE(w.Put(k, "\x01hello").ok());
  }
  ASSERT_TRUE(w.Finish().ok());
  auto err = b->ingest({{"output", path, 2}});
  EXPECT_EQ(code_of(err), ec::checkpoint_corrupt) << describe(err);
  EXPECT_NE(describe(err).find("task t1"), std::string::npos) << describe(err);
  EXPECT_TRUE(outputs(*b, "t1").empty());
}

TEST(StoreExport, several_increments_in_one_ingest_keep_their_order) {
  // A checkpoint chain is restored in one call: each family's files, oldest
  // first, overlap (the record, the events) and the newest keys win.
  test::temp_dir tmp;
  auto a = open_db(tmp.path() / "a");
  auto b = open_db(tmp.path() / "b");
  ASSERT_TRUE(a && b);
  fill(*a, "t1", 3, 50);
  auto first = a->export_task("t1", 0, 30, tmp.path() / "x1");
  ASSERT_TRUE(first) << describe(first.error());
  write_batch more;
  more.put_task("t1", R"({"id":"t1","state":"interrupted"})");
  more.put_event("t1", 3, R"({"n":3})");
  ASSERT_FALSE(a->write(std::move(more)));
  auto second = a->export_task("t1", 30, 1000, tmp.path() / "x2");
  ASSERT_TRUE(second) << describe(second.error());
  auto all = *first;
  all.insert(all.end(), second->begin(), second->end());
  ASSERT_EQ(all.size(), 6u);
  ASSERT_FALSE(b->ingest(all));
  auto rec = b->get_task("t1");
  ASSERT_TRUE(rec && *rec);
  EXPECT_EQ(**rec, R"({"id":"t1","state":"interrupted"})");
  int n = 0;
  ASSERT_FALSE(
      b->for_each_event("t1", [&](uint64_t, std::string_view) { ++n; }));
  EXPECT_EQ(n, 4);
  auto got = outputs(*b, "t1");
  auto want = outputs(*a, "t1");
  ASSERT_EQ(got.size(), 50u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].seq, want[i].seq);
    EXPECT_EQ(got[i].bytes, want[i].bytes);
  }
  // And a second ingest of the older increment alone: it wins over what
  // the database held (a restore replaces).
  ASSERT_FALSE(b->ingest(*first));
  rec = b->get_task("t1");
  ASSERT_TRUE(rec && *rec);
  EXPECT_EQ(**rec, R"({"id":"t1","state":"running"})");
}

TEST(StoreExport, an_ingest_rocksdb_refuses_leaves_every_family_untouched) {
  // Good tasks and events files, and an output file that passes makima's
  // checks (readable, checksums, keys of the task) but that RocksDB
  // refuses: it was written for the "output" family of another database,
  // whose id differs. The whole set is refused: not even the record that
  // came first is there.
  test::temp_dir tmp;
  auto a = open_db(tmp.path() / "a");
  auto b = open_db(tmp.path() / "b");
  ASSERT_TRUE(a && b);
  fill(*a, "t1", 2, 3);
  auto files = a->export_task("t1", 0, 100, tmp.path() / "x");
  ASSERT_TRUE(files) << describe(files.error());
  ASSERT_EQ(files->size(), 3u);
  ASSERT_EQ((*files)[2].family, "output");
  auto foreign = tmp.path() / "foreign.sst";
  {
    rocksdb::Options o;
    o.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, (tmp.path() / "other").string(), &raw)
                    .ok());
    std::unique_ptr<rocksdb::DB> other{raw};
    std::vector<rocksdb::ColumnFamilyHandle*> cfs;
    for (auto name : {"p", "q", "r", "s", "u", "v", "output"}) {
      rocksdb::ColumnFamilyHandle* h = nullptr;
      ASSERT_TRUE(other->CreateColumnFamily(rocksdb::ColumnFamilyOptions{},
                                            name, &h)
                      .ok());
      cfs.push_back(h);
    }
    rocksdb::SstFileWriter w{rocksdb::EnvOptions{}, o, cfs.back()};
    ASSERT_TRUE(w.Open(foreign.string()).ok());
    std::string k = "t1";
    k.push_back('\0');
    k.append(7, '\0');
    k.push_back('\x01');
    ASSERT_TRUE(w.Put(k, "\x01hello").ok());
    ASSERT_TRUE(w.Finish().ok());
    for (auto h : cfs)
      ASSERT_TRUE(other->DestroyColumnFamilyHandle(h).ok());
  }
  auto set = *files;
  set[2].path = foreign;
  auto err = b->ingest(set);
  EXPECT_EQ(code_of(err), ec::checkpoint_corrupt) << describe(err);
  // Refused by RocksDB's ingestion, not by makima's checks before it.
  EXPECT_NE(describe(err).find("cannot be ingested"), std::string::npos)
      << describe(err);
  auto rec = b->get_task("t1");
  ASSERT_TRUE(rec);
  EXPECT_FALSE(*rec) << "the tasks file was ingested without the others";
  int n = 0;
  ASSERT_FALSE(
      b->for_each_event("t1", [&](uint64_t, std::string_view) { ++n; }));
  EXPECT_EQ(n, 0);
  EXPECT_TRUE(outputs(*b, "t1").empty());
  // The same set with makima's own output file goes in.
  ASSERT_FALSE(b->ingest(*files));
  EXPECT_EQ(outputs(*b, "t1").size(), 3u);
}
