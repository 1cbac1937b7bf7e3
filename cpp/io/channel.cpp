#include "io/channel.h"

#include <cstring>
#include <string>

namespace pie {

namespace {

void put_le(std::uint8_t* p, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

std::uint64_t get_le(const std::uint8_t* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

void Channel::send(const void* data, std::size_t n) {
  const auto* bytes = static_cast<const std::uint8_t*>(data);
  stats_.bytes_sent += n;
  if (out_.size() + n <= kBufferBytes) {
    out_.insert(out_.end(), bytes, bytes + n);
    return;
  }
  // Large payloads bypass the buffer: one big write instead of many copies.
  if (!out_.empty()) {
    write_all(out_.data(), out_.size());
    out_.clear();
  }
  write_all(bytes, n);
}

void Channel::flush() {
  if (out_.empty()) return;
  write_all(out_.data(), out_.size());
  out_.clear();
  ++stats_.flushes;
}

void Channel::recv(void* data, std::size_t n) {
  flush();
  read_all(static_cast<std::uint8_t*>(data), n);
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
