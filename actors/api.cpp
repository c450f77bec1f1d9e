// See api.hpp.
#include "actors/api.hpp"

#include <cmath>
#include <cstdint>
#include <utility>

#include <nlohmann/json.hpp>

#include "actors/protocol.hpp"
#include "runtime/error.hpp"

namespace makima::api {

namespace {

using json = nlohmann::json;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

/// Whether `s` holds a NUL byte (which would cut an argv entry or an
/// environment variable short on exec).
bool has_nul(const std::string& s) {
  return s.find('\0') != std::string::npos;
}

// Parses a submit body into `spec`; returns an error message when bad.
std::string parse_submit(const std::string& body, task_spec& spec) {
  auto j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return "the body must be a JSON object";
  auto argv = j.find("argv");
  if (argv == j.end() || !argv->is_array() || argv->empty())
    return "argv must be a non-empty array of strings";
  for (auto& a : *argv) {
    if (!a.is_string())
      return "argv must be a non-empty array of strings";
    auto s = a.get<std::string>();
    if (has_nul(s))
      return "argv[" + std::to_string(spec.argv.size())
             + "] contains a NUL byte";
    spec.argv.push_back(std::move(s));
  }
  auto str = [&](const char* k, std::string& out) -> std::string {
    auto it = j.find(k);
    if (it == j.end() || it->is_null())
      return {};
    if (!it->is_string())
      return std::string{k} + " must be a string";
    out = it->get<std::string>();
    if (has_nul(out))
      return std::string{k} + " contains a NUL byte";
    return {};
  };
  for (auto [k, out] : {std::pair<const char*, std::string*>{"id", &spec.id},
                        {"repo", &spec.repo},
                        {"ref", &spec.ref},
                        {"push_url", &spec.push_url}})
    if (auto msg = str(k, *out); !msg.empty())
      return msg;
  if (auto it = j.find("env"); it != j.end() && !it->is_null()) {
    if (!it->is_array())
      return "env must be an array of KEY=VALUE strings";
    for (auto& kv : *it) {
      if (!kv.is_string())
        return "env must be an array of KEY=VALUE strings";
      auto s = kv.get<std::string>();
      auto idx = "env[" + std::to_string(spec.env.size()) + "]";
      auto eq = s.find('=');
      if (eq == std::string::npos)
        return idx + " must be KEY=VALUE";
      if (eq == 0)
        return idx + " has an empty name";
      if (has_nul(s))
        return idx + " contains a NUL byte";
      spec.env.push_back(std::move(s));
    }
  }
  for (auto [k, out] :
       {std::pair<const char*, double*>{"timeout", &spec.timeout},
        {"grace", &spec.grace}}) {
    auto it = j.find(k);
    if (it == j.end() || it->is_null())
      continue;
    // Finite, >= 0 and at most max_timeout_seconds: a larger value would
    // overflow the timer and fire at once.
    if (!it->is_number() || !std::isfinite(it->get<double>())
        || it->get<double>() < 0 || it->get<double>() > max_timeout_seconds)
      return std::string{k} + " must be a number of seconds from 0 to "
             + std::to_string(static_cast<int64_t>(max_timeout_seconds));
    *out = it->get<double>();
  }
  if (auto it = j.find("max_attempts"); it != j.end() && !it->is_null()) {
    if (!it->is_number_unsigned() || it->get<uint64_t>() < 1
        || it->get<uint64_t>() > max_attempts_limit)
      return "max_attempts must be an integer from 1 to "
             + std::to_string(max_attempts_limit);
    spec.max_attempts = static_cast<uint32_t>(it->get<uint64_t>());
  }
  if (auto it = j.find("resume_command"); it != j.end() && !it->is_null()) {
    if (!it->is_array())
      return "resume_command must be an array of strings";
    for (auto& a : *it) {
      if (!a.is_string())
        return "resume_command must be an array of strings";
      auto s = a.get<std::string>();
      if (has_nul(s))
        return "resume_command["
               + std::to_string(spec.resume_command.size())
               + "] contains a NUL byte";
      spec.resume_command.push_back(std::move(s));
    }
  }
  if (auto it = j.find("commit"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean())
      return "commit must be a boolean";
    spec.commit = it->get<bool>();
  }
  if (auto it = j.find("selector"); it != j.end() && !it->is_null()) {
    if (!it->is_object())
      return "selector must be an object of strings";
    for (auto& [k, v] : it->items()) {
      if (!v.is_string())
        return "selector must be an object of strings";
      if (has_nul(k) || has_nul(v.get<std::string>()))
        return "selector contains a NUL byte";
      spec.selector[k] = v.get<std::string>();
    }
  }
  if ((spec.commit || !spec.push_url.empty()) && spec.repo.empty())
    return "commit and push_url need a repo";
  return {};
}

json chunk_value(const output_chunk& c) {
  return json{{"seq", c.seq},
              {"stream", c.stream},
              {"data", proto::base64_encode(c.bytes)}};
}

caf::expected<output_chunk> chunk_from(const json& j) {
  auto bad = [](const char* what) {
    return make_error(ec::protocol_error,
                      std::string{"malformed output chunk: "} + what);
  };
  if (!j.is_object())
    return bad("not an object");
  auto seq = j.find("seq");
  if (seq == j.end() || !seq->is_number_unsigned())
    return bad("no seq");
  auto data = j.find("data");
  if (data == j.end() || !data->is_string())
    return bad("no data");
  auto bytes = proto::base64_decode(data->get<std::string>());
  if (!bytes)
    return bad("data is not base64");
  int stream = 1;
  if (auto st = j.find("stream"); st != j.end()) {
    if (!st->is_number_unsigned()
        || (st->get<uint64_t>() != 1 && st->get<uint64_t>() != 2))
      return bad("stream is not 1 or 2");
    stream = static_cast<int>(st->get<uint64_t>());
  }
  return output_chunk{seq->get<uint64_t>(), static_cast<uint8_t>(stream),
                      std::move(*bytes)};
}

} // namespace

std::string encode_chunk(const output_chunk& c) {
  return dump(chunk_value(c));
}

caf::expected<output_chunk> decode_chunk(const std::string& text) {
  return chunk_from(json::parse(text, nullptr, false));
}

std::string encode_page(const output_page& page) {
  auto chunks = json::array();
  for (auto& c : page.chunks)
    chunks.push_back(chunk_value(c));
  return dump(json{
      {"chunks", std::move(chunks)}, {"next", page.next}, {"done", page.done}});
}

caf::expected<output_page> decode_page(const std::string& text) {
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("chunks") || !j["chunks"].is_array())
    return make_error(ec::protocol_error, "malformed output page");
  output_page page;
  for (auto& c : j["chunks"]) {
    auto chunk = chunk_from(c);
    if (!chunk)
      return chunk.error();
    page.next = chunk->seq + 1;
    page.chunks.push_back(std::move(*chunk));
  }
  if (auto n = j.find("next"); n != j.end() && n->is_number_unsigned())
    page.next = n->get<uint64_t>();
  if (auto d = j.find("done"); d != j.end() && d->is_boolean())
    page.done = d->get<bool>();
  return page;
}

