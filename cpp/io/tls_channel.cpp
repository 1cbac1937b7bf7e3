#include "io/tls_channel.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <poll.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace pie {

namespace {

using Clock = std::chrono::steady_clock;

/// Drains OpenSSL's (per-thread) error queue into one line.
std::string ssl_errors() {
  std::string out;
  char buf[256];
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? std::string("no detail from OpenSSL") : out;
}

/// Keys must be unencrypted files: OpenSSL's default would prompt on the
/// terminal for a pass phrase, which a library must never do.
int refuse_passphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*userdata*/) { return 0; }

struct CtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using CtxPtr = std::unique_ptr<SSL_CTX, CtxFree>;

CtxPtr new_context(const SSL_METHOD* method) {
  ERR_clear_error();
  CtxPtr ctx(SSL_CTX_new(method));
  if (!ctx) throw TlsError("cannot create a TLS context: " + ssl_errors());
  if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1) {
    throw TlsError("this OpenSSL cannot restrict TLS to version 1.3: " + ssl_errors());
  }
  SSL_CTX_set_default_passwd_cb(ctx.get(), refuse_passphrase);
  // Bulk sends are written record by record and retried with what is left.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE);
  // Every connection runs a full handshake: nothing to resume, nothing cached.
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  return ctx;
}

void load_identity(SSL_CTX* ctx, const std::string& cert, const std::string& key) {
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    throw TlsError("cannot load the certificate chain '" + cert + "': " + ssl_errors());
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    throw TlsError("cannot load the private key '" + key +
                   "' (PEM, not encrypted): " + ssl_errors());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    throw TlsError("the private key '" + key + "' does not match the certificate '" + cert +
                   "': " + ssl_errors());
  }
}

void load_trust(SSL_CTX* ctx, const std::string& ca_file) {
  if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
    throw TlsError("cannot load the CA file '" + ca_file + "': " + ssl_errors());
  }
}

bool is_ip_literal(const std::string& name) {
  in_addr v4{};
  in6_addr v6{};
  return inet_pton(AF_INET, name.c_str(), &v4) == 1 || inet_pton(AF_INET6, name.c_str(), &v6) == 1;
}

std::chrono::milliseconds until(Clock::time_point deadline) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
}

}  // namespace

// ---------------------------------------------------------------- TlsChannel

TlsChannel::TlsChannel(std::unique_ptr<TcpChannel> tcp, ssl_st* ssl)
    : tcp_(std::move(tcp)), ssl_(ssl) {
  if (SSL_set_fd(ssl_, tcp_->fd()) != 1) {
    const std::string detail = ssl_errors();
    SSL_free(ssl_);
    throw TlsError("cannot attach TLS to the socket: " + detail);
  }
}

TlsChannel::~TlsChannel() {
  close();
  SSL_free(ssl_);
}

std::unique_ptr<TlsChannel> TlsChannel::connect(const std::string& host, std::uint16_t port,
                                                const TlsClientOptions& options,
                                                std::chrono::milliseconds timeout) {
  if (options.ca_file.empty()) {
    throw std::invalid_argument("a CA file is required to verify the server's certificate");
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    throw std::invalid_argument("a client certificate needs its private key, and vice versa");
  }
  const auto deadline = Clock::now() + timeout;
  CtxPtr ctx = new_context(TLS_client_method());
  load_trust(ctx.get(), options.ca_file);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (!options.cert_file.empty()) load_identity(ctx.get(), options.cert_file, options.key_file);

  auto tcp = TcpChannel::connect(host, port, timeout);
  SSL* ssl = SSL_new(ctx.get());  // keeps its own reference to ctx
  if (ssl == nullptr) throw TlsError("cannot create a TLS session: " + ssl_errors());
  std::unique_ptr<TlsChannel> ch(new TlsChannel(std::move(tcp), ssl));
  SSL_set_connect_state(ssl);

  const std::string& name = options.server_name.empty() ? host : options.server_name;
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  if (is_ip_literal(name)) {
    // An address is matched against the certificate's IP entries; SNI
    // carries host names only.
    if (X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str()) != 1) {
      throw TlsError("cannot set the expected server address '" + name + "': " + ssl_errors());
    }
  } else if (SSL_set1_host(ssl, name.c_str()) != 1 ||
             SSL_set_tlsext_host_name(ssl, name.c_str()) != 1) {
    throw TlsError("cannot set the expected server name '" + name + "': " + ssl_errors());
  }

  const auto left = until(deadline);
  if (left.count() <= 0) {
    throw ChannelTimeoutError("connecting to " + host + ":" + std::to_string(port) +
                              " timed out after " + std::to_string(timeout.count()) + " ms");
  }
  ch->handshake(left);
  return ch;
}

void TlsChannel::handshake(std::chrono::milliseconds budget) {
  if (handshake_done_) return;
  if (failed_) throw ChannelError("TLS channel with " + peer() + " failed earlier");
  if (tcp_->fd() < 0) throw ChannelError("TLS handshake on a closed channel");
  const auto deadline = Clock::now() + budget;
  for (;;) {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) break;
    on_ssl_result(r, deadline, "TLS handshake");
  }
  handshake_done_ = true;
}

