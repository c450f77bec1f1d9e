// Building a task's environment (see environment.hpp).
#include "runtime/process/environment.hpp"

#include <sys/prctl.h>

#include <cstring>

extern char** environ;

namespace makima::process {

const std::vector<std::string>& default_pass_env() {
  static const std::vector<std::string> names = {
      "PATH",         "HOME",       "USER",        "LOGNAME",     "SHELL",
      "LANG",         "LANGUAGE",   "LC_*",        "TERM",        "COLORTERM",
      "TZ",           "TMPDIR",     "http_proxy",  "https_proxy", "no_proxy",
      "all_proxy",    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",    "ALL_PROXY",
      "SSH_AUTH_SOCK"};
  return names;
}

bool is_withheld(const std::string& name) {
  if (name.rfind("MAKIMA_", 0) == 0)
    return true;
  return name == "AWS_ACCESS_KEY_ID" || name == "AWS_SECRET_ACCESS_KEY"
         || name == "AWS_SESSION_TOKEN" || name == "AWS_SECURITY_TOKEN";
}

bool valid_env_name(const std::string& name) {
  if (name.empty())
    return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0))
      return false;
  }
  return true;
}

const std::vector<std::string>& task_variables() {
  static const std::vector<std::string> names = {
      "MAKIMA_TASK_ID", "MAKIMA_ATTEMPT", "MAKIMA_RESUMED", "MAKIMA_STATE_DIR",
      "MAKIMA_WORKTREE"};
  return names;
}

bool is_task_variable(const std::string& name) {
  for (auto& n : task_variables())
    if (n == name)
      return true;
  return false;
}

namespace {

bool matches(const std::string& pattern, const std::string& name) {
  if (!pattern.empty() && pattern.back() == '*')
    return name.compare(0, pattern.size() - 1, pattern, 0, pattern.size() - 1)
           == 0;
  return pattern == name;
}

bool passes(const std::vector<std::string>& extra, const std::string& name) {
  if (is_withheld(name))
    return false;
  for (auto& p : default_pass_env())
    if (matches(p, name))
      return true;
  for (auto& n : extra)
    if (n == name)
      return true;
  return false;
}

} // namespace

std::vector<std::string>
base_environment(const std::map<std::string, std::string>& parent,
                 const std::vector<std::string>& extra_names) {
  std::vector<std::string> out;
  bool has_path = false;
  for (auto& [k, v] : parent) {
    if (!passes(extra_names, k))
      continue;
    has_path = has_path || k == "PATH";
    out.push_back(k + "=" + v);
  }
  if (!has_path)
    out.push_back(std::string{"PATH="} + default_path);
  std::map<std::string, std::string> sorted;
  for (auto& kv : out) {
    auto eq = kv.find('=');
    sorted[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  out.clear();
  for (auto& [k, v] : sorted)
    out.push_back(k + "=" + v);
  return out;
}

std::vector<std::string> child_environment(
    const std::vector<std::string>& base,
    const std::vector<std::string>& task_env,
    const std::vector<std::pair<std::string, std::string>>& makima_vars) {
  std::map<std::string, std::string> env;
  auto add = [&](const std::string& kv) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return;
    env[kv.substr(0, eq)] = kv.substr(eq + 1);
  };
  for (auto& kv : base)
    add(kv);
  for (auto& kv : task_env)
    add(kv);
  for (auto& [k, v] : makima_vars)
    env[k] = v;
  std::vector<std::string> out;
  out.reserve(env.size());
  for (auto& [k, v] : env)
    out.push_back(k + "=" + v);
  return out;
}

void hide_own_secrets() {
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    char* eq = std::strchr(*e, '=');
    if (eq == nullptr)
      continue;
    if (!is_withheld(std::string(*e, static_cast<size_t>(eq - *e))))
      continue;
    // In place: the bytes /proc/PID/environ shows are these.
    std::memset(eq + 1, 0, std::strlen(eq + 1));
  }
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

} // namespace makima::process
