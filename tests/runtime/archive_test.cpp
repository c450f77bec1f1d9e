// Tests of makima::archive (runtime/archive/archive.hpp): a state dir
// captured into index, archive and chunk blobs comes back byte for byte with
// its modes, mtimes and symlinks; the same dir gives the same blobs; and
// hostile indexes, archives and chunks (crafted here with libarchive, zstd
// and nlohmann directly) are refused without leaving anything behind.
#include "runtime/archive/archive.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zstd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/error.hpp"
#include "tests/fixtures/temp_dir.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace makima;
using makima::test::read_file;
using makima::test::temp_dir;
using makima::test::write_file;

namespace {

// -- helpers ------------------------------------------------------------------

/// A temp dir whose read-only directories (populate's `sealed`) are made
/// writable again before it is removed, for runs as a non-root user.
struct tmp : temp_dir {
  tmp() : temp_dir("makima-archive") {}
  ~tmp() {
    std::error_code err;
    for (fs::recursive_directory_iterator it{path(), err}, end;
         !err && it != end; it.increment(err))
      if (it->is_directory(err) && !it->is_symlink(err))
        ::chmod(it->path().c_str(), 0755);
  }
};

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  std::string out;
  char buf[3];
  for (unsigned i = 0; i < len; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", md[i]);
    out += buf;
  }
  return out;
}

/// Deterministic incompressible bytes.
std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 gen{seed};
  std::string out(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    auto v = gen();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

void set_mtime(const fs::path& p, int64_t sec, long nsec) {
  struct timespec ts[2];
  ts[0].tv_sec = sec;
  ts[0].tv_nsec = nsec;
  ts[1] = ts[0];
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0) << p;
}

/// What lstat and the bytes say about every entry under `root`.
struct node {
  char type = '?';
  unsigned mode = 0;
  int64_t mtime = 0;
  std::string content; // file bytes, or the symlink target
  bool operator==(const node& o) const {
    return type == o.type && mode == o.mode && mtime == o.mtime
           && content == o.content;
  }
};

std::ostream& operator<<(std::ostream& os, const node& n) {
  return os << n.type << " mode " << std::oct << n.mode << std::dec << " mtime "
            << n.mtime << " " << n.content.size() << " bytes";
}

std::map<std::string, node> snapshot(const fs::path& root) {
  std::map<std::string, node> out;
  for (auto it = fs::recursive_directory_iterator{root};
       it != fs::recursive_directory_iterator{}; ++it) {
    struct stat st;
    EXPECT_EQ(::lstat(it->path().c_str(), &st), 0);
    node n;
    n.mode = st.st_mode & 07777;
    n.mtime = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000
              + st.st_mtim.tv_nsec;
    if (S_ISREG(st.st_mode)) {
      n.type = 'f';
      n.content = read_file(it->path());
    } else if (S_ISDIR(st.st_mode)) {
      n.type = 'd';
    } else if (S_ISLNK(st.st_mode)) {
      n.type = 'l';
      n.mode = 0; // Linux symlinks have no mode of their own
      n.content = fs::read_symlink(it->path()).string();
    }
    out[it->path().lexically_relative(root).string()] = std::move(n);
  }
  return out;
}

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator{dir})
    out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

archive::captured capture_ok(const fs::path& dir, const fs::path& staging,
                             const archive::limits& lim = {},
                             std::optional<fs::path> previous = {}) {
  auto r = archive::capture(dir, staging, lim, previous);
  if (!r) {
    ADD_FAILURE() << "capture " << dir << ": " << describe(r.error());
    return {};
  }
  return std::move(*r);
}

archive::chunk_source chunks_in(const fs::path& staging) {
  return [staging](const std::string& sha) -> caf::expected<fs::path> {
    auto p = staging / sha;
    if (!fs::exists(p))
      return make_error(ec::object_not_found, "no chunk " + sha);
    return p;
  };
}

caf::error restore_from(const archive::captured& c, const fs::path& staging,
                        const fs::path& target,
                        const archive::limits& lim = {}) {
  std::optional<fs::path> arch;
  if (c.archive)
    arch = c.archive->file;
  return archive::restore(c.index.file, arch, chunks_in(staging), target, lim);
}

