// See io.hpp.
#include "runtime/process/io.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace makima::process {

bool write_all(int fd, std::string_view bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    auto n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n > 0)
      off += static_cast<size_t>(n);
    else if (n < 0 && errno == EINTR)
      continue;
    else
      return false;
  }
  return true;
}

} // namespace makima::process
