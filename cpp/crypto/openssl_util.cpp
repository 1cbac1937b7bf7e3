#include "crypto/openssl_util.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <climits>
#include <stdexcept>

namespace pie {

void secure_random(void* out, std::size_t n) {
  auto* p = static_cast<unsigned char*>(out);
  while (n > 0) {
    const int len = n > static_cast<std::size_t>(INT_MAX) ? INT_MAX : static_cast<int>(n);
    if (RAND_bytes(p, len) != 1) throw std::runtime_error("OpenSSL RAND_bytes failed (unseeded CSPRNG)");
    p += len;
    n -= static_cast<std::size_t>(len);
  }
}

struct Sha256::Impl {
  EVP_MD_CTX* ctx = nullptr;
  bool finished = false;
};

Sha256::Sha256() : impl_(new Impl) {
  impl_->ctx = EVP_MD_CTX_new();
  if (impl_->ctx == nullptr || EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(impl_->ctx);
    delete impl_;
    throw std::runtime_error("OpenSSL SHA-256 initialisation failed");
  }
}

Sha256::~Sha256() {
  EVP_MD_CTX_free(impl_->ctx);
  delete impl_;
}

Sha256& Sha256::update(const void* data, std::size_t n) {
  if (impl_->finished) throw std::logic_error("Sha256::update after finish");
  if (EVP_DigestUpdate(impl_->ctx, data, n) != 1) throw std::runtime_error("OpenSSL SHA-256 update failed");
  return *this;
}

Sha256Digest Sha256::finish() {
  if (impl_->finished) throw std::logic_error("Sha256::finish called twice");
  impl_->finished = true;
  Sha256Digest d{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(impl_->ctx, d.data(), &len) != 1 || len != d.size()) {
    throw std::runtime_error("OpenSSL SHA-256 finalisation failed");
  }
  return d;
}

Sha256Digest sha256(const void* data, std::size_t n) { return Sha256().update(data, n).finish(); }

std::string openssl_version() { return OpenSSL_version(OPENSSL_VERSION); }

}  // namespace pie
