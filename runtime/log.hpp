// Logging: spdlog behind a few functions so that no other file includes
// spdlog. Messages go to stderr, as text ("makima: …") or JSON lines for
// Kubernetes. Never log secrets: callers pass URLs through `redact()`.
#pragma once

#include <string>
#include <string_view>

namespace makima::log {

/// Severity, lowest first.
enum class level { trace, debug, info, warn, error, off };

/// Parses "trace|debug|info|warn|error|off"; returns false when unknown.
bool parse_level(std::string_view text, level& out);

/// Configures the process-wide logger (call once, early).
void setup(level lvl, bool json);

/// Whether lines are JSON (`log.format = json`): a caller that prints a
/// line of its own (an error before exit) routes it through `write` then.
bool json();

/// Writes one message at `lvl`. `component` names the actor or module.
void write(level lvl, std::string_view component, std::string_view msg);

inline void debug(std::string_view c, std::string_view m) {
  write(level::debug, c, m);
}
inline void info(std::string_view c, std::string_view m) {
  write(level::info, c, m);
}
inline void warn(std::string_view c, std::string_view m) {
  write(level::warn, c, m);
}
inline void error(std::string_view c, std::string_view m) {
  write(level::error, c, m);
}

/// Removes credentials from a URL ("https://user:token@host/x" →
/// "https://***@host/x") for logs and messages.
std::string redact(std::string_view url);

} // namespace makima::log
