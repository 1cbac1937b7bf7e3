// Inspection of one linear step with the secret key in hand: the material an
// independent SEAL build needs to decrypt a reply, and the measurements the
// circuit-privacy and correctness tests look at. Runs the I/O-free kernels
// of linear_kernel.h directly (no channel).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "he/conv_layout.h"
#include "he/params.h"

namespace pie::he {

struct Inspection {
  // SEAL serialisations, compression off.
  std::vector<std::uint8_t> parms;       // EncryptionParameters
  std::vector<std::uint8_t> secret_key;  // the client's SecretKey
  std::vector<std::uint8_t> reply;       // reply 0 after flooding and modulus switching, before dropping
  std::vector<std::uint64_t> expected;   // the N plaintext coefficients reply 0 must decrypt to (ideal twin)
  std::vector<std::uint64_t> decrypted;  // what pie's SEAL decrypts reply 0 to (N values)
  std::vector<std::uint32_t> output_coeffs;  // coefficients of reply 0 that carry outputs
  /// Reply 0 at the top level after flooding: (c0 + c1*s - round(q*m/t)),
  /// centred, divided by 2^(F-1) (N values; ~uniform in [-1, 1)).
  std::vector<double> noise;
  /// log2 max |centred coefficient| of c1 * a^-1 (first RNS limb, top level),
  /// a = the client's uniform half: for the bare product (it is W: short) and
  /// for the reply (re-randomised: about log2 q_0 - 1).
  double product_c1_over_a_log2 = 0;
  double reply_c1_over_a_log2 = 0;
  double limb0_log2 = 0;
  /// log2 of the largest |noise| (top level, centred, all N coefficients)
  /// of max(trials, 1) fresh replies before flooding: the quantity the
  /// bound B = 2^noise_bound_log2 must cover.
  double unflooded_noise_log2 = 0;
  /// Of `trials` fresh replies to the same product, how many decrypted (in
  /// full, all N coefficients) to anything but the ideal twin.
  std::size_t trials = 0;
  std::size_t failures = 0;
  int flood_bits = 0;
  double noise_bound_log2 = 0;
  double max_noise_log2 = 0;
  std::size_t top_limbs = 0;
  std::size_t final_limbs = 0;
};

/// @throws std::invalid_argument as run_secure_linear does.
Inspection inspect_linear(const HeParameters& params, const ConvShape& shape, const std::uint64_t* x,
                          const std::int64_t* weights, std::size_t trials);

}  // namespace pie::he
