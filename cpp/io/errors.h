// Errors raised by channels. Each surfaces in Python as the class of the same
// name in the pie.ChannelError family (see src/register_io.cpp).
#pragma once

#include <stdexcept>
#include <string>

namespace pie {

/// Base of every transport failure: the connection is unusable afterwards.
class ChannelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The peer closed the connection (possibly in the middle of a message).
class PeerClosedError : public ChannelError {
 public:
  using ChannelError::ChannelError;
};

/// A read, write, connect or accept did not complete within its deadline.
class ChannelTimeoutError : public ChannelError {
 public:
  using ChannelError::ChannelError;
};

/// A framed message announced a length above the limit the reader set.
class OversizeMessageError : public ChannelError {
 public:
  using ChannelError::ChannelError;
};

/// A framed message had the wrong type, version or layout.
class ProtocolError : public ChannelError {
 public:
  using ChannelError::ChannelError;
};

/// TLS failed: a handshake that could not complete (no common version,
/// refused or unverifiable certificate, wrong host name, a plain-TCP peer) or
/// a record that failed authentication. Also raised for certificate or key
/// files that cannot be loaded.
class TlsError : public ChannelError {
 public:
  using ChannelError::ChannelError;
};

}  // namespace pie