std::string zstd(const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  auto n = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

std::string unzstd(const std::string& data) {
  auto size = ZSTD_getFrameContentSize(data.data(), data.size());
  EXPECT_NE(size, ZSTD_CONTENTSIZE_ERROR);
  EXPECT_NE(size, ZSTD_CONTENTSIZE_UNKNOWN);
  std::string out(size, '\0');
  auto n = ZSTD_decompress(out.data(), out.size(), data.data(), data.size());
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

/// A tar member to craft: a file (`content`) or a symlink (`link`).
struct member {
  member(std::string n, std::string c, std::string l = {})
      : name(std::move(n)), content(std::move(c)), link(std::move(l)) {}
  std::string name;
  std::string content;
  std::string link;
};

/// A zstd-compressed pax tar of `members`, written with libarchive directly.
void write_tar(const fs::path& file, const std::vector<member>& members) {
  std::vector<char> buf(1 << 20);
  size_t used = 0;
  auto a = archive_write_new();
  archive_write_set_format_pax(a);
  archive_write_add_filter_none(a);
  archive_write_set_bytes_in_last_block(a, 1);
  ASSERT_EQ(archive_write_open_memory(a, buf.data(), buf.size(), &used),
            ARCHIVE_OK);
  for (const auto& m : members) {
    auto e = archive_entry_new();
    archive_entry_set_pathname(e, m.name.c_str());
    if (!m.link.empty()) {
      archive_entry_set_filetype(e, AE_IFLNK);
      archive_entry_set_symlink(e, m.link.c_str());
      archive_entry_set_perm(e, 0777);
    } else {
      archive_entry_set_filetype(e, AE_IFREG);
      archive_entry_set_perm(e, 0644);
      archive_entry_set_size(e, m.content.size());
    }
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK)
        << archive_error_string(a);
    if (m.link.empty() && !m.content.empty())
      archive_write_data(a, m.content.data(), m.content.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  write_file(file, zstd(std::string{buf.data(), used}));
}

void write_index(const fs::path& file, const json& entries) {
  json doc{
      {"format", "makima-state-index"}, {"version", 1}, {"entries", entries}};
  write_file(file, zstd(doc.dump()));
}

json file_entry(const std::string& path, uint64_t size) {
  return json{{"path", path},
              {"type", "file"},
              {"mode", 0644},
              {"mtime", 0},
              {"size", size}};
}

json dir_entry(const std::string& path) {
  return json{{"path", path}, {"type", "dir"}, {"mode", 0755}, {"mtime", 0}};
}

/// A dir holding one of everything the state dir may hold.
void populate(const fs::path& d) {
  write_file(d / "a.txt", "hello\n");
  write_file(d / "bin/run.sh", "#!/bin/sh\necho hi\n");
  fs::permissions(d / "bin/run.sh", fs::perms(0755));
  write_file(d / "ro.txt", "read only");
  fs::permissions(d / "ro.txt", fs::perms(0444));
  std::string all;
  for (int i = 0; i < 256; ++i)
    all += static_cast<char>(i);
  write_file(d / "binary.bin", all + all + std::string(1000, '\0'));
  write_file(d / "empty.txt", "");
  fs::create_symlink("a.txt", d / "link");
  fs::create_symlink("nowhere/x", d / "dangling");
  fs::create_directories(d / "empty");
  fs::permissions(d / "empty", fs::perms(0700));
  write_file(d / "d1/d2/d3/deep.txt", "deep");
  write_file(d / "sealed/inside.txt", "sealed");
  write_file(d / "caf\xc3\xa9.txt", "utf-8 name");
  write_file(d / (std::string(120, 'n') + "/" + std::string(150, 'm')),
             "long names");
  write_file(d / "a-b", "sorts before a/");
  set_mtime(d / "a.txt", 1'700'000'000, 123'456'789);
  set_mtime(d / "link", 1'600'000'000, 5);
  set_mtime(d / "d1/d2", 1'500'000'000, 0);
  fs::permissions(d / "sealed", fs::perms(0555));
}

// -- capture ------------------------------------------------------------------

TEST(ArchiveCapture, BlobsAreNamedBySha256OfTheirBytes) {
  tmp t;
  populate(t / "state");
  write_file(t / "state/big", random_bytes(9 << 20, 1));
  auto c = capture_ok(t / "state", t / "staging");
  ASSERT_TRUE(c.archive);
  EXPECT_EQ(c.index.role, "state-index");
  EXPECT_EQ(c.archive->role, "state-archive");
  ASSERT_EQ(c.chunks.size(), 3u); // 9 MiB: 4 + 4 + 1
  std::vector<archive::blob> all{c.index, *c.archive};
  all.insert(all.end(), c.chunks.begin(), c.chunks.end());
  for (const auto& b : all) {
    EXPECT_EQ(b.file, t / "staging" / b.sha256);
    EXPECT_TRUE(b.staged);
    auto bytes = read_file(b.file);
    EXPECT_EQ(sha256_hex(bytes), b.sha256) << b.role;
    EXPECT_EQ(bytes.size(), b.size) << b.role;
  }
  for (const auto& ch : c.chunks)
    EXPECT_EQ(ch.role, "state-chunk");
  // Nothing else in staging (no temporary file left).
  EXPECT_EQ(listing(t / "staging").size(), all.size());
  EXPECT_EQ(c.bytes, (9u << 20) + 6 + 18 + 9 + 1512 + 0 + 4 + 6 + 10 + 10 + 15);
}

TEST(ArchiveCapture, IndexIsSortedJsonAsDumpWritesIt) {
  tmp t;
  populate(t / "state");
  write_file(t / "state/big", random_bytes(5 << 20, 2));
  auto c = capture_ok(t / "state", t / "staging");
  auto text = unzstd(read_file(c.index.file));
  auto doc = json::parse(text);
  EXPECT_EQ(doc.dump(), text);
  EXPECT_EQ(doc["format"], "makima-state-index");
  EXPECT_EQ(doc["version"], 1);
  const auto& entries = doc["entries"];
  ASSERT_EQ(entries.size(), c.entries);
  std::vector<std::string> paths;
  for (const auto& e : entries)
    paths.push_back(e["path"]);
  EXPECT_TRUE(std::is_sorted(paths.begin(), paths.end()));
  // "a-b" sorts before "a.txt" and "a/…" in byte order.
  EXPECT_EQ(paths.front(), "a-b");
  for (const auto& e : entries) {
    if (e["path"] == "link") {
      EXPECT_EQ(e["type"], "symlink");
      EXPECT_EQ(e["target"], "a.txt");
      EXPECT_EQ(e["mtime"], int64_t{1'600'000'000'000'000'005});
    } else if (e["path"] == "a.txt") {
      EXPECT_EQ(e["mtime"], int64_t{1'700'000'000'123'456'789});
      EXPECT_EQ(e["mode"], 0644);
      EXPECT_EQ(e["size"], 6);
      EXPECT_FALSE(e.contains("chunks"));
    } else if (e["path"] == "big") {
      ASSERT_EQ(e["chunks"].size(), 2u);
      EXPECT_EQ(e["chunks"][0]["size"], 4 << 20);
      EXPECT_EQ(e["chunks"][1]["size"], 1 << 20);
      EXPECT_EQ(e["chunks"][0]["sha256"], c.chunks[0].sha256);
      EXPECT_EQ(e["chunks"][0]["compressed"], c.chunks[0].size);
    } else if (e["path"] == "empty") {
      EXPECT_EQ(e["type"], "dir");
      EXPECT_EQ(e["mode"], 0700);
    }
  }
  auto digests = archive::chunk_digests(c.index.file);
  ASSERT_TRUE(digests) << describe(digests.error());
  EXPECT_EQ(*digests,
            (std::vector<std::string>{c.chunks[0].sha256, c.chunks[1].sha256}));
}

TEST(ArchiveCapture, SameDirGivesSameBytesAcrossProcesses) {
  tmp t;
  populate(t / "state");
  write_file(t / "state/big", random_bytes(10 << 20, 3));
  auto a = capture_ok(t / "state", t / "s1");
  auto b = capture_ok(t / "state", t / "s2");
  // A second process too (a pid or a clock in a header would show here).
  auto pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto r = archive::capture(t / "state", t / "s3");
    ::_exit(r ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_TRUE(a.archive && b.archive);
  EXPECT_EQ(a.index.sha256, b.index.sha256);
  EXPECT_EQ(a.archive->sha256, b.archive->sha256);
  ASSERT_EQ(a.chunks.size(), b.chunks.size());
  for (size_t i = 0; i < a.chunks.size(); ++i)
    EXPECT_EQ(a.chunks[i].sha256, b.chunks[i].sha256);
  EXPECT_EQ(listing(t / "s1"), listing(t / "s3"));
}

TEST(ArchiveCapture, SmallFileChangeChangesArchiveNotChunks) {
  tmp t;
  populate(t / "state");
  write_file(t / "state/big", random_bytes(6 << 20, 4));
  auto a = capture_ok(t / "state", t / "s1");
  write_file(t / "state/a.txt", "hellO\n");
  auto b = capture_ok(t / "state", t / "s2");
  ASSERT_TRUE(a.archive && b.archive);
  EXPECT_NE(a.archive->sha256, b.archive->sha256);
  EXPECT_NE(a.index.sha256, b.index.sha256); // a.txt's mtime changed
  ASSERT_EQ(a.chunks.size(), 2u);
  ASSERT_EQ(b.chunks.size(), 2u);
  EXPECT_EQ(a.chunks[0].sha256, b.chunks[0].sha256);
  EXPECT_EQ(a.chunks[1].sha256, b.chunks[1].sha256);
}

TEST(ArchiveCapture, ArchiveDependsOnContentNotMtimes) {
  tmp t;
  populate(t / "state");
  auto a = capture_ok(t / "state", t / "s1");
  set_mtime(t / "state/a.txt", 1'000, 0);
  auto b = capture_ok(t / "state", t / "s2");
  ASSERT_TRUE(a.archive && b.archive);
  EXPECT_EQ(a.archive->sha256, b.archive->sha256);
  EXPECT_NE(a.index.sha256, b.index.sha256);
}

TEST(ArchiveCapture, MiddleChangeOfALargeFileChangesOneChunk) {
  tmp t;
  auto data = random_bytes(20 << 20, 5);
  write_file(t / "state/big", data);
  auto a = capture_ok(t / "state", t / "s1");
  // 1 MiB at 9 MiB: inside the third chunk [8 MiB, 12 MiB).
  auto patch = random_bytes(1 << 20, 6);
  data.replace(9 << 20, patch.size(), patch);
  write_file(t / "state/big", data);
  auto b = capture_ok(t / "state", t / "s2");
  EXPECT_FALSE(a.archive);
  ASSERT_EQ(a.chunks.size(), 5u);
  ASSERT_EQ(b.chunks.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    if (i == 2)
      EXPECT_NE(a.chunks[i].sha256, b.chunks[i].sha256);
    else
      EXPECT_EQ(a.chunks[i].sha256, b.chunks[i].sha256) << "chunk " << i;
  }
}

TEST(ArchiveCapture, SharedChunksAreListedOnce) {
  tmp t;
  auto piece = random_bytes(4 << 20, 7);
  write_file(t / "state/x", piece + piece);
  write_file(t / "state/y", piece);
  auto c = capture_ok(t / "state", t / "staging");
  ASSERT_EQ(c.chunks.size(), 1u);
  auto digests = archive::chunk_digests(c.index.file);
  ASSERT_TRUE(digests);
  EXPECT_EQ(digests->size(), 1u);
  ASSERT_FALSE(restore_from(c, t / "staging", t / "out"));
  EXPECT_EQ(read_file(t / "out/x"), piece + piece);
  EXPECT_EQ(read_file(t / "out/y"), piece);
}

TEST(ArchiveCapture, PreviousIndexReusesUnchangedLargeFiles) {
  tmp t;
  populate(t / "state");
  write_file(t / "state/big", random_bytes(9 << 20, 8));
  write_file(t / "state/other", random_bytes(2 << 20, 9));
  auto a = capture_ok(t / "state", t / "s1");
  write_file(t / "state/other", random_bytes(2 << 20, 10));
  auto b = capture_ok(t / "state", t / "s2", {}, a.index.file);
  // big's three chunks are reused (not written), other's one is new.
  ASSERT_EQ(b.chunks.size(), 4u);
  std::set<std::string> staged_files;
  for (const auto& ch : b.chunks) {
    EXPECT_EQ(fs::exists(ch.file), ch.staged) << ch.sha256;
    if (ch.staged)
      staged_files.insert(ch.sha256);
  }
  EXPECT_EQ(staged_files.size(), 1u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(b.chunks[i].sha256, a.chunks[i].sha256);
    EXPECT_EQ(b.chunks[i].size, a.chunks[i].size);
    EXPECT_FALSE(b.chunks[i].staged);
  }
  // staging holds the index, the archive and other's chunk only.
  EXPECT_EQ(listing(t / "s2").size(), 3u);
  // The index is what a full capture writes.
  auto full = capture_ok(t / "state", t / "s3");
  EXPECT_EQ(b.index.sha256, full.index.sha256);
  // Restoring with chunks from both stagings gives the dir back.
  auto src = [&](const std::string& sha) -> caf::expected<fs::path> {
    for (auto s : {t / "s2", t / "s1"})
      if (fs::exists(s / sha))
        return s / sha;
    return make_error(ec::object_not_found, sha);
  };
  ASSERT_FALSE(archive::restore(b.index.file, b.archive->file, src, t / "out"));
  EXPECT_EQ(snapshot(t / "out"), snapshot(t / "state"));
}

TEST(ArchiveCapture, PreviousIndexIgnoredWhenTheFileChanged) {
  tmp t;
  write_file(t / "state/big", random_bytes(5 << 20, 11));
  auto a = capture_ok(t / "state", t / "s1");
  // Same size, new content and mtime.
  write_file(t / "state/big", random_bytes(5 << 20, 12));
  set_mtime(t / "state/big", 1'800'000'000, 0);
  auto b = capture_ok(t / "state", t / "s2", {}, a.index.file);
  ASSERT_EQ(b.chunks.size(), 2u);
  for (const auto& ch : b.chunks)
    EXPECT_TRUE(ch.staged && fs::exists(ch.file));
  EXPECT_NE(b.chunks[0].sha256, a.chunks[0].sha256);
}

TEST(ArchiveCapture, MissingDirIsAnEmptyCapture) {
  tmp t;
  auto c = capture_ok(t / "absent", t / "staging");
  EXPECT_EQ(c.entries, 0u);
  EXPECT_EQ(c.bytes, 0u);
  EXPECT_FALSE(c.archive);
  EXPECT_TRUE(c.chunks.empty());
  ASSERT_FALSE(restore_from(c, t / "staging", t / "out"));
  EXPECT_TRUE(fs::is_directory(t / "out"));
  EXPECT_TRUE(listing(t / "out").empty());
}

TEST(ArchiveCapture, SkipsFifos) {
  tmp t;
  write_file(t / "state/f", "x");
  ASSERT_EQ(::mkfifo((t / "state/pipe").c_str(), 0600), 0);
  auto c = capture_ok(t / "state", t / "staging");
  EXPECT_EQ(c.entries, 1u);
  ASSERT_FALSE(restore_from(c, t / "staging", t / "out"));
  EXPECT_EQ(listing(t / "out"), std::vector<std::string>{"f"});
}

TEST(ArchiveCapture, EnforcesLimits) {
  tmp t;
  for (int i = 0; i < 5; ++i)
    write_file(t / ("state/f" + std::to_string(i)), std::string(100, 'x'));
  archive::limits lim;
  lim.max_entries = 4;
  auto r = archive::capture(t / "state", t / "s1", lim);
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), ec::checkpoint_limit);
  EXPECT_NE(describe(r.error()).find("max_entries"), std::string::npos);
  lim = {};
  lim.max_bytes = 499;
  r = archive::capture(t / "state", t / "s2", lim);
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), ec::checkpoint_limit);
  EXPECT_NE(describe(r.error()).find("max_bytes"), std::string::npos);
  lim = {};
  lim.max_index = 100;
  r = archive::capture(t / "state", t / "s3", lim);
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), ec::checkpoint_limit);
  EXPECT_NE(describe(r.error()).find("max_index"), std::string::npos);
}

// -- restore ------------------------------------------------------------------

TEST(ArchiveRestore, RoundTripKeepsBytesModesTimesAndSymlinks) {
  tmp t;
  populate(t / "state");
  write_file(t / "state/d1/big", random_bytes((20 << 20) + 12345, 13));
  fs::permissions(t / "state/d1/big", fs::perms(0600));
  write_file(t / "state/exactly-1MiB", random_bytes(1 << 20, 14));
  write_file(t / "state/just-under", random_bytes((1 << 20) - 1, 15));
  auto before = snapshot(t / "state");
  auto c = capture_ok(t / "state", t / "staging");
  EXPECT_EQ(c.entries, before.size());
  ASSERT_EQ(c.chunks.size(), 7u); // 6 for big, 1 for exactly-1MiB
  auto err = restore_from(c, t / "staging", t / "out");
  ASSERT_FALSE(err) << describe(err);
  auto after = snapshot(t / "out");
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [path, n] : before) {
    auto it = after.find(path);
    ASSERT_NE(it, after.end()) << path;
    EXPECT_EQ(it->second, n) << path;
  }
  EXPECT_EQ(fs::read_symlink(t / "out/dangling"), "nowhere/x");
  // Capturing the copy gives the same blobs: nothing was lost.
  auto again = capture_ok(t / "out", t / "staging2");
  EXPECT_EQ(again.index.sha256, c.index.sha256);
  ASSERT_TRUE(again.archive);
  EXPECT_EQ(again.archive->sha256, c.archive->sha256);
  EXPECT_EQ(read_file(t / "out/link"), "hello\n");
  // Only `out` appeared beside the state dir (no temporary dir left).
  EXPECT_EQ(listing(t.path()),
            (std::vector<std::string>{"out", "staging", "staging2", "state"}));
}

TEST(ArchiveRestore, RefusesAnExistingTarget) {
  tmp t;
  write_file(t / "state/f", "x");
  auto c = capture_ok(t / "state", t / "staging");
  fs::create_directories(t / "out");
  write_file(t / "out/keep", "mine");
  auto err = restore_from(c, t / "staging", t / "out");
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), ec::io_error);
  EXPECT_EQ(listing(t / "out"), std::vector<std::string>{"keep"});
}

