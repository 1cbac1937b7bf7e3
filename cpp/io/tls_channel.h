// TLS over the TCP transport (OpenSSL libssl), for deployments where the two
// parties must authenticate each other; the protocol's privacy does not rely
// on it (DESIGN.md section 7).
//
// [REF] E. Rescorla, "The Transport Layer Security (TLS) Protocol Version 1.3",
//       RFC 8446, 2018.
//
// TLS 1.3 only: every 1.3 cipher suite is an AEAD with forward secrecy, so no
// cipher list needs curating, and no older version can be negotiated down to.
// The socket stays non-blocking and poll-driven like TcpChannel, so every
// handshake, read and write has the same deadlines and typed errors.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "io/channel.h"
#include "io/tcp_channel.h"

// OpenSSL's handle types, declared here so that users of this header do not
// pull in <openssl/ssl.h>.
struct ssl_st;
struct ssl_ctx_st;

namespace pie {

/// What a TLS client trusts and presents.
struct TlsClientOptions {
  /// PEM file of the certificate authorities the server's chain must lead to.
  std::string ca_file;
  /// PEM client certificate chain and its unencrypted private key, for servers
  /// that require client certificates; both or neither.
  std::string cert_file;
  std::string key_file;
  /// The name (DNS name or IP address) the server certificate must carry;
  /// empty means the host that was connected to.
  std::string server_name;
};

/// What a TLS server presents and, optionally, requires of clients.
struct TlsServerOptions {
  /// PEM server certificate chain (leaf first) and its unencrypted private key.
  std::string cert_file;
  std::string key_file;
  /// When set, clients must present a certificate issued by one of these CAs.
  std::string client_ca_file;
};

class TlsChannel final : public Channel {
 public:
  /// Connects over TCP and completes the TLS handshake, both within timeout;
  /// the server's certificate is verified against options.ca_file and the
  /// server name. With TLS 1.3 a server that refuses this client's
  /// certificate says so after the client's handshake has finished, so that
  /// refusal surfaces as TlsError on the first recv.
  /// @throws ChannelTimeoutError, ChannelError (resolve/connect failures),
  ///         TlsError (handshake or verification failure, unreadable files).
  static std::unique_ptr<TlsChannel> connect(const std::string& host, std::uint16_t port,
                                             const TlsClientOptions& options,
                                             std::chrono::milliseconds timeout);

  ~TlsChannel() override;
  /// Sends a TLS close_notify when the session is healthy, then closes the socket.
  void close() override;

  /// "address:port" of the peer.
  const std::string& peer() const { return tcp_->peer(); }

 protected:
  void write_all(const std::uint8_t* data, std::size_t n) override;
  void read_all(std::uint8_t* data, std::size_t n) override;

 private:
  friend class TlsListener;
  TlsChannel(std::unique_ptr<TcpChannel> tcp, ssl_st* ssl);

  /// Completes the handshake if it has not happened yet; the whole handshake
  /// must finish within `budget`.
  void handshake(std::chrono::milliseconds budget);
  /// Waits for the socket readiness an OpenSSL call asked for (want_read or
  /// want_write) or turns its failure into the matching ChannelError.
  void on_ssl_result(int result, std::chrono::steady_clock::time_point deadline,
                     const char* what);

  std::unique_ptr<TcpChannel> tcp_;
  ssl_st* ssl_;
  bool handshake_done_ = false;
  bool failed_ = false;  // a fatal TLS error happened: no close_notify, no more I/O
};

class TlsListener {
 public:
  /// Binds and listens (port 0 picks a free port) and loads the server's
  /// certificate and key (and the client CAs, when given).
  /// @throws ChannelError when the address cannot be bound; TlsError when a
  ///         file cannot be loaded or the key does not match the certificate.
  TlsListener(const std::string& host, std::uint16_t port, const TlsServerOptions& options,
              int backlog = 64);
  TlsListener(const TlsListener&) = delete;
  TlsListener& operator=(const TlsListener&) = delete;
  ~TlsListener();

  std::uint16_t port() const { return tcp_.port(); }

  /// Waits up to timeout for a TCP connection and returns its TLS channel.
  /// The handshake runs on the channel's first send, recv or flush, under
  /// that channel's timeout, in whichever thread serves it: a slow or hostile
  /// peer never holds up the accepting loop, and its handshake failure
  /// (TlsError) is confined to its own channel.
  /// @throws ChannelTimeoutError when none arrives in time; ChannelError when
  ///         the listener was closed.
  std::unique_ptr<TlsChannel> accept(std::chrono::milliseconds timeout);

  void close();

 private:
  TcpListener tcp_;
  std::shared_ptr<ssl_ctx_st> ctx_;
};

}  // namespace pie
