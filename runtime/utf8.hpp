// Strict UTF-8 validation, shared by the server's target parser and the
// CLI's argument checks (the HTTP API is JSON, which carries text only).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace makima {

/// Whether `s` is strict UTF-8: no overlong forms, no surrogates, at most
/// U+10FFFF, no truncated sequence.
inline bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false; // continuation byte, overlong lead (C0, C1) or > F4
    }
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()
          || (static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80)
        return false;
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF
        || (cp >= 0xD800 && cp <= 0xDFFF))
      return false; // overlong, beyond Unicode, or a surrogate
    i += n + 1;
  }
  return true;
}

} // namespace makima