TEST(ArchiveRestore, MissingChunkFailsAndRemovesTarget) {
  tmp t;
  write_file(t / "state/small", "x");
  write_file(t / "state/big", random_bytes(5 << 20, 16));
  auto c = capture_ok(t / "state", t / "staging");
  fs::remove(c.chunks[1].file);
  fs::create_directories(t / "parent");
  auto err = restore_from(c, t / "staging", t / "parent/out");
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), ec::object_not_found);
  EXPECT_TRUE(listing(t / "parent").empty());
}

TEST(ArchiveRestore, FiftyMegabytesAndManySmallFiles) {
  tmp t;
  for (int i = 0; i < 1500; ++i)
    write_file(t
                   / ("state/d" + std::to_string(i % 30) + "/f"
                      + std::to_string(i) + ".txt"),
               "file " + std::to_string(i) + std::string(i % 700, 'z'));
  write_file(t / "state/big.bin", random_bytes(50 << 20, 17));
  auto t0 = std::chrono::steady_clock::now();
  auto c = capture_ok(t / "state", t / "staging");
  auto t1 = std::chrono::steady_clock::now();
  auto err = restore_from(c, t / "staging", t / "out");
  auto t2 = std::chrono::steady_clock::now();
  ASSERT_FALSE(err) << describe(err);
  EXPECT_EQ(c.entries, 1500u + 30 + 1);
  EXPECT_EQ(c.chunks.size(), 13u);
  EXPECT_EQ(snapshot(t / "out"), snapshot(t / "state"));
  auto ms = [](auto d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  std::printf("capture %lld ms, restore %lld ms (1500 small files + 50 MiB; "
              "index %llu B, archive %llu B)\n",
              static_cast<long long>(ms(t1 - t0)),
              static_cast<long long>(ms(t2 - t1)),
              static_cast<unsigned long long>(c.index.size),
              static_cast<unsigned long long>(c.archive->size));
}

// -- refusals -----------------------------------------------------------------

/// A restore expected to fail with `code` and a message naming `needle`,
/// leaving `parent` (which holds only the target's place) empty.
void expect_refused(const fs::path& index, std::optional<fs::path> arch,
                    const archive::chunk_source& chunks, const fs::path& parent,
                    ec code, const std::string& needle,
                    const archive::limits& lim = {}) {
  fs::create_directories(parent);
  auto err = archive::restore(index, arch, chunks, parent / "target", lim);
  ASSERT_TRUE(err) << "restore succeeded";
  EXPECT_EQ(code_of(err), code) << describe(err);
  EXPECT_NE(describe(err).find(needle), std::string::npos) << describe(err);
  EXPECT_FALSE(fs::exists(fs::symlink_status(parent / "target")));
  EXPECT_TRUE(listing(parent).empty());
}

archive::chunk_source no_chunks() {
  return [](const std::string& sha) -> caf::expected<fs::path> {
    return make_error(ec::object_not_found, sha);
  };
}

TEST(ArchiveRefusal, MemberWithDotDot) {
  tmp t;
  write_index(t / "index", json::array({file_entry("x", 3)}));
  write_tar(t / "archive", {{"../x", "bad"}});
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_unsafe_path, "../x");
  EXPECT_FALSE(fs::exists(t / "x"));
}

