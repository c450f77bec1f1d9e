// net::io_thread, net::ws_client (ws, wss), the blocking clients
// http_request and http_stream (http, https), parse_url and sse_parser.
// One of the Beast translation units (see beast.hpp).
#include <algorithm>
#include <cctype>
#include <deque>
#include <future>
#include <limits>
#include <optional>

#include "runtime/net/beast.hpp"

namespace makima::net {

// -- io_thread ----------------------------------------------------------------

io_thread::io_thread() : impl_(std::make_unique<impl>()) {
  auto* d = impl_.get();
  std::promise<void> started;
  auto ready = started.get_future();
  d->thread = std::thread([d, &started] {
    d->id = std::this_thread::get_id();
    started.set_value();
    for (;;) {
      try {
        d->ioc.run();
        return;
      } catch (...) {
        // A callback threw; keep serving the other connections.
      }
    }
  });
  ready.wait();
}

io_thread::~io_thread() {
  stop();
}

void io_thread::stop() {
  if (!impl_->thread.joinable())
    return;
  impl_->work.reset();
  impl_->ioc.stop();
  impl_->thread.join();
}

bool io_thread::in_thread() const {
  return std::this_thread::get_id() == impl_->id;
}

void run_on(io_thread& io, std::function<void()> fn) {
  auto& d = io.get();
  if (io.in_thread() || d.ioc.stopped() || !d.thread.joinable()) {
    fn();
    return;
  }
  auto done = std::make_shared<std::promise<void>>();
  auto fut = done->get_future();
  asio::post(d.ioc, [&fn, done] {
    fn();
    done->set_value();
  });
  // The I/O thread runs only non-blocking callbacks, so this is short.
  fut.wait();
}

// -- parse_url ----------------------------------------------------------------

std::optional<url_parts> parse_url(const std::string& url) {
  url_parts out;
  auto sep = url.find("://");
  if (sep == std::string::npos)
    return std::nullopt;
  out.scheme = url.substr(0, sep);
  uint16_t def;
  if (out.scheme == "http" || out.scheme == "ws")
    def = 80;
  else if (out.scheme == "https" || out.scheme == "wss")
    def = 443;
  else
    return std::nullopt;
  auto rest = url.substr(sep + 3);
  auto slash = rest.find_first_of("/?");
  auto authority = rest.substr(0, slash);
  if (slash != std::string::npos) {
    out.target = rest.substr(slash);
    if (out.target[0] == '?')
      out.target = "/" + out.target;
  }
  if (authority.empty() || authority.find('@') != std::string::npos)
    return std::nullopt;
  std::string port;
  if (authority[0] == '[') { // [v6]:port
    auto close = authority.find(']');
    if (close == std::string::npos)
      return std::nullopt;
    out.host = authority.substr(1, close - 1);
    auto tail = authority.substr(close + 1);
    if (!tail.empty()) {
      if (tail[0] != ':')
        return std::nullopt;
      port = tail.substr(1);
    }
  } else {
    auto colon = authority.rfind(':');
    out.host = authority.substr(0, colon);
    if (colon != std::string::npos)
      port = authority.substr(colon + 1);
  }
  if (out.host.empty())
    return std::nullopt;
  if (port.empty()) {
    out.port = def;
  } else {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != port.npos)
      return std::nullopt;
    auto n = std::stoul(port);
    if (n == 0 || n > 65535)
      return std::nullopt;
    out.port = static_cast<uint16_t>(n);
  }
  return out;
}

// -- parse_host_port ----------------------------------------------------------

std::optional<host_port> parse_host_port(const std::string& text) {
  host_port out;
  std::string port;
  if (!text.empty() && text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size()
        || text[close + 1] != ':')
      return std::nullopt;
    out.host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos)
      return std::nullopt;
    out.host = text.substr(0, colon);
    if (out.host.find(':') != std::string::npos)
      return std::nullopt; // IPv6 needs brackets
    port = text.substr(colon + 1);
  }
  if (out.host.empty() || port.empty() || port.size() > 5
      || port.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  auto n = std::stoul(port);
  if (n > 65535)
    return std::nullopt;
  out.port = static_cast<uint16_t>(n);
  return out;
}

// -- ws_client ----------------------------------------------------------------

struct ws_client::impl : std::enable_shared_from_this<ws_client::impl> {
  impl(io_thread& io, handlers h, ws_client_options opts)
      : io(io), h(std::move(h)), opts(std::move(opts)),
        resolver(asio::make_strand(io.get().ioc)) {}

