// HTTP/1.1 and WebSocket over TCP for the daemon<->server link and the HTTP
// API (docs/protocol.md). Boost.Beast/Asio live only in server.cpp and
// client.cpp; this header includes no Boost, so the actors compile fast.
//
// Threading: one `io_thread` runs every socket of a process. All callbacks
// (http_handler, ws_handler, ws_client::handlers) run on that thread and must
// not block: hand the data to an actor (`caf::anon_send`) and return. Every
// public member function is thread-safe unless stated otherwise; `stop()`,
// destructors and `http_request()` must not be called from a callback.
// After `server::stop()` / the ws_client destructor return, no callback of
// that object runs any more.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace makima::net {

/// Owns one I/O context and the thread that runs it.
class io_thread {
public:
  io_thread();
  /// Stops the thread (pending operations are abandoned).
  ~io_thread();
  io_thread(const io_thread&) = delete;
  io_thread& operator=(const io_thread&) = delete;

  /// Stops the I/O context and joins the thread. Idempotent.
  void stop();

  /// Whether the caller runs on this I/O thread.
  bool in_thread() const;

  struct impl;
  impl& get() { return *impl_; }

private:
  std::unique_ptr<impl> impl_;
};

/// Header names are lowercased; the last value of a repeated header wins.
using header_map = std::map<std::string, std::string>;

/// An HTTP request as the server received it (or the upgrade request of a
/// WebSocket).
struct request {
  std::string method;
  /// Path and query, e.g. "/api/v1/tasks/x/output?from=3".
  std::string target;
  header_map headers;
  /// Lowercased names of the headers that came more than once (`headers`
  /// keeps only the last value), so that a caller can refuse e.g. two
  /// Authorization headers.
  std::vector<std::string> repeated_headers;
  std::string body;
  /// "ip:port" of the peer.
  std::string remote;
  /// Who the request is authenticated as: set by the server's
  /// authenticator (an opaque, non-secret id of the key, e.g. "user:0"),
  /// empty when it does not say. Used to bound streams per key.
  std::string principal;
};

/// An HTTP response (server side: what a handler returns; client side: what
/// `http_request()` got).
struct response {
  unsigned status = 200;
  std::string content_type = "application/json";
  /// Extra headers (server side); all headers, lowercased (client side).
  header_map headers;
  std::string body;
};

/// The handle an http_handler answers through. Copyable; thread-safe; may be
/// used after the handler returned (answer from an actor). Exactly one of
/// `send` or `begin_stream` takes effect. If every copy is dropped without an
/// answer, the client gets a 500.
class http_reply {
public:
  /// Sends a complete response.
  void send(response res) const;
  /// Starts a streaming response without Content-Length (for server-sent
  /// events: content type "text/event-stream"); the connection closes when
  /// the stream ends.
  void begin_stream(unsigned status, std::string content_type,
                    header_map headers = {}) const;
  /// Appends bytes to a started stream (e.g. "data: ...\n\n").
  void write(std::string bytes) const;
  /// Ends the stream after everything written was sent, and closes.
  void end() const;
  /// Called (on the I/O thread) once the client disconnected or the stream
  /// ended; lets a producer stop. Set it before begin_stream.
  void on_disconnect(std::function<void()> fn) const;
  /// False once the connection is gone.
  bool open() const;

  struct state;
  explicit http_reply(std::shared_ptr<state> st) : st_(std::move(st)) {}

private:
  std::shared_ptr<state> st_;
};

using http_handler = std::function<void(request, http_reply)>;

using conn_id = uint64_t;

/// Callbacks of a server's WebSocket endpoint.
struct ws_handler {
  /// Before the upgrade: return a response (e.g. 401) to refuse it, or
  /// nullopt to accept. Optional (accept all).
  std::function<std::optional<response>(const request&)> on_upgrade;
  /// The connection is open; `req` is its upgrade request.
  std::function<void(conn_id, const request& req)> on_open;
  /// A text message arrived (binary messages close the connection, 1003).
  std::function<void(conn_id, std::string)> on_text;
  /// The connection is gone: the close code received or sent (1000 normal,
  /// 1009 message too big, 1006 transport failure…) and a reason.
  std::function<void(conn_id, uint16_t code, std::string reason)> on_close;
};

