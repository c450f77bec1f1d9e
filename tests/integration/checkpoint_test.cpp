// Checkpoints end to end with the real binary: a task's worktree, state dir
// and records written to a file:// store by `task checkpoint` or by `run
// --checkpoint-interval`, restored into another data dir by `task restore`,
// continued by `task resume`; and every refusal of a damaged, foreign or
// unsigned checkpoint.
#include <sys/stat.h>
#include <utime.h>

#include <map>
#include <set>
#include <sstream>

#include "tests/fixtures/s3_server.hpp"
#include "tests/integration/helpers.hpp"

namespace makima::it {
namespace {

// One file system entry as the byte-for-byte comparison sees it.
struct entry {
  char type = '?'; // f, d, l
  mode_t mode = 0;
  std::string content; // file bytes or symlink target
  bool operator==(const entry& o) const {
    return type == o.type && mode == o.mode && content == o.content;
  }
};

// Every entry under `dir` but `.git` and those named in `skip`.
std::map<std::string, entry> tree(const fs::path& dir,
                                  const std::set<std::string>& skip = {}) {
  std::map<std::string, entry> out;
  if (!fs::exists(dir))
    return out;
  for (auto it = fs::recursive_directory_iterator(dir);
       it != fs::recursive_directory_iterator(); ++it) {
    auto rel = it->path().lexically_relative(dir).string();
    if (rel == ".git" || skip.count(rel)) {
      if (it->is_directory() && !it->is_symlink())
        it.disable_recursion_pending();
      continue;
    }
    struct stat st {};
    ::lstat(it->path().c_str(), &st);
    entry e;
    e.mode = st.st_mode & 07777;
    if (S_ISLNK(st.st_mode)) {
      e.type = 'l';
      e.mode = 0;
      e.content = fs::read_symlink(it->path()).string();
    } else if (S_ISDIR(st.st_mode)) {
      e.type = 'd';
    } else {
      e.type = 'f';
      e.content = slurp(it->path());
    }
    out[rel] = std::move(e);
  }
  return out;
}

// Describes the first difference of two trees, or "" when equal.
std::string diff(const std::map<std::string, entry>& a,
                 const std::map<std::string, entry>& b) {
  for (auto& [k, v] : a) {
    auto i = b.find(k);
    if (i == b.end())
      return "missing in the restored tree: " + k;
    if (!(i->second == v)) {
      std::ostringstream s;
      s << "differs: " << k << " (type " << v.type << "/" << i->second.type
        << ", mode " << std::oct << v.mode << "/" << i->second.mode << std::dec
        << ", " << v.content.size() << "/" << i->second.content.size()
        << " bytes)";
      return s.str();
    }
  }
  for (auto& [k, v] : b)
    if (!a.count(k))
      return "only in the restored tree: " + k;
  return {};
}

// Files under `dir` (recursively) and their total size.
std::pair<size_t, uint64_t> count_files(const fs::path& dir) {
  size_t n = 0;
  uint64_t bytes = 0;
  if (!fs::exists(dir))
    return {0, 0};
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) {
      ++n;
      bytes += e.file_size();
    }
  return {n, bytes};
}

// The task's first attempt changes its worktree in every way a checkpoint
// must carry (a commit, a modification, a deletion, a mode change,
// untracked files in a new dir, a symlink, a binary and a large file, an
// ignored file that must not travel) and fills its state dir; a resumed
// attempt checks what it finds and succeeds.
const char* work_script = R"SH(
set -e
if [ "$MAKIMA_RESUMED" = 1 ]; then
  echo "attempt $MAKIMA_ATTEMPT resumed"
  cat "$MAKIMA_STATE_DIR/notes.txt"
  test -f untracked/new.txt
  test -L link-to-a
  test ! -e ignored.log
  exit 0
fi
echo "attempt $MAKIMA_ATTEMPT working"
echo committed > committed.txt
git add committed.txt
git -c user.name=t -c user.email=t@t commit -q -m "task commit"
a=$(git ls-files | grep -v committed | sed -n 1p)
b=$(git ls-files | grep -v committed | sed -n 2p)
c=$(git ls-files | grep -v committed | sed -n 3p)
echo more >> "$a"
rm "$b"
chmod +x "$c"
mkdir -p untracked/deeper
echo new > untracked/new.txt
echo deeper > untracked/deeper/x.txt
ln -s "$a" link-to-a
printf '\000\001\002binary\377' > bin.dat
head -c "$BIG" /dev/urandom > big.bin
echo '*.log' > .gitignore
echo ignored > ignored.log
mkdir -p "$MAKIMA_STATE_DIR/empty" "$MAKIMA_STATE_DIR/sub"
echo "notes of attempt 1" > "$MAKIMA_STATE_DIR/notes.txt"
head -c 2500000 /dev/urandom > "$MAKIMA_STATE_DIR/sub/big"
ln -s notes.txt "$MAKIMA_STATE_DIR/link"
echo "attempt 1 done"
exit 3
)SH";