  io_thread& io;
  handlers h;
  ws_client_options opts;
  /// wss:// only; declared before the streams so it outlives them.
  std::shared_ptr<ssl::context> tls;
  tcp::resolver resolver;
  /// Exactly one is set by connect().
  std::optional<websocket::stream<beast::tcp_stream>> plain_ws;
  std::optional<websocket::stream<tls_stream>> tls_ws;
  beast::flat_buffer buf;
  url_parts url;
  websocket::response_type res;
  std::deque<std::string> queue;
  websocket::close_reason close_;
  uint16_t sent_code = 0;
  std::string sent_reason;
  bool opened = false;
  bool writing = false;
  bool closing = false;
  bool finished = false;
  /// Set by the destructor of ws_client: no more callbacks.
  bool detached = false;

  /// Calls `f` with the WebSocket stream (plain or TLS).
  template <class F>
  void with_ws(F&& f) {
    if (tls_ws)
      f(*tls_ws);
    else if (plain_ws)
      f(*plain_ws);
  }

  beast::tcp_stream* transport() {
    if (tls_ws)
      return &beast::get_lowest_layer(*tls_ws);
    if (plain_ws)
      return &beast::get_lowest_layer(*plain_ws);
    return nullptr;
  }

  std::string where() const {
    return url.host + ":" + std::to_string(url.port);
  }

  void start() {
    resolver.async_resolve(
        url.host, std::to_string(url.port),
        [self = shared_from_this()](beast::error_code e,
                                    tcp::resolver::results_type results) {
          self->on_resolve(e, results);
        });
  }

  void on_resolve(beast::error_code e, tcp::resolver::results_type results) {
    if (e)
      return finish(websocket::close_code::abnormal,
                    "cannot resolve " + url.host + ": " + e.message(), 0);
    transport()->expires_after(opts.connect_timeout);
    transport()->async_connect(
        results,
        [self = shared_from_this()](beast::error_code e, const tcp::endpoint&) {
          self->on_connect(e);
        });
  }

  void on_connect(beast::error_code e) {
    if (e)
      return finish(websocket::close_code::abnormal,
                    describe(to_error(e, "cannot connect to " + where())), 0);
    // Small frames (events, acks) must not wait for Nagle + delayed ACK.
    beast::error_code ignored;
    transport()->socket().set_option(tcp::no_delay(true), ignored);
    if (!tls_ws)
      return ws_handshake();
    if (auto err = set_peer_name(tls_ws->next_layer(), url.host))
      return finish(websocket::close_code::abnormal, describe(err), 0);
    tls_ws->next_layer().async_handshake(
        ssl::stream_base::client,
        [self = shared_from_this()](beast::error_code e) {
          if (e)
            return self->finish(
                websocket::close_code::abnormal,
                describe(
                    tls_error(e, self->tls_ws->next_layer(), self->where())),
                0);
          self->ws_handshake();
        });
  }

  void ws_handshake() {
    auto headers = opts.headers;
    with_ws([&](auto& ws) {
      ws.set_option(websocket::stream_base::decorator(
          [headers](websocket::request_type& req) {
            req.set(http::field::user_agent, "makima");
            for (auto& [k, v] : headers)
              req.set(k, v);
          }));
      ws.read_message_max(opts.max_frame_bytes);
      ws.async_handshake(res, where(), url.target,
                         [self = shared_from_this()](beast::error_code e) {
                           self->on_handshake(e);
                         });
    });
  }

  void on_handshake(beast::error_code e) {
    if (e) {
      unsigned status = 0;
      if (e == websocket::error::upgrade_declined)
        status = res.result_int();
      return finish(websocket::close_code::abnormal,
                    describe(to_error(e, "WebSocket handshake failed")),
                    status);
    }
    transport()->expires_never();
    with_ws([](auto& ws) {
      ws.set_option(
          websocket::stream_base::timeout::suggested(beast::role_type::client));
    });
    opened = true;
    if (!detached && h.on_open)
      h.on_open();
    do_read();
  }

  void do_read() {
    with_ws([&](auto& ws) {
      ws.async_read(buf,
                    [self = shared_from_this()](beast::error_code e, size_t) {
                      self->on_read(e);
                    });
    });
  }

  websocket::close_reason reason() {
    websocket::close_reason out;
    with_ws([&](auto& ws) { out = ws.reason(); });
    return out;
  }

