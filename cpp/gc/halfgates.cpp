#include "gc/halfgates.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string>

#include "crypto/aesni.h"
#include "crypto/openssl_util.h"

namespace pie {

std::uint64_t random_tweak_prefix() {
  std::uint64_t p = 0;
  secure_random(&p, sizeof p);
  return p & ~std::uint64_t{1};
}

namespace tweak_probe {
namespace {
std::atomic<bool> g_on{false};
std::mutex g_mutex;
std::vector<Record> g_records;
}  // namespace

void start() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_records.clear();
  g_on.store(true, std::memory_order_relaxed);
}

std::vector<Record> stop() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_on.store(false, std::memory_order_relaxed);
  return std::move(g_records);
}

}  // namespace tweak_probe

std::uint64_t TweakCounter::reserve(std::uint64_t count) {
  if (count > UINT64_MAX - next_) throw std::overflow_error("TweakCounter: 64-bit tweak space exhausted");
  const std::uint64_t base = next_;
  next_ += count;
  return base;
}

namespace {

// b ? x : 0 without a branch on secret-dependent bits.
inline Block select(bool b, const Block& x) {
  const std::uint64_t m = 0 - static_cast<std::uint64_t>(b);
  return Block{x.lo & m, x.hi & m};
}

void prepare(const Circuit& c, std::size_t n, GcWorkspace& ws, std::size_t hashes_per_gate) {
  ws.labels.resize(static_cast<std::size_t>(c.num_wires()) * n);
  ws.x.resize(hashes_per_gate * n);
  ws.tweaks.resize(hashes_per_gate * n);
  ws.h.resize(hashes_per_gate * n);
}

void load_part(std::size_t n, const InputPart& part, std::size_t wire0, GcWorkspace& ws) {
  // A tiled transpose: four instances' labels are read as sequential streams
  // and each wire's four labels fill one cache line of the workspace.
  const std::size_t m = part.width;
  const std::size_t s = part.stride;
  constexpr std::size_t kTile = 4;
  std::size_t i0 = 0;
  for (; i0 + kTile <= n; i0 += kTile) {
    const Block* src = part.base + i0 * s;
    for (std::size_t w = 0; w < m; ++w) {
      Block* dst = &ws.labels[(wire0 + w) * n + i0];
      for (std::size_t k = 0; k < kTile; ++k) dst[k] = src[k * s + w];
    }
  }
  for (; i0 < n; ++i0) {
    for (std::size_t w = 0; w < m; ++w) ws.labels[(wire0 + w) * n + i0] = part.base[i0 * s + w];
  }
}

void load_inputs(std::size_t n, const InputView& in, GcWorkspace& ws) {
  load_part(n, in.first, 0, ws);
  if (in.second.width != 0) load_part(n, in.second, in.first.width, ws);
}

void store_outputs(const Circuit& c, std::size_t n, const GcWorkspace& ws, const OutputSink& out) {
  const auto& ow = c.output_wires();
  const std::size_t outs = ow.size();
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < outs; ++k) {
      const Block& label = ws.labels[ow[k] * n + i];
      if (out.labels != nullptr) out.labels[i * outs + k] = label;
      if (out.colours != nullptr) out.colours[i * outs + k] = label.lsb() ? 1 : 0;
    }
  }
}

bool probing() { return tweak_probe::g_on.load(std::memory_order_relaxed); }

void probe_record(const Block* tweaks, std::size_t n, bool garbler) {
  std::lock_guard<std::mutex> lock(tweak_probe::g_mutex);
  for (std::size_t k = 0; k < n; ++k) tweak_probe::g_records.push_back({tweaks[k].lo, tweaks[k].hi, garbler});
}

// ---- the AND gate over n instances, portable version (TccrHash batches) ----
// Instance i of the gate with tweak origin t0 uses tweaks t0 + 2i (the A
// half) and t0 + 2i + 1 (the B half), under the session's prefix.

