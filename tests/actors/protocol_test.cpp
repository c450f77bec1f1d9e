// The frame codec of docs/protocol.md: every frame type round-trips, output
// bytes stay byte-exact through base64, and each kind of bad input maps to
// the error code and close code of §9.
#include "actors/protocol.hpp"

#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

using namespace makima;
using namespace makima::proto;

namespace {

template <class T>
T round_trip(const T& x) {
  auto text = encode(frame{x});
  auto r = decode(text);
  if (auto* fail = std::get_if<decode_failure>(&r)) {
    ADD_FAILURE() << fail->code << ": " << fail->message << " in " << text;
    return T{};
  }
  auto* f = std::get_if<T>(&std::get<frame>(r));
  EXPECT_NE(f, nullptr) << "decoded to another type: " << text;
  return f ? *f : T{};
}

decode_failure failure(const std::string& text) {
  auto r = decode(text);
  auto* fail = std::get_if<decode_failure>(&r);
  EXPECT_NE(fail, nullptr) << "accepted: " << text;
  return fail ? *fail : decode_failure{};
}

task_record sample_record(task_state st) {
  task_record rec;
  rec.spec.id = "t-0001";
  rec.spec.argv = {"sh", "-c", "echo hi"};
  rec.spec.selector = {{"pool", "k8s"}, {"gpu", "1"}};
  rec.state = st;
  rec.attempt = 2;
  rec.next_seq = 17;
  rec.exit_code = is_terminal(st) ? 3 : -1;
  return rec;
}

} // namespace

TEST(protocol, base64_round_trips_every_byte_and_length) {
  std::mt19937 rng{42};
  for (size_t n = 0; n < 70; ++n) {
    std::string bytes(n, '\0');
    for (auto& c : bytes)
      c = static_cast<char>(rng());
    auto enc = base64_encode(bytes);
    EXPECT_EQ(enc.size() % 4, 0u);
    auto dec = base64_decode(enc);
    ASSERT_TRUE(dec) << n;
    EXPECT_EQ(*dec, bytes) << n;
  }
  EXPECT_EQ(base64_encode("hello\n"), "aGVsbG8K");
}

TEST(protocol, base64_rejects_malformed_text) {
  for (auto bad : {"aGVsbG8", "aGV*bG8K", "a=GVsbG8", "aGVsb=8K", "====",
                   "aG=s"})
    EXPECT_FALSE(base64_decode(bad)) << bad;
}

TEST(protocol, hello_round_trips_with_running_attempts) {
  hello h;
  h.daemon_id = "d-7f3a";
  h.name = "node-1";
  h.pool = "k8s";
  h.labels = {{"arch", "amd64"}};
  h.capacity = 4;
  h.free_disk_bytes = 51234567890;
  h.cached_repos = {"https://git.example/r.git"};
  h.running = {{"t-0001", 2, 41}};
  h.version = "0.2.0";
  auto text = encode(frame{h});
  auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["v"], 2);
  EXPECT_EQ(j["type"], "hello");
  EXPECT_EQ(j["running"][0]["last_seq"], 41); // the field name of §4
  auto back = round_trip(h);
  EXPECT_EQ(back.daemon_id, "d-7f3a");
  EXPECT_EQ(back.labels, h.labels);
  EXPECT_EQ(back.capacity, 4u);
  EXPECT_EQ(back.free_disk_bytes, 51234567890u);
  EXPECT_EQ(back.cached_repos, h.cached_repos);
  ASSERT_EQ(back.running.size(), 1u);
  EXPECT_EQ(back.running[0], (attempt_seq{"t-0001", 2, 41}));
}

TEST(protocol, output_event_is_byte_exact_including_nul_and_invalid_utf8) {
  event e;
  e.task = "t-0001";
  e.attempt = 2;
  e.seq = 7;
  e.kind = event_kind::output;
  e.at = 1764331201300;
  e.chunks = {{17, 1, std::string("a\0b\xff\xfe", 5)}, {18, 2, "warn\n"}};
  auto back = round_trip(e);
  EXPECT_EQ(back.task, "t-0001");
  EXPECT_EQ(back.attempt, 2u);
  EXPECT_EQ(back.seq, 7u);
  EXPECT_EQ(back.at, 1764331201300);
  ASSERT_EQ(back.chunks.size(), 2u);
  EXPECT_EQ(back.chunks[0].bytes, std::string("a\0b\xff\xfe", 5));
  EXPECT_EQ(back.chunks[0].seq, 17u);
  EXPECT_EQ(back.chunks[1].stream, 2);
}

