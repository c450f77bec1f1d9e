// The CLI client (`makima task submit|cancel|wait|list|show|logs --server`)
// against a scripted HTTP server in the test: a net::server whose handler
// implements just enough of docs/protocol.md §10 with canned records, and
// records every request so the tests can check method, path, body and
// Authorization header.
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "actors/messages.hpp"
#include "actors/protocol.hpp"
#include "runtime/error.hpp"
#include "runtime/net/net.hpp"
#include "tests/fixtures/tls_certs.hpp"
#include "tests/integration/helpers.hpp"

namespace makima::it {
namespace {

const std::string user_key = "user-key-s3cr3t";

/// One canned task: what GET returns (`now`), the final record the event
/// stream ends with, and its output chunks (seq = index).
struct canned {
  task_record now;
  task_record final;
  std::vector<std::pair<int, std::string>> output; // stream, bytes
  /// The event stream drops after the first chunk on its first request.
  bool drop_once = false;
  /// The event stream stays open after the output (no end event).
  bool hang = false;
  int streams = 0;
};

task_record make_record(const std::string& id, task_state state,
                        int exit_code = -1) {
  task_record r;
  r.spec.id = id;
  r.spec.argv = {"make", "test"};
  r.spec.created_at = 1764331200000;
  r.state = state;
  r.attempt = state == task_state::queued ? 0 : 1;
  r.exit_code = exit_code;
  return r;
}

json error_body(const std::string& code, const std::string& message) {
  return json{{"error", {{"code", code}, {"message", message}}}};
}

/// Value of query parameter `key` in `target`, or "".
std::string query(const std::string& target, const std::string& key) {
  auto q = target.find('?');
  if (q == std::string::npos)
    return {};
  auto rest = target.substr(q + 1);
  size_t pos = 0;
  while (pos <= rest.size()) {
    auto amp = rest.find('&', pos);
    auto part = rest.substr(pos, amp == std::string::npos ? amp : amp - pos);
    auto eq = part.find('=');
    if (part.substr(0, eq) == key)
      return eq == std::string::npos ? "" : part.substr(eq + 1);
    if (amp == std::string::npos)
      break;
    pos = amp + 1;
  }
  return {};
}

class scripted_server {
public:
  explicit scripted_server(net::server_options opts = {}) {
    add("t-ok", make_record("t-ok", task_state::succeeded, 0),
        make_record("t-ok", task_state::succeeded, 0),
        {{1, "hello\n"}, {2, "warn\n"}, {1, "bye\n"}});
    add("t-fail3", make_record("t-fail3", task_state::running),
        make_record("t-fail3", task_state::failed, 3),
        {{1, "building\n"}, {2, "error: 3 tests failed\n"}});
    add("t-cancel", make_record("t-cancel", task_state::running),
        make_record("t-cancel", task_state::cancelled), {{1, "sleeping\n"}});
    add("t-drop", make_record("t-drop", task_state::running),
        make_record("t-drop", task_state::succeeded, 0),
        {{1, "first\n"}, {1, "second\n"}, {2, "third\n"}});
    tasks_["t-drop"].drop_once = true;
    add("t-idle", make_record("t-idle", task_state::queued), {}, {});
    add("t-hang", make_record("t-hang", task_state::running), {},
        {{1, "still running\n"}});
    tasks_["t-hang"].hang = true;
    srv_ = std::make_unique<net::server>(
        io_, opts,
        [this](net::request req, net::http_reply reply) {
          handle(std::move(req), std::move(reply));
        },
        net::ws_handler{});
    auto p = srv_->start();
    EXPECT_TRUE(p) << describe(p.error());
    port_ = p ? *p : 0;
  }

  ~scripted_server() { srv_->stop(); }

  uint16_t port() const { return port_; }
  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(port_);
  }

  std::vector<net::request> requests() {
    std::lock_guard<std::mutex> guard{mtx_};
    return requests_;
  }