void garble_and_generic(const TccrHash& hash, const Block& delta, std::uint64_t prefix, std::uint64_t t0,
                        std::size_t n, const Block* A, const Block* B, Block* out, Block* tab, GcWorkspace& ws) {
  for (std::size_t i = 0; i < n; ++i) {
    const Block j0{t0 + 2 * i, prefix};
    const Block j1{t0 + 2 * i + 1, prefix};
    ws.x[4 * i] = A[i];
    ws.x[4 * i + 1] = A[i] ^ delta;
    ws.x[4 * i + 2] = B[i];
    ws.x[4 * i + 3] = B[i] ^ delta;
    ws.tweaks[4 * i] = j0;
    ws.tweaks[4 * i + 1] = j0;
    ws.tweaks[4 * i + 2] = j1;
    ws.tweaks[4 * i + 3] = j1;
  }
  if (probing()) probe_record(ws.tweaks.data(), 4 * n, true);
  hash.hash(ws.x.data(), ws.tweaks.data(), ws.h.data(), 4 * n);
  for (std::size_t i = 0; i < n; ++i) {
    const Block* h = &ws.h[4 * i];
    const bool pa = A[i].lsb();
    const bool pb = B[i].lsb();
    // Garbler half (the garbler knows pb): TG = H(A0) ^ H(A1) ^ pb*Delta.
    const Block tg = h[0] ^ h[1] ^ select(pb, delta);
    const Block wg = h[0] ^ select(pa, tg);
    // Evaluator half (the evaluator knows b ^ pb): TE = H(B0) ^ H(B1) ^ A0.
    const Block te = h[2] ^ h[3] ^ A[i];
    const Block we = h[2] ^ select(pb, te ^ A[i]);
    tab[2 * i] = tg;
    tab[2 * i + 1] = te;
    out[i] = wg ^ we;
  }
}

void evaluate_and_generic(const TccrHash& hash, std::uint64_t prefix, std::uint64_t t0, std::size_t n,
                          const Block* A, const Block* B, Block* out, const Block* tab, GcWorkspace& ws) {
  for (std::size_t i = 0; i < n; ++i) {
    ws.x[2 * i] = A[i];
    ws.x[2 * i + 1] = B[i];
    ws.tweaks[2 * i] = Block{t0 + 2 * i, prefix};
    ws.tweaks[2 * i + 1] = Block{t0 + 2 * i + 1, prefix};
  }
  if (probing()) probe_record(ws.tweaks.data(), 2 * n, false);
  hash.hash(ws.x.data(), ws.tweaks.data(), ws.h.data(), 2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    const Block wg = ws.h[2 * i] ^ select(A[i].lsb(), tab[2 * i]);
    const Block we = ws.h[2 * i + 1] ^ select(B[i].lsb(), tab[2 * i + 1] ^ A[i]);
    out[i] = wg ^ we;
  }
}

#ifdef PIE_HAVE_AESNI_PATH
// ---- the same AND gate fused with the hash on AES-NI ----------------------
// Identical results to the portable version (tested): H(x, j) = pi(pi(x) ^ j)
// ^ pi(x) with pi = AES-128 under TccrHash::fixed_key(), computed for eight
// hashes at a time in registers so the AES pipeline stays full and no hash
// input, tweak or output array is written to memory.

PIE_TARGET_AESNI inline __m128i tweak(std::uint64_t prefix, std::uint64_t j) {
  return _mm_set_epi64x(static_cast<long long>(prefix), static_cast<long long>(j));
}

// The probe records the tweak registers exactly as they enter the hash.
template <int K>
PIE_TARGET_AESNI void probe_lanes(const __m128i* tw, bool garbler) {
  Block b[K];
  for (int k = 0; k < K; ++k) aesni::store(&b[k], tw[k]);
  probe_record(b, K, garbler);
}

// b ? x : 0 for b the colour bit (lowest bit) of c, branch-free.
PIE_TARGET_AESNI inline __m128i select_lsb(__m128i c, __m128i x) {
  const __m128i bit = _mm_and_si128(c, _mm_set_epi64x(0, 1));
  const __m128i mask = _mm_shuffle_epi32(_mm_sub_epi64(_mm_setzero_si128(), bit), 0x44);
  return _mm_and_si128(mask, x);
}

