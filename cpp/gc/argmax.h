// Label-only output (DESIGN.md section 2, output step): the client learns
// the index of the largest logit, argmax_j (x_s,j + x_c,j mod 2^l as signed),
// and nothing else about the logits; the server learns nothing. The server
// garbles argmax_circuit once, the client evaluates it.
//
// Offline: the server garbles one instance and streams its tables, the client
// obtains the labels of its share x_c by correlated OT (IKNP), and the server
// sends the colour bits of the output 0-labels (the decoding information of
// the index, and only of the index). Online: the server sends the labels of
// x_s (16 * classes * l bytes); the client evaluates and decodes. One message,
// no reply: the server never sees the result.
//
// One object runs one offline and one online phase: its material is one-time.
#pragma once

#include <cstdint>
#include <vector>

#include "gc/builder.h"
#include "gc/engine.h"

namespace pie {

class ArgmaxServer {
 public:
  /// @throws std::invalid_argument as argmax_circuit.
  ArgmaxServer(Channel& ch, std::uint32_t classes, std::uint32_t l, GcOptions opt);
  const Circuit& circuit() const { return circuit_; }

  /// Garbles the circuit, runs the OT for the client's share and sends the decoding bits.
  /// @throws std::invalid_argument if offline() already ran.
  void offline();
  /// Sends the labels of the server's shares xs (classes values < 2^l).
  /// @throws std::invalid_argument unless offline() ran and online() did not, or xs is malformed.
  void online(const std::uint64_t* xs, std::size_t n);

 private:
  Channel& ch_;
  std::uint32_t classes_;
  std::uint32_t l_;
  Circuit circuit_;
  GarblerSession session_;
  std::vector<Block> xs_zero_;  // 0-labels of the server's shares
  enum class State { kReady, kOffline, kDone } state_ = State::kReady;
};

class ArgmaxClient {
 public:
  /// @throws std::invalid_argument as argmax_circuit.
  ArgmaxClient(Channel& ch, std::uint32_t classes, std::uint32_t l, GcOptions opt);

  /// Obtains the labels of the client's shares xc (classes values < 2^l), the tables and the decoding bits.
  /// @throws std::invalid_argument if offline() already ran or xc is malformed;
  ///         ProtocolError if the server's batch does not match.
  void offline(const std::uint64_t* xc, std::size_t n);
  /// Receives the server's labels, evaluates and returns the index.
  /// @throws std::invalid_argument unless offline() ran and online() did not.
  std::uint32_t online();

 private:
  Channel& ch_;
  std::uint32_t classes_;
  std::uint32_t l_;
  Circuit circuit_;
  EvaluatorSession session_;
  std::vector<Block> own_labels_;
  GarbledBatch tables_;
  std::vector<std::uint8_t> decode_;  // colour bits of the output 0-labels
  enum class State { kReady, kOffline, kDone } state_ = State::kReady;
};

}  // namespace pie
