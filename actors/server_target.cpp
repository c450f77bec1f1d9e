// Canonical request targets (see server_target.hpp): RFC 3986 path and query
// syntax, checked byte by byte, decoded once.
#include "actors/server_target.hpp"
#include "runtime/hex.hpp"
#include "runtime/utf8.hpp"

#include <cstddef>
#include <cstdint>

namespace makima::server_detail {

namespace {


bool is_alpha_digit(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
         || (c >= '0' && c <= '9');
}

/// RFC 3986 unreserved: ALPHA DIGIT - . _ ~
bool is_unreserved(unsigned char c) {
  return is_alpha_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/// RFC 3986 pchar without pct-encoded: unreserved, sub-delims, ':' and '@'.
bool is_pchar(unsigned char c) {
  switch (c) {
  case '!':
  case '$':
  case '&':
  case '\'':
  case '(':
  case ')':
  case '*':
  case '+':
  case ',':
  case ';':
  case '=':
  case ':':
  case '@':
    return true;
  default:
    return is_unreserved(c);
  }
}

/// Decodes one path segment; "" + `error` set when it is not canonical.
std::string decode_segment(const std::string& raw, std::string& error) {
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    auto c = static_cast<unsigned char>(raw[i]);
    if (c != '%') {
      if (!is_pchar(c)) {
        error = "the path holds a character that must be percent-encoded";
        return {};
      }
      out += static_cast<char>(c);
      continue;
    }
    if (i + 2 >= raw.size()) {
      error = "malformed percent-escape in the path";
      return {};
    }
    int hi = hex_digit(raw[i + 1]);
    int lo = hex_digit(raw[i + 2]);
    if (hi < 0 || lo < 0) {
      error = "malformed percent-escape in the path";
      return {};
    }
    auto b = static_cast<unsigned char>(hi * 16 + lo);
    if (is_unreserved(b)) {
      error = "the path percent-encodes an unreserved character";
      return {};
    }
    if (b == '/' || b == '\\') {
      error = "the path holds an encoded slash";
      return {};
    }
    if (b < 0x20 || b == 0x7F) {
      error = "the path holds an encoded control character";
      return {};
    }
    out += static_cast<char>(b);
    i += 2;
  }
  if (!valid_utf8(out)) {
    error = "the path is not valid UTF-8";
    return {};
  }
  return out;
}

/// Decodes a query name or value ('+' is a space); false when malformed.
bool decode_query(const std::string& raw, std::string& out) {
  out.clear();
  for (size_t i = 0; i < raw.size(); ++i) {
    auto c = static_cast<unsigned char>(raw[i]);
    if (c == '+') {
      out += ' ';
    } else if (c == '%') {
      if (i + 2 >= raw.size())
        return false;
      int hi = hex_digit(raw[i + 1]);
      int lo = hex_digit(raw[i + 2]);
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
        return false;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (is_pchar(c) || c == '/' || c == '?') {
      out += static_cast<char>(c);
    } else {
      return false;
    }
  }
  return true;
}

} // namespace

parsed_target parse_target(const std::string& raw) {
  parsed_target out;
  auto fail = [&](std::string why) {
    out.value = {};
    out.error = std::move(why);
    return out;
  };
  auto q = raw.find('?');
  std::string path = raw.substr(0, q);
  if (path.empty() || path[0] != '/')
    return fail("the target must be a path starting with '/'");
  if (path != "/") {
    // Segments between slashes; the first slash starts the path.
    size_t pos = 1;
    for (;;) {
      auto next = path.find('/', pos);
      auto end = next == std::string::npos ? path.size() : next;
      auto seg = path.substr(pos, end - pos);
      if (seg.empty())
        return fail("the path has an empty segment ('//' or a trailing '/')");
      if (seg == "." || seg == "..")
        return fail("the path has a '.' or '..' segment");
      std::string error;
      auto decoded = decode_segment(seg, error);
      if (!error.empty())
        return fail(std::move(error));
      out.value.parts.push_back(std::move(decoded));
      if (next == std::string::npos)
        break;
      pos = next + 1;
    }
  }
  if (q != std::string::npos) {
    auto qs = raw.substr(q + 1);
    size_t pos = 0;
    while (pos <= qs.size()) {
      auto amp = qs.find('&', pos);
      auto end = amp == std::string::npos ? qs.size() : amp;
      auto kv = qs.substr(pos, end - pos);
      if (!kv.empty()) {
        auto eq = kv.find('=');
        std::string name;
        std::string value;
        if (!decode_query(kv.substr(0, eq), name)
            || (eq != std::string::npos
                && !decode_query(kv.substr(eq + 1), value)))
          return fail("malformed query string");
        out.value.query[name] = value;
      }
      if (amp == std::string::npos)
        break;
      pos = amp + 1;
    }
  }
  return out;
}

access access_for(const target& t) {
  auto& p = t.parts;
  if (p.size() == 1
      && (p[0] == "healthz" || p[0] == "readyz" || p[0] == "metrics"))
    return access::open;
  if (p.size() == 2 && p[0] == "ws" && p[1] == "daemon")
    return access::daemon;
  return access::user;
}

} // namespace makima::server_detail