struct server_options {
  std::string host = "127.0.0.1";
  /// 0 = any free port (see server::port()).
  uint16_t port = 0;
  /// Target path (query ignored) upgraded to WebSocket.
  std::string ws_path = "/ws/daemon";
  size_t max_frame_bytes = 1 << 20;
  size_t max_body_bytes = 1 << 20;
  size_t max_header_bytes = 8 << 10;
  /// A request whose headers are not complete by then is dropped.
  std::chrono::milliseconds header_timeout{10000};
  /// Time to receive the body once the headers are in.
  std::chrono::milliseconds body_timeout{30000};
  /// An idle keep-alive HTTP connection is closed after this.
  std::chrono::milliseconds idle_timeout{60000};
  /// PEM certificate chain and private key; both set = TLS on every
  /// connection (https and wss), both empty = plain TCP. start() fails with
  /// ec::invalid_config when a file cannot be read or does not match.
  std::string tls_cert_file;
  std::string tls_key_file;
};

/// Counters of a server, for /metrics and tests.
struct server_stats {
  uint64_t http_requests = 0;
  uint64_t body_limit = 0;      // 413
  uint64_t header_limit = 0;    // 431
  uint64_t header_timeouts = 0; // half-sent requests dropped
  uint64_t bad_requests = 0;    // 400 (unparsable HTTP, garbage)
  uint64_t ws_opened = 0;
  uint64_t ws_refused = 0; // on_upgrade returned a response
  uint64_t ws_closed = 0;
  uint64_t ws_too_big = 0;   // closed with 1009
  uint64_t connections = 0;  // currently open (HTTP + WebSocket)
  uint64_t tls_failures = 0; // TLS handshakes that failed (plain HTTP…)
  uint64_t streams = 0;      // streaming responses whose session lives
  uint64_t streams_gone = 0; // streams whose client went away (EOF, RST,
                             // failed write) before the stream ended
  /// accept() failures by errno; accepting pauses (50 ms doubling to 1 s)
  /// after the first four instead of spinning.
  uint64_t accept_emfile = 0;
  uint64_t accept_enfile = 0;
  uint64_t accept_enobufs = 0;
  uint64_t accept_enomem = 0;
  uint64_t accept_other = 0;
};

/// An HTTP/1.1 + WebSocket server (plain TCP, or TLS when
/// server_options has a certificate and key).
class server {
public:
  server(io_thread& io, server_options opts, http_handler http, ws_handler ws);
  /// Stops the server.
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// Binds and listens; returns the bound port.
  caf::expected<uint16_t> start();
  uint16_t port() const;
  /// Closes the listener and every connection (no close handshake). Blocks
  /// until done; no callback runs afterwards. Idempotent.
  void stop();

  /// Queues a text message on a WebSocket connection; ignored when gone.
  void send(conn_id id, std::string text);
  /// Sends a close frame after the queued messages, then closes.
  void close(conn_id id, uint16_t code, std::string reason);

  server_stats stats() const;

  struct impl;

private:
  std::shared_ptr<impl> impl_;
};

struct ws_client_options {
  /// Extra headers of the upgrade request, e.g. {"Authorization", "Bearer k"}.
  std::vector<std::pair<std::string, std::string>> headers;
  size_t max_frame_bytes = 1 << 20;
  /// Resolve + connect + handshake must finish within this.
  std::chrono::milliseconds connect_timeout{10000};
  /// wss:// only: PEM CA bundle to verify the server with (empty = the
  /// system store). The host name is always verified.
  std::string ca_file;
};

/// A WebSocket client connection (ws:// or wss://).
class ws_client {
public:
  struct handlers {
    std::function<void()> on_open;
    std::function<void(std::string)> on_text;
    /// The connection ended or could not be made. `code`: the close code
    /// (1006 for transport failures, also when connecting failed);
    /// `http_status`: the status of a refused upgrade (e.g. 401), else 0.
    std::function<void(uint16_t code, std::string reason, unsigned http_status)>
        on_close;
  };

