// /proc scan for processes that carry a given environment entry.
#include "runtime/process/leftovers.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace makima::process {

std::vector<pid_t> find_processes_with_env(const std::string& entry) {
  std::vector<pid_t> out;
  std::error_code err;
  auto self = getpid();
  for (auto it = std::filesystem::directory_iterator("/proc", err);
       !err && it != std::filesystem::directory_iterator(); it.increment(err)) {
    auto name = it->path().filename().string();
    if (name.empty()
        || name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    auto pid = static_cast<pid_t>(std::strtol(name.c_str(), nullptr, 10));
    if (pid == self)
      continue;
    std::ifstream in(it->path() / "environ", std::ios::binary);
    if (!in)
      continue;
    std::string env{std::istreambuf_iterator<char>(in),
                    std::istreambuf_iterator<char>()};
    size_t pos = 0;
    while (pos < env.size()) {
      auto end = env.find('\0', pos);
      if (end == std::string::npos)
        end = env.size();
      if (env.compare(pos, end - pos, entry) == 0) {
        out.push_back(pid);
        break;
      }
      pos = end + 1;
    }
  }
  return out;
}

size_t kill_processes_with_env(const std::string& entry) {
  size_t n = 0;
  for (auto pid : find_processes_with_env(entry))
    if (::kill(pid, SIGKILL) == 0)
      ++n;
  return n;
}

} // namespace makima::process
