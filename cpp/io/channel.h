// The transport every protocol in pie talks through (DESIGN.md section 7).
//
// A Channel is a reliable, ordered, bidirectional byte stream with exact-size
// reads, sender-side buffering and traffic counters. Bulk data (garbled tables,
// ciphertexts) goes through send/recv of sizes both sides know; control
// messages go through send_frame/recv_frame, which carry a type and a length
// and are checked against the reader's expectations.
//
// Thread safety: a channel end is used by one thread at a time (recv flushes
// pending output, and the counters are plain integers). Parties that need
// concurrent streams open several channels.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "io/errors.h"

namespace pie {

/// Traffic counters of one channel end, as seen by that end.
struct ChannelStats {
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
  /// Flushes that pushed at least one byte: a proxy for the number of
  /// one-way messages (rounds) this end originated.
  std::uint64_t flushes = 0;
  /// recv() calls that came after this end had sent something since its
  /// previous recv(): the request/response turns this end waited through.
  /// On a link each costs up to one round-trip time (less when the peer's
  /// answer did not depend on the request and was already on its way).
  std::uint64_t round_trips = 0;
};

/// Checks (Poly1305 tags under a fixed public key, see channel.cpp) of the byte
/// streams one channel end has sent and received so far. The sender's `sent`
/// equals the receiver's `received` once the receiver has consumed everything
/// that was sent, so two parties comparing them (or binding them into a later
/// message) detect any change, loss or insertion of bytes by the transport.
/// Against an active attacker only TLS helps: the key is public.
struct ChannelTranscript {
  static constexpr std::size_t kBytes = 16;
  std::array<std::uint8_t, kBytes> sent{};
  std::array<std::uint8_t, kBytes> received{};
};

class Channel {
 public:
  /// Frame header: 4-byte type, 8-byte payload length, little endian.
  static constexpr std::size_t kFrameHeaderBytes = 12;

  /// transcript_check = false keeps no check (transcript() returns zeros on
  /// both ends): only for measuring what the check costs.
  explicit Channel(bool transcript_check = true);
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  virtual ~Channel();

  /// Queues n bytes; they reach the peer at the latest on flush().
  /// @throws ChannelError (PeerClosedError, ChannelTimeoutError) when the
  ///         buffer spills and the transport fails.
  void send(const void* data, std::size_t n);

  /// Blocks until exactly n bytes arrived (flushing pending output first, so
  /// a request/response exchange never deadlocks on our own buffer).
  /// @throws PeerClosedError if the peer closes before n bytes arrived;
  ///         ChannelTimeoutError if no progress happens within timeout().
  void recv(void* data, std::size_t n);

  /// Like recv(), but the bytes enter the received-stream check later: at the
  /// next recv(), transcript() or settle_check(), in stream order. The caller
  /// keeps `data` unchanged and alive until then. A party that answers what it
  /// received (the client evaluating the server's labels) checks them while
  /// the peer works on the answer, not on the round's critical path.
  void recv_deferred_check(void* data, std::size_t n);

  /// Checks the bytes of earlier recv_deferred_check() calls now.
  void settle_check() const;

  /// Pushes buffered bytes to the peer (and then checks them: the peer need
  /// not wait for this end's check).
  void flush();

  /// Sends one framed control message and flushes it.
  void send_frame(std::uint32_t type, const void* payload, std::size_t n);

  /// Receives one framed message of the given type whose payload is at most
  /// max_bytes long.
  /// @throws ProtocolError on another type; OversizeMessageError if the
  ///         announced length exceeds max_bytes (nothing more is read).
  std::vector<std::uint8_t> recv_frame(std::uint32_t expected_type, std::size_t max_bytes);

  /// Closes this end; the peer's pending and future reads fail with
  /// PeerClosedError once it has consumed what was already delivered.
  virtual void close() = 0;

  const ChannelStats& stats() const { return stats_; }
  /// Zeroes the counters; the transcript digests keep running.
  void reset_stats() { stats_ = ChannelStats{}; }

  /// Snapshot of the running check of every byte passed to send() (the
  /// stream the peer receives, buffered or not) and of every byte recv()
  /// returned. Checking continues after the snapshot.
  ChannelTranscript transcript() const;

  /// Deadline for every blocking operation (no progress for this long fails).
  std::chrono::milliseconds timeout() const { return timeout_; }
  /// Virtual so that a channel running over another one passes it on.
  virtual void set_timeout(std::chrono::milliseconds t);

 protected:
  /// Delivers n bytes to the transport (blocking until accepted).
  virtual void write_all(const std::uint8_t* data, std::size_t n) = 0;
  /// Fills exactly n bytes from the transport.
  virtual void read_all(std::uint8_t* data, std::size_t n) = 0;

 private:
  // An emulated link forwards its own transport calls to the transport calls
  // of the channel it wraps, so the wrapped stream is not hashed, buffered or
  // counted twice.
  friend class LinkChannel;

  static constexpr std::size_t kBufferBytes = 1 << 20;
  static constexpr std::size_t kHashPieceBytes = 256 << 10;

  void check_buffered() const;  // out_ past out_checked_ into the sent-stream check
  void start_recv();            // flushes, counts a round trip if this end sent

  struct Hashes;  // the two running OpenSSL Poly1305 contexts

  std::vector<std::uint8_t> out_;
  // Bytes of out_ already in the sent-stream check (transcript() checks
  // buffered bytes before they are written).
  mutable std::size_t out_checked_ = 0;
  // recv_deferred_check() regions not yet in the received-stream check.
  mutable std::vector<std::pair<const std::uint8_t*, std::size_t>> unchecked_;
  ChannelStats stats_;
  std::unique_ptr<Hashes> hashes_;
  std::chrono::milliseconds timeout_{std::chrono::seconds(120)};
  bool sent_since_recv_ = false;  // for stats_.round_trips
};

}  // namespace pie