// Garbles instances [i, i + I) of one AND gate: 4 hashes per instance.
template <int I, bool Probe>
PIE_TARGET_AESNI inline void garble_group(const aesni::KeySchedule& s, __m128i d, std::uint64_t prefix,
                                       std::uint64_t t0, std::size_t i, const Block* A, const Block* B, Block* out,
                                       Block* tab) {
  __m128i a[I];
  __m128i b[I];
  __m128i x[4 * I];
  __m128i tw[4 * I];
  for (int k = 0; k < I; ++k) {
    const std::size_t ik = i + static_cast<std::size_t>(k);
    a[k] = aesni::load(A + ik);
    b[k] = aesni::load(B + ik);
    x[4 * k] = a[k];
    x[4 * k + 1] = _mm_xor_si128(a[k], d);
    x[4 * k + 2] = b[k];
    x[4 * k + 3] = _mm_xor_si128(b[k], d);
    tw[4 * k] = tw[4 * k + 1] = tweak(prefix, t0 + 2 * ik);
    tw[4 * k + 2] = tw[4 * k + 3] = tweak(prefix, t0 + 2 * ik + 1);
  }
  if constexpr (Probe) probe_lanes<4 * I>(tw, true);
  aesni::tccr_lanes<4 * I>(s, x, tw);
  for (int k = 0; k < I; ++k) {
    const std::size_t ik = i + static_cast<std::size_t>(k);
    const __m128i* h = &x[4 * k];
    const __m128i tg = _mm_xor_si128(_mm_xor_si128(h[0], h[1]), select_lsb(b[k], d));
    const __m128i wg = _mm_xor_si128(h[0], select_lsb(a[k], tg));
    const __m128i te = _mm_xor_si128(_mm_xor_si128(h[2], h[3]), a[k]);
    const __m128i we = _mm_xor_si128(h[2], select_lsb(b[k], _mm_xor_si128(te, a[k])));
    aesni::store(tab + 2 * ik, tg);
    aesni::store(tab + 2 * ik + 1, te);
    aesni::store(out + ik, _mm_xor_si128(wg, we));
  }
}

template <bool Probe>
PIE_TARGET_AESNI void garble_and_aesni(const aesni::KeySchedule& s, const Block& delta, std::uint64_t prefix,
                                    std::uint64_t t0, std::size_t n, const Block* A, const Block* B, Block* out,
                                    Block* tab) {
  const __m128i d = aesni::load(&delta);
  std::size_t i = 0;
  for (; i + 2 <= n; i += 2) garble_group<2, Probe>(s, d, prefix, t0, i, A, B, out, tab);
  for (; i < n; ++i) garble_group<1, Probe>(s, d, prefix, t0, i, A, B, out, tab);
}

// Evaluates instances [i, i + I) of one AND gate: 2 hashes per instance.
template <int I, bool Probe>
PIE_TARGET_AESNI inline void evaluate_group(const aesni::KeySchedule& s, std::uint64_t prefix, std::uint64_t t0,
                                         std::size_t i, const Block* A, const Block* B, Block* out,
                                         const Block* tab) {
  __m128i a[I];
  __m128i b[I];
  __m128i x[2 * I];
  __m128i tw[2 * I];
  for (int k = 0; k < I; ++k) {
    const std::size_t ik = i + static_cast<std::size_t>(k);
    a[k] = x[2 * k] = aesni::load(A + ik);
    b[k] = x[2 * k + 1] = aesni::load(B + ik);
    tw[2 * k] = tweak(prefix, t0 + 2 * ik);
    tw[2 * k + 1] = tweak(prefix, t0 + 2 * ik + 1);
  }
  if constexpr (Probe) probe_lanes<2 * I>(tw, false);
  aesni::tccr_lanes<2 * I>(s, x, tw);
  for (int k = 0; k < I; ++k) {
    const std::size_t ik = i + static_cast<std::size_t>(k);
    const __m128i wg = _mm_xor_si128(x[2 * k], select_lsb(a[k], aesni::load(tab + 2 * ik)));
    const __m128i we = _mm_xor_si128(x[2 * k + 1], select_lsb(b[k], _mm_xor_si128(aesni::load(tab + 2 * ik + 1), a[k])));
    aesni::store(out + ik, _mm_xor_si128(wg, we));
  }
}

