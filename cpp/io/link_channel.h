// An emulated network link over any channel (memory, TCP, TLS): what a
// deployment's bandwidth and latency would do to the protocol, on one host.
//
// Each direction is a serialising link: a byte leaves when the link has sent
// every earlier byte (bandwidth B: one byte per 1/B seconds, a token bucket
// with no burst) and arrives a propagation delay later. The sender stamps
// every piece it hands to the wrapped channel with the time its first byte
// goes onto the emulated wire (the host's monotonic clock); the receiver
// releases byte k of a piece only at stamp + (k + 1) / B + delay, so a large
// message is consumed while it is still arriving, as over a real link. The
// sender runs at most send_buffer_bytes ahead of its link (a socket's send
// buffer), then blocks.
//
// Both ends must be LinkChannels with mirrored directions over the two ends
// of one wrapped connection, on the same host (the stamps are on its clock).
// The wrapped channel carries a 16-byte stamp per piece of at most
// kPieceBytes; this channel's own counters and transcript see only the
// payload, exactly as the unwrapped channel would. Every wait happens in C++
// with the GIL released, so the engine's GIL-free paths are paced too.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "io/channel.h"

namespace pie {

/// One direction of an emulated link.
struct LinkDirection {
  /// Bytes per second; 0 means unlimited (no serialisation delay).
  double bytes_per_second = 0.0;
  /// One-way propagation delay.
  std::chrono::nanoseconds delay{0};
};

class LinkChannel final : public Channel {
 public:
  /// Largest piece behind one stamp (the receiver's unit of framing).
  static constexpr std::size_t kPieceBytes = 256 << 10;
  static constexpr std::size_t kStampBytes = 16;

  /// Wraps `inner`, which must not be used directly afterwards. `out` is the
  /// direction this end sends on, `in` the one it receives on (the peer's `out`).
  /// @throws std::invalid_argument for a null channel, a negative or non-finite
  ///         rate, a negative delay or a zero send buffer.
  LinkChannel(std::shared_ptr<Channel> inner, LinkDirection out, LinkDirection in,
              std::size_t send_buffer_bytes);
  ~LinkChannel() override;
  /// Closes the wrapped channel.
  void close() override;
  /// Sets this channel's and the wrapped channel's deadline.
  void set_timeout(std::chrono::milliseconds t) override;

 protected:
  void write_all(const std::uint8_t* data, std::size_t n) override;
  /// @throws ProtocolError on a malformed stamp (a peer that is no LinkChannel,
  ///         or one on another host's clock).
  void read_all(std::uint8_t* data, std::size_t n) override;

 private:
  std::shared_ptr<Channel> inner_;
  LinkDirection in_;
  double out_ns_per_byte_;
  double in_ns_per_byte_;
  std::size_t send_buffer_bytes_;
  std::int64_t send_buffer_ns_ = 0;  // how far ahead of its link the sender may run
  std::int64_t busy_until_ns_ = 0;  // when the outgoing link has sent all it was given
  std::vector<std::uint8_t> piece_;  // stamp + payload of one outgoing piece
  // The incoming piece being consumed.
  std::int64_t rx_start_ns_ = 0;
  std::uint64_t rx_size_ = 0;
  std::uint64_t rx_done_ = 0;
};

}  // namespace pie
