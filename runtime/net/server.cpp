// net::server: HTTP/1.1 sessions (with an optional streaming response for
// server-sent events) and WebSocket sessions on one listener, over plain TCP
// or TLS (the sessions are templates on the stream type). One of the Beast
// translation units (see beast.hpp).
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <deque>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "runtime/net/beast.hpp"

namespace makima::net {

namespace {

/// The headers, lowercased; names seen more than once go to `repeated`.
header_map to_headers(const http::fields& fields,
                      std::vector<std::string>* repeated = nullptr) {
  header_map out;
  for (const auto& f : fields) {
    std::string name{f.name_string()};
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    if (repeated && out.count(name)
        && std::find(repeated->begin(), repeated->end(), name)
               == repeated->end())
      repeated->push_back(name);
    out[name] = std::string{f.value()};
  }
  return out;
}

std::string remote_of(const tcp::socket& s) {
  beast::error_code e;
  auto ep = s.remote_endpoint(e);
  if (e)
    return "?";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

std::string path_of(beast::string_view target) {
  auto s = std::string{target};
  return s.substr(0, s.find('?'));
}

} // namespace

struct session_base {
  virtual ~session_base() = default;
  /// Closes the socket; pending operations complete with errors. I/O thread.
  virtual void shutdown() = 0;
};

/// What server::send/close reach of a WebSocket session.
struct ws_session_base : session_base {
  /// Runs on executor(), like every member below.
  virtual void send(std::string text) = 0;
  virtual void close(uint16_t code, std::string reason) = 0;
  virtual asio::any_io_executor executor() = 0;
};

/// What an http_reply reaches of an HTTP session.
struct http_session_base : session_base {
  std::atomic<bool> alive{true};
  virtual void respond(response res) = 0;
  virtual void begin_stream(unsigned status, std::string ct,
                            header_map headers) = 0;
  virtual void stream_write(std::string bytes) = 0;
  virtual void stream_end() = 0;
  virtual void set_on_disconnect(std::function<void()> fn) = 0;
  virtual asio::any_io_executor executor() = 0;
};

struct server::impl : std::enable_shared_from_this<server::impl> {
  impl(io_thread& io, server_options opts, http_handler http, ws_handler ws)
      : io(io), opts(std::move(opts)), http(std::move(http)), ws(std::move(ws)),
        acceptor(asio::make_strand(io.get().ioc)),
        accept_timer(acceptor.get_executor()) {}

  io_thread& io;
  server_options opts;
  http_handler http;
  ws_handler ws;
  tcp::acceptor acceptor;
  /// Delays the next accept after EMFILE/ENFILE/ENOBUFS/ENOMEM: accepting
  /// again at once would fail again at once (a busy loop at 100 % CPU).
  asio::steady_timer accept_timer;
  /// The current delay (0 after a successful accept).
  std::chrono::milliseconds accept_backoff{0};
  /// Set by start() when TLS is configured.
  std::shared_ptr<ssl::context> tls;
  std::atomic<uint16_t> port{0};
  /// Set on the I/O thread by stop(); no callback runs afterwards.
  bool stopped = false;

  mutable std::mutex mtx;
  std::unordered_map<uint64_t, std::weak_ptr<session_base>> sessions;
  std::unordered_map<conn_id, std::weak_ptr<ws_session_base>> ws_sessions;
  uint64_t next_id = 1;
  server_stats st;

  template <class F>
  void count(F f) {
    std::lock_guard<std::mutex> guard{mtx};
    f(st);
  }

  uint64_t add(std::weak_ptr<session_base> s) {
    std::lock_guard<std::mutex> guard{mtx};
    auto id = next_id++;
    sessions.emplace(id, std::move(s));
    ++st.connections;
    return id;
  }

  void remove(uint64_t id) {
    std::lock_guard<std::mutex> guard{mtx};
    if (sessions.erase(id) > 0)
      --st.connections;
    ws_sessions.erase(id);
  }

