// Checkpoints of one task: see checkpoint.hpp and docs/checkpoint-format.md.
#include "actors/checkpoint.hpp"
#include "actors/checkpoint_detail.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <system_error>

#include <nlohmann/json.hpp>

#include "actors/task_store.hpp"
#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/hex.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace makima::checkpoint {

// Shared with actors/mirror_packs.cpp (actors/checkpoint_detail.hpp).
namespace detail {

int64_t elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now() - since)
      .count();
}

std::string random_suffix() {
  static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::random_device rd;
  std::string s;
  for (int i = 0; i < 10; ++i)
    s.push_back(digits[rd() % 36]);
  return s;
}

caf::expected<fs::path> make_staging(const settings& s, const char* what,
                                     const std::string& id) {
  auto dir =
      s.work_dir / (std::string{"."} + what + "-" + id + "-" + random_suffix());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return make_error(ec::io_error, "cannot create staging dir " + dir.string()
                                        + ": " + ec.message());
  return dir;
}

std::string hmac_hex(const std::string& key, const std::string& text) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(text.data()), text.size(), mac,
       &len);
  return to_hex(mac, len);
}

bool is_hex(const std::string& s, size_t len) {
  return s.size() == len && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

caf::error corrupt(const std::string& what) {
  return make_error(ec::checkpoint_corrupt, what);
}

caf::error check_signature(const json& j, const std::string& key,
                           const char* what) {
  if (key.empty())
    return caf::none;
  if (!j.contains("hmac") || !j["hmac"].is_object())
    return make_error(ec::checkpoint_unsigned,
                      std::string{"the "} + what
                          + " is not signed, and a checkpoint key is "
                            "configured");
  auto mac = j["hmac"].value("mac", std::string{});
  auto alg = j["hmac"].value("alg", std::string{});
  auto body = j;
  body.erase("hmac");
  auto want = hmac_hex(key, body.dump());
  if (alg != "HMAC-SHA256" || mac.size() != want.size()
      || CRYPTO_memcmp(mac.data(), want.data(), want.size()) != 0)
    return make_error(ec::checkpoint_bad_signature,
                      std::string{"the "} + what
                          + "'s signature does not match the configured "
                            "checkpoint key");
  return caf::none;
}

void sign(json& body, const std::string& key) {
  if (!key.empty())
    body["hmac"] = {{"alg", "HMAC-SHA256"},
                    {"mac", hmac_hex(key, body.dump())}};
}

std::vector<uint64_t> numbers_in(const std::vector<store::object_info>& objs,
                                 const std::string& prefix) {
  std::vector<uint64_t> out;
  for (auto& o : objs) {
    if (o.key.compare(0, prefix.size(), prefix) != 0)
      continue;
    auto name = o.key.substr(prefix.size());
    if (name.size() < 6 || name.size() > 23
        || name.compare(name.size() - 5, 5, ".json") != 0)
      continue;
    auto num = name.substr(0, name.size() - 5);
    if (!std::all_of(num.begin(), num.end(),
                     [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    out.push_back(std::stoull(num));
  }
  std::sort(out.begin(), out.end());
  return out;
}

caf::expected<bool> put_blob(store::object_store& os, const std::string& sha256,
                             uint64_t size, const fs::path& file) {
  auto key = blob_key(sha256);
  auto have = os.head(key);
  if (!have)
    return have.error();
  if (*have && (*have)->size == size)
    return false;
  if (auto err = os.put_file(key, file))
    return err;
  return true;
}

} // namespace detail

using namespace detail;

namespace {

// The JSON document of `m` without the hmac member.
json to_value(const manifest& m) {
  json j;
  j["format"] = format_name;
  j["version"] = format_version;
  j["task"] = m.task;
  j["n"] = m.n;
  j["parent"] = m.parent ? json(*m.parent) : json(nullptr);
  j["created_at"] = m.created_at;
  j["node"] = m.node;
  j["attempt"] = m.attempt;
  j["state"] = m.state;
  j["covers_seq"] = m.covers_seq;
  j["pause_ms"] = m.pause_ms;
  j["records_digest"] = m.records_digest;
  if (m.origin.empty()) {
    j["repo"] = nullptr;
  } else {
    j["repo"] = {{"origin", m.origin},
                 {"base_commit", m.base_commit},
                 {"branch", m.branch},
                 {"branch_head", m.branch_head},
                 {"wip_commit", m.wip_commit}};
  }
  auto blobs = json::array();
  for (auto& b : m.blobs) {
    json e{{"role", b.role}, {"sha256", b.sha256}, {"size", b.size}};
    if (!b.cf.empty())
      e["cf"] = b.cf;
    blobs.push_back(std::move(e));
  }
  j["blobs"] = std::move(blobs);
  return j;
}

const std::set<std::string>& known_roles() {
  static const std::set<std::string> roles{
      "git-pack",      "state-index",     "state-archive", "state-chunk",
      "scratch-index", "scratch-archive", "scratch-chunk", "records-sst"};
  return roles;
}

// The blob of `role` in `m`, or null.
const blob_ref* find_role(const manifest& m, const std::string& role) {
  for (auto& b : m.blobs)
    if (b.role == role)
      return &b;
  return nullptr;
}

// The fingerprint of a task's record and history as stored.
caf::expected<std::string> records_digest(store::db& db, const std::string& id,
                                          const std::string& record) {
  std::string all = record;
  all.push_back('\0');
  auto err = db.for_each_event(id, [&](uint64_t n, std::string_view v) {
    all += std::to_string(n);
    all.push_back('\0');
    all.append(v.data(), v.size());
    all.push_back('\0');
  });
  if (err)
    return err;
  return store::sha256_hex(all);
}

// Uploads the staging file of `b` unless the store has it with that size.
caf::error upload(store::object_store& os, const blob_ref& b,
                  const fs::path& file, taken& t) {
  auto up = put_blob(os, b.sha256, b.size, file);
  if (!up)
    return up.error();
  if (*up) {
    ++t.blobs_uploaded;
    t.bytes_uploaded += b.size;
  }
  return caf::none;
}

} // namespace

// Downloads blob `b` into `dir/<sha256>` and checks its digest and size.
caf::error detail::fetch_blob(store::object_store& os, const blob_ref& b,
                      const fs::path& dir, uint64_t& bytes) {
  auto file = dir / b.sha256;
  std::error_code fec;
  if (fs::exists(file, fec))
    return caf::none;
  auto err = os.get_file(blob_key(b.sha256), file, b.size);
  if (err) {
    if (code_of(err) == ec::object_not_found)
      return corrupt("the " + b.role + " blob " + b.sha256
                     + " is missing from the store");
    if (code_of(err) == ec::object_store_error) {
      // Larger than its manifest says (get_file's max_size).
      auto sz = os.head(blob_key(b.sha256));
      if (sz && *sz && (*sz)->size != b.size)
        return corrupt("the " + b.role + " blob " + b.sha256 + " has "
                       + std::to_string((*sz)->size) + " bytes, not "
                       + std::to_string(b.size));
    }
    return err;
  }
  auto size = fs::file_size(file, fec);
  auto sha = store::sha256_file(file);
  if (!sha)
    return sha.error();
  if (fec || size != b.size || *sha != b.sha256) {
    fs::remove(file, fec);
    return corrupt("the " + b.role + " blob " + b.sha256
                   + " is damaged: its SHA-256 or size does not match the "
                     "manifest");
  }
  bytes += size;
  return caf::none;
}

namespace {

// Checks the declared sizes of a chain's blobs against the limits before
// anything is downloaded.
caf::error check_sizes(const std::vector<manifest>& chain, const limits& lim) {
  uint64_t records = 0;
  uint64_t state = 0;
  for (auto& m : chain)
    for (auto& b : m.blobs) {
      if (b.role == "git-pack" && b.size > lim.max_pack)
        return make_error(ec::checkpoint_limit,
                          "checkpoint " + m.task + "/" + std::to_string(m.n)
                              + " has a git pack of " + std::to_string(b.size)
                              + " bytes, over the limit of "
                              + std::to_string(lim.max_pack) + " (max_pack)");
      if (b.role == "records-sst")
        records += b.size;
      if (b.role.rfind("state-", 0) == 0 || b.role.rfind("scratch-", 0) == 0)
        state += b.size;
    }
  if (records > lim.max_records)
    return make_error(ec::checkpoint_limit,
                      "the checkpoint's records are " + std::to_string(records)
                          + " bytes, over the limit of "
                          + std::to_string(lim.max_records) + " (max_records)");
  if (state > 2 * lim.state.max_bytes + (64ull << 20))
    return make_error(ec::checkpoint_limit,
                      "the checkpoint's state blobs are "
                          + std::to_string(state)
                          + " bytes, over the state dir limit (max_bytes)");
  return caf::none;
}

// Downloads every blob of `chain` into `dir` (each digest once).
caf::expected<uint64_t> fetch_chain(store::object_store& os,
                                    const std::vector<manifest>& chain,
                                    const fs::path& dir) {
  uint64_t bytes = 0;
  for (auto& m : chain)
    for (auto& b : m.blobs)
      if (auto err = fetch_blob(os, b, dir, bytes))
        return err;
  return bytes;
}

// Adds the blobs of a captured directory to `m` under role prefix
// `prefix`: index and archive always, chunks unless the chain has them.
void add_captured(manifest& m, const std::string& prefix,
                  const archive::captured& c,
                  const std::set<std::string>& chain_blobs,
                  std::map<std::string, fs::path>& files,
                  const std::map<std::string, fs::path>& precopied = {}) {
  m.blobs.push_back({prefix + "-index", c.index.sha256, c.index.size, {}});
  files[c.index.sha256] = c.index.file;
  if (c.archive) {
    m.blobs.push_back(
        {prefix + "-archive", c.archive->sha256, c.archive->size, {}});
    files[c.archive->sha256] = c.archive->file;
  }
  std::set<std::string> seen;
  for (auto& ch : c.chunks) {
    if (chain_blobs.count(ch.sha256) || !seen.insert(ch.sha256).second)
      continue;
    m.blobs.push_back({prefix + "-chunk", ch.sha256, ch.size, {}});
    // A chunk reused from the previous index has no staged file: the
    // pre-copy staged it, or the store has it (checked before the manifest
    // is written).
    auto pre = precopied.find(ch.sha256);
    files[ch.sha256] = ch.staged                ? ch.file
                       : pre != precopied.end() ? pre->second
                                                : fs::path{};
  }
}

// Restores the directory captured under role prefix `prefix` of manifest
// `m` from blobs in `blobs` to `target`.
caf::error restore_dir(const manifest& m, const std::string& prefix,
                       const fs::path& blobs, const fs::path& target,
                       const archive::limits& lim) {
  auto* index = find_role(m, prefix + "-index");
  if (!index)
    return corrupt("checkpoint " + m.task + "/" + std::to_string(m.n)
                   + " has no " + prefix + "-index blob");
  std::optional<fs::path> arch;
  if (auto* a = find_role(m, prefix + "-archive"))
    arch = blobs / a->sha256;
  archive::chunk_source chunks =
      [&](const std::string& sha) -> caf::expected<fs::path> {
    auto file = blobs / sha;
    std::error_code fec;
    if (!is_hex(sha, 64) || !fs::exists(file, fec))
      return corrupt("the " + prefix + " index names chunk " + sha
                     + ", which no manifest of the chain lists");
    return file;
  };
  return archive::restore(blobs / index->sha256, arch, chunks, target, lim);
}

std::string mirror_path_of(const settings& s, const std::string& repo) {
  return (s.repos_dir / git::mirror_dir_name(repo)).string();
}

} // namespace

// -- references and manifests -----------------------------------------------

caf::expected<reference> parse_reference(const std::string& text) {
  reference r;
  auto slash = text.find('/');
  r.task = text.substr(0, slash);
  if (auto err = validate_task_id(r.task))
    return make_error(ec::invalid_argument,
                      "invalid checkpoint reference '" + text
                          + "': expected TASK-ID or TASK-ID/N");
  if (slash != std::string::npos) {
    auto num = text.substr(slash + 1);
    if (num.empty() || num.size() > 18
        || !std::all_of(num.begin(), num.end(),
                        [](char c) { return c >= '0' && c <= '9'; })
        || std::stoull(num) == 0)
      return make_error(ec::invalid_argument,
                        "invalid checkpoint reference '" + text
                            + "': N must be a checkpoint number (1, 2, …)");
    r.n = std::stoull(num);
  }
  return r;
}

std::string manifest_key(const std::string& task, uint64_t n) {
  return "tasks/" + task + "/checkpoints/" + std::to_string(n) + ".json";
}

std::string blob_key(const std::string& sha256) {
  return "cas/" + sha256;
}

caf::expected<manifest> parse_manifest(const std::string& text,
                                       const std::string& key,
                                       const limits& lim) {
  if (text.size() > lim.max_manifest)
    return make_error(ec::checkpoint_limit,
                      "the manifest is " + std::to_string(text.size())
                          + " bytes, over the limit of "
                          + std::to_string(lim.max_manifest)
                          + " (max_manifest)");
  auto j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return corrupt("the manifest is not a JSON object");
  if (!j.contains("format") || j["format"] != format_name)
    return make_error(ec::checkpoint_version,
                      "not a makima checkpoint manifest (format "
                          + (j.contains("format") ? j["format"].dump()
                                                  : std::string{"missing"})
                          + ")");
  if (!j.contains("version") || !j["version"].is_number_integer()
      || j["version"].get<int64_t>() < 1
      || j["version"].get<int64_t>() > format_version)
    return make_error(ec::checkpoint_version,
                      "checkpoint format version "
                          + (j.contains("version") ? j["version"].dump()
                                                   : std::string{"missing"})
                          + " is not supported (this makima reads version "
                          + std::to_string(format_version) + ")");
  manifest m;
  m.text = text;
  if (j.contains("hmac") && j["hmac"].is_object())
    m.signed_ = true;
  if (auto err = check_signature(j, key, "manifest"))
    return err;
  try {
    m.task = j.at("task").get<std::string>();
    m.n = j.at("n").get<uint64_t>();
    if (!j.at("parent").is_null())
      m.parent = j.at("parent").get<uint64_t>();
    m.created_at = j.value("created_at", std::string{});
    m.node = j.value("node", std::string{});
    m.attempt = j.value("attempt", 1u);
    m.state = j.value("state", std::string{});
    m.covers_seq = j.at("covers_seq").get<uint64_t>();
    m.pause_ms = j.value("pause_ms", int64_t{0});
    m.records_digest = j.value("records_digest", std::string{});
    auto& repo = j.at("repo");
    if (!repo.is_null()) {
      m.origin = repo.at("origin").get<std::string>();
      m.base_commit = repo.at("base_commit").get<std::string>();
      m.branch = repo.at("branch").get<std::string>();
      m.branch_head = repo.at("branch_head").get<std::string>();
      m.wip_commit = repo.at("wip_commit").get<std::string>();
    }
    for (auto& b : j.at("blobs")) {
      blob_ref r;
      r.role = b.at("role").get<std::string>();
      r.sha256 = b.at("sha256").get<std::string>();
      r.size = b.at("size").get<uint64_t>();
      r.cf = b.value("cf", std::string{});
      m.blobs.push_back(std::move(r));
    }
  } catch (const json::exception& e) {
    return corrupt(std::string{"the manifest lacks a member or has one of the "
                               "wrong type: "}
                   + e.what());
  }
  if (validate_task_id(m.task) || m.n == 0 || (m.parent && *m.parent >= m.n))
    return corrupt("the manifest names an invalid task id, number or parent");
  if (!m.origin.empty()
      && (!is_hex(m.base_commit, 40) || !is_hex(m.branch_head, 40)
          || !is_hex(m.wip_commit, 40) || m.branch != "makima/" + m.task))
    return corrupt("the manifest's repo member has an invalid commit id or "
                   "branch");
  for (auto& b : m.blobs)
    if (!known_roles().count(b.role) || !is_hex(b.sha256, 64)
        || (b.role == "records-sst" && b.cf != "tasks" && b.cf != "events"
            && b.cf != "output"))
      return corrupt("the manifest names a blob of unknown role '" + b.role
                     + "' or an invalid digest");
  return m;
}

caf::expected<std::vector<uint64_t>> numbers(store::object_store& os,
                                             const std::string& task) {
  auto prefix = "tasks/" + task + "/checkpoints/";
  auto objs = os.list(prefix);
  if (!objs)
    return objs.error();
  return numbers_in(*objs, prefix);
}

caf::expected<manifest> read_manifest(store::object_store& os,
                                      const reference& ref,
                                      const std::string& key,
                                      const limits& lim) {
  auto n = ref.n;
  if (!n) {
    auto all = numbers(os, ref.task);
    if (!all)
      return all.error();
    if (all->empty())
      return make_error(ec::checkpoint_not_found, "task " + ref.task
                                                      + " has no checkpoint in "
                                                      + os.describe());
    n = all->back();
  }
  auto text = os.get(manifest_key(ref.task, *n), lim.max_manifest);
  if (!text) {
    if (code_of(text.error()) == ec::object_not_found)
      return make_error(ec::checkpoint_not_found, "no checkpoint " + ref.task
                                                      + "/" + std::to_string(*n)
                                                      + " in " + os.describe());
    if (code_of(text.error()) == ec::object_store_error) {
      auto h = os.head(manifest_key(ref.task, *n));
      if (h && *h && (*h)->size > lim.max_manifest)
        return make_error(ec::checkpoint_limit,
                          "manifest " + ref.task + "/" + std::to_string(*n)
                              + " is over the limit of "
                              + std::to_string(lim.max_manifest)
                              + " bytes (max_manifest)");
    }
    return text.error();
  }
  auto m = parse_manifest(*text, key, lim);
  if (!m)
    return make_error(code_of(m.error()), "checkpoint " + ref.task + "/"
                                              + std::to_string(*n) + ": "
                                              + describe(m.error()));
  if (m->task != ref.task || m->n != *n)
    return corrupt("checkpoint " + ref.task + "/" + std::to_string(*n)
                   + " names itself " + m->task + "/" + std::to_string(m->n));
  return m;
}

caf::expected<std::vector<manifest>> read_chain(store::object_store& os,
                                                const reference& ref,
                                                const std::string& key,
                                                const limits& lim) {
  std::vector<manifest> chain;
  auto m = read_manifest(os, ref, key, lim);
  if (!m)
    return m.error();
  chain.push_back(std::move(*m));
  while (chain.back().parent) {
    if (chain.size() >= lim.max_chain)
      return make_error(ec::checkpoint_limit,
                        "the chain of checkpoint " + ref.task
                            + " is longer than " + std::to_string(lim.max_chain)
                            + " (max_chain)");
    auto p = read_manifest(os, {ref.task, chain.back().parent}, key, lim);
    if (!p) {
      if (code_of(p.error()) == ec::checkpoint_not_found)
        return corrupt("checkpoint " + ref.task + "/"
                       + std::to_string(chain.back().n) + " builds on "
                       + std::to_string(*chain.back().parent)
                       + ", which is missing from the store");
      return p.error();
    }
    chain.push_back(std::move(*p));
  }
  std::reverse(chain.begin(), chain.end());
  return chain;
}

std::string manifest_json(const manifest& m) {
  auto j = json::parse(m.text, nullptr, false);
  if (j.is_discarded())
    return m.text;
  return j.dump(2);
}

// -- take -------------------------------------------------------------------

caf::expected<taken> take(store::db& db, const task_record& rec,
                          store::object_store& os, const settings& s,
                          const pause_hooks& pause,
                          std::optional<uint64_t> parent_at_most) {
  auto t0 = std::chrono::steady_clock::now();
  const auto& id = rec.spec.id;
  taken t;
  // The parent: the latest checkpoint, when it can be read.
  auto all = numbers(os, id);
  if (!all)
    return all.error();
  std::vector<manifest> chain;
  std::optional<uint64_t> base;
  for (auto i = all->rbegin(); i != all->rend() && !base; ++i)
    if (!parent_at_most || *i <= *parent_at_most)
      base = *i;
  if (base) {
    auto c = read_chain(os, {id, *base}, s.key, s.limits);
    if (c && c->size() < s.full_every)
      chain = std::move(*c);
    else if (!c)
      log::warn("checkpoint", "task " + id + ": the latest checkpoint "
                                  + std::to_string(*base)
                                  + " cannot be read (" + describe(c.error())
                                  + "); taking a full checkpoint");
  }
  const manifest* parent = chain.empty() ? nullptr : &chain.back();
  std::set<std::string> chain_blobs;
  for (auto& m : chain)
    for (auto& b : m.blobs)
      chain_blobs.insert(b.sha256);
  manifest m;
  m.task = id;
  m.n = all->empty() ? 1 : all->back() + 1;
  if (parent)
    m.parent = parent->n;
  m.created_at = format_time(now_ms());
  m.node = s.node;
  m.attempt = rec.attempt;
  m.state = to_string(rec.state);
  auto staged = make_staging(s, "take", id);
  if (!staged)
    return staged.error();
  staging_dir staging{*staged};
  std::map<std::string, fs::path> files; // digest -> staging file
  // The previous state index, reused when it is the parent's.
  auto cache_dir = s.work_dir / "cache" / id;
  std::optional<fs::path> previous_index;
  if (parent) {
    if (auto* pi = find_role(*parent, "state-index")) {
      auto f = cache_dir / ("state-index." + pi->sha256);
      std::error_code fec;
      if (fs::exists(f, fec))
        previous_index = f;
    }
  }
  std::optional<git::mirror> mirror;
  if (!rec.spec.repo.empty()) {
    auto mp = git::mirror::open_path(mirror_path_of(s, rec.spec.repo));
    if (!mp)
      return mp.error();
    mirror.emplace(std::move(*mp));
    std::error_code fec;
    if (rec.worktree.empty() || !fs::exists(rec.worktree, fec))
      return make_error(ec::worktree_missing,
                        "task " + id + " has no worktree to checkpoint"
                            + (rec.worktree.empty()
                                   ? std::string{}
                                   : " (" + rec.worktree + " is gone)"));
  }
  // -- pre-copy, while the task runs: the objects of what changed ----------
  // Like a live migration's pre-copy: a first snapshot writes the blobs of
  // every new or modified file while the task goes on; the one during the
  // pause then only hashes files (it writes no object the mirror has), so
  // the pause is as short as the changes made in between allow. Its result
  // is overwritten; a failure here shows up again below.
  if (mirror) {
    git::signature sig;
    sig.time = 0;
    (void)mirror->snapshot(rec.worktree, "refs/wip/" + id, "makima wip " + id,
                           sig);
  }
  // The state dir likewise: its large files are chunked now, and the
  // capture during the pause reuses those chunks for files unchanged since.
  auto state_path =
      rec.state_dir.empty() ? s.state_root / id : fs::path{rec.state_dir};
  std::map<std::string, fs::path> precopied;
  if (auto pre = archive::capture(state_path, staging.path / "state-pre",
                                  s.limits.state, previous_index)) {
    for (auto& ch : pre->chunks)
      if (ch.staged)
        precopied[ch.sha256] = ch.file;
    previous_index = pre->index.file;
  }
  // -- the consistent point: the task's processes are stopped -------------
  std::optional<archive::captured> state;
  std::optional<archive::captured> scratch;
  caf::error failed;
  {
    auto p0 = std::chrono::steady_clock::now();
    if (pause.stop)
      pause.stop();
    auto seq = db.last_output_seq(id);
    if (!seq)
      failed = seq.error();
    else
      m.covers_seq = *seq ? **seq + 1 : 0;
    auto seq_ms = elapsed_ms(p0);
    if (!failed && mirror) {
      git::signature sig;
      sig.time = 0;
      auto wip = mirror->snapshot(rec.worktree, "refs/wip/" + id,
                                  "makima wip " + id, sig);
      if (!wip)
        failed = wip.error();
      else
        m.wip_commit = *wip;
    }
    auto wip_ms = elapsed_ms(p0);
    if (!failed) {
      auto c = archive::capture(state_path, staging.path / "state",
                                s.limits.state, previous_index);
      if (!c)
        failed = c.error();
      else
        state = std::move(*c);
    }
    if (!failed && !mirror) {
      auto c = archive::capture(rec.worktree.empty() ? s.worktrees_dir / id
                                                     : fs::path{rec.worktree},
                                staging.path / "scratch", s.limits.state, {});
      if (!c)
        failed = c.error();
      else
        scratch = std::move(*c);
    }
    if (pause.resume)
      pause.resume();
    t.pause_ms = elapsed_ms(p0);
    log::debug("checkpoint",
               "task " + id + ": capture took " + std::to_string(t.pause_ms)
                   + " ms (seq " + std::to_string(seq_ms) + ", wip commit "
                   + std::to_string(wip_ms - seq_ms) + ", state dir "
                   + std::to_string(t.pause_ms - wip_ms) + ")");
    m.pause_ms = t.pause_ms;
  }
  if (failed)
    return failed;
  // -- the worktree: branch head and a pack of what the chain lacks --------
  if (mirror) {
    m.origin = log::redact(rec.spec.repo);
    m.base_commit = rec.base_commit;
    m.branch = rec.branch.empty() ? "makima/" + id : rec.branch;
    auto head = mirror->resolve("refs/heads/" + m.branch);
    if (!head)
      return head.error();
    m.branch_head = *head;
    if (!parent || parent->wip_commit != m.wip_commit) {
      std::vector<std::string> hide{m.base_commit};
      for (auto& c : chain) {
        hide.push_back(c.wip_commit);
        hide.push_back(c.branch_head);
      }
      auto pack_file = staging.path / "wip.pack";
      auto pack = mirror->write_pack({m.wip_commit}, hide, pack_file,
                                     s.limits.max_pack);
      if (!pack)
        return pack.error();
      if (pack->objects > 0) {
        auto sha = store::sha256_file(pack_file);
        if (!sha)
          return sha.error();
        m.blobs.push_back({"git-pack", *sha, pack->size, {}});
        files[*sha] = pack_file;
      }
    }
  }
  add_captured(m, "state", *state, chain_blobs, files, precopied);
  if (scratch)
    add_captured(m, "scratch", *scratch, chain_blobs, files);
  // -- records: what changed since the parent -------------------------------
  auto record = db.get_task(id);
  if (!record)
    return record.error();
  if (!*record)
    return make_error(ec::task_not_found, "no task " + id);
  auto digest = records_digest(db, id, **record);
  if (!digest)
    return digest.error();
  m.records_digest = *digest;
  uint64_t from = parent ? parent->covers_seq : 0;
  bool records_changed = !parent || parent->records_digest != m.records_digest;
  if (records_changed || m.covers_seq > from) {
    auto ssts =
        db.export_task(id, from, m.covers_seq, staging.path / "records");
    if (!ssts)
      return ssts.error();
    for (auto& f : *ssts) {
      if (f.family != "output" && !records_changed)
        continue;
      auto sha = store::sha256_file(f.path);
      if (!sha)
        return sha.error();
      std::error_code fec;
      auto named = staging.path / ("records-" + *sha);
      fs::rename(f.path, named, fec);
      if (fec)
        return make_error(ec::io_error, "cannot stage " + f.path.string() + ": "
                                            + fec.message());
      m.blobs.push_back({"records-sst", *sha,
                         static_cast<uint64_t>(fs::file_size(named)),
                         f.family});
      files[*sha] = named;
    }
  }
  // -- nothing changed: the latest checkpoint still holds ------------------
  if (s.skip_unchanged && parent && parent->wip_commit == m.wip_commit
      && parent->records_digest == m.records_digest
      && parent->covers_seq == m.covers_seq) {
    auto same_role = [&](const std::string& role) {
      auto* a = find_role(*parent, role);
      auto* b = find_role(m, role);
      return (a == nullptr) == (b == nullptr) && (!a || a->sha256 == b->sha256);
    };
    if (same_role("state-index") && same_role("state-archive")
        && same_role("scratch-index") && same_role("scratch-archive")) {
      t.m = *parent;
      t.skipped = true;
      t.total_ms = elapsed_ms(t0);
      return t;
    }
  }
  // -- upload: blobs first, the manifest last --------------------------------
  for (auto& b : m.blobs) {
    auto it = files.find(b.sha256);
    if (it == files.end())
      continue;
    std::error_code fec;
    if (it->second.empty() || !fs::exists(it->second, fec)) {
      // A chunk the previous index named: the store must have it.
      auto h = os.head(blob_key(b.sha256));
      if (!h)
        return h.error();
      if (!*h)
        return corrupt("state chunk " + b.sha256
                       + " is neither staged nor in the store");
      continue;
    }
    if (auto err = upload(os, b, it->second, t))
      return err;
  }
  auto body = to_value(m);
  sign(body, s.key);
  m.signed_ = !s.key.empty();
  m.text = body.dump();
  if (auto err = os.put(manifest_key(id, m.n), m.text))
    return err;
  ++t.blobs_uploaded;
  t.bytes_uploaded += m.text.size();
  // Keep this state index for the next checkpoint's reuse.
  {
    std::error_code fec;
    fs::remove_all(cache_dir, fec);
    fs::create_directories(cache_dir, fec);
    if (!fec)
      fs::copy_file(state->index.file,
                    cache_dir / ("state-index." + state->index.sha256), fec);
  }
  t.m = std::move(m);
  t.total_ms = elapsed_ms(t0);
  return t;
}

// -- restore ----------------------------------------------------------------

namespace {

// What restore(replace) removes once the checkpoint was verified: every
// trace of task m.task in this data dir (records, worktree and its branch
// in the mirror, state dir).
caf::error remove_local_task(store::db& db, const settings& s,
                             const manifest& m, const fs::path& wt_dir,
                             const fs::path& state_dir) {
  std::error_code fec;
  if (!m.origin.empty()
      && fs::exists(s.repos_dir / git::mirror_dir_name(m.origin), fec)) {
    auto mo = git::mirror::open(m.origin, s.repos_dir, false);
    if (mo) {
      if (auto err = mo->remove_worktree(m.task, m.branch))
        log::warn("checkpoint", "task " + m.task
                                    + ": removing its old worktree: "
                                    + describe(err));
    }
  }
  for (auto& dir : {wt_dir, state_dir}) {
    fs::remove_all(dir, fec);
    if (fec)
      return make_error(ec::io_error, "cannot remove " + dir.string()
                                          + " to restore task " + m.task
                                          + ": " + fec.message());
  }
  store::write_batch del;
  del.delete_task(m.task);
  return db.write(std::move(del));
}

} // namespace

caf::expected<restored> restore(store::db& db, store::object_store& os,
                                const reference& ref, const settings& s,
                                bool replace) {
  auto t0 = std::chrono::steady_clock::now();
  restored r;
  auto chain = read_chain(os, ref, s.key, s.limits);
  if (!chain)
    return chain.error();
  auto& m = chain->back();
  const auto& id = m.task;
  auto existing = db.get_task(id);
  if (!existing)
    return existing.error();
  if (*existing && !replace)
    return make_error(ec::task_exists,
                      "task " + id
                          + " already exists in this data dir; remove it "
                            "first (makima task rm "
                          + id + ")");
  auto wt_dir = s.worktrees_dir / id;
  auto state_dir = s.state_root / id;
  for (auto& dir : {wt_dir, state_dir}) {
    std::error_code fec;
    if (!replace && fs::exists(dir, fec)) {
      if (fs::is_directory(dir, fec) && fs::is_empty(dir, fec))
        fs::remove(dir, fec);
      else
        return make_error(ec::io_error,
                          dir.string()
                              + " exists and no task of this data dir owns "
                                "it; move it away to restore task "
                              + id);
    }
  }
  if (auto err = check_sizes(*chain, s.limits))
    return err;
  auto staged = make_staging(s, "restore", id);
  if (!staged)
    return staged.error();
  staging_dir staging{*staged};
  auto blobs = staging.path / "blobs";
  fs::create_directories(blobs);
  auto bytes = fetch_chain(os, *chain, blobs);
  if (!bytes)
    return bytes.error();
  r.bytes_downloaded = *bytes;
  auto fetched_ms = elapsed_ms(t0);
  // The state dir (and a scratch worktree) into staging: every archive
  // check happens before anything becomes visible.
  if (auto err = restore_dir(m, "state", blobs, staging.path / "state",
                             s.limits.state))
    return err;
  bool scratch = m.origin.empty();
  if (scratch)
    if (auto err = restore_dir(m, "scratch", blobs, staging.path / "scratch",
                               s.limits.state))
      return err;
  if (replace)
    if (auto err = remove_local_task(db, s, m, wt_dir, state_dir))
      return err;
  // The records into a second staging check: parse them before ingest.
  std::vector<store::sst_file> ssts;
  for (auto& c : *chain)
    for (auto& b : c.blobs)
      if (b.role == "records-sst")
        ssts.push_back({b.cf, blobs / b.sha256, 0});
  // The worktree: mirror (cold or warm), packs, then the checkout.
  std::optional<git::mirror> mirror;
  if (!scratch) {
    std::error_code fec;
    r.cloned = !fs::exists(s.repos_dir / git::mirror_dir_name(m.origin), fec);
    // A cold node seeds the new mirror from the store's mirror packs when
    // it can, and fetches only the difference from origin; a seed that
    // cannot be read or used costs only the clone it would have saved.
    std::optional<fetched_seed> seed;
    if (r.cloned && !git::mirror::is_local(m.origin)) {
      auto f = fetch_seed(os, m.origin, s, staging.path / "mirror",
                          r.bytes_downloaded);
      if (!f)
        log::warn("checkpoint", "task " + id + ": the store's mirror packs of "
                                    + log::redact(m.origin)
                                    + " cannot be read (" + describe(f.error())
                                    + "); cloning from origin");
      else
        seed = std::move(*f);
    }
    git::seed_report rep;
    auto mo = git::mirror::open(m.origin, s.repos_dir, false, {},
                                seed ? &seed->seed : nullptr, &rep);
    if (!mo)
      return mo.error();
    mirror.emplace(std::move(*mo));
    if (!rep.refused.empty())
      log::warn("checkpoint", "task " + id + ": mirror packs "
                                  + std::to_string(seed->m.n) + " of "
                                  + log::redact(m.origin)
                                  + " were not used (" + rep.refused
                                  + "); cloned from origin");
    if (rep.used) {
      r.seeded = true;
      r.seed_n = seed->m.n;
      r.seed_objects = rep.objects;
      r.fetched_objects = rep.fetched_objects;
      r.offline = rep.offline;
      if (rep.offline)
        log::warn("checkpoint",
                  "task " + id + ": origin " + log::redact(m.origin)
                      + " is unreachable (" + rep.fetch_error
                      + "); the mirror holds what mirror packs "
                      + std::to_string(seed->m.n)
                      + " hold, a later fetch brings the rest");
    }
    if (!mirror->has_object(m.base_commit)) {
      if (auto err = mirror->fetch())
        return err;
      if (!mirror->has_object(m.base_commit))
        return make_error(ec::ref_not_found, "the checkpoint's base commit "
                                                 + m.base_commit + " is not in "
                                                 + log::redact(m.origin));
    }
    for (auto& c : *chain)
      for (auto& b : c.blobs)
        if (b.role == "git-pack")
          if (auto err = mirror->index_pack(blobs / b.sha256))
            return err;
    for (auto* c : {&m.branch_head, &m.wip_commit})
      if (!mirror->has_object(*c))
        return corrupt("the checkpoint's packs do not hold commit " + *c);
  }
  auto mirror_ms = elapsed_ms(t0);
  // From here on, undo what was made when a later step fails.
  bool worktree_made = false;
  auto undo = [&] {
    std::error_code fec;
    if (worktree_made && mirror)
      mirror->remove_worktree(id, m.branch);
    else if (scratch)
      fs::remove_all(wt_dir, fec);
    fs::remove_all(state_dir, fec);
  };
  if (mirror) {
    auto wt = mirror->restore_worktree(id, wt_dir, m.branch, m.branch_head,
                                       m.wip_commit);
    if (!wt)
      return wt.error();
    worktree_made = true;
  } else {
    std::error_code fec;
    fs::create_directories(wt_dir.parent_path(), fec);
    fs::rename(staging.path / "scratch", wt_dir, fec);
    if (fec)
      return make_error(ec::io_error, "cannot move the restored scratch dir "
                                      "to "
                                          + wt_dir.string() + ": "
                                          + fec.message());
  }
  {
    std::error_code fec;
    fs::create_directories(state_dir.parent_path(), fec);
    fs::rename(staging.path / "state", state_dir, fec);
    if (fec) {
      undo();
      return make_error(ec::io_error, "cannot move the restored state dir to "
                                          + state_dir.string() + ": "
                                          + fec.message());
    }
  }
  auto worktree_ms = elapsed_ms(t0);
  if (auto err = db.ingest(ssts)) {
    undo();
    return err;
  }
  auto fail_records = [&](caf::error err) -> caf::error {
    store::write_batch del;
    del.delete_task(id);
    db.write(std::move(del));
    undo();
    return err;
  };
  auto text = db.get_task(id);
  if (!text)
    return fail_records(text.error());
  if (!*text)
    return fail_records(
        corrupt("the checkpoint's records hold no task record"));
  auto rec = record_from_json(**text);
  if (!rec)
    return fail_records(corrupt("the checkpoint's task record is malformed"));
  auto last_event = db.last_event(id);
  if (!last_event)
    return fail_records(last_event.error());
  rec->worktree = wt_dir.string();
  rec->state_dir = state_dir.string();
  rec->attempt = m.attempt;
  // Whatever it was (running when the node died, or finished), the task
  // is now interrupted: `task resume` runs its next attempt here.
  rec->state = task_state::interrupted;
  rec->updated_at = now_ms();
  if (!m.origin.empty()) {
    rec->branch = m.branch;
    rec->base_commit = m.base_commit;
  }
  store::write_batch b;
  put_record(b, *rec, *last_event ? **last_event + 1 : 0,
             "restored from checkpoint " + id + "/" + std::to_string(m.n)
                 + (m.node.empty() ? "" : " of " + m.node));
  if (auto err = db.write(std::move(b)))
    return fail_records(err);
  r.rec = std::move(*rec);
  r.m = m;
  r.total_ms = elapsed_ms(t0);
  log::debug("checkpoint",
             "task " + id + ": restored in " + std::to_string(r.total_ms)
                 + " ms (manifests and blobs " + std::to_string(fetched_ms)
                 + ", state dir and mirror "
                 + std::to_string(mirror_ms - fetched_ms) + ", worktree "
                 + std::to_string(worktree_ms - mirror_ms) + ", records "
                 + std::to_string(r.total_ms - worktree_ms) + ")");
  return r;
}

// -- verify and gc ----------------------------------------------------------

caf::expected<verified> verify(store::object_store& os, const reference& ref,
                               const settings& s) {
  verified v;
  auto chain = read_chain(os, ref, s.key, s.limits);
  if (!chain)
    return chain.error();
  if (auto err = check_sizes(*chain, s.limits))
    return err;
  auto staged = make_staging(s, "verify", ref.task);
  if (!staged)
    return staged.error();
  staging_dir staging{*staged};
  std::set<std::string> seen;
  for (auto& m : *chain)
    for (auto& b : m.blobs) {
      if (!seen.insert(b.sha256).second)
        continue;
      uint64_t bytes = 0;
      if (auto err = fetch_blob(os, b, staging.path, bytes))
        return err;
      std::error_code fec;
      fs::remove(staging.path / b.sha256, fec);
      ++v.blobs;
      v.bytes += bytes;
    }
  v.chain = std::move(*chain);
  return v;
}

caf::expected<collected> gc(store::object_store& os, uint64_t keep,
                            const settings& s, int64_t now, int64_t grace_s) {
  collected c;
  auto objs = os.list("tasks/");
  if (!objs)
    return objs.error();
  std::map<std::string, std::vector<uint64_t>> tasks;
  for (auto& o : *objs) {
    auto rest = o.key.substr(6);
    auto slash = rest.find('/');
    if (slash == std::string::npos)
      continue;
    tasks.emplace(rest.substr(0, slash), std::vector<uint64_t>{});
  }
  std::set<std::string> live;
  std::vector<std::string> doomed;
  for (auto& [task, ns] : tasks) {
    auto all = numbers(os, task);
    if (!all)
      return all.error();
    std::set<uint64_t> kept;
    size_t first = all->size() > keep ? all->size() - keep : 0;
    for (size_t i = first; i < all->size(); ++i) {
      if (kept.count((*all)[i]))
        continue;
      auto chain = read_chain(os, {task, (*all)[i]}, s.key, s.limits);
      if (!chain)
        return make_error(code_of(chain.error()),
                          "gc stopped before deleting anything: "
                              + describe(chain.error()));
      for (auto& m : *chain) {
        kept.insert(m.n);
        for (auto& b : m.blobs)
          live.insert(b.sha256);
      }
    }
    for (auto n : *all) {
      if (kept.count(n))
        ++c.manifests_kept;
      else
        doomed.push_back(manifest_key(task, n));
    }
  }
  // Mirror manifests: each names every pack it needs, so the newest two
  // that read and check are kept (a restore may be reading the older one
  // while the newer one is written); refused ones are of no use.
  auto mirrors = os.list("mirrors/");
  if (!mirrors)
    return mirrors.error();
  std::map<std::string, std::vector<store::object_info>> by_mirror;
  for (auto& o : *mirrors) {
    auto slash = o.key.find('/', 8);
    if (slash != std::string::npos)
      by_mirror[o.key.substr(0, slash + 1)].push_back(o);
  }
  for (auto& [prefix, objs] : by_mirror) {
    auto ns = numbers_in(objs, prefix);
    size_t valid = 0;
    for (auto it = ns.rbegin(); it != ns.rend(); ++it) {
      auto key = prefix + std::to_string(*it) + ".json";
      if (valid < 2) {
        auto text = os.get(key, s.limits.max_manifest);
        if (!text && code_of(text.error()) != ec::object_not_found)
          return make_error(code_of(text.error()),
                            "gc stopped before deleting anything: "
                                + describe(text.error()));
        if (text) {
          auto m = parse_mirror_manifest(*text, s.key, s.limits);
          if (m) {
            ++valid;
            ++c.manifests_kept;
            for (auto& mp : m->packs) {
              live.insert(mp.pack.sha256);
              if (mp.idx)
                live.insert(mp.idx->sha256);
            }
            continue;
          }
        }
      }
      doomed.push_back(key);
    }
  }
  for (auto& key : doomed) {
    if (auto err = os.remove(key))
      return err;
    ++c.manifests_deleted;
  }
  auto blobs = os.list("cas/");
  if (!blobs)
    return blobs.error();
  for (auto& o : *blobs) {
    auto sha = o.key.substr(4);
    if (live.count(sha) || o.modified > now - grace_s) {
      ++c.blobs_kept;
      continue;
    }
    if (auto err = os.remove(o.key))
      return err;
    ++c.blobs_deleted;
    c.bytes_deleted += o.size;
  }
  return c;
}

} // namespace makima::checkpoint