  void on_read(beast::error_code e) {
    if (e) {
      // A close frame may have arrived before the transport failed (e.g.
      // the peer closed at once after a 1009): report its code.
      auto got = reason();
      if (e == websocket::error::closed
          || got.code != websocket::close_code::none)
        finish(got.code, std::string{got.reason.c_str()}, 0);
      else if (e == websocket::error::message_too_big)
        finish(websocket::close_code::too_big, "message too big", 0);
      else if (e == asio::error::operation_aborted && sent_code != 0)
        finish(sent_code, sent_reason, 0);
      else
        finish(websocket::close_code::abnormal, e.message(), 0);
      return;
    }
    auto text = beast::buffers_to_string(buf.data());
    buf.consume(buf.size());
    if (!detached && h.on_text && !closing)
      h.on_text(std::move(text));
    do_read();
  }

  void send(std::string text) {
    if (!opened || closing || finished)
      return;
    queue.push_back(std::move(text));
    if (!writing)
      do_write();
  }

  void do_write() {
    writing = true;
    with_ws([&](auto& ws) {
      ws.text(true);
      ws.async_write(asio::buffer(queue.front()),
                     [self = shared_from_this()](beast::error_code e, size_t) {
                       self->writing = false;
                       if (e) {
                         // The pending read reports the close.
                         self->queue.clear();
                         return;
                       }
                       self->queue.pop_front();
                       if (!self->queue.empty())
                         self->do_write();
                       else if (self->closing)
                         self->do_close();
                     });
    });
  }

  void close(uint16_t code, std::string reason) {
    if (!opened || closing || finished)
      return;
    closing = true;
    close_ = websocket::close_reason{static_cast<websocket::close_code>(code),
                                     reason};
    if (!writing)
      do_close();
  }

  void do_close() {
    sent_code = close_.code;
    sent_reason = std::string{close_.reason.c_str()};
    with_ws([&](auto& ws) {
      ws.async_close(close_, [self = shared_from_this()](beast::error_code e) {
        if (e)
          self->shutdown();
      });
    });
  }

  void shutdown() {
    beast::error_code ignored;
    resolver.cancel();
    if (auto* s = transport()) {
      s->socket().shutdown(tcp::socket::shutdown_both, ignored);
      s->socket().close(ignored);
    }
  }

  void finish(uint16_t code, std::string reason, unsigned status) {
    if (finished)
      return;
    finished = true;
    queue.clear();
    shutdown();
    if (!detached && h.on_close)
      h.on_close(code, std::move(reason), status);
  }
};

ws_client::ws_client(io_thread& io, handlers h, ws_client_options opts)
    : impl_(std::make_shared<impl>(io, std::move(h), std::move(opts))) {}

ws_client::~ws_client() {
  auto d = impl_;
  run_on(d->io, [d] {
    d->detached = true;
    d->shutdown();
  });
}

caf::error ws_client::connect(const std::string& url) {
  auto parts = parse_url(url);
  if (!parts || (parts->scheme != "ws" && parts->scheme != "wss"))
    return make_error(ec::invalid_argument,
                      "not a ws:// or wss:// URL: " + url);
  auto d = impl_;
  std::shared_ptr<ssl::context> tls;
  if (parts->scheme == "wss") {
    auto ctx = make_client_tls(d->opts.ca_file);
    if (!ctx)
      return ctx.error();
    tls = std::move(*ctx);
  }
  caf::error err;
  // On the I/O thread: the destructor and send() touch the streams there.
  run_on(d->io, [&] {
    if (d->plain_ws || d->tls_ws) {
      err = make_error(ec::invalid_argument, "ws_client: connect called twice");
      return;
    }
    d->url = *parts;
    if (tls) {
      d->tls = std::move(tls);
      d->tls_ws.emplace(d->resolver.get_executor(), *d->tls);
    } else {
      d->plain_ws.emplace(d->resolver.get_executor());
    }
    asio::post(d->resolver.get_executor(), [d] { d->start(); });
  });
  return err;
}

void ws_client::send(std::string text) {
  auto d = impl_;
  asio::post(d->resolver.get_executor(),
             [d, t = std::move(text)]() mutable { d->send(std::move(t)); });
}

void ws_client::close(uint16_t code, std::string reason) {
  auto d = impl_;
  asio::post(d->resolver.get_executor(),
             [d, code, r = std::move(reason)]() mutable {
               d->close(code, std::move(r));
             });
}

// -- http_request, http_stream -----------------------------------------------

