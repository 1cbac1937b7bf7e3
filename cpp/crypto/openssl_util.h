// The pieces of OpenSSL's libcrypto pie relies on: the OS-seeded CSPRNG and SHA-256.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace pie {

using Sha256Digest = std::array<std::uint8_t, 32>;

/// Fills out with n bytes from OpenSSL's CSPRNG (seeded by the OS).
/// @throws std::runtime_error if the generator is not seeded.
void secure_random(void* out, std::size_t n);

/// SHA-256 (FIPS 180-4) of one buffer.
Sha256Digest sha256(const void* data, std::size_t n);

/// Incremental SHA-256, for hashing several fields without concatenating them.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  Sha256& update(const void* data, std::size_t n);
  /// Returns the digest; the object must not be updated afterwards.
  Sha256Digest finish();

 private:
  struct Impl;
  Impl* impl_;
};

/// The libcrypto version string, e.g. "OpenSSL 3.0.19 27 Jan 2026".
std::string openssl_version();

}  // namespace pie
