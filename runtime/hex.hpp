// Hex digits both ways and %XX decoding, shared by the object stores (file
// URLs, S3 list answers), the server's target parser and the digests of
// checkpoints. Header-only, no third-party library.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace makima {

/// The value of hex digit `c` (either case), or -1.
inline int hex_digit(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/// `n` bytes as lowercase hex.
inline std::string to_hex(const unsigned char* p, size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(digits[p[i] >> 4]);
    out.push_back(digits[p[i] & 15]);
  }
  return out;
}

/// Decodes the %XX escapes of `in` into `out`; false on a '%' not followed
/// by two hex digits (strict: nothing else is changed, '+' stays '+').
inline bool percent_decode(std::string_view in, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size())
      return false;
    int hi = hex_digit(in[i + 1]);
    int lo = hex_digit(in[i + 2]);
    if (hi < 0 || lo < 0)
      return false;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

} // namespace makima
