#include "crypto/aes.h"

#include <openssl/evp.h>

#include <memory>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PIE_HAVE_AESNI_PATH 1
#define PIE_TARGET_AESNI __attribute__((target("aes,sse2")))
#endif

namespace pie {

std::string to_string(AesBackend b) { return b == AesBackend::kAesNi ? "aes-ni" : "openssl"; }

bool aesni_available() {
#ifdef PIE_HAVE_AESNI_PATH
  return __builtin_cpu_supports("aes") != 0;
#else
  return false;
#endif
}

AesBackend default_aes_backend() {
  return aesni_available() ? AesBackend::kAesNi : AesBackend::kOpenSsl;
}

#ifdef PIE_HAVE_AESNI_PATH
namespace {

PIE_TARGET_AESNI inline __m128i load(const Block* p) {
  return _mm_load_si128(reinterpret_cast<const __m128i*>(p));
}
PIE_TARGET_AESNI inline void store(Block* p, __m128i v) {
  _mm_store_si128(reinterpret_cast<__m128i*>(p), v);
}

PIE_TARGET_AESNI inline __m128i expand_step(__m128i key, __m128i assist) {
  assist = _mm_shuffle_epi32(assist, 0xff);
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, assist);
}

PIE_TARGET_AESNI void aesni_expand(const Block& key, Block rk[11]) {
  __m128i k = load(&key);
  store(&rk[0], k);
  // The round constant must be an immediate, hence the unrolled list.
#define PIE_EXPAND(i, rcon)                                    \
  k = expand_step(k, _mm_aeskeygenassist_si128(k, rcon));      \
  store(&rk[i], k);
  PIE_EXPAND(1, 0x01)
  PIE_EXPAND(2, 0x02)
  PIE_EXPAND(3, 0x04)
  PIE_EXPAND(4, 0x08)
  PIE_EXPAND(5, 0x10)
  PIE_EXPAND(6, 0x20)
  PIE_EXPAND(7, 0x40)
  PIE_EXPAND(8, 0x80)
  PIE_EXPAND(9, 0x1b)
  PIE_EXPAND(10, 0x36)
#undef PIE_EXPAND
}

// Eight independent blocks in flight keep the AES unit's pipeline full.
PIE_TARGET_AESNI void aesni_encrypt(const Block rk_in[11], const Block* in, Block* out,
                                    std::size_t n) {
  constexpr std::size_t kLanes = 8;
  __m128i rk[11];
  for (int r = 0; r < 11; ++r) rk[r] = load(&rk_in[r]);
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    __m128i b[kLanes];
    for (std::size_t j = 0; j < kLanes; ++j) {
      b[j] = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i + j)), rk[0]);
    }
    for (int r = 1; r < 10; ++r) {
      for (std::size_t j = 0; j < kLanes; ++j) b[j] = _mm_aesenc_si128(b[j], rk[r]);
    }
    for (std::size_t j = 0; j < kLanes; ++j) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i + j), _mm_aesenclast_si128(b[j], rk[10]));
    }
  }
  for (; i < n; ++i) {
    __m128i b = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)), rk[0]);
    for (int r = 1; r < 10; ++r) b = _mm_aesenc_si128(b, rk[r]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_aesenclast_si128(b, rk[10]));
  }
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
  if (backend_ == AesBackend::kAesNi) {
#ifdef PIE_HAVE_AESNI_PATH
    if (!aesni_available()) throw std::invalid_argument("backend: AES-NI is not available on this CPU");
    aesni_expand(key_, round_keys_);
#else
    throw std::invalid_argument("backend: this build has no AES-NI path");
#endif
  }
}

void Aes128::encrypt(const Block* in, Block* out, std::size_t n) const {
  if (n == 0) return;
#ifdef PIE_HAVE_AESNI_PATH
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