namespace {

/// One blocking client connection (plain or TLS) with its own I/O context:
/// each operation runs the context until it completed; the TCP stream's
/// expiry bounds every wait.
struct client_conn {
  /// https only; declared before the I/O context so it outlives it.
  std::shared_ptr<ssl::context> ctx;
  asio::io_context ioc{1};
  std::optional<beast::tcp_stream> plain;
  std::optional<tls_stream> tls;
  url_parts url;
  std::string where;

  beast::tcp_stream& transport() {
    return tls ? beast::get_lowest_layer(*tls) : *plain;
  }

  /// Runs the operation `start(handler)` begins until it completes.
  template <class Start>
  beast::error_code run(Start&& start) {
    beast::error_code out = asio::error::operation_aborted;
    start([&out](beast::error_code e, auto&&...) { out = e; });
    ioc.restart();
    ioc.run();
    return out;
  }

  /// Calls `f` with the stream (plain or TLS) and returns its result.
  template <class F>
  auto with(F&& f) {
    return tls ? f(*tls) : f(*plain);
  }

  /// Resolves, connects and (https) runs the TLS handshake.
  caf::error open(const std::string& url_text, const std::string& ca_file,
                  std::chrono::milliseconds timeout) {
    auto parts = parse_url(url_text);
    if (!parts || (parts->scheme != "http" && parts->scheme != "https"))
      return make_error(ec::invalid_argument,
                        "not an http:// or https:// URL: " + url_text);
    url = *parts;
    where = url.host + ":" + std::to_string(url.port);
    if (url.scheme == "https") {
      auto c = make_client_tls(ca_file);
      if (!c)
        return c.error();
      ctx = std::move(*c);
      tls.emplace(ioc, *ctx);
    } else {
      plain.emplace(ioc);
    }
    tcp::resolver resolver{ioc};
    tcp::resolver::results_type results;
    auto e = run([&](auto h) {
      resolver.async_resolve(
          url.host, std::to_string(url.port),
          [&results, h](beast::error_code e,
                        tcp::resolver::results_type r) mutable {
            results = std::move(r);
            h(e);
          });
    });
    if (e)
      return make_error(ec::net_error,
                        "cannot resolve " + url.host + ": " + e.message());
    transport().expires_after(timeout);
    e = run([&](auto h) { transport().async_connect(results, h); });
    if (e)
      return to_error(e, "cannot connect to " + where);
    beast::error_code ignored;
    transport().socket().set_option(tcp::no_delay(true), ignored);
    if (!tls)
      return {};
    if (auto err = set_peer_name(*tls, url.host))
      return err;
    transport().expires_after(timeout);
    e = run([&](auto h) { tls->async_handshake(ssl::stream_base::client, h); });
    if (e)
      return tls_error(e, *tls, where);
    return {};
  }

  /// Sends the request.
  caf::error send(const std::string& method, std::string body,
                  const http_client_options& opts) {
    auto verb = http::string_to_verb(method);
    if (verb == http::verb::unknown)
      return make_error(ec::invalid_argument, "unknown HTTP method " + method);
    http::request<http::string_body> req{verb, url.target, 11};
    req.set(http::field::host, where);
    req.set(http::field::user_agent, "makima");
    for (auto& [k, v] : opts.headers)
      req.set(k, v);
    if (!body.empty() || verb == http::verb::post || verb == http::verb::put) {
      req.set(http::field::content_type, opts.content_type);
      req.body() = std::move(body);
    }
    req.keep_alive(false);
    req.prepare_payload();
    auto e = with([&](auto& s) {
      return run([&](auto h) { http::async_write(s, req, h); });
    });
    if (e)
      return to_error(e, "cannot send request to " + where);
    return {};
  }

  ~client_conn() {
    beast::error_code ignored;
    if (plain || tls)
      transport().socket().close(ignored);
  }
};

/// The status and lowercased headers of a response.
template <class Fields>
response head_of(unsigned status, const Fields& fields) {
  response out;
  out.status = status;
  for (const auto& f : fields) {
    std::string name{f.name_string()};
    for (auto& c : name)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.headers[name] = std::string{f.value()};
  }
  auto ct = out.headers.find("content-type");
  out.content_type = ct == out.headers.end() ? "" : ct->second;
  return out;
}

} // namespace

