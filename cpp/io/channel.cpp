#include "io/channel.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pie {

namespace {

// The transcript check is Poly1305 under a fixed public key: a polynomial
// universal hash at memory speed (about 12 GB/s with OpenSSL's vector code,
// against 7 GB/s for GMAC on the same machine), which catches any change,
// loss or insertion of bytes that does not depend on the key, i.e. faults of
// the transport, except with probability at most 8 L / 2^106 for streams of
// L 16-byte blocks. It is not a MAC against an active attacker (the key is
// public): TLS is what authenticates the stream (SECURITY.md).
// [REF] Bernstein, "The Poly1305-AES message-authentication code", FSE 2005;
//       RFC 8439 section 2.5.
constexpr unsigned char kTranscriptKey[32] = {'p', 'i', 'e', ' ', 't', 'r', 'a', 'n', 's', 'c', 'r',
                                              'i', 'p', 't', ' ', 'c', 'h', 'e', 'c', 'k', ' ', 'p',
                                              'o', 'l', 'y', '1', '3', '0', '5', ' ', 'v', '1'};

EVP_MAC* poly1305() {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "POLY1305", nullptr);  // process-wide, never freed
  if (mac == nullptr) throw std::runtime_error("OpenSSL Poly1305 is unavailable");
  return mac;
}

EVP_MAC_CTX* new_check() {
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(poly1305());
  if (ctx == nullptr || EVP_MAC_init(ctx, kTranscriptKey, sizeof kTranscriptKey, nullptr) != 1) {
    EVP_MAC_CTX_free(ctx);
    throw std::runtime_error("OpenSSL Poly1305 initialisation failed");
  }
  return ctx;
}

void hash_update(EVP_MAC_CTX* ctx, const void* data, std::size_t n) {
  if (ctx == nullptr || n == 0) return;  // no context: a pair made without the check
  if (EVP_MAC_update(ctx, static_cast<const unsigned char*>(data), n) != 1) {
    throw std::runtime_error("OpenSSL Poly1305 update failed");
  }
}

/// Finalises a copy, so the running check continues: the 16-byte tag (zeros
/// for a channel made without the check).
std::array<std::uint8_t, ChannelTranscript::kBytes> hash_snapshot(const EVP_MAC_CTX* ctx) {
  std::array<std::uint8_t, ChannelTranscript::kBytes> out{};
  if (ctx == nullptr) return out;
  EVP_MAC_CTX* copy = EVP_MAC_CTX_dup(ctx);
  std::size_t outl = 0;
  const bool ok = copy != nullptr && EVP_MAC_final(copy, out.data(), &outl, out.size()) == 1 &&
                  outl == out.size();
  EVP_MAC_CTX_free(copy);
  if (!ok) throw std::runtime_error("OpenSSL Poly1305 snapshot failed");
  return out;
}

void put_le(std::uint8_t* p, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

std::uint64_t get_le(const std::uint8_t* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

struct Channel::Hashes {
  explicit Hashes(bool check) {
    if (!check) return;
    sent = new_check();
    try {
      received = new_check();
    } catch (...) {
      EVP_MAC_CTX_free(sent);
      throw;
    }
  }
  ~Hashes() {
    EVP_MAC_CTX_free(sent);
    EVP_MAC_CTX_free(received);
  }
  Hashes(const Hashes&) = delete;
  Hashes& operator=(const Hashes&) = delete;

  EVP_MAC_CTX* sent = nullptr;
  EVP_MAC_CTX* received = nullptr;
};

Channel::Channel(bool transcript_check) : hashes_(std::make_unique<Hashes>(transcript_check)) {}

Channel::~Channel() = default;

ChannelTranscript Channel::transcript() const {
  check_buffered();
  settle_check();
  return ChannelTranscript{hash_snapshot(hashes_->sent), hash_snapshot(hashes_->received)};
}

void Channel::check_buffered() const {
  hash_update(hashes_->sent, out_.data() + out_checked_, out_.size() - out_checked_);
  out_checked_ = out_.size();
}

void Channel::settle_check() const {
  // Taken out first: should a check fail, no region is checked twice or left
  // pointing at a buffer its owner frees (the comparison then fails, closed).
  std::vector<std::pair<const std::uint8_t*, std::size_t>> regions;
  regions.swap(unchecked_);
  for (const auto& [bytes, n] : regions) hash_update(hashes_->received, bytes, n);
}

// The sent stream is checked after it was handed to the transport: the peer
// can read (and answer) while this end checks. Stream order is kept, since
// out_ is always written (and checked) before a large payload.
void Channel::send(const void* data, std::size_t n) {
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  stats_.bytes_sent += n;
  if (out_.size() + n <= kBufferBytes) {
    out_.insert(out_.end(), bytes, bytes + n);
    return;
  }
  // Large payloads bypass the buffer: one big write instead of many copies.
  sent_since_recv_ = true;
  if (!out_.empty()) {
    write_all(out_.data(), out_.size());
    check_buffered();
    out_.clear();
    out_checked_ = 0;
  }
  write_all(bytes, n);
  hash_update(hashes_->sent, bytes, n);
}

void Channel::flush() {
  if (out_.empty()) return;
  write_all(out_.data(), out_.size());
  check_buffered();
  out_.clear();
  out_checked_ = 0;
  ++stats_.flushes;
  sent_since_recv_ = true;
}

void Channel::start_recv() {
  flush();
  if (sent_since_recv_) {
    ++stats_.round_trips;
    sent_since_recv_ = false;
  }
}

void Channel::recv(void* data, std::size_t n) {
  start_recv();
  settle_check();
  auto* bytes = static_cast<std::uint8_t*>(data);
  // Checked piece by piece while the piece is still in cache.
  std::size_t left = n;
  do {
    const std::size_t piece = std::min(left, kHashPieceBytes);
    read_all(bytes, piece);
    hash_update(hashes_->received, bytes, piece);
    bytes += piece;
    left -= piece;
  } while (left > 0);
  stats_.bytes_received += n;
}

void Channel::recv_deferred_check(void* data, std::size_t n) {
  start_recv();
  auto* bytes = static_cast<std::uint8_t*>(data);
  read_all(bytes, n);
  if (n > 0) unchecked_.emplace_back(bytes, n);
  stats_.bytes_received += n;
}

void Channel::set_timeout(std::chrono::milliseconds t) {
  if (t.count() <= 0) throw std::invalid_argument("timeout must be positive");
  timeout_ = t;
}

void Channel::send_frame(std::uint32_t type, const void* payload, std::size_t n) {
  std::uint8_t header[kFrameHeaderBytes];
  put_le(header, type, 4);
  put_le(header + 4, n, 8);
  send(header, sizeof header);
  send(payload, n);
  flush();
}

std::vector<std::uint8_t> Channel::recv_frame(std::uint32_t expected_type,
                                              std::size_t max_bytes) {
  std::uint8_t header[kFrameHeaderBytes];
  recv(header, sizeof header);
  const auto type = static_cast<std::uint32_t>(get_le(header, 4));
  const std::uint64_t len = get_le(header + 4, 8);
  if (type != expected_type) {
    throw ProtocolError("unexpected message type " + std::to_string(type) + " (expected " +
                        std::to_string(expected_type) + ")");
  }
  if (len > max_bytes) {
    throw OversizeMessageError("message of type " + std::to_string(type) + " announces " +
                               std::to_string(len) + " bytes, limit is " +
                               std::to_string(max_bytes));
  }
  std::vector<std::uint8_t> payload(static_cast<std::size_t>(len));
  recv(payload.data(), payload.size());
  return payload;
}

}  // namespace pie
