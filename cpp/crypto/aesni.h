// AES-NI building blocks shared by the AES-128 backend (crypto/aes.cpp) and
// the garbling kernels, which hash several labels at once in registers.
//
// x86 only (PIE_HAVE_AESNI_PATH). Every function carries a per-function target
// attribute, so nothing else in the build needs -maes; callers must check
// aesni_available() (vaes_available() for the PIE_TARGET_VAES functions) at
// run time and must themselves be compiled with the same target to inline these.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#define PIE_HAVE_AESNI_PATH 1
#define PIE_TARGET_AESNI __attribute__((target("aes,sse2")))
// VAES on 512-bit registers: four independent AES blocks per instruction.
#define PIE_TARGET_VAES __attribute__((target("aes,sse2,avx512f,vaes")))

#include <immintrin.h>

#include "crypto/block.h"

namespace pie::aesni {

/// The eleven round keys of AES-128.
struct alignas(16) KeySchedule {
  __m128i rk[11];
};

PIE_TARGET_AESNI inline __m128i load(const Block* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
PIE_TARGET_AESNI inline void store(Block* p, __m128i v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v);
}

PIE_TARGET_AESNI inline __m128i expand_step(__m128i key, __m128i assist) {
  assist = _mm_shuffle_epi32(assist, 0xff);
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, assist);
}

/// FIPS-197 key expansion (the round constant must be an immediate, hence
/// the unrolled list).
PIE_TARGET_AESNI inline KeySchedule expand_key(const Block& key) {
  KeySchedule s;
  __m128i k = load(&key);
  s.rk[0] = k;
#define PIE_AESNI_EXPAND(i, rcon)                           \
  k = expand_step(k, _mm_aeskeygenassist_si128(k, rcon));   \
  s.rk[i] = k;
  PIE_AESNI_EXPAND(1, 0x01)
  PIE_AESNI_EXPAND(2, 0x02)
  PIE_AESNI_EXPAND(3, 0x04)
  PIE_AESNI_EXPAND(4, 0x08)
  PIE_AESNI_EXPAND(5, 0x10)
  PIE_AESNI_EXPAND(6, 0x20)
  PIE_AESNI_EXPAND(7, 0x40)
  PIE_AESNI_EXPAND(8, 0x80)
  PIE_AESNI_EXPAND(9, 0x1b)
  PIE_AESNI_EXPAND(10, 0x36)
#undef PIE_AESNI_EXPAND
  return s;
}

/// x[k] <- AES(x[k]) for K independent lanes: K blocks in flight keep the
/// AES unit's pipeline full.
template <int K>
PIE_TARGET_AESNI inline void encrypt_lanes(const KeySchedule& s, __m128i* x) {
  for (int k = 0; k < K; ++k) x[k] = _mm_xor_si128(x[k], s.rk[0]);
  for (int r = 1; r < 10; ++r) {
    for (int k = 0; k < K; ++k) x[k] = _mm_aesenc_si128(x[k], s.rk[r]);
  }
  for (int k = 0; k < K; ++k) x[k] = _mm_aesenclast_si128(x[k], s.rk[10]);
}

/// x[k] <- pi(pi(x[k]) ^ tw[k]) ^ pi(x[k]) for K lanes, pi = AES under s: the
/// tweakable circular correlation-robust hash of crypto/hash.h, in registers.
template <int K>
PIE_TARGET_AESNI inline void tccr_lanes(const KeySchedule& s, __m128i* x, const __m128i* tw) {
  __m128i y[K];
  for (int k = 0; k < K; ++k) y[k] = x[k];
  encrypt_lanes<K>(s, y);  // pi(x)
  for (int k = 0; k < K; ++k) x[k] = _mm_xor_si128(y[k], tw[k]);
  encrypt_lanes<K>(s, x);  // pi(pi(x) ^ j)
  for (int k = 0; k < K; ++k) x[k] = _mm_xor_si128(x[k], y[k]);
}

/// The round keys broadcast to all four 128-bit lanes of a 512-bit register.
struct alignas(64) WideSchedule {
  __m512i rk[11];
};

PIE_TARGET_VAES inline WideSchedule widen(const KeySchedule& s) {
  WideSchedule w;
  for (int r = 0; r < 11; ++r) w.rk[r] = _mm512_maskz_broadcast_i32x4(0xffff, s.rk[r]);
  return w;
}

/// encrypt_lanes on K registers of four blocks each (4K blocks in flight).
template <int K>
PIE_TARGET_VAES inline void encrypt_lanes_wide(const WideSchedule& s, __m512i* x) {
  for (int k = 0; k < K; ++k) x[k] = _mm512_xor_si512(x[k], s.rk[0]);
  for (int r = 1; r < 10; ++r) {
    for (int k = 0; k < K; ++k) x[k] = _mm512_aesenc_epi128(x[k], s.rk[r]);
  }
  for (int k = 0; k < K; ++k) x[k] = _mm512_aesenclast_epi128(x[k], s.rk[10]);
}

/// tccr_lanes on K registers of four blocks each.
template <int K>
PIE_TARGET_VAES inline void tccr_lanes_wide(const WideSchedule& s, __m512i* x, const __m512i* tw) {
  __m512i y[K];
  for (int k = 0; k < K; ++k) y[k] = x[k];
  encrypt_lanes_wide<K>(s, y);  // pi(x)
  for (int k = 0; k < K; ++k) x[k] = _mm512_xor_si512(y[k], tw[k]);
  encrypt_lanes_wide<K>(s, x);  // pi(pi(x) ^ j)
  for (int k = 0; k < K; ++k) x[k] = _mm512_xor_si512(x[k], y[k]);
}

}  // namespace pie::aesni

#endif  // x86