std::string encode_submit(const task_spec& spec, submit_fields given) {
  const task_spec defaults;
  json body;
  body["argv"] = spec.argv;
  if (!spec.id.empty())
    body["id"] = spec.id;
  if (!spec.repo.empty())
    body["repo"] = spec.repo;
  if (!spec.ref.empty())
    body["ref"] = spec.ref;
  if (!spec.env.empty())
    body["env"] = spec.env;
  if (given.timeout || spec.timeout != defaults.timeout)
    body["timeout"] = spec.timeout;
  if (given.grace || spec.grace != defaults.grace)
    body["grace"] = spec.grace;
  if (spec.commit)
    body["commit"] = true;
  if (!spec.push_url.empty())
    body["push_url"] = spec.push_url;
  if (!spec.selector.empty())
    body["selector"] = spec.selector;
  if (spec.max_attempts != 0)
    body["max_attempts"] = spec.max_attempts;
  if (!spec.resume_command.empty())
    body["resume_command"] = spec.resume_command;
  return dump(body);
}

caf::expected<task_spec> decode_submit(const std::string& body,
                                       const task_spec& defaults) {
  task_spec spec;
  spec.timeout = defaults.timeout;
  spec.grace = defaults.grace;
  if (auto msg = parse_submit(body, spec); !msg.empty())
    return make_error(ec::invalid_argument, msg);
  return spec;
}

std::string error_body(std::string_view code, const std::string& message) {
  return dump(json{{"error", {{"code", code}, {"message", message}}}});
}

} // namespace makima::api

namespace makima::api {

api_error decode_error(const std::string& text) {
  api_error out;
  auto j = json::parse(text, nullptr, false);
  if (!j.is_object())
    return out;
  auto e = j.find("error");
  if (e == j.end() || !e->is_object())
    return out;
  if (auto c = e->find("code"); c != e->end() && c->is_string())
    out.code = c->get<std::string>();
  if (auto m = e->find("message"); m != e->end() && m->is_string())
    out.message = m->get<std::string>();
  return out;
}

} // namespace makima::api
