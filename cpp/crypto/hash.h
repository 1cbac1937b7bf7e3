// The tweakable circular correlation-robust hash used by half-gates garbling
// and by OT extension.
// [REF] C. Guo, J. Katz, X. Wang, Y. Yu, "Efficient and Secure Multiparty
//       Computation from Fixed-Key Block Ciphers", IEEE S&P 2020, section 7.4:
//       H(x, i) = pi(pi(x) xor i) xor pi(x), pi = AES-128 under a fixed public key.
// Security rests on pi being modelled as a random permutation (128-bit) and on
// no tweak being used twice under one global offset; callers own the tweaks.
#pragma once

#include <cstddef>

#include "crypto/aes.h"
#include "crypto/aesni.h"

namespace pie {

class TccrHash {
 public:
  /// The fixed, public AES key: the first 16 bytes of SHA-256("pie fixed-key AES").
  static Block fixed_key();

  explicit TccrHash(AesBackend backend = default_aes_backend());

  Block operator()(const Block& x, const Block& tweak) const;
  /// out[k] = H(x[k], tweak[k]) for k < n; out may alias x.
  void hash(const Block* x, const Block* tweak, Block* out, std::size_t n) const;

  AesBackend backend() const { return pi_.backend(); }

#ifdef PIE_HAVE_AESNI_PATH
  /// The fixed key's AES-NI round keys, for kernels that hash in registers
  /// (aesni::tccr_lanes). Only meaningful when aesni_available().
  static const aesni::KeySchedule& aesni_schedule();
#endif

 private:
  Aes128 pi_;
};

}  // namespace pie
