// The offline protocol of a linear step over a Channel (DESIGN.md sections 2, 5).
//
// [REF] P. Mishra et al., "Delphi", USENIX Security 2020 (offline masking:
//       the client learns W x_c - s, the server keeps s).
// [REF] Z. Huang et al., "Cheetah", USENIX Security 2022 (coefficient
//       encoding, seeded ciphertexts, coefficient dropping).
//
// Session set-up (once per key pair), client -> server: frame kHeHello with
// the parameters' id and the client's seeded public key (SEAL serialisation,
// compression off: its uniform half travels as a seed).
// Per linear step:
//   client -> server  frame kHeInputs: the seeded secret-key ciphertexts of x_c
//   server -> client  frame kHeReplies: per reply, c1 in full and c0 at the
//                     output slots only, both at the final level
// The server's output is the mask s at every output (its share); the client's
// is W x_c - s. Both parties count the revealed coefficients and refuse a step
// that would exceed HeParameters::max_revealed (the flooding covers that many).
#pragma once

#include <seal/seal.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "he/conv_layout.h"
#include "he/params.h"
#include "io/channel.h"

namespace pie::he {

class LinearServerKernel;  // he/linear_kernel.h

/// Frame types of the HE linear protocol.
enum : std::uint32_t { kHeHello = 0x48450001, kHeInputs = 0x48450002, kHeReplies = 0x48450003 };

/// Timings of one party's last step, in seconds.
struct LinearTimings {
  double encrypt = 0;  // client: encode + encrypt + serialise
  double compute = 0;  // server: load + products + replies
  double decrypt = 0;  // client: decrypt + extract
};

class LinearClient {
 public:
  /// Generates a fresh key pair and sends the hello frame.
  LinearClient(std::shared_ptr<const HeContext> ctx, Channel& channel);
  LinearClient(const LinearClient&) = delete;
  LinearClient& operator=(const LinearClient&) = delete;

  /// Runs one linear step on the client share x (C, H, W), values in [0, t).
  /// Returns W x - s mod t, shape (O, Ho, Wo).
  /// @throws std::invalid_argument on values >= t; std::runtime_error when the
  ///         session's revealed-coefficient budget would be exceeded;
  ///         ChannelError on transport or framing failures.
  std::vector<std::uint64_t> run(const ConvShape& shape, const std::uint64_t* x);

  /// First half of run(): checks, encrypts and sends x. Several steps may be
  /// sent before their replies are received (receive(), in the order sent).
  /// @throws as run().
  void send(const ConvShape& shape, const std::uint64_t* x);
  /// Second half of run(): receives and decrypts the replies of the oldest
  /// step sent and not yet received.
  /// @throws std::logic_error when no step is pending; ChannelError as run().
  std::vector<std::uint64_t> receive();

  const LinearTimings& timings() const { return timings_; }

 private:
  std::shared_ptr<const HeContext> ctx_;
  Channel& channel_;
  seal::KeyGenerator keygen_;
  seal::Encryptor encryptor_;
  seal::Decryptor decryptor_;
  std::uint64_t revealed_ = 0;  // counting the steps sent
  std::deque<ConvShape> pending_;  // steps sent, replies not yet received
  LinearTimings timings_;
};

/// The input frame of one step, as the server received it (see LinearServer::receive).
struct LinearInputs {
  ConvShape shape;
  std::vector<std::uint8_t> frame;
};

class LinearServer {
 public:
  /// Receives the hello frame: checks the parameters and loads the public key.
  /// @throws ProtocolError on other parameters or a malformed key.
  LinearServer(std::shared_ptr<const HeContext> ctx, Channel& channel);
  LinearServer(const LinearServer&) = delete;
  LinearServer& operator=(const LinearServer&) = delete;

  /// Runs one linear step with weights (O, C/groups, kh, kw) (signed, taken
  /// mod t). Returns the server's share s, shape (O, Ho, Wo).
  /// @throws std::invalid_argument ("weight") when the weights overflow the
  ///         noise budget (checked before anything is received);
  ///         std::runtime_error when the revealed-coefficient budget would be
  ///         exceeded; ChannelError on transport or framing failures.
  std::vector<std::uint64_t> run(const ConvShape& shape, const std::int64_t* weights);

  /// First half of run(): receives one step's input ciphertexts, held as
  /// received (the frame's bytes) until reply().
  /// @throws ChannelError on transport or framing failures.
  LinearInputs receive(const ConvShape& shape);
  /// Second half of run(): computes and sends the replies to received inputs.
  /// @throws as run(); ProtocolError on a malformed frame.
  std::vector<std::uint64_t> reply(const LinearInputs& inputs, const std::int64_t* weights);

  const LinearTimings& timings() const { return timings_; }

 private:
  std::vector<std::uint64_t> respond(const ConvLayout& layout, const LinearServerKernel& kernel,
                                     const std::vector<std::uint8_t>& msg);

  std::shared_ptr<const HeContext> ctx_;
  Channel& channel_;
  seal::PublicKey pk_;
  std::uint64_t revealed_ = 0;
  LinearTimings timings_;
};

/// Result of run_secure_linear: both parties' outputs and costs.
struct SecureLinearResult {
  std::vector<std::uint64_t> client_out;
  std::vector<std::uint64_t> server_mask;
  std::uint64_t bytes_client_to_server = 0;
  std::uint64_t bytes_server_to_client = 0;
  std::uint64_t messages = 0;  // flushes, both ways
  LinearTimings client;
  LinearTimings server;
  std::size_t num_inputs = 0;   // client ciphertexts
  std::size_t num_outputs = 0;  // replies
};

/// Runs session set-up and one step with both parties as threads over an
/// in-memory channel (tests, benchmarks, the embedded demo).
SecureLinearResult run_secure_linear(const HeParameters& params, const ConvShape& shape, const std::uint64_t* x,
                                     const std::int64_t* weights);

}  // namespace pie::he
