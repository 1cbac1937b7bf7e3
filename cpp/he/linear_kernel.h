// I/O-free kernels of the offline linear step: pure functions over SEAL
// objects. The protocol classes (linear_protocol.h) add the messaging.
//
// [REF] P. Mishra, R. Lehmkuhl, A. Srinivasan, W. Zheng, R. A. Popa, "Delphi:
//       A Cryptographic Inference Service for Neural Networks", USENIX
//       Security 2020 (offline phase: the client sends Enc(x_c), the server
//       returns Enc(W x_c - s) for a fresh mask s).
// [REF] Z. Huang et al., "Cheetah", USENIX Security 2022 (coefficient
//       encoding, seeded secret-key ciphertexts, dropping of unused
//       coefficients after modulus switching).
// [REF] J. Fan, F. Vercauteren, ePrint 2012/144 (BFV).
// Flooding bound: see params.h.
//
// Client:  encrypt_inputs   seeded secret-key encryptions of x_c (half size)
// Server:  LinearServerKernel::products    sum_c Enc(x_c) * W, in the NTT domain
//          LinearServerKernel::reply_top   - Delta*s, + Enc_pk(0), + flood
//          switch_to_final                 modulus switch to the public final level
// Client:  decrypt_reply    W x_c - s at the output slots
// Twin:    ideal_reply      the plaintext polynomial a reply decrypts to.
#pragma once

#include <seal/seal.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "crypto/prg.h"
#include "he/conv_layout.h"
#include "he/params.h"

namespace pie::he {

/// Client: SEAL-serialised (compression off) seeded secret-key encryptions
/// of every input polynomial of the layout, at the top level.
/// @throws std::invalid_argument if the layout's degree differs from the context's.
std::vector<std::vector<std::uint8_t>> encrypt_inputs(const HeContext& ctx, const seal::Encryptor& encryptor,
                                                      const ConvLayout& layout, const std::uint64_t* x);

/// Server: loads a client ciphertext (validated against the context, top
/// level, two polynomials) and moves it to the NTT domain.
/// @throws std::invalid_argument ("ciphertext") on anything else.
seal::Ciphertext load_input(const HeContext& ctx, const std::uint8_t* data, std::size_t size);

/// One reply before coefficient dropping, with the mask it hides.
struct Reply {
  seal::Ciphertext ct;
  std::vector<std::uint64_t> mask;  // s: N values in [0, t)
};

class LinearServerKernel {
 public:
  /// Transforms and encodes the weights (O, C/groups, kh, kw) for the layout
  /// and checks them against the noise budget.
  /// @throws std::invalid_argument ("weight") when sum ||W||_1 of some reply
  ///         exceeds HeContext::max_weight_l1().
  LinearServerKernel(std::shared_ptr<const HeContext> ctx, const ConvLayout& layout, const std::int64_t* weights);
  LinearServerKernel(const LinearServerKernel&) = delete;
  LinearServerKernel& operator=(const LinearServerKernel&) = delete;

  /// Largest sum of ||W||_1 over the plaintexts of one reply.
  double weight_l1() const { return weight_l1_; }
  const std::vector<std::int64_t>& transformed_weights() const { return weights_; }

  /// The products sum_c in[tile, c] * W[oblock, c], one NTT-form ciphertext
  /// per reply polynomial (multi-threaded over output blocks).
  /// @throws std::invalid_argument ("inputs") on a wrong count or level.
  std::vector<seal::Ciphertext> products(const std::vector<seal::Ciphertext>& inputs) const;

  /// Turns a product (NTT form, top level) into a reply at the top level, in
  /// coefficient form: subtracts round(q*s/t) for a fresh uniform s, adds a
  /// fresh Enc_pk(0) and floods c0 with a fresh uniform integer of
  /// HeContext::flood_bits() bits in every RNS limb. `prg` supplies s and the
  /// flood; SEAL's generator supplies u, e1, e2. All of these are additions
  /// made before the modulus switch, so their order does not matter.
  Reply reply_top(seal::Ciphertext product, const seal::PublicKey& pk, Prg& prg) const;
  /// reply_top without the flood: re-randomised and masked. Its noise is what
  /// the flood must hide, bounded by HeContext::noise_bound_log2(weight_l1())
  /// (inspection measures it against that bound).
  Reply unflooded_reply(seal::Ciphertext product, const seal::PublicKey& pk, Prg& prg) const;
  /// Adds the flood to c0: a fresh uniform integer in [-2^(F-1), 2^(F-1)) in every RNS limb.
  void flood(seal::Ciphertext& ct, Prg& prg) const;

 private:
  std::shared_ptr<const HeContext> ctx_;
  ConvLayout layout_;
  std::vector<std::int64_t> weights_;
  double weight_l1_ = 0;
};

/// Modulus-switches a reply to HeContext::final_parms_id() (in place).
void switch_to_final(const HeContext& ctx, seal::Ciphertext& ct);

/// Server: all replies of a step, final level (products, reply_top and the
/// switch, multi-threaded); each reply draws its own OS-seeded Prg.
std::vector<Reply> make_replies(const HeContext& ctx, const LinearServerKernel& kernel,
                                std::vector<seal::Ciphertext> products, const seal::PublicKey& pk);

/// Client: decrypts a (possibly coefficient-dropped) final-level reply and
/// writes the values at `slots` into out[slot.index].
void decrypt_reply(const HeContext& ctx, const seal::Decryptor& decryptor, const seal::Ciphertext& ct,
                   const std::vector<OutputSlot>& slots, std::uint64_t* out);

/// Ideal twin of one reply: the plaintext polynomial (N values mod t) that
/// reply `output` decrypts to, sum_c x_poly * W_poly (negacyclic) - mask.
std::vector<std::uint64_t> ideal_reply(const ConvLayout& layout, const std::vector<std::int64_t>& transformed,
                                       const std::uint64_t* x, std::size_t output,
                                       const std::vector<std::uint64_t>& mask, int ring_bits);

}  // namespace pie::he
