// TCP transport: non-blocking sockets driven by poll() so every operation has
// a deadline; TCP_NODELAY because protocol rounds are latency-bound.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "io/channel.h"

namespace pie {

/// Waits until the descriptor is ready for `events` (poll(2) flags), retrying
/// on EINTR; returns false when the timeout passes first.
/// @throws ChannelError when poll fails.
bool wait_socket(int fd, short events, std::chrono::milliseconds timeout);

class TcpChannel final : public Channel {
 public:
  /// Connects to host:port (name or numeric address, IPv4 or IPv6), trying
  /// each resolved address until the overall deadline passes.
  /// @throws ChannelTimeoutError when the deadline passes; ChannelError when
  ///         the host cannot be resolved or every address refuses.
  static std::unique_ptr<TcpChannel> connect(const std::string& host, std::uint16_t port,
                                             std::chrono::milliseconds timeout);

  /// Takes ownership of a connected socket.
  explicit TcpChannel(int fd, std::string peer);
  ~TcpChannel() override;
  void close() override;

  /// "address:port" of the peer, for logs and errors.
  const std::string& peer() const { return peer_; }

  /// The non-blocking socket (-1 once closed), for layers running over this
  /// connection (TLS); the channel keeps ownership.
  int fd() const { return fd_; }

 protected:
  void write_all(const std::uint8_t* data, std::size_t n) override;
  void read_all(std::uint8_t* data, std::size_t n) override;

 private:
  int fd_;
  std::string peer_;
};

class TcpListener {
 public:
  /// Binds and listens; port 0 picks a free port (see port()).
  /// @throws ChannelError when the address cannot be bound.
  TcpListener(const std::string& host, std::uint16_t port, int backlog = 64);
  TcpListener(const TcpListener&) = delete;
  TcpListener& operator=(const TcpListener&) = delete;
  ~TcpListener();

  std::uint16_t port() const { return port_; }

  /// Waits up to timeout for a connection.
  /// @throws ChannelTimeoutError when none arrives in time; ChannelError
  ///         when the listener was closed.
  std::unique_ptr<TcpChannel> accept(std::chrono::milliseconds timeout);

  void close();

 private:
  int fd_;
  std::uint16_t port_ = 0;
};

}  // namespace pie
