// A BFV encrypt/decrypt round trip through SEAL: proves the dependency is
// wired into pie_core and usable (the HE layers live next to this file).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pie::he {

/// Encrypts the polynomial with the given coefficients (plaintext modulus
/// t = 2^plain_bits, no batching) under a fresh secret key with SEAL's default
/// 128-bit-secure coefficient modulus for poly_degree, and decrypts it.
/// @throws std::invalid_argument naming the bad field (poly_degree not in
///         {4096, 8192, 16384, 32768}, plain_bits not in [2, 59], too many or
///         too large coefficients).
std::vector<std::uint64_t> bfv_roundtrip(const std::vector<std::uint64_t>& coeffs, int plain_bits,
                                         std::size_t poly_degree);

/// "MAJOR.MINOR.PATCH" of the SEAL pie was built against.
std::string seal_version();

}  // namespace pie::he