TEST(protocol, state_and_result_events_carry_the_record_with_selector) {
  event e;
  e.task = "t-0001";
  e.attempt = 2;
  e.seq = 9;
  e.kind = event_kind::result;
  e.record = sample_record(task_state::failed);
  auto back = round_trip(e);
  EXPECT_EQ(back.kind, event_kind::result);
  EXPECT_EQ(back.record.state, task_state::failed);
  EXPECT_EQ(back.record.exit_code, 3);
  EXPECT_EQ(back.record.spec.selector, e.record.spec.selector);
  EXPECT_EQ(back.record.spec.argv, e.record.spec.argv);
}

TEST(protocol, server_frames_round_trip) {
  welcome w;
  w.server_version = "0.2.0";
  w.heartbeat = 5;
  w.lease = 30;
  w.acked = {{"t-0001", 2, 39}};
  auto wb = round_trip(w);
  EXPECT_EQ(wb.acked, w.acked);
  EXPECT_EQ(wb.lease, 30);

  assign a;
  a.record = sample_record(task_state::queued);
  a.record.attempt = 3;
  auto ab = round_trip(a);
  EXPECT_EQ(ab.record.attempt, 3u);
  EXPECT_EQ(ab.record.state, task_state::queued);
  EXPECT_EQ(ab.record.next_seq, 17u);

  auto cb = round_trip(cancel{"t-0001", 3, "fenced"});
  EXPECT_EQ(cb.reason, "fenced");
  EXPECT_EQ(round_trip(drain{"shutdown"}).reason, "shutdown");
  auto kb = round_trip(ack{"t-0001", 2, 41});
  EXPECT_EQ(kb.seq, 41u);
  auto eb = round_trip(error{"stale_attempt", "superseded", "t-0001", 2});
  EXPECT_EQ(eb.code, "stale_attempt");
  EXPECT_EQ(eb.attempt, 2u);
  EXPECT_EQ(encode(frame{heartbeat{}}), R"({"type":"heartbeat","v":2})");
  // A v1 peer is answered in v1 (docs/protocol.md §14).
  EXPECT_EQ(encode(frame{heartbeat{}}, 1), R"({"type":"heartbeat","v":1})");
  EXPECT_EQ(round_trip(heartbeat{2, 5, 77}).outbox_events, 5u);
}

TEST(protocol, bad_input_maps_to_the_codes_of_section_9) {
  auto f = failure("not json");
  EXPECT_EQ(f.code, "malformed");
  EXPECT_EQ(f.close, close_invalid_payload);
  EXPECT_EQ(failure("[1,2]").code, "malformed");
  EXPECT_EQ(failure(R"({"type":"heartbeat"})").code, "unsupported_version");
  EXPECT_EQ(failure(R"({"v":3,"type":"heartbeat"})").close,
            close_unsupported_version);
  EXPECT_EQ(failure(R"({"v":"1","type":"heartbeat"})").code,
            "unsupported_version");
  auto u = failure(R"({"v":1,"type":"teleport"})");
  EXPECT_EQ(u.code, "unknown_type");
  EXPECT_EQ(u.close, close_unknown_type);
  EXPECT_EQ(failure(R"({"v":1})").code, "malformed");
  // Missing and mistyped required fields.
  EXPECT_EQ(failure(R"({"v":1,"type":"hello","capacity":1})").code,
            "malformed");
  EXPECT_EQ(failure(R"({"v":1,"type":"hello","daemon_id":"d","capacity":-1})")
                .code,
            "malformed");
  EXPECT_EQ(failure(R"({"v":1,"type":"ack","task":"t","attempt":1})").code,
            "malformed");
  EXPECT_EQ(failure(R"({"v":1,"type":"event","task":"t","attempt":1,"seq":1,)"
                    R"("kind":"output","chunks":[{"seq":0,"stream":1,)"
                    R"("data":"!!"}]})")
                .message.find("base64")
                != std::string::npos,
            true);
  EXPECT_EQ(failure(R"({"v":1,"type":"event","task":"t","attempt":1,"seq":1,)"
                    R"("kind":"telepathy"})")
                .code,
            "malformed");
  EXPECT_EQ(failure(R"({"v":1,"type":"cancel","task":"t","attempt":1,)"
                    R"("reason":"whim"})")
                .code,
            "malformed");
  // A result must be terminal and match the event's task and attempt.
  event e;
  e.task = "t-0001";
  e.attempt = 2;
  e.seq = 3;
  e.kind = event_kind::result;
  e.record = sample_record(task_state::running);
  EXPECT_EQ(failure(encode(frame{e})).code, "malformed");
  e.record = sample_record(task_state::succeeded);
  e.task = "t-0002";
  EXPECT_EQ(failure(encode(frame{e})).code, "malformed");
}