template <bool Probe>
PIE_TARGET_AESNI void evaluate_and_aesni(const aesni::KeySchedule& s, std::uint64_t prefix, std::uint64_t t0,
                                      std::size_t n, const Block* A, const Block* B, Block* out, const Block* tab) {
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) evaluate_group<4, Probe>(s, prefix, t0, i, A, B, out, tab);
  for (; i < n; ++i) evaluate_group<1, Probe>(s, prefix, t0, i, A, B, out, tab);
}

// ---- the same kernels on VAES: four instances per 512-bit register --------
// Same results and tweaks as the 128-bit kernels (tested against the
// portable hash); instance k of a group sits in 128-bit lane k.

// Tweaks of instances [i, i + 4): lane k holds (prefix, t0 + 2 (i + k)).
PIE_TARGET_VAES inline __m512i wide_tweaks(std::uint64_t prefix, std::uint64_t t0, std::size_t i) {
  const __m512i lanes = _mm512_set_epi64(static_cast<long long>(prefix), 6, static_cast<long long>(prefix), 4,
                                         static_cast<long long>(prefix), 2, static_cast<long long>(prefix), 0);
  return _mm512_add_epi64(lanes, _mm512_maskz_set1_epi64(0x55, static_cast<long long>(t0 + 2 * i)));
}

// The low 64 bits of every lane set to 1, the high ones to 0.
PIE_TARGET_VAES inline __m512i low_ones() { return _mm512_maskz_set1_epi64(0x55, 1); }

// Per lane: its colour bit (lowest bit of c) ? x : 0, branch-free.
PIE_TARGET_VAES inline __m512i select_lsb_wide(__m512i c, __m512i x) {
  const auto colour = static_cast<unsigned>(_mm512_test_epi64_mask(c, low_ones()));
  return _mm512_maskz_mov_epi64(static_cast<__mmask8>(colour | (colour << 1)), x);
}

template <int K>
PIE_TARGET_VAES void probe_wide(const __m512i* tw, bool garbler) {
  Block b[4 * K];
  for (int k = 0; k < K; ++k) _mm512_storeu_si512(b + 4 * k, tw[k]);
  probe_record(b, 4 * K, garbler);
}

// Garbles instances [i, i + 4G) of one AND gate: 4 hashes per instance.
template <int G, bool Probe>
PIE_TARGET_VAES inline void garble_wide(const aesni::WideSchedule& s, __m512i d, std::uint64_t prefix,
                                        std::uint64_t t0, std::size_t i, const Block* A, const Block* B, Block* out,
                                        Block* tab) {
  // The table of instance k is (tg_k, te_k): interleave two registers' lanes.
  const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
  const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
  __m512i a[G];
  __m512i b[G];
  __m512i x[4 * G];
  __m512i tw[4 * G];
  for (int g = 0; g < G; ++g) {
    const std::size_t ig = i + 4 * static_cast<std::size_t>(g);
    a[g] = _mm512_loadu_si512(A + ig);
    b[g] = _mm512_loadu_si512(B + ig);
    x[4 * g] = a[g];
    x[4 * g + 1] = _mm512_xor_si512(a[g], d);
    x[4 * g + 2] = b[g];
    x[4 * g + 3] = _mm512_xor_si512(b[g], d);
    tw[4 * g] = tw[4 * g + 1] = wide_tweaks(prefix, t0, ig);
    tw[4 * g + 2] = tw[4 * g + 3] = _mm512_add_epi64(tw[4 * g], low_ones());
  }
  if constexpr (Probe) probe_wide<4 * G>(tw, true);
  aesni::tccr_lanes_wide<4 * G>(s, x, tw);
  for (int g = 0; g < G; ++g) {
    const std::size_t ig = i + 4 * static_cast<std::size_t>(g);
    const __m512i* h = &x[4 * g];
    const __m512i tg = _mm512_xor_si512(_mm512_xor_si512(h[0], h[1]), select_lsb_wide(b[g], d));
    const __m512i wg = _mm512_xor_si512(h[0], select_lsb_wide(a[g], tg));
    const __m512i te = _mm512_xor_si512(_mm512_xor_si512(h[2], h[3]), a[g]);
    const __m512i we = _mm512_xor_si512(h[2], select_lsb_wide(b[g], _mm512_xor_si512(te, a[g])));
    _mm512_storeu_si512(tab + 2 * ig, _mm512_permutex2var_epi64(tg, first, te));
    _mm512_storeu_si512(tab + 2 * ig + 4, _mm512_permutex2var_epi64(tg, second, te));
    _mm512_storeu_si512(out + ig, _mm512_xor_si512(wg, we));
  }
}

