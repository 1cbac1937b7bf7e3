#include "io/memory_channel.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace pie {

namespace {
constexpr std::size_t kSpareChunks = 8;  // at most 8 MiB kept per direction
}  // namespace

struct MemoryPipe {
  explicit MemoryPipe(std::size_t cap) : capacity(cap) {}
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::vector<std::uint8_t>> chunks;
  std::size_t queued = 0;  // bytes in chunks
  // Consumed chunks for the writer to refill: fresh 1 MiB buffers would cost
  // a page fault per 4 KiB on every transfer (about 2 us each in a VM).
  std::vector<std::vector<std::uint8_t>> spare;
  bool writer_closed = false;
  bool reader_closed = false;
  const std::size_t capacity;
};

std::pair<std::unique_ptr<MemoryChannel>, std::unique_ptr<MemoryChannel>> MemoryChannel::make_pair(
    std::size_t capacity_bytes, bool transcript_check) {
  if (capacity_bytes == 0) throw std::invalid_argument("capacity_bytes must be positive");
  auto a_to_b = std::make_shared<MemoryPipe>(capacity_bytes);
  auto b_to_a = std::make_shared<MemoryPipe>(capacity_bytes);
  return {std::make_unique<MemoryChannel>(a_to_b, b_to_a, transcript_check),
          std::make_unique<MemoryChannel>(b_to_a, a_to_b, transcript_check)};
}

MemoryChannel::MemoryChannel(std::shared_ptr<MemoryPipe> out, std::shared_ptr<MemoryPipe> in,
                             bool transcript_check)
    : Channel(transcript_check), out_(std::move(out)), in_(std::move(in)) {}

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
  // Bounded chunks let the reader start early and let the allocator recycle
  // pages; copies happen outside the lock so both ends run in parallel.
  constexpr std::size_t kMaxChunk = std::size_t{1} << 20;
  MemoryPipe& p = *out_;
  while (n > 0) {
    std::vector<std::uint8_t> chunk;
    {
      std::lock_guard<std::mutex> lock(p.mu);
      if (!p.spare.empty()) {
        chunk = std::move(p.spare.back());
        p.spare.pop_back();
      }
    }
    chunk.assign(data, data + std::min(n, std::min(kMaxChunk, p.capacity)));
    std::unique_lock<std::mutex> lock(p.mu);
    if (p.writer_closed) throw ChannelError("send on a closed channel");
    const bool ok = p.cv.wait_for(lock, timeout(), [&] {
      return p.reader_closed || p.queued + chunk.size() <= p.capacity;
    });
    if (p.reader_closed) throw PeerClosedError("peer closed the in-memory channel");
    if (!ok) throw ChannelTimeoutError("in-memory send made no progress within the timeout");
    data += chunk.size();
    n -= chunk.size();
    p.queued += chunk.size();
    p.chunks.push_back(std::move(chunk));
    p.cv.notify_all();
  }
}

void MemoryChannel::read_all(std::uint8_t* data, std::size_t n) {
  MemoryPipe& p = *in_;
  const std::size_t wanted = n;
  while (n > 0) {
    if (rx_offset_ == rx_chunk_.size()) {
      // Take the next whole chunk under the lock; copy from it without.
      std::unique_lock<std::mutex> lock(p.mu);
      if (p.reader_closed) throw ChannelError("recv on a closed channel");
      const bool ok = p.cv.wait_for(lock, timeout(), [&] { return p.queued > 0 || p.writer_closed; });
      if (p.queued == 0) {
        if (p.writer_closed) {
          throw PeerClosedError("peer closed the in-memory channel after " +
                                std::to_string(wanted - n) + " of " + std::to_string(wanted) +
                                " expected bytes");
        }
        if (!ok) throw ChannelTimeoutError("in-memory recv got no data within the timeout");
      }
      if (rx_chunk_.capacity() != 0 && p.spare.size() < kSpareChunks) p.spare.push_back(std::move(rx_chunk_));
      rx_chunk_ = std::move(p.chunks.front());
      p.chunks.pop_front();
      p.queued -= rx_chunk_.size();
      rx_offset_ = 0;
      p.cv.notify_all();
    }
    const std::size_t take = std::min(n, rx_chunk_.size() - rx_offset_);
    std::memcpy(data, rx_chunk_.data() + rx_offset_, take);
    rx_offset_ += take;
    data += take;
    n -= take;
  }
}

}  // namespace pie
