#include "he/linear_kernel.h"

#include "he/parallel.h"

#include <seal/util/iterator.h>
#include <seal/util/ntt.h>
#include <seal/util/polyarithsmallmod.h>
#include <seal/util/rlwe.h>
#include <seal/util/scalingvariant.h>
#include <seal/util/uintarithsmallmod.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <stdexcept>
#include <string>

namespace pie::he {

namespace {

__extension__ typedef unsigned __int128 u128;

// The level of the client's ciphertexts (all data primes).
const seal::SEALContext::ContextData& top_data(const HeContext& ctx) { return *ctx.seal().first_context_data(); }

}  // namespace

std::vector<std::vector<std::uint8_t>> encrypt_inputs(const HeContext& ctx, const seal::Encryptor& encryptor,
                                                      const ConvLayout& layout, const std::uint64_t* x) {
  const std::size_t n = ctx.poly_degree();
  if (layout.poly_degree() != n) throw std::invalid_argument("layout: poly_degree differs from the context's");
  std::vector<std::vector<std::uint8_t>> out(layout.num_inputs());
  parallel_for(layout.num_inputs(), [&](std::size_t i) {
    seal::Plaintext plain(n);
    layout.encode_input(x, i, plain.data());
    // SEAL scales by round(q*m/t) and, with the secret key, derives c1 from
    // a seed that replaces it in the serialisation (half-size ciphertexts).
    const auto ct = encryptor.encrypt_symmetric(plain);
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(ct.save_size(seal::compr_mode_type::none)));
    const auto written = ct.save(reinterpret_cast<seal::seal_byte*>(bytes.data()), bytes.size(),
                                 seal::compr_mode_type::none);
    bytes.resize(static_cast<std::size_t>(written));
    out[i] = std::move(bytes);
  });
  return out;
}

seal::Ciphertext load_input(const HeContext& ctx, const std::uint8_t* data, std::size_t size) {
  seal::Ciphertext ct;
  try {
    ct.load(ctx.seal(), reinterpret_cast<const seal::seal_byte*>(data), size);
  } catch (const std::exception& e) {
    throw std::invalid_argument(std::string("ciphertext: not a valid SEAL ciphertext for these parameters (") +
                                e.what() + ")");
  }
  if (ct.parms_id() != ctx.top_parms_id() || ct.size() != 2 || ct.is_ntt_form()) {
    throw std::invalid_argument("ciphertext: expected a fresh two-part ciphertext at the top level");
  }
  seal::Evaluator(ctx.seal()).transform_to_ntt_inplace(ct);
  return ct;
}

LinearServerKernel::LinearServerKernel(std::shared_ptr<const HeContext> ctx, const ConvLayout& layout,
                                       const std::int64_t* weights)
    : ctx_(std::move(ctx)), layout_(layout) {
  if (layout_.poly_degree() != ctx_->poly_degree()) {
    throw std::invalid_argument("layout: poly_degree differs from the context's");
  }
  weights_ = layout_.transform_weights(weights, ctx_->ring_bits());
  // The L1 norm of a reply's plaintexts, summed over its input blocks, is the
  // L1 norm of the transformed weights of its output channels.
  const std::size_t per_out = weights_.size() / layout_.shape().out_channels;
  for (std::size_t ob = 0; ob < layout_.num_oblocks(); ++ob) {
    double l1 = 0;
    const std::size_t o0 = ob * layout_.outputs_per_block();
    const std::size_t o1 = std::min(layout_.shape().out_channels, o0 + layout_.outputs_per_block());
    for (std::size_t i = o0 * per_out; i < o1 * per_out; ++i) l1 += std::fabs(static_cast<double>(weights_[i]));
    weight_l1_ = std::max(weight_l1_, l1);
  }
  ctx_->check_weight_l1(weight_l1_);
}