TEST(ArchiveRefusal, AbsoluteMember) {
  tmp t;
  fs::create_directories(t / "outside");
  auto abs = (t / "outside/x").string();
  write_index(t / "index", json::array({file_entry("x", 3)}));
  write_tar(t / "archive", {{abs, "bad"}});
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_unsafe_path, abs);
  EXPECT_TRUE(listing(t / "outside").empty());
}

TEST(ArchiveRefusal, MemberWrittenThroughASymlinkMember) {
  tmp t;
  fs::create_directories(t / "outside");
  write_index(t / "index", json::array({dir_entry("a"), file_entry("a/x", 3)}));
  write_tar(t / "archive",
            {{"a", "", (t / "outside").string()}, {"a/x", "bad"}});
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_unsafe_path, "'a'");
  EXPECT_TRUE(listing(t / "outside").empty());
}

TEST(ArchiveRefusal, IndexPathThroughASymlink) {
  tmp t;
  fs::create_directories(t / "outside");
  write_index(t / "index",
              json::array({json{{"path", "a"},
                                {"type", "symlink"},
                                {"mode", 0777},
                                {"mtime", 0},
                                {"target", (t / "outside").string()}},
                           file_entry("a/x", 3)}));
  write_tar(t / "archive", {{"a/x", "bad"}});
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_unsafe_path, "a/x");
  EXPECT_TRUE(listing(t / "outside").empty());
}