  void do_accept();
  void on_accept(beast::error_code e, tcp::socket socket);
  /// Counts a failed accept; true when accepting should pause.
  bool accept_failed(beast::error_code e);
};

// -- WebSocket session --------------------------------------------------------

template <class Stream>
class ws_session : public ws_session_base,
                   public std::enable_shared_from_this<ws_session<Stream>> {
public:
  ws_session(std::shared_ptr<server::impl> srv, Stream&& stream,
             http::request<http::string_body> raw, request req, uint64_t id)
      : srv_(std::move(srv)), ws_(std::move(stream)), raw_(std::move(raw)),
        req_(std::move(req)), id_(id) {}

  using std::enable_shared_from_this<ws_session<Stream>>::shared_from_this;
  using std::enable_shared_from_this<ws_session<Stream>>::weak_from_this;

  ~ws_session() override { srv_->remove(id_); }

  void start() {
    ws_.set_option(
        websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws_.set_option(
        websocket::stream_base::decorator([](websocket::response_type& res) {
          res.set(http::field::server, "makima");
        }));
    ws_.read_message_max(srv_->opts.max_frame_bytes);
    ws_.async_accept(raw_, [self = shared_from_this()](beast::error_code e) {
      self->on_accept(e);
    });
  }

  void shutdown() override {
    beast::error_code ignored;
    beast::get_lowest_layer(ws_).socket().shutdown(tcp::socket::shutdown_both,
                                                   ignored);
    beast::get_lowest_layer(ws_).socket().close(ignored);
  }

  void send(std::string text) override {
    if (closing_ || finished_ || !opened_)
      return;
    queue_.push_back(std::move(text));
    if (!writing_)
      do_write();
  }

  void close(uint16_t code, std::string reason) override {
    if (closing_ || finished_ || !opened_)
      return;
    closing_ = true;
    close_ = websocket::close_reason{static_cast<websocket::close_code>(code),
                                     reason};
    if (!writing_)
      do_close();
  }

  asio::any_io_executor executor() override { return ws_.get_executor(); }

private:
  void on_accept(beast::error_code e) {
    if (e) {
      shutdown();
      return;
    }
    opened_ = true;
    {
      std::lock_guard<std::mutex> guard{srv_->mtx};
      srv_->ws_sessions.emplace(id_, weak_from_this());
      ++srv_->st.ws_opened;
    }
    raw_ = {};
    if (!srv_->stopped && srv_->ws.on_open)
      srv_->ws.on_open(id_, req_);
    do_read();
  }

  void do_read() {
    ws_.async_read(buf_,
                   [self = shared_from_this()](beast::error_code e, size_t) {
                     self->on_read(e);
                   });
  }

  void on_read(beast::error_code e) {
    if (e) {
      if (e == websocket::error::closed
          || (ws_.reason().code != websocket::close_code::none
              && e != websocket::error::message_too_big))
        finish(ws_.reason().code, std::string{ws_.reason().reason.c_str()});
      else if (e == websocket::error::message_too_big) {
        srv_->count([](server_stats& s) { ++s.ws_too_big; });
        finish(websocket::close_code::too_big, "message too big");
      } else if (e == asio::error::operation_aborted && sent_code_ != 0)
        finish(sent_code_, sent_reason_);
      else
        finish(websocket::close_code::abnormal, e.message());
      return;
    }
    if (!ws_.got_text()) {
      buf_.consume(buf_.size());
      queue_.clear();
      close(static_cast<uint16_t>(websocket::close_code::unknown_data),
            "binary messages are not supported");
      do_read();
      return;
    }
    auto text = beast::buffers_to_string(buf_.data());
    buf_.consume(buf_.size());
    if (!srv_->stopped && srv_->ws.on_text && !closing_)
      srv_->ws.on_text(id_, std::move(text));
    do_read();
  }

  void do_write() {
    writing_ = true;
    ws_.text(true);
    ws_.async_write(asio::buffer(queue_.front()),
                    [self = shared_from_this()](beast::error_code e, size_t) {
                      self->on_write(e);
                    });
  }

  void on_write(beast::error_code e) {
    writing_ = false;
    if (e) {
      // The pending read fails too (or reads the peer's close frame first);
      // it reports the close.
      queue_.clear();
      return;
    }
    queue_.pop_front();
    if (!queue_.empty())
      do_write();
    else if (closing_)
      do_close();
  }

  void do_close() {
    sent_code_ = close_.code;
    sent_reason_ = std::string{close_.reason.c_str()};
    ws_.async_close(close_, [self = shared_from_this()](beast::error_code e) {
      if (e)
        self->shutdown();
    });
  }

  void finish(uint16_t code, std::string reason) {
    if (finished_)
      return;
    finished_ = true;
    queue_.clear();
    shutdown();
    srv_->remove(id_);
    srv_->count([](server_stats& s) { ++s.ws_closed; });
    if (opened_ && !srv_->stopped && srv_->ws.on_close)
      srv_->ws.on_close(id_, code, std::move(reason));
  }

  std::shared_ptr<server::impl> srv_;
  websocket::stream<Stream> ws_;
  http::request<http::string_body> raw_;
  request req_;
  conn_id id_;
  beast::flat_buffer buf_;
  std::deque<std::string> queue_;
  websocket::close_reason close_;
  uint16_t sent_code_ = 0;
  std::string sent_reason_;
  bool opened_ = false;
  bool writing_ = false;
  bool closing_ = false;
  bool finished_ = false;
};

struct http_reply::state {
  std::shared_ptr<http_session_base> session;
  std::atomic<bool> answered{false};
  ~state();
};

// -- HTTP session -------------------------------------------------------------

/// A TCP stream, or a TLS stream over it when `tls` is set.
template <class Stream>
Stream make_stream(tcp::socket&& socket, ssl::context* tls);

template <>
beast::tcp_stream make_stream<beast::tcp_stream>(tcp::socket&& socket,
                                                 ssl::context*) {
  return beast::tcp_stream{std::move(socket)};
}

template <>
tls_stream make_stream<tls_stream>(tcp::socket&& socket, ssl::context* tls) {
  return tls_stream{std::move(socket), *tls};
}

/// Runs the server side of the TLS handshake (TLS streams only).
template <class Stream, class F>
void handshake(Stream&, F&& done) {
  done(beast::error_code{});
}

template <class F>
void handshake(tls_stream& s, F&& done) {
  s.async_handshake(ssl::stream_base::server, std::forward<F>(done));
}

template <class Stream>
class http_session : public http_session_base,
                     public std::enable_shared_from_this<http_session<Stream>> {
public:
  http_session(std::shared_ptr<server::impl> srv, tcp::socket&& socket)
      : srv_(std::move(srv)),
        stream_(make_stream<Stream>(std::move(socket), srv_->tls.get())) {}

  using std::enable_shared_from_this<http_session<Stream>>::shared_from_this;

  ~http_session() override {
    if (streaming_)
      srv_->count([](server_stats& s) { --s.streams; });
    srv_->remove(id_);
  }

  void start(uint64_t id) {
    id_ = id;
    remote_ = remote_of(tcp().socket());
    if (!std::is_same_v<Stream, tls_stream>) {
      read_header(srv_->opts.header_timeout);
      return;
    }
    // The handshake counts against the header timeout.
    tcp().expires_after(srv_->opts.header_timeout);
    handshake(stream_, [self = shared_from_this()](beast::error_code e) {
      if (e) {
        self->srv_->count([](server_stats& s) { ++s.tls_failures; });
        self->shutdown();
        return;
      }
      self->read_header(self->srv_->opts.header_timeout);
    });
  }

  void shutdown() override {
    if (upgraded_)
      return;
    beast::error_code ignored;
    tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    tcp().socket().close(ignored);
    disconnected();
  }

  asio::any_io_executor executor() override { return stream_.get_executor(); }

  // Called from http_reply (posted to executor()).
  void respond(response res) override {
    if (!alive)
      return;
    write_response(std::move(res), false);
  }

  void begin_stream(unsigned status, std::string ct,
                    header_map headers) override {
    if (!alive)
      return;
    streaming_ = true;
    srv_->count([](server_stats& s) { ++s.streams; });
    // The request is in; its parser and read buffer are not needed any
    // more (a stream may stay open for hours).
    parser_.reset();
    buf_ = beast::flat_buffer{};
    std::string head =
        "HTTP/1.1 " + std::to_string(status) + " "
        + std::string{http::obsolete_reason(static_cast<http::status>(status))}
        + "\r\nServer: makima\r\nContent-Type: " + ct
        + "\r\nCache-Control: no-cache\r\nConnection: close\r\n";
    for (auto& [k, v] : headers)
      head += k + ": " + v + "\r\n";
    head += "\r\n";
    tcp().expires_never();
    stream_write(std::move(head));
    // Detect the client going away: it sends nothing more, so any read
    // completion (EOF or error) means disconnect.
    stream_.async_read_some(
        asio::buffer(scratch_),
        [self = shared_from_this()](beast::error_code e, size_t) {
          self->shutdown();
        });
  }

  void stream_write(std::string bytes) override {
    if (!alive || !streaming_ || ending_)
      return;
    out_.push_back(std::move(bytes));
    if (!writing_)
      do_stream_write();
  }

  void stream_end() override {
    if (!streaming_ || ending_)
      return;
    ending_ = true;
    if (!writing_)
      shutdown();
  }

  void set_on_disconnect(std::function<void()> fn) override {
    if (!alive) {
      if (fn)
        fn();
      return;
    }
    on_disconnect_ = std::move(fn);
  }

private:
  beast::tcp_stream& tcp() { return beast::get_lowest_layer(stream_); }

  void disconnected() {
    if (!alive.exchange(false))
      return;
    if (streaming_) {
      if (!ending_)
        srv_->count([](server_stats& s) { ++s.streams_gone; });
      // Nothing queued can be sent any more; drop it now rather than when
      // the producer lets go of its http_reply. A write in flight still
      // uses the front chunk: it stays until that write completes.
      if (writing_) {
        while (out_.size() > 1)
          out_.pop_back();
      } else {
        out_.clear();
        out_.shrink_to_fit();
      }
    }
    if (auto fn = std::move(on_disconnect_); fn && !srv_->stopped)
      fn();
    on_disconnect_ = nullptr;
  }

  void do_stream_write() {
    writing_ = true;
    asio::async_write(stream_, asio::buffer(out_.front()),
                      [self = shared_from_this()](beast::error_code e, size_t) {
                        self->writing_ = false;
                        if (!self->out_.empty())
                          self->out_.pop_front();
                        if (e) {
                          self->shutdown();
                          return;
                        }
                        if (!self->out_.empty())
                          self->do_stream_write();
                        else if (self->ending_)
                          self->shutdown();
                      });
  }

  void read_header(std::chrono::milliseconds timeout) {
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(srv_->opts.max_header_bytes));
    parser_->body_limit(srv_->opts.max_body_bytes);
    tcp().expires_after(timeout);
    http::async_read_header(
        stream_, buf_, *parser_,
        [self = shared_from_this()](beast::error_code e, size_t) {
          self->on_header(e);
        });
  }

  // Returns true when `e` ended the session.
  bool failed(beast::error_code e) {
    if (!e)
      return false;
    if (e == http::error::body_limit) {
      srv_->count([](server_stats& s) { ++s.body_limit; });
      error_response(413, "payload_too_large", "request body too large");
    } else if (e == http::error::header_limit) {
      srv_->count([](server_stats& s) { ++s.header_limit; });
      error_response(431, "header_too_large", "request headers too large");
    } else if (e == beast::error::timeout) {
      if (buf_.size() > 0 || parser_->got_some())
        srv_->count([](server_stats& s) { ++s.header_timeouts; });
      shutdown();
    } else if (e.category()
                   == beast::error_code{http::error::end_of_stream}.category()
               && e != http::error::end_of_stream
               && e != http::error::partial_message) {
      srv_->count([](server_stats& s) { ++s.bad_requests; });
      error_response(400, "bad_request", "malformed HTTP request");
    } else {
      shutdown();
    }
    return true;
  }

  void error_response(unsigned status, const char* code, const char* msg) {
    response res;
    res.status = status;
    res.body = std::string{"{\"error\":{\"code\":\""} + code
               + "\",\"message\":\"" + msg + "\"}}";
    write_response(std::move(res), true);
  }

  void on_header(beast::error_code e) {
    if (failed(e))
      return;
    auto& req = parser_->get();
    if (websocket::is_upgrade(req)
        && path_of(req.target()) == srv_->opts.ws_path) {
      upgrade();
      return;
    }
    tcp().expires_after(srv_->opts.body_timeout);
    http::async_read(stream_, buf_, *parser_,
                     [self = shared_from_this()](beast::error_code e, size_t) {
                       self->on_body(e);
                     });
  }

  request make_request(const http::request<http::string_body>& req) {
    request out;
    out.method = std::string{req.method_string()};
    out.target = std::string{req.target()};
    out.headers = to_headers(req, &out.repeated_headers);
    out.body = req.body();
    out.remote = remote_;
    return out;
  }

  void upgrade() {
    auto raw = parser_->release();
    auto req = make_request(raw);
    if (srv_->stopped) {
      error_response(503, "unavailable", "server stopping");
      return;
    }
    if (srv_->ws.on_upgrade) {
      if (auto refused = srv_->ws.on_upgrade(req)) {
        srv_->count([](server_stats& s) { ++s.ws_refused; });
        write_response(std::move(*refused), true);
        return;
      }
    }
    tcp().expires_never();
    alive = false;
    upgraded_ = true;
    auto id = srv_->add({});
    auto ws = std::make_shared<ws_session<Stream>>(
        srv_, std::move(stream_), std::move(raw), std::move(req), id);
    {
      std::lock_guard<std::mutex> guard{srv_->mtx};
      srv_->sessions[id] = ws;
    }
    ws->start();
  }

  void on_body(beast::error_code e) {
    if (failed(e))
      return;
    tcp().expires_never();
    auto raw = parser_->release();
    keep_alive_ = raw.keep_alive();
    auto req = make_request(raw);
    srv_->count([](server_stats& s) { ++s.http_requests; });
    if (srv_->stopped || !srv_->http) {
      error_response(503, "unavailable", "server stopping");
      return;
    }
    auto st = std::make_shared<http_reply::state>();
    st->session = shared_from_this();
    try {
      srv_->http(std::move(req), http_reply{std::move(st)});
    } catch (...) {
      // The reply state's destructor answers 500 if nothing was sent.
    }
  }

  void write_response(response res, bool close) {
    auto r = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(res.status), 11);
    r->set(http::field::server, "makima");
    r->set(http::field::content_type, res.content_type);
    for (auto& [k, v] : res.headers)
      r->set(k, v);
    r->body() = std::move(res.body);
    r->keep_alive(keep_alive_ && !close);
    r->prepare_payload();
    tcp().expires_after(srv_->opts.body_timeout);
    http::async_write(
        stream_, *r,
        [self = shared_from_this(), r](beast::error_code e, size_t) {
          if (e) {
            self->shutdown();
            return;
          }
          if (!r->keep_alive()) {
            self->linger_close();
            return;
          }
          self->read_header(self->srv_->opts.idle_timeout);
        });
  }

