#include "crypto/aes.h"

#include <openssl/evp.h>

#include <memory>
#include <stdexcept>

#include "crypto/aesni.h"

namespace pie {

std::string to_string(AesBackend b) {
  switch (b) {
    case AesBackend::kAesNi: return "aes-ni";
    case AesBackend::kVaes: return "vaes";
    case AesBackend::kOpenSsl: break;
  }
  return "openssl";
}

AesBackend aes_backend_from_string(const std::string& name) {
  for (AesBackend b : {AesBackend::kVaes, AesBackend::kAesNi, AesBackend::kOpenSsl}) {
    if (name == to_string(b)) return b;
  }
  throw std::invalid_argument("backend must be 'vaes', 'aes-ni' or 'openssl', got '" + name + "'");
}

bool aesni_available() {
#ifdef PIE_HAVE_AESNI_PATH
  return __builtin_cpu_supports("aes") != 0;
#else
  return false;
#endif
}

bool vaes_available() {
#ifdef PIE_HAVE_AESNI_PATH
  return aesni_available() && __builtin_cpu_supports("vaes") != 0 && __builtin_cpu_supports("avx512f") != 0;
#else
  return false;
#endif
}

AesBackend default_aes_backend() {
  if (vaes_available()) return AesBackend::kVaes;
  return aesni_available() ? AesBackend::kAesNi : AesBackend::kOpenSsl;
}

#ifdef PIE_HAVE_AESNI_PATH
namespace {

PIE_TARGET_AESNI void aesni_expand(const Block& key, Block rk[11]) {
  const aesni::KeySchedule s = aesni::expand_key(key);
  for (int r = 0; r < 11; ++r) aesni::store(&rk[r], s.rk[r]);
}

PIE_TARGET_AESNI void aesni_encrypt(const Block rk[11], const Block* in, Block* out, std::size_t n) {
  constexpr std::size_t kLanes = 8;
  aesni::KeySchedule s;
  for (int r = 0; r < 11; ++r) s.rk[r] = aesni::load(&rk[r]);
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    __m128i b[kLanes];
    for (std::size_t j = 0; j < kLanes; ++j) b[j] = aesni::load(in + i + j);
    aesni::encrypt_lanes<kLanes>(s, b);
    for (std::size_t j = 0; j < kLanes; ++j) aesni::store(out + i + j, b[j]);
  }
  for (; i < n; ++i) {
    __m128i b = aesni::load(in + i);
    aesni::encrypt_lanes<1>(s, &b);
    aesni::store(out + i, b);
  }
}

// Sixteen blocks in flight (four registers of four); the tail goes through
// the 128-bit path.
PIE_TARGET_VAES void vaes_encrypt(const Block rk[11], const Block* in, Block* out, std::size_t n) {
  constexpr std::size_t kRegs = 4;
  constexpr std::size_t kLanes = 4 * kRegs;
  aesni::KeySchedule s;
  for (int r = 0; r < 11; ++r) s.rk[r] = aesni::load(&rk[r]);
  const aesni::WideSchedule w = aesni::widen(s);
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    __m512i b[kRegs];
    for (std::size_t j = 0; j < kRegs; ++j) b[j] = _mm512_loadu_si512(in + i + 4 * j);
    aesni::encrypt_lanes_wide<kRegs>(w, b);
    for (std::size_t j = 0; j < kRegs; ++j) _mm512_storeu_si512(out + i + 4 * j, b[j]);
  }
  if (i < n) aesni_encrypt(rk, in + i, out + i, n - i);
}

}  // namespace
#endif

namespace {

struct EvpCtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};

void openssl_encrypt(const Block& key, const Block* in, Block* out, std::size_t n) {
  // A context per call keeps encrypt() const and thread-safe; the fallback
  // is only used where AES-NI is missing.
  std::unique_ptr<EVP_CIPHER_CTX, EvpCtxDeleter> ctx(EVP_CIPHER_CTX_new());
  const auto key_bytes = key.bytes();
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_128_ecb(), nullptr, key_bytes.data(), nullptr) != 1 ||
      EVP_CIPHER_CTX_set_padding(ctx.get(), 0) != 1) {
    throw std::runtime_error("OpenSSL AES-128-ECB initialisation failed");
  }
  constexpr std::size_t kChunk = std::size_t{1} << 26;  // keeps lengths within int
  auto* dst = reinterpret_cast<unsigned char*>(out);
  const auto* src = reinterpret_cast<const unsigned char*>(in);
  std::size_t left = n * sizeof(Block);
  while (left > 0) {
    const std::size_t len = left < kChunk ? left : kChunk;
    int produced = 0;
    if (EVP_EncryptUpdate(ctx.get(), dst, &produced, src, static_cast<int>(len)) != 1 ||
        static_cast<std::size_t>(produced) != len) {
      throw std::runtime_error("OpenSSL AES-128-ECB encryption failed");
    }
    dst += len;
    src += len;
    left -= len;
  }
}

}  // namespace

Aes128::Aes128(const Block& key, AesBackend backend) : backend_(backend), key_(key) {
  if (backend_ != AesBackend::kOpenSsl) {
#ifdef PIE_HAVE_AESNI_PATH
    if (!aesni_available()) throw std::invalid_argument("backend: AES-NI is not available on this CPU");
    if (backend_ == AesBackend::kVaes && !vaes_available()) {
      throw std::invalid_argument("backend: VAES (AVX-512) is not available on this CPU");
    }
    aesni_expand(key_, round_keys_);
#else
    throw std::invalid_argument("backend: this build has no AES-NI path");
#endif
  }
}

void Aes128::encrypt(const Block* in, Block* out, std::size_t n) const {
  if (n == 0) return;
#ifdef PIE_HAVE_AESNI_PATH
  if (backend_ == AesBackend::kVaes) {
    vaes_encrypt(round_keys_, in, out, n);
    return;
  }
  if (backend_ == AesBackend::kAesNi) {
    aesni_encrypt(round_keys_, in, out, n);
    return;
  }
#endif
  openssl_encrypt(key_, in, out, n);
}

Block Aes128::encrypt(const Block& x) const {
  Block y;
  encrypt(&x, &y, 1);
  return y;
}

}  // namespace pie
