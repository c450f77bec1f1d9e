// makima_bench_fleet: the load client of bench/fleet.sh (issue 3 goals).
//
//   makima_bench_fleet latency --api URL --key K --runs N --stamp BIN --dir D
//       N times, one after the other: POST a task whose command is
//       `BIN stamp D/i` (makima_bench_clock: writes CLOCK_REALTIME ns first
//       thing after exec), then follow its output as server-sent events
//       until `end`. Prints JSON {"exec_ms":[..],"result_ms":[..]}:
//       submit -> child exec'd, and submit -> the client saw the result.
//
//   makima_bench_fleet throughput --api URL --key K --tasks N --clients C
//       C threads POST N tasks (`true`) in total as fast as they can; then
//       polls /metrics until N tasks succeeded. Prints JSON
//       {"tasks":N,"seconds":S,"tasks_per_s":R,"submit_seconds":..}.
//
//   makima_bench_fleet daemons --ws URL --key K --count N --hold S
//       Opens N WebSocket connections that speak the daemon protocol
//       (hello, then a heartbeat at the interval the server asks for), holds
//       them S seconds, prints {"connected":..,"welcomed":..} and touches
//       the file given by --ready once all are welcomed (bench/fleet.sh
//       samples the server's RSS then). Bounded: gives up after --hold +
//       30 s whatever happens.
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/protocol.hpp"
#include "runtime/net/net.hpp"

using namespace makima;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

int64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

struct args {
  std::string mode, api, ws, key, stamp, dir, ready;
  int runs = 50, tasks = 1000, clients = 4, count = 1000, hold = 5;
};

args parse(int argc, char** argv) {
  args a;
  if (argc > 1)
    a.mode = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--api")
      a.api = v;
    else if (k == "--ws")
      a.ws = v;
    else if (k == "--key")
      a.key = v;
    else if (k == "--stamp")
      a.stamp = v;
    else if (k == "--dir")
      a.dir = v;
    else if (k == "--ready")
      a.ready = v;
    else if (k == "--runs")
      a.runs = std::stoi(v);
    else if (k == "--tasks")
      a.tasks = std::stoi(v);
    else if (k == "--clients")
      a.clients = std::stoi(v);
    else if (k == "--count")
      a.count = std::stoi(v);
    else if (k == "--hold")
      a.hold = std::stoi(v);
  }
  return a;
}

net::http_client_options client_opts(const args& a) {
  net::http_client_options o;
  if (!a.key.empty())
    o.headers.emplace_back("Authorization", "Bearer " + a.key);
  o.timeout = 30s;
  return o;
}

std::string submit(const args& a, const json& spec) {
  auto r = net::http_request("POST", a.api + "/api/v1/tasks", spec.dump(),
                             client_opts(a));
  if (!r || r->status != 201) {
    std::fprintf(stderr, "submit failed: %s\n",
                 r ? r->body.c_str() : to_string(r.error()).c_str());
    std::exit(1);
  }
  return json::parse(r->body).at("id").get<std::string>();
}

