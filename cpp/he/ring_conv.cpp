#include "he/ring_conv.h"

#if defined(__x86_64__)
#define PIE_HAVE_AVX512_PATH 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#ifdef PIE_HAVE_OPENMP
#include <omp.h>
#endif

namespace pie::he {

namespace {

// For i < count and k < og: acc[i * og + k] += x[i * x_stride] * w[k], mod 2^64
// (one kernel tap applied to `count` output pixels of one row).
void tap_scalar(std::uint64_t* acc, const std::uint64_t* x, std::size_t x_stride, std::size_t count,
                const std::uint64_t* w, std::size_t og) {
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t v = x[i * x_stride];
    if (v == 0) continue;
    std::uint64_t* a = acc + i * og;
    for (std::size_t k = 0; k < og; ++k) a[k] += v * w[k];
  }
}

#ifdef PIE_HAVE_AVX512_PATH
__attribute__((target("avx512f,avx512dq"))) void tap_avx512(std::uint64_t* acc, const std::uint64_t* x,
                                                              std::size_t x_stride, std::size_t count,
                                                              const std::uint64_t* w, std::size_t og) {
  std::size_t k = 0;
  for (; k + 8 <= og; k += 8) {  // the weight vector stays in a register across the row
    const __m512i wv = _mm512_loadu_si512(w + k);
    for (std::size_t i = 0; i < count; ++i) {
      std::uint64_t* a = acc + i * og + k;
      const __m512i p = _mm512_mullo_epi64(_mm512_set1_epi64(static_cast<long long>(x[i * x_stride])), wv);
      _mm512_storeu_si512(a, _mm512_add_epi64(_mm512_loadu_si512(a), p));
    }
  }
  if (k == og) return;
  for (std::size_t i = 0; i < count; ++i) {  // the last og % 8 channels
    const std::uint64_t v = x[i * x_stride];
    for (std::size_t j = k; j < og; ++j) acc[i * og + j] += v * w[j];
  }
}
#endif

using Tap = void (*)(std::uint64_t*, const std::uint64_t*, std::size_t, std::size_t, const std::uint64_t*,
                     std::size_t);

Tap pick_tap() {
#ifdef PIE_HAVE_AVX512_PATH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return tap_avx512;
#endif
  return tap_scalar;
}

const Tap kTap = pick_tap();

// First and one-past-last output column whose input column ox * stride + k - pad lies in [0, size).
std::pair<std::size_t, std::size_t> valid_columns(std::size_t out, std::size_t stride, std::size_t k,
                                                  std::size_t pad, std::size_t size) {
  std::size_t lo = 0;
  while (lo < out && lo * stride + k < pad) ++lo;
  std::size_t hi = lo;
  while (hi < out && hi * stride + k - pad < size) ++hi;
  return {lo, hi};
}

// Output row oy of image n, every output channel; acc holds out_w * (o / groups) sums.
void conv_row(const RingConvShape& s, const std::uint64_t* x, const std::uint64_t* weight, std::uint64_t* y,
              std::uint64_t keep, Tap tap, std::size_t n, std::size_t oy, std::uint64_t* acc) {
  const std::size_t ho = s.out_h(), wo = s.out_w();
  const std::size_t cg = s.c / s.groups, og = s.o / s.groups;
  for (std::size_t g = 0; g < s.groups; ++g) {
    std::fill(acc, acc + wo * og, std::uint64_t{0});
    for (std::size_t ky = 0; ky < s.kh; ++ky) {
      const std::size_t iy = oy * s.stride_h + ky;  // in the padded input
      if (iy < s.pad_h || iy - s.pad_h >= s.h) continue;
      for (std::size_t kx = 0; kx < s.kw; ++kx) {
        const auto [lo, hi] = valid_columns(wo, s.stride_w, kx, s.pad_w, s.w);
        if (lo >= hi) continue;
        for (std::size_t c = 0; c < cg; ++c) {
          const std::uint64_t* row = x + ((n * s.c + g * cg + c) * s.h + (iy - s.pad_h)) * s.w;
          tap(acc + lo * og, row + lo * s.stride_w + kx - s.pad_w, s.stride_w, hi - lo,
               weight + ((c * s.kh + ky) * s.kw + kx) * s.o + g * og, og);
        }
      }
    }
    for (std::size_t k = 0; k < og; ++k) {
      std::uint64_t* out = y + ((n * s.o + g * og + k) * ho + oy) * wo;
      for (std::size_t ox = 0; ox < wo; ++ox) out[ox] = acc[ox * og + k] & keep;
    }
  }
}

}  // namespace

void check_ring_conv(const RingConvShape& s) {
  if (s.n == 0 || s.c == 0 || s.h == 0 || s.w == 0 || s.o == 0 || s.kh == 0 || s.kw == 0) {
    throw std::invalid_argument("ring conv: every size must be positive");
  }
  if (s.stride_h == 0 || s.stride_w == 0) throw std::invalid_argument("ring conv: stride must be positive");
  if (s.groups == 0 || s.c % s.groups != 0 || s.o % s.groups != 0) {
    throw std::invalid_argument("ring conv: channels (" + std::to_string(s.c) + " in, " + std::to_string(s.o) +
                                " out) not divisible by groups " + std::to_string(s.groups));
  }
  if (s.kh > s.h + 2 * s.pad_h || s.kw > s.w + 2 * s.pad_w) {
    throw std::invalid_argument("ring conv: kernel larger than the padded input");
  }
}

void ring_conv2d(const RingConvShape& s, const std::uint64_t* x, const std::uint64_t* weight, std::uint64_t* y,
                 unsigned bits, int threads, bool simd) {
  check_ring_conv(s);
  if (bits < 1 || bits > 64) throw std::invalid_argument("ring conv: bits must be in [1, 64]");
  const std::uint64_t keep = bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
  const std::size_t rows = s.n * s.out_h();
  const std::size_t og = s.o / s.groups;
  const Tap tap = simd ? kTap : tap_scalar;
#ifdef PIE_HAVE_OPENMP
  const int team = std::max(1, threads <= 0 ? omp_get_max_threads() : threads);
#else
  (void)threads;
  const int team = 1;
#endif
  // One accumulator row per thread, allocated here: nothing may throw inside the parallel region.
  const std::size_t row_sums = s.out_w() * og;
  std::vector<std::uint64_t> acc(static_cast<std::size_t>(team) * row_sums);
#ifdef PIE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(team) if (team > 1 && rows > 1)
#endif
  for (std::size_t r = 0; r < rows; ++r) {
#ifdef PIE_HAVE_OPENMP
    std::uint64_t* mine = acc.data() + static_cast<std::size_t>(omp_get_thread_num()) * row_sums;
#else
    std::uint64_t* mine = acc.data();
#endif
    conv_row(s, x, weight, y, keep, tap, r / s.out_h(), r % s.out_h(), mine);
  }
}

bool ring_conv_vectorised() { return kTap != tap_scalar; }

}  // namespace pie::he
