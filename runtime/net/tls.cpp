// TLS contexts and certificate checks shared by net::server (https, wss
// listener) and the clients (ws_client for wss://, http_request and
// http_stream for https://). OpenSSL through Boost.Asio's ssl layer.
#include <cerrno>
#include <cstring>
#include <fstream>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "runtime/net/beast.hpp"

namespace makima::net {

namespace {

// The reason of the last OpenSSL error (no file contents, no key bytes).
std::string openssl_reason(const beast::error_code& e) {
  auto msg = e.message();
  return msg.empty() ? "invalid PEM data" : msg;
}

// A clear error when `path` cannot be opened for reading.
caf::error check_readable(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return make_error(ec::invalid_config, std::string{"cannot read "} + what
                                              + " " + path + ": "
                                              + std::strerror(errno));
  return {};
}

} // namespace

caf::expected<std::shared_ptr<ssl::context>>
make_server_tls(const std::string& cert_file, const std::string& key_file) {
  if (cert_file.empty() || key_file.empty())
    return make_error(ec::invalid_config,
                      "TLS needs both a certificate and a key file");
  if (auto err = check_readable(cert_file, "TLS certificate"))
    return err;
  if (auto err = check_readable(key_file, "TLS key"))
    return err;
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2
                   | ssl::context::no_sslv3 | ssl::context::no_tlsv1
                   | ssl::context::no_tlsv1_1);
  beast::error_code e;
  ctx->use_certificate_chain_file(cert_file, e);
  if (e)
    return make_error(ec::invalid_config, "cannot use TLS certificate "
                                              + cert_file + ": "
                                              + openssl_reason(e));
  ctx->use_private_key_file(key_file, ssl::context::pem, e);
  if (e)
    return make_error(ec::invalid_config, "cannot use TLS key " + key_file
                                              + ": " + openssl_reason(e));
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    ERR_clear_error();
    return make_error(ec::invalid_config, "TLS key " + key_file
                                              + " does not match certificate "
                                              + cert_file);
  }
  return ctx;
}

caf::expected<std::shared_ptr<ssl::context>>
make_client_tls(const std::string& ca_file) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2
                   | ssl::context::no_sslv3 | ssl::context::no_tlsv1
                   | ssl::context::no_tlsv1_1);
  ctx->set_verify_mode(ssl::verify_peer);
  beast::error_code e;
  if (ca_file.empty()) {
    ctx->set_default_verify_paths(e);
    if (e)
      return make_error(ec::invalid_config,
                        "cannot load the system CA certificates: "
                            + openssl_reason(e));
    return ctx;
  }
  if (auto err = check_readable(ca_file, "CA file"))
    return err;
  ctx->load_verify_file(ca_file, e);
  if (e)
    return make_error(ec::invalid_config, "cannot use CA file " + ca_file + ": "
                                              + openssl_reason(e));
  return ctx;
}

caf::error set_peer_name(tls_stream& s, const std::string& host) {
  auto* ssl = s.native_handle();
  auto* param = SSL_get0_param(ssl);
  beast::error_code e;
  auto addr = asio::ip::make_address(host, e);
  bool ok;
  if (!e) {
    // IP addresses: no SNI (RFC 6066), match an IP SAN.
    ok = X509_VERIFY_PARAM_set1_ip_asc(param, addr.to_string().c_str()) == 1;
  } else {
    X509_VERIFY_PARAM_set_hostflags(param,
                                    X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    ok = X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size()) == 1
         && SSL_set_tlsext_host_name(ssl, host.c_str()) == 1;
  }
  if (!ok) {
    ERR_clear_error();
    return make_error(ec::invalid_argument, "invalid TLS host name " + host);
  }
  return {};
}

caf::error tls_error(const beast::error_code& e, tls_stream& s,
                     const std::string& where) {
  if (e == beast::error::timeout)
    return make_error(ec::net_timeout,
                      "TLS handshake with " + where + ": timed out");
  auto verify = SSL_get_verify_result(s.native_handle());
  if (verify != X509_V_OK)
    return make_error(ec::net_error,
                      "TLS handshake with " + where
                          + " failed: certificate verification failed: "
                          + X509_verify_cert_error_string(verify));
  return make_error(ec::net_error,
                    "TLS handshake with " + where + " failed: " + e.message());
}

bool is_truncation(const beast::error_code& e) {
  return e == ssl::error::stream_truncated;
}

} // namespace makima::net