TEST(ArchiveRefusal, UnsafeIndexPaths) {
  tmp t;
  int i = 0;
  for (std::string bad :
       std::vector<std::string>{"../x", "/tmp/x", "a/../../x", "a//b", "",
                                "./x", std::string{"a\0b", 3}}) {
    auto dir = t / ("case" + std::to_string(i++));
    write_index(dir / "index",
                json::array({dir_entry("a"), file_entry(bad, 0)}));
    expect_refused(
        dir / "index", {}, no_chunks(), dir / "p", ec::checkpoint_unsafe_path,
        bad.find('\0') == std::string::npos ? "'" + bad + "'" : "'a\\x00b'");
  }
}

TEST(ArchiveRefusal, IndexOverMaxIndex) {
  tmp t;
  json entries = json::array();
  for (int i = 0; i < 200; ++i)
    entries.push_back(dir_entry("d" + std::to_string(1000 + i)));
  write_index(t / "index", entries);
  archive::limits lim;
  lim.max_index = 4096;
  expect_refused(t / "index", {}, no_chunks(), t / "p", ec::checkpoint_limit,
                 "max_index", lim);
  auto d = archive::chunk_digests(t / "index", lim);
  ASSERT_FALSE(d);
  EXPECT_EQ(code_of(d.error()), ec::checkpoint_limit);
}

