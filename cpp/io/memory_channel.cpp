#include "io/memory_channel.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace pie {

struct MemoryPipe {
  explicit MemoryPipe(std::size_t cap) : capacity(cap) {}
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::vector<std::uint8_t>> chunks;
  std::size_t front_offset = 0;  // bytes of chunks.front() already consumed
  std::size_t queued = 0;        // bytes not yet consumed
  bool writer_closed = false;
  bool reader_closed = false;
  const std::size_t capacity;
};

std::pair<std::unique_ptr<MemoryChannel>, std::unique_ptr<MemoryChannel>> MemoryChannel::make_pair(
    std::size_t capacity_bytes) {
  if (capacity_bytes == 0) throw std::invalid_argument("capacity_bytes must be positive");
  auto a_to_b = std::make_shared<MemoryPipe>(capacity_bytes);
  auto b_to_a = std::make_shared<MemoryPipe>(capacity_bytes);
  return {std::make_unique<MemoryChannel>(a_to_b, b_to_a),
          std::make_unique<MemoryChannel>(b_to_a, a_to_b)};
}

MemoryChannel::MemoryChannel(std::shared_ptr<MemoryPipe> out, std::shared_ptr<MemoryPipe> in)
    : out_(std::move(out)), in_(std::move(in)) {}

MemoryChannel::~MemoryChannel() { close(); }

void MemoryChannel::close() {
  {
    std::lock_guard<std::mutex> lock(out_->mu);
    out_->writer_closed = true;
  }
  out_->cv.notify_all();
  {
    std::lock_guard<std::mutex> lock(in_->mu);
    in_->reader_closed = true;
  }
  in_->cv.notify_all();
}

void MemoryChannel::write_all(const std::uint8_t* data, std::size_t n) {
  MemoryPipe& p = *out_;
  std::unique_lock<std::mutex> lock(p.mu);
  if (p.writer_closed) throw ChannelError("send on a closed channel");
  while (n > 0) {
    const bool ok = p.cv.wait_for(lock, timeout(), [&] {
      return p.reader_closed || p.queued < p.capacity;
    });
    if (p.reader_closed) throw PeerClosedError("peer closed the in-memory channel");
    if (!ok) throw ChannelTimeoutError("in-memory send made no progress within the timeout");
    const std::size_t take = std::min(n, p.capacity - p.queued);
    p.chunks.emplace_back(data, data + take);
    p.queued += take;
    data += take;
    n -= take;
    p.cv.notify_all();
  }
}

void MemoryChannel::read_all(std::uint8_t* data, std::size_t n) {
  MemoryPipe& p = *in_;
  const std::size_t wanted = n;
  std::unique_lock<std::mutex> lock(p.mu);
  if (p.reader_closed) throw ChannelError("recv on a closed channel");
  while (n > 0) {
    const bool ok = p.cv.wait_for(lock, timeout(), [&] { return p.queued > 0 || p.writer_closed; });
    if (p.queued == 0) {
      if (p.writer_closed) {
        throw PeerClosedError("peer closed the in-memory channel after " +
                              std::to_string(wanted - n) + " of " + std::to_string(wanted) +
                              " expected bytes");
      }
      if (!ok) throw ChannelTimeoutError("in-memory recv got no data within the timeout");
    }
    while (n > 0 && !p.chunks.empty()) {
      auto& front = p.chunks.front();
      const std::size_t take = std::min(n, front.size() - p.front_offset);
      std::memcpy(data, front.data() + p.front_offset, take);
      data += take;
      n -= take;
      p.front_offset += take;
      p.queued -= take;
      if (p.front_offset == front.size()) {
        p.chunks.pop_front();
        p.front_offset = 0;
      }
    }
    p.cv.notify_all();
  }
}

}  // namespace pie