template <bool Probe>
PIE_TARGET_VAES void garble_and_vaes(const aesni::KeySchedule& ks, const aesni::WideSchedule& s, const Block& delta,
                                     std::uint64_t prefix, std::uint64_t t0, std::size_t n, const Block* A,
                                     const Block* B, Block* out, Block* tab) {
  constexpr int kGroups = 2;
  const __m512i d = _mm512_maskz_broadcast_i32x4(0xffff, aesni::load(&delta));
  std::size_t i = 0;
  for (; i + 4 * kGroups <= n; i += 4 * kGroups) garble_wide<kGroups, Probe>(s, d, prefix, t0, i, A, B, out, tab);
  if (i < n) garble_and_aesni<Probe>(ks, delta, prefix, t0 + 2 * i, n - i, A + i, B + i, out + i, tab + 2 * i);
}

// Evaluates instances [i, i + 4G) of one AND gate: 2 hashes per instance.
template <int G, bool Probe>
PIE_TARGET_VAES inline void evaluate_wide(const aesni::WideSchedule& s, std::uint64_t prefix, std::uint64_t t0,
                                          std::size_t i, const Block* A, const Block* B, Block* out,
                                          const Block* tab) {
  // Split instance k's table (tg_k, te_k) out of two registers.
  const __m512i garbler_rows = _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0);
  const __m512i evaluator_rows = _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2);
  __m512i a[G];
  __m512i b[G];
  __m512i x[2 * G];
  __m512i tw[2 * G];
  for (int g = 0; g < G; ++g) {
    const std::size_t ig = i + 4 * static_cast<std::size_t>(g);
    a[g] = x[2 * g] = _mm512_loadu_si512(A + ig);
    b[g] = x[2 * g + 1] = _mm512_loadu_si512(B + ig);
    tw[2 * g] = wide_tweaks(prefix, t0, ig);
    tw[2 * g + 1] = _mm512_add_epi64(tw[2 * g], low_ones());
  }
  if constexpr (Probe) probe_wide<2 * G>(tw, false);
  aesni::tccr_lanes_wide<2 * G>(s, x, tw);
  for (int g = 0; g < G; ++g) {
    const std::size_t ig = i + 4 * static_cast<std::size_t>(g);
    const __m512i lo = _mm512_loadu_si512(tab + 2 * ig);
    const __m512i hi = _mm512_loadu_si512(tab + 2 * ig + 4);
    const __m512i tg = _mm512_permutex2var_epi64(lo, garbler_rows, hi);
    const __m512i te = _mm512_permutex2var_epi64(lo, evaluator_rows, hi);
    const __m512i wg = _mm512_xor_si512(x[2 * g], select_lsb_wide(a[g], tg));
    const __m512i we = _mm512_xor_si512(x[2 * g + 1], select_lsb_wide(b[g], _mm512_xor_si512(te, a[g])));
    _mm512_storeu_si512(out + ig, _mm512_xor_si512(wg, we));
  }
}