void TlsChannel::on_ssl_result(int result, Clock::time_point deadline, const char* what) {
  const int saved_errno = errno;
  const int err = SSL_get_error(ssl_, result);
  const std::string context = std::string(what) + " with " + peer();
  switch (err) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: {
      const short events = err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
      const auto left = until(deadline);
      if (left.count() <= 0 || !wait_socket(tcp_->fd(), events, left)) {
        throw ChannelTimeoutError(context + " made no progress within the deadline");
      }
      return;
    }
    case SSL_ERROR_ZERO_RETURN:
      throw PeerClosedError(context + ": the peer closed the TLS session");
    case SSL_ERROR_SYSCALL:
      failed_ = true;
      ERR_clear_error();
      if (saved_errno == 0 || saved_errno == EPIPE || saved_errno == ECONNRESET) {
        throw PeerClosedError(context + ": the peer closed the connection");
      }
      throw ChannelError(context + " failed: " + std::strerror(saved_errno));
    default:
      break;
  }
  failed_ = true;
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
  const unsigned long first = ERR_peek_error();
  if (ERR_GET_LIB(first) == ERR_LIB_SSL &&
      ERR_GET_REASON(first) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    // Exact-size reads make a truncated stream fail anyway; report it as
    // the peer going away, like the plain transports do.
    ERR_clear_error();
    throw PeerClosedError(context + ": the peer closed the connection without a TLS close_notify");
  }
#endif
  std::string detail = ssl_errors();
  const long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) {
    detail += std::string(" (certificate verification: ") +
              X509_verify_cert_error_string(verify) + ")";
  }
  throw TlsError(context + " failed: " + detail);
}

void TlsChannel::close() {
  if (tcp_->fd() < 0) return;
  if (handshake_done_ && !failed_) {
    // One non-blocking attempt at close_notify, so the peer sees an orderly
    // end; a peer that is gone or a full socket buffer is not an error here.
    ERR_clear_error();
    SSL_shutdown(ssl_);
    ERR_clear_error();
  }
  tcp_->close();
}

// OpenSSL writes to the socket with write(2), not send(MSG_NOSIGNAL): a peer
// that vanished raises SIGPIPE, which the Python interpreter ignores, so it
// surfaces here as EPIPE (PeerClosedError).
void TlsChannel::write_all(const std::uint8_t* data, std::size_t n) {
  if (tcp_->fd() < 0) throw ChannelError("send on a closed channel");
  handshake(timeout());
  while (n > 0) {
    ERR_clear_error();
    std::size_t written = 0;
    const int r = SSL_write_ex(ssl_, data, n, &written);
    if (r == 1) {
      data += written;
      n -= written;
      continue;
    }
    on_ssl_result(r, Clock::now() + timeout(), "TLS send");
  }
}

void TlsChannel::read_all(std::uint8_t* data, std::size_t n) {
  if (tcp_->fd() < 0) throw ChannelError("recv on a closed channel");
  handshake(timeout());
  const std::size_t wanted = n;
  while (n > 0) {
    ERR_clear_error();
    std::size_t got = 0;
    const int r = SSL_read_ex(ssl_, data, n, &got);
    if (r == 1) {
      data += got;
      n -= got;
      continue;
    }
    try {
      on_ssl_result(r, Clock::now() + timeout(), "TLS recv");
    } catch (const PeerClosedError& e) {
      throw PeerClosedError(std::string(e.what()) + " after " + std::to_string(wanted - n) +
                            " of " + std::to_string(wanted) + " expected bytes");
    }
  }
}

// --------------------------------------------------------------- TlsListener

TlsListener::TlsListener(const std::string& host, std::uint16_t port,
                         const TlsServerOptions& options, int backlog)
    : tcp_(host, port, backlog) {
  if (options.cert_file.empty() || options.key_file.empty()) {
    throw std::invalid_argument("a TLS server needs a certificate and its private key");
  }
  CtxPtr ctx = new_context(TLS_server_method());
  load_identity(ctx.get(), options.cert_file, options.key_file);
  // Tickets would only serve resumption, which is off.
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  if (!options.client_ca_file.empty()) {
    load_trust(ctx.get(), options.client_ca_file);
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.client_ca_file.c_str());
    if (names == nullptr) {
      throw TlsError("no CA names in '" + options.client_ca_file + "': " + ssl_errors());
    }
    SSL_CTX_set_client_CA_list(ctx.get(), names);  // takes ownership
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  ctx_ = std::shared_ptr<SSL_CTX>(ctx.release(), CtxFree());
}

TlsListener::~TlsListener() { close(); }

void TlsListener::close() { tcp_.close(); }

std::unique_ptr<TlsChannel> TlsListener::accept(std::chrono::milliseconds timeout) {
  auto tcp = tcp_.accept(timeout);
  ERR_clear_error();
  SSL* ssl = SSL_new(ctx_.get());
  if (ssl == nullptr) throw TlsError("cannot create a TLS session: " + ssl_errors());
  std::unique_ptr<TlsChannel> ch(new TlsChannel(std::move(tcp), ssl));
  SSL_set_accept_state(ssl);
  return ch;
}

}  // namespace pie
