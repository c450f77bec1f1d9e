// Small POSIX I/O helpers shared by the terminal writers (local LINK, `task
// logs`, the HTTP client's output printer).
#pragma once

#include <string_view>

namespace makima::process {

/// Writes all of `bytes` to `fd`, retrying short writes and EINTR. Returns
/// false when the descriptor is closed or broken (EPIPE, EBADF…); what was
/// not written is then dropped (callers print output that is stored
/// elsewhere, so nothing is lost).
bool write_all(int fd, std::string_view bytes);

} // namespace makima::process
