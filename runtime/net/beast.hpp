// Private to runtime/net/*.cpp: the Boost headers and helpers shared by
// server.cpp and client.cpp. Never include this from a header.
#pragma once

#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include "runtime/error.hpp"
#include "runtime/net/net.hpp"

namespace makima::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

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
inline caf::error to_error(const beast::error_code& e, const std::string& what) {
  if (e == beast::error::timeout)
    return make_error(ec::net_timeout, what + ": timed out");
  if (e.category() == beast::error_code{http::error::end_of_stream}.category()
      || e.category() == beast::error_code{websocket::error::closed}.category())
    return make_error(ec::protocol_error, what + ": " + e.message());
  return make_error(ec::net_error, what + ": " + e.message());
}

} // namespace makima::net