class Checkpoint : public ::testing::Test {
protected:
  void SetUp() override {
    origin_ = test::make_repo(a_.root() / "origin", {20, 3});
    store_ = a_.root() / "store";
    b_.set_data(b_.root() / "data");
  }
  std::string store_url() const { return "file://" + store_.string(); }
  std::vector<std::string> with_store(std::vector<std::string> args) const {
    args.push_back("--store");
    args.push_back(store_url());
    return args;
  }
  // Runs the work script as task `id` in data dir A (exits 3).
  // `big`: bytes of the large random file in the worktree.
  void run_work(const std::string& id, size_t big = 3000000) {
    auto r =
        a_.run({"--id", id, "--repo", origin_.string(), "--env",
                "BIG=" + std::to_string(big), "--", "sh", "-c", work_script},
               60000ms);
    ASSERT_EQ(r.exit_code, 3) << r.err;
    ASSERT_NE(r.out.find("attempt 1 done"), std::string::npos) << r.out;
  }
  // `makima task SUB ARG --store STORE` in `e`, with `vars` in its
  // environment.
  test::run_result
  task_with_store(const env& e, const std::string& sub, const std::string& arg,
                  const std::map<std::string, std::string>& vars) {
    auto o = e.opts(60000ms);
    for (auto& [k, v] : vars)
      o.env[k] = v;
    return test::run(e.task_argv(sub, with_store({arg})), o);
  }
  test::run_result checkpoint(const env& e, const std::string& id,
                              std::map<std::string, std::string> vars = {}) {
    return task_with_store(e, "checkpoint", id, vars);
  }
  test::run_result restore(const env& e, const std::string& ref,
                           std::map<std::string, std::string> vars = {}) {
    return task_with_store(e, "restore", ref, vars);
  }
  test::run_result cp(const env& e, std::vector<std::string> args,
                      std::map<std::string, std::string> vars = {}) {
    std::vector<std::string> argv{MAKIMA_BINARY, "checkpoint"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--data-dir");
    argv.push_back(e.data().string());
    argv = with_store(argv);
    auto o = e.opts(60000ms);
    for (auto& [k, v] : vars)
      o.env[k] = v;
    return test::run(argv, o);
  }
  env a_;
  env b_;
  fs::path origin_;
  fs::path store_;
};

TEST_F(Checkpoint, restores_worktree_state_dir_and_records_byte_for_byte) {
  run_work("t1", 50u << 20);
  auto c = checkpoint(a_, "t1");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "t1/1\n");
  auto r = restore(b_, "t1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "t1\n");
  EXPECT_NE(r.err.find("makima task resume t1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("mirror cloned"), std::string::npos) << r.err;
  // The worktree: everything but the ignored file, byte for byte and mode
  // for mode; the task's own commit is on the restored branch.
  auto wa = a_.data() / "worktrees" / "t1";
  auto wb = b_.data() / "worktrees" / "t1";
  auto ta = tree(wa, {"ignored.log"});
  auto tb = tree(wb);
  EXPECT_EQ(diff(ta, tb), "");
  EXPECT_TRUE(tb.count("untracked/deeper/x.txt"));
  EXPECT_EQ(tb["link-to-a"].type, 'l');
  EXPECT_EQ(tb["big.bin"].content.size(), 50u << 20);
  EXPECT_FALSE(fs::exists(wb / "ignored.log"));
  EXPECT_EQ(test::git(wb, {"log", "-1", "--format=%s", "HEAD"}), "task commit");
  EXPECT_EQ(test::git(wb, {"rev-parse", "--abbrev-ref", "HEAD"}), "makima/t1");
  // Uncommitted work shows as changes, not as commits.
  auto status = test::git(wb, {"status", "--porcelain"});
  EXPECT_NE(status.find("?? untracked/"), std::string::npos) << status;
  EXPECT_NE(status.find(" D "), std::string::npos) << status;
  // The state dir, empty dir and symlink included.
  auto sa = tree(a_.data() / "state" / "t1");
  auto sb = tree(b_.data() / "state" / "t1");
  EXPECT_EQ(diff(sa, sb), "");
  EXPECT_EQ(sb["empty"].type, 'd');
  EXPECT_EQ(sb["link"].type, 'l');
  // The records: interrupted at attempt 1 with the whole output.
  auto shown = b_.show("t1");
  EXPECT_EQ(shown.value("state", ""), "interrupted");
  EXPECT_EQ(shown.value("attempt", 0), 1);
  auto logs = b_.task("logs", {"t1"});
  EXPECT_NE(logs.out.find("attempt 1 working"), std::string::npos) << logs.out;
  // Resume in the new data dir: attempt 2 sees MAKIMA_RESUMED=1 and the
  // files; the log continues after attempt 1's output.
  auto res = b_.task("resume", {"t1"}, 60000ms);
  EXPECT_EQ(res.exit_code, 0) << res.out << res.err;
  EXPECT_NE(res.out.find("attempt 2 resumed"), std::string::npos) << res.out;
  EXPECT_NE(res.out.find("notes of attempt 1"), std::string::npos) << res.out;
  auto all = b_.task("logs", {"t1"});
  auto first = all.out.find("attempt 1 done");
  auto second = all.out.find("attempt 2 resumed");
  ASSERT_NE(first, std::string::npos) << all.out;
  ASSERT_NE(second, std::string::npos) << all.out;
  EXPECT_LT(first, second);
}

TEST_F(Checkpoint, an_unchanged_checkpoint_uploads_only_its_manifest) {
  run_work("t2");
  ASSERT_EQ(checkpoint(a_, "t2").exit_code, 0);
  auto before = count_files(store_ / "cas");
  auto again = checkpoint(a_, "t2");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, "t2/2\n");
  auto after = count_files(store_ / "cas");
  EXPECT_EQ(after.first, before.first);
  EXPECT_EQ(after.second, before.second);
  auto manifest = store_ / "tasks/t2/checkpoints/2.json";
  ASSERT_TRUE(fs::exists(manifest));
  EXPECT_LE(fs::file_size(manifest), 4096u);
  // +1 MiB of incompressible bytes in the worktree: about 1 MiB more.
  auto r = test::sh("head -c 1048576 /dev/urandom > '"
                    + (a_.data() / "worktrees/t2/extra.bin").string() + "'");
  ASSERT_EQ(r.exit_code, 0);
  auto third = checkpoint(a_, "t2");
  ASSERT_EQ(third.exit_code, 0) << third.err;
  auto grown = count_files(store_ / "cas");
  auto added = grown.second - after.second;
  EXPECT_GE(added, 1048576u);
  EXPECT_LE(added, 1363149u) << "1.3 MiB at most for 1 MiB of changes";
  // The chain restores to the latest state, into a warm data dir: one
  // whose mirror of the origin exists (a task of it ran there), so nothing
  // is cloned.
  auto warmup =
      b_.run({"--id", "w0", "--repo", origin_.string(), "--", "true"});
  ASSERT_EQ(warmup.exit_code, 0) << warmup.err;
  auto res = restore(b_, "t2");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_EQ(res.err.find("mirror cloned"), std::string::npos) << res.err;
  EXPECT_EQ(diff(tree(a_.data() / "worktrees/t2", {"ignored.log"}),
                 tree(b_.data() / "worktrees/t2")),
            "");
  EXPECT_EQ(slurp(b_.data() / "worktrees/t2/extra.bin"),
            slurp(a_.data() / "worktrees/t2/extra.bin"));
}

TEST_F(Checkpoint, list_show_verify_and_gc) {
  run_work("t3");
  ASSERT_EQ(checkpoint(a_, "t3").exit_code, 0);
  ASSERT_EQ(checkpoint(a_, "t3").exit_code, 0);
  auto list = cp(a_, {"list", "--json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  auto rows = json::parse(list.out);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].value("ref", ""), "t3/1");
  EXPECT_TRUE(rows[0]["parent"].is_null());
  EXPECT_EQ(rows[1].value("parent", 0), 1);
  auto text = cp(a_, {"list", "--task", "t3"});
  EXPECT_NE(text.out.find("t3/2"), std::string::npos) << text.out;
  auto show = cp(a_, {"show", "t3/1", "--json"});
  ASSERT_EQ(show.exit_code, 0) << show.err;
  auto m = json::parse(show.out);
  EXPECT_EQ(m.value("format", ""), "makima-checkpoint");
  EXPECT_EQ(m["repo"]["base_commit"].get<std::string>().size(), 40u);
  // The latest (t3/2, unchanged) adds only the state index and archive;
  // t3/1 has the pack and the records.
  auto human = cp(a_, {"show", "t3"});
  EXPECT_NE(human.out.find("t3/2"), std::string::npos) << human.out;
  EXPECT_EQ(human.out.find("git-pack"), std::string::npos) << human.out;
  auto first = cp(a_, {"show", "t3/1"});
  EXPECT_NE(first.out.find("git-pack"), std::string::npos) << first.out;
  EXPECT_NE(first.out.find("records-sst"), std::string::npos) << first.out;
  auto ok = cp(a_, {"verify", "t3"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_NE(ok.out.find("ok: checkpoint t3/2"), std::string::npos) << ok.out;
  // gc: an orphan blob older than the grace hour goes, a fresh orphan and
  // every blob a kept manifest names stay.
  auto old_orphan = store_ / "cas" / std::string(64, 'a');
  auto new_orphan = store_ / "cas" / std::string(64, 'b');
  for (auto& p : {old_orphan, new_orphan})
    std::ofstream{p} << "orphan";
  struct utimbuf times {};
  times.actime = times.modtime = ::time(nullptr) - 7200;
  ASSERT_EQ(::utime(old_orphan.c_str(), &times), 0);
  auto gc = cp(a_, {"gc", "--keep", "1"});
  ASSERT_EQ(gc.exit_code, 0) << gc.err;
  EXPECT_NE(gc.out.find("manifests: 2 kept, 0 deleted"), std::string::npos)
      << gc.out;
  EXPECT_FALSE(fs::exists(old_orphan));
  EXPECT_TRUE(fs::exists(new_orphan));
  EXPECT_EQ(cp(a_, {"verify", "t3/2"}).exit_code, 0);
  // A damaged blob: verify says so (exit 1) and names it.
  fs::path biggest;
  uint64_t size = 0;
  for (auto& e : fs::directory_iterator(store_ / "cas"))
    if (e.file_size() > size) {
      size = e.file_size();
      biggest = e.path();
    }
  {
    std::fstream f{biggest, std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.put('\x5a');
    f.seekp(static_cast<std::streamoff>(size / 2 + 1));
    f.put('\xa5');
  }
  auto bad = cp(a_, {"verify", "t3"});
  EXPECT_EQ(bad.exit_code, 1) << bad.out << bad.err;
  EXPECT_NE(bad.err.find(biggest.filename().string()), std::string::npos)
      << bad.err;
}

TEST_F(Checkpoint, a_damaged_blob_is_refused_and_nothing_is_restored) {
  run_work("t4");
  ASSERT_EQ(checkpoint(a_, "t4").exit_code, 0);
  for (auto& e : fs::directory_iterator(store_ / "cas")) {
    std::fstream f{e.path(), std::ios::in | std::ios::out | std::ios::binary};
    f.seekp(static_cast<std::streamoff>(e.file_size() / 2));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(e.file_size() / 2));
    f.put(static_cast<char>(c ^ 0x40));
  }
  auto r = restore(b_, "t4");
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_NE(r.err.find("damaged"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(b_.data() / "worktrees" / "t4"));
  EXPECT_FALSE(fs::exists(b_.data() / "state" / "t4"));
  auto show = b_.task("show", {"t4"});
  EXPECT_NE(show.exit_code, 0);
  // No staging dir is left behind either.
  for (auto& e : fs::directory_iterator(b_.data() / "checkpoints"))
    EXPECT_NE(e.path().filename().string().rfind(".restore", 0), 0u)
        << e.path();
}

TEST_F(Checkpoint, signatures_versions_references_and_existing_tasks) {
  run_work("t5");
  const std::map<std::string, std::string> k1{
      {"MAKIMA_CHECKPOINT_KEY", "fleet-key-one"}};
  const std::map<std::string, std::string> k2{
      {"MAKIMA_CHECKPOINT_KEY", "fleet-key-two"}};
  auto signed_cp = checkpoint(a_, "t5", k1);
  ASSERT_EQ(signed_cp.exit_code, 0) << signed_cp.err;
  auto manifest = slurp(store_ / "tasks/t5/checkpoints/1.json");
  EXPECT_NE(manifest.find("HMAC-SHA256"), std::string::npos);
  EXPECT_EQ(manifest.find("fleet-key-one"), std::string::npos);
  // The wrong key: refused, and the key is never echoed.
  auto wrong = restore(b_, "t5", k2);
  EXPECT_EQ(wrong.exit_code, 125);
  EXPECT_NE(wrong.err.find("signature does not match"), std::string::npos)
      << wrong.err;
  EXPECT_EQ(wrong.err.find("fleet-key"), std::string::npos) << wrong.err;
  EXPECT_FALSE(fs::exists(b_.data() / "worktrees" / "t5"));
  // A tampered manifest with the right key: refused too.
  auto tampered = manifest;
  auto at = tampered.find("\"attempt\":1");
  ASSERT_NE(at, std::string::npos) << tampered;
  tampered.replace(at, 11, "\"attempt\":7");
  std::ofstream{store_ / "tasks/t5/checkpoints/1.json", std::ios::trunc}
      << tampered;
  auto forged = restore(b_, "t5", k1);
  EXPECT_EQ(forged.exit_code, 125);
  EXPECT_NE(forged.err.find("signature does not match"), std::string::npos)
      << forged.err;
  std::ofstream{store_ / "tasks/t5/checkpoints/1.json", std::ios::trunc}
      << manifest;
  // An unsigned checkpoint where a key is configured: refused.
  ASSERT_EQ(checkpoint(a_, "t5").exit_code, 0);
  auto unsigned_r = restore(b_, "t5/2", k1);
  EXPECT_EQ(unsigned_r.exit_code, 125);
  EXPECT_NE(unsigned_r.err.find("not signed"), std::string::npos)
      << unsigned_r.err;
  // The right key restores the signed one.
  auto good = restore(b_, "t5/1", k1);
  EXPECT_EQ(good.exit_code, 0) << good.err;
  // The same task again: it exists (a usage error).
  auto twice = restore(b_, "t5/1", k1);
  EXPECT_EQ(twice.exit_code, 2);
  EXPECT_NE(twice.err.find("already exists"), std::string::npos) << twice.err;
  // A newer format version: refused by name.
  fs::create_directories(store_ / "tasks/t9/checkpoints");
  auto v2 = json::parse(manifest);
  v2["version"] = 2;
  v2["task"] = "t9";
  std::ofstream{store_ / "tasks/t9/checkpoints/1.json"} << v2.dump();
  auto newer = cp(a_, {"show", "t9"});
  EXPECT_EQ(newer.exit_code, 125);
  EXPECT_NE(newer.err.find("version 2 is not supported"), std::string::npos)
      << newer.err;
  // References.
  EXPECT_EQ(restore(b_, "t5/x").exit_code, 2);
  EXPECT_EQ(restore(b_, "../t5").exit_code, 2);
  auto none = restore(b_, "nobody");
  EXPECT_EQ(none.exit_code, 125);
  EXPECT_NE(none.err.find("has no checkpoint"), std::string::npos) << none.err;
}

TEST_F(Checkpoint, a_running_task_checkpoints_itself_and_survives_sigkill) {
  // The laptop: a task that works in steps, checkpointed every 0.3 s, then
  // its makima is SIGKILLed mid-run.
  const char* script = R"SH(
if [ "$MAKIMA_RESUMED" = 1 ]; then
  echo "resumed as attempt $MAKIMA_ATTEMPT with $(cat step.txt)"
  exit 0
fi
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  echo "step $i"
  echo "step $i" > step.txt
  echo "$i" > "$MAKIMA_STATE_DIR/progress"
  sleep 0.1
done
echo "slow part"
sleep 60
)SH";
  test::background run{a_.run_argv({"--id", "p1", "--repo", origin_.string(),
                                    "--checkpoint-interval", "0.3", "--store",
                                    store_url(), "--", "sh", "-c", script}),
                       a_.opts(60000ms)};
  ASSERT_TRUE(run.wait_for_output("slow part", 30000ms)) << run.output();
  // Wait for a checkpoint taken after the last step.
  ASSERT_TRUE(eventually(
      [&] {
        auto n = count_files(store_ / "tasks/p1/checkpoints").first;
        if (n < 2)
          return false;
        auto l = cp(a_, {"list", "--task", "p1", "--json"});
        return l.exit_code == 0 && json::parse(l.out).size() >= 2;
      },
      20000ms));
  std::this_thread::sleep_for(700ms);
  // Idle now (sleep 60): ticks find nothing changed and write nothing.
  auto idle_before = count_files(store_ / "tasks/p1/checkpoints").first;
  std::this_thread::sleep_for(1200ms);
  EXPECT_EQ(count_files(store_ / "tasks/p1/checkpoints").first, idle_before);
  run.kill(SIGKILL);
  run.wait(10000ms);
  // Another machine: restore the latest checkpoint and resume.
  auto r = restore(b_, "p1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(slurp(b_.data() / "worktrees/p1/step.txt"), "step 20\n");
  EXPECT_EQ(slurp(b_.data() / "state/p1/progress"), "20\n");
  auto res = b_.task("resume", {"p1"}, 60000ms);
  EXPECT_EQ(res.exit_code, 0) << res.out << res.err;
  EXPECT_NE(res.out.find("resumed as attempt 2 with step 20"),
            std::string::npos)
      << res.out;
  auto logs = b_.task("logs", {"p1"});
  auto s20 = logs.out.find("step 20");
  auto resumed = logs.out.find("resumed as attempt 2");
  ASSERT_NE(s20, std::string::npos) << logs.out;
  ASSERT_NE(resumed, std::string::npos) << logs.out;
  EXPECT_LT(s20, resumed);
  // Output seqs continue across attempts: no seq twice.
  auto shown = b_.show("p1");
  EXPECT_EQ(shown.value("attempt", 0), 2);
}

TEST_F(Checkpoint, an_unreachable_store_fails_the_checkpoint_not_the_task) {
  // Port 1 on loopback refuses connections.
  auto o = a_.opts(60000ms);
  o.env["AWS_ACCESS_KEY_ID"] = "AKIDEXAMPLE";
  o.env["AWS_SECRET_ACCESS_KEY"] = "never-print-this-secret";
  auto argv =
      a_.run_argv({"--id", "u1", "--checkpoint-interval", "0.2", "--store",
                   "s3://bucket/prefix", "--s3-endpoint", "http://127.0.0.1:1",
                   "--", "sh", "-c", "echo working; sleep 3; echo done"});
  auto r = test::run(argv, o);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("done"), std::string::npos);
  EXPECT_NE(r.err.find("the task goes on"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("never-print-this-secret"), std::string::npos);
  // `task checkpoint` against it: a clear error naming the store.
  auto c = test::run(
      a_.task_argv("checkpoint", {"u1", "--store", "s3://bucket/prefix",
                                  "--s3-endpoint", "http://127.0.0.1:1"}),
      o);
  EXPECT_EQ(c.exit_code, 125);
  EXPECT_NE(c.err.find("s3://bucket/prefix"), std::string::npos) << c.err;
  EXPECT_EQ(c.err.find("never-print-this-secret"), std::string::npos);
}

TEST_F(Checkpoint, a_scratch_task_without_a_repository_round_trips) {
  auto r = a_.run({"--id", "s1", "--", "sh", "-c",
                   "mkdir -p d/e; echo hi > d/e/f; ln -s d/e/f l; "
                   "echo st > \"$MAKIMA_STATE_DIR/s\"; exit 1"});
  ASSERT_EQ(r.exit_code, 1) << r.err;
  ASSERT_EQ(checkpoint(a_, "s1").exit_code, 0);
  auto res = restore(b_, "s1");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_EQ(
      diff(tree(a_.data() / "worktrees/s1"), tree(b_.data() / "worktrees/s1")),
      "");
  EXPECT_EQ(slurp(b_.data() / "state/s1/s"), "st\n");
}

// The same round trip through a real S3 server that verifies SigV4
// signatures, with 500s injected on the way (retried), and a wrong secret
// (refused, and never printed).
TEST_F(Checkpoint, through_s3_with_signatures_retries_and_no_secret_leaks) {
  ASSERT_TRUE(test::s3_server::installed())
      << test::s3_server::node_dir() << "/node_modules is missing: npm ci";
  test::s3_server server{a_.root() / "s3", "makima"};
  test::fault_proxy proxy{server.port()};
  run_work("s3t");
  std::map<std::string, std::string> creds{
      {"AWS_ACCESS_KEY_ID", test::s3_server::access_key},
      {"AWS_SECRET_ACCESS_KEY", test::s3_server::secret_key},
      {"MAKIMA_S3_ENDPOINT", proxy.endpoint()},
      {"MAKIMA_S3_REGION", "auto"}};
  auto with = [&](env& e, const std::string& sub, std::vector<std::string> args,
                  std::map<std::string, std::string> vars) {
    args.push_back("--store");
    args.push_back("s3://makima/fleet/one");
    auto o = e.opts(120000ms);
    for (auto& [k, v] : vars)
      o.env[k] = v;
    return test::run(e.task_argv(sub, args), o);
  };
  // Two 500s on the first uploads: retried, the checkpoint is written.
  proxy.arm(test::fault_proxy::fault::http_500, 2, 0ms, "PUT ");
  auto c = with(a_, "checkpoint", {"s3t"}, creds);
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "s3t/1\n");
  EXPECT_EQ(proxy.injected(), 2);
  auto r = with(b_, "restore", {"s3t"}, creds);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(diff(tree(a_.data() / "worktrees/s3t", {"ignored.log"}),
                 tree(b_.data() / "worktrees/s3t")),
            "");
  EXPECT_EQ(diff(tree(a_.data() / "state/s3t"), tree(b_.data() / "state/s3t")),
            "");
  // The manifest names no credential.
  std::vector<std::string> show{
      MAKIMA_BINARY, "checkpoint",           "show", "s3t", "--json",
      "--store",     "s3://makima/fleet/one"};
  auto o = a_.opts(60000ms);
  for (auto& [k, v] : creds)
    o.env[k] = v;
  auto shown = test::run(show, o);
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  for (auto& out : {c.out, c.err, r.out, r.err, shown.out, shown.err}) {
    EXPECT_EQ(out.find(test::s3_server::secret_key), std::string::npos) << out;
    EXPECT_EQ(out.find(test::s3_server::access_key), std::string::npos) << out;
  }
  // A wrong secret: the server refuses the signature.
  auto bad = creds;
  bad["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-value";
  auto denied = with(a_, "checkpoint", {"s3t"}, bad);
  EXPECT_EQ(denied.exit_code, 125) << denied.err;
  EXPECT_EQ(denied.err.find("wrong-secret-value"), std::string::npos)
      << denied.err;
  EXPECT_NE(denied.err.find("s3://makima/fleet/one"), std::string::npos)
      << denied.err;
}

} // namespace
} // namespace makima::it
