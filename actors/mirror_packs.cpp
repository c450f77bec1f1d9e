// Mirror packs: the origin's objects kept in the checkpoint store, from
// which a cold node seeds a new mirror (actors/checkpoint.hpp, "mirror
// packs"; docs/checkpoint-format.md).
//
// Store layout, beside the checkpoints:
//   mirrors/<mirror dir>/<n>.json   a mirror manifest (self-contained)
//   cas/<sha256>                    its packs, content-addressed like blobs
// Every pack is self-contained (no delta names an object outside it), and
// a manifest's packs together hold every object reachable from its refs:
// the first pack is what a clone from origin received (closed under
// reachability, since the clone had nothing), each later one what
// write_pack found reachable from the new branch tips and not from the
// previous manifest's refs.
#include <algorithm>
#include <chrono>
#include <system_error>

#include <nlohmann/json.hpp>

#include "actors/checkpoint.hpp"
#include "actors/checkpoint_detail.hpp"
#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace makima::checkpoint {

using namespace detail;

namespace {

// The origin as the store knows it: canonical, without credentials (as in
// checkpoint manifests).
std::string store_origin(const std::string& origin) {
  return log::redact(git::canonical_url(origin));
}

std::string mirror_prefix(const std::string& origin) {
  return "mirrors/" + git::mirror_dir_name(store_origin(origin)) + "/";
}

bool is_branch_ref(const std::string& name) {
  static constexpr std::string_view prefix = "refs/remotes/origin/";
  return name.size() > prefix.size()
         && name.compare(0, prefix.size(), prefix) == 0
         && name != "refs/remotes/origin/HEAD"
         && name.find("..") == std::string::npos;
}

// The numbers of `origin`'s mirror manifests, ascending.
caf::expected<std::vector<uint64_t>> mirror_numbers(store::object_store& os,
                                                    const std::string& origin) {
  auto prefix = mirror_prefix(origin);
  auto objs = os.list(prefix);
  if (!objs)
    return objs.error();
  return numbers_in(*objs, prefix);
}

std::vector<std::string>
commits_of(const std::vector<std::pair<std::string, std::string>>& refs) {
  std::vector<std::string> out;
  for (auto& [name, id] : refs)
    out.push_back(id);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

} // namespace

std::string mirror_manifest_key(const std::string& origin, uint64_t n) {
  return mirror_prefix(origin) + std::to_string(n) + ".json";
}

caf::expected<mirror_manifest> parse_mirror_manifest(const std::string& text,
                                                     const std::string& key,
                                                     const limits& lim) {
  if (text.size() > lim.max_manifest)
    return make_error(ec::checkpoint_limit,
                      "the mirror manifest is " + std::to_string(text.size())
                          + " bytes, over the limit of "
                          + std::to_string(lim.max_manifest)
                          + " (max_manifest)");
  auto j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return corrupt("the mirror manifest is not a JSON object");
  if (!j.contains("format") || j["format"] != mirror_format_name)
    return make_error(ec::checkpoint_version,
                      "not a makima mirror manifest (format "
                          + (j.contains("format") ? j["format"].dump()
                                                  : std::string{"missing"})
                          + ")");
  if (!j.contains("version") || !j["version"].is_number_integer()
      || j["version"].get<int64_t>() < 1
      || j["version"].get<int64_t>() > mirror_format_version)
    return make_error(ec::checkpoint_version,
                      "mirror manifest version "
                          + (j.contains("version") ? j["version"].dump()
                                                   : std::string{"missing"})
                          + " is not supported (this makima reads version "
                          + std::to_string(mirror_format_version) + ")");
  mirror_manifest m;
  m.text = text;
  m.signed_ = j.contains("hmac") && j["hmac"].is_object();
  if (auto err = check_signature(j, key, "mirror manifest"))
    return err;
  try {
    m.origin = j.at("origin").get<std::string>();
    m.n = j.at("n").get<uint64_t>();
    m.created_at = j.value("created_at", std::string{});
    m.created = j.at("created").get<int64_t>();
    m.node = j.value("node", std::string{});
    m.head = j.value("head", std::string{});
    for (auto& [name, id] : j.at("refs").items())
      m.refs.emplace_back(name, id.get<std::string>());
    for (auto& b : j.at("packs")) {
      mirror_pack mp;
      mp.pack.role = "mirror-pack";
      mp.pack.sha256 = b.at("sha256").get<std::string>();
      mp.pack.size = b.at("size").get<uint64_t>();
      if (b.contains("idx")) {
        blob_ref r;
        r.role = "mirror-index";
        r.sha256 = b["idx"].at("sha256").get<std::string>();
        r.size = b["idx"].at("size").get<uint64_t>();
        mp.idx = std::move(r);
      }
      m.packs.push_back(std::move(mp));
    }
  } catch (const json::exception& e) {
    return corrupt(std::string{"the mirror manifest lacks a member or has one "
                               "of the wrong type: "}
                   + e.what());
  }
  std::sort(m.refs.begin(), m.refs.end());
  if (m.packs.size() > 1000 || m.refs.size() > 100'000)
    return make_error(ec::checkpoint_limit,
                      "the mirror manifest names more than 1000 packs or "
                      "100000 refs");
  if (m.n == 0 || m.origin.empty() || m.packs.empty())
    return corrupt("the mirror manifest names no origin, number or pack");
  for (auto& [name, id] : m.refs)
    if (!is_branch_ref(name) || !is_hex(id, 40))
      return corrupt("the mirror manifest names an invalid ref '" + name
                     + "' or commit id");
  if (!m.head.empty() && !is_branch_ref(m.head))
    return corrupt("the mirror manifest's head is not an origin branch");
  for (auto& mp : m.packs) {
    if (!is_hex(mp.pack.sha256, 64) || (mp.idx && !is_hex(mp.idx->sha256, 64)))
      return corrupt("the mirror manifest names a pack with an invalid "
                     "digest");
    auto& b = mp.pack;
    if (b.size > lim.max_pack || (mp.idx && mp.idx->size > lim.max_pack))
      return make_error(ec::checkpoint_limit,
                        "the mirror manifest names a pack of "
                            + std::to_string(b.size)
                            + " bytes, over the limit of "
                            + std::to_string(lim.max_pack) + " (max_pack)");
  }
  return m;
}

caf::expected<std::optional<mirror_manifest>>
latest_mirror_manifest(store::object_store& os, const std::string& origin,
                       const std::string& key, const limits& lim) {
  auto ns = mirror_numbers(os, origin);
  if (!ns)
    return ns.error();
  auto canon = store_origin(origin);
  for (auto it = ns->rbegin(); it != ns->rend(); ++it) {
    auto k = mirror_manifest_key(origin, *it);
    auto text = os.get(k, lim.max_manifest);
    if (!text) {
      if (code_of(text.error()) == ec::object_not_found)
        continue; // deleted meanwhile (gc)
      return text.error();
    }
    auto m = parse_mirror_manifest(*text, key, lim);
    if (!m || m->n != *it || m->origin != canon) {
      log::warn("checkpoint",
                "mirror manifest " + k + " is not used: "
                    + (m ? std::string{"it names another origin or number"}
                         : describe(m.error())));
      continue;
    }
    return std::optional<mirror_manifest>{std::move(*m)};
  }
  return std::optional<mirror_manifest>{};
}

caf::expected<published> publish_mirror(store::object_store& os,
                                        const std::string& origin,
                                        const settings& s,
                                        int64_t min_interval_s, int64_t now,
                                        size_t max_packs) {
  auto t0 = std::chrono::steady_clock::now();
  published out;
  auto skip = [&](std::string why) {
    out.skipped = true;
    out.why = std::move(why);
    out.total_ms = elapsed_ms(t0);
    return out;
  };
  if (git::mirror::is_local(origin))
    return skip("a local origin");
  auto canon = store_origin(origin);
  auto path = s.repos_dir / git::mirror_dir_name(origin);
  std::error_code fec;
  if (!fs::exists(path, fec))
    return skip("no mirror");
  auto mo = git::mirror::open_path(path);
  if (!mo)
    return mo.error();
  auto& mirror = *mo;
  auto branches = mirror.origin_branches();
  if (branches.empty())
    return skip("no origin branches");
  auto ns = mirror_numbers(os, canon);
  if (!ns)
    return ns.error();
  auto latest = latest_mirror_manifest(os, canon, s.key, s.limits);
  if (!latest)
    return latest.error();
  if (*latest) {
    out.n = (*latest)->n;
    out.packs = (*latest)->packs.size();
    if (now - (*latest)->created < min_interval_s)
      return skip("recent");
    if ((*latest)->refs == branches)
      return skip("unchanged");
  }
  auto staged = make_staging(s, "mirror", "packs");
  if (!staged)
    return staged.error();
  staging_dir staging{*staged};
  // (file, sha256, size) of every pack of the new manifest, in order; the
  // file is empty for a pack the store has (named by the latest manifest).
  struct pack_entry {
    fs::path file;
    std::string sha256;
    uint64_t size = 0;
  };
  struct entry {
    pack_entry pack;
    std::optional<pack_entry> idx;
  };
  std::vector<entry> packs;
  auto measure = [&](const fs::path& file) -> caf::expected<pack_entry> {
    auto size = fs::file_size(file, fec);
    if (fec)
      return make_error(ec::io_error,
                        "cannot read " + file.string() + ": " + fec.message());
    if (size > s.limits.max_pack)
      return make_error(ec::checkpoint_limit,
                        "the mirror pack " + file.string() + " has "
                            + std::to_string(size)
                            + " bytes, over the limit of "
                            + std::to_string(s.limits.max_pack)
                            + " (max_pack)");
    auto sha = store::sha256_file(file);
    if (!sha)
      return sha.error();
    return pack_entry{file, *sha, size};
  };
  auto add_file = [&](const fs::path& file,
                      const fs::path& idx = {}) -> caf::error {
    auto p = measure(file);
    if (!p)
      return p.error();
    entry e{*p, std::nullopt};
    if (!idx.empty()) {
      auto i = measure(idx);
      if (!i)
        return i.error();
      e.idx = *i;
    }
    packs.push_back(std::move(e));
    return caf::none;
  };
  int written = 0;
  // A pack of what the branches reach beyond `hide` (all when empty).
  auto add_new = [&](const std::vector<std::string>& hide) -> caf::error {
    auto file = staging.path / ("new-" + std::to_string(++written) + ".pack");
    auto info = mirror.write_pack(commits_of(branches), hide, file,
                                  s.limits.max_pack);
    if (!info)
      return info.error();
    if (info->objects == 0)
      return caf::none;
    return add_file(file);
  };
  std::optional<git::clone_record> rec;
  if (!*latest)
    rec = mirror.clone_record();
  if (*latest && (*latest)->packs.size() < max_packs) {
    for (auto& mp : (*latest)->packs) {
      entry e{{{}, mp.pack.sha256, mp.pack.size}, std::nullopt};
      if (mp.idx)
        e.idx = pack_entry{{}, mp.idx->sha256, mp.idx->size};
      packs.push_back(std::move(e));
    }
    if (auto err = add_new(commits_of((*latest)->refs)))
      return err;
  } else if (rec) {
    // The clone's own pack(s) and index(es), as received: nothing to
    // build, nothing for a cold node to index. Checked first: a pack
    // damaged on this disk since the clone is not published.
    for (auto& p : rec->packs) {
      if (auto err = git::verify_pack_checksum(p.pack))
        return err;
      if (auto err = add_file(p.pack, p.idx))
        return err;
    }
    if (rec->refs != branches)
      if (auto err = add_new(commits_of(rec->refs)))
        return err;
  } else {
    if (auto err = add_new({}))
      return err;
  }
  if (packs.empty())
    return skip("no objects");
  for (auto& e : packs)
    for (auto* p : {&e.pack, e.idx ? &*e.idx : nullptr}) {
      if (p == nullptr || p->file.empty())
        continue;
      auto up = put_blob(os, p->sha256, p->size, p->file);
      if (!up)
        return up.error();
      if (*up) {
        out.packs_uploaded += p == &e.pack ? 1 : 0;
        out.bytes_uploaded += p->size;
      }
    }
  json body;
  body["format"] = mirror_format_name;
  body["version"] = mirror_format_version;
  body["origin"] = canon;
  body["n"] = (ns->empty() ? 0 : ns->back()) + 1;
  body["created_at"] = format_time(now * 1000);
  body["created"] = now;
  body["node"] = s.node;
  body["head"] = mirror.origin_head();
  json refs = json::object();
  for (auto& [name, id] : branches)
    refs[name] = id;
  body["refs"] = std::move(refs);
  auto arr = json::array();
  for (auto& e : packs) {
    json one{{"sha256", e.pack.sha256}, {"size", e.pack.size}};
    if (e.idx)
      one["idx"] = {{"sha256", e.idx->sha256}, {"size", e.idx->size}};
    arr.push_back(std::move(one));
  }
  body["packs"] = std::move(arr);
  sign(body, s.key);
  auto text = body.dump();
  out.n = body["n"].get<uint64_t>();
  if (auto err = os.put(mirror_manifest_key(canon, out.n), text))
    return err;
  out.bytes_uploaded += text.size();
  out.packs = packs.size();
  out.total_ms = elapsed_ms(t0);
  return out;
}

caf::expected<std::optional<fetched_seed>>
detail::fetch_seed(store::object_store& os, const std::string& origin,
                   const settings& s, const fs::path& dir, uint64_t& bytes) {
  auto latest = latest_mirror_manifest(os, origin, s.key, s.limits);
  if (!latest)
    return latest.error();
  if (!*latest)
    return std::optional<fetched_seed>{};
  std::error_code fec;
  fs::create_directories(dir, fec);
  if (fec)
    return make_error(ec::io_error,
                      "cannot create " + dir.string() + ": " + fec.message());
  fetched_seed out;
  for (auto& mp : (*latest)->packs) {
    git::seed_pack sp;
    if (auto err = fetch_blob(os, mp.pack, dir, bytes))
      return err;
    sp.pack = dir / mp.pack.sha256;
    if (mp.idx) {
      if (auto err = fetch_blob(os, *mp.idx, dir, bytes))
        return err;
      sp.idx = dir / mp.idx->sha256;
    }
    out.seed.packs.push_back(std::move(sp));
  }
  out.seed.refs = (*latest)->refs;
  out.seed.head = (*latest)->head;
  out.m = std::move(**latest);
  return std::optional<fetched_seed>{std::move(out)};
}

} // namespace makima::checkpoint