caf::expected<response> http_request(const std::string& method,
                                     const std::string& url, std::string body,
                                     http_client_options opts) {
  auto deadline = std::chrono::steady_clock::now() + opts.timeout;
  auto left = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
        std::max(deadline - std::chrono::steady_clock::now(),
                 std::chrono::steady_clock::duration::zero()));
  };
  if (http::string_to_verb(method) == http::verb::unknown)
    return make_error(ec::invalid_argument, "unknown HTTP method " + method);
  client_conn c;
  if (auto err = c.open(url, opts.ca_file, opts.timeout))
    return err;
  c.transport().expires_after(left());
  if (auto err = c.send(method, std::move(body), opts))
    return err;
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(opts.max_body_bytes);
  c.transport().expires_after(left());
  auto e = c.with([&](auto& s) {
    return c.run([&](auto h) { http::async_read(s, buf, parser, h); });
  });
  // A TLS server may end a body that runs until EOF (an event stream) by
  // closing without close_notify.
  if (e && is_truncation(e) && parser.is_header_done()
      && !parser.get().has_content_length() && !parser.chunked())
    parser.put_eof(e);
  if (e)
    return to_error(e, "no valid response from " + c.where);
  if (!parser.is_done())
    return make_error(ec::net_timeout, "no response from " + c.where);
  auto& res = parser.get();
  auto out = head_of(res.result_int(), res);
  out.body = std::move(res.body());
  return out;
}

caf::error http_stream(const std::string& method, const std::string& url,
                       const http_client_options& opts,
                       const std::function<bool(const response&)>& on_head,
                       const std::function<bool(const std::string&)>& on_data) {
  if (http::string_to_verb(method) == http::verb::unknown)
    return make_error(ec::invalid_argument, "unknown HTTP method " + method);
  client_conn c;
  if (auto err = c.open(url, opts.ca_file, opts.timeout))
    return err;
  c.transport().expires_after(opts.timeout);
  if (auto err = c.send(method, {}, opts))
    return err;
  beast::flat_buffer buf;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  c.transport().expires_after(opts.timeout);
  auto e = c.with([&](auto& s) {
    return c.run([&](auto h) { http::async_read_header(s, buf, parser, h); });
  });
  if (e)
    return to_error(e, "no valid response from " + c.where);
  if (!on_head(head_of(parser.get().result_int(), parser.get())))
    return {};
  std::vector<char> chunk(64 << 10);
  while (!parser.is_done()) {
    auto& body = parser.get().body();
    body.data = chunk.data();
    body.size = chunk.size();
    c.transport().expires_after(opts.timeout);
    e = c.with([&](auto& s) {
      return c.run([&](auto h) { http::async_read_some(s, buf, parser, h); });
    });
    auto n = chunk.size() - parser.get().body().size;
    if (n > 0 && !on_data(std::string(chunk.data(), n)))
      return {};
    if (e == http::error::need_buffer)
      continue;
    // A TLS server may end an event stream by closing without
    // close_notify; the body (until EOF) is complete.
    if (e && is_truncation(e) && !parser.get().has_content_length()
        && !parser.chunked())
      return {};
    if (e)
      return to_error(e, "the response from " + c.where + " broke off");
  }
  return {};
}

// -- sse_parser ---------------------------------------------------------------

void sse_parser::feed(const std::string& bytes,
                      const std::function<void(const sse_event&)>& f) {
  // One complete line (without its end) of the event stream.
  auto on_line = [&] {
    if (line_.empty()) { // blank line: dispatch
      if (has_data_)
        f(cur_);
      cur_.event = "message";
      cur_.data.clear();
      has_data_ = false;
      return;
    }
    if (line_[0] == ':') { // comment
      line_.clear();
      return;
    }
    auto colon = line_.find(':');
    auto field = line_.substr(0, colon);
    std::string value;
    if (colon != std::string::npos) {
      value = line_.substr(colon + 1);
      if (!value.empty() && value[0] == ' ')
        value.erase(0, 1);
    }
    line_.clear();
    if (field == "event") {
      cur_.event = value.empty() ? "message" : value;
    } else if (field == "data") {
      if (has_data_)
        cur_.data += '\n';
      cur_.data += value;
      has_data_ = true;
    } else if (field == "id") {
      if (value.find('\0') == std::string::npos)
        cur_.id = value;
    } // "retry" and unknown fields are ignored
  };
  for (char c : bytes) {
    if (after_cr_) {
      after_cr_ = false;
      if (c == '\n')
        continue; // the LF of a CRLF
    }
    if (c == '\r') {
      after_cr_ = true;
      on_line();
    } else if (c == '\n') {
      on_line();
    } else {
      line_ += c;
    }
  }
}

} // namespace makima::net