TEST(ArchiveRefusal, EntriesOverMaxEntries) {
  tmp t;
  json entries = json::array();
  for (int i = 0; i < 10; ++i)
    entries.push_back(dir_entry("d" + std::to_string(i)));
  write_index(t / "index", entries);
  archive::limits lim;
  lim.max_entries = 9;
  expect_refused(t / "index", {}, no_chunks(), t / "p", ec::checkpoint_limit,
                 "max_entries", lim);
}

TEST(ArchiveRefusal, TotalOverMaxBytes) {
  tmp t;
  write_index(t / "index",
              json::array({file_entry("a", 600), file_entry("b", 600)}));
  write_tar(t / "archive",
            {{"a", std::string(600, 'a')}, {"b", std::string(600, 'b')}});
  archive::limits lim;
  lim.max_bytes = 1000;
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_limit, "max_bytes", lim);
}

/// One ustar header block, written by hand (for what libarchive's writer
/// would not produce).
std::string tar_header(const std::string& name, size_t size, char type) {
  std::string h(512, '\0');
  std::memcpy(h.data(), name.data(), std::min<size_t>(name.size(), 100));
  std::snprintf(h.data() + 100, 8, "%07o", 0644);
  std::snprintf(h.data() + 108, 8, "%07o", 0);
  std::snprintf(h.data() + 116, 8, "%07o", 0);
  std::snprintf(h.data() + 124, 12, "%011zo", size);
  std::snprintf(h.data() + 136, 12, "%011o", 0);
  h[156] = type;
  std::memcpy(h.data() + 257,
              "ustar\0"
              "00",
              8);
  std::memset(h.data() + 148, ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : h)
    sum += c;
  std::snprintf(h.data() + 148, 8, "%06o", sum);
  h[155] = ' ';
  return h;
}