TEST(protocol, unknown_fields_are_ignored) {
  auto r = decode(R"({"v":1,"type":"ack","task":"t","attempt":1,"seq":2,)"
                  R"("future":{"x":1}})");
  ASSERT_TRUE(std::holds_alternative<frame>(r));
  EXPECT_EQ(std::get<ack>(std::get<frame>(r)).seq, 2u);
}

TEST(protocol, close_codes_of_error_codes) {
  EXPECT_EQ(close_code_of("seq_gap"), close_seq_gap);
  EXPECT_EQ(close_code_of("hello_required"), close_hello_required);
  EXPECT_EQ(close_code_of("bad_message"), close_policy);
  EXPECT_EQ(close_code_of("internal"), close_internal);
  EXPECT_EQ(close_code_of("stale_attempt"), 0);
}

// -- version 2 (docs/protocol.md §14) ------------------------------------

TEST(protocol_v2, a_checkpoint_event_round_trips) {
  event e;
  e.task = "t-0001";
  e.attempt = 2;
  e.seq = 9;
  e.kind = event_kind::checkpoint;
  e.at = 1764331205000;
  e.checkpoint = {"t-0001/3", 17, 742, 1, 27};
  auto j = nlohmann::json::parse(encode(frame{e}));
  EXPECT_EQ(j["kind"], "checkpoint");
  EXPECT_EQ(j["checkpoint"]["ref"], "t-0001/3");
  EXPECT_EQ(j["checkpoint"]["covers_seq"], 17);
  EXPECT_FALSE(j.contains("record"));
  auto back = round_trip(e);
  EXPECT_EQ(back.kind, event_kind::checkpoint);
  EXPECT_EQ(back.checkpoint.ref, "t-0001/3");
  EXPECT_EQ(back.checkpoint.covers_seq, 17u);
  EXPECT_EQ(back.checkpoint.bytes, 742u);
  EXPECT_EQ(back.checkpoint.blobs, 1u);
  EXPECT_EQ(back.checkpoint.pause_ms, 27);
}

TEST(protocol_v2, a_checkpoint_ref_of_another_task_or_without_a_number_is_malformed) {
  auto ev = [](const std::string& ref) {
    return R"({"v":2,"type":"event","task":"t-0001","attempt":1,"seq":1,)"
           R"("kind":"checkpoint","at":1,"checkpoint":{"ref":")"
           + ref + R"("}})";
  };
  for (auto bad : {"t-0002/3", "t-0001", "t-0001/", "t-0001/x", "t-0001/3a",
                   "/3", ""}) {
    auto f = failure(ev(bad));
    EXPECT_EQ(f.code, "malformed") << bad;
    EXPECT_EQ(f.close, close_invalid_payload) << bad;
  }
  EXPECT_EQ(failure(R"({"v":2,"type":"event","task":"t","attempt":1,"seq":1,)"
                    R"("kind":"checkpoint","at":1})")
                .code,
            "malformed");
  auto ok = decode(ev("t-0001/12"));
  ASSERT_TRUE(std::holds_alternative<frame>(ok));
}

TEST(protocol_v2, versions_one_and_two_are_read_and_hello_says_which) {
  auto v1 = decode(R"({"v":1,"type":"hello","daemon_id":"d1","capacity":1})");
  ASSERT_TRUE(std::holds_alternative<frame>(v1));
  EXPECT_EQ(std::get<hello>(std::get<frame>(v1)).v, 1);
  auto v2 = decode(R"({"v":2,"type":"hello","daemon_id":"d1","capacity":1})");
  ASSERT_TRUE(std::holds_alternative<frame>(v2));
  EXPECT_EQ(std::get<hello>(std::get<frame>(v2)).v, 2);
  EXPECT_EQ(failure(R"({"v":0,"type":"heartbeat"})").code,
            "unsupported_version");
}

TEST(protocol_v2, the_record_carries_checkpoint_resume_from_and_resume_command) {
  task_record rec;
  rec.spec.id = "t-0001";
  rec.spec.argv = {"agent", "run"};
  rec.spec.resume_command = {"agent", "--continue"};
  rec.attempt = 3;
  rec.state = task_state::migrating;
  rec.checkpoint = "t-0001/4";
  rec.resume_from = "t-0001/2";
  auto back = round_trip(assign{rec});
  EXPECT_EQ(back.record.spec.resume_command, rec.spec.resume_command);
  EXPECT_EQ(back.record.checkpoint, "t-0001/4");
  EXPECT_EQ(back.record.resume_from, "t-0001/2");
  EXPECT_EQ(back.record.state, task_state::migrating);
  // Absent when empty: a v1 reader sees the record it knows.
  task_record plain;
  plain.spec.id = "t";
  plain.spec.argv = {"true"};
  auto j = nlohmann::json::parse(encode(frame{assign{plain}}));
  EXPECT_FALSE(j["record"].contains("checkpoint"));
  EXPECT_FALSE(j["record"].contains("resume_from"));
  EXPECT_FALSE(j["record"]["spec"].contains("resume_command"));
}

