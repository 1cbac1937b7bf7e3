#include "io/channel.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pie {

namespace {

// The transcript check is GMAC (AES-128-GCM over the stream as associated
// data, no plaintext) under a fixed public key and IV: a polynomial universal
// hash at memory speed (AES-NI + carry-less multiply), which catches any
// change, loss or insertion of bytes that does not depend on the key, i.e.
// faults of the transport, except with probability about n / 2^128 for n
// 16-byte blocks. It is not a MAC against an active attacker (the key is
// public): TLS is what authenticates the stream (SECURITY.md).
// [REF] McGrew, Viega, "The Galois/Counter Mode of Operation (GCM)", 2004;
//       NIST SP 800-38D (GMAC).
constexpr unsigned char kTranscriptKey[16] = {'p', 'i', 'e', ' ', 't', 'r', 'a', 'n',
                                              's', 'c', 'r', 'i', 'p', 't', ' ', '1'};
constexpr unsigned char kTranscriptIv[12] = {'p', 'i', 'e', ' ', 'g', 'm', 'a', 'c', ' ', 'i', 'v', '1'};

EVP_CIPHER_CTX* new_gmac() {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  if (ctx == nullptr ||
      EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), nullptr, kTranscriptKey, kTranscriptIv) != 1) {
    EVP_CIPHER_CTX_free(ctx);
    throw std::runtime_error("OpenSSL GMAC initialisation failed");
  }
  return ctx;
}

void hash_update(EVP_CIPHER_CTX* ctx, const void* data, std::size_t n) {
  // Associated data in pieces below INT_MAX, the length type OpenSSL takes.
  const auto* p = static_cast<const unsigned char*>(data);
  while (n != 0) {
    const int piece = static_cast<int>(std::min<std::size_t>(n, 1u << 30));
    int outl = 0;
    if (EVP_EncryptUpdate(ctx, nullptr, &outl, p, piece) != 1) {
      throw std::runtime_error("OpenSSL GMAC update failed");
    }
    p += piece;
    n -= static_cast<std::size_t>(piece);
  }
}

/// Finalises a copy, so the running check continues: the 16-byte tag.
std::array<std::uint8_t, ChannelTranscript::kBytes> hash_snapshot(const EVP_CIPHER_CTX* ctx) {
  std::array<std::uint8_t, ChannelTranscript::kBytes> out{};
  EVP_CIPHER_CTX* copy = EVP_CIPHER_CTX_new();
  int outl = 0;
  const bool ok = copy != nullptr && EVP_CIPHER_CTX_copy(copy, ctx) == 1 &&
                  EVP_EncryptFinal_ex(copy, nullptr, &outl) == 1 &&
                  EVP_CIPHER_CTX_ctrl(copy, EVP_CTRL_GCM_GET_TAG, static_cast<int>(out.size()),
                                      out.data()) == 1;
  EVP_CIPHER_CTX_free(copy);
  if (!ok) throw std::runtime_error("OpenSSL GMAC snapshot failed");
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
  Hashes() : sent(new_gmac()) {
    try {
      received = new_gmac();
    } catch (...) {
      EVP_CIPHER_CTX_free(sent);
      throw;
    }
  }
  ~Hashes() {
    EVP_CIPHER_CTX_free(sent);
    EVP_CIPHER_CTX_free(received);
  }
  Hashes(const Hashes&) = delete;
  Hashes& operator=(const Hashes&) = delete;

  EVP_CIPHER_CTX* sent;
  EVP_CIPHER_CTX* received = nullptr;
};

Channel::Channel() : hashes_(std::make_unique<Hashes>()) {}

Channel::~Channel() = default;

ChannelTranscript Channel::transcript() const {
  return ChannelTranscript{hash_snapshot(hashes_->sent), hash_snapshot(hashes_->received)};
}

void Channel::send(const void* data, std::size_t n) {
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  stats_.bytes_sent += n;
  // Hashed when handed over: the order of send() calls is the order of the
  // stream, whether the bytes are buffered or written at once.
  if (out_.size() + n <= kBufferBytes) {
    hash_update(hashes_->sent, bytes, n);
    out_.insert(out_.end(), bytes, bytes + n);
    return;
  }
  // Large payloads bypass the buffer: one big write instead of many copies.
  sent_since_recv_ = true;
  if (!out_.empty()) {
    write_all(out_.data(), out_.size());
    out_.clear();
  }
  // Hash and write in cache-sized pieces so the peer reads (and hashes) one
  // piece while this end hashes the next.
  while (n > 0) {
    const std::size_t piece = std::min(n, kHashPieceBytes);
    hash_update(hashes_->sent, bytes, piece);
    write_all(bytes, piece);
    bytes += piece;
    n -= piece;
  }
}

void Channel::flush() {
  if (out_.empty()) return;
  write_all(out_.data(), out_.size());
  out_.clear();
  ++stats_.flushes;
  sent_since_recv_ = true;
}

void Channel::recv(void* data, std::size_t n) {
  flush();
  if (sent_since_recv_) {
    ++stats_.round_trips;
    sent_since_recv_ = false;
  }
  auto* bytes = static_cast<std::uint8_t*>(data);
  // Hashed piece by piece while the piece is still in cache (see send()).
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