template <bool Probe>
PIE_TARGET_VAES void evaluate_and_vaes(const aesni::KeySchedule& ks, const aesni::WideSchedule& s,
                                       std::uint64_t prefix, std::uint64_t t0, std::size_t n, const Block* A,
                                       const Block* B, Block* out, const Block* tab) {
  constexpr int kGroups = 4;
  std::size_t i = 0;
  for (; i + 4 * kGroups <= n; i += 4 * kGroups) evaluate_wide<kGroups, Probe>(s, prefix, t0, i, A, B, out, tab);
  if (i < n) evaluate_and_aesni<Probe>(ks, prefix, t0 + 2 * i, n - i, A + i, B + i, out + i, tab + 2 * i);
}

// out[i] = A[i] ^ B[i]: the free XOR gate, four labels per register.
PIE_TARGET_VAES void xor_wide(const Block* A, const Block* B, Block* out, std::size_t n) {
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    _mm512_storeu_si512(out + i, _mm512_xor_si512(_mm512_loadu_si512(A + i), _mm512_loadu_si512(B + i)));
  }
  for (; i < n; ++i) out[i] = A[i] ^ B[i];
}

// The fixed key's round keys in every lane (TccrHash::aesni_schedule widened).
PIE_TARGET_VAES const aesni::WideSchedule& wide_schedule() {
  static const aesni::WideSchedule s = aesni::widen(TccrHash::aesni_schedule());
  return s;
}

#endif  // PIE_HAVE_AESNI_PATH

// Which AND-gate kernel a hash backend runs: the portable one through
// TccrHash::hash, or one fused with the hash in registers.
enum class Kernel { kPortable, kAesNi, kVaes };

Kernel kernel_for(const TccrHash& hash) {
#ifdef PIE_HAVE_AESNI_PATH
  if (hash.backend() == AesBackend::kVaes) return Kernel::kVaes;
  if (hash.backend() == AesBackend::kAesNi) return Kernel::kAesNi;
#else
  (void)hash;
#endif
  return Kernel::kPortable;
}

void check_prefix(std::uint64_t prefix) {
  if ((prefix & kTweakDomainOt) != 0) throw std::invalid_argument("tweak prefix: lowest bit must be 0 (1 is the OT domain)");
}

}  // namespace

void check_input_width(const Circuit& c, const InputView& in) {
  if (in.width() != c.num_input_bits()) {
    throw std::invalid_argument("input labels: " + std::to_string(in.width()) + " wires per instance, the circuit has " +
                                std::to_string(c.num_input_bits()));
  }
}

// The gate walk both parties share: XOR gates are free on labels, INV and AND
// gates are the party's own (`inv(A, out)`, `and_gate(k, A, B, out)` for the
// k-th AND gate). Templated on the lambdas so the per-gate calls inline.
template <class Inv, class And>
void walk_gates(const Circuit& c, std::size_t n, std::size_t hashes_per_gate, bool wide, const InputView& in,
                const OutputSink& out_sink, GcWorkspace& ws, Inv inv, And and_gate) {
  check_input_width(c, in);
  prepare(c, n, ws, hashes_per_gate);
  load_inputs(n, in, ws);
  Block* L = ws.labels.data();
  std::uint64_t and_index = 0;
  for (const Gate& g : c.gates()) {
    Block* out = L + static_cast<std::size_t>(g.out) * n;
    const Block* A = L + static_cast<std::size_t>(g.a) * n;
    const Block* B = L + static_cast<std::size_t>(g.b) * n;
    if (g.type == GateType::kXor) {
#ifdef PIE_HAVE_AESNI_PATH
      if (wide) {
        xor_wide(A, B, out, n);
        continue;
      }
#endif
      for (std::size_t i = 0; i < n; ++i) out[i] = A[i] ^ B[i];
    } else if (g.type == GateType::kInv) {
      inv(A, out);
    } else {
      and_gate(and_index++, A, B, out);
    }
  }
  store_outputs(c, n, ws, out_sink);
}

