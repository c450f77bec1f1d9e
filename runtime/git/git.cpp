// libgit2 wrapper: bare mirror cache, task worktrees, commits and pushes.
// Every libgit2 failure is converted here into a makima error carrying a
// sentence with libgit2's message and the URL or ref concerned.
#include "runtime/git/git.hpp"

#include <git2.h>
#include <git2/sys/repository.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <system_error>
#include <utility>
#include <vector>

#include "runtime/error.hpp"

namespace fs = std::filesystem;

namespace makima::git {

namespace {

// -- RAII ---------------------------------------------------------------------

template <class T, void (*Free)(T*)>
struct deleter {
  void operator()(T* p) const noexcept {
    if (p != nullptr)
      Free(p);
  }
};

template <class T, void (*Free)(T*)>
using handle = std::unique_ptr<T, deleter<T, Free>>;

using repo_ptr = handle<git_repository, git_repository_free>;
using remote_ptr = handle<git_remote, git_remote_free>;
using ref_ptr = handle<git_reference, git_reference_free>;
using object_ptr = handle<git_object, git_object_free>;
using commit_ptr = handle<git_commit, git_commit_free>;
using tree_ptr = handle<git_tree, git_tree_free>;
using index_ptr = handle<git_index, git_index_free>;
using worktree_ptr = handle<git_worktree, git_worktree_free>;
using signature_ptr = handle<git_signature, git_signature_free>;
using config_ptr = handle<git_config, git_config_free>;
using odb_ptr = handle<git_odb, git_odb_free>;
using revwalk_ptr = handle<git_revwalk, git_revwalk_free>;
using packbuilder_ptr = handle<git_packbuilder, git_packbuilder_free>;
using indexer_ptr = handle<git_indexer, git_indexer_free>;

struct buf_guard {
  git_buf buf = GIT_BUF_INIT;
  ~buf_guard() { git_buf_dispose(&buf); }
  std::string str() const {
    return buf.ptr != nullptr ? std::string{buf.ptr, buf.size} : std::string{};
  }
};

// -- error helpers ------------------------------------------------------------

std::string last_error() {
  const git_error* e = git_error_last();
  if (e == nullptr || e->message == nullptr)
    return "unknown libgit2 error";
  return e->message;
}

caf::error git_fail(ec code, const std::string& what) {
  return make_error(code, what + ": " + last_error());
}

std::string oid_hex(const git_oid& oid) {
  char buf[GIT_OID_HEXSZ + 1];
  git_oid_tostr(buf, sizeof(buf), &oid);
  return buf;
}

bool is_url(const std::string& url) {
  return url.find("://") != std::string::npos;
}

// scp-like syntax: "user@host:path" or "host:path" without a slash before
// the colon.
bool is_scp_like(const std::string& url) {
  auto colon = url.find(':');
  if (colon == std::string::npos || colon == 0)
    return false;
  auto slash = url.find('/');
  return slash == std::string::npos || slash > colon;
}

bool is_local_path(const std::string& url) {
  if (is_url(url))
    return false;
  if (is_scp_like(url)) {
    std::error_code err;
    return fs::exists(url, err); // "a:b" may still be a local file name
  }
  return true;
}

// Returns the local directory behind `url` if it is a path or a file:// URL.
std::optional<fs::path> local_dir_of(const std::string& url) {
  static constexpr std::string_view file_scheme = "file://";
  if (url.compare(0, file_scheme.size(), file_scheme) == 0)
    return fs::path{url.substr(file_scheme.size())};
  if (is_local_path(url))
    return fs::path{url};
  return std::nullopt;
}

// Checks that a local repository exists; returns a repo_not_found error when
// it does not. Non-local URLs pass.
caf::error check_local_repo(const std::string& url) {
  auto dir = local_dir_of(url);
  if (!dir)
    return {};
  std::error_code err;
  if (!fs::exists(*dir, err))
    return make_error(ec::repo_not_found, "repository not found: " + url
                                              + ": no such file or directory");
  if (git_repository_open_ext(nullptr, dir->c_str(),
                              GIT_REPOSITORY_OPEN_NO_SEARCH, nullptr)
      != 0)
    return make_error(ec::repo_not_found, "repository not found: " + url
                                              + ": not a git repository");
  return {};
}

std::string random_suffix() {
  std::random_device rd;
  std::mt19937_64 gen{(static_cast<uint64_t>(rd()) << 32) ^ rd()};
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%d-%016llx", static_cast<int>(getpid()),
                static_cast<unsigned long long>(gen()));
  return buf;
}

// Makes every directory below `p` writable so remove_all can succeed even
// after a task made parts of its tree read-only.
void force_remove_all(const fs::path& p) {
  std::error_code err;
  if (!fs::exists(fs::symlink_status(p, err)))
    return;
  if (fs::remove_all(p, err) != static_cast<std::uintmax_t>(-1) && !err)
    return;
  for (auto it = fs::recursive_directory_iterator(
           p, fs::directory_options::skip_permission_denied, err);
       !err && it != fs::recursive_directory_iterator(); it.increment(err)) {
    if (it->is_directory(err) && !it->is_symlink(err))
      fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add,
                      err);
  }
  fs::permissions(p, fs::perms::owner_all, fs::perm_options::add, err);
  fs::remove_all(p, err);
}

// -- progress and cancellation ----------------------------------------------

// What libgit2's callbacks see through their payload.
struct op_payload {
  op_payload(const control* c, git::phase ph) : ctl(c), phase(ph) {}
  const control* ctl;
  git::phase phase;
  bool aborted = false;      // a callback asked libgit2 to stop
  std::string push_rejected; // push: status of the first refused update
  bool check() {
    if (ctl->cancelled())
      aborted = true;
    return aborted;
  }
  void report(uint64_t done, uint64_t total, uint64_t bytes) {
    if (ctl->on_progress)
      ctl->on_progress(progress{phase, done, total, bytes});
  }
};

int on_transfer(const git_indexer_progress* p, void* payload) {
  auto* st = static_cast<op_payload*>(payload);
  if (st->check())
    return GIT_EUSER;
  st->report(p->received_objects, p->total_objects, p->received_bytes);
  return 0;
}

int on_sideband(const char*, int, void* payload) {
  return static_cast<op_payload*>(payload)->check() ? GIT_EUSER : 0;
}

int on_checkout_notify(git_checkout_notify_t, const char*, const git_diff_file*,
                       const git_diff_file*, const git_diff_file*,
                       void* payload) {
  return static_cast<op_payload*>(payload)->check() ? GIT_EUSER : 0;
}

void on_checkout_progress(const char*, size_t done, size_t total,
                          void* payload) {
  static_cast<op_payload*>(payload)->report(done, total, 0);
}

int on_pack_progress(int, uint32_t, uint32_t, void* payload) {
  return static_cast<op_payload*>(payload)->check() ? GIT_EUSER : 0;
}

int on_push_transfer(unsigned int done, unsigned int total, size_t bytes,
                     void* payload) {
  auto* st = static_cast<op_payload*>(payload);
  if (st->check())
    return GIT_EUSER;
  st->report(done, total, bytes);
  return 0;
}

int on_push_update(const char* refname, const char* status, void* payload) {
  auto* st = static_cast<op_payload*>(payload);
  if (status != nullptr && st->push_rejected.empty())
    st->push_rejected = std::string{refname} + ": " + status;
  return 0;
}

caf::error cancelled_error(const std::string& what) {
  git_error_clear();
  return make_error(ec::cancelled, what + " cancelled");
}

void set_remote_callbacks(git_remote_callbacks& cbs, op_payload& st) {
  cbs.transfer_progress = on_transfer;
  cbs.sideband_progress = on_sideband;
  cbs.payload = &st;
}

// -- remote helpers -----------------------------------------------------------

constexpr const char* heads_spec = "+refs/heads/*:refs/remotes/origin/*";
constexpr const char* tags_spec = "+refs/tags/*:refs/tags/*";
constexpr const char* origin_head_ref = "refs/remotes/origin/HEAD";

// Points refs/remotes/origin/HEAD at the remote's default branch. `remote`
// must be connected (or have been connected in this fetch).
caf::error update_origin_head(git_repository* repo, git_remote* remote,
                              const std::string& url) {
  std::string target;
  buf_guard def;
  if (git_remote_default_branch(&def.buf, remote) == 0) {
    auto name = def.str();
    static constexpr std::string_view heads = "refs/heads/";
    if (name.compare(0, heads.size(), heads) == 0)
      target = "refs/remotes/origin/" + name.substr(heads.size());
  }
  auto exists = [&](const std::string& name) {
    git_reference* r = nullptr;
    if (git_reference_lookup(&r, repo, name.c_str()) != 0)
      return false;
    git_reference_free(r);
    return true;
  };
  if (target.empty() || !exists(target)) {
    target.clear();
    for (auto candidate :
         {"refs/remotes/origin/main", "refs/remotes/origin/master"})
      if (exists(candidate)) {
        target = candidate;
        break;
      }
  }
  if (target.empty()) {
    // Empty remote or unknown HEAD: keep whatever origin/HEAD said before,
    // unless it now dangles.
    git_reference* r = nullptr;
    if (git_reference_lookup(&r, repo, origin_head_ref) == 0) {
      ref_ptr guard{r};
      git_reference* resolved = nullptr;
      if (git_reference_resolve(&resolved, r) == 0)
        git_reference_free(resolved);
      else
        git_reference_delete(r);
    }
    return {};
  }
  git_reference* out = nullptr;
  if (git_reference_symbolic_create(&out, repo, origin_head_ref, target.c_str(), 1,
                                    "makima: set origin/HEAD")
      != 0)
    return git_fail(ec::git_error,
                    "cannot set origin/HEAD of the mirror of " + url);
  git_reference_free(out);
  return {};
}

