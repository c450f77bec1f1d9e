// Helpers of actors/checkpoint.cpp that actors/mirror_packs.cpp shares: not
// part of the checkpoint interface (actors/checkpoint.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <nlohmann/json.hpp>

#include "actors/checkpoint.hpp"
#include "runtime/git/git.hpp"

namespace makima::checkpoint::detail {

int64_t elapsed_ms(std::chrono::steady_clock::time_point since);

std::string random_suffix();

/// A directory removed (with everything in it) when the scope ends.
struct staging_dir {
  std::filesystem::path path;
  explicit staging_dir(std::filesystem::path p) : path(std::move(p)) {}
  staging_dir(const staging_dir&) = delete;
  staging_dir& operator=(const staging_dir&) = delete;
  ~staging_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// A new staging dir `DATA/checkpoints/.<what>-<id>-<random>`.
caf::expected<std::filesystem::path>
make_staging(const settings& s, const char* what, const std::string& id);

std::string hmac_hex(const std::string& key, const std::string& text);

bool is_hex(const std::string& s, size_t len);

/// ec::checkpoint_corrupt with `what`.
caf::error corrupt(const std::string& what);

/// Checks the `hmac` member of the document `j` (a manifest, named `what`
/// in errors) when `key` is set: ec::checkpoint_unsigned,
/// ec::checkpoint_bad_signature.
caf::error check_signature(const nlohmann::json& j, const std::string& key,
                           const char* what);

/// Adds the `hmac` member to `body` when `key` is set.
void sign(nlohmann::json& body, const std::string& key);

/// The numbers N of the keys `<prefix>N.json` among `objs`, ascending.
std::vector<uint64_t> numbers_in(const std::vector<store::object_info>& objs,
                                 const std::string& prefix);

/// Uploads `file` as blob `sha256` unless the store has it with `size`
/// bytes; true when it was uploaded.
caf::expected<bool> put_blob(store::object_store& os, const std::string& sha256,
                             uint64_t size, const std::filesystem::path& file);

/// Downloads blob `b` into `dir/<sha256>` (unless there) and checks its
/// digest and size (ec::checkpoint_corrupt); adds its size to `bytes`.
caf::error fetch_blob(store::object_store& os, const blob_ref& b,
                      const std::filesystem::path& dir, uint64_t& bytes);

/// A seed for a new mirror of `origin`: the newest mirror manifest of the
/// store, its packs downloaded into `dir` and checked (SHA-256, size).
/// nullopt: the store has none. Errors: a damaged pack
/// (ec::checkpoint_corrupt), the store's.
struct fetched_seed {
  git::seed seed;
  mirror_manifest m;
};
caf::expected<std::optional<fetched_seed>>
fetch_seed(store::object_store& os, const std::string& origin,
           const settings& s, const std::filesystem::path& dir,
           uint64_t& bytes);

} // namespace makima::checkpoint::detail
