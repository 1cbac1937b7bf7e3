#include "crypto/prg.h"

#include <cstring>
#include <stdexcept>
#include <vector>

#include "crypto/openssl_util.h"

namespace pie {

namespace {

Block os_seed() {
  Block seed;
  secure_random(&seed, sizeof seed);
  return seed;
}

}  // namespace

Prg::Prg(AesBackend backend) : aes_(os_seed(), backend) {}

Prg::Prg(const Block& seed, AesBackend backend) : aes_(seed, backend) {}

void Prg::random_blocks(Block* out, std::size_t n) {
  if (n > UINT64_MAX - counter_) throw std::overflow_error("Prg: counter space exhausted");
  for (std::size_t i = 0; i < n; ++i) out[i] = Block{counter_ + i, 0};
  counter_ += n;
  aes_.encrypt(out, out, n);
}

void Prg::random_bytes(void* out, std::size_t n) {
  auto* p = static_cast<std::uint8_t*>(out);
  const std::size_t whole = n / sizeof(Block);
  constexpr std::size_t kChunk = 4096;
  Block buf[kChunk];
  for (std::size_t done = 0; done < whole;) {
    const std::size_t m = whole - done < kChunk ? whole - done : kChunk;
    random_blocks(buf, m);
    std::memcpy(p + done * sizeof(Block), buf, m * sizeof(Block));
    done += m;
  }
  const std::size_t tail = n % sizeof(Block);
  if (tail != 0) {
    const Block b = random_block();
    std::memcpy(p + whole * sizeof(Block), &b, tail);
  }
}

Block Prg::random_block() {
  Block b;
  random_blocks(&b, 1);
  return b;
}

std::uint64_t Prg::random_u64() { return random_block().lo; }

}  // namespace pie
