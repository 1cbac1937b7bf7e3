// AES-128 encryption (FIPS-197), the primitive under pie's PRG and the
// fixed-key hashes of garbling and OT extension.
//
// Three backends with identical results: AES-NI on 512-bit registers (VAES)
// or on 128-bit ones (the widest the CPU has is selected at run time;
// compiled through per-function target attributes, so no global -maes /
// -march flag is needed) and OpenSSL's EVP AES-128-ECB, the portable fallback
// (OpenSSL picks its own constant-time implementation).
#pragma once

#include <cstddef>
#include <string>

#include "crypto/block.h"

namespace pie {

/// kVaes: the AES-NI instructions on 512-bit registers (VAES, four blocks per
/// instruction); kAesNi: on 128-bit registers; kOpenSsl: the portable fallback.
/// All three compute the same AES-128.
enum class AesBackend { kAesNi, kOpenSsl, kVaes };

std::string to_string(AesBackend b);

/// The backend named "vaes", "aes-ni" or "openssl".
/// @throws std::invalid_argument for any other name.
AesBackend aes_backend_from_string(const std::string& name);

/// True if this build has the AES-NI path and the running CPU supports it.
bool aesni_available();

/// True if this build has the AES-NI path and the running CPU has VAES and AVX-512F.
bool vaes_available();

/// VAES when available, else AES-NI, else OpenSSL.
AesBackend default_aes_backend();

class Aes128 {
 public:
  /// Expands `key` (its 16 bytes in memory order are the AES key).
  /// @throws std::invalid_argument if `backend` is AES-NI or VAES and unavailable.
  explicit Aes128(const Block& key, AesBackend backend = default_aes_backend());

  /// out[i] = AES_key(in[i]) for i < n; in and out may alias. Safe to call
  /// concurrently from several threads.
  void encrypt(const Block* in, Block* out, std::size_t n) const;
  Block encrypt(const Block& x) const;

  AesBackend backend() const { return backend_; }

 private:
  AesBackend backend_;
  Block key_;
  Block round_keys_[11];  // AES-NI key schedule
};

}  // namespace pie
