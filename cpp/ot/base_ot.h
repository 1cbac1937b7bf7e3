// Base oblivious transfer: the "simplest OT" over an elliptic curve.
// [REF] T. Chou, C. Orlandi, "The Simplest Protocol for Oblivious Transfer",
//       LATINCRYPT 2015.
//
// Group: NIST P-256 through OpenSSL's libcrypto (prime order, cofactor 1;
// 128-bit security). Every received point is decoded with on-curve checks and
// rejected if it is the point at infinity. Keys are
// SHA-256("pie/co15" || sid || index || A || B_i || shared point), truncated
// to 128 bits, so keys of different sessions and indices never coincide.
// Random OT: the sender learns n key pairs, the receiver the key of its choice.
// Semi-honest security (DESIGN.md section 1).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "crypto/block.h"
#include "io/channel.h"

namespace pie {

/// Bytes of a compressed P-256 point on the wire.
constexpr std::size_t kEcPointBytes = 33;

/// Sender side of n random OTs: returns (k0_i, k1_i).
/// @throws ProtocolError if the receiver's points are malformed or invalid.
std::vector<std::pair<Block, Block>> base_ot_send(Channel& ch, const Block& sid, std::size_t n);

/// Receiver side: returns k_{choices[i]} for every i.
/// @throws ProtocolError if the sender's point is malformed or invalid.
std::vector<Block> base_ot_receive(Channel& ch, const Block& sid, const std::vector<std::uint8_t>& choices);

}  // namespace pie
