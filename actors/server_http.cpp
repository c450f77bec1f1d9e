// The SERVER actor's HTTP API (docs/protocol.md §10), its SSE streams (with
// their keep-alive) and /metrics (§11).
// Requests arrive already authenticated (server_auth.hpp checks the key on
// the io thread, by the same parse_target used here for routing); this file
// routes them, reads and writes the task state of
// the actor and answers through net::http_reply.
#include "actors/server_state.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <sstream>
#include <strings.h>

#include <nlohmann/json.hpp>

#include "actors/api.hpp"
#include "actors/server_target.hpp"
#include "actors/task_store.hpp"
#include "runtime/error.hpp"
#include "runtime/git/git.hpp"
#include "runtime/ids.hpp"
#include "runtime/log.hpp"

namespace makima::server_detail {

namespace {

using json = nlohmann::json;

/// JSON text that never throws: invalid UTF-8 (from a path, a query, a
/// stored argv) becomes U+FFFD instead of a type_error that would end the
/// actor.
std::string text(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void respond(self_ptr self, net::http_reply& reply, unsigned status,
             std::string body, std::string content_type = "application/json",
             net::header_map headers = {}) {
  self->state.counters->count(status);
  net::response res;
  res.status = status;
  res.content_type = std::move(content_type);
  res.headers = std::move(headers);
  res.body = std::move(body);
  reply.send(std::move(res));
}

void respond_error(self_ptr self, net::http_reply& reply, unsigned status,
                   const std::string& code, const std::string& message,
                   net::header_map headers = {}) {
  respond(self, reply, status, api::error_body(code, message),
          "application/json", std::move(headers));
}

void method_not_allowed(self_ptr self, net::http_reply& reply,
                        const std::string& allow) {
  respond_error(self, reply, 405, "method_not_allowed", "allowed: " + allow,
                {{"Allow", allow}});
}

std::string record_json(const task_entry& e);

/// How long POST …/checkpoint waits for the daemon's checkpoint.
constexpr std::chrono::seconds checkpoint_wait{120};

/// The daemon that runs `e`'s current attempt when it can be asked for a
/// checkpoint or a migration (connected, protocol v2); otherwise answers
/// 409 (not running, or a v1 daemon) or 503 (daemon away) and returns null.
daemon_entry* attempt_daemon(self_ptr self, task_entry& e,
                             net::http_reply& reply, const char* what) {
  auto& st = self->state;
  auto id = e.rec.spec.id;
  if (e.daemon.empty() || is_terminal(e.rec.state)
      || e.rec.state == task_state::queued) {
    respond_error(self, reply, 409, to_string(ec::bad_state),
                  "task " + id + " is " + to_string(e.rec.state)
                      + ": only a task running on a daemon can be "
                      + what);
    return nullptr;
  }
  auto d = st.daemons.find(e.daemon);
  if (d == st.daemons.end() || !d->second.connected) {
    respond_error(self, reply, 503, "daemon_unavailable",
                  "daemon " + e.daemon + " of task " + id
                      + " is not connected; try again");
    return nullptr;
  }
  if (d->second.protocol < 2) {
    respond_error(self, reply, 409, to_string(ec::bad_state),
                  "daemon " + e.daemon + " speaks protocol version 1, which "
                                         "cannot be "
                      + what);
    return nullptr;
  }
  return &d->second;
}

// POST /api/v1/tasks/{id}/checkpoint: asks the daemon for a checkpoint now;
// answered with its ref once the daemon reported it (checkpoint event), or
// with the daemon's error.
void checkpoint_now(self_ptr self, task_entry& e, net::http_reply& reply) {
  auto* d = attempt_daemon(self, e, reply, "checkpointed");
  if (!d)
    return;
  bool first = e.checkpoint_waiters.empty();
  e.checkpoint_waiters.emplace_back(reply, clock::now() + checkpoint_wait);
  if (first)
    send_frame(self, d->conn,
               proto::checkpoint_now{e.rec.spec.id, e.rec.attempt});
}

// POST /api/v1/tasks/{id}/pull: the task leaves the fleet (`task pull`). A
// running one is ended by its daemon as for a migration (final
// checkpoint); then, or at once when no daemon holds it, it ends
// handed_off at its latest checkpoint, which the answer names
// ({"ref", "record"}). Without any checkpoint: 409, the task stays.
void pull_task(self_ptr self, task_entry& e, net::http_reply& reply) {
  auto id = e.rec.spec.id;
  if (is_terminal(e.rec.state) && e.rec.state != task_state::interrupted)
    return respond_error(self, reply, 409, to_string(ec::bad_state),
                         "task " + id + " is already "
                             + to_string(e.rec.state));
  if (e.checkpoints.empty())
    // Refused before its daemon is disturbed: without a checkpoint yet
    // (or a daemon without a store) there is nothing to hand off.
    return respond_error(self, reply, 409, to_string(ec::bad_state),
                         "task " + id
                             + " has no checkpoint yet (its daemon needs a "
                               "shared --store; periodic checkpoints come "
                               "every --checkpoint-interval); it stays in "
                               "the fleet");
  if (e.daemon.empty()) {
    e.pull_waiters.push_back(reply);
    hand_off(self, e, "pulled out of the fleet while queued");
    return;
  }
  auto* d = attempt_daemon(self, e, reply, "pulled");
  if (!d)
    return;
  bool first = e.pull_waiters.empty();
  e.pull_waiters.push_back(reply);
  if (first) {
    e.migrate_requested = true;
    send_frame(self, d->conn, proto::migrate{id, e.rec.attempt});
  }
}

// POST /api/v1/tasks/{id}/migrate, body {"selector": {...}} (optional): the
// selector replaces the task's for its next attempts; a queued task only
// gets the new selector; a running one is ended `migrating` by its daemon
// (final checkpoint) and re-queued from that checkpoint.
void migrate_task(self_ptr self, task_entry& e, net::request& req,
                  net::http_reply& reply) {
  std::map<std::string, std::string> selector;
  bool has_selector = false;
  if (!req.body.empty()) {
    auto j = json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      return respond_error(self, reply, 400, "invalid_argument",
                           "the body must be a JSON object");
    if (auto s = j.find("selector"); s != j.end() && !s->is_null()) {
      if (!s->is_object())
        return respond_error(self, reply, 400, "invalid_argument",
                             "selector must be an object of strings");
      for (auto& [k, v] : s->items()) {
        if (!v.is_string() || k.find('\0') != std::string::npos
            || v.get<std::string>().find('\0') != std::string::npos)
          return respond_error(self, reply, 400, "invalid_argument",
                               "selector must be an object of strings "
                               "without NUL");
        selector[k] = v.get<std::string>();
      }
      has_selector = true;
    }
  }
  if (is_terminal(e.rec.state))
    return respond_error(self, reply, 409, to_string(ec::bad_state),
                         "task " + e.rec.spec.id + " is already "
                             + to_string(e.rec.state));
  daemon_entry* d = nullptr;
  if (e.rec.state != task_state::queued) {
    d = attempt_daemon(self, e, reply, "migrated");
    if (!d)
      return;
  }
  std::string detail = "migration requested";
  if (has_selector) {
    e.rec.spec.selector = selector;
    std::string text;
    for (auto& [k, v] : selector)
      text += (text.empty() ? "" : ",") + k + "=" + v;
    detail += "; selector now " + (text.empty() ? std::string{"(none)"} : text);
  }
  if (auto err = write_through(self, e, detail))
    return respond_error(self, reply, 500, to_string(code_of(err)),
                         "cannot record the migration: " + describe(err));
  if (d) {
    e.migrate_requested = true;
    send_frame(self, d->conn, proto::migrate{e.rec.spec.id, e.rec.attempt});
  } else {
    dispatch(self); // queued: the new selector may fit a daemon now
  }
  respond(self, reply, 202, record_json(e));
}

std::optional<uint64_t> parse_u64(const std::string& s) {
  if (s.empty() || s.size() > 19
      || !std::all_of(s.begin(), s.end(),
                      [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoull(s);
}

std::string record_json(const task_entry& e) {
  return to_json(e.rec);
}

// -- POST /api/v1/tasks -------------------------------------------------------

/// The size of the largest `assign` frame `spec` can produce (attempt and
/// next_seq at their widest), plus room for what the daemon adds to the
/// record in its state and result events (paths, branch, error).
size_t assign_frame_bound(const task_spec& spec) {
  task_record rec;
  rec.spec = spec;
  rec.state = task_state::preparing;
  rec.attempt = std::numeric_limits<uint32_t>::max();
  rec.next_seq = std::numeric_limits<uint64_t>::max();
  rec.updated_at = std::numeric_limits<int64_t>::max();
  return proto::encode(proto::assign{rec}).size() + proto::record_headroom;
}

void submit(self_ptr self, net::request& req, net::http_reply& reply) {
  auto& st = self->state;
  task_spec defaults;
  defaults.timeout = st.settings.task_timeout;
  defaults.grace = st.settings.task_grace;
  auto decoded = api::decode_submit(req.body, defaults);
  if (!decoded) {
    respond_error(self, reply, 400, "invalid_argument",
                  describe(decoded.error()));
    return;
  }
  auto spec = std::move(*decoded);
  // `task push`: a task that goes on from a checkpoint made elsewhere (a
  // laptop): `resume_from` = <id>/<n> of this task, `next_seq` the output
  // seq after what the checkpoint holds.
  std::string resume_from;
  uint64_t first_seq = 0;
  {
    auto j = json::parse(req.body, nullptr, false);
    if (auto r = j.find("resume_from"); r != j.end() && !r->is_null()) {
      auto slash = r->is_string() ? r->get<std::string>().rfind('/')
                                  : std::string::npos;
      if (slash == std::string::npos || spec.id.empty()
          || r->get<std::string>().substr(0, slash) != spec.id
          || r->get<std::string>().find_first_not_of("0123456789", slash + 1)
                 != std::string::npos
          || slash + 1 == r->get<std::string>().size())
        return respond_error(self, reply, 400, "invalid_argument",
                             "resume_from must be <id>/<n> of the task's "
                             "id (and id must be given)");
      resume_from = r->get<std::string>();
      if (auto n = j.find("next_seq"); n != j.end() && !n->is_null()) {
        if (!n->is_number_unsigned())
          return respond_error(self, reply, 400, "invalid_argument",
                               "next_seq must be an unsigned integer");
        first_seq = n->get<uint64_t>();
      }
    }
  }
  if (spec.id.empty())
    spec.id = make_task_id();
  if (auto err = validate_task_id(spec.id)) {
    respond_error(self, reply, 400, "invalid_argument", describe(err));
    return;
  }
  if (auto old = st.tasks.find(spec.id); old != st.tasks.end()) {
    // A task pulled out earlier comes back (push after pull): it goes on
    // as its next attempt from the pushed checkpoint.
    auto& e = old->second;
    if (resume_from.empty() || e.rec.state != task_state::handed_off) {
      respond_error(self, reply, 409, "task_exists",
                    "a task with id " + spec.id + " exists");
      return;
    }
    spec.created_at = e.rec.spec.created_at;
    e.rec.spec = spec;
    e.rec.state = task_state::queued;
    e.rec.finished_at = 0;
    e.rec.error.clear();
    e.rec.error_code.clear();
    e.rec.checkpoint = resume_from;
    e.rec.next_seq = std::max(e.rec.next_seq, first_seq);
    e.rec.updated_at = now_ms();
    e.checkpoints = {resume_from};
    e.requeue_cause = "push";
    e.from_pool = "laptop";
    e.queued_at = clock::now();
    e.not_before = {};
    if (auto err = write_through(self, e, "pushed back into the fleet; "
                                          "resumes from checkpoint "
                                              + resume_from))
      return respond_error(self, reply, 500, "store_error",
                           "could not store the task: " + describe(err));
    st.queue.push_back(spec.id);
    respond(self, reply, 201, record_json(e), "application/json",
            {{"Location", "/api/v1/tasks/" + spec.id}});
    dispatch(self);
    return;
  }
  if (!spec.repo.empty())
    spec.repo = git::canonical_url(spec.repo);
  if (!spec.push_url.empty())
    spec.push_url = git::canonical_url(spec.push_url);
  spec.created_at = now_ms();
  // A task whose assignment cannot reach a daemon would be re-sent forever.
  if (auto bound = assign_frame_bound(spec);
      bound > st.settings.max_frame_bytes) {
    respond_error(self, reply, 413, "payload_too_large",
                  "the task's assign frame would take " + std::to_string(bound)
                      + " bytes, over the frame limit of "
                      + std::to_string(st.settings.max_frame_bytes)
                      + " bytes (net.max_frame_bytes); shorten argv/env");
    return;
  }
  task_entry e;
  e.rec.spec = spec;
  e.rec.state = task_state::queued;
  e.rec.attempt = 0;
  e.rec.updated_at = spec.created_at;
  e.queued_at = clock::now();
  if (!resume_from.empty()) {
    e.rec.checkpoint = resume_from;
    e.rec.next_seq = first_seq;
    e.checkpoints = {resume_from};
    e.requeue_cause = "push";
    e.from_pool = "laptop";
  }
  auto id = spec.id;
  auto& entry = st.tasks.emplace(id, std::move(e)).first->second;
  if (auto err = write_through(
          self, entry,
          resume_from.empty()
              ? std::string{"submitted"}
              : "pushed into the fleet; resumes from checkpoint "
                    + resume_from)) {
    st.tasks.erase(id);
    // 507 Insufficient Storage when the disk is full (retry later), 500
    // otherwise; the body says what the store said.
    if (code_of(err) == ec::store_full)
      respond_error(self, reply, 507, "store_full",
                    "could not store the task: " + describe(err));
    else
      respond_error(self, reply, 500, "store_error",
                    "could not store the task: " + describe(err));
    return;
  }
  st.queue.push_back(id);
  log::info("server", "task " + id + " submitted"
                          + (spec.repo.empty()
                                 ? std::string{}
                                 : " (repo " + log::redact(spec.repo) + ")"));
  respond(self, reply, 201, record_json(entry), "application/json",
          {{"Location", "/api/v1/tasks/" + id}});
  dispatch(self);
}

// -- GET /api/v1/tasks --------------------------------------------------------

void list(self_ptr self, const target& t, net::http_reply& reply) {
  auto& st = self->state;
  std::optional<task_state> filter;
  if (auto it = t.query.find("state"); it != t.query.end()) {
    task_state s;
    if (!from_string(it->second, s)) {
      respond_error(self, reply, 400, "invalid_argument",
                    "unknown state " + it->second);
      return;
    }
    filter = s;
  }
  uint64_t limit = 1000;
  if (auto it = t.query.find("limit"); it != t.query.end()) {
    auto n = parse_u64(it->second);
    if (!n || *n == 0 || *n > 10000) {
      respond_error(self, reply, 400, "invalid_argument",
                    "limit must be 1..10000");
      return;
    }
    limit = *n;
  }
  auto it = st.tasks.begin();
  if (auto a = t.query.find("after"); a != t.query.end())
    it = st.tasks.upper_bound(a->second);
  std::string body = R"({"tasks":[)";
  uint64_t n = 0;
  std::string last;
  bool more = false;
  for (; it != st.tasks.end(); ++it) {
    if (filter && it->second.rec.state != *filter)
      continue;
    if (n == limit) {
      more = true;
      break;
    }
    if (n++ > 0)
      body += ',';
    body += record_json(it->second);
    last = it->first;
  }
  json next = more ? json(last) : json(nullptr);
  body += R"(],"next":)" + text(next) + "}";
  respond(self, reply, 200, body);
}

// -- output -------------------------------------------------------------------

/// Whose follow=1 stream `req` opens, for the per-key bound: the
/// authenticated principal when the authenticator set one, else a digest of
/// the bearer token (never the token itself), else (no auth) the peer's
/// address without the port.
std::string stream_key(const net::request& req) {
  if (!req.principal.empty())
    return req.principal;
  if (auto h = req.headers.find("authorization"); h != req.headers.end()) {
    auto v = h->second;
    if (v.size() > 7 && strncasecmp(v.c_str(), "Bearer ", 7) == 0)
      v = v.substr(7);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
      v.pop_back();
    return "key:" + std::to_string(std::hash<std::string>{}(v));
  }
  auto r = req.remote;
  if (auto c = r.rfind(':'); c != std::string::npos)
    r.resize(c);
  return "remote:" + r;
}

/// Open follow=1 streams in total and of `key`.
std::pair<uint64_t, uint64_t> stream_counts(server_state& st,
                                            const std::string& key) {
  uint64_t total = 0;
  uint64_t of_key = 0;
  for (auto& id : st.followed) {
    auto it = st.tasks.find(id);
    if (it == st.tasks.end())
      continue;
    for (auto& f : it->second.followers) {
      if (!f.reply.open())
        continue;
      ++total;
      if (f.key == key)
        ++of_key;
    }
  }
  return {total, of_key};
}

void output(self_ptr self, task_entry& e, const target& t, net::request& req,
            net::http_reply& reply) {
  auto& st = self->state;
  uint64_t from = 0;
  uint64_t max_bytes = 1 << 20;
  if (auto it = t.query.find("from"); it != t.query.end()) {
    auto n = parse_u64(it->second);
    if (!n) {
      respond_error(self, reply, 400, "invalid_argument",
                    "from must be an integer >= 0");
      return;
    }
    from = *n;
  }
  if (auto it = t.query.find("max_bytes"); it != t.query.end()) {
    auto n = parse_u64(it->second);
    if (!n || *n == 0) {
      respond_error(self, reply, 400, "invalid_argument",
                    "max_bytes must be an integer >= 1");
      return;
    }
    max_bytes = *n;
  }
  bool follow = false;
  if (auto it = t.query.find("follow"); it != t.query.end())
    follow = it->second == "1" || it->second == "true";
  auto& id = e.rec.spec.id;
  if (!follow) {
    auto page = read_output(*st.db, id, from, max_bytes);
    if (!page) {
      respond_error(self, reply, 500, to_string(ec::store_error),
                    describe(page.error()));
      return;
    }
    api::output_page out;
    out.next = page->empty() ? from : page->back().seq + 1;
    out.done = is_terminal(e.rec.state) && out.next >= e.rec.next_seq;
    out.chunks = std::move(*page);
    respond(self, reply, 200, api::encode_page(out));
    return;
  }
  if (auto h = req.headers.find("last-event-id"); h != req.headers.end()) {
    if (auto n = parse_u64(h->second))
      from = *n + 1;
  }
  auto key = stream_key(req);
  if (!is_terminal(e.rec.state)) {
    auto [total, of_key] = stream_counts(st, key);
    const char* reason = nullptr;
    std::string msg;
    if (of_key >= st.settings.max_streams_per_key) {
      reason = "per_key";
      msg = "too many open output streams for this key (limit "
            + std::to_string(st.settings.max_streams_per_key)
            + ", server.max_streams_per_key)";
    } else if (total >= st.settings.max_streams) {
      reason = "total";
      msg = "too many open output streams (limit "
            + std::to_string(st.settings.max_streams) + ", server.max_streams)";
    }
    if (reason) {
      ++st.streams_refused[reason];
      respond_error(self, reply, 429, "too_many_streams", msg);
      return;
    }
  }
  st.counters->count(200);
  // net adds Cache-Control: no-cache and Connection: close.
  reply.begin_stream(200, "text/event-stream");
  auto err =
      st.db->for_each_output(id, from, [&](const store::stored_chunk& c) {
        reply.write(sse_output({c.seq, c.stream, c.bytes}));
        return true;
      });
  if (err) {
    reply.end();
    return;
  }
  if (is_terminal(e.rec.state)) {
    reply.write(sse_record("end", e.rec));
    reply.end();
    return;
  }
  e.followers.push_back({reply, std::move(key)});
  st.followed.insert(id);
}

// -- daemons and metrics ------------------------------------------------------

void daemons(self_ptr self, net::http_reply& reply) {
  auto arr = json::array();
  for (auto& [id, d] : self->state.daemons) {
    json j{{"id", id},
           {"name", d.name},
           {"pool", d.pool},
           {"labels", d.labels},
           {"capacity", d.capacity},
           {"running", d.tasks.size()},
           {"connected", d.connected},
           {"last_seen", d.last_seen},
           {"cached_repos", d.cached_repos},
           {"outbox_events", d.outbox_events},
           {"version", d.version}};
    if (d.checkpoints)
      j["checkpoints"] = *d.checkpoints; // absent: the daemon did not say
    arr.push_back(std::move(j));
  }
  respond(self, reply, 200, text(json{{"daemons", std::move(arr)}}));
}

std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"')
      out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

void metrics(self_ptr self, net::http_reply& reply) {
  auto& st = self->state;
  std::string o;
  o += "# HELP makima_build_info The version and commit of this build.\n"
       "# TYPE makima_build_info gauge\n"
       "makima_build_info{version=\""
       + label(st.settings.version) + "\",commit=\"" + label(st.settings.commit)
       + "\"} 1\n";
  std::map<task_state, uint64_t> by_state;
  for (auto& [id, e] : st.tasks)
    ++by_state[e.rec.state];
  o += "# HELP makima_tasks Tasks by state.\n# TYPE makima_tasks gauge\n";
  for (int s = 1; s <= 9; ++s) {
    auto ts = static_cast<task_state>(s);
    o += std::string{"makima_tasks{state=\""} + to_string(ts) + "\"} "
         + std::to_string(by_state[ts]) + "\n";
  }
  o += "# HELP makima_queue_depth Tasks waiting for capacity.\n"
       "# TYPE makima_queue_depth gauge\nmakima_queue_depth "
       + std::to_string(by_state[task_state::queued]) + "\n";
  std::map<std::string, uint64_t> pools;
  for (auto& [id, d] : st.daemons)
    if (d.connected)
      ++pools[d.pool];
  o += "# HELP makima_daemons Connected daemons by pool.\n"
       "# TYPE makima_daemons gauge\n";
  for (auto& [pool, n] : pools)
    o += "makima_daemons{pool=\"" + label(pool) + "\"} " + std::to_string(n)
         + "\n";
  o += "# HELP makima_dispatch_latency_seconds Queued to assign sent.\n"
       "# TYPE makima_dispatch_latency_seconds histogram\n";
  auto& bounds = latency_bounds();
  for (size_t i = 0; i < bounds.size(); ++i)
    o += "makima_dispatch_latency_seconds_bucket{le=\"" + num(bounds[i])
         + "\"} " + std::to_string(st.latency_counts[i]) + "\n";
  o += "makima_dispatch_latency_seconds_bucket{le=\"+Inf\"} "
       + std::to_string(st.latency_count) + "\n";
  o += "makima_dispatch_latency_seconds_sum " + num(st.latency_sum) + "\n";
  o += "makima_dispatch_latency_seconds_count "
       + std::to_string(st.latency_count) + "\n";
  o += "# HELP makima_outbox_lag_events Unacked events a daemon reported.\n"
       "# TYPE makima_outbox_lag_events gauge\n";
  for (auto& [id, d] : st.daemons)
    if (d.connected)
      o += "makima_outbox_lag_events{daemon=\"" + label(id) + "\"} "
           + std::to_string(d.outbox_events) + "\n";
  auto stats = st.net->stats();
  o += "# HELP makima_ws_connections_total WebSocket upgrades accepted.\n"
       "# TYPE makima_ws_connections_total counter\n"
       "makima_ws_connections_total "
       + std::to_string(stats.ws_opened) + "\n";
  o += "# HELP makima_ws_closed_total WebSocket connections closed, by "
       "code.\n# TYPE makima_ws_closed_total counter\n";
  for (auto& [code, n] : st.closed)
    o += "makima_ws_closed_total{code=\"" + std::to_string(code) + "\"} "
         + std::to_string(n) + "\n";
  o += "# HELP makima_ws_rejected_total Bad input on /ws/daemon, by reason.\n"
       "# TYPE makima_ws_rejected_total counter\n";
  for (auto& [reason, n] : st.rejected)
    o += "makima_ws_rejected_total{reason=\"" + reason + "\"} "
         + std::to_string(n) + "\n";
  std::map<unsigned, uint64_t> codes;
  uint64_t auth = 0;
  uint64_t bad_target = 0;
  uint64_t handler_errors = 0;
  {
    std::lock_guard<std::mutex> guard{st.counters->mtx};
    codes = st.counters->http_codes;
    auth = st.counters->auth_rejected;
    bad_target = st.counters->bad_target;
    handler_errors = st.counters->handler_errors;
  }
  codes[413] += stats.body_limit;
  codes[431] += stats.header_limit;
  codes[400] += stats.bad_requests;
  // This response itself.
  codes[200] += 1;
  o += "# HELP makima_http_requests_total HTTP responses by status.\n"
       "# TYPE makima_http_requests_total counter\n";
  for (auto& [code, n] : codes)
    o += "makima_http_requests_total{code=\"" + std::to_string(code) + "\"} "
         + std::to_string(n) + "\n";
  o += "# HELP makima_http_rejected_total HTTP requests refused.\n"
       "# TYPE makima_http_rejected_total counter\n";
  o += "makima_http_rejected_total{reason=\"header_timeout\"} "
       + std::to_string(stats.header_timeouts) + "\n";
  o += "makima_http_rejected_total{reason=\"body_limit\"} "
       + std::to_string(stats.body_limit) + "\n";
  o += "makima_http_rejected_total{reason=\"header_limit\"} "
       + std::to_string(stats.header_limit) + "\n";
  o += "makima_http_rejected_total{reason=\"bad_request\"} "
       + std::to_string(stats.bad_requests) + "\n";
  o += "makima_http_rejected_total{reason=\"auth\"} " + std::to_string(auth)
       + "\n";
  o += "makima_http_rejected_total{reason=\"bad_target\"} "
       + std::to_string(bad_target) + "\n";
  o += "# HELP makima_http_handler_errors_total HTTP handlers that failed "
       "internally (answered 500).\n"
       "# TYPE makima_http_handler_errors_total counter\n"
       "makima_http_handler_errors_total "
       + std::to_string(handler_errors) + "\n";
  uint64_t followers = 0;
  for (auto& id : st.followed)
    if (auto it = st.tasks.find(id); it != st.tasks.end())
      for (auto& f : it->second.followers)
        followers += f.reply.open() ? 1 : 0;
  o += "# HELP makima_sse_streams Open output?follow=1 streams.\n"
       "# TYPE makima_sse_streams gauge\nmakima_sse_streams "
       + std::to_string(followers) + "\n";
  o += "# HELP makima_http_stream_sessions Streaming HTTP sessions still "
       "held (freed within a tick of the client going away).\n"
       "# TYPE makima_http_stream_sessions gauge\n"
       "makima_http_stream_sessions "
       + std::to_string(stats.streams) + "\n";
  o += "# HELP makima_sse_streams_gone_total Streams whose client went "
       "away before the end.\n# TYPE makima_sse_streams_gone_total counter\n"
       "makima_sse_streams_gone_total "
       + std::to_string(stats.streams_gone) + "\n";
  o += "# HELP makima_sse_streams_refused_total follow=1 requests answered "
       "429, by reason.\n# TYPE makima_sse_streams_refused_total counter\n";
  for (const char* r : {"per_key", "total"}) {
    auto it = st.streams_refused.find(r);
    o += std::string{"makima_sse_streams_refused_total{reason=\""} + r + "\"} "
         + std::to_string(it == st.streams_refused.end() ? 0 : it->second)
         + "\n";
  }
  o += "# HELP makima_accept_errors_total Failed accept() calls, by errno "
       "(emfile/enfile/enobufs/enomem pause accepting).\n"
       "# TYPE makima_accept_errors_total counter\n";
  std::pair<const char*, uint64_t> accept_errors[] = {
      {"emfile", stats.accept_emfile},
      {"enfile", stats.accept_enfile},
      {"enobufs", stats.accept_enobufs},
      {"enomem", stats.accept_enomem},
      {"other", stats.accept_other}};
  for (auto& [r, n] : accept_errors)
    o += std::string{"makima_accept_errors_total{reason=\""} + r + "\"} "
         + std::to_string(n) + "\n";
  // Migration (issue 11, docs/protocol.md §14).
  o += "# HELP makima_checkpoints_total Checkpoints daemons reported.\n"
       "# TYPE makima_checkpoints_total counter\nmakima_checkpoints_total "
       + std::to_string(st.checkpoints) + "\n";
  o += "# HELP makima_checkpoint_bytes_total Bytes uploaded for them.\n"
       "# TYPE makima_checkpoint_bytes_total counter\n"
       "makima_checkpoint_bytes_total "
       + std::to_string(st.checkpoint_bytes) + "\n";
  char pause[64];
  std::snprintf(pause, sizeof pause, "%.3f", st.checkpoint_pause_sum);
  o += "# HELP makima_checkpoint_pause_seconds Time tasks were stopped for "
       "them.\n# TYPE makima_checkpoint_pause_seconds summary\n"
       "makima_checkpoint_pause_seconds_sum "
       + std::string{pause} + "\nmakima_checkpoint_pause_seconds_count "
       + std::to_string(st.checkpoints) + "\n";
  o += "# HELP makima_requeues_total Attempts taken away, by cause and by "
       "where the next one starts.\n# TYPE makima_requeues_total counter\n";
  for (auto& [k, n] : st.requeues)
    o += "makima_requeues_total{cause=\"" + k.first + "\",from=\"" + k.second
         + "\"} " + std::to_string(n) + "\n";
  o += "# HELP makima_migrations_total Re-queued attempts assigned again, by "
       "cause and pool pair.\n# TYPE makima_migrations_total counter\n";
  for (auto& [k, n] : st.migrations)
    o += "makima_migrations_total{cause=\"" + std::get<0>(k)
         + "\",from_pool=\"" + std::get<1>(k) + "\",to_pool=\""
         + std::get<2>(k) + "\"} " + std::to_string(n) + "\n";
  // Both node states always appear (0 until a restore of that kind).
  o += "# HELP makima_restore_seconds Time daemons took to restore a resumed "
       "attempt from its checkpoint, by node state (cold: the mirror was "
       "made).\n# TYPE makima_restore_seconds summary\n";
  for (const char* node_state : {"warm", "cold"}) {
    auto i = st.restores.find(node_state);
    auto n = i == st.restores.end() ? uint64_t{0} : i->second.first;
    char sum[64];
    std::snprintf(sum, sizeof sum, "%.3f",
                  i == st.restores.end() ? 0.0 : i->second.second);
    auto labels = std::string{"{node_state=\""} + node_state + "\"}";
    o += "makima_restore_seconds_sum" + labels + " " + sum
         + "\nmakima_restore_seconds_count" + labels + " "
         + std::to_string(n) + "\n";
  }
  o += "# HELP makima_restore_bytes_total Bytes daemons downloaded from the "
       "store for those restores.\n# TYPE makima_restore_bytes_total "
       "counter\nmakima_restore_bytes_total "
       + std::to_string(st.restore_bytes) + "\n";
  respond(self, reply, 200, std::move(o), "text/plain; version=0.0.4");
}

} // namespace

std::string sse_output(const output_chunk& c) {
  return "event: output\nid: " + std::to_string(c.seq)
         + "\ndata: " + api::encode_chunk(c) + "\n\n";
}

std::string sse_record(const char* event, const task_record& rec) {
  return std::string{"event: "} + event + "\ndata: " + to_json(rec) + "\n\n";
}

namespace {

/// Erases the followers of `e` whose client is gone.
void drop_gone(task_entry& e) {
  auto& fs = e.followers;
  fs.erase(std::remove_if(fs.begin(), fs.end(),
                          [](const follower& f) { return !f.reply.open(); }),
           fs.end());
}

} // namespace

void sweep_streams(server_state& st, bool keep_alive) {
  for (auto i = st.followed.begin(); i != st.followed.end();) {
    auto it = st.tasks.find(*i);
    if (it == st.tasks.end()) {
      i = st.followed.erase(i);
      continue;
    }
    auto& e = it->second;
    drop_gone(e);
    if (e.followers.empty()) {
      i = st.followed.erase(i);
      continue;
    }
    if (keep_alive)
      for (auto& f : e.followers)
        f.reply.write(": keep-alive\n\n");
    ++i;
  }
}

/// Every tick: drops streams whose client is gone (so their sessions are
/// freed within a tick); every keep_alive interval also writes a comment,
/// whose failed write is how a silently vanished client is noticed.
void keep_alive(server_state& st) {
  bool due = std::chrono::duration_cast<std::chrono::milliseconds>(
                 clock::now() - st.last_keep_alive)
             >= st.settings.keep_alive;
  if (due)
    st.last_keep_alive = clock::now();
  sweep_streams(st, due);
}

void notify_output(task_entry& e, const std::vector<output_chunk>& chunks) {
  drop_gone(e);
  for (auto& f : e.followers)
    for (auto& c : chunks)
      f.reply.write(sse_output(c));
}

void notify_state(task_entry& e) {
  drop_gone(e);
  if (e.followers.empty())
    return;
  bool end = is_terminal(e.rec.state);
  for (auto& f : e.followers) {
    f.reply.write(sse_record(end ? "end" : "state", e.rec));
    if (end)
      f.reply.end();
  }
  if (end)
    e.followers.clear();
}

namespace {

/// Routes a canonical target (docs/protocol.md §10).
void route(self_ptr self, const target& t, net::request& req,
           net::http_reply& reply) {
  auto& st = self->state;
  auto& p = t.parts;
  auto& m = req.method;
  if (p.size() == 1
      && (p[0] == "healthz" || p[0] == "readyz" || p[0] == "metrics")) {
    if (m != "GET" && m != "HEAD")
      return method_not_allowed(self, reply, "GET");
    if (p[0] == "healthz")
      return respond(self, reply, 200, "ok", "text/plain");
    if (p[0] == "readyz") {
      if (st.draining)
        return respond(self, reply, 503, "draining", "text/plain");
      // A store that refuses writes (disk full) cannot take submissions or
      // events: not ready until a write works again (writable() retries).
      if (auto err = st.db->writable())
        return respond(self, reply, 503,
                       "store refuses writes: " + describe(err), "text/plain");
      return respond(self, reply, 200, "ready", "text/plain");
    }
    return metrics(self, reply);
  }
  if (p.size() < 3 || p[0] != "api" || p[1] != "v1")
    return respond_error(self, reply, 404, "not_found", "no such path");
  if (p[2] == "daemons" && p.size() == 3) {
    if (m != "GET")
      return method_not_allowed(self, reply, "GET");
    return daemons(self, reply);
  }
  if (p[2] != "tasks" || p.size() > 5)
    return respond_error(self, reply, 404, "not_found", "no such path");
  if (p.size() == 3) {
    if (m == "POST")
      return submit(self, req, reply);
    if (m == "GET")
      return list(self, t, reply);
    return method_not_allowed(self, reply, "GET, POST");
  }
  auto it = st.tasks.find(p[3]);
  auto not_found = [&] {
    respond_error(self, reply, 404, to_string(ec::task_not_found),
                  "no task " + p[3]);
  };
  if (p.size() == 4) {
    if (m != "GET")
      return method_not_allowed(self, reply, "GET");
    if (it == st.tasks.end())
      return not_found();
    if (t.query.count("history") == 0)
      return respond(self, reply, 200, record_json(it->second));
    // ?history=1: the record plus every state change with its cause (the
    // cause of each lost attempt, the reason a task failed).
    auto j = json::parse(record_json(it->second));
    auto hist = json::array();
    auto err = st.db->for_each_event(p[3], [&](uint64_t, std::string_view js) {
      auto h = json::parse(js, nullptr, false);
      if (!h.is_discarded())
        hist.push_back(std::move(h));
    });
    if (err)
      return respond_error(self, reply, 500, "store_error",
                           "cannot read the history: " + describe(err));
    j["history"] = std::move(hist);
    return respond(self, reply, 200,
                   j.dump(-1, ' ', false, json::error_handler_t::replace));
  }
  auto& what = p[4];
  if (what == "output") {
    if (m != "GET")
      return method_not_allowed(self, reply, "GET");
    if (it == st.tasks.end())
      return not_found();
    return output(self, it->second, t, req, reply);
  }
  if (what == "cancel") {
    if (m != "POST")
      return method_not_allowed(self, reply, "POST");
    if (it == st.tasks.end())
      return not_found();
    auto& e = it->second;
    if (is_terminal(e.rec.state))
      return respond_error(self, reply, 409, to_string(ec::bad_state),
                           "task " + p[3] + " is already "
                               + to_string(e.rec.state));
    cancel_task(self, e);
    return respond(self, reply, 202, record_json(e));
  }
  if (what == "checkpoint" || what == "migrate") {
    if (m != "POST")
      return method_not_allowed(self, reply, "POST");
    if (it == st.tasks.end())
      return not_found();
    if (what == "checkpoint")
      return checkpoint_now(self, it->second, reply);
    return migrate_task(self, it->second, req, reply);
  }
  if (what == "pull") {
    if (m != "POST")
      return method_not_allowed(self, reply, "POST");
    if (it == st.tasks.end())
      return not_found();
    return pull_task(self, it->second, reply);
  }
  respond_error(self, reply, 404, "not_found", "no such path");
}

} // namespace

void answer_checkpoint_waiters(self_ptr self, task_entry& e, unsigned status,
                               const std::string& body, bool only_expired) {
  auto now = clock::now();
  auto& w = e.checkpoint_waiters;
  for (auto i = w.begin(); i != w.end();) {
    if (only_expired && i->second > now) {
      ++i;
      continue;
    }
    respond(self, i->first, status, body);
    i = w.erase(i);
  }
}

bool hand_off(self_ptr self, task_entry& e, const std::string& why) {
  auto& st = self->state;
  auto waiters = std::move(e.pull_waiters);
  e.pull_waiters.clear();
  if (e.checkpoints.empty()) {
    for (auto& w : waiters)
      respond_error(self, w, 409, to_string(ec::bad_state),
                    "task " + e.rec.spec.id
                        + " has no checkpoint to hand off (its daemons need "
                          "a shared --store); it stays in the fleet");
    return false;
  }
  auto ref = e.checkpoints.back();
  // Out of the queue (it may be queued).
  st.queue.erase(std::remove(st.queue.begin(), st.queue.end(), e.rec.spec.id),
                 st.queue.end());
  e.rec.state = task_state::handed_off;
  e.rec.checkpoint = ref;
  e.rec.updated_at = e.rec.finished_at = now_ms();
  if (auto err = write_through(self, e, why + "; handed off at checkpoint "
                                            + ref)) {
    for (auto& w : waiters)
      respond_error(self, w, 500, to_string(code_of(err)),
                    "cannot record the hand-off: " + describe(err));
    return true; // the attempt is over either way
  }
  log::info("server", "task " + e.rec.spec.id + " handed off at " + ref);
  json body{{"ref", ref}, {"record", json::parse(record_json(e))}};
  for (auto& w : waiters)
    respond(self, w, 200, text(body));
  notify_state(e);
  return true;
}

void expire_checkpoint_waiters(self_ptr self) {
  for (auto& [id, e] : self->state.tasks)
    if (!e.checkpoint_waiters.empty())
      answer_checkpoint_waiters(
          self, e, 504,
          api::error_body("timeout", "the daemon did not report a checkpoint "
                                     "of task "
                                         + id + " in time"),
          true);
}

void handle_http(self_ptr self, net::request& req, net::http_reply& reply) {
  // No input may end the SERVER actor: whatever a handler throws becomes a
  // 500 here (a reply already sent is not sent twice, see net::http_reply).
  try {
    auto t = parse_target(req.target);
    if (!t)
      return respond_error(self, reply, 400, "bad_target", t.error);
    route(self, t.value, req, reply);
  } catch (const std::exception& e) {
    // The exception's text may quote the request; it is logged, not sent.
    log::error("server", "HTTP " + req.method
                             + " failed with an internal error: " + e.what());
    self->state.counters->count_handler_error();
    respond_error(self, reply, 500, "internal", "internal server error");
  } catch (...) {
    log::error("server",
               "HTTP " + req.method + " failed with an internal error");
    self->state.counters->count_handler_error();
    respond_error(self, reply, 500, "internal", "internal server error");
  }
}

} // namespace makima::server_detail
