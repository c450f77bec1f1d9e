// net::io_thread, net::ws_client, net::request, parse_url. One of the
// two Beast translation units (see beast.hpp).
#include <deque>
#include <future>

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

// -- ws_client ----------------------------------------------------------------

struct ws_client::impl : std::enable_shared_from_this<ws_client::impl> {
  impl(io_thread& io, handlers h, ws_client_options opts)
    : io(io),
      h(std::move(h)),
      opts(std::move(opts)),
      resolver(asio::make_strand(io.get().ioc)),
      ws(resolver.get_executor()) {
  }

  io_thread& io;
  handlers h;
  ws_client_options opts;
  tcp::resolver resolver;
  websocket::stream<beast::tcp_stream> ws;
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
    beast::get_lowest_layer(ws).expires_after(opts.connect_timeout);
    beast::get_lowest_layer(ws).async_connect(
        results, [self = shared_from_this()](beast::error_code e,
                                             const tcp::endpoint&) {
          self->on_connect(e);
        });
  }

  void on_connect(beast::error_code e) {
    if (e)
      return finish(websocket::close_code::abnormal,
                    describe(to_error(e, "cannot connect to " + url.host + ":"
                                             + std::to_string(url.port))),
                    0);
    auto headers = opts.headers;
    ws.set_option(websocket::stream_base::decorator(
        [headers](websocket::request_type& req) {
          req.set(http::field::user_agent, "makima");
          for (auto& [k, v] : headers)
            req.set(k, v);
        }));
    ws.read_message_max(opts.max_frame_bytes);
    ws.async_handshake(res, url.host + ":" + std::to_string(url.port),
                       url.target,
                       [self = shared_from_this()](beast::error_code e) {
                         self->on_handshake(e);
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
    beast::get_lowest_layer(ws).expires_never();
    ws.set_option(
        websocket::stream_base::timeout::suggested(beast::role_type::client));
    opened = true;
    if (!detached && h.on_open)
      h.on_open();
    do_read();
  }

  void do_read() {
    ws.async_read(buf, [self = shared_from_this()](beast::error_code e,
                                                   size_t) {
      self->on_read(e);
    });
  }

  void on_read(beast::error_code e) {
    if (e) {
      // A close frame may have arrived before the transport failed (e.g.
      // the peer closed at once after a 1009): report its code.
      if (e == websocket::error::closed
          || ws.reason().code != websocket::close_code::none)
        finish(ws.reason().code, std::string{ws.reason().reason.c_str()}, 0);
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
  }

  void close(uint16_t code, std::string reason) {
    if (!opened || closing || finished)
      return;
    closing = true;
    close_ = websocket::close_reason{static_cast<websocket::close_code>(code), reason};
    if (!writing)
      do_close();
  }

  void do_close() {
    sent_code = close_.code;
    sent_reason = std::string{close_.reason.c_str()};
    ws.async_close(close_, [self = shared_from_this()](beast::error_code e) {
      if (e)
        self->shutdown();
    });
  }

  void shutdown() {
    beast::error_code ignored;
    resolver.cancel();
    auto& sock = beast::get_lowest_layer(ws).socket();
    sock.shutdown(tcp::socket::shutdown_both, ignored);
    sock.close(ignored);
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
  : impl_(std::make_shared<impl>(io, std::move(h), std::move(opts))) {
}

ws_client::~ws_client() {
  auto d = impl_;
  run_on(d->io, [d] {
    d->detached = true;
    d->shutdown();
  });
}

caf::error ws_client::connect(const std::string& url) {
  auto parts = parse_url(url);
  if (!parts || parts->scheme != "ws")
    return make_error(ec::invalid_argument,
                      "not a ws:// URL (wss is not supported yet): " + url);
  auto d = impl_;
  d->url = *parts;
  asio::post(d->ws.get_executor(), [d] { d->start(); });
  return {};
}

void ws_client::send(std::string text) {
  auto d = impl_;
  asio::post(d->ws.get_executor(),
             [d, t = std::move(text)]() mutable { d->send(std::move(t)); });
}

void ws_client::close(uint16_t code, std::string reason) {
  auto d = impl_;
  asio::post(d->ws.get_executor(), [d, code, r = std::move(reason)]() mutable {
    d->close(code, std::move(r));
  });
}

// -- request -------------------------------------------------------------

caf::expected<response> http_request(const std::string& method,
                                          const std::string& url,
                                          std::string body,
                                          http_client_options opts) {
  auto parts = parse_url(url);
  if (!parts || parts->scheme != "http")
    return make_error(ec::invalid_argument,
                      "not an http:// URL (https is not supported yet): "
                          + url);
  auto verb = http::string_to_verb(method);
  if (verb == http::verb::unknown)
    return make_error(ec::invalid_argument, "unknown HTTP method " + method);
  auto where = parts->host + ":" + std::to_string(parts->port);
  asio::io_context ioc{1};
  tcp::resolver resolver{ioc};
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buf;
  http::request<http::string_body> req{verb, parts->target, 11};
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
  http::response_parser<http::string_body> parser;
  parser.body_limit(opts.max_body_bytes);
  caf::error err;
  auto deadline = std::chrono::steady_clock::now() + opts.timeout;
  resolver.async_resolve(
      parts->host, std::to_string(parts->port),
      [&](beast::error_code e, tcp::resolver::results_type results) {
        if (e) {
          err = to_error(e, "cannot resolve " + parts->host);
          return;
        }
        stream.expires_at(deadline);
        stream.async_connect(results, [&](beast::error_code e,
                                          const tcp::endpoint&) {
          if (e) {
            err = to_error(e, "cannot connect to " + where);
            return;
          }
          http::async_write(stream, req, [&](beast::error_code e, size_t) {
            if (e) {
              err = to_error(e, "cannot send request to " + where);
              return;
            }
            http::async_read(stream, buf, parser,
                             [&](beast::error_code e, size_t) {
                               if (e)
                                 err = to_error(e, "no valid response from "
                                                       + where);
                             });
          });
        });
      });
  ioc.run_for(opts.timeout + std::chrono::seconds(5));
  if (err)
    return err;
  if (!parser.is_done())
    return make_error(ec::net_timeout, "no response from " + where);
  auto& res = parser.get();
  response out;
  out.status = res.result_int();
  for (const auto& f : res) {
    std::string name{f.name_string()};
    for (auto& c : name)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out.headers[name] = std::string{f.value()};
  }
  auto ct = out.headers.find("content-type");
  out.content_type = ct == out.headers.end() ? "" : ct->second;
  out.body = std::move(res.body());
  return out;
}

} // namespace makima::net
