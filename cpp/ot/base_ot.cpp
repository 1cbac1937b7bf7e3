#include "ot/base_ot.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/obj_mac.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "crypto/openssl_util.h"

namespace pie {

namespace {

constexpr std::uint32_t kFrameSenderPoint = 0x4F540001;    // 'OT' 1: A
constexpr std::uint32_t kFrameReceiverPoints = 0x4F540002; // 'OT' 2: B_0 .. B_{n-1}
constexpr std::size_t kMaxBaseOts = 1 << 16;

struct GroupDel { void operator()(EC_GROUP* g) const { EC_GROUP_free(g); } };
struct PointDel { void operator()(EC_POINT* p) const { EC_POINT_free(p); } };
struct BnDel { void operator()(BIGNUM* b) const { BN_clear_free(b); } };
struct CtxDel { void operator()(BN_CTX* c) const { BN_CTX_free(c); } };
using GroupPtr = std::unique_ptr<EC_GROUP, GroupDel>;
using PointPtr = std::unique_ptr<EC_POINT, PointDel>;
using BnPtr = std::unique_ptr<BIGNUM, BnDel>;
using CtxPtr = std::unique_ptr<BN_CTX, CtxDel>;
using PointBytes = std::array<std::uint8_t, kEcPointBytes>;

void check(int ok, const char* what) {
  if (ok != 1) throw std::runtime_error(std::string("OpenSSL EC: ") + what + " failed");
}

class Curve {
 public:
  Curve() : group_(EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1)), ctx_(BN_CTX_new()) {
    if (!group_ || !ctx_) throw std::runtime_error("OpenSSL EC: cannot create P-256");
  }
  PointPtr point() const {
    PointPtr p(EC_POINT_new(group_.get()));
    if (!p) throw std::runtime_error("OpenSSL EC: EC_POINT_new failed");
    return p;
  }
  BnPtr random_scalar() const {
    BnPtr k(BN_secure_new());
    if (!k) throw std::runtime_error("OpenSSL EC: BN_secure_new failed");
    const BIGNUM* order = EC_GROUP_get0_order(group_.get());
    do {
      check(BN_priv_rand_range(k.get(), order), "BN_priv_rand_range");
    } while (BN_is_zero(k.get()));
    return k;
  }
  // r = k*G (+ add if non-null)
  PointPtr mul_base(const BIGNUM* k) const {
    PointPtr r = point();
    check(EC_POINT_mul(group_.get(), r.get(), k, nullptr, nullptr, ctx_.get()), "EC_POINT_mul");
    return r;
  }
  PointPtr mul(const EC_POINT* p, const BIGNUM* k) const {
    PointPtr r = point();
    check(EC_POINT_mul(group_.get(), r.get(), nullptr, p, k, ctx_.get()), "EC_POINT_mul");
    return r;
  }
  PointPtr add(const EC_POINT* a, const EC_POINT* b) const {
    PointPtr r = point();
    check(EC_POINT_add(group_.get(), r.get(), a, b, ctx_.get()), "EC_POINT_add");
    return r;
  }
  PointPtr sub(const EC_POINT* a, const EC_POINT* b) const {
    PointPtr nb = point();
    check(EC_POINT_copy(nb.get(), b), "EC_POINT_copy");
    check(EC_POINT_invert(group_.get(), nb.get(), ctx_.get()), "EC_POINT_invert");
    return add(a, nb.get());
  }
  bool at_infinity(const EC_POINT* p) const { return EC_POINT_is_at_infinity(group_.get(), p) == 1; }
  PointBytes encode(const EC_POINT* p) const {
    PointBytes out{};
    if (EC_POINT_point2oct(group_.get(), p, POINT_CONVERSION_COMPRESSED, out.data(), out.size(),
                           ctx_.get()) != out.size()) {
      throw std::runtime_error("OpenSSL EC: point encoding failed");
    }
    return out;
  }
  // Decodes a peer's point: must be a valid encoding of a point on P-256
  // other than the point at infinity.
  PointPtr decode(const std::uint8_t* bytes, const char* what) const {
    PointPtr p = point();
    if (EC_POINT_oct2point(group_.get(), p.get(), bytes, kEcPointBytes, ctx_.get()) != 1 ||
        EC_POINT_is_at_infinity(group_.get(), p.get()) == 1 ||
        EC_POINT_is_on_curve(group_.get(), p.get(), ctx_.get()) != 1) {
      throw ProtocolError(std::string("base OT: invalid elliptic-curve point in ") + what);
    }
    return p;
  }