std::vector<seal::Ciphertext> LinearServerKernel::products(const std::vector<seal::Ciphertext>& inputs) const {
  if (inputs.size() != layout_.num_inputs()) {
    throw std::invalid_argument("inputs: expected " + std::to_string(layout_.num_inputs()) + " ciphertexts");
  }
  for (const auto& ct : inputs) {
    if (ct.parms_id() != ctx_->top_parms_id() || ct.size() != 2 || !ct.is_ntt_form()) {
      throw std::invalid_argument("inputs: expected NTT-form ciphertexts at the top level");
    }
  }
  const auto& data = top_data(*ctx_);
  const auto& moduli = data.parms().coeff_modulus();
  const auto* ntt = data.small_ntt_tables();
  const std::size_t n = ctx_->poly_degree(), limbs = moduli.size();
  const std::size_t tiles = layout_.num_tiles(), cblocks = layout_.num_cblocks(), oblocks = layout_.num_oblocks();

  std::vector<seal::Ciphertext> out(layout_.num_outputs());
  for (auto& ct : out) {
    ct.resize(ctx_->seal(), ctx_->top_parms_id(), 2);
    ct.is_ntt_form() = true;
  }
  parallel_for(oblocks, [&](std::size_t ob) {
    std::vector<std::int64_t> poly(n);
    std::vector<std::uint64_t> plain(limbs * n);
    // Lazy accumulation: a weight residue from the lazy NTT is below 4q and an
    // input residue below q, so a product is below 2^122 (q < 2^60) and 63
    // of them fit in 128 bits before a Barrett reduction is due.
    std::vector<u128> acc(tiles * 2 * limbs * n, 0);
    std::size_t pending = 0;
    auto reduce = [&](bool final_pass) {
      for (std::size_t tile = 0; tile < tiles; ++tile) {
        for (std::size_t part = 0; part < 2; ++part) {
          for (std::size_t j = 0; j < limbs; ++j) {
            u128* a = acc.data() + ((tile * 2 + part) * limbs + j) * n;
            std::uint64_t* dst = out[tile * oblocks + ob].data(part) + j * n;
            for (std::size_t k = 0; k < n; ++k) {
              const std::uint64_t words[2] = {static_cast<std::uint64_t>(a[k]), static_cast<std::uint64_t>(a[k] >> 64)};
              const std::uint64_t r = seal::util::barrett_reduce_128(words, moduli[j]);
              if (final_pass) {
                dst[k] = r;
              } else {
                a[k] = r;
              }
            }
          }
        }
      }
    };
    for (std::size_t cb = 0; cb < cblocks; ++cb) {
      if (!layout_.pair_used(ob, cb)) continue;
      layout_.encode_weights(weights_, ob, cb, poly.data());
      for (std::size_t j = 0; j < limbs; ++j) {
        const std::uint64_t q = moduli[j].value();
        std::uint64_t* p = plain.data() + j * n;
        for (std::size_t k = 0; k < n; ++k) {
          // Centred weights: |w| <= 2^58 < q, so w < 0 maps to q - |w|.
          p[k] = poly[k] >= 0 ? static_cast<std::uint64_t>(poly[k]) : q - static_cast<std::uint64_t>(-poly[k]);
        }
        seal::util::ntt_negacyclic_harvey_lazy(p, ntt[j]);  // output in [0, 4q)
      }
      if (pending == 63) {
        reduce(false);
        pending = 1;
      }
      ++pending;
      for (std::size_t tile = 0; tile < tiles; ++tile) {
        const seal::Ciphertext& in = inputs[tile * cblocks + cb];
        for (std::size_t j = 0; j < limbs; ++j) {
          u128* a0 = acc.data() + ((tile * 2 + 0) * limbs + j) * n;
          u128* a1 = acc.data() + ((tile * 2 + 1) * limbs + j) * n;
          const std::uint64_t* c0 = in.data(0) + j * n;
          const std::uint64_t* c1 = in.data(1) + j * n;
          const std::uint64_t* p = plain.data() + j * n;
          for (std::size_t k = 0; k < n; ++k) {
            a0[k] += static_cast<u128>(c0[k]) * p[k];
            a1[k] += static_cast<u128>(c1[k]) * p[k];
          }
        }
      }
    }
    reduce(true);
  });
  return out;
}

Reply LinearServerKernel::reply_top(seal::Ciphertext product, const seal::PublicKey& pk, Prg& prg) const {
  Reply reply = unflooded_reply(std::move(product), pk, prg);
  flood(reply.ct, prg);
  return reply;
}

