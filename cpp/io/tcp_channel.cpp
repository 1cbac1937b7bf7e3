#include "io/tcp_channel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace pie {

namespace {

using Clock = std::chrono::steady_clock;

std::string errno_text(int err) { return std::string(std::strerror(err)); }

void set_nonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    throw ChannelError("fcntl(O_NONBLOCK) failed: " + errno_text(errno));
  }
}

std::string address_text(const sockaddr* sa) {
  char host[NI_MAXHOST];
  char serv[NI_MAXSERV];
  const socklen_t len =
      sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return std::string(host) + ":" + serv;
}

struct AddrInfo {
  addrinfo* list = nullptr;
  AddrInfo(const std::string& host, std::uint16_t port, bool passive) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = passive ? AI_PASSIVE : 0;
    const std::string service = std::to_string(port);
    const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &list);
    if (rc != 0) {
      throw ChannelError("cannot resolve '" + host + "': " + gai_strerror(rc));
    }
  }
  ~AddrInfo() {
    if (list != nullptr) freeaddrinfo(list);
  }
  AddrInfo(const AddrInfo&) = delete;
  AddrInfo& operator=(const AddrInfo&) = delete;
};

}  // namespace

bool wait_socket(int fd, short events, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1 << 30)));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) throw ChannelError("poll failed: " + errno_text(errno));
  }
}

// ---------------------------------------------------------------- TcpChannel

std::unique_ptr<TcpChannel> TcpChannel::connect(const std::string& host, std::uint16_t port,
                                                std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  AddrInfo addrs(host, port, false);
  std::string last_error = "no address";
  for (addrinfo* ai = addrs.list; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = errno_text(errno);
      continue;
    }
    try {
      set_nonblocking(fd);
      int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
      if (rc != 0 && errno != EINPROGRESS) {
        last_error = errno_text(errno);
        ::close(fd);
        continue;
      }
      if (rc != 0) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (!wait_socket(fd, POLLOUT, left)) {
          ::close(fd);
          throw ChannelTimeoutError("connecting to " + host + ":" + std::to_string(port) +
                                    " timed out after " + std::to_string(timeout.count()) +
                                    " ms");
        }
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err != 0) {
          last_error = errno_text(err);
          ::close(fd);
          continue;
        }
      }
      return std::make_unique<TcpChannel>(fd, address_text(ai->ai_addr));
    } catch (const ChannelTimeoutError&) {
      throw;
    } catch (...) {
      ::close(fd);
      throw;
    }
  }
  throw ChannelError("cannot connect to " + host + ":" + std::to_string(port) + ": " + last_error);
}

TcpChannel::TcpChannel(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {
  set_nonblocking(fd_);
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

TcpChannel::~TcpChannel() { close(); }

void TcpChannel::close() {
  if (fd_ >= 0) {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    fd_ = -1;
  }
}

void TcpChannel::write_all(const std::uint8_t* data, std::size_t n) {
  if (fd_ < 0) throw ChannelError("send on a closed channel");
  while (n > 0) {
    const ssize_t w = ::send(fd_, data, n, MSG_NOSIGNAL);
    if (w > 0) {
      data += w;
      n -= static_cast<std::size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_socket(fd_, POLLOUT, timeout())) {
        throw ChannelTimeoutError("send to " + peer_ + " made no progress within " +
                                  std::to_string(timeout().count()) + " ms");
      }
      continue;
    }
    if (errno == EPIPE || errno == ECONNRESET) {
      throw PeerClosedError("peer " + peer_ + " closed the connection");
    }
    throw ChannelError("send to " + peer_ + " failed: " + errno_text(errno));
  }
}

void TcpChannel::read_all(std::uint8_t* data, std::size_t n) {
  if (fd_ < 0) throw ChannelError("recv on a closed channel");
  const std::size_t wanted = n;
  while (n > 0) {
    const ssize_t r = ::recv(fd_, data, n, 0);
    if (r > 0) {
      data += r;
      n -= static_cast<std::size_t>(r);
      continue;
    }
    if (r == 0) {
      throw PeerClosedError("peer " + peer_ + " closed the connection after " +
                            std::to_string(wanted - n) + " of " + std::to_string(wanted) +
                            " expected bytes");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_socket(fd_, POLLIN, timeout())) {
        throw ChannelTimeoutError("recv from " + peer_ + " got no data within " +
                                  std::to_string(timeout().count()) + " ms");
      }
      continue;
    }
    if (errno == ECONNRESET) throw PeerClosedError("peer " + peer_ + " reset the connection");
    throw ChannelError("recv from " + peer_ + " failed: " + errno_text(errno));
  }
}

// --------------------------------------------------------------- TcpListener

TcpListener::TcpListener(const std::string& host, std::uint16_t port, int backlog) : fd_(-1) {
  AddrInfo addrs(host, port, true);
  std::string last_error = "no address";
  for (addrinfo* ai = addrs.list; ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = errno_text(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, backlog) != 0) {
      last_error = errno_text(errno);
      ::close(fd);
      continue;
    }
    fd_ = fd;
    break;
  }
  if (fd_ < 0) {
    throw ChannelError("cannot listen on " + host + ":" + std::to_string(port) + ": " +
                       last_error);
  }
  set_nonblocking(fd_);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ss.ss_family == AF_INET6
              ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
              : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

TcpListener::~TcpListener() { close(); }

void TcpListener::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

std::unique_ptr<TcpChannel> TcpListener::accept(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (fd_ < 0) throw ChannelError("accept on a closed listener");
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    const int fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd >= 0) {
      return std::make_unique<TcpChannel>(fd, address_text(reinterpret_cast<sockaddr*>(&ss)));
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      throw ChannelError("accept failed: " + errno_text(errno));
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (!wait_socket(fd_, POLLIN, left)) {
      throw ChannelTimeoutError("no connection within " + std::to_string(timeout.count()) + " ms");
    }
  }
}

}  // namespace pie