  /// The requests whose target starts with `prefix`.
  std::vector<net::request> requests(const std::string& method,
                                     const std::string& prefix) {
    std::vector<net::request> out;
    for (auto& r : requests())
      if (r.method == method && r.target.rfind(prefix, 0) == 0)
        out.push_back(r);
    return out;
  }

  json task_json(const std::string& id) {
    std::lock_guard<std::mutex> guard{mtx_};
    return json::parse(to_json(tasks_.at(id).now));
  }

private:
  void add(const std::string& id, task_record now, task_record final,
           std::vector<std::pair<int, std::string>> output) {
    now.next_seq = output.size();
    final.next_seq = output.size();
    tasks_[id] = canned{std::move(now), std::move(final), std::move(output)};
  }

  static void send(const net::http_reply& reply, unsigned status,
                   const json& body) {
    net::response res;
    res.status = status;
    res.body = body.dump();
    reply.send(std::move(res));
  }

  static std::string chunk_json(uint64_t seq, int stream,
                                const std::string& bytes) {
    return json{
        {"seq", seq}, {"stream", stream}, {"data", proto::base64_encode(bytes)}}
        .dump();
  }

  void handle(net::request req, net::http_reply reply) {
    std::lock_guard<std::mutex> guard{mtx_};
    requests_.push_back(req);
    auto auth = req.headers.find("authorization");
    if (auth == req.headers.end() || auth->second != "Bearer " + user_key) {
      net::response res;
      res.status = 401;
      res.headers["WWW-Authenticate"] = "Bearer";
      res.body =
          error_body("unauthorized", "missing or unknown API key").dump();
      reply.send(std::move(res));
      return;
    }
    auto path = req.target.substr(0, req.target.find('?'));
    const std::string prefix = "/api/v1/tasks";
    if (path == prefix && req.method == "POST")
      return submit(req, reply);
    if (path == prefix && req.method == "GET")
      return list(req, reply);
    if (path.rfind(prefix + "/", 0) != 0)
      return send(reply, 404, error_body("not_found", "no such path"));
    auto rest = path.substr(prefix.size() + 1);
    auto slash = rest.find('/');
    auto id = rest.substr(0, slash);
    auto sub = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (id == "t-broken")
      return send(reply, 500, error_body("store_error", "the disk is on fire"));
    auto t = tasks_.find(id);
    if (t == tasks_.end())
      return send(reply, 404, error_body("task_not_found", "no task " + id));
    auto& task = t->second;
    if (sub.empty() && req.method == "GET")
      return send(reply, 200, json::parse(to_json(task.now)));
    if (sub == "cancel" && req.method == "POST") {
      if (is_terminal(task.now.state))
        return send(reply, 409,
                    error_body("bad_state", "task " + id + " is already "
                                                + to_string(task.now.state)));
      return send(reply, 202, json::parse(to_json(task.now)));
    }
    if (sub == "output" && req.method == "GET") {
      uint64_t from = 0;
      auto f = query(req.target, "from");
      if (!f.empty())
        from = std::stoull(f);
      if (query(req.target, "follow") == "1")
        return stream(req, reply, task, from);
      // Pages of at most two chunks.
      auto chunks = json::array();
      uint64_t seq = from;
      for (; seq < task.output.size() && chunks.size() < 2; ++seq)
        chunks.push_back(json::parse(
            chunk_json(seq, task.output[seq].first, task.output[seq].second)));
      bool done = is_terminal(task.now.state) && seq >= task.output.size();
      return send(reply, 200,
                  json{{"chunks", chunks}, {"next", seq}, {"done", done}});
    }
    send(reply, 405, error_body("method_not_allowed", "no"));
  }

  void submit(const net::request& req, const net::http_reply& reply) {
    auto body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.contains("argv"))
      return send(reply, 400, error_body("invalid_argument", "bad body"));
    auto id = body.value("id", "gen-" + std::to_string(tasks_.size()));
    if (tasks_.count(id))
      return send(reply, 409,
                  error_body("task_exists", "task " + id + " already exists"));
    auto rec = make_record(id, task_state::queued);
    rec.spec.argv = body["argv"].get<std::vector<std::string>>();
    tasks_[id] = canned{rec, rec, {}};
    net::response res;
    res.status = 201;
    res.headers["Location"] = "/api/v1/tasks/" + id;
    res.body = to_json(rec);
    reply.send(std::move(res));
  }