Reply LinearServerKernel::unflooded_reply(seal::Ciphertext ct, const seal::PublicKey& pk, Prg& prg) const {
  const auto& data = top_data(*ctx_);
  const auto& parms = data.parms();
  const auto& moduli = parms.coeff_modulus();
  const auto* ntt = data.small_ntt_tables();
  const std::size_t n = ctx_->poly_degree(), limbs = moduli.size();
  if (ct.parms_id() != ctx_->top_parms_id() || ct.size() != 2 || !ct.is_ntt_form()) {
    throw std::invalid_argument("product: expected an NTT-form ciphertext at the top level");
  }
  auto pool = seal::MemoryManager::GetPool(seal::mm_prof_opt::mm_force_new, true);
  auto random = parms.random_generator()->create();

  // Re-randomisation, part 1 (NTT domain): + (p0*u, p1*u) with fresh ternary u.
  // The public key lives at the key level; its first limbs are those of q.
  auto u = seal::util::allocate_poly(n, limbs, pool);
  seal::util::sample_poly_ternary(random, parms, u.get());
  auto tmp = seal::util::allocate_uint(n, pool);
  for (std::size_t j = 0; j < limbs; ++j) {
    seal::util::ntt_negacyclic_harvey(u.get() + j * n, ntt[j]);
    for (std::size_t part = 0; part < 2; ++part) {
      seal::util::dyadic_product_coeffmod(u.get() + j * n, pk.data().data(part) + j * n, n, moduli[j], tmp.get());
      seal::util::add_poly_coeffmod(ct.data(part) + j * n, tmp.get(), n, moduli[j], ct.data(part) + j * n);
    }
  }
  for (std::size_t part = 0; part < 2; ++part) {
    for (std::size_t j = 0; j < limbs; ++j) seal::util::inverse_ntt_negacyclic_harvey(ct.data(part) + j * n, ntt[j]);
  }
  ct.is_ntt_form() = false;
  // Part 2: + (e1, e2), fresh centred binomial errors.
  for (std::size_t part = 0; part < 2; ++part) {
    seal::util::sample_poly_cbd(random, parms, u.get());
    seal::util::add_poly_coeffmod(seal::util::RNSIter(u.get(), n), seal::util::RNSIter(ct.data(part), n), limbs,
                                  moduli, seal::util::RNSIter(ct.data(part), n));
  }

  // Mask: c0 -= round(q*s/t) for a fresh uniform s in Z_t^N.
  Reply reply;
  const std::uint64_t tmask = ctx_->plain_modulus() - 1;
  reply.mask.resize(n);
  prg.random_bytes(reply.mask.data(), n * sizeof(std::uint64_t));
  seal::Plaintext s_plain(n);
  for (std::size_t k = 0; k < n; ++k) s_plain[k] = reply.mask[k] &= tmask;
  seal::util::multiply_sub_plain_with_scaling_variant(s_plain, data, seal::util::RNSIter(ct.data(0), n));
  reply.ct = std::move(ct);
  return reply;
}

void LinearServerKernel::flood(seal::Ciphertext& ct, Prg& prg) const {
  const auto& moduli = top_data(*ctx_).parms().coeff_modulus();
  const std::size_t n = ctx_->poly_degree(), limbs = moduli.size();
  // c0 += f, f uniform in [-2^(F-1), 2^(F-1)), the same integer in every limb.
  const int f_bits = ctx_->flood_bits();
  const u128 f_mask = (u128{1} << f_bits) - 1;  // F <= 127
  const u128 half = u128{1} << (f_bits - 1);
  std::vector<std::uint64_t> half_mod(limbs);
  for (std::size_t j = 0; j < limbs; ++j) {
    const std::uint64_t words[2] = {static_cast<std::uint64_t>(half), static_cast<std::uint64_t>(half >> 64)};
    half_mod[j] = seal::util::barrett_reduce_128(words, moduli[j]);
  }
  std::vector<std::uint64_t> raw(2 * n);
  prg.random_bytes(raw.data(), raw.size() * sizeof(std::uint64_t));
  for (std::size_t k = 0; k < n; ++k) {
    const u128 v = ((static_cast<u128>(raw[2 * k + 1]) << 64) | raw[2 * k]) & f_mask;
    const std::uint64_t words[2] = {static_cast<std::uint64_t>(v), static_cast<std::uint64_t>(v >> 64)};
    for (std::size_t j = 0; j < limbs; ++j) {
      const std::uint64_t vm = seal::util::barrett_reduce_128(words, moduli[j]);
      const std::uint64_t fj = seal::util::sub_uint_mod(vm, half_mod[j], moduli[j]);
      std::uint64_t& c = ct.data(0)[j * n + k];
      c = seal::util::add_uint_mod(c, fj, moduli[j]);
    }
  }
}

