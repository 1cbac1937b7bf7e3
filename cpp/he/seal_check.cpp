#include "he/seal_check.h"

#include <seal/seal.h>

#include <stdexcept>

namespace pie::he {

std::vector<std::uint64_t> bfv_roundtrip(const std::vector<std::uint64_t>& coeffs, int plain_bits,
                                         std::size_t poly_degree) {
  if (poly_degree != 4096 && poly_degree != 8192 && poly_degree != 16384 && poly_degree != 32768) {
    throw std::invalid_argument("poly_degree must be 4096, 8192, 16384 or 32768");
  }
  if (plain_bits < 2 || plain_bits > 59) {
    throw std::invalid_argument("plain_bits must be in [2, 59] (SEAL rejects t = 2^60)");
  }
  if (coeffs.size() > poly_degree) throw std::invalid_argument("coeffs: more than poly_degree values");
  const std::uint64_t t = std::uint64_t{1} << plain_bits;
  for (const auto c : coeffs) {
    if (c >= t) throw std::invalid_argument("coeffs: every value must be below 2^plain_bits");
  }

  seal::EncryptionParameters parms(seal::scheme_type::bfv);
  parms.set_poly_modulus_degree(poly_degree);
  parms.set_coeff_modulus(seal::CoeffModulus::BFVDefault(poly_degree, seal::sec_level_type::tc128));
  parms.set_plain_modulus(seal::Modulus(t));
  const seal::SEALContext context(parms, true, seal::sec_level_type::tc128);
  if (!context.parameters_set()) {
    throw std::invalid_argument(std::string("SEAL rejected the parameters: ") +
                                context.parameter_error_message());
  }
  seal::KeyGenerator keygen(context);
  seal::Encryptor encryptor(context, keygen.secret_key());
  seal::Decryptor decryptor(context, keygen.secret_key());

  seal::Plaintext plain(poly_degree);
  for (std::size_t i = 0; i < coeffs.size(); ++i) plain[i] = coeffs[i];
  seal::Ciphertext ct;
  encryptor.encrypt_symmetric(plain, ct);
  seal::Plaintext out;
  decryptor.decrypt(ct, out);

  std::vector<std::uint64_t> result(coeffs.size(), 0);
  for (std::size_t i = 0; i < coeffs.size() && i < out.coeff_count(); ++i) result[i] = out[i];
  return result;
}

std::string seal_version() {
  return std::to_string(SEAL_VERSION_MAJOR) + "." + std::to_string(SEAL_VERSION_MINOR) + "." +
         std::to_string(SEAL_VERSION_PATCH);
}

}  // namespace pie::he