// Connects to origin, records its default branch and fetches (prune).
// The way `git clone --local` starts: every object file of the local
// repository at `origin` (packs, indexes, loose objects) is hard-linked
// (copied across file systems) into the new bare repository `dest`, so the
// fetch that follows finds every object present and only writes refs.
// libgit2's local transport would instead build a pack in-process, with a
// delta search that ignores aborts (seconds to minutes on a large
// repository). Objects are immutable, so sharing their inodes is safe.
// `ctl` is checked between files; returns ec::cancelled when it asks.
caf::error link_local_objects(const fs::path& origin, const fs::path& dest,
                              const control& ctl) {
  git_repository* raw = nullptr;
  if (git_repository_open_ext(&raw, origin.c_str(),
                              GIT_REPOSITORY_OPEN_NO_SEARCH, nullptr)
      != 0)
    return git_fail(ec::repo_not_found,
                    "repository not found: " + origin.string());
  repo_ptr repo{raw};
  fs::path src = fs::path{git_repository_commondir(raw)} / "objects";
  fs::path dst = dest / "objects";
  op_payload st{&ctl, phase::cloning};
  std::error_code err;
  std::vector<fs::path> files;
  for (fs::recursive_directory_iterator it{src, err}, end; !err && it != end;
       it.increment(err)) {
    if (!it->is_regular_file(err))
      continue;
    auto rel = it->path().lexically_relative(src);
    // The destination's own metadata; alternates are rewritten below.
    if (rel.begin() != rel.end() && *rel.begin() == "info")
      continue;
    files.push_back(rel);
  }
  if (err)
    return make_error(ec::io_error, "cannot list the objects of "
                                        + origin.string() + ": "
                                        + err.message());
  // Packs before their indexes: an index never names a pack not yet there.
  std::stable_sort(files.begin(), files.end(), [](auto& a, auto& b) {
    return (a.extension() == ".idx") < (b.extension() == ".idx");
  });
  uint64_t done = 0, bytes = 0;
  for (auto& rel : files) {
    if (st.check())
      return cancelled_error("clone of " + origin.string());
    auto from = src / rel;
    auto to = dst / rel;
    fs::create_directories(to.parent_path(), err);
    if (!err)
      fs::create_hard_link(from, to, err);
    if (err) {
      err.clear();
      fs::copy_file(from, to, fs::copy_options::overwrite_existing, err);
    }
    if (err)
      return make_error(ec::io_error, "cannot copy " + from.string() + " to "
                                          + to.string() + ": " + err.message());
    bytes += fs::file_size(to, err);
    err.clear();
    st.report(++done, files.size(), bytes);
  }
  // The origin's alternates, as absolute paths (relative ones name
  // directories next to the origin's objects, not ours).
  std::ifstream alt{src / "info" / "alternates"};
  std::string line, out;
  while (std::getline(alt, line))
    if (!line.empty() && line[0] != '#')
      out += (fs::path{line}.is_absolute() ? fs::path{line} : src / line)
                 .lexically_normal()
                 .string()
             + "\n";
  if (!out.empty()) {
    fs::create_directories(dst / "info", err);
    std::ofstream f{dst / "info" / "alternates"};
    f << out;
    if (!f)
      return make_error(ec::io_error,
                        "cannot write the alternates of " + dest.string());
  }
  return {};
}

caf::error fetch_origin(git_repository* repo, const std::string& url,
                        const control& ctl, git::phase ph,
                        uint64_t* received = nullptr) {
  op_payload st{&ctl, ph};
  if (st.check())
    return cancelled_error(std::string{ph == phase::cloning ? "clone" : "fetch"}
                           + " of " + url);
  git_remote* raw = nullptr;
  if (git_remote_lookup(&raw, repo, "origin") != 0)
    return git_fail(ec::git_error, "mirror of " + url + " has no origin");
  remote_ptr remote{raw};
  git_remote_callbacks cbs = GIT_REMOTE_CALLBACKS_INIT;
  set_remote_callbacks(cbs, st);
  if (git_remote_connect(remote.get(), GIT_DIRECTION_FETCH, &cbs, nullptr,
                         nullptr)
      != 0) {
    if (st.check())
      return cancelled_error("fetch of " + url);
    return git_fail(ec::repo_not_found, "repository not found: " + url);
  }
  git_fetch_options opts = GIT_FETCH_OPTIONS_INIT;
  set_remote_callbacks(opts.callbacks, st);
  opts.prune = GIT_FETCH_PRUNE;
  opts.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE; // the refspec has them
  opts.update_fetchhead = 0;
  // Read the default branch while connected; fetch reuses the connection.
  buf_guard def;
  std::string default_branch;
  if (git_remote_default_branch(&def.buf, remote.get()) == 0)
    default_branch = def.str();
  if (git_remote_fetch(remote.get(), nullptr, &opts, "makima: fetch") != 0) {
    if (st.check())
      return cancelled_error(
          std::string{ph == phase::cloning ? "clone" : "fetch"} + " of " + url);
    return git_fail(ec::git_error, "cannot fetch from " + url);
  }
  if (received != nullptr)
    *received = git_remote_stats(remote.get())->received_objects;
  // Set origin/HEAD (update_origin_head re-reads the advertised heads, which
  // the transport keeps after the disconnect; fall back to what we read).
  std::string target;
  static constexpr std::string_view heads = "refs/heads/";
  if (default_branch.compare(0, heads.size(), heads) == 0)
    target = "refs/remotes/origin/" + default_branch.substr(heads.size());
  git_reference* r = nullptr;
  if (!target.empty() && git_reference_lookup(&r, repo, target.c_str()) == 0) {
    git_reference_free(r);
    git_reference* out = nullptr;
    if (git_reference_symbolic_create(&out, repo, origin_head_ref, target.c_str(),
                                      1, "makima: set origin/HEAD")
        != 0)
      return git_fail(ec::git_error,
                      "cannot set origin/HEAD of the mirror of " + url);
    git_reference_free(out);
    return {};
  }
  return update_origin_head(repo, remote.get(), url);
}

caf::expected<repo_ptr> open_bare(const fs::path& path) {
  git_repository* raw = nullptr;
  if (git_repository_open_bare(&raw, path.c_str()) != 0)
    return git_fail(ec::git_error, "cannot open mirror " + path.string());
  return repo_ptr{raw};
}

// Tunes the mirror so libgit2 checkouts don't probe the filesystem.
void tune_config(git_repository* repo) {
  git_config* raw = nullptr;
  if (git_repository_config(&raw, repo) != 0)
    return;
  config_ptr cfg{raw};
  git_config_set_bool(cfg.get(), "core.symlinks", 1);
  git_config_set_bool(cfg.get(), "core.filemode", 1);
  git_config_set_bool(cfg.get(), "core.ignorecase", 0);
  git_config_set_bool(cfg.get(), "core.precomposeunicode", 0);
  git_config_set_bool(cfg.get(), "core.logallrefupdates", 0);
}

// Peels `obj` to a commit and returns its hex id.
std::optional<std::string> peel_commit(git_object* obj) {
  git_object* peeled = nullptr;
  if (git_object_peel(&peeled, obj, GIT_OBJECT_COMMIT) != 0)
    return std::nullopt;
  object_ptr guard{peeled};
  return oid_hex(*git_object_id(peeled));
}

std::optional<std::string> ref_commit(git_repository* repo,
                                      const std::string& name) {
  git_reference* raw = nullptr;
  if (git_reference_lookup(&raw, repo, name.c_str()) != 0)
    return std::nullopt;
  ref_ptr ref{raw};
  git_object* obj = nullptr;
  if (git_reference_peel(&obj, raw, GIT_OBJECT_COMMIT) != 0)
    return std::nullopt;
  object_ptr guard{obj};
  return oid_hex(*git_object_id(obj));
}

bool is_hex(const std::string& s) {
  if (s.empty())
    return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c)))
      return false;
  return true;
}

void delete_ref(git_repository* repo, const std::string& name) {
  git_reference* raw = nullptr;
  if (git_reference_lookup(&raw, repo, name.c_str()) != 0)
    return;
  ref_ptr ref{raw};
  git_reference_delete(raw);
}

void delete_branch(git_repository* repo, const std::string& branch) {
  delete_ref(repo, "refs/heads/" + branch);
}

constexpr const char* base_file = "makima-base";

// Whether checking out `commit` may need content filters (eol conversion,
// ident, custom drivers). Filters need an attribute lookup per file, which
// in libgit2 1.5 costs a realpath() (≈16 failing readlink calls) per file;
// when no attributes file and no autocrlf setting can apply, the output is
// identical without them.
bool needs_filters(git_repository* repo, git_commit* commit) {
  git_config* raw = nullptr;
  if (git_repository_config_snapshot(&raw, repo) != 0)
    return true;
  config_ptr cfg{raw};
  for (auto key : {"core.autocrlf", "core.attributesfile"}) {
    buf_guard val;
    int rc = git_config_get_string_buf(&val.buf, raw, key);
    if (rc == 0) {
      auto v = val.str();
      if (std::string_view{key} == "core.autocrlf"
          && (v == "false" || v.empty()))
        continue;
      return true;
    }
    if (rc != GIT_ENOTFOUND)
      return true;
  }
  std::error_code err;
  auto repo_path = fs::path{git_repository_commondir(repo)};
  if (fs::exists(repo_path / "info" / "attributes", err))
    return true;
  if (fs::exists("/etc/gitattributes", err))
    return true;
  if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg && *xdg) {
    if (fs::exists(fs::path{xdg} / "git" / "attributes", err))
      return true;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    if (fs::exists(fs::path{home} / ".config" / "git" / "attributes", err))
      return true;
  }
  git_tree* traw = nullptr;
  if (git_commit_tree(&traw, commit) != 0)
    return true;
  tree_ptr tree{traw};
  bool found = false;
  auto cb = [](const char*, const git_tree_entry* entry, void* payload) {
    if (std::strcmp(git_tree_entry_name(entry), ".gitattributes") == 0) {
      *static_cast<bool*>(payload) = true;
      return -1; // stop
    }
    return 0;
  };
  int rc = git_tree_walk(traw, GIT_TREEWALK_PRE, cb, &found);
  return found || rc != 0; // on a walk error, keep filters to be safe
}

} // namespace

// -- free functions -----------------------------------------------------------

const char* to_string(phase p) {
  switch (p) {
  case phase::cloning:
    return "cloning";
  case phase::fetching:
    return "fetching";
  case phase::checking_out:
    return "checking_out";
  case phase::pushing:
    return "pushing";
  }
  return "unknown";
}

void init() {
  static std::once_flag once;
  std::call_once(once, [] {
    git_libgit2_init();
    // Objects come from a trusted remote through fetch; skip the extra
    // existence checks when creating trees/commits.
    git_libgit2_opts(GIT_OPT_ENABLE_STRICT_OBJECT_CREATION, 0);
    git_libgit2_opts(GIT_OPT_ENABLE_FSYNC_GITDIR, 0);
  });
}

