// Thin streaming classes around the half-gates functions: a garbler and an
// evaluator session over a Channel (DESIGN.md section 6).
//
// Work is cut into blocks of instances (all gates of up to `block` instances
// of one circuit, the same gate of every instance in a block hashed in one
// interleaved batch) and blocks into waves of 2 x threads blocks: a wave is
// garbled in parallel (OpenMP), then its tables are sent, so the garbler's
// memory is bounded by one wave whatever the batch size. One session owns one
// Delta, one random tweak prefix, one tweak counter (never reset) and one IKNP
// instance whose correlation is that Delta.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "crypto/block.h"
#include "crypto/hash.h"
#include "crypto/prg.h"
#include "gc/circuit.h"
#include "gc/halfgates.h"
#include "io/channel.h"
#include "ot/iknp.h"

namespace pie {

struct GcOptions {
  /// Worker threads; 0 = all available (OpenMP), ignored without OpenMP.
  int threads = 0;
  /// Instances per block; 0 = chosen from the circuit size (about 512 KiB of labels).
  std::size_t block = 0;
};

/// Tables of one garbled batch as received by the evaluator.
struct GarbledBatch {
  std::uint64_t tweak_prefix = 0;
  std::uint64_t tweak_base = 0;
  std::size_t n = 0;
  std::size_t block = 0;
  std::vector<Block> tables;
};

/// Threads a session actually uses for a requested count.
int resolve_threads(int requested);

/// Blocks [first_block, first_block + count) of a batch of n instances cut
/// into blocks of `block`; instance i uses the tweaks from tweak_base + 2*A*i
/// under tweak_prefix.
struct BlockRange {
  std::uint64_t tweak_prefix;
  std::uint64_t tweak_base;
  std::size_t n;
  std::size_t block;
  std::size_t first_block;
  std::size_t count;
};

/// Instances per block when GcOptions::block is 0: labels of about 512 KiB.
std::size_t default_block_size(const Circuit& c);

/// One workspace per worker thread, sized for blocks of `block` instances.
std::vector<GcWorkspace> make_workspaces(const Circuit& c, std::size_t block, int threads);

/// Garbles the blocks of r in parallel (one worker per workspace). inputs and
/// outputs cover the whole batch; tables receive the range's tables only.
void garble_blocks(const Circuit& c, const TccrHash& hash, const Block& delta, const BlockRange& r,
                   const InputView& inputs, Block* tables, const OutputSink& outputs,
                   std::vector<GcWorkspace>& ws);

/// Evaluates the blocks of r in parallel; tables hold the range's tables only.
void evaluate_blocks(const Circuit& c, const TccrHash& hash, const BlockRange& r, const InputView& inputs,
                     const Block* tables, const OutputSink& outputs, std::vector<GcWorkspace>& ws);

class GarblerSession {
 public:
  /// @throws std::invalid_argument if opt.threads < 0.
  GarblerSession(Channel& ch, GcOptions opt);
  GarblerSession(const GarblerSession&) = delete;
  GarblerSession& operator=(const GarblerSession&) = delete;

  const Block& delta() const { return delta_; }
  /// The high word of this session's garbling tweaks (random, lowest bit 0).
  std::uint64_t tweak_prefix() const { return tweak_prefix_; }
  IknpSender& ot() { return ot_; }
  Prg& prg() { return prg_; }
  Channel& channel() { return ch_; }

  /// Garbles n instances of c from the 0-labels of their inputs, streaming
  /// the tables to the evaluator; writes the output 0-labels (or their colour
  /// bits) to output_zero.
  void garble(const Circuit& c, std::size_t n, const InputView& input_zero, const OutputSink& output_zero);

 private:
  Channel& ch_;
  GcOptions opt_;
  Block delta_;
  IknpSender ot_;
  TccrHash hash_;
  std::uint64_t tweak_prefix_;
  TweakCounter tweaks_;
  Prg prg_;
};

class EvaluatorSession {
 public:
  EvaluatorSession(Channel& ch, GcOptions opt);
  EvaluatorSession(const EvaluatorSession&) = delete;
  EvaluatorSession& operator=(const EvaluatorSession&) = delete;

  IknpReceiver& ot() { return ot_; }
  Channel& channel() { return ch_; }

  /// Receives and keeps the tables of n instances of c (offline material).
  /// @throws ProtocolError if the garbler's batch does not match c and n,
  ///         reuses tweaks of an earlier batch or changes the session's prefix.
  GarbledBatch receive(const Circuit& c, std::size_t n);
  /// Evaluates a received batch from the active input labels; writes the
  /// active output labels (or their colour bits).
  void evaluate(const Circuit& c, const GarbledBatch& batch, const InputView& inputs, const OutputSink& outputs);
  /// Receives and evaluates n instances wave by wave (tables are not kept).
  void receive_and_evaluate(const Circuit& c, std::size_t n, const InputView& inputs, const OutputSink& outputs);

 private:
  GarbledBatch receive_header(const Circuit& c, std::size_t n);

  Channel& ch_;
  GcOptions opt_;
  IknpReceiver ot_;
  TccrHash hash_;
  std::uint64_t tweak_floor_ = 0;  // tweaks below this were used by earlier batches
  std::optional<std::uint64_t> tweak_prefix_;  // fixed by the session's first batch
};

/// Packs bits (0/1 bytes) little-endian into ceil(n/8) bytes and back.
std::vector<std::uint8_t> pack_bits(const std::uint8_t* bits, std::size_t n);
std::vector<std::uint8_t> unpack_bits(const std::uint8_t* packed, std::size_t n);

/// Statistics of one run_two_party call.
struct TwoPartyStats {
  std::size_t and_gates = 0;
  std::uint64_t bytes_garbler_to_evaluator = 0;
  std::uint64_t bytes_evaluator_to_garbler = 0;
  std::uint64_t table_bytes = 0;
};

/// Runs one instance of c between a garbler and an evaluator thread over an
/// in-memory channel: evaluator_owns[k] says which party holds input k;
/// input_bits holds all input bits (each thread reads only its own party's).
/// The evaluator returns the colour bits of the outputs; the garbler decodes.
/// @throws std::invalid_argument on malformed arguments; rethrows a party's error.
std::vector<std::uint8_t> run_two_party(const Circuit& c, const std::vector<std::uint8_t>& evaluator_owns,
                                        const std::vector<std::uint8_t>& input_bits, GcOptions opt,
                                        TwoPartyStats* stats);

}  // namespace pie