std::string padded(std::string s) {
  s.resize((s.size() + 511) / 512 * 512, '\0');
  return s;
}

TEST(ArchiveRefusal, ArchiveDecompressingBeyondTheBound) {
  tmp t;
  // Three 900 KB pax records (libarchive takes up to 1 MiB each) before
  // the one small member: the decompressed stream passes max_bytes plus
  // the headers' allowance (16 KiB a member and 1 MiB).
  std::string rec = " comment=" + std::string(900'000, 'c') + "\n";
  auto len = rec.size() + 6; // 6 digits
  rec = std::to_string(len) + rec;
  ASSERT_EQ(rec.size(), len);
  std::string tar;
  for (int i = 0; i < 3; ++i)
    tar += tar_header("PaxHeader/x", rec.size(), 'x') + padded(rec);
  tar += tar_header("x", 1, '0') + padded("y") + std::string(1024, '\0');
  write_file(t / "archive", zstd(tar));
  write_index(t / "index", json::array({file_entry("x", 1)}));
  archive::limits lim;
  lim.max_bytes = 1000;
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_limit, "max_bytes", lim);
}

TEST(ArchiveRefusal, ChunkOfAnotherSize) {
  tmp t;
  for (int delta : {+1, -1}) {
    auto dir = t / (delta > 0 ? "longer" : "shorter");
    auto chunk = zstd(std::string(1000 + delta, 'c'));
    write_file(dir / "chunk", chunk);
    auto sha = sha256_hex(chunk);
    auto e = file_entry("big", 1000);
    e["chunks"] = json::array(
        {json{{"sha256", sha}, {"size", 1000}, {"compressed", chunk.size()}}});
    write_index(dir / "index", json::array({e}));
    auto src = [&](const std::string&) -> caf::expected<fs::path> {
      return dir / "chunk";
    };
    expect_refused(dir / "index", {}, src, dir / "p", ec::checkpoint_corrupt,
                   sha);
  }
}