  void list(const net::request& req, const net::http_reply& reply) {
    // Pages of two tasks, ids ascending.
    auto after = query(req.target, "after");
    auto tasks = json::array();
    std::string last;
    auto i = after.empty() ? tasks_.begin() : tasks_.upper_bound(after);
    for (; i != tasks_.end() && tasks.size() < 2; ++i) {
      tasks.push_back(json::parse(to_json(i->second.now)));
      last = i->first;
    }
    send(reply, 200,
         json{{"tasks", tasks},
              {"next", i == tasks_.end() ? json() : json(last)}});
  }

  void stream(const net::request& req, const net::http_reply& reply,
              canned& task, uint64_t from) {
    auto last = req.headers.find("last-event-id");
    if (last != req.headers.end())
      from = std::stoull(last->second) + 1;
    reply.begin_stream(200, "text/event-stream");
    reply.write(": keep-alive\n\n");
    bool drop = task.drop_once && task.streams == 0;
    ++task.streams;
    for (auto seq = from; seq < task.output.size(); ++seq) {
      auto& [stream, bytes] = task.output[seq];
      reply.write("event: output\nid: " + std::to_string(seq)
                  + "\ndata: " + chunk_json(seq, stream, bytes) + "\n\n");
      if (drop) {
        reply.end(); // the connection breaks: no end event
        return;
      }
    }
    if (task.hang) {
      hanging_.push_back(reply); // kept open until the server stops
      return;
    }
    reply.write("event: state\ndata: " + to_json(task.now) + "\n\n");
    reply.write("event: end\ndata: " + to_json(task.final) + "\n\n");
    reply.end();
  }

  net::io_thread io_;
  std::unique_ptr<net::server> srv_;
  uint16_t port_ = 0;
  std::mutex mtx_;
  std::vector<net::request> requests_;
  std::map<std::string, canned> tasks_;
  std::vector<net::http_reply> hanging_;
};

struct client_fixture : ::testing::Test {
  env e;
  scripted_server server;

  test::run_options opts() const {
    auto o = e.opts(30000ms);
    for (auto k : {"MAKIMA_SERVER", "MAKIMA_API_KEY", "MAKIMA_CA_FILE",
                   "MAKIMA_DAEMON_SERVER_URL"})
      o.unset_env.push_back(k);
    return o;
  }

  /// `makima task <sub> <args...> --server URL --api-key KEY`
  run_result task(const std::string& sub, std::vector<std::string> args,
                  const std::string& key = user_key) {
    std::vector<std::string> argv{MAKIMA_BINARY, "task",      sub, "--server",
                                  server.url(),  "--api-key", key};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run(argv, opts());
  }
};

