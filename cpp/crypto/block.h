// A 128-bit block: the unit of AES, wire labels and OT messages.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>

namespace pie {

struct alignas(16) Block {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;

  static Block from_bytes(const std::uint8_t bytes[16]) {
    Block b;
    std::memcpy(&b, bytes, 16);
    return b;
  }
  std::array<std::uint8_t, 16> bytes() const {
    std::array<std::uint8_t, 16> out;
    std::memcpy(out.data(), this, 16);
    return out;
  }
  /// Least significant bit: the point-and-permute colour bit of a label.
  bool lsb() const { return (lo & 1U) != 0; }

  Block& operator^=(const Block& o) {
    lo ^= o.lo;
    hi ^= o.hi;
    return *this;
  }
  friend Block operator^(Block a, const Block& b) { return a ^= b; }
  friend Block operator&(const Block& a, const Block& b) { return Block{a.lo & b.lo, a.hi & b.hi}; }
  friend bool operator==(const Block& a, const Block& b) { return a.lo == b.lo && a.hi == b.hi; }
  friend bool operator!=(const Block& a, const Block& b) { return !(a == b); }
};

static_assert(sizeof(Block) == 16, "Block must be exactly 128 bits");

}  // namespace pie
