// Task id generation and validation, and time helpers.
#include "runtime/ids.hpp"

#include <chrono>
#include <ctime>
#include <random>

#include "runtime/error.hpp"

namespace makima {

namespace {

constexpr char crockford[] = "0123456789abcdefghjkmnpqrstvwxyz";

} // namespace

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch())
      .count();
}

std::string make_task_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  auto ms = static_cast<uint64_t>(now_ms());
  std::string id(26, '0');
  for (int i = 9; i >= 0; --i) {
    id[static_cast<size_t>(i)] = crockford[ms & 31];
    ms >>= 5;
  }
  auto r1 = rng();
  auto r2 = rng();
  for (int i = 10; i < 26; ++i) {
    auto& r = i < 18 ? r1 : r2;
    id[static_cast<size_t>(i)] = crockford[r & 31];
    r >>= 5;
  }
  return id;
}

caf::error validate_task_id(std::string_view id) {
  auto bad = [&](const char* why) {
    return make_error(ec::invalid_argument,
                      "invalid task id '" + std::string{id} + "': " + why);
  };
  if (id.empty() || id.size() > 64)
    return bad("must be 1 to 64 characters");
  if (id.front() == '.' || id.front() == '-')
    return bad("must not start with '.' or '-'");
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok)
      return bad("only letters, digits, '.', '_' and '-' are allowed");
  }
  if (id.find("..") != std::string_view::npos)
    return bad("must not contain '..'");
  if (id.size() >= 5 && id.substr(id.size() - 5) == ".lock")
    return bad("must not end with '.lock'");
  return caf::none;
}

std::string format_time(int64_t ms) {
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof out, "%s.%03dZ", buf, static_cast<int>(ms % 1000));
  return out;
}

} // namespace makima
