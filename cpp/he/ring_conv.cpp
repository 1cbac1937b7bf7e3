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
template <typename W>
void tap_scalar(std::uint64_t* acc, const std::uint64_t* x, std::size_t x_stride, std::size_t count,
                const W* w, std::size_t og) {
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint64_t v = x[i * x_stride];
    if (v == 0) continue;
    std::uint64_t* a = acc + i * og;
    for (std::size_t k = 0; k < og; ++k) a[k] += v * static_cast<std::uint64_t>(static_cast<std::int64_t>(w[k]));
  }
}

bool have_avx512() {
#ifdef PIE_HAVE_AVX512_PATH
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

const bool kAvx512 = have_avx512();

// First and one-past-last output column whose input column ox * stride + k - pad lies in [0, size).
std::pair<std::size_t, std::size_t> valid_columns(std::size_t out, std::size_t stride, std::size_t k,
                                                  std::size_t pad, std::size_t size) {
  std::size_t lo = 0;
  while (lo < out && lo * stride + k < pad) ++lo;
  std::size_t hi = lo;
  while (hi < out && hi * stride + k - pad < size) ++hi;
  return {lo, hi};
}

// The portable path: output row oy of image n, every output channel; acc holds
// out_w * (o / groups) sums, one kernel tap at a time over the whole row.
template <typename W>
void conv_row(const RingConvShape& s, const std::uint64_t* x, const W* weight, std::uint64_t* y,
              std::uint64_t keep, std::size_t n, std::size_t oy, std::uint64_t* acc) {
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
          tap_scalar(acc + lo * og, row + lo * s.stride_w + kx - s.pad_w, s.stride_w, hi - lo,
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

#ifdef PIE_HAVE_AVX512_PATH
// The AVX-512 path works on a zero-padded copy of the input, so that every tap
// of every output pixel reads memory. Its micro-kernel holds the sums of P
// output pixels (consecutive in row-major order, so a tile may span rows)
// times 8V output channels in registers across all C/groups * kh * kw taps
// (stores only at the end: the stores, not the 64-bit multiplies, bound a
// kernel that keeps its sums in memory).
struct PaddedInput {
  const std::uint64_t* data;  // (n, c, hp, wp)
  std::size_t hp, wp;
};

constexpr std::size_t kTilePixels = 4;     // P at most
constexpr std::size_t kBlockChannels = 32;  // 8V at most

// Eight taps sign-extended to 64-bit lanes. (GCC 12 warns, wrongly, that the
// widening intrinsics read an uninitialised register.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx512dq"), always_inline)) inline __m512i load8(const std::int64_t* p) {
  return _mm512_loadu_si512(p);
}
__attribute__((target("avx512f,avx512dq"), always_inline)) inline __m512i load8(const std::int32_t* p) {
  return _mm512_cvtepi32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__attribute__((target("avx512f,avx512dq"), always_inline)) inline __m512i load8(const std::int16_t* p) {
  return _mm512_cvtepi16_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#pragma GCC diagnostic pop

template <int P, int V, typename W>
__attribute__((target("avx512f,avx512dq"))) void micro_kernel(const RingConvShape& s, const std::uint64_t* image,
                                                                std::size_t hp, std::size_t wp,
                                                                const std::size_t* offsets, const W* w,
                                                                std::uint64_t* y, std::size_t y_stride,
                                                                std::uint64_t keep) {
  __m512i acc[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = _mm512_setzero_si512();
  const std::uint64_t* base[P];
  for (int p = 0; p < P; ++p) base[p] = image + offsets[p];
  const std::size_t cg = s.c / s.groups;
  for (std::size_t c = 0; c < cg; ++c) {
    for (std::size_t ky = 0; ky < s.kh; ++ky) {
      const std::size_t row = (c * hp + ky) * wp;
      const W* wr = w + (c * s.kh + ky) * s.kw * s.o;
      for (std::size_t kx = 0; kx < s.kw; ++kx) {
        __m512i wv[V];
        for (int v = 0; v < V; ++v) wv[v] = load8(wr + kx * s.o + 8 * v);
        for (int p = 0; p < P; ++p) {
          const __m512i xb = _mm512_set1_epi64(static_cast<long long>(base[p][row + kx]));
          for (int v = 0; v < V; ++v) acc[p][v] = _mm512_add_epi64(acc[p][v], _mm512_mullo_epi64(xb, wv[v]));
        }
      }
    }
  }
  const __m512i mask = _mm512_set1_epi64(static_cast<long long>(keep));
  alignas(64) std::uint64_t lanes[8];
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v < V; ++v) {
      _mm512_store_si512(lanes, _mm512_and_si512(acc[p][v], mask));
      for (int j = 0; j < 8; ++j) y[(8 * v + j) * y_stride + p] = lanes[j];
    }
  }
}

template <typename W>
using Micro = void (*)(const RingConvShape&, const std::uint64_t*, std::size_t, std::size_t, const std::size_t*,
                       const W*, std::uint64_t*, std::size_t, std::uint64_t);

template <int P, typename W>
Micro<W> micro_for(int v) {
  switch (v) {
    case 1: return micro_kernel<P, 1, W>;
    case 2: return micro_kernel<P, 2, W>;
    case 3: return micro_kernel<P, 3, W>;
    default: return micro_kernel<P, 4, W>;
  }
}

template <typename W>
Micro<W> pick_micro(int p, int v) {
  switch (p) {
    case 1: return micro_for<1, W>(v);
    case 2: return micro_for<2, W>(v);
    case 3: return micro_for<3, W>(v);
    default: return micro_for<4, W>(v);
  }
}

// The work is split into items of one image, one group, one block of up to 32
// output channels (or the group's last og % 8 channels) and one tile of up to
// 4 output pixels. Items are numbered tile-fastest, so a thread's contiguous
// share of them walks few channel blocks: each block's taps are read from
// memory once and reused from cache across the tiles (a wide layer at small
// resolution is bound by reading its taps, not by its multiplies).
struct WorkItems {
  std::size_t tiles, vectors, blocks;

  explicit WorkItems(const RingConvShape& s)
      : tiles((s.out_h() * s.out_w() + kTilePixels - 1) / kTilePixels),
        vectors((s.o / s.groups) / 8),
        blocks((vectors + kBlockChannels / 8 - 1) / (kBlockChannels / 8) + ((s.o / s.groups) % 8 != 0)) {}
  std::size_t count(const RingConvShape& s) const { return s.n * s.groups * blocks * tiles; }
};

template <typename W>
void conv_item_avx512(const RingConvShape& s, const PaddedInput& xp, const WorkItems& items, const W* weight,
                      std::uint64_t* y, std::uint64_t keep, std::size_t item) {
  const std::size_t tile = item % items.tiles;
  std::size_t rest = item / items.tiles;
  const std::size_t block = rest % items.blocks;
  rest /= items.blocks;
  const std::size_t g = rest % s.groups, n = rest / s.groups;
  const std::size_t ho = s.out_h(), wo = s.out_w(), plane = ho * wo;
  const std::size_t cg = s.c / s.groups, og = s.o / s.groups;
  const std::size_t q0 = tile * kTilePixels, count = std::min(kTilePixels, plane - q0);
  std::size_t offsets[kTilePixels];
  for (std::size_t p = 0; p < count; ++p) {
    const std::size_t q = q0 + p;
    offsets[p] = (q / wo) * s.stride_h * xp.wp + (q % wo) * s.stride_w;
  }
  const std::uint64_t* image = xp.data + (n * s.c + g * cg) * xp.hp * xp.wp;
  const std::size_t k0 = block * kBlockChannels;
  if (k0 < 8 * items.vectors) {
    const int v = static_cast<int>(std::min<std::size_t>(kBlockChannels / 8, items.vectors - k0 / 8));
    pick_micro<W>(static_cast<int>(count), v)(s, image, xp.hp, xp.wp, offsets, weight + g * og + k0,
                                              y + (n * s.o + g * og + k0) * plane + q0, plane, keep);
    return;
  }
  for (std::size_t k = 8 * items.vectors; k < og; ++k) {  // the last og % 8 channels
    const W* wk = weight + g * og + k;
    for (std::size_t p = 0; p < count; ++p) {
      std::uint64_t sum = 0;
      for (std::size_t c = 0; c < cg; ++c)
        for (std::size_t ky = 0; ky < s.kh; ++ky)
          for (std::size_t kx = 0; kx < s.kw; ++kx)
            sum += image[offsets[p] + (c * xp.hp + ky) * xp.wp + kx] *
                   static_cast<std::uint64_t>(static_cast<std::int64_t>(wk[((c * s.kh + ky) * s.kw + kx) * s.o]));
      y[(n * s.o + g * og + k) * plane + q0 + p] = sum & keep;
    }
  }
}

// A matrix-vector product (one output pixel, 1x1 taps, no groups: a fully
// connected layer) runs row by row instead: the micro-kernel would walk each
// 32-channel block's taps at a stride of o weights, a TLB miss per tap once a
// dense layer of the input holds megabytes of them. Here each thread takes a
// contiguous range of input channels (weight rows), so it streams one
// contiguous stretch of the weights, four rows at a time into sums of every
// output; the threads' sums are added at the end.
bool is_matrix_vector(const RingConvShape& s) {
  return s.groups == 1 && s.kh == 1 && s.kw == 1 && s.out_h() * s.out_w() == 1 && s.pad_h == 0 && s.pad_w == 0;
}

template <typename W>
__attribute__((target("avx512f,avx512dq"))) void matrix_vector_rows(const RingConvShape& s, const std::uint64_t* xn,
                                                                      const W* weight, std::size_t lo, std::size_t hi,
                                                                      std::uint64_t* sums) {
  constexpr std::size_t kRows = 4;
  const std::size_t plane = s.h * s.w;  // channel c's one input pixel is xn[c * plane]
  const std::size_t vec_o = s.o / 8 * 8;
  std::fill(sums, sums + s.o, std::uint64_t{0});
  std::size_t c = lo;
  for (; c + kRows <= hi; c += kRows) {
    __m512i xb[kRows];
    const W* row[kRows];
    for (std::size_t r = 0; r < kRows; ++r) {
      xb[r] = _mm512_set1_epi64(static_cast<long long>(xn[(c + r) * plane]));
      row[r] = weight + (c + r) * s.o;
    }
    for (std::size_t k = 0; k < vec_o; k += 8) {
      __m512i acc = _mm512_loadu_si512(sums + k);
      for (std::size_t r = 0; r < kRows; ++r) acc = _mm512_add_epi64(acc, _mm512_mullo_epi64(xb[r], load8(row[r] + k)));
      _mm512_storeu_si512(sums + k, acc);
    }
    for (std::size_t k = vec_o; k < s.o; ++k) {
      for (std::size_t r = 0; r < kRows; ++r) {
        sums[k] += xn[(c + r) * plane] * static_cast<std::uint64_t>(static_cast<std::int64_t>(row[r][k]));
      }
    }
  }
  for (; c < hi; ++c) {
    const std::uint64_t xc = xn[c * plane];
    const W* row = weight + c * s.o;
    for (std::size_t k = 0; k < s.o; ++k) sums[k] += xc * static_cast<std::uint64_t>(static_cast<std::int64_t>(row[k]));
  }
}

std::vector<std::uint64_t> pad_input(const RingConvShape& s, const std::uint64_t* x, std::size_t hp, std::size_t wp) {
  std::vector<std::uint64_t> out(s.n * s.c * hp * wp);
  for (std::size_t plane = 0; plane < s.n * s.c; ++plane)
    for (std::size_t i = 0; i < s.h; ++i)
      std::copy(x + (plane * s.h + i) * s.w, x + (plane * s.h + i + 1) * s.w,
                out.begin() + static_cast<std::ptrdiff_t>((plane * hp + i + s.pad_h) * wp + s.pad_w));
  return out;
}
#endif

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

template <typename W>
void ring_conv2d(const RingConvShape& s, const std::uint64_t* x, const W* weight, std::uint64_t* y, unsigned bits,
                 int threads, bool simd) {
  check_ring_conv(s);
  if (bits < 1 || bits > 64) throw std::invalid_argument("ring conv: bits must be in [1, 64]");
  const std::uint64_t keep = bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
#ifdef PIE_HAVE_OPENMP
  const int team = std::max(1, threads <= 0 ? omp_get_max_threads() : threads);
#else
  (void)threads;
  const int team = 1;
#endif
#ifdef PIE_HAVE_AVX512_PATH
  if (simd && kAvx512 && is_matrix_vector(s)) {
    // Input channels split into one contiguous range per thread; each thread
    // keeps its own sums of every output, added up afterwards.
    const std::size_t parts = std::min<std::size_t>(static_cast<std::size_t>(team), s.c);
    const std::size_t per = (s.c + parts - 1) / parts;
    std::vector<std::uint64_t> sums(parts * s.o);  // allocated here: nothing may throw inside the region
    for (std::size_t n = 0; n < s.n; ++n) {
      const std::uint64_t* xn = x + n * s.c * s.h * s.w;
#ifdef PIE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(parts)) if (parts > 1)
#endif
      for (std::size_t t = 0; t < parts; ++t) {
        const std::size_t lo = std::min(s.c, t * per), hi = std::min(s.c, lo + per);
        matrix_vector_rows(s, xn, weight, lo, hi, sums.data() + t * s.o);
      }
      for (std::size_t k = 0; k < s.o; ++k) {
        std::uint64_t total = 0;
        for (std::size_t t = 0; t < parts; ++t) total += sums[t * s.o + k];
        y[n * s.o + k] = total & keep;
      }
    }
    return;
  }
  if (simd && kAvx512) {
    const std::size_t hp = s.h + 2 * s.pad_h, wp = s.w + 2 * s.pad_w;
    const std::vector<std::uint64_t> padded = pad_input(s, x, hp, wp);
    const PaddedInput xp{padded.data(), hp, wp};
    const WorkItems items(s);
    const std::size_t count = items.count(s);
#ifdef PIE_HAVE_OPENMP
#pragma omp parallel for schedule(static) num_threads(team) if (team > 1 && count > 1)
#endif
    for (std::size_t i = 0; i < count; ++i) conv_item_avx512(s, xp, items, weight, y, keep, i);
    return;
  }
#else
  (void)simd;
#endif
  const std::size_t rows = s.n * s.out_h();
  const std::size_t og = s.o / s.groups;
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
    conv_row(s, x, weight, y, keep, r / s.out_h(), r % s.out_h(), mine);
  }
}

template void ring_conv2d<std::int16_t>(const RingConvShape&, const std::uint64_t*, const std::int16_t*,
                                        std::uint64_t*, unsigned, int, bool);
template void ring_conv2d<std::int32_t>(const RingConvShape&, const std::uint64_t*, const std::int32_t*,
                                        std::uint64_t*, unsigned, int, bool);
template void ring_conv2d<std::int64_t>(const RingConvShape&, const std::uint64_t*, const std::int64_t*,
                                        std::uint64_t*, unsigned, int, bool);

bool ring_conv_vectorised() { return kAvx512; }

}  // namespace pie::he
