#include "io/link_channel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

namespace pie {

namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

void sleep_until_ns(std::int64_t t) {
  std::this_thread::sleep_until(Clock::time_point(std::chrono::nanoseconds(t)));
}

double ns_per_byte(const LinkDirection& d, const char* field) {
  if (!std::isfinite(d.bytes_per_second) || d.bytes_per_second < 0) {
    throw std::invalid_argument(std::string(field) + ": bandwidth must be a non-negative number "
                                "(0: unlimited)");
  }
  if (d.delay.count() < 0) throw std::invalid_argument(std::string(field) + ": delay must not be negative");
  return d.bytes_per_second == 0 ? 0.0 : 1e9 / d.bytes_per_second;
}

void put_le(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

std::uint64_t get_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

LinkChannel::LinkChannel(std::shared_ptr<Channel> inner, LinkDirection out, LinkDirection in,
                         std::size_t send_buffer_bytes)
    : inner_(std::move(inner)),
      in_(in),
      out_ns_per_byte_(ns_per_byte(out, "outgoing direction")),
      in_ns_per_byte_(ns_per_byte(in, "incoming direction")),
      send_buffer_bytes_(send_buffer_bytes) {
  if (!inner_) throw std::invalid_argument("channel: a channel to wrap is required");
  if (send_buffer_bytes == 0) throw std::invalid_argument("send_buffer: must be positive");
  send_buffer_ns_ = std::llround(static_cast<double>(send_buffer_bytes) * out_ns_per_byte_);
  piece_.resize(kStampBytes + kPieceBytes);
  Channel::set_timeout(inner_->timeout());
}

LinkChannel::~LinkChannel() { inner_->close(); }

void LinkChannel::close() { inner_->close(); }

void LinkChannel::set_timeout(std::chrono::milliseconds t) {
  Channel::set_timeout(t);
  inner_->set_timeout(t);
}

void LinkChannel::write_all(const std::uint8_t* data, std::size_t n) {
  while (n > 0) {
    const std::size_t take = std::min(n, kPieceBytes);
    std::int64_t now = now_ns();
    // The send buffer is full while the link is more than a buffer behind.
    if (busy_until_ns_ - now > send_buffer_ns_) {
      sleep_until_ns(busy_until_ns_ - send_buffer_ns_);
      now = now_ns();
    }
    const std::int64_t start = std::max(now, busy_until_ns_);
    busy_until_ns_ = start + std::llround(static_cast<double>(take) * out_ns_per_byte_);
    put_le(piece_.data(), static_cast<std::uint64_t>(start));
    put_le(piece_.data() + 8, take);
    std::memcpy(piece_.data() + kStampBytes, data, take);
    inner_->write_all(piece_.data(), kStampBytes + take);
    data += take;
    n -= take;
  }
}

void LinkChannel::read_all(std::uint8_t* data, std::size_t n) {
  while (n > 0) {
    if (rx_done_ == rx_size_) {
      std::uint8_t stamp[kStampBytes];
      inner_->read_all(stamp, sizeof stamp);
      rx_start_ns_ = static_cast<std::int64_t>(get_le(stamp));
      rx_size_ = get_le(stamp + 8);
      rx_done_ = 0;
      if (rx_size_ == 0 || rx_size_ > kPieceBytes) {
        throw ProtocolError("emulated link: malformed piece header (the peer must be an emulated "
                            "link over the same connection)");
      }
      // The peer may run a send buffer ahead of its link, not more: a stamp
      // further out is on another clock (the ends must share a host).
      const double ahead_ns = static_cast<double>(send_buffer_bytes_ + kPieceBytes) * in_ns_per_byte_;
      if (static_cast<double>(rx_start_ns_) > static_cast<double>(now_ns()) + ahead_ns + 10e9) {
        throw ProtocolError("emulated link: a piece is stamped in the future (both ends must run "
                            "on one host)");
      }
    }
    const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, rx_size_ - rx_done_));
    inner_->read_all(data, take);
    rx_done_ += take;
    // The last byte taken arrives once the link has serialised it and it has propagated.
    sleep_until_ns(rx_start_ns_ + std::llround(static_cast<double>(rx_done_) * in_ns_per_byte_) +
                   in_.delay.count());
    data += take;
    n -= take;
  }
}

}  // namespace pie