TEST(ArchiveRefusal, MemberNotInTheIndex) {
  tmp t;
  write_index(t / "index", json::array({file_entry("x", 3)}));
  write_tar(t / "archive", {{"x", "abc"}, {"y", "extra"}});
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_corrupt, "'y'");
}

TEST(ArchiveRefusal, MemberOfAnotherSize) {
  tmp t;
  write_index(t / "index", json::array({file_entry("x", 5)}));
  write_tar(t / "archive", {{"x", "abc"}});
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_corrupt, "'x'");
}

TEST(ArchiveRefusal, FileMissingFromTheArchive) {
  tmp t;
  write_index(t / "index",
              json::array({file_entry("x", 3), file_entry("z", 1)}));
  write_tar(t / "archive", {{"x", "abc"}});
  expect_refused(t / "index", t / "archive", no_chunks(), t / "p",
                 ec::checkpoint_corrupt, "'z'");
}

TEST(ArchiveRefusal, DamagedBlobs) {
  tmp t;
  write_file(t / "garbage", "not zstd at all");
  expect_refused(t / "garbage", {}, no_chunks(), t / "p1",
                 ec::checkpoint_corrupt, "garbage");
  write_file(t / "notjson", zstd("{not json"));
  expect_refused(t / "notjson", {}, no_chunks(), t / "p2",
                 ec::checkpoint_corrupt, "notjson");
  write_index(t / "index", json::array({file_entry("x", 3)}));
  auto tar = read_file([&] {
    write_tar(t / "good", {{"x", "abc"}});
    return t / "good";
  }());
  write_file(t / "truncated", tar.substr(0, tar.size() / 2));
  expect_refused(t / "index", t / "truncated", no_chunks(), t / "p3",
                 ec::checkpoint_corrupt, "truncated");
}

} // namespace
