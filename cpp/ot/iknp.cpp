#include "ot/iknp.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "crypto/openssl_util.h"
#include "ot/base_ot.h"

namespace pie {

namespace {

constexpr std::uint32_t kFrameSessionId = 0x4F540003;  // 'OT' 3: the base-OT session id
// OTs per extension round: the receiver's message is 16 bytes per OT (2 MiB here).
constexpr std::size_t kChunk = std::size_t{1} << 17;

std::size_t round_up_128(std::size_t n) { return (n + 127) / 128 * 128; }

}  // namespace

void transpose_128(const std::uint8_t* rows, std::size_t m, Block* out) {
  if (m % 8 != 0) throw std::invalid_argument("m: must be a multiple of 8");
  const std::size_t row_bytes = m / 8;
  auto* o = reinterpret_cast<std::uint8_t*>(out);
#if defined(__SSE2__)
  for (std::size_t rr = 0; rr < 128; rr += 16) {
    for (std::size_t cb = 0; cb < row_bytes; ++cb) {
      alignas(16) std::uint8_t g[16];
      for (std::size_t k = 0; k < 16; ++k) g[k] = rows[(rr + k) * row_bytes + cb];
      __m128i v = _mm_load_si128(reinterpret_cast<const __m128i*>(g));
      for (int i = 7; i >= 0; --i) {
        // Bit 7 of byte k is bit (8 cb + i) of row rr + k.
        const auto bits = static_cast<std::uint16_t>(_mm_movemask_epi8(v));
        std::memcpy(o + (8 * cb + static_cast<std::size_t>(i)) * 16 + rr / 8, &bits, 2);
        v = _mm_slli_epi64(v, 1);
      }
    }
  }
#else
  std::memset(o, 0, m * 16);
  for (std::size_t r = 0; r < 128; ++r) {
    for (std::size_t c = 0; c < m; ++c) {
      const unsigned bit = (rows[r * row_bytes + c / 8] >> (c % 8)) & 1U;
      o[c * 16 + r / 8] = static_cast<std::uint8_t>(o[c * 16 + r / 8] | (bit << (r % 8)));
    }
  }
#endif
}

Block random_delta() {
  Block d;
  secure_random(&d, sizeof d);
  d.lo |= 1;
  return d;
}

// ------------------------------------------------------------------ sender

IknpSender::IknpSender(Channel& ch, const Block& delta) : ch_(ch), delta_(delta) {
  if (!delta_.lsb()) throw std::invalid_argument("delta: lowest bit must be 1");
}

void IknpSender::setup() {
  const auto sid_msg = ch_.recv_frame(kFrameSessionId, sizeof(Block));
  if (sid_msg.size() != sizeof(Block)) throw ProtocolError("IKNP: malformed session id");
  const Block sid = Block::from_bytes(sid_msg.data());
  const auto bytes = delta_.bytes();
  std::vector<std::uint8_t> s(kKappa);
  for (std::size_t j = 0; j < kKappa; ++j) s[j] = (bytes[j / 8] >> (j % 8)) & 1U;
  const auto keys = base_ot_receive(ch_, sid, s);
  columns_.reserve(kKappa);
  for (const Block& k : keys) columns_.emplace_back(k);
}

void IknpSender::send_cot(Block* q, std::size_t n) {
  if (n == 0) return;
  if (columns_.empty()) setup();
  const auto dbytes = delta_.bytes();
  std::vector<std::uint8_t> u;
  std::vector<std::uint8_t> cols;
  std::vector<Block> rows;
  for (std::size_t done = 0; done < n;) {
    const std::size_t take = std::min(kChunk, n - done);
    const std::size_t m = round_up_128(take);
    const std::size_t rb = m / 8;
    u.resize(kKappa * rb);
    cols.resize(kKappa * rb);
    ch_.recv(u.data(), u.size());
    for (std::size_t j = 0; j < kKappa; ++j) {
      std::uint8_t* col = &cols[j * rb];
      columns_[j].random_bytes(col, rb);
      if ((dbytes[j / 8] >> (j % 8)) & 1U) {
        const std::uint8_t* uj = &u[j * rb];
        for (std::size_t k = 0; k < rb; ++k) col[k] ^= uj[k];
      }
    }
    rows.resize(m);
    transpose_128(cols.data(), m, rows.data());
    std::copy(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(take), q + done);
    done += take;
  }
  count_ += n;
}

void IknpSender::hash_pairs(const Block* q, Block* k0, Block* k1, std::size_t n) {
  const std::uint64_t base = tweaks_.reserve(n);
  std::vector<Block> tw(n);
  std::vector<Block> q1(n);
  for (std::size_t i = 0; i < n; ++i) {
    tw[i] = Block{base + i, kTweakDomainOt};
    q1[i] = q[i] ^ delta_;
  }
  hash_.hash(q, tw.data(), k0, n);
  hash_.hash(q1.data(), tw.data(), k1, n);
}

void IknpSender::send_random(Block* k0, Block* k1, std::size_t n) {
  std::vector<Block> q(n);
  send_cot(q.data(), n);
  hash_pairs(q.data(), k0, k1, n);
}

void IknpSender::send_chosen(const Block* m0, const Block* m1, std::size_t n) {
  std::vector<Block> k0(n);
  std::vector<Block> k1(n);
  send_random(k0.data(), k1.data(), n);
  std::vector<Block> y(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    y[2 * i] = k0[i] ^ m0[i];
    y[2 * i + 1] = k1[i] ^ m1[i];
  }
  ch_.send(y.data(), y.size() * sizeof(Block));
  ch_.flush();
}

// ---------------------------------------------------------------- receiver

IknpReceiver::IknpReceiver(Channel& ch) : ch_(ch) {}

void IknpReceiver::setup() {
  Block sid;
  secure_random(&sid, sizeof sid);
  ch_.send_frame(kFrameSessionId, &sid, sizeof sid);
  const auto keys = base_ot_send(ch_, sid, IknpSender::kKappa);
  columns0_.reserve(keys.size());
  columns1_.reserve(keys.size());
  for (const auto& k : keys) {
    columns0_.emplace_back(k.first);
    columns1_.emplace_back(k.second);
  }
}

void IknpReceiver::recv_cot(const std::uint8_t* choices, Block* t, std::size_t n) {
  if (n == 0) return;
  for (std::size_t i = 0; i < n; ++i) {
    if (choices[i] > 1) throw std::invalid_argument("choices: bits must be 0 or 1");
  }
  if (columns0_.empty()) setup();
  constexpr std::size_t kKappa = IknpSender::kKappa;
  std::vector<std::uint8_t> r;
  std::vector<std::uint8_t> cols;
  std::vector<std::uint8_t> u;
  std::vector<Block> rows;
  for (std::size_t done = 0; done < n;) {
    const std::size_t take = std::min(kChunk, n - done);
    const std::size_t m = round_up_128(take);
    const std::size_t rb = m / 8;
    r.assign(rb, 0);
    for (std::size_t i = 0; i < take; ++i) {
      r[i / 8] = static_cast<std::uint8_t>(r[i / 8] | (choices[done + i] << (i % 8)));
    }
    cols.resize(kKappa * rb);
    u.resize(kKappa * rb);
    for (std::size_t j = 0; j < kKappa; ++j) {
      std::uint8_t* tj = &cols[j * rb];
      std::uint8_t* uj = &u[j * rb];
      columns0_[j].random_bytes(tj, rb);
      columns1_[j].random_bytes(uj, rb);
      for (std::size_t k = 0; k < rb; ++k) uj[k] ^= static_cast<std::uint8_t>(tj[k] ^ r[k]);
    }
    ch_.send(u.data(), u.size());
    ch_.flush();
    rows.resize(m);
    transpose_128(cols.data(), m, rows.data());
    std::copy(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(take), t + done);
    done += take;
  }
  count_ += n;
}

void IknpReceiver::recv_random(const std::uint8_t* choices, Block* k, std::size_t n) {
  std::vector<Block> t(n);
  recv_cot(choices, t.data(), n);
  const std::uint64_t base = tweaks_.reserve(n);
  std::vector<Block> tw(n);
  for (std::size_t i = 0; i < n; ++i) tw[i] = Block{base + i, kTweakDomainOt};
  hash_.hash(t.data(), tw.data(), k, n);
}

void IknpReceiver::recv_chosen(const std::uint8_t* choices, Block* m, std::size_t n) {
  std::vector<Block> k(n);
  recv_random(choices, k.data(), n);
  std::vector<Block> y(2 * n);
  ch_.recv(y.data(), y.size() * sizeof(Block));
  for (std::size_t i = 0; i < n; ++i) m[i] = y[2 * i + choices[i]] ^ k[i];
}

}  // namespace pie
