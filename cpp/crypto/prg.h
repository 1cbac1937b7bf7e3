// Pseudo-random generator: AES-128 in counter mode under a 128-bit seed.
// [REF] NIST SP 800-38A (CTR mode); AES as a PRF on distinct counters.
//
// Security: 128-bit seeds; a generator refuses to produce more than 2^64
// blocks, far below the birthday bound of the 128-bit block.
#pragma once

#include <cstddef>
#include <cstdint>

#include "crypto/aes.h"

namespace pie {

class Prg {
 public:
  /// Seeds from the OS CSPRNG (through OpenSSL).
  explicit Prg(AesBackend backend = default_aes_backend());
  /// Deterministic stream for a given seed (both parties can expand a shared seed).
  explicit Prg(const Block& seed, AesBackend backend = default_aes_backend());

  void random_blocks(Block* out, std::size_t n);
  /// Fills n bytes; every call starts on a fresh block, so unused tail bytes
  /// of the last block are discarded, never reused.
  void random_bytes(void* out, std::size_t n);
  Block random_block();
  std::uint64_t random_u64();

 private:
  Aes128 aes_;
  std::uint64_t counter_ = 0;
};

}  // namespace pie
