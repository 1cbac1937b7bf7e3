// OT extension: IKNP producing correlated OTs, and random / chosen-message OT
// derived from them. Layers: base OT (ot/base_ot.h) -> IKNP correlated OT ->
// random OT and chosen-message OT (hashing the correlation away).
// [REF] Y. Ishai, J. Kilian, K. Nissim, E. Petrank, "Extending Oblivious
//       Transfers Efficiently", CRYPTO 2003.
// [REF] G. Asharov, Y. Lindell, T. Schneider, M. Zohner, "More Efficient
//       Oblivious Transfer and Extensions for Faster Secure Computation",
//       CCS 2013 (correlated OT, the semi-honest variant used here); the
//       consistency check of M. Keller, E. Orsini, P. Scholl (CRYPTO 2015)
//       is only needed against a malicious receiver and is omitted, as the
//       threat model is semi-honest (DESIGN.md section 1).
// [REF] Guo-Katz-Wang-Yu 2020 (crypto/hash.h) for the hash of random/chosen OT.
//
// Security: 128-bit computational (kappa = 128 base OTs; the sender's
// secret s is the correlation Delta, with lsb(Delta) = 1 when it doubles as
// the free-XOR offset, leaving 127 secret bits). The base OTs run lazily,
// once per session, on the first extension; each extension continues the
// column PRG streams, so no pad is ever reused. Roles (DESIGN.md section 6):
// the OT-extension sender (the garbler, the server) is the base-OT receiver.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "crypto/block.h"
#include "crypto/hash.h"
#include "crypto/prg.h"
#include "gc/halfgates.h"
#include "io/channel.h"

namespace pie {

/// Transposes a 128 x m bit matrix (128 rows of m/8 bytes, m a multiple of 8)
/// into m blocks: bit r of out[c] = bit c of row r (bits little-endian).
void transpose_128(const std::uint8_t* rows, std::size_t m, Block* out);

/// A random Delta with its lowest bit set (a valid free-XOR offset).
Block random_delta();

class IknpSender {
 public:
  static constexpr std::size_t kKappa = 128;

  /// @throws std::invalid_argument if lsb(delta) != 1 (it serves as the free-XOR offset).
  IknpSender(Channel& ch, const Block& delta);
  IknpSender(const IknpSender&) = delete;
  IknpSender& operator=(const IknpSender&) = delete;

  const Block& delta() const { return delta_; }
  /// Correlated OT: q[i] such that the receiver obtains q[i] ^ choice_i * Delta.
  void send_cot(Block* q, std::size_t n);
  /// Random OT: the receiver obtains k_{choice_i}[i].
  void send_random(Block* k0, Block* k1, std::size_t n);
  /// Chosen-message OT: the receiver obtains m_{choice_i}[i].
  void send_chosen(const Block* m0, const Block* m1, std::size_t n);
  /// OTs extended so far in this session.
  std::uint64_t count() const { return count_; }

 private:
  void setup();
  void hash_pairs(const Block* q, Block* k0, Block* k1, std::size_t n);

  Channel& ch_;
  Block delta_;
  std::vector<Prg> columns_;  // G(k_{s_j}) for each base OT j
  TccrHash hash_;
  TweakCounter tweaks_;
  std::uint64_t count_ = 0;
};

class IknpReceiver {
 public:
  explicit IknpReceiver(Channel& ch);
  IknpReceiver(const IknpReceiver&) = delete;
  IknpReceiver& operator=(const IknpReceiver&) = delete;

  /// choices: n bytes of 0/1. Writes t[i] = q[i] ^ choice_i * Delta.
  /// @throws std::invalid_argument if a choice is not 0 or 1.
  void recv_cot(const std::uint8_t* choices, Block* t, std::size_t n);
  void recv_random(const std::uint8_t* choices, Block* k, std::size_t n);
  void recv_chosen(const std::uint8_t* choices, Block* m, std::size_t n);
  std::uint64_t count() const { return count_; }

 private:
  void setup();

  Channel& ch_;
  std::vector<Prg> columns0_;  // G(k0_j)
  std::vector<Prg> columns1_;  // G(k1_j)
  TccrHash hash_;
  TweakCounter tweaks_;
  std::uint64_t count_ = 0;
};

}  // namespace pie
