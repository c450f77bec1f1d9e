// Private to runtime/net/*.cpp: the Boost headers and helpers shared by
// server.cpp and client.cpp. Never include this from a header.
#pragma once

#include <array>
#include <chrono>
#include <memory>
#include <thread>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "runtime/error.hpp"
#include "runtime/net/net.hpp"

namespace boost::beast {

/// The WebSocket teardown of a plain TCP stream, replacing Beast 1.74's
/// (websocket/impl/teardown.hpp), which stops draining after one read: it
/// tests its coroutine's own `bytes_transferred` (0 on the first call and
/// after every wait) instead of what `read_some` returned. It then closes a
/// socket with the peer's data still arriving, the kernel answers with RST,
/// and a peer still writing (an over-size frame, answered with close 1009)
/// can lose the close frame and see 1006. This one shuts down the sending
/// side (server role), reads and discards until the peer closes, at most
/// 2 s, then closes. More specialized than Beast's template for
/// basic_stream, so the websocket stream's ADL call picks it.
template <class TeardownHandler>
void async_teardown(role_type role, tcp_stream& stream,
                    TeardownHandler&& handler) {
  namespace net = boost::asio;
  if (role == role_type::server) {
    error_code ignored;
    stream.socket().shutdown(net::socket_base::shutdown_send, ignored);
  }
  stream.expires_after(std::chrono::seconds(2));
  auto buf = std::make_shared<std::array<char, 4096>>();
  net::async_compose<TeardownHandler, void(error_code)>(
      [&stream, buf, role, started = false](auto& self, error_code ec = {},
                                            std::size_t = 0) mutable {
        if (started && ec) {
          error_code ignored;
          if (role == role_type::client)
            stream.socket().shutdown(net::socket_base::shutdown_send, ignored);
          stream.socket().close(ignored);
          stream.expires_never();
          if (ec == net::error::eof)
            ec = {};
          self.complete(ec);
          return;
        }
        started = true;
        stream.async_read_some(net::buffer(*buf), std::move(self));
      },
      handler, stream);
}

} // namespace boost::beast

namespace makima::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
/// A TLS connection (https, wss) over a Beast TCP stream.
using tls_stream = beast::ssl_stream<beast::tcp_stream>;

struct io_thread::impl {
  asio::io_context ioc{1};
  asio::executor_work_guard<asio::io_context::executor_type> work{
      ioc.get_executor()};
  std::thread thread;
  std::thread::id id;
};

/// Runs `fn` on the I/O thread and waits for it (runs inline when already
/// there or when the I/O thread is gone).
void run_on(io_thread& io, std::function<void()> fn);

/// Converts a Beast/Asio error at the boundary.
inline caf::error to_error(const beast::error_code& e,
                           const std::string& what) {
  if (e == beast::error::timeout)
    return make_error(ec::net_timeout, what + ": timed out");
  if (e.category() == beast::error_code{http::error::end_of_stream}.category()
      || e.category() == beast::error_code{websocket::error::closed}.category())
    return make_error(ec::protocol_error, what + ": " + e.message());
  return make_error(ec::net_error, what + ": " + e.message());
}

// -- TLS (tls.cpp) ---------------------------------------------------------

/// A server context with the PEM certificate chain and key; ec::invalid_config
/// naming the file when one cannot be read or they do not match. Messages
/// never contain key material.
caf::expected<std::shared_ptr<ssl::context>>
make_server_tls(const std::string& cert_file, const std::string& key_file);

/// A client context that verifies the peer against `ca_file` (PEM bundle;
/// empty = the system's default paths); ec::invalid_config when unreadable.
caf::expected<std::shared_ptr<ssl::context>>
make_client_tls(const std::string& ca_file);

/// Before the client handshake: sends SNI (for names, not IP addresses)
/// and makes OpenSSL check that the certificate matches `host`.
caf::error set_peer_name(tls_stream& s, const std::string& host);

/// The error of a failed TLS handshake with `where`, naming the
/// certificate verification failure when there was one (ec::net_error).
caf::error tls_error(const beast::error_code& e, tls_stream& s,
                     const std::string& where);

/// Whether `e` ends a TLS stream without close_notify (the server closed
/// an event stream): read as the end of the body.
bool is_truncation(const beast::error_code& e);

} // namespace makima::net