std::string canonical_url(const std::string& url) {
  if (url.empty() || !is_local_path(url))
    return url;
  std::error_code err;
  if (!fs::exists(url, err))
    return url;
  auto abs = fs::absolute(url, err);
  if (err)
    return url;
  auto canon = fs::weakly_canonical(abs, err);
  if (err)
    return abs.lexically_normal().string();
  auto s = canon.string();
  while (s.size() > 1 && s.back() == '/')
    s.pop_back();
  return s;
}

caf::error verify_pack_checksum(const fs::path& pack) {
  std::error_code err;
  auto size = fs::file_size(pack, err);
  if (err)
    return make_error(ec::io_error,
                      "cannot read " + pack.string() + ": " + err.message());
  if (size < 32)
    return make_error(ec::checkpoint_corrupt,
                      "pack " + pack.string() + " is damaged (too short)");
  std::ifstream in{pack, std::ios::binary};
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx{EVP_MD_CTX_new(),
                                                         EVP_MD_CTX_free};
  if (!in || !ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha1(), nullptr) != 1)
    return make_error(ec::io_error, "cannot read " + pack.string());
  std::vector<char> buf(1 << 20);
  uint64_t left = size - 20;
  while (left > 0) {
    auto n = static_cast<std::streamsize>(std::min<uint64_t>(left, buf.size()));
    if (!in.read(buf.data(), n))
      return make_error(ec::io_error, "cannot read " + pack.string());
    EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
    left -= static_cast<uint64_t>(n);
  }
  unsigned char want[20];
  unsigned char got[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), got, &len);
  if (!in.read(reinterpret_cast<char*>(want), 20) || len != 20
      || std::memcmp(want, got, 20) != 0)
    return make_error(ec::checkpoint_corrupt,
                      "pack " + pack.string()
                          + " is damaged: its checksum does not match");
  return {};
}

std::string mirror_dir_name(const std::string& url) {
  auto canon = canonical_url(url);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(canon.data()), canon.size(),
         digest);
  static constexpr char hex[] = "0123456789abcdef";
  std::string h;
  for (int i = 0; i < 8; ++i) {
    h += hex[digest[i] >> 4];
    h += hex[digest[i] & 0xf];
  }
  // Last path component: strip trailing separators and ".git".
  std::string s = canon;
  while (!s.empty() && (s.back() == '/' || s.back() == '\\'))
    s.pop_back();
  auto pos = s.find_last_of("/\\:");
  std::string last = pos == std::string::npos ? s : s.substr(pos + 1);
  if (last.size() > 4 && last.compare(last.size() - 4, 4, ".git") == 0)
    last.resize(last.size() - 4);
  std::string name;
  for (char c : last) {
    auto u = static_cast<unsigned char>(c);
    name += (std::isalnum(u) || c == '-' || c == '_' || c == '.') ? c : '_';
  }
  if (!name.empty() && name.front() == '.')
    name.front() = '_';
  if (name.size() > 64)
    name.resize(64);
  if (name.empty())
    name = "repo";
  return name + "-" + h + ".git";
}

std::vector<std::string> mirror_origins(const fs::path& repos_dir) {
  init();
  std::vector<std::string> out;
  std::error_code err;
  for (auto it = fs::directory_iterator(repos_dir, err);
       !err && it != fs::directory_iterator(); it.increment(err)) {
    // The config file only: opening each mirror as a repository would cost
    // more, and a daemon reports this in every hello.
    auto file = (it->path() / "config").string();
    git_config* raw = nullptr;
    if (git_config_open_ondisk(&raw, file.c_str()) != 0)
      continue;
    config_ptr cfg{raw};
    buf_guard url;
    if (git_config_get_string_buf(&url.buf, raw, "remote.origin.url") == 0)
      out.push_back(url.str());
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// Stages every change of worktree `dir` in `index`: new and modified files
// (add_all, honouring .gitignore) and deletions (update_all).
caf::error stage_all(git_index* index, const fs::path& dir) {
  if (git_index_add_all(index, nullptr, GIT_INDEX_ADD_DEFAULT, nullptr, nullptr)
          != 0
      || git_index_update_all(index, nullptr, nullptr, nullptr) != 0)
    return git_fail(ec::git_error,
                    "cannot stage the changes in worktree " + dir.string());
  return caf::none;
}

// Stages every change of the worktree `dir` into `index` like stage_all,
// but writes no object the object database already has: each new or
// modified file is hashed (with the repository's filters), and when its
// blob exists, an entry is added from lstat and that id. libgit2's add_all
// writes every added blob to a temporary file first, even one it then finds
// present, and on a worktree with hundreds of untracked files those file
// creations were most of a periodic checkpoint's pause (~1.4 ms each here).
// Entries it cannot handle this way (a nested repository, an odd type)
// fall back to stage_all's add_all + update_all.
caf::error stage_all_reusing_objects(git_repository* repo, git_index* index,
                                     const fs::path& dir) {
  git_status_options so = GIT_STATUS_OPTIONS_INIT;
  so.show = GIT_STATUS_SHOW_WORKDIR_ONLY;
  so.flags = GIT_STATUS_OPT_INCLUDE_UNTRACKED
             | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS
             | GIT_STATUS_OPT_EXCLUDE_SUBMODULES
             | GIT_STATUS_OPT_DISABLE_PATHSPEC_MATCH;
  git_status_list* lraw = nullptr;
  if (git_status_list_new(&lraw, repo, &so) != 0)
    return stage_all(index, dir);
  std::unique_ptr<git_status_list, decltype(&git_status_list_free)> list{
      lraw, git_status_list_free};
  git_odb* oraw = nullptr;
  if (git_repository_odb(&oraw, repo) != 0)
    return stage_all(index, dir);
  std::unique_ptr<git_odb, decltype(&git_odb_free)> odb{oraw, git_odb_free};
  bool fallback = false;
  auto n = git_status_list_entrycount(lraw);
  for (size_t i = 0; i < n; ++i) {
    auto* e = git_status_byindex(lraw, i);
    if (e == nullptr || e->index_to_workdir == nullptr)
      continue;
    const char* path = e->index_to_workdir->new_file.path;
    if (path == nullptr || *path == '\0')
      continue;
    std::string rel = path;
    if (e->status & GIT_STATUS_WT_DELETED) {
      if (git_index_remove_bypath(index, path) != 0)
        return git_fail(ec::git_error, "cannot stage the deletion of " + rel
                                           + " in worktree " + dir.string());
      continue;
    }
    if (!(e->status
          & (GIT_STATUS_WT_NEW | GIT_STATUS_WT_MODIFIED
             | GIT_STATUS_WT_TYPECHANGE)))
      continue;
    auto full = dir / rel;
    struct stat st {};
    if (rel.back() == '/' || ::lstat(full.c_str(), &st) != 0
        || !(S_ISREG(st.st_mode) || S_ISLNK(st.st_mode))) {
      fallback = true; // a nested repository or an odd entry
      continue;
    }
    git_oid oid;
    bool hashed = false;
    if (S_ISLNK(st.st_mode)) {
      std::error_code ec;
      auto target = fs::read_symlink(full, ec).string();
      hashed =
          !ec
          && git_odb_hash(&oid, target.data(), target.size(), GIT_OBJECT_BLOB)
                 == 0;
    } else {
      hashed = git_repository_hashfile(&oid, repo, full.c_str(),
                                       GIT_OBJECT_BLOB, rel.c_str())
               == 0;
    }
    if (hashed && git_odb_exists(oraw, &oid) == 1) {
      git_index_entry entry{};
      entry.ctime.seconds = static_cast<int32_t>(st.st_ctim.tv_sec);
      entry.ctime.nanoseconds = static_cast<uint32_t>(st.st_ctim.tv_nsec);
      entry.mtime.seconds = static_cast<int32_t>(st.st_mtim.tv_sec);
      entry.mtime.nanoseconds = static_cast<uint32_t>(st.st_mtim.tv_nsec);
      entry.dev = static_cast<uint32_t>(st.st_dev);
      entry.ino = static_cast<uint32_t>(st.st_ino);
      entry.mode = S_ISLNK(st.st_mode)      ? GIT_FILEMODE_LINK
                   : (st.st_mode & S_IXUSR) ? GIT_FILEMODE_BLOB_EXECUTABLE
                                            : GIT_FILEMODE_BLOB;
      entry.uid = st.st_uid;
      entry.gid = st.st_gid;
      entry.file_size = static_cast<uint32_t>(st.st_size);
      entry.id = oid;
      entry.path = path;
      if (git_index_add(index, &entry) == 0)
        continue;
    }
    git_error_clear();
    if (git_index_add_bypath(index, path) != 0)
      return git_fail(ec::git_error,
                      "cannot stage " + rel + " in worktree " + dir.string());
  }
  if (fallback)
    return stage_all(index, dir);
  return caf::none;
}

} // namespace

// Indexes the pack file `pack` into the bare repository `repo` at `path`
// (mirror::index_pack). `objects`: how many objects it held.
caf::error index_pack_into(git_repository* repo, const fs::path& path,
                           const fs::path& pack, uint64_t* objects = nullptr) {
  std::FILE* in = std::fopen(pack.c_str(), "rb");
  if (in == nullptr)
    return make_error(ec::io_error, "cannot open the pack " + pack.string()
                                        + ": " + std::strerror(errno));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> in_guard{in, std::fclose};
  // Index into a staging directory of the mirror (same file system), then
  // move the pack and then its index into objects/pack: a damaged pack
  // leaves nothing there, and an index never names a missing pack.
  auto staging = path / ("makima-index-" + random_suffix());
  std::error_code err;
  fs::create_directories(staging, err);
  if (err)
    return make_error(ec::io_error, "cannot create " + staging.string() + ": "
                                        + err.message());
  struct dir_guard {
    fs::path p;
    ~dir_guard() { force_remove_all(p); }
  } staging_guard{staging};
  git_indexer_options opts = GIT_INDEXER_OPTIONS_INIT;
  git_indexer* iraw = nullptr;
  // No odb: a delta against an object outside the pack (a thin pack) is an
  // error instead of being completed from the mirror.
  if (git_indexer_new(&iraw, staging.c_str(), 0, nullptr, &opts) != 0)
    return git_fail(ec::git_error, "cannot index " + pack.string());
  indexer_ptr idx{iraw};
  git_indexer_progress stats{};
  auto corrupt = [&] {
    return git_fail(ec::checkpoint_corrupt,
                    "pack " + pack.string() + " is damaged");
  };
  std::vector<char> buf(1 << 20);
  for (;;) {
    auto n = std::fread(buf.data(), 1, buf.size(), in);
    if (n > 0 && git_indexer_append(iraw, buf.data(), n, &stats) != 0)
      return corrupt();
    if (n < buf.size()) {
      if (std::ferror(in))
        return make_error(ec::io_error, "cannot read the pack " + pack.string()
                                            + ": " + std::strerror(errno));
      break;
    }
  }
  if (git_indexer_commit(iraw, &stats) != 0)
    return corrupt();
  if (objects != nullptr)
    *objects = stats.indexed_objects;
  std::string name = git_indexer_name(iraw);
  idx.reset();
  auto dest = path / "objects" / "pack";
  fs::create_directories(dest, err);
  for (auto ext : {".pack", ".idx"}) {
    auto file = "pack-" + name + ext;
    fs::rename(staging / file, dest / file, err);
    if (err)
      return make_error(ec::io_error, "cannot move " + file + " into "
                                          + dest.string() + ": "
                                          + err.message());
  }
  git_odb* oraw = nullptr;
  if (git_repository_odb(&oraw, repo) == 0) {
    git_odb_refresh(oraw);
    git_odb_free(oraw);
  }
  return {};
}

// -- seeds and clone records ------------------------------------------------

// Written into a mirror cloned from a network origin: the pack files of the
// clone and the origin branches they hold whole (git::clone_record), one
// line each: "pack <file>", "ref <name> <commit>", "head <name>".
constexpr const char* clone_record_file = "makima-clone";

bool is_origin_branch(const std::string& name) {
  static constexpr std::string_view prefix = "refs/remotes/origin/";
  int valid = 0;
  return name.size() > prefix.size()
         && name.compare(0, prefix.size(), prefix) == 0
         && name != origin_head_ref
         && git_reference_name_is_valid(&valid, name.c_str()) == 0 && valid;
}

std::vector<std::pair<std::string, std::string>>
branches_of(git_repository* repo) {
  std::vector<std::pair<std::string, std::string>> out;
  git_strarray names{};
  if (git_reference_list(&names, repo) != 0) {
    git_error_clear();
    return out;
  }
  for (size_t i = 0; i < names.count; ++i) {
    std::string name = names.strings[i];
    if (!is_origin_branch(name))
      continue;
    git_reference* raw = nullptr;
    if (git_reference_lookup(&raw, repo, name.c_str()) != 0)
      continue;
    ref_ptr ref{raw};
    if (git_reference_type(raw) != GIT_REFERENCE_DIRECT)
      continue;
    if (auto c = ref_commit(repo, name))
      out.emplace_back(name, *c);
  }
  git_strarray_dispose(&names);
  std::sort(out.begin(), out.end());
  return out;
}

std::string head_of(git_repository* repo) {
  git_reference* raw = nullptr;
  if (git_reference_lookup(&raw, repo, origin_head_ref) != 0) {
    git_error_clear();
    return {};
  }
  ref_ptr ref{raw};
  if (git_reference_type(raw) != GIT_REFERENCE_SYMBOLIC)
    return {};
  return git_reference_symbolic_target(raw);
}

std::vector<fs::path> pack_files(const fs::path& repo_path) {
  std::vector<fs::path> out;
  std::error_code err;
  for (fs::directory_iterator it{repo_path / "objects" / "pack", err}, end;
       !err && it != end; it.increment(err))
    if (it->path().extension() == ".pack")
      out.push_back(it->path());
  std::sort(out.begin(), out.end());
  return out;
}

// Records the clone just made in `repo` at `path` (best effort: without
// the record, this node cannot publish the clone's pack as is).
void write_clone_record(git_repository* repo, const fs::path& path) {
  std::string text;
  for (auto& p : pack_files(path))
    text += "pack " + p.filename().string() + "\n";
  for (auto& [name, id] : branches_of(repo))
    text += "ref " + name + " " + id + "\n";
  if (auto h = head_of(repo); !h.empty())
    text += "head " + h + "\n";
  std::ofstream f{path / clone_record_file};
  f << text;
}

// Creates the bare repository of a new mirror of `canon` at `tmp`, its
// origin configured (mirror::open).
caf::expected<repo_ptr> init_mirror(const fs::path& tmp,
                                    const std::string& canon) {
  git_repository* raw = nullptr;
  if (git_repository_init(&raw, tmp.c_str(), 1) != 0)
    return git_fail(ec::io_error, "cannot create the mirror of " + canon
                                      + " in " + tmp.string());
  repo_ptr repo{raw};
  tune_config(raw);
  git_remote* rr = nullptr;
  if (git_remote_create_with_fetchspec(&rr, raw, "origin", canon.c_str(),
                                       heads_spec)
      != 0)
    return git_fail(ec::git_error, "cannot configure origin " + canon);
  git_remote_free(rr);
  if (git_remote_add_fetch(raw, "origin", tags_spec) != 0)
    return git_fail(ec::git_error, "cannot configure origin " + canon);
  return repo;
}

// Reads `n` bytes at `offset` (from the end when negative) of `file`.
std::optional<std::string> read_at(const fs::path& file, int64_t offset,
                                   size_t n) {
  std::ifstream f{file, std::ios::binary};
  if (!f)
    return std::nullopt;
  if (offset < 0)
    f.seekg(offset, std::ios::end);
  else
    f.seekg(offset);
  std::string out(n, '\0');
  if (!f.read(out.data(), static_cast<std::streamsize>(n)))
    return std::nullopt;
  return out;
}

uint32_t be32(const std::string& s, size_t at) {
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(s[at + i])); };
  return (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
}