void garble_instances(const Circuit& c, const TccrHash& hash, const Block& delta,
                      std::uint64_t tweak_prefix, std::uint64_t tweak_base, std::size_t n,
                      const InputView& input_zero, Block* tables, const OutputSink& output_zero, GcWorkspace& ws) {
  if (!delta.lsb()) throw std::invalid_argument("delta: lowest bit must be 1 (point-and-permute)");
  check_prefix(tweak_prefix);
  const Kernel kernel = kernel_for(hash);
  [[maybe_unused]] const bool probe = probing();
#ifdef PIE_HAVE_AESNI_PATH
  // The fused kernels' key schedules, looked up once (never on a CPU without AES-NI).
  const aesni::KeySchedule* ks = kernel != Kernel::kPortable ? &TccrHash::aesni_schedule() : nullptr;
  const aesni::WideSchedule* wide = kernel == Kernel::kVaes ? &wide_schedule() : nullptr;
#endif
  walk_gates(
      c, n, kernel != Kernel::kPortable ? 0 : 4, kernel == Kernel::kVaes, input_zero, output_zero, ws,
      [&](const Block* A, Block* out) {
        for (std::size_t i = 0; i < n; ++i) out[i] = A[i] ^ delta;
      },
      [&](std::uint64_t k, const Block* A, const Block* B, Block* out) {
        const std::uint64_t t0 = tweak_base + 2 * k * n;
        Block* tab = tables + 2 * k * n;
#ifdef PIE_HAVE_AESNI_PATH
        if (kernel == Kernel::kVaes) {
          if (probe) {
            garble_and_vaes<true>(*ks, *wide, delta, tweak_prefix, t0, n, A, B, out, tab);
          } else {
            garble_and_vaes<false>(*ks, *wide, delta, tweak_prefix, t0, n, A, B, out, tab);
          }
          return;
        }
        if (kernel == Kernel::kAesNi) {
          if (probe) {
            garble_and_aesni<true>(*ks, delta, tweak_prefix, t0, n, A, B, out, tab);
          } else {
            garble_and_aesni<false>(*ks, delta, tweak_prefix, t0, n, A, B, out, tab);
          }
          return;
        }
#endif
        garble_and_generic(hash, delta, tweak_prefix, t0, n, A, B, out, tab, ws);
      });
}

void evaluate_instances(const Circuit& c, const TccrHash& hash, std::uint64_t tweak_prefix,
                        std::uint64_t tweak_base, std::size_t n, const InputView& input_labels,
                        const Block* tables, const OutputSink& output_labels, GcWorkspace& ws) {
  check_prefix(tweak_prefix);
  const Kernel kernel = kernel_for(hash);
  [[maybe_unused]] const bool probe = probing();
#ifdef PIE_HAVE_AESNI_PATH
  // The fused kernels' key schedules, looked up once (never on a CPU without AES-NI).
  const aesni::KeySchedule* ks = kernel != Kernel::kPortable ? &TccrHash::aesni_schedule() : nullptr;
  const aesni::WideSchedule* wide = kernel == Kernel::kVaes ? &wide_schedule() : nullptr;
#endif
  walk_gates(
      c, n, kernel != Kernel::kPortable ? 0 : 2, kernel == Kernel::kVaes, input_labels, output_labels, ws,
      [&](const Block* A, Block* out) { std::copy(A, A + n, out); },
      [&](std::uint64_t k, const Block* A, const Block* B, Block* out) {
        const std::uint64_t t0 = tweak_base + 2 * k * n;
        const Block* tab = tables + 2 * k * n;
#ifdef PIE_HAVE_AESNI_PATH
        if (kernel == Kernel::kVaes) {
          if (probe) {
            evaluate_and_vaes<true>(*ks, *wide, tweak_prefix, t0, n, A, B, out, tab);
          } else {
            evaluate_and_vaes<false>(*ks, *wide, tweak_prefix, t0, n, A, B, out, tab);
          }
          return;
        }
        if (kernel == Kernel::kAesNi) {
          if (probe) {
            evaluate_and_aesni<true>(*ks, tweak_prefix, t0, n, A, B, out, tab);
          } else {
            evaluate_and_aesni<false>(*ks, tweak_prefix, t0, n, A, B, out, tab);
          }
          return;
        }
#endif
        evaluate_and_generic(hash, tweak_prefix, t0, n, A, B, out, tab, ws);
      });
}

}  // namespace pie
