// The ReLU step of the protocol (DESIGN.md section 2): y = (ReLU(x) >> shift) - r
// mod 2^l_out over shares x = x_s + x_c mod 2^l_in, the server garbling and
// the client evaluating relu_circuit().
//
// Offline (input-independent for the server): the server garbles a batch and
// streams the tables; the client obtains the labels of its share x_c and of
// its fresh output mask r by correlated OT (IKNP). Online: the server sends
// the labels of x_s (16 l_in bytes per ReLU), the client evaluates and returns
// the colour bits of the output wires (l_out bits per ReLU), the server
// decodes its output share y_s = y - r. The client's output share is r.
//
// Offline material is bound to its session and batch and can be consumed by
// online() exactly once (the session records consumed batch ids, so a copy of
// the material is refused too); a second use throws before anything is sent.
//
// offline() is one round trip (the batch header out, the client's OT matrix
// back, then the tables), and has parts too, so that batches whose inputs
// the client already knows can share one: the server announces every batch
// (announce), then receives every OT (receive_ot), then garbles and streams
// every batch (garble); the client takes every announcement (receive_header),
// then runs every OT (request), then receives every batch's tables
// (receive_tables). As online, the client never writes while the server may
// still be writing.
//
// online() is one round trip. Batches of one round of the Plan can share a
// round trip through its two halves: the server sends the labels of every
// batch (send_labels) before decoding any reply (finish); the client
// evaluates every batch (evaluate) before sending any reply (reply). The
// client never writes while the server may still be writing, so the round
// cannot deadlock on transport buffers whatever the batch sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gc/builder.h"
#include "gc/engine.h"

namespace pie {

/// The circuit a ReluServer/ReluClient pair runs: relu_circuit, or
/// truncate_circuit for the Plan's truncation steps (same inputs and protocol).
struct ReluShape {
  std::uint32_t l_in;
  std::uint32_t l_out;
  std::uint32_t shift;
  bool truncate = false;
};

/// relu_circuit or truncate_circuit, as the shape says.
Circuit share_circuit(const ReluShape& shape);

/// What the server keeps from an offline batch.
class ReluServerMaterial {
 public:
  std::uint64_t batch() const { return batch_; }
  std::size_t size() const { return n_; }
  bool consumed() const { return consumed_; }

 private:
  friend class ReluServer;
  const void* owner_ = nullptr;
  std::uint64_t batch_ = 0;
  std::size_t n_ = 0;
  std::vector<Block> xs_zero_;            // [n][l_in] 0-labels of the server's share
  std::vector<std::uint8_t> out_colour_;  // [n][l_out] colour bits of the output 0-labels, packed as the reply
  std::vector<Block> q_;                  // [n][l_in + l_out] the OT's 0-labels, until garbled
  bool ot_done_ = false;
  bool garbled_ = false;
  bool consumed_ = false;
  bool labels_sent_ = false;
};

/// What the client keeps from an offline batch.
class ReluClientMaterial {
 public:
  std::uint64_t batch() const { return batch_; }
  std::size_t size() const { return n_; }
  bool consumed() const { return consumed_; }
  /// Garbled-table bytes held.
  std::size_t table_bytes() const { return tables_.tables.size() * sizeof(Block); }

 private:
  friend class ReluClient;
  const void* owner_ = nullptr;
  std::uint64_t batch_ = 0;
  std::size_t n_ = 0;
  std::vector<Block> own_labels_;  // [n][l_in + l_out] active labels of x_c and r
  GarbledBatch tables_;
  std::vector<std::uint8_t> reply_;  // packed output colour bits, kept between evaluate() and reply()
  bool requested_ = false;
  bool has_tables_ = false;
  bool consumed_ = false;
  bool evaluated_ = false;
};

class ReluServer {
 public:
  /// @throws std::invalid_argument for an invalid shape (see relu_circuit).
  ReluServer(Channel& ch, ReluShape shape, GcOptions opt);
  const Circuit& circuit() const { return circuit_; }
  const GarblerSession& session() const { return session_; }