  ws_client(io_thread& io, handlers h, ws_client_options opts = {});
  /// Closes the connection abruptly; no callback runs afterwards.
  ~ws_client();
  ws_client(const ws_client&) = delete;
  ws_client& operator=(const ws_client&) = delete;

  /// Starts connecting to "ws[s]://host:port/path"; the outcome arrives as
  /// on_open or on_close. Call once. A malformed URL, or an unreadable
  /// ca_file for wss (ec::invalid_config), is returned at once. A failed
  /// certificate check is an on_close(1006) whose reason says so.
  caf::error connect(const std::string& url);
  /// Queues a text message (dropped unless open).
  void send(std::string text);
  /// Sends a close frame after the queued messages.
  void close(uint16_t code = 1000, std::string reason = {});

  struct impl;

private:
  std::shared_ptr<impl> impl_;
};

struct http_client_options {
  /// Extra request headers (e.g. Authorization).
  std::vector<std::pair<std::string, std::string>> headers;
  std::string content_type = "application/json";
  /// Deadline of the whole exchange.
  std::chrono::milliseconds timeout{30000};
  size_t max_body_bytes = 64 << 20;
  /// https:// only: PEM CA bundle (empty = the system store).
  std::string ca_file;
};

/// A blocking HTTP/1.1 request to "http[s]://host:port/target" (for the
/// CLI). Errors: ec::invalid_argument (URL), ec::invalid_config (ca_file),
/// ec::net_error (also a failed certificate check), ec::net_timeout,
/// ec::protocol_error. Any status code is a response, not an error.
caf::expected<response> http_request(const std::string& method,
                                     const std::string& url,
                                     std::string body = {},
                                     http_client_options opts = {});

/// A blocking streaming request (server-sent events, `task logs -f`):
/// calls `on_head` once with the status and headers (empty body), then
/// `on_data` with each piece of the body as it arrives, until the server
/// ends the response or a callback returns false. `opts.timeout` bounds the
/// connect and each wait for the next bytes (not the whole stream).
/// Errors as http_request.
caf::error http_stream(const std::string& method, const std::string& url,
                       const http_client_options& opts,
                       const std::function<bool(const response&)>& on_head,
                       const std::function<bool(const std::string&)>& on_data);

/// One server-sent event.
struct sse_event {
  /// "message" when the stream named none.
  std::string event = "message";
  /// The last event id the stream set (it persists across events, as in
  /// the HTML standard; the reconnect point for Last-Event-ID).
  std::string id;
  /// The data lines joined with "\n".
  std::string data;
};

/// Incremental parser of a text/event-stream body (comments and unknown
/// fields skipped, CRLF / LF / CR line ends).
class sse_parser {
public:
  /// Feeds body bytes; calls `f` for every complete event.
  void feed(const std::string& bytes,
            const std::function<void(const sse_event&)>& f);

private:
  std::string line_;
  bool after_cr_ = false;
  sse_event cur_;
  bool has_data_ = false;
};

/// Parts of "scheme://host:port/target" (port defaults from the scheme).
struct url_parts {
  std::string scheme;
  std::string host;
  uint16_t port = 0;
  std::string target = "/";
};

/// Parses http, https, ws and wss URLs; nullopt when malformed.
std::optional<url_parts> parse_url(const std::string& url);

/// A listen address: "HOST:PORT", "[V6]:PORT" (host without brackets).
struct host_port {
  std::string host;
  uint16_t port = 0;
};

/// Parses "HOST:PORT" or "[V6]:PORT" with PORT 0-65535 (0: any free port).
/// nullopt when malformed: no port, an empty host, a port that is not a
/// decimal number in range, or an IPv6 address without brackets ("::1:80"
/// cannot be split unambiguously).
std::optional<host_port> parse_host_port(const std::string& text);

} // namespace makima::net