// Puts the pack `p.pack` and its index `p.idx` into the objects of the
// repository at `path` (seed_pack): both must agree (a version 2 index of
// as many objects as the pack's header says, naming the pack's trailing
// checksum). The pack goes first, then its index. `objects`: the count.
caf::error install_indexed(const fs::path& path, const seed_pack& p,
                           uint64_t& objects) {
  auto bad = [&](const std::string& why) {
    return make_error(ec::checkpoint_corrupt,
                      "pack " + p.pack.filename().string() + " and index "
                          + p.idx.filename().string() + " do not match: "
                          + why);
  };
  auto head = read_at(p.pack, 0, 12);
  auto trailer = read_at(p.pack, -20, 20);
  auto idx_head = read_at(p.idx, 0, 8 + 256 * 4);
  auto idx_trailer = read_at(p.idx, -40, 20);
  if (!head || !trailer || !idx_head || !idx_trailer)
    return bad("a file is missing or too short");
  if (head->compare(0, 4, "PACK") != 0)
    return bad("not a pack");
  if (idx_head->compare(0, 4, "\377tOc") != 0 || be32(*idx_head, 4) != 2)
    return bad("not a version 2 pack index");
  auto count = be32(*head, 8);
  if (be32(*idx_head, 8 + 255 * 4) != count)
    return bad("object counts differ");
  if (*idx_trailer != *trailer)
    return bad("the index is of another pack");
  std::string name = "pack-";
  for (unsigned char ch : *trailer) {
    static const char hex[] = "0123456789abcdef";
    name.push_back(hex[ch >> 4]);
    name.push_back(hex[ch & 15]);
  }
  auto dest = path / "objects" / "pack";
  std::error_code err;
  fs::create_directories(dest, err);
  for (auto& [from, ext] : {std::pair{p.pack, ".pack"}, std::pair{p.idx, ".idx"}}) {
    auto to = dest / (name + ext);
    fs::rename(from, to, err);
    if (err) {
      err.clear();
      fs::copy_file(from, to, fs::copy_options::overwrite_existing, err);
    }
    if (err)
      return make_error(ec::io_error, "cannot move " + from.string()
                                          + " into " + dest.string() + ": "
                                          + err.message());
  }
  objects = count;
  return {};
}

// Fills the new mirror `repo` at `path` from `sd` (its packs, then its
// refs, which must name commits the packs hold), then fetches from origin.
// A failed fetch leaves the seed as it is (`rep.offline`); a cancelled
// one is an error.
caf::error apply_seed(git_repository* repo, const fs::path& path,
                      const std::string& canon, const seed& sd,
                      const control& ctl, seed_report& rep) {
  for (auto& p : sd.packs) {
    uint64_t n = 0;
    if (auto e = p.idx.empty() ? index_pack_into(repo, path, p.pack, &n)
                               : install_indexed(path, p, n))
      return e;
    rep.objects += n;
  }
  git_odb* oraw = nullptr;
  if (git_repository_odb(&oraw, repo) == 0) {
    git_odb_refresh(oraw);
    git_odb_free(oraw);
  }
  for (auto& [name, id] : sd.refs) {
    git_oid oid;
    git_commit* c = nullptr;
    if (!is_origin_branch(name) || id.size() != GIT_OID_HEXSZ || !is_hex(id)
        || git_oid_fromstr(&oid, id.c_str()) != 0
        || git_commit_lookup(&c, repo, &oid) != 0) {
      git_error_clear();
      return make_error(ec::checkpoint_corrupt,
                        "the mirror packs name " + name + " at " + id
                            + ", which they do not hold");
    }
    git_commit_free(c);
    git_reference* out = nullptr;
    if (git_reference_create(&out, repo, name.c_str(), &oid, 1,
                             "makima: seeded from mirror packs")
        != 0)
      return git_fail(ec::git_error, "cannot create " + name);
    git_reference_free(out);
  }
  if (is_origin_branch(sd.head)) {
    git_reference* r = nullptr;
    if (git_reference_lookup(&r, repo, sd.head.c_str()) == 0) {
      git_reference_free(r);
      git_reference* out = nullptr;
      if (git_reference_symbolic_create(&out, repo, origin_head_ref,
                                        sd.head.c_str(), 1,
                                        "makima: set origin/HEAD")
          == 0)
        git_reference_free(out);
    }
    git_error_clear();
  }
  rep.used = true;
  if (auto e = fetch_origin(repo, canon, ctl, phase::fetching,
                            &rep.fetched_objects)) {
    if (code_of(e) == ec::cancelled)
      return e;
    rep.offline = true;
    rep.fetch_error = describe(e);
  }
  return {};
}

