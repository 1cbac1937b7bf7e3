#include "he/inspection.h"

#include <seal/util/ntt.h>
#include <seal/util/polyarithsmallmod.h>
#include <seal/util/scalingvariant.h>
#include <seal/util/uintarith.h>
#include <seal/util/uintarithsmallmod.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "crypto/prg.h"
#include "he/linear_kernel.h"

namespace pie::he {

namespace {

template <typename T>
std::vector<std::uint8_t> save(const T& obj) {
  std::vector<std::uint8_t> out(static_cast<std::size_t>(obj.save_size(seal::compr_mode_type::none)));
  const auto n = obj.save(reinterpret_cast<seal::seal_byte*>(out.data()), out.size(), seal::compr_mode_type::none);
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// log2 max |centred (c1 * a^-1)| in limb 0; c1 and a in NTT form.
double c1_over_a_log2(const std::uint64_t* c1_ntt, const std::uint64_t* a_ntt, const seal::Modulus& q,
                      const seal::util::NTTTables& ntt, std::size_t n) {
  std::vector<std::uint64_t> r(n);
  for (std::size_t k = 0; k < n; ++k) {
    std::uint64_t inv = 0;
    if (!seal::util::try_invert_uint_mod(a_ntt[k], q, inv)) throw std::runtime_error("a is not invertible");
    r[k] = seal::util::multiply_uint_mod(c1_ntt[k], inv, q);
  }
  seal::util::inverse_ntt_negacyclic_harvey(r.data(), ntt);
  double best = 0;
  for (const auto v : r) {
    const double centred = v > q.value() / 2 ? static_cast<double>(q.value() - v) : static_cast<double>(v);
    best = std::max(best, centred);
  }
  return std::log2(best + 1);
}

}  // namespace

Inspection inspect_linear(const HeParameters& params, const ConvShape& shape, const std::uint64_t* x,
                          const std::int64_t* weights, std::size_t trials) {
  const auto ctx = make_context(params);
  const ConvLayout layout(shape, ctx->poly_degree());
  const LinearServerKernel kernel(ctx, layout, weights);
  for (std::size_t i = 0; i < shape.input_size(); ++i) {
    if (x[i] >= ctx->plain_modulus()) throw std::invalid_argument("client_share: every value must be below 2^ring_bits");
  }
  const auto& seal_ctx = ctx->seal();
  const auto& top = *seal_ctx.first_context_data();
  const auto& moduli = top.parms().coeff_modulus();
  const auto* ntt = top.small_ntt_tables();
  const std::size_t n = ctx->poly_degree(), limbs = moduli.size();
  const std::uint64_t tmask = ctx->plain_modulus() - 1;

  seal::KeyGenerator keygen(seal_ctx);
  seal::PublicKey pk;
  keygen.create_public_key(pk);
  const seal::Encryptor encryptor(seal_ctx, keygen.secret_key());
  seal::Decryptor decryptor(seal_ctx, keygen.secret_key());

  Inspection out;
  out.parms = save(seal_ctx.key_context_data()->parms());
  out.secret_key = save(keygen.secret_key());
  out.flood_bits = ctx->flood_bits();
  out.noise_bound_log2 = ctx->noise_bound_log2(kernel.weight_l1());
  out.max_noise_log2 = ctx->max_noise_log2();
  out.top_limbs = ctx->top_limbs();
  out.final_limbs = ctx->final_limbs();
  out.limb0_log2 = std::log2(static_cast<double>(moduli[0].value()));
  for (const auto& s : layout.slots(0)) out.output_coeffs.push_back(s.coeff);

  std::vector<seal::Ciphertext> inputs;
  for (const auto& bytes : encrypt_inputs(*ctx, encryptor, layout, x)) {
    inputs.push_back(load_input(*ctx, bytes.data(), bytes.size()));
  }
  auto products = kernel.products(inputs);
  const seal::Ciphertext product = products[0];
  const std::size_t a_index = 0;  // input (tile 0, cblock 0): reply 0 uses it
  out.product_c1_over_a_log2 = c1_over_a_log2(product.data(1), inputs[a_index].data(1), moduli[0], ntt[0], n);

  const std::vector<std::uint64_t> zero(n, 0);
  const auto raw = ideal_reply(layout, kernel.transformed_weights(), x, 0, zero, ctx->ring_bits());
  auto expected_for = [&](const std::vector<std::uint64_t>& mask) {
    std::vector<std::uint64_t> e(n);
    for (std::size_t k = 0; k < n; ++k) e[k] = (raw[k] - mask[k]) & tmask;
    return e;
  };
  auto decrypt_all = [&](const seal::Ciphertext& ct) {
    seal::Plaintext plain;
    decryptor.decrypt(ct, plain);
    std::vector<std::uint64_t> d(n, 0);
    for (std::size_t k = 0; k < n && k < plain.coeff_count(); ++k) d[k] = plain[k];
    return d;
  };

  Prg prg;
  Reply reply = kernel.reply_top(product, pk, prg);
  out.expected = expected_for(reply.mask);

  // c1 * a^-1 of the re-randomised reply (top level).
  std::vector<std::uint64_t> c1(reply.ct.data(1), reply.ct.data(1) + n);
  seal::util::ntt_negacyclic_harvey(c1.data(), ntt[0]);
  out.reply_c1_over_a_log2 = c1_over_a_log2(c1.data(), inputs[a_index].data(1), moduli[0], ntt[0], n);

  // Full noise at the top level: c0 + c1*s - round(q*m/t), centred (in units, unscaled).
  auto noise_of = [&](const seal::Ciphertext& ct, const std::vector<std::uint64_t>& expected) {
    std::vector<std::uint64_t> v(limbs * n);
    for (std::size_t j = 0; j < limbs; ++j) {
      std::uint64_t* vj = v.data() + j * n;
      std::copy(ct.data(1) + j * n, ct.data(1) + (j + 1) * n, vj);
      seal::util::ntt_negacyclic_harvey(vj, ntt[j]);
      seal::util::dyadic_product_coeffmod(vj, keygen.secret_key().data().data() + j * n, n, moduli[j], vj);
      seal::util::inverse_ntt_negacyclic_harvey(vj, ntt[j]);
      seal::util::add_poly_coeffmod(vj, ct.data(0) + j * n, n, moduli[j], vj);
    }
    seal::Plaintext m(n);
    std::copy(expected.begin(), expected.end(), m.data());
    seal::util::multiply_sub_plain_with_scaling_variant(m, top, seal::util::RNSIter(v.data(), n));
    auto pool = seal::MemoryManager::GetPool();
    top.rns_tool()->base_q()->compose_array(v.data(), n, pool);
    const std::uint64_t* q = top.total_coeff_modulus();
    std::vector<std::uint64_t> half(limbs);  // floor(q / 2): above it a residue is negative
    seal::util::right_shift_uint(q, 1, limbs, half.data());
    std::vector<double> noise(n);
    std::vector<std::uint64_t> mag(limbs);
    for (std::size_t k = 0; k < n; ++k) {
      const std::uint64_t* value = v.data() + k * limbs;
      const bool negative = seal::util::is_greater_than_uint(value, half.data(), limbs);
      if (negative) {
        seal::util::sub_uint(q, value, limbs, mag.data());
      } else {
        std::copy(value, value + limbs, mag.begin());
      }
      double d = 0;
      for (std::size_t w = limbs; w-- > 0;) d = d * 18446744073709551616.0 + static_cast<double>(mag[w]);
      noise[k] = negative ? -d : d;
    }
    return noise;
  };
  const double scale = std::exp2(-(out.flood_bits - 1));
  out.noise = noise_of(reply.ct, out.expected);
  for (auto& v : out.noise) v *= scale;
  double worst = 0;
  for (std::size_t i = 0; i < std::max<std::size_t>(trials, 1); ++i) {
    const Reply r = kernel.unflooded_reply(product, pk, prg);
    for (const double v : noise_of(r.ct, expected_for(r.mask))) worst = std::max(worst, std::abs(v));
  }
  out.unflooded_noise_log2 = std::log2(worst);

  switch_to_final(*ctx, reply.ct);
  out.reply = save(reply.ct);
  out.decrypted = decrypt_all(reply.ct);

  out.trials = trials;
  for (std::size_t i = 0; i < trials; ++i) {
    Reply r = kernel.reply_top(product, pk, prg);
    switch_to_final(*ctx, r.ct);
    if (decrypt_all(r.ct) != expected_for(r.mask)) ++out.failures;
  }
  return out;
}

}  // namespace pie::he