void switch_to_final(const HeContext& ctx, seal::Ciphertext& ct) {
  seal::Evaluator(ctx.seal()).mod_switch_to_inplace(ct, ctx.final_parms_id());
}

std::vector<Reply> make_replies(const HeContext& ctx, const LinearServerKernel& kernel,
                                std::vector<seal::Ciphertext> products, const seal::PublicKey& pk) {
  std::vector<Reply> replies(products.size());
  parallel_for(products.size(), [&](std::size_t i) {
    Prg prg;  // OS-seeded, one per reply: nothing is reused across replies
    replies[i] = kernel.reply_top(std::move(products[i]), pk, prg);
    switch_to_final(ctx, replies[i].ct);
  });
  return replies;
}

void decrypt_reply(const HeContext& ctx, const seal::Decryptor& decryptor, const seal::Ciphertext& ct,
                   const std::vector<OutputSlot>& slots, std::uint64_t* out) {
  if (ct.size() != 2 || ct.is_ntt_form() || !ctx.seal().get_context_data(ct.parms_id())) {
    throw std::invalid_argument("reply: expected a two-part coefficient-form ciphertext of this context");
  }
  seal::Plaintext plain;
  // Decryptor is logically const but SEAL declares decrypt non-const.
  const_cast<seal::Decryptor&>(decryptor).decrypt(ct, plain);
  for (const auto& s : slots) out[s.index] = s.coeff < plain.coeff_count() ? plain[s.coeff] : 0;
}

std::vector<std::uint64_t> ideal_reply(const ConvLayout& layout, const std::vector<std::int64_t>& transformed,
                                       const std::uint64_t* x, std::size_t output,
                                       const std::vector<std::uint64_t>& mask, int ring_bits) {
  const std::size_t n = layout.poly_degree();
  if (output >= layout.num_outputs()) throw std::invalid_argument("output: reply index out of range");
  if (mask.size() != n) throw std::invalid_argument("mask: expected poly_degree values");
  const std::size_t tile = output / layout.num_oblocks(), ob = output % layout.num_oblocks();
  std::vector<std::uint64_t> acc(n, 0);  // uint64 wrap-around is exact mod 2^l
  std::vector<std::uint64_t> xin(n);
  std::vector<std::int64_t> w(n);
  for (std::size_t cb = 0; cb < layout.num_cblocks(); ++cb) {
    if (!layout.pair_used(ob, cb)) continue;
    layout.encode_input(x, tile * layout.num_cblocks() + cb, xin.data());
    layout.encode_weights(transformed, ob, cb, w.data());
    for (std::size_t b = 0; b < n; ++b) {
      if (w[b] == 0) continue;
      const auto wb = static_cast<std::uint64_t>(w[b]);
      for (std::size_t a = 0; a < n; ++a) {
        const std::uint64_t prod = wb * xin[a];
        // Negacyclic: X^(a+b) = -X^(a+b-N) past the degree.
        if (a + b < n) {
          acc[a + b] += prod;
        } else {
          acc[a + b - n] -= prod;
        }
      }
    }
  }
  const std::uint64_t tmask = (std::uint64_t{1} << ring_bits) - 1;
  for (std::size_t k = 0; k < n; ++k) acc[k] = (acc[k] - mask[k]) & tmask;
  return acc;
}

}  // namespace pie::he