// -- mirror -------------------------------------------------------------------

struct mirror::impl {
  std::string url; // canonical
  fs::path path;
  repo_ptr repo;
};

mirror::mirror(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
mirror::~mirror() = default;
mirror::mirror(mirror&&) noexcept = default;
mirror& mirror::operator=(mirror&&) noexcept = default;

const fs::path& mirror::path() const {
  return impl_->path;
}

caf::expected<mirror> mirror::open_path(const fs::path& path) {
  init();
  git_repository* raw = nullptr;
  if (git_repository_open_bare(&raw, path.c_str()) != 0)
    return git_fail(ec::repo_not_found, "not a mirror: " + path.string());
  auto st = std::make_unique<impl>();
  st->repo = repo_ptr{raw};
  st->path = path;
  git_remote* rr = nullptr;
  if (git_remote_lookup(&rr, raw, "origin") == 0) {
    if (const char* u = git_remote_url(rr))
      st->url = u;
    git_remote_free(rr);
  }
  return mirror{std::move(st)};
}

bool mirror::is_local(const std::string& url) {
  return local_dir_of(canonical_url(url)).has_value();
}

caf::expected<mirror> mirror::open(const std::string& url,
                                   const fs::path& repos_dir,
                                   bool fetch_existing, const control& ctl,
                                   const seed* from_seed,
                                   seed_report* report) {
  init();
  if (url.empty())
    return make_error(ec::repo_not_found,
                      "repository not found: empty repository location");
  auto canon = canonical_url(url);
  std::error_code err;
  fs::create_directories(repos_dir, err);
  if (err)
    return make_error(ec::io_error, "cannot create the repos directory "
                                        + repos_dir.string() + ": "
                                        + err.message());
  auto name = mirror_dir_name(canon);
  auto final_path = repos_dir / name;
  auto st = std::make_unique<impl>();
  st->url = canon;
  st->path = final_path;
  // Existing mirror?
  if (fs::exists(final_path, err)) {
    git_repository* raw = nullptr;
    bool valid = false;
    if (git_repository_open_bare(&raw, final_path.c_str()) == 0) {
      repo_ptr repo{raw};
      git_remote* rr = nullptr;
      if (git_remote_lookup(&rr, raw, "origin") == 0) {
        git_remote_free(rr);
        valid = true;
        st->repo = std::move(repo);
      }
    }
    if (valid) {
      if (fetch_existing) {
        if (auto e = check_local_repo(canon))
          return e;
        if (auto e = fetch_origin(st->repo.get(), canon, ctl, phase::fetching))
          return e;
      }
      return mirror{std::move(st)};
    }
    // Half-created mirror from a crash: start over.
    force_remove_all(final_path);
    if (fs::exists(final_path, err))
      return make_error(ec::io_error,
                        "cannot remove broken mirror " + final_path.string());
  }
  if (auto e = check_local_repo(canon))
    return e;
  // Remove temp dirs left by a crashed clone (one makima per data dir).
  auto tmp_prefix = name + ".tmp-";
  for (auto it = fs::directory_iterator(repos_dir, err);
       !err && it != fs::directory_iterator(); it.increment(err)) {
    auto fname = it->path().filename().string();
    if (fname.compare(0, tmp_prefix.size(), tmp_prefix) == 0)
      force_remove_all(it->path());
  }
  err.clear();
  auto tmp = repos_dir / (tmp_prefix + random_suffix());
  auto cleanup = [&] { force_remove_all(tmp); };
  auto local_dir = local_dir_of(canon);
  seed_report ignored;
  auto& rep = report != nullptr ? *report : ignored;
  rep = seed_report{};
  bool seeded = false;
  if (from_seed != nullptr && !from_seed->packs.empty() && !local_dir) {
    auto repo = init_mirror(tmp, canon);
    auto e = repo ? apply_seed(repo->get(), tmp, canon, *from_seed, ctl, rep)
                  : repo.error();
    if (!e) {
      seeded = true;
    } else {
      cleanup();
      if (code_of(e) == ec::cancelled)
        return e;
      rep = seed_report{};
      rep.refused = describe(e);
      tmp = repos_dir / (tmp_prefix + random_suffix());
    }
  }
  if (!seeded) {
    auto repo = init_mirror(tmp, canon);
    if (!repo) {
      cleanup();
      return std::move(repo.error());
    }
    auto* raw = repo->get();
    if (local_dir)
      if (auto e = link_local_objects(*local_dir, tmp, ctl)) {
        cleanup();
        return e;
      }
    if (auto e = fetch_origin(raw, canon, ctl, phase::cloning)) {
      cleanup();
      return e;
    }
    if (!local_dir)
      write_clone_record(raw, tmp);
  }
  fs::rename(tmp, final_path, err);
  if (err) {
    cleanup();
    // Someone else may have created it concurrently.
    git_repository* raw = nullptr;
    if (git_repository_open_bare(&raw, final_path.c_str()) == 0) {
      st->repo.reset(raw);
      return mirror{std::move(st)};
    }
    return make_error(ec::io_error, "cannot move the new mirror of " + canon
                                        + " to " + final_path.string() + ": "
                                        + err.message());
  }
  auto repo = open_bare(final_path);
  if (!repo)
    return std::move(repo.error());
  st->repo = std::move(*repo);
  return mirror{std::move(st)};
}

caf::error mirror::fetch(const control& ctl) {
  if (auto e = check_local_repo(impl_->url))
    return e;
  return fetch_origin(impl_->repo.get(), impl_->url, ctl, phase::fetching);
}

caf::expected<std::string> mirror::resolve(const std::string& ref) {
  auto* repo = impl_->repo.get();
  auto not_found = [&] {
    if (ref.empty())
      return make_error(ec::ref_not_found, "default branch not found in "
                                               + impl_->url
                                               + " (empty repository?)");
    return make_error(ec::ref_not_found,
                      "ref '" + ref + "' not found in " + impl_->url);
  };
  if (ref.empty()) {
    if (auto c = ref_commit(repo, origin_head_ref))
      return *c;
    return not_found();
  }
  if (ref.size() >= 4 && ref.size() <= GIT_OID_HEXSZ && is_hex(ref)) {
    git_oid oid;
    if (git_oid_fromstrn(&oid, ref.data(), ref.size()) == 0) {
      git_object* obj = nullptr;
      if (git_object_lookup_prefix(&obj, repo, &oid, ref.size(), GIT_OBJECT_ANY)
          == 0) {
        object_ptr guard{obj};
        if (auto c = peel_commit(obj))
          return *c;
      }
    }
  }
  if (ref != "HEAD") {
    if (auto c = ref_commit(repo, "refs/remotes/origin/" + ref))
      return *c;
    if (auto c = ref_commit(repo, "refs/tags/" + ref))
      return *c;
  } else if (auto c = ref_commit(repo, origin_head_ref)) {
    return *c;
  }
  // Any revspec; branch names in it live under origin/ in the mirror
  // ("main~2" means "origin/main~2").
  for (const auto& spec : {ref, "origin/" + ref}) {
    git_object* obj = nullptr;
    if (git_revparse_single(&obj, repo, spec.c_str()) == 0) {
      object_ptr guard{obj};
      if (auto c = peel_commit(obj))
        return *c;
    }
  }
  return not_found();
}

namespace {

// Progress of one batch, reported as progress of the whole checkout.
struct batch_progress {
  op_payload* st;
  size_t offset;
  size_t total;
};

void on_batch_progress(const char*, size_t done, size_t, void* payload) {
  auto* b = static_cast<batch_progress*>(payload);
  b->st->report(b->offset + done, b->total, 0);
}

int collect_path(const char* root, const git_tree_entry* e, void* payload) {
  auto type = git_tree_entry_type(e);
  if (type == GIT_OBJECT_BLOB || type == GIT_OBJECT_COMMIT)
    static_cast<std::vector<std::string>*>(payload)->push_back(
        std::string{root} + git_tree_entry_name(e));
  return 0;
}

// Writes every file of `commit` into the empty worktree at `dir` (whose HEAD
// is already `commit`), at most `batch` paths per libgit2 checkout, checking
// `st` before each batch and in libgit2's notify callback.
caf::error checkout_in_batches(const fs::path& dir, git_commit* commit,
                               bool filters, op_payload& st,
                               size_t batch = 256) {
  git_repository* raw = nullptr;
  if (git_repository_open(&raw, dir.c_str()) != 0)
    return git_fail(ec::git_error, "cannot open worktree " + dir.string());
  repo_ptr wt{raw};
  // The tree as an object of the worktree's repository (libgit2 checks).
  git_tree* traw = nullptr;
  if (git_tree_lookup(&traw, raw, git_commit_tree_id(commit)) != 0)
    return git_fail(ec::git_error, "cannot read the tree of "
                                       + oid_hex(*git_commit_id(commit)));
  tree_ptr tree{traw};
  std::vector<std::string> paths;
  if (git_tree_walk(traw, GIT_TREEWALK_PRE, collect_path, &paths) != 0)
    return git_fail(ec::git_error, "cannot list the tree of "
                                       + oid_hex(*git_commit_id(commit)));
  batch_progress bp{&st, 0, paths.size()};
  // An empty tree still gets its (empty) index written.
  for (size_t i = 0; i < paths.size() || i == 0; i += batch) {
    if (st.check())
      return cancelled_error("checkout of " + dir.string());
    std::vector<char*> strs;
    for (size_t j = i; j < std::min(paths.size(), i + batch); ++j)
      strs.push_back(paths[j].data());
    git_checkout_options co = GIT_CHECKOUT_OPTIONS_INIT;
    // The target is new: FORCE writes every file without comparing against
    // a (nonexistent) workdir state.
    co.checkout_strategy =
        GIT_CHECKOUT_FORCE | GIT_CHECKOUT_DISABLE_PATHSPEC_MATCH;
    co.disable_filters = filters ? 0 : 1;
    co.paths.strings = strs.data();
    co.paths.count = strs.size();
    co.notify_flags = GIT_CHECKOUT_NOTIFY_ALL;
    co.notify_cb = on_checkout_notify;
    co.notify_payload = &st;
    co.progress_cb = on_batch_progress;
    co.progress_payload = &bp;
    bp.offset = i;
    if (git_checkout_tree(raw, reinterpret_cast<git_object*>(traw), &co) != 0)
      return git_fail(ec::git_error, "cannot check out " + dir.string());
  }
  return {};
}

} // namespace

namespace {

// Opens the linked worktree at `dir` as a repository of its own.
caf::expected<repo_ptr> open_worktree_repo(const fs::path& dir) {
  std::error_code err;
  if (!fs::is_directory(dir, err))
    return make_error(ec::worktree_missing,
                      "worktree " + dir.string() + " is missing");
  git_repository* raw = nullptr;
  if (git_repository_open_ext(&raw, dir.c_str(), GIT_REPOSITORY_OPEN_NO_SEARCH,
                              nullptr)
      != 0)
    return git_fail(ec::worktree_missing,
                    "cannot open worktree " + dir.string());
  return repo_ptr{raw};
}

// Looks up the commit `commit` (full or abbreviated hex) in `repo`.
caf::expected<commit_ptr> lookup_commit(git_repository* repo,
                                        const std::string& commit,
                                        const std::string& url) {
  git_oid oid;
  git_commit* craw = nullptr;
  if (!is_hex(commit) || commit.size() > GIT_OID_HEXSZ
      || git_oid_fromstrn(&oid, commit.data(), commit.size()) != 0
      || git_commit_lookup_prefix(&craw, repo, &oid, commit.size()) != 0) {
    git_error_clear();
    return make_error(ec::ref_not_found,
                      "commit '" + commit + "' not found in " + url);
  }
  return commit_ptr{craw};
}

// The commit a restored branch started from: its merge base with the
// remote's default branch, or `head` itself when there is none.
std::string restored_base(git_repository* repo, const git_commit* head) {
  auto base = oid_hex(*git_commit_id(head));
  git_reference* hraw = nullptr;
  if (git_reference_lookup(&hraw, repo, origin_head_ref) != 0)
    return base;
  ref_ptr href{hraw};
  git_object* hobj = nullptr;
  if (git_reference_peel(&hobj, hraw, GIT_OBJECT_COMMIT) != 0)
    return base;
  object_ptr hguard{hobj};
  git_oid mb;
  if (git_merge_base(&mb, repo, git_commit_id(head), git_object_id(hobj)) == 0)
    return oid_hex(mb);
  git_error_clear();
  return base;
}

// What add_worktree and restore_worktree share.
struct worktree_request {
  git_repository* repo;
  const fs::path& mirror_path;
  const std::string& url;
  const std::string& name;
  const fs::path& dir;
  const std::string& commit; // the branch's commit
  const std::string& branch;
  // Empty: check out `commit`. Otherwise check out this commit's tree and
  // set the index to `commit`'s tree (restore_worktree).
  const std::string& files_commit;
  const control& ctl;
};

caf::expected<worktree_info> make_worktree(const worktree_request& rq) {
  auto* repo = rq.repo;
  const auto& name = rq.name;
  const auto& branch = rq.branch;
  op_payload cst{&rq.ctl, phase::checking_out};
  if (cst.check())
    return cancelled_error("checkout of worktree " + name);
  if (name.empty() || name.find('/') != std::string::npos
      || name.find('\\') != std::string::npos)
    return make_error(ec::invalid_argument,
                      "invalid worktree name '" + name + "'");
  std::error_code err;
  auto abs_dir = fs::absolute(rq.dir, err).lexically_normal();
  if (err)
    abs_dir = rq.dir;
  if (fs::exists(fs::symlink_status(abs_dir, err)))
    return make_error(ec::io_error, "cannot create worktree " + name + ": "
                                        + abs_dir.string() + " already exists");
  auto branch_ref = "refs/heads/" + branch;
  if (git_reference_is_valid_name(branch_ref.c_str()) == 0)
    return make_error(ec::invalid_argument,
                      "invalid branch name '" + branch + "'");
  // Commit to start from, and the one whose files are written.
  auto base = lookup_commit(repo, rq.commit, rq.url);
  if (!base)
    return base.error();
  auto* craw = base->get();
  commit_ptr files;
  if (!rq.files_commit.empty()) {
    auto c = lookup_commit(repo, rq.files_commit, rq.url);
    if (!c)
      return c.error();
    files = std::move(*c);
  }
  auto* fraw = files ? files.get() : craw;
  auto base_hex =
      files ? restored_base(repo, craw) : oid_hex(*git_commit_id(craw));
  // A stale worktree of the same name whose directory is gone: prune it.
  auto admin = rq.mirror_path / "worktrees" / name;
  {
    git_worktree* wraw = nullptr;
    if (git_worktree_lookup(&wraw, repo, name.c_str()) == 0) {
      worktree_ptr wt{wraw};
      if (git_worktree_validate(wraw) != 0) {
        git_worktree_prune_options popts = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
        popts.flags = GIT_WORKTREE_PRUNE_LOCKED;
        git_worktree_prune(wraw, &popts);
      } else {
        return make_error(ec::git_error,
                          "cannot create worktree " + name
                              + ": a worktree of that name exists");
      }
    }
    if (fs::exists(admin, err))
      force_remove_all(admin);
  }
  // Branch.
  git_reference* braw = nullptr;
  if (git_branch_create(&braw, repo, branch.c_str(), craw, 0) != 0)
    return git_fail(ec::git_error, "cannot create branch " + branch + " in "
                                       + rq.mirror_path.string());
  ref_ptr bref{braw};
  auto parent = abs_dir.parent_path();
  bool parent_existed = fs::exists(parent, err);
  auto fail = [&](caf::error e) -> caf::error {
    git_reference_delete(bref.get());
    force_remove_all(admin);
    force_remove_all(abs_dir);
    if (!parent_existed) {
      std::error_code ignore;
      fs::remove(parent, ignore); // only if empty
    }
    return e;
  };
  fs::create_directories(parent, err);
  if (err)
    return fail(make_error(ec::io_error, "cannot create " + parent.string()
                                             + ": " + err.message()));
  git_worktree_add_options opts = GIT_WORKTREE_ADD_OPTIONS_INIT;
  opts.ref = bref.get();
  // The worktree is made without files; they are written below in
  // batches of paths, because libgit2 cannot abort a checkout while it
  // writes files (its progress callback cannot fail): the cancel is checked
  // between batches, so it takes effect within one batch.
  opts.checkout_options.checkout_strategy = GIT_CHECKOUT_NONE;
  git_worktree* wraw = nullptr;
  if (git_worktree_add(&wraw, repo, name.c_str(), abs_dir.c_str(), &opts)
      != 0) {
    if (cst.check())
      return fail(cancelled_error("checkout of worktree " + name));
    return fail(git_fail(ec::git_error, "cannot add worktree " + name + " at "
                                            + abs_dir.string() + " for "
                                            + rq.url));
  }
  git_worktree_free(wraw);
  if (auto e =
          checkout_in_batches(abs_dir, fraw, needs_filters(repo, fraw), cst))
    return fail(cst.check() ? cancelled_error("checkout of worktree " + name)
                            : e);
  if (cst.check())
    return fail(cancelled_error("checkout of worktree " + name));
  if (files) {
    // The index says the branch head: the restored work shows as unstaged
    // changes and untracked files. Entries whose id and mode did not change
    // keep the stat data the checkout recorded.
    auto wt = open_worktree_repo(abs_dir);
    if (!wt)
      return fail(wt.error());
    git_index* iraw = nullptr;
    git_tree* traw = nullptr;
    if (git_repository_index(&iraw, wt->get()) != 0)
      return fail(git_fail(ec::git_error, "cannot read the index of worktree "
                                              + abs_dir.string()));
    index_ptr index{iraw};
    if (git_tree_lookup(&traw, wt->get(), git_commit_tree_id(craw)) != 0)
      return fail(git_fail(ec::git_error, "cannot read the tree of "
                                              + oid_hex(*git_commit_id(craw))));
    tree_ptr tree{traw};
    if (git_index_read_tree(iraw, traw) != 0 || git_index_write(iraw) != 0)
      return fail(git_fail(ec::git_error, "cannot write the index of worktree "
                                              + abs_dir.string()));
  }
  {
    std::ofstream out{admin / base_file, std::ios::trunc};
    out << base_hex << '\n';
  }
  return worktree_info{abs_dir, branch, base_hex};
}

} // namespace

caf::expected<worktree_info> mirror::add_worktree(const std::string& name,
                                                  const fs::path& dir,
                                                  const std::string& commit,
                                                  const std::string& branch,
                                                  const control& ctl) {
  static const std::string none;
  return make_worktree({impl_->repo.get(), impl_->path, impl_->url, name, dir,
                        commit, branch, none, ctl});
}

caf::expected<worktree_info>
mirror::restore_worktree(const std::string& name, const fs::path& dir,
                         const std::string& branch,
                         const std::string& branch_head,
                         const std::string& wip_commit, const control& ctl) {
  if (wip_commit.empty())
    return make_error(ec::ref_not_found,
                      "empty WIP commit for worktree " + name);
  return make_worktree({impl_->repo.get(), impl_->path, impl_->url, name, dir,
                        branch_head, branch, wip_commit, ctl});
}

caf::expected<worktree_info> mirror::open_worktree(const std::string& name,
                                                   const std::string& branch) {
  auto* repo = impl_->repo.get();
  git_worktree* wraw = nullptr;
  if (git_worktree_lookup(&wraw, repo, name.c_str()) != 0)
    return git_fail(ec::worktree_missing,
                    "worktree " + name + " of " + impl_->url + " is missing");
  worktree_ptr wt{wraw};
  if (git_worktree_validate(wraw) != 0)
    return git_fail(ec::worktree_missing,
                    "worktree " + name + " of " + impl_->url + " is missing");
  const char* p = git_worktree_path(wraw);
  fs::path dir = p != nullptr ? fs::path{p} : fs::path{};
  std::error_code err;
  if (dir.empty() || !fs::is_directory(dir, err))
    return make_error(ec::worktree_missing,
                      "worktree " + name + " of " + impl_->url
                          + " is missing: directory gone");
  git_reference* braw = nullptr;
  auto bname = "refs/heads/" + branch;
  if (git_reference_lookup(&braw, repo, bname.c_str()) != 0)
    return git_fail(ec::worktree_missing, "branch " + branch + " of worktree "
                                              + name + " is missing");
  ref_ptr bref{braw};
  std::string base;
  {
    std::ifstream in{impl_->path / "worktrees" / name / base_file};
    std::getline(in, base);
  }
  if (base.size() != GIT_OID_HEXSZ) {
    base.clear();
    // Fall back to the merge base with the default branch.
    git_object* obj = nullptr;
    git_reference* hraw = nullptr;
    if (git_reference_peel(&obj, braw, GIT_OBJECT_COMMIT) == 0) {
      object_ptr bobj{obj};
      base = oid_hex(*git_object_id(obj));
      if (git_reference_lookup(&hraw, repo, origin_head_ref) == 0) {
        ref_ptr href{hraw};
        git_object* hobj = nullptr;
        if (git_reference_peel(&hobj, hraw, GIT_OBJECT_COMMIT) == 0) {
          object_ptr hguard{hobj};
          git_oid mb;
          if (git_merge_base(&mb, repo, git_object_id(obj), git_object_id(hobj))
              == 0)
            base = oid_hex(mb);
        }
      }
    }
  }
  return worktree_info{dir, branch, base};
}

namespace {

// Returns HEAD's commit of the worktree repository, or null on an unborn
// branch (no commit yet).
caf::expected<commit_ptr> head_commit(git_repository* repo,
                                      const fs::path& dir) {
  git_reference* href = nullptr;
  int rc = git_repository_head(&href, repo);
  if (rc == GIT_EUNBORNBRANCH)
    return commit_ptr{};
  if (rc != 0)
    return git_fail(ec::git_error,
                    "cannot read HEAD of worktree " + dir.string());
  ref_ptr head{href};
  git_object* obj = nullptr;
  if (git_reference_peel(&obj, href, GIT_OBJECT_COMMIT) != 0)
    return git_fail(ec::git_error,
                    "cannot read HEAD of worktree " + dir.string());
  return commit_ptr{reinterpret_cast<git_commit*>(obj)};
}

// Creates a commit of `tree_oid` on `parent` (null: a root commit) by `sig`,
// moving `update_ref` ("HEAD") to it, or no ref when null.
caf::expected<git_oid>
create_commit(git_repository* repo, const git_oid& tree_oid,
              const git_commit* parent, const signature& sig,
              const std::string& message, const char* update_ref,
              const fs::path& dir) {
  git_tree* traw = nullptr;
  if (git_tree_lookup(&traw, repo, &tree_oid) != 0)
    return git_fail(ec::git_error,
                    "cannot read the tree of worktree " + dir.string());
  tree_ptr tree{traw};
  git_signature* sraw = nullptr;
  int rc = sig.time
               ? git_signature_new(&sraw, sig.name.c_str(), sig.email.c_str(),
                                   *sig.time, 0)
               : git_signature_now(&sraw, sig.name.c_str(), sig.email.c_str());
  if (rc != 0)
    return git_fail(ec::git_error, "invalid commit signature '" + sig.name
                                       + " <" + sig.email + ">'");
  signature_ptr who{sraw};
  const git_commit* parents[1] = {parent};
  git_oid out;
  if (git_commit_create(&out, repo, update_ref, sraw, sraw, nullptr,
                        message.c_str(), traw, parent ? 1 : 0, parents)
      != 0)
    return git_fail(ec::git_error, "cannot commit in worktree " + dir.string());
  return out;
}

} // namespace

caf::expected<std::optional<std::string>>
mirror::commit_all(const fs::path& dir, const std::string& message,
                   const signature& sig) {
  auto repo = open_worktree_repo(dir);
  if (!repo)
    return repo.error();
  auto raw = repo->get();
  git_index* iraw = nullptr;
  if (git_repository_index(&iraw, raw) != 0)
    return git_fail(ec::git_error,
                    "cannot read the index of worktree " + dir.string());
  index_ptr index{iraw};
  if (auto err = stage_all(iraw, dir))
    return err;
  git_oid tree_oid;
  if (git_index_write_tree(&tree_oid, iraw) != 0)
    return git_fail(ec::git_error,
                    "cannot write the tree of worktree " + dir.string());
  if (git_index_write(iraw) != 0)
    return git_fail(ec::git_error,
                    "cannot write the index of worktree " + dir.string());
  auto parent = head_commit(raw, dir);
  if (!parent)
    return parent.error();
  if (*parent && git_oid_equal(git_commit_tree_id(parent->get()), &tree_oid))
    return std::optional<std::string>{};
  auto out =
      create_commit(raw, tree_oid, parent->get(), sig, message, "HEAD", dir);
  if (!out)
    return out.error();
  return std::optional<std::string>{oid_hex(*out)};
}

namespace {

// Removes a file when it goes out of scope.
struct file_guard {
  fs::path path;
  ~file_guard() {
    std::error_code ignore;
    if (!path.empty())
      fs::remove(path, ignore);
  }
};

} // namespace

caf::expected<std::string> mirror::snapshot(const fs::path& dir,
                                            const std::string& ref_name,
                                            const std::string& message,
                                            const signature& sig) {
  std::error_code err;
  if (!fs::is_directory(dir, err))
    return make_error(ec::worktree_missing,
                      "worktree " + dir.string() + " is missing");
  if (ref_name.compare(0, 5, "refs/") != 0
      || git_reference_is_valid_name(ref_name.c_str()) == 0)
    return make_error(ec::invalid_argument,
                      "invalid snapshot ref name '" + ref_name + "'");
  auto repo = open_worktree_repo(dir);
  if (!repo)
    return repo.error();
  auto raw = repo->get();
  auto head = head_commit(raw, dir);
  if (!head)
    return head.error();
  commit_ptr parent = std::move(*head);
  // Stage into a copy of the worktree's index (for a linked worktree it is
  // <mirror>/worktrees/<name>/index), installed as this private repository
  // object's index: the real index file is never opened for writing, and
  // the copy keeps its stat cache, so unchanged files are not re-hashed.
  // The copy keeps the original's mtime so racy-entry checks see the same
  // timestamps.
  fs::path gitdir = git_repository_path(raw);
  auto index_file = gitdir / "index";
  file_guard copy;
  git_index* iraw = nullptr;
  if (fs::exists(index_file, err)) {
    copy.path = gitdir / ("makima-wip-index-" + random_suffix());
    fs::copy_file(index_file, copy.path, err);
    if (!err)
      fs::last_write_time(copy.path, fs::last_write_time(index_file, err), err);
    if (err)
      return make_error(ec::io_error, "cannot copy the index of worktree "
                                          + dir.string() + ": "
                                          + err.message());
    if (git_index_open(&iraw, copy.path.c_str()) != 0)
      return git_fail(ec::git_error,
                      "cannot read the index of worktree " + dir.string());
  } else if (git_index_new(&iraw) != 0) {
    return git_fail(ec::git_error,
                    "cannot create an index for worktree " + dir.string());
  }
  index_ptr index{iraw};
  if (copy.path.empty() && parent) {
    git_tree* traw = nullptr;
    if (git_commit_tree(&traw, parent.get()) != 0)
      return git_fail(ec::git_error,
                      "cannot read HEAD's tree in worktree " + dir.string());
    tree_ptr head_tree{traw};
    if (git_index_read_tree(iraw, traw) != 0)
      return git_fail(ec::git_error,
                      "cannot read HEAD's tree in worktree " + dir.string());
  }
  if (git_repository_set_index(raw, iraw) != 0)
    return git_fail(ec::git_error,
                    "cannot use a private index for worktree " + dir.string());
  if (auto err = stage_all_reusing_objects(raw, iraw, dir))
    return err;
  git_oid tree_oid;
  if (git_index_write_tree_to(&tree_oid, iraw, raw) != 0)
    return git_fail(ec::git_error,
                    "cannot write the tree of worktree " + dir.string());
  git_oid out;
  if (parent && git_oid_equal(git_commit_tree_id(parent.get()), &tree_oid)) {
    // Nothing changed: HEAD itself is the snapshot.
    git_oid_cpy(&out, git_commit_id(parent.get()));
  } else {
    // No ref update: HEAD and the branch stay where they are.
    auto made =
        create_commit(raw, tree_oid, parent.get(), sig, message, nullptr, dir);
    if (!made)
      return made.error();
    out = *made;
  }
  git_reference* rraw = nullptr;
  if (git_reference_create(&rraw, raw, ref_name.c_str(), &out, 1,
                           "makima: snapshot")
      != 0)
    return git_fail(ec::git_error, "cannot set " + ref_name
                                       + " for the snapshot of worktree "
                                       + dir.string());
  git_reference_free(rraw);
  return oid_hex(out);
}

bool mirror::has_object(const std::string& id) {
  git_oid oid;
  if (id.size() != GIT_OID_HEXSZ || !is_hex(id)
      || git_oid_fromstr(&oid, id.c_str()) != 0)
    return false;
  git_odb* raw = nullptr;
  if (git_repository_odb(&raw, impl_->repo.get()) != 0) {
    git_error_clear();
    return false;
  }
  odb_ptr odb{raw};
  return git_odb_exists(raw, &oid) == 1;
}

std::vector<std::pair<std::string, std::string>> mirror::origin_branches() {
  return branches_of(impl_->repo.get());
}

std::string mirror::origin_head() {
  return head_of(impl_->repo.get());
}

std::optional<git::clone_record> mirror::clone_record() {
  std::ifstream f{impl_->path / clone_record_file};
  if (!f)
    return std::nullopt;
  git::clone_record r;
  std::string line;
  while (std::getline(f, line)) {
    auto sp = line.find(' ');
    if (sp == std::string::npos)
      return std::nullopt;
    auto kind = line.substr(0, sp);
    auto rest = line.substr(sp + 1);
    if (kind == "pack") {
      auto file = impl_->path / "objects" / "pack" / rest;
      auto idx = file;
      idx.replace_extension(".idx");
      std::error_code err;
      if (rest.find('/') != std::string::npos || !fs::is_regular_file(file, err)
          || !fs::is_regular_file(idx, err))
        return std::nullopt;
      r.packs.push_back({file, idx});
    } else if (kind == "ref") {
      auto sp2 = rest.find(' ');
      if (sp2 == std::string::npos)
        return std::nullopt;
      r.refs.emplace_back(rest.substr(0, sp2), rest.substr(sp2 + 1));
    } else if (kind == "head") {
      r.head = rest;
    }
  }
  if (r.packs.empty())
    return std::nullopt;
  return r;
}

namespace {

// Streams a pack into a file, refusing to grow past `max`.
struct pack_sink {
  std::FILE* file = nullptr;
  uint64_t written = 0;
  uint64_t max = 0;
  bool too_big = false;
  bool write_failed = false;
};

int on_pack_data(void* buf, size_t size, void* payload) {
  auto* sink = static_cast<pack_sink*>(payload);
  if (sink->written + size > sink->max) {
    sink->too_big = true;
    return GIT_EUSER;
  }
  if (std::fwrite(buf, 1, size, sink->file) != size) {
    sink->write_failed = true;
    return GIT_EUSER;
  }
  sink->written += size;
  return 0;
}

// Parses a full hex commit id; false when `hex` is not one.
bool parse_oid(git_oid& oid, const std::string& hex) {
  return hex.size() == GIT_OID_HEXSZ && is_hex(hex)
         && git_oid_fromstr(&oid, hex.c_str()) == 0;
}

} // namespace

caf::expected<pack_info>
mirror::write_pack(const std::vector<std::string>& tips,
                   const std::vector<std::string>& hide, const fs::path& out,
                   uint64_t max_size) {
  auto* repo = impl_->repo.get();
  git_odb* oraw = nullptr;
  if (git_repository_odb(&oraw, repo) != 0)
    return git_fail(ec::git_error,
                    "cannot open the objects of " + impl_->path.string());
  odb_ptr odb{oraw};
  git_revwalk* wraw = nullptr;
  if (git_revwalk_new(&wraw, repo) != 0)
    return git_fail(ec::git_error, "cannot walk " + impl_->path.string());
  revwalk_ptr walk{wraw};
  for (auto& tip : tips) {
    git_oid oid;
    git_commit* c = nullptr;
    if (!parse_oid(oid, tip) || git_commit_lookup(&c, repo, &oid) != 0) {
      git_error_clear();
      return make_error(ec::ref_not_found, "commit '" + tip
                                               + "' not found in the mirror of "
                                               + impl_->url);
    }
    git_commit_free(c);
    if (git_revwalk_push(wraw, &oid) != 0)
      return git_fail(ec::git_error, "cannot walk from " + tip);
  }
  for (auto& h : hide) {
    // A commit the mirror lacks hides nothing: the pack holds more.
    git_oid oid;
    git_commit* c = nullptr;
    if (!parse_oid(oid, h) || git_odb_exists(oraw, &oid) != 1
        || git_commit_lookup(&c, repo, &oid) != 0) {
      git_error_clear();
      continue;
    }
    git_commit_free(c);
    if (git_revwalk_hide(wraw, &oid) != 0)
      return git_fail(ec::git_error, "cannot hide " + h);
  }
  git_packbuilder* praw = nullptr;
  if (git_packbuilder_new(&praw, repo) != 0)
    return git_fail(ec::git_error, "cannot build a pack of " + impl_->url);
  packbuilder_ptr pb{praw};
  // One thread: the threaded delta search splits the work differently from
  // run to run, so the same objects would give different bytes (and a new
  // cas/ blob each checkpoint); single-threaded, the pack is reproducible.
  git_packbuilder_set_threads(praw, 1);
  // Each new commit with its tree, minus the trees and blobs of the hidden
  // commits (libgit2 never writes thin packs: deltas stay inside the pack).
  if (git_packbuilder_insert_walk(praw, wraw) != 0)
    return git_fail(ec::git_error,
                    "cannot list the objects to pack from " + impl_->url);
  auto objects = static_cast<uint64_t>(git_packbuilder_object_count(praw));
  std::error_code err;
  if (!out.parent_path().empty())
    fs::create_directories(out.parent_path(), err);
  auto tmp = out;
  tmp += ".tmp-" + random_suffix();
  file_guard guard{tmp};
  pack_sink sink;
  sink.max = max_size;
  sink.file = std::fopen(tmp.c_str(), "wb");
  if (sink.file == nullptr)
    return make_error(ec::io_error, "cannot create " + tmp.string() + ": "
                                        + std::strerror(errno));
  int rc = git_packbuilder_foreach(praw, on_pack_data, &sink);
  bool closed = std::fclose(sink.file) == 0;
  std::error_code ignore;
  if (sink.too_big) {
    git_error_clear();
    fs::remove(out, ignore);
    return make_error(ec::checkpoint_limit,
                      "the pack of " + std::to_string(objects)
                          + " objects is over the limit of "
                          + std::to_string(max_size) + " bytes");
  }
  if (sink.write_failed || !closed) {
    git_error_clear();
    return make_error(ec::io_error, "cannot write " + tmp.string() + ": "
                                        + std::strerror(errno));
  }
  if (rc != 0)
    return git_fail(ec::git_error, "cannot write the pack of " + impl_->url);
  fs::rename(tmp, out, err);
  if (err)
    return make_error(ec::io_error, "cannot move " + tmp.string() + " to "
                                        + out.string() + ": " + err.message());
  guard.path.clear();
  return pack_info{objects, sink.written};
}

caf::error mirror::index_pack(const fs::path& pack) {
  return index_pack_into(impl_->repo.get(), impl_->path, pack);
}

caf::error mirror::push(const std::string& branch, const std::string& url,
                        const control& ctl) {
  auto* repo = impl_->repo.get();
  op_payload st{&ctl, phase::pushing};
  if (st.check())
    return cancelled_error("push of " + branch);
  auto target = canonical_url(url);
  if (auto e = check_local_repo(target))
    return e;
  auto ref = "refs/heads/" + branch;
  {
    git_reference* r = nullptr;
    if (git_reference_lookup(&r, repo, ref.c_str()) != 0)
      return git_fail(ec::ref_not_found, "branch " + branch
                                             + " not found in the mirror of "
                                             + impl_->url);
    git_reference_free(r);
  }
  git_remote* rraw = nullptr;
  if (git_remote_create_anonymous(&rraw, repo, target.c_str()) != 0)
    return git_fail(ec::repo_not_found, "repository not found: " + url);
  remote_ptr remote{rraw};
  git_push_options opts = GIT_PUSH_OPTIONS_INIT;
  opts.callbacks.push_update_reference = on_push_update;
  opts.callbacks.sideband_progress = on_sideband;
  opts.callbacks.pack_progress = on_pack_progress;
  opts.callbacks.push_transfer_progress = on_push_transfer;
  opts.callbacks.payload = &st;
  if (git_remote_connect(rraw, GIT_DIRECTION_PUSH, &opts.callbacks, nullptr,
                         nullptr)
      != 0) {
    if (st.check())
      return cancelled_error("push of " + branch);
    return git_fail(ec::repo_not_found, "repository not found: " + url);
  }
  auto spec = ref + ":" + ref;
  char* specs[] = {spec.data()};
  git_strarray refspecs{specs, 1};
  int rc = git_remote_push(rraw, &refspecs, &opts);
  if (rc != 0 && st.check())
    return cancelled_error("push of " + branch);
  if (rc == GIT_ENONFASTFORWARD)
    return git_fail(ec::push_rejected, "push of " + branch + " to " + url
                                           + " rejected (non-fast-forward)");
  if (rc != 0)
    return git_fail(ec::git_error, "cannot push " + branch + " to " + url);
  if (!st.push_rejected.empty())
    return make_error(ec::push_rejected,
                      "push of " + branch + " to " + url
                          + " rejected: " + st.push_rejected);
  return {};
}

caf::error mirror::remove_worktree(const std::string& name,
                                   const std::string& branch) {
  auto* repo = impl_->repo.get();
  git_worktree* wraw = nullptr;
  if (git_worktree_lookup(&wraw, repo, name.c_str()) == 0) {
    worktree_ptr wt{wraw};
    fs::path dir;
    if (const char* p = git_worktree_path(wraw))
      dir = p;
    git_worktree_prune_options popts = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
    popts.flags = GIT_WORKTREE_PRUNE_VALID | GIT_WORKTREE_PRUNE_LOCKED
                  | GIT_WORKTREE_PRUNE_WORKING_TREE;
    int rc = git_worktree_prune(wraw, &popts);
    // Whatever libgit2 left (read-only files), remove by hand.
    if (!dir.empty())
      force_remove_all(dir);
    force_remove_all(impl_->path / "worktrees" / name);
    std::error_code err;
    if (!dir.empty() && fs::exists(fs::symlink_status(dir, err)))
      return rc != 0 ? git_fail(ec::io_error,
                                "cannot remove worktree " + dir.string())
                     : make_error(ec::io_error,
                                  "cannot remove worktree " + dir.string());
  }
  delete_branch(repo, branch);
  delete_ref(repo, "refs/wip/" + name);
  git_reference* r = nullptr;
  auto ref = "refs/heads/" + branch;
  if (git_reference_lookup(&r, repo, ref.c_str()) == 0) {
    git_reference_free(r);
    return git_fail(ec::git_error, "cannot delete branch " + branch + " in "
                                       + impl_->path.string());
  }
  return {};
}

caf::expected<size_t>
mirror::prune_task_refs(const std::function<bool(const std::string&)>& live) {
  auto* repo = impl_->repo.get();
  std::vector<std::string> doomed;
  for (const char* glob : {"refs/heads/makima/*", "refs/wip/*"}) {
    git_reference_iterator* raw = nullptr;
    if (git_reference_iterator_glob_new(&raw, repo, glob) != 0)
      return git_fail(ec::git_error,
                      "cannot list the refs of " + impl_->path.string());
    const char* name = nullptr;
    while (git_reference_next_name(&name, raw) == 0) {
      std::string ref = name;
      auto id = ref.substr(ref.rfind('/') + 1);
      if (!live(id))
        doomed.push_back(ref);
    }
    git_reference_iterator_free(raw);
  }
  size_t n = 0;
  for (auto& ref : doomed) {
    // A ref a live worktree has checked out stays (libgit2 refuses anyway).
    git_reference* raw = nullptr;
    if (git_reference_lookup(&raw, repo, ref.c_str()) != 0)
      continue;
    ref_ptr r{raw};
    if (git_branch_is_checked_out(raw) == 1)
      continue;
    if (git_reference_delete(raw) == 0)
      ++n;
  }
  return n;
}

} // namespace makima::git
