#include "crypto/hash.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "crypto/openssl_util.h"

namespace pie {

Block TccrHash::fixed_key() {
  static const Block key = [] {
    const std::string label = "pie fixed-key AES";
    const Sha256Digest d = sha256(label.data(), label.size());
    return Block::from_bytes(d.data());
  }();
  return key;
}

#ifdef PIE_HAVE_AESNI_PATH
namespace {
PIE_TARGET_AESNI aesni::KeySchedule fixed_schedule() { return aesni::expand_key(TccrHash::fixed_key()); }
}  // namespace

const aesni::KeySchedule& TccrHash::aesni_schedule() {
  static const aesni::KeySchedule s = fixed_schedule();
  return s;
}
#endif

TccrHash::TccrHash(AesBackend backend) : pi_(fixed_key(), backend) {}

Block TccrHash::operator()(const Block& x, const Block& tweak) const {
  Block out;
  hash(&x, &tweak, &out, 1);
  return out;
}

void TccrHash::hash(const Block* x, const Block* tweak, Block* out, std::size_t n) const {
  constexpr std::size_t kChunk = 64;  // stays in L1, long enough to fill the AES pipeline
  Block y[kChunk];
  Block z[kChunk];
  for (std::size_t off = 0; off < n; off += kChunk) {
    const std::size_t m = std::min(kChunk, n - off);
    pi_.encrypt(x + off, y, m);                                  // y = pi(x)
    for (std::size_t k = 0; k < m; ++k) z[k] = y[k] ^ tweak[off + k];
    pi_.encrypt(z, z, m);                                        // z = pi(y ^ i)
    for (std::size_t k = 0; k < m; ++k) out[off + k] = z[k] ^ y[k];
  }
}

}  // namespace pie
