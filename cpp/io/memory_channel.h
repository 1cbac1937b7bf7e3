// An in-process connected pair of channels (tests, the embedded demo).
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "io/channel.h"

namespace pie {

struct MemoryPipe;  // one direction of the pair; defined in memory_channel.cpp

class MemoryChannel final : public Channel {
 public:
  /// Each direction holds at most capacity_bytes in flight: a sender that runs
  /// ahead blocks (up to its timeout) like a TCP sender with a full window.
  /// transcript_check = false: both ends keep no transcript check (Channel()).
  static std::pair<std::unique_ptr<MemoryChannel>, std::unique_ptr<MemoryChannel>> make_pair(
      std::size_t capacity_bytes = std::size_t{64} << 20, bool transcript_check = true);

  MemoryChannel(std::shared_ptr<MemoryPipe> out, std::shared_ptr<MemoryPipe> in, bool transcript_check = true);
  ~MemoryChannel() override;
  void close() override;

 protected:
  void write_all(const std::uint8_t* data, std::size_t n) override;
  void read_all(std::uint8_t* data, std::size_t n) override;

 private:
  std::shared_ptr<MemoryPipe> out_;
  std::shared_ptr<MemoryPipe> in_;
  std::vector<std::uint8_t> rx_chunk_;  // chunk being consumed by this reader
  std::size_t rx_offset_ = 0;
};

}  // namespace pie