  /// Garbles n ReLUs and runs the OT for the client's inputs: announce(),
  /// receive_ot() and garble() in one.
  ReluServerMaterial offline(std::size_t n);
  /// First part of offline(): sends the header of a batch of n.
  ReluServerMaterial announce(std::size_t n);
  /// Second part: the OT for the client's inputs (their 0-labels are held until garble()).
  /// @throws std::invalid_argument if the material is foreign or past this part.
  void receive_ot(ReluServerMaterial& material);
  /// Third part: garbles the batch and streams its tables.
  /// @throws std::invalid_argument unless receive_ot() ran on this material and garble() did not.
  void garble(ReluServerMaterial& material);
  /// Consumes the material; xs holds material.size() server shares < 2^l_in.
  /// Returns the server's output shares.
  /// @throws std::invalid_argument if the material is consumed, foreign or xs is malformed.
  std::vector<std::uint64_t> online(ReluServerMaterial& material, const std::uint64_t* xs, std::size_t n);
  /// First half of online(): consumes the material and sends the labels of xs.
  /// @throws std::invalid_argument as online().
  void send_labels(ReluServerMaterial& material, const std::uint64_t* xs, std::size_t n);
  /// Second half of online(): receives the client's reply and returns the server's output shares.
  /// @throws std::invalid_argument unless send_labels() ran on this material and finish() did not.
  std::vector<std::uint64_t> finish(ReluServerMaterial& material);

 private:
  Channel& ch_;
  ReluShape shape_;
  Circuit circuit_;
  GarblerSession session_;
  std::uint64_t batches_ = 0;
  std::vector<bool> consumed_;  // per batch id: the session's record, whatever copies of material exist
  std::vector<Block> label_buf_;  // one piece of online labels, reused
  std::vector<std::uint8_t> reply_scratch_;  // the packed reply of the batch being finished, reused
};

class ReluClient {
 public:
  ReluClient(Channel& ch, ReluShape shape, GcOptions opt);
  ReluClient(const ReluClient&) = delete;
  ReluClient& operator=(const ReluClient&) = delete;
  ~ReluClient();
  const Circuit& circuit() const { return circuit_; }

  /// Obtains the labels of x_c and r (n each) and stores the garbled tables:
  /// request() and receive_tables() in one.
  /// @throws std::invalid_argument if a value is out of its ring.
  ReluClientMaterial offline(const std::uint64_t* xc, const std::uint64_t* r, std::size_t n);
  /// First part of offline(): receives the header of the server's next batch, of n.
  /// @throws ProtocolError if the server's batch differs.
  ReluClientMaterial receive_header(std::size_t n);
  /// Second part: the OT for x_c and r (material.size() each).
  /// @throws std::invalid_argument if a value is out of its ring, or the
  ///         material is foreign or past this part.
  void request(ReluClientMaterial& material, const std::uint64_t* xc, const std::uint64_t* r);
  /// Third part: receives and stores the batch's garbled tables.
  /// @throws std::invalid_argument unless request() ran on this material and this part did not.
  void receive_tables(ReluClientMaterial& material);
  /// Consumes the material: evaluates and returns the output colour bits.
  /// @throws std::invalid_argument if the material is consumed or foreign;
  ///         ProtocolError if the server's batch differs.
  void online(ReluClientMaterial& material);
  /// First half of online(): consumes the material, receives the server's labels and evaluates.
  /// @throws as online().
  void evaluate(ReluClientMaterial& material);
  /// Second half of online(): sends the reply of an evaluated batch and flushes it.
  /// @throws std::invalid_argument unless evaluate() ran on this material and reply() did not.
  void reply(ReluClientMaterial& material);
  /// Frees the batch's tables and labels and consumes the material if it was not yet. A
  /// round of several batches releases them after its last reply, so freeing never
  /// delays a reply.
  /// @throws std::invalid_argument if the material is foreign.
  void release(ReluClientMaterial& material);

 private:
  Channel& ch_;
  ReluShape shape_;
  Circuit circuit_;
  EvaluatorSession session_;
  std::uint64_t batches_ = 0;
  std::vector<bool> consumed_;  // per batch id
  void grow_scratch(std::size_t n);

  std::vector<Block> labels_scratch_;         // the server's labels of the batch being evaluated
  // labels_scratch_ holds received bytes the channel has not checked yet
  // (Channel::recv_deferred_check): settled before the scratch is reused.
  bool labels_unchecked_ = false;
  void settle_labels();
  std::vector<std::uint8_t> colours_scratch_;  // its output colour bits, before packing
};

}  // namespace pie