TEST(protocol_v2, a_state_event_after_a_restore_carries_what_it_cost) {
  event e;
  e.task = "t-0001";
  e.attempt = 2;
  e.seq = 1;
  e.kind = event_kind::state;
  e.at = 1764331205000;
  e.record = sample_record(task_state::preparing);
  e.restore = restore_report{"t-0001/3", 412, 10240, true};
  auto j = nlohmann::json::parse(encode(frame{e}));
  EXPECT_EQ(j["kind"], "state");
  EXPECT_EQ(j["restore"], (nlohmann::json{{"ref", "t-0001/3"},
                                          {"total_ms", 412},
                                          {"bytes", 10240},
                                          {"cloned", true}}));
  auto back = round_trip(e);
  ASSERT_TRUE(back.restore.has_value());
  EXPECT_EQ(*back.restore, *e.restore);
  EXPECT_EQ(back.record.state, task_state::preparing);
  // Every other state event has no `restore` (nor has any of a v1 daemon).
  auto plain = e;
  plain.restore.reset();
  EXPECT_FALSE(nlohmann::json::parse(encode(frame{plain})).contains("restore"));
  EXPECT_FALSE(round_trip(plain).restore.has_value());
  // Decoding: `bytes` and `cloned` are optional (a warm restore).
  auto text = [&](const nlohmann::json& restore) {
    auto x = nlohmann::json::parse(encode(frame{plain}));
    x["restore"] = restore;
    return x.dump();
  };
  auto warm = decode(text({{"ref", "t-0001/1"}, {"total_ms", 30}}));
  ASSERT_TRUE(std::holds_alternative<frame>(warm));
  auto& w = std::get<event>(std::get<frame>(warm));
  ASSERT_TRUE(w.restore.has_value());
  EXPECT_EQ(*w.restore, (restore_report{"t-0001/1", 30, 0, false}));
  // A malformed one is refused like any malformed field.
  for (auto bad : {nlohmann::json{{"ref", "t-0002/1"}, {"total_ms", 1}},
                   nlohmann::json{{"ref", "t-0001"}, {"total_ms", 1}},
                   nlohmann::json{{"total_ms", 1}},
                   nlohmann::json{{"ref", "t-0001/1"}, {"total_ms", -1}},
                   nlohmann::json{{"ref", "t-0001/1"}, {"cloned", "yes"}},
                   nlohmann::json::array()}) {
    auto f = failure(text(bad));
    EXPECT_EQ(f.code, "malformed") << bad.dump();
    EXPECT_EQ(f.close, close_invalid_payload) << bad.dump();
  }
  // Only a state event carries it: a result neither sends nor reads one.
  auto result = e;
  result.kind = event_kind::result;
  result.record = sample_record(task_state::succeeded);
  auto r = nlohmann::json::parse(encode(frame{result}));
  EXPECT_FALSE(r.contains("restore"));
  r["restore"] = {{"ref", "t-0001/3"}, {"total_ms", 1}};
  auto read = decode(r.dump());
  ASSERT_TRUE(std::holds_alternative<frame>(read));
  EXPECT_FALSE(std::get<event>(std::get<frame>(read)).restore.has_value());
}

TEST(protocol_v2, hello_says_whether_the_daemon_has_a_checkpoint_store) {
  for (bool has_store : {true, false}) {
    hello h;
    h.daemon_id = "d-1";
    h.checkpoints = has_store;
    auto j = nlohmann::json::parse(encode(frame{h}));
    EXPECT_EQ(j["checkpoints"], has_store);
    auto back = round_trip(h);
    ASSERT_TRUE(back.checkpoints.has_value());
    EXPECT_EQ(*back.checkpoints, has_store);
  }
  // A hello without it (v1, or a v2 daemon older than the field): unknown.
  hello old;
  old.daemon_id = "d-1";
  EXPECT_FALSE(nlohmann::json::parse(encode(frame{old})).contains("checkpoints"));
  auto v1 = decode(R"({"v":1,"type":"hello","daemon_id":"d1","capacity":1})");
  ASSERT_TRUE(std::holds_alternative<frame>(v1));
  EXPECT_FALSE(std::get<hello>(std::get<frame>(v1)).checkpoints.has_value());
  auto bad = failure(
      R"({"v":2,"type":"hello","daemon_id":"d1","capacity":1,"checkpoints":"yes"})");
  EXPECT_EQ(bad.code, "malformed");
  EXPECT_EQ(bad.close, close_invalid_payload);
}