  // Closes after a response without dropping it: a client may still be
  // sending (a 413 is sent while the body arrives), and closing a socket
  // with unread data makes the kernel answer with RST, which can destroy
  // the response before the client read it (RFC 9112 §9.6). So: send FIN,
  // read and discard until the client closes or 2 s passed, then close.
  // Over TLS the stream is simply shut down.
  void linger_close() {
    if constexpr (std::is_same_v<Stream, tls_stream>) {
      shutdown();
    } else {
      beast::error_code ignored;
      tcp().socket().shutdown(tcp::socket::shutdown_send, ignored);
      tcp().expires_after(std::chrono::seconds(2));
      drain();
    }
  }

  void drain() {
    if (!drain_buf_)
      drain_buf_ = std::make_unique<std::array<char, 16384>>();
    tcp().async_read_some(
        asio::buffer(*drain_buf_),
        [self = shared_from_this()](beast::error_code e, size_t) {
          if (e)
            self->shutdown();
          else
            self->drain();
        });
  }

  std::shared_ptr<server::impl> srv_;
  Stream stream_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  uint64_t id_ = 0;
  std::string remote_;
  bool keep_alive_ = false;
  bool streaming_ = false;
  bool writing_ = false;
  bool ending_ = false;
  /// The stream moved into a ws_session.
  bool upgraded_ = false;
  std::deque<std::string> out_;
  std::array<char, 256> scratch_;
  /// Allocated by linger_close only (most sessions never need it).
  std::unique_ptr<std::array<char, 16384>> drain_buf_;
  std::function<void()> on_disconnect_;
};

// -- http_reply ---------------------------------------------------------------

http_reply::state::~state() {
  {
    if (!answered && session) {
      auto s = session;
      asio::post(s->executor(), [s] {
        response res;
        res.status = 500;
        res.body = "{\"error\":{\"code\":\"internal\",\"message\":\"no "
                   "response\"}}";
        s->respond(std::move(res));
      });
    }
  }
}

void http_reply::send(response res) const {
  if (st_->answered.exchange(true))
    return;
  auto s = st_->session;
  asio::post(s->executor(), [s, res = std::move(res)]() mutable {
    s->respond(std::move(res));
  });
}

void http_reply::begin_stream(unsigned status, std::string content_type,
                              header_map headers) const {
  if (st_->answered.exchange(true))
    return;
  auto s = st_->session;
  asio::post(s->executor(), [s, status, ct = std::move(content_type),
                             h = std::move(headers)]() mutable {
    s->begin_stream(status, std::move(ct), std::move(h));
  });
}

void http_reply::write(std::string bytes) const {
  auto s = st_->session;
  asio::post(s->executor(), [s, b = std::move(bytes)]() mutable {
    s->stream_write(std::move(b));
  });
}

void http_reply::end() const {
  auto s = st_->session;
  asio::post(s->executor(), [s] { s->stream_end(); });
}

void http_reply::on_disconnect(std::function<void()> fn) const {
  auto s = st_->session;
  asio::post(s->executor(), [s, fn = std::move(fn)]() mutable {
    s->set_on_disconnect(std::move(fn));
  });
}

bool http_reply::open() const {
  return st_->session->alive;
}

// -- server -------------------------------------------------------------------

void server::impl::do_accept() {
  acceptor.async_accept(
      asio::make_strand(io.get().ioc),
      [self = shared_from_this()](beast::error_code e, tcp::socket s) {
        self->on_accept(e, std::move(s));
      });
}

bool server::impl::accept_failed(beast::error_code e) {
  bool sys = e.category() == asio::error::get_system_category();
  int v = sys ? e.value() : 0;
  bool pause = true;
  count([&](server_stats& s) {
    if (v == EMFILE)
      ++s.accept_emfile;
    else if (v == ENFILE)
      ++s.accept_enfile;
    else if (v == ENOBUFS)
      ++s.accept_enobufs;
    else if (v == ENOMEM)
      ++s.accept_enomem;
    else {
      // ECONNABORTED, EPROTO…: that one connection failed; go on.
      ++s.accept_other;
      pause = false;
    }
  });
  return pause;
}

void server::impl::on_accept(beast::error_code e, tcp::socket socket) {
  if (stopped || e == asio::error::operation_aborted)
    return;
  if (e && accept_failed(e)) {
    // Out of descriptors or memory: the pending connection stays in the
    // listen backlog; try again later, existing connections are served
    // meanwhile.
    accept_backoff =
        accept_backoff.count() == 0
            ? std::chrono::milliseconds{50}
            : std::min(accept_backoff * 2, std::chrono::milliseconds{1000});
    accept_timer.expires_after(accept_backoff);
    accept_timer.async_wait([self = shared_from_this()](beast::error_code e) {
      if (!e && !self->stopped)
        self->do_accept();
    });
    return;
  }
  if (!e) {
    accept_backoff = std::chrono::milliseconds{0};
    // Responses and frames are small and latency-bound: no Nagle.
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    if (tls) {
      auto s = std::make_shared<http_session<tls_stream>>(shared_from_this(),
                                                          std::move(socket));
      s->start(add(s));
    } else {
      auto s = std::make_shared<http_session<beast::tcp_stream>>(
          shared_from_this(), std::move(socket));
      s->start(add(s));
    }
  }
  do_accept();
}

server::server(io_thread& io, server_options opts, http_handler http,
               ws_handler ws)
    : impl_(std::make_shared<impl>(io, std::move(opts), std::move(http),
                                   std::move(ws))) {}

server::~server() {
  stop();
}

caf::expected<uint16_t> server::start() {
  caf::error err;
  auto& d = *impl_;
  if (!d.opts.tls_cert_file.empty() || !d.opts.tls_key_file.empty()) {
    auto ctx = make_server_tls(d.opts.tls_cert_file, d.opts.tls_key_file);
    if (!ctx)
      return ctx.error();
    d.tls = std::move(*ctx);
  }
  run_on(d.io, [&] {
    beast::error_code e;
    auto addr = asio::ip::make_address(d.opts.host, e);
    if (e) {
      err = make_error(ec::invalid_argument,
                       "invalid listen address: " + d.opts.host);
      return;
    }
    tcp::endpoint ep{addr, d.opts.port};
    auto where = d.opts.host + ":" + std::to_string(d.opts.port);
    d.acceptor.open(ep.protocol(), e);
    if (!e)
      d.acceptor.set_option(asio::socket_base::reuse_address(true), e);
    if (!e)
      d.acceptor.bind(ep, e);
    if (!e)
      d.acceptor.listen(asio::socket_base::max_listen_connections, e);
    if (e) {
      err = to_error(e, "cannot listen on " + where);
      return;
    }
    d.port = d.acceptor.local_endpoint(e).port();
    d.do_accept();
  });
  if (err)
    return err;
  return d.port.load();
}

uint16_t server::port() const {
  return impl_->port;
}

void server::stop() {
  auto d = impl_;
  run_on(d->io, [d] {
    if (d->stopped)
      return;
    d->stopped = true;
    beast::error_code ignored;
    d->acceptor.close(ignored);
    d->accept_timer.cancel();
    std::vector<std::shared_ptr<session_base>> all;
    {
      std::lock_guard<std::mutex> guard{d->mtx};
      for (auto& [id, w] : d->sessions)
        if (auto s = w.lock())
          all.push_back(std::move(s));
    }
    for (auto& s : all)
      s->shutdown();
  });
}

namespace {

// The live WebSocket session `id` of `impl`, or null when it is gone.
template <class Impl>
std::shared_ptr<ws_session_base> find_session(Impl& impl, conn_id id) {
  std::lock_guard<std::mutex> guard{impl.mtx};
  auto i = impl.ws_sessions.find(id);
  return i != impl.ws_sessions.end() ? i->second.lock() : nullptr;
}

} // namespace

void server::send(conn_id id, std::string text) {
  auto s = find_session(*impl_, id);
  if (s)
    asio::post(s->executor(),
               [s, t = std::move(text)]() mutable { s->send(std::move(t)); });
}

void server::close(conn_id id, uint16_t code, std::string reason) {
  auto s = find_session(*impl_, id);
  if (s)
    asio::post(s->executor(), [s, code, r = std::move(reason)]() mutable {
      s->close(code, std::move(r));
    });
}

server_stats server::stats() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  return impl_->st;
}

} // namespace makima::net