TEST_F(client_fixture, submit_posts_the_spec_and_prints_only_the_id) {
  auto r = task("submit", {"--repo",
                           "https://git.example/r.git",
                           "--ref",
                           "main",
                           "--id",
                           "build-1",
                           "--selector",
                           "pool=k8s",
                           "--selector",
                           "gpu=1",
                           "--timeout",
                           "60",
                           "--grace",
                           "5",
                           "--env",
                           "A=1",
                           "--env",
                           "B=x=y",
                           "--commit",
                           "--push",
                           "https://git.example/p.git",
                           "--",
                           "sh",
                           "-c",
                           "echo --id",
                           "--",
                           "--timeout"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "build-1\n");
  auto posts = server.requests("POST", "/api/v1/tasks");
  ASSERT_EQ(posts.size(), 1u);
  EXPECT_EQ(posts[0].target, "/api/v1/tasks");
  EXPECT_EQ(posts[0].headers["authorization"], "Bearer " + user_key);
  EXPECT_EQ(posts[0].headers["content-type"], "application/json");
  auto body = json::parse(posts[0].body);
  EXPECT_EQ(body["argv"], json({"sh", "-c", "echo --id", "--", "--timeout"}));
  EXPECT_EQ(body["id"], "build-1");
  EXPECT_EQ(body["repo"], "https://git.example/r.git");
  EXPECT_EQ(body["ref"], "main");
  EXPECT_EQ(body["selector"], json({{"pool", "k8s"}, {"gpu", "1"}}));
  EXPECT_EQ(body["timeout"], 60.0);
  EXPECT_EQ(body["grace"], 5.0);
  EXPECT_EQ(body["env"], json({"A=1", "B=x=y"}));
  EXPECT_EQ(body["commit"], true);
  EXPECT_EQ(body["push_url"], "https://git.example/p.git");
  EXPECT_EQ(server.task_json("build-1")["spec"]["argv"], body["argv"]);

  // Without "--" and without --id: the first word that is no option starts
  // the command; the id is the server's. Only given fields are sent.
  r = task("submit", {"echo", "hi", "--env", "X=1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, 4), "gen-");
  posts = server.requests("POST", "/api/v1/tasks");
  ASSERT_EQ(posts.size(), 2u);
  EXPECT_EQ(json::parse(posts[1].body),
            json({{"argv", {"echo", "hi", "--env", "X=1"}}}));
}

TEST_F(client_fixture, submit_bad_input_is_exit_2) {
  auto r = task("submit", {"--id", "x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no command given"), std::string::npos) << r.err;
  r = task("submit", {"--env", "novalue", "--", "true"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--env expects KEY=VALUE"), std::string::npos) << r.err;
  r = task("submit", {"--selector", "=v", "--", "true"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--selector expects KEY=VALUE"), std::string::npos);
  r = task("submit", {"--id", "bad id/..", "--", "true"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  r = task("submit", {"--commit", "--", "true"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--commit needs --repo"), std::string::npos);
  // Nothing reached the server so far.
  EXPECT_TRUE(server.requests("POST", "/api/v1/tasks").empty());
  // The server's 409 message is shown.
  r = task("submit", {"--id", "t-ok", "--", "true"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("task t-ok already exists"), std::string::npos) << r.err;
  // No server at all.
  auto argv =
      std::vector<std::string>{MAKIMA_BINARY, "task", "submit", "--", "true"};
  r = test::run(argv, opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no server given"), std::string::npos) << r.err;
  r = task("submit", {"--", "true"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  argv = {MAKIMA_BINARY, "task", "submit", "--server", "ftp://x", "--", "true"};
  r = test::run(argv, opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("server URL must be"), std::string::npos) << r.err;
}

TEST_F(client_fixture, list_pages_and_show_use_the_shared_formatting) {
  auto r = task("list", {"--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto arr = json::parse(r.out);
  ASSERT_TRUE(arr.is_array());
  std::vector<std::string> ids;
  for (auto& t : arr)
    ids.push_back(t["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"t-cancel", "t-drop", "t-fail3",
                                           "t-hang", "t-idle", "t-ok"}));
  // Pages of two: after= follows `next`.
  auto gets = server.requests("GET", "/api/v1/tasks?");
  ASSERT_EQ(gets.size(), 3u);
  EXPECT_NE(gets[1].target.find("after=t-drop"), std::string::npos)
      << gets[1].target;
  EXPECT_NE(gets[2].target.find("after=t-hang"), std::string::npos)
      << gets[2].target;
  r = task("list", {});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("ID"), std::string::npos);
  EXPECT_NE(r.out.find("t-fail3"), std::string::npos);
  EXPECT_NE(r.out.find("running"), std::string::npos);
  EXPECT_NE(r.out.find("make test"), std::string::npos);

  r = task("show", {"t-ok", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_EQ(j["id"], "t-ok");
  EXPECT_EQ(j["state"], "succeeded");
  EXPECT_EQ(j["exit_status"], 0);
  r = task("show", {"t-idle"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("state:       queued"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("command:     make test"), std::string::npos) << r.out;
  auto shows = server.requests("GET", "/api/v1/tasks/t-idle");
  ASSERT_EQ(shows.size(), 1u);
  EXPECT_EQ(shows[0].headers["authorization"], "Bearer " + user_key);
}

TEST_F(client_fixture, unknown_task_is_exit_2_and_server_errors_show_message) {
  for (auto sub : {"show", "logs", "cancel", "wait"}) {
    auto r = task(sub, {"nope"});
    EXPECT_EQ(r.exit_code, 2) << sub;
    EXPECT_NE(r.err.find("no task nope"), std::string::npos) << sub << r.err;
  }
  auto r = task("logs", {"nope", "-f"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no task nope"), std::string::npos) << r.err;
  r = task("show", {"t-broken"});
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_NE(r.err.find("makima: the disk is on fire"), std::string::npos)
      << r.err;
}

TEST_F(client_fixture, logs_pages_the_output_by_stream) {
  auto r = task("logs", {"t-ok"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello\nbye\n");
  EXPECT_EQ(r.err, "warn\n");
  auto gets = server.requests("GET", "/api/v1/tasks/t-ok/output");
  ASSERT_EQ(gets.size(), 2u);
  EXPECT_EQ(gets[0].target, "/api/v1/tasks/t-ok/output?from=0");
  EXPECT_EQ(gets[1].target, "/api/v1/tasks/t-ok/output?from=2");
  // A running task: the output so far, then exit 0.
  r = task("logs", {"t-fail3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "building\n");
  EXPECT_EQ(r.err, "error: 3 tests failed\n");
}

TEST_F(client_fixture, logs_follow_exits_with_the_task_status) {
  auto r = task("logs", {"t-fail3", "-f"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_EQ(r.out, "building\n");
  EXPECT_EQ(r.err, "error: 3 tests failed\n");
  auto streams = server.requests("GET", "/api/v1/tasks/t-fail3/output");
  ASSERT_EQ(streams.size(), 1u);
  EXPECT_NE(streams[0].target.find("follow=1"), std::string::npos);
  EXPECT_EQ(streams[0].headers["authorization"], "Bearer " + user_key);
  r = task("logs", {"t-cancel", "--follow"});
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_EQ(r.out, "sleeping\n");
  r = task("logs", {"-f", "t-ok"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello\nbye\n");
  EXPECT_EQ(r.err, "warn\n");
}

TEST_F(client_fixture, logs_follow_reconnects_with_last_event_id) {
  auto r = task("logs", {"t-drop", "-f"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Every chunk exactly once although the first stream broke off.
  EXPECT_EQ(r.out, "first\nsecond\n");
  EXPECT_EQ(r.err, "third\n");
  auto streams = server.requests("GET", "/api/v1/tasks/t-drop/output");
  ASSERT_EQ(streams.size(), 2u);
  EXPECT_EQ(streams[0].headers.count("last-event-id"), 0u);
  EXPECT_EQ(streams[1].headers["last-event-id"], "0");
}

TEST_F(client_fixture, wait_exits_with_the_task_status_and_prints_nothing) {
  auto r = task("wait", {"t-fail3"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");
  // It skips the output there already is.
  auto streams = server.requests("GET", "/api/v1/tasks/t-fail3/output");
  ASSERT_EQ(streams.size(), 1u);
  EXPECT_NE(streams[0].target.find("from=2"), std::string::npos)
      << streams[0].target;
  r = task("wait", {"t-cancel"});
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_EQ(r.out, "");
  r = task("wait", {"t-drop"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // An already finished task: no stream at all.
  r = task("wait", {"t-ok"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(server.requests("GET", "/api/v1/tasks/t-ok/output").empty());
}

TEST_F(client_fixture, cancel_posts_and_reports_a_finished_task) {
  auto r = task("cancel", {"t-fail3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  auto posts = server.requests("POST", "/api/v1/tasks/t-fail3/cancel");
  ASSERT_EQ(posts.size(), 1u);
  EXPECT_EQ(posts[0].body, "");
  EXPECT_EQ(posts[0].headers["authorization"], "Bearer " + user_key);
  r = task("cancel", {"t-ok"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("task t-ok is already succeeded"), std::string::npos)
      << r.err;
}

TEST_F(client_fixture, a_refused_key_is_exit_2_and_never_echoed) {
  const std::string wrong = "wrong-k3y-do-not-print";
  for (auto args :
       std::vector<std::vector<std::string>>{{"list"},
                                             {"show", "t-ok"},
                                             {"logs", "t-ok"},
                                             {"logs", "t-ok", "-f"},
                                             {"wait", "t-fail3"},
                                             {"cancel", "t-fail3"},
                                             {"submit", "--", "true"}}) {
    auto sub = args.front();
    args.erase(args.begin());
    auto r = task(sub, args, wrong);
    EXPECT_EQ(r.exit_code, 2) << sub << r.err;
    EXPECT_NE(r.err.find("the server refused the API key"), std::string::npos)
        << sub << ": " << r.err;
    EXPECT_EQ(r.err.find(wrong), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find(wrong), std::string::npos) << r.out;
  }
  // The key did travel, as a bearer token.
  auto all = server.requests();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back().headers["authorization"], "Bearer " + wrong);
  // Without any key.
  auto o = opts();
  auto r =
      test::run({MAKIMA_BINARY, "task", "list", "--server", server.url()}, o);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("needs an API key"), std::string::npos) << r.err;
  // From the environment.
  o.env["MAKIMA_API_KEY"] = wrong;
  r = test::run(
      {MAKIMA_BINARY, "task", "show", "t-ok", "--server", server.url()}, o);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err.find(wrong), std::string::npos) << r.err;
}

TEST_F(client_fixture, environment_and_daemon_url_select_the_server) {
  auto o = opts();
  o.env["MAKIMA_SERVER"] =
      "ws://127.0.0.1:" + std::to_string(server.port()) + "/ws/daemon";
  o.env["MAKIMA_API_KEY"] = user_key;
  auto r = test::run({MAKIMA_BINARY, "task", "show", "t-ok", "--json"}, o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["id"], "t-ok");
  EXPECT_EQ(server.requests("GET", "/api/v1/tasks/t-ok").size(), 1u);
  r = test::run({MAKIMA_BINARY, "task", "wait", "t-cancel"}, o);
  EXPECT_EQ(r.exit_code, 130) << r.err;
  // An explicit --data-dir keeps list/show/logs local.
  auto before = server.requests().size();
  r = test::run({MAKIMA_BINARY, "task", "list", "--json", "--data-dir",
                 e.data().string()},
                o);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out), json::array());
  EXPECT_EQ(server.requests().size(), before);
  // Local mode without a server: -f follows a local task (none here).
  r = e.task("logs", {"x", "-f"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no task with id 'x'"), std::string::npos) << r.err;
}

TEST_F(client_fixture, unreachable_server_is_exit_125) {
  // A port nothing listens on: bind a server, note its port, stop it.
  uint16_t dead;
  {
    net::io_thread io;
    net::server s{io, {}, {}, {}};
    auto p = s.start();
    ASSERT_TRUE(p);
    dead = *p;
  }
  auto url = "http://127.0.0.1:" + std::to_string(dead);
  for (auto args :
       std::vector<std::vector<std::string>>{{"list"},
                                             {"show", "t"},
                                             {"logs", "t", "-f"},
                                             {"wait", "t"},
                                             {"cancel", "t"},
                                             {"submit", "--", "true"}}) {
    auto sub = args.front();
    args.erase(args.begin());
    std::vector<std::string> argv{MAKIMA_BINARY, "task",  sub, "--server", url,
                                  "--api-key",   user_key};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = test::run(argv, opts());
    EXPECT_EQ(r.exit_code, 125) << sub << r.err;
    EXPECT_NE(r.err.find("cannot reach the server at " + url + ": "),
              std::string::npos)
        << sub << ": " << r.err;
    EXPECT_EQ(r.err.find(user_key), std::string::npos) << r.err;
  }
}

TEST_F(client_fixture, ctrl_c_stops_logs_follow_and_wait) {
  for (auto sub : {"logs", "wait"}) {
    std::vector<std::string> argv{MAKIMA_BINARY, "task",     sub,
                                  "t-hang",      "--server", server.url(),
                                  "--api-key",   user_key};
    if (std::string{sub} == "logs")
      argv.push_back("-f");
    test::background bg{argv, opts()};
    // Connected and waiting for more.
    ASSERT_TRUE(eventually(
        [&] {
          return !server.requests("GET", "/api/v1/tasks/t-hang/output").empty();
        },
        10s));
    if (std::string{sub} == "logs") {
      ASSERT_TRUE(bg.wait_for_output("still running", 10s));
    }
    bg.kill(SIGINT);
    auto r = bg.wait(10s);
    EXPECT_FALSE(r.timed_out) << sub;
    EXPECT_EQ(r.signal, SIGINT) << sub << " exit " << r.exit_code;
  }
}

/// The scripted server over TLS (certificates of tests/fixtures).
struct tls_client_fixture : ::testing::Test {
  env e;
  test::tls_certs certs;
  std::unique_ptr<scripted_server> server;

  void SetUp() override {
    net::server_options o;
    o.tls_cert_file = certs.cert;
    o.tls_key_file = certs.key;
    server = std::make_unique<scripted_server>(o);
  }

  std::string url() const {
    return "https://localhost:" + std::to_string(server->port());
  }

  test::run_options opts() const {
    auto o = e.opts(30000ms);
    for (auto k : {"MAKIMA_SERVER", "MAKIMA_API_KEY", "MAKIMA_CA_FILE"})
      o.unset_env.push_back(k);
    return o;
  }
};

TEST_F(tls_client_fixture, https_with_the_ca_file_flag_or_environment) {
  auto r = test::run({MAKIMA_BINARY, "task", "logs", "t-ok", "-f", "--server",
                      url(), "--api-key", user_key, "--ca-file", certs.ca},
                     opts());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "hello\nbye\n");
  auto o = opts();
  o.env["MAKIMA_SERVER"] =
      "wss://127.0.0.1:" + std::to_string(server->port()) + "/ws/daemon";
  o.env["MAKIMA_API_KEY"] = user_key;
  o.env["MAKIMA_CA_FILE"] = certs.ca;
  r = test::run({MAKIMA_BINARY, "task", "submit", "--", "true"}, o);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, 4), "gen-");
  r = test::run({MAKIMA_BINARY, "task", "wait", "t-fail3"}, o);
  EXPECT_EQ(r.exit_code, 3) << r.err;
}

TEST_F(tls_client_fixture, wrong_ca_is_unreachable_with_the_reason) {
  auto r = test::run({MAKIMA_BINARY, "task", "list", "--server", url(),
                      "--api-key", user_key, "--ca-file", certs.other_ca},
                     opts());
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_NE(r.err.find("cannot reach the server at " + url()),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("certificate verification failed"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find(user_key), std::string::npos);
  // A plain client on the TLS port fails too, without hanging.
  auto plain = "http://127.0.0.1:" + std::to_string(server->port());
  r = test::run(
      {MAKIMA_BINARY, "task", "list", "--server", plain, "--api-key", user_key},
      opts());
  EXPECT_EQ(r.exit_code, 125) << r.err;
  // A CA file that does not exist is a usage error.
  r = test::run({MAKIMA_BINARY, "task", "list", "--server", url(), "--api-key",
                 user_key, "--ca-file", (e.root() / "nope.pem").string()},
                opts());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("nope.pem"), std::string::npos) << r.err;
}

} // namespace
} // namespace makima::it
