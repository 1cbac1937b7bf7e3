// BFV parameters of pie's HE linear layers, their security guard and the noise
// analysis that sizes the flooding of every server reply.
//
// [REF] J. Fan, F. Vercauteren, "Somewhat Practical Fully Homomorphic
//       Encryption", ePrint 2012/144 (the BFV scheme, as implemented by
//       Microsoft SEAL 4.1).
// [REF] M. Albrecht et al., "Homomorphic Encryption Security Standard",
//       HomomorphicEncryption.org, 2018 (the 128-bit table: N=4096 allows
//       log2 q <= 109, N=8192 allows <= 218; SEAL's CoeffModulus::MaxBitCount).
// [REF] C. Gentry, "Fully Homomorphic Encryption Using Ideal Lattices",
//       STOC 2009, and L. de Castro, C. Juvekar, V. Vaikuntanathan, "Fast
//       Vector Oblivious Linear Evaluation from Ring Learning with Errors",
//       WAHC 2021 (noise flooding for circuit privacy).
//
// Default parameters (DESIGN.md section 5): N = 8192, coefficient modulus of
// four SEAL primes of 60, 60, 60 and 38 bits (218 bits in all, exactly the
// 128-bit bound); the last prime is SEAL's key-level ("special") prime, so
// ciphertexts live modulo the 180-bit product q of the first three. The
// plaintext modulus is t = 2^l, 2 <= l <= 59, without batching.
//
// Noise analysis (worst case, infinity norms; e_max = 21 is the range of
// SEAL's centred binomial error, u and s are ternary so ||.||_1 <= N):
//   input ciphertext: c0 + c1*s = (q/t)*m + v,     |v| <= e_max + 1/2
//   product by W:     noise v*W,                    |.| <= (e_max + 1/2) * sum ||W||_1
//   minus round(q*r/t) (the mask r):                |.| <= 1/2
//   plus Enc_pk(0):   -e*u + e1 + e2*s,             |.| <= e_max * (2N + 1)
//   => B = (e_max + 1/2) * sum||W||_1 + 1/2 + e_max * (2N + 1).
// Flooding adds to c0 a fresh integer f uniform in [-2^(F-1), 2^(F-1)),
// identical in every RNS limb. Per coefficient the statistical distance
// between f and f + noise is at most B / 2^(F-1); over the n coefficients a
// session reveals it is at most n * B / 2^(F-1) <= 2^-40 provided
//   F - 1 >= 40 + ceil(log2 n) + ceil(log2 B).
// F is public and fixed by (q, l) alone, F = min(127, floor(log2 q) - l - 3),
// so nothing about the weights shows in the flood's size; the weights are
// accepted iff the inequality above holds, i.e. iff log2 B <= F - 41 - ceil(log2 n).
// Decryption then succeeds at the top level: |B + f| <= 2^F <= q/(8t).
// The reply is then modulus-switched to q' (the first primes of the chain):
// the noise becomes (q'/q)(B + f) + r with |r| <= (N + 1)/2 per switch, at
// most N + 1 in all, and SEAL decrypts correctly while it is below q'/(2t).
// Choosing the smallest q' with q' >= 8t(N + 1) gives
//   (q'/q)*2^F + N + 1 <= q'/(8t) + q'/(8t) = q'/(4t),
// a factor 2 of margin. q' depends on (l, N) only: public.
// With the defaults: l <= 43 ends on one 60-bit prime, l in [44, 59] on two;
// at l = 37, F = 127 and sum||W||_1 may reach about 2^51 with n = 2^30; at
// l = 59, F = 117 and sum||W||_1 may reach about 2^41.
#pragma once

#include <seal/seal.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace pie::he {

/// The range of SEAL 4.1's centred binomial error (sigma = 3.2): |e| <= 21.
inline constexpr double kErrorMax = 21.0;

/// Statistical security of the flooding, in bits.
inline constexpr int kStatisticalSecurity = 40;

struct HeParameters {
  /// Polynomial degree N (4096, 8192, 16384 or 32768).
  std::size_t poly_degree = 8192;
  /// l: the plaintext modulus is t = 2^l.
  int ring_bits = 37;
  /// Bit sizes of the coefficient-modulus primes; the last one is SEAL's
  /// special (key-level) prime and never carries ciphertext data.
  std::vector<int> coeff_bits = {60, 60, 60, 38};
  /// n: how many plaintext coefficients one session (one key pair) may
  /// reveal in all; the flooding is sized for it.
  std::uint64_t max_revealed = std::uint64_t{1} << 30;
};

/// Validated parameters plus the SEAL context built from them.
/// Non-copyable; share it through std::shared_ptr.
class HeContext {
 public:
  /// @throws std::invalid_argument naming the field: poly_degree, ring_bits
  ///         (outside [2, 59]), coeff_bits (below 128-bit security per the
  ///         HomomorphicEncryption.org table, fewer than 2 primes, or too small
  ///         to hold the flooding), max_revealed (0 or above 2^48).
  explicit HeContext(const HeParameters& params);
  HeContext(const HeContext&) = delete;
  HeContext& operator=(const HeContext&) = delete;

  const HeParameters& params() const { return params_; }
  const seal::SEALContext& seal() const { return context_; }
  std::size_t poly_degree() const { return params_.poly_degree; }
  int ring_bits() const { return params_.ring_bits; }
  std::uint64_t plain_modulus() const { return std::uint64_t{1} << params_.ring_bits; }

  /// Level of the client's ciphertexts (all data primes).
  seal::parms_id_type top_parms_id() const { return context_.first_parms_id(); }
  /// Level of the replies after modulus switching (public: depends on l, N).
  seal::parms_id_type final_parms_id() const { return final_parms_id_; }
  std::size_t top_limbs() const;
  std::size_t final_limbs() const;

  /// F: the flood is uniform in [-2^(F-1), 2^(F-1)).
  int flood_bits() const { return flood_bits_; }
  /// Largest log2 of the noise bound B the flooding covers for max_revealed.
  double max_noise_log2() const;
  /// Largest sum of ||W||_1 per reply the noise budget accepts.
  double max_weight_l1() const;
  /// log2 B for a reply whose plaintext weights have the given sum of L1 norms.
  double noise_bound_log2(double weight_l1) const;
  /// @throws std::invalid_argument (field "weight") when B for weight_l1
  ///         exceeds what the flooding covers.
  void check_weight_l1(double weight_l1) const;

 private:
  HeParameters params_;
  seal::SEALContext context_;
  seal::parms_id_type final_parms_id_{};
  int flood_bits_ = 0;
};

/// Builds and validates a context (the one place that constructs them).
std::shared_ptr<const HeContext> make_context(const HeParameters& params);

/// log2 of the product of a level's primes.
double log2_modulus(const seal::SEALContext::ContextData& data);

}  // namespace pie::he