 private:
  GroupPtr group_;
  CtxPtr ctx_;
};

Block derive_key(const Block& sid, std::uint64_t index, const PointBytes& a, const PointBytes& b,
                 const PointBytes& shared) {
  static const char kLabel[] = "pie/co15";
  std::uint8_t idx[8];
  for (int i = 0; i < 8; ++i) idx[i] = static_cast<std::uint8_t>(index >> (8 * i));
  Sha256 h;
  h.update(kLabel, sizeof kLabel - 1).update(&sid, sizeof sid).update(idx, sizeof idx);
  h.update(a.data(), a.size()).update(b.data(), b.size()).update(shared.data(), shared.size());
  const Sha256Digest d = h.finish();
  return Block::from_bytes(d.data());
}

void check_count(std::size_t n) {
  if (n == 0 || n > kMaxBaseOts) throw std::invalid_argument("n: base OT count must be in [1, 65536]");
}

}  // namespace

std::vector<std::pair<Block, Block>> base_ot_send(Channel& ch, const Block& sid, std::size_t n) {
  check_count(n);
  Curve curve;
  const BnPtr a = curve.random_scalar();
  const PointPtr A = curve.mul_base(a.get());
  const PointBytes a_bytes = curve.encode(A.get());
  ch.send_frame(kFrameSenderPoint, a_bytes.data(), a_bytes.size());
  const auto msg = ch.recv_frame(kFrameReceiverPoints, n * kEcPointBytes);
  if (msg.size() != n * kEcPointBytes) throw ProtocolError("base OT: wrong number of receiver points");
  const PointPtr aA = curve.mul(A.get(), a.get());  // a*A, so a*(B - A) = a*B - a*A
  std::vector<std::pair<Block, Block>> keys(n);
  for (std::size_t i = 0; i < n; ++i) {
    PointBytes b_bytes;
    std::copy(msg.begin() + static_cast<std::ptrdiff_t>(i * kEcPointBytes),
              msg.begin() + static_cast<std::ptrdiff_t>((i + 1) * kEcPointBytes), b_bytes.begin());
    const PointPtr B = curve.decode(b_bytes.data(), "the receiver's message");
    const PointPtr aB = curve.mul(B.get(), a.get());
    const PointPtr aB_minus_aA = curve.sub(aB.get(), aA.get());
    // a*(B - A) is the point at infinity only if B = A (a receiver scalar of 0).
    if (curve.at_infinity(aB_minus_aA.get())) throw ProtocolError("base OT: degenerate receiver point");
    keys[i].first = derive_key(sid, i, a_bytes, b_bytes, curve.encode(aB.get()));
    keys[i].second = derive_key(sid, i, a_bytes, b_bytes, curve.encode(aB_minus_aA.get()));
  }
  return keys;
}

std::vector<Block> base_ot_receive(Channel& ch, const Block& sid, const std::vector<std::uint8_t>& choices) {
  check_count(choices.size());
  Curve curve;
  const auto a_msg = ch.recv_frame(kFrameSenderPoint, kEcPointBytes);
  if (a_msg.size() != kEcPointBytes) throw ProtocolError("base OT: wrong sender point size");
  PointBytes a_bytes;
  std::copy(a_msg.begin(), a_msg.end(), a_bytes.begin());
  const PointPtr A = curve.decode(a_bytes.data(), "the sender's message");
  std::vector<std::uint8_t> out(choices.size() * kEcPointBytes);
  std::vector<Block> keys(choices.size());
  for (std::size_t i = 0; i < choices.size(); ++i) {
    if (choices[i] > 1) throw std::invalid_argument("choices: bits must be 0 or 1");
    const BnPtr b = curve.random_scalar();
    PointPtr B = curve.mul_base(b.get());
    if (choices[i] == 1) B = curve.add(B.get(), A.get());
    const PointBytes b_bytes = curve.encode(B.get());
    std::copy(b_bytes.begin(), b_bytes.end(), out.begin() + static_cast<std::ptrdiff_t>(i * kEcPointBytes));
    const PointPtr bA = curve.mul(A.get(), b.get());
    keys[i] = derive_key(sid, i, a_bytes, b_bytes, curve.encode(bA.get()));
  }
  ch.send_frame(kFrameReceiverPoints, out.data(), out.size());
  return keys;
}

}  // namespace pie
