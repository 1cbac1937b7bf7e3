#include "he/params.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace pie::he {

namespace {

seal::EncryptionParameters build_parms(const HeParameters& p) {
  const std::size_t n = p.poly_degree;
  if (n != 4096 && n != 8192 && n != 16384 && n != 32768) {
    throw std::invalid_argument("poly_degree must be 4096, 8192, 16384 or 32768");
  }
  if (p.ring_bits < 2 || p.ring_bits > 59) {
    throw std::invalid_argument("ring_bits must be in [2, 59] (SEAL rejects t = 2^60)");
  }
  if (p.coeff_bits.size() < 2) {
    throw std::invalid_argument("coeff_bits: need at least one data prime and the special prime");
  }
  int total = 0;
  for (const int b : p.coeff_bits) {
    if (b < 17 || b > 60) throw std::invalid_argument("coeff_bits: every prime must have 17 to 60 bits");
    total += b;
  }
  const int max_bits = seal::CoeffModulus::MaxBitCount(n, seal::sec_level_type::tc128);
  if (total > max_bits) {
    throw std::invalid_argument("coeff_bits: " + std::to_string(total) + " bits of coefficient modulus exceed the " +
                                std::to_string(max_bits) + " bits allowed at N=" + std::to_string(n) +
                                " for 128-bit security (HomomorphicEncryption.org table)");
  }
  if (p.max_revealed == 0 || p.max_revealed > (std::uint64_t{1} << 48)) {
    throw std::invalid_argument("max_revealed must be in [1, 2^48]");
  }
  seal::EncryptionParameters parms(seal::scheme_type::bfv);
  parms.set_poly_modulus_degree(n);
  parms.set_coeff_modulus(seal::CoeffModulus::Create(n, p.coeff_bits));
  parms.set_plain_modulus(seal::Modulus(std::uint64_t{1} << p.ring_bits));
  return parms;
}

int ceil_log2(std::uint64_t v) {
  int b = 0;
  while (b < 64 && (std::uint64_t{1} << b) < v) ++b;
  return b;
}

}  // namespace

double log2_modulus(const seal::SEALContext::ContextData& data) {
  double bits = 0;
  for (const auto& q : data.parms().coeff_modulus()) bits += std::log2(static_cast<double>(q.value()));
  return bits;
}

HeContext::HeContext(const HeParameters& params)
    : params_(params), context_(build_parms(params), true, seal::sec_level_type::tc128) {
  if (!context_.parameters_set()) {
    throw std::invalid_argument(std::string("coeff_bits: SEAL rejected the parameters: ") +
                                context_.parameter_error_message());
  }
  const double l = params_.ring_bits;
  const double n = static_cast<double>(params_.poly_degree);
  const auto top = context_.first_context_data();
  // F = min(127, floor(log2 q) - l - 3): |B + f| <= 2^F <= q / (8t).
  flood_bits_ = std::min(127, static_cast<int>(std::floor(log2_modulus(*top))) - params_.ring_bits - 3);
  if (max_noise_log2() < std::log2(kErrorMax * (2 * n + 1)) + 1) {
    throw std::invalid_argument("coeff_bits: the data modulus (" + std::to_string(log2_modulus(*top)) +
                                " bits) cannot hold a 2^" + std::to_string(kStatisticalSecurity) +
                                "-times flooding of the fresh noise at ring_bits=" + std::to_string(params_.ring_bits) +
                                " and max_revealed=" + std::to_string(params_.max_revealed));
  }
  // Final level: the smallest q' (first primes of the chain) with q' >= 8t(N + 1).
  const double need = l + 3 + std::log2(n + 1);
  auto data = top;
  final_parms_id_ = top->parms_id();
  for (auto d = top; d; d = d->next_context_data()) {
    if (log2_modulus(*d) < need) break;
    final_parms_id_ = d->parms_id();
    data = d;
  }
  if (log2_modulus(*data) < need) {
    throw std::invalid_argument("coeff_bits: no level of the modulus chain has the " + std::to_string(need) +
                                " bits a reply needs after modulus switching");
  }
}

std::size_t HeContext::top_limbs() const { return context_.first_context_data()->parms().coeff_modulus().size(); }

std::size_t HeContext::final_limbs() const {
  return context_.get_context_data(final_parms_id_)->parms().coeff_modulus().size();
}

double HeContext::max_noise_log2() const {
  return flood_bits_ - 1 - kStatisticalSecurity - ceil_log2(params_.max_revealed);
}

double HeContext::noise_bound_log2(double weight_l1) const {
  const double n = static_cast<double>(params_.poly_degree);
  return std::log2((kErrorMax + 0.5) * weight_l1 + 0.5 + kErrorMax * (2 * n + 1));
}

double HeContext::max_weight_l1() const {
  const double n = static_cast<double>(params_.poly_degree);
  return (std::exp2(max_noise_log2()) - 0.5 - kErrorMax * (2 * n + 1)) / (kErrorMax + 0.5);
}

void HeContext::check_weight_l1(double weight_l1) const {
  if (!(weight_l1 <= max_weight_l1())) {
    throw std::invalid_argument("weight: the weights' L1 norm per reply (2^" + std::to_string(std::log2(weight_l1)) +
                                ") overflows the noise budget (at most 2^" + std::to_string(std::log2(max_weight_l1())) +
                                " at ring_bits=" + std::to_string(params_.ring_bits) +
                                " with 2^40-times flooding over max_revealed coefficients)");
  }
}

std::shared_ptr<const HeContext> make_context(const HeParameters& params) {
  return std::make_shared<const HeContext>(params);
}

}  // namespace pie::he
