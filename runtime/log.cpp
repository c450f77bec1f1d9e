// spdlog-backed implementation of makima's logging functions.
#include "runtime/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>

namespace makima::log {

namespace {

std::atomic<bool> json_output{false};

spdlog::level::level_enum to_spd(level l) {
  switch (l) {
  case level::trace:
    return spdlog::level::trace;
  case level::debug:
    return spdlog::level::debug;
  case level::info:
    return spdlog::level::info;
  case level::warn:
    return spdlog::level::warn;
  case level::error:
    return spdlog::level::err;
  case level::off:
    return spdlog::level::off;
  }
  return spdlog::level::info;
}

std::string json_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (unsigned char c : s) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
  }
  return out;
}

std::shared_ptr<spdlog::logger> logger() {
  static auto instance = [] {
    auto l = std::make_shared<spdlog::logger>(
        "makima", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    l->set_pattern("makima: %v");
    l->set_level(spdlog::level::warn);
    return l;
  }();
  return instance;
}

} // namespace

bool parse_level(std::string_view text, level& out) {
  if (text == "trace")
    out = level::trace;
  else if (text == "debug")
    out = level::debug;
  else if (text == "info")
    out = level::info;
  else if (text == "warn" || text == "warning")
    out = level::warn;
  else if (text == "error")
    out = level::error;
  else if (text == "off")
    out = level::off;
  else
    return false;
  return true;
}

void setup(level lvl, bool json) {
  json_output = json;
  auto l = logger();
  l->set_level(to_spd(lvl));
  if (json)
    l->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})",
                   spdlog::pattern_time_type::utc);
  else
    l->set_pattern("makima: %v");
}

bool json() { return json_output; }

void write(level lvl, std::string_view component, std::string_view msg) {
  auto l = logger();
  auto spd = to_spd(lvl);
  if (!l->should_log(spd))
    return;
  if (json_output)
    l->log(spd, R"("component":"{}","msg":"{}")", json_escape(component),
           json_escape(msg));
  else if (lvl >= level::warn)
    l->log(spd, "{}: {}: {}", spdlog::level::to_string_view(spd), component,
           msg);
  else
    l->log(spd, "{}: {}", component, msg);
}

std::string redact(std::string_view url) {
  auto scheme = url.find("://");
  if (scheme == std::string_view::npos)
    return std::string{url};
  auto host_start = scheme + 3;
  auto slash = url.find('/', host_start);
  auto at =
      url.rfind('@', slash == std::string_view::npos ? url.size() : slash);
  if (at == std::string_view::npos || at < host_start)
    return std::string{url};
  std::string out{url.substr(0, host_start)};
  out += "***";
  out += url.substr(at);
  return out;
}

} // namespace makima::log