int latency(const args& a) {
  json out{{"exec_ms", json::array()}, {"result_ms", json::array()}};
  for (int i = 0; i < a.runs; ++i) {
    auto stamp_file = a.dir + "/stamp-" + std::to_string(i);
    auto t0 = realtime_ns();
    auto id = submit(a, {{"argv", {a.stamp, "stamp", stamp_file}}});
    bool ended = false;
    net::sse_parser parser;
    auto err = net::http_stream(
        "GET", a.api + "/api/v1/tasks/" + id + "/output?follow=1",
        client_opts(a),
        [](const net::response& head) { return head.status == 200; },
        [&](const std::string& bytes) {
          parser.feed(bytes, [&](const net::sse_event& ev) {
            if (ev.event == "end")
              ended = true;
          });
          return !ended;
        });
    auto t1 = realtime_ns();
    if (!ended) {
      std::fprintf(stderr, "task %s: no end event (%s)\n", id.c_str(),
                   err ? to_string(err).c_str() : "stream closed");
      return 1;
    }
    std::ifstream in(stamp_file);
    int64_t exec_ns = 0;
    in >> exec_ns;
    if (exec_ns == 0) {
      std::fprintf(stderr, "task %s: no exec stamp\n", id.c_str());
      return 1;
    }
    out["exec_ms"].push_back(double(exec_ns - t0) / 1e6);
    out["result_ms"].push_back(double(t1 - t0) / 1e6);
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

double succeeded(const args& a) {
  auto r = net::http_request("GET", a.api + "/metrics", {}, client_opts(a));
  if (!r)
    return -1;
  const std::string name = "makima_tasks{state=\"succeeded\"} ";
  auto pos = r->body.find(name);
  if (pos == std::string::npos)
    return 0;
  return std::stod(r->body.substr(pos + name.size()));
}

int throughput(const args& a) {
  auto before = succeeded(a);
  auto t0 = std::chrono::steady_clock::now();
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < a.clients; ++c)
    threads.emplace_back([&] {
      while (next.fetch_add(1) < a.tasks)
        submit(a, {{"argv", {"true"}}});
    });
  for (auto& t : threads)
    t.join();
  auto t_submitted = std::chrono::steady_clock::now();
  auto deadline = t0 + 300s;
  while (succeeded(a) - before < a.tasks) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "throughput: only %.0f of %d tasks succeeded\n",
                   succeeded(a) - before, a.tasks);
      return 1;
    }
    std::this_thread::sleep_for(20ms);
  }
  auto t1 = std::chrono::steady_clock::now();
  double secs = std::chrono::duration<double>(t1 - t0).count();
  json out{{"tasks", a.tasks},
           {"clients", a.clients},
           {"seconds", secs},
           {"submit_seconds",
            std::chrono::duration<double>(t_submitted - t0).count()},
           {"tasks_per_s", a.tasks / secs}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

// One fake daemon: hello on open, heartbeats at the server's interval.
struct fake_daemon {
  std::unique_ptr<net::ws_client> ws;
  std::atomic<bool> open{false};
  std::atomic<bool> welcomed{false};
};

int daemons(const args& a) {
  net::io_thread io;
  std::vector<std::unique_ptr<fake_daemon>> ds;
  std::atomic<int> connected{0}, welcomed{0};
  std::atomic<double> heartbeat_s{5};
  net::ws_client_options o;
  o.headers.emplace_back("Authorization", "Bearer " + a.key);
  o.connect_timeout = 20s;
  for (int i = 0; i < a.count; ++i) {
    auto d = std::make_unique<fake_daemon>();
    auto* raw = d.get();
    net::ws_client::handlers h;
    h.on_open = [raw, i, &connected] {
      raw->open = true;
      ++connected;
      proto::hello hello;
      hello.daemon_id = "load-" + std::to_string(i);
      hello.name = hello.daemon_id;
      hello.pool = "local";
      hello.labels = {{"bench", "idle"}}; // no task selects this
      hello.capacity = 1;
      hello.version = "bench";
      raw->ws->send(proto::encode(proto::frame{hello}));
    };
    h.on_text = [raw, &welcomed, &heartbeat_s](std::string text) {
      auto f = proto::decode(text);
      if (auto* fr = std::get_if<proto::frame>(&f))
        if (auto* w = std::get_if<proto::welcome>(fr)) {
          heartbeat_s = w->heartbeat;
          if (!raw->welcomed.exchange(true))
            ++welcomed;
        }
    };
    h.on_close = [raw](uint16_t, std::string, unsigned) { raw->open = false; };
    d->ws = std::make_unique<net::ws_client>(io, std::move(h), o);
    if (auto err = d->ws->connect(a.ws)) {
      std::fprintf(stderr, "connect: %s\n", to_string(err).c_str());
      return 1;
    }
    ds.push_back(std::move(d));
    if (i % 50 == 49) // do not flood the listen backlog
      std::this_thread::sleep_for(20ms);
  }
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (welcomed < a.count && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  if (!a.ready.empty())
    std::ofstream{a.ready} << welcomed.load() << "\n";
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(a.hold);
  auto next_beat = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() < until) {
    if (std::chrono::steady_clock::now() >= next_beat) {
      auto beat = proto::encode(proto::frame{proto::heartbeat{}});
      for (auto& d : ds)
        if (d->open)
          d->ws->send(beat);
      next_beat += std::chrono::milliseconds(
          static_cast<int64_t>(heartbeat_s.load() * 1000 / 2));
    }
    std::this_thread::sleep_for(50ms);
  }
  int still_open = 0;
  for (auto& d : ds)
    still_open += d->open ? 1 : 0;
  json out{{"count", a.count},
           {"connected", connected.load()},
           {"welcomed", welcomed.load()},
           {"open_at_end", still_open}};
  std::printf("%s\n", out.dump().c_str());
  ds.clear();
  io.stop();
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  auto a = parse(argc, argv);
  if (a.mode == "latency")
    return latency(a);
  if (a.mode == "throughput")
    return throughput(a);
  if (a.mode == "daemons")
    return daemons(a);
  std::fprintf(stderr, "usage: makima_bench_fleet latency|throughput|daemons "
                       "[options] (see bench/fleet.cpp)\n");
  return 2;
}
