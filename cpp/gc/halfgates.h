// Half-gates garbling: the pure functions (no I/O) that garble and evaluate
// many instances of one circuit at once.
// [REF] S. Zahur, M. Rosulek, D. Evans, "Two Halves Make a Whole: Reducing
//       Data Transfer in Garbled Circuits using Half Gates", EUROCRYPT 2015
//       (free-XOR, point-and-permute, two ciphertexts per AND gate).
// [REF] C. Guo, J. Katz, X. Wang, Y. Yu, IEEE S&P 2020: the tweakable circular
//       correlation-robust hash H(x, i) from fixed-key AES (crypto/hash.h).
//
// Security: 128-bit computational (labels and the global offset Delta are
// 128-bit; lsb(Delta) = 1 for point-and-permute, so 127 secret bits).
// Every AND gate uses two tweaks; a call over n instances of a circuit with
// A AND gates uses exactly the tweaks [base, base + 2*A*n) (gate g, instance
// i: base + 2*(g*n + i) and that plus one) in the low word, under the
// session's prefix in the high word. Callers reserve disjoint ranges from one
// per-session TweakCounter, so no tweak repeats under one Delta; the random
// prefix keeps the tweak ranges of different sessions apart as well.
//
// Layouts: input/output labels are instance-major ([n][num_inputs] and
// [n][num_outputs]); tables are [AND gate][instance][2] (TG, TE). Inputs may
// come from two arrays (InputView) and outputs may be kept as colour bits
// only (OutputSink), so protocols gather and reduce per block, in cache,
// instead of copying whole batches.
//
// Interleaving: each AND gate is processed for all n instances at once. With
// the AES-NI backends the hash is fused into the gate: on VAES, four
// instances per 512-bit register and 32 hashes in flight (eight garbled or
// sixteen evaluated instances per group); on 128-bit AES-NI eight hashes
// (two garbled or four evaluated instances). With the OpenSSL backend the
// gate batches its 4n (or 2n) hashes through TccrHash. All give identical
// tables (tested).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "crypto/block.h"
#include "crypto/hash.h"
#include "gc/circuit.h"

namespace pie {

/// Domain separation in the high word of a hash tweak: garbling and OT
/// extension share one Delta per session, so their tweaks must differ. OT
/// extension uses exactly kTweakDomainOt (odd); garbling uses a per-session
/// prefix whose lowest bit is 0.
constexpr std::uint64_t kTweakDomainOt = 1;

/// A fresh garbling prefix from the OS CSPRNG: 63 random bits, lowest bit 0.
std::uint64_t random_tweak_prefix();

/// Test-only observation of the tweaks the AND gates feed to the hash, on
/// both backends (the AES-NI kernels record the tweak registers they hash
/// with). Off by default: one relaxed atomic load per gate.
namespace tweak_probe {
struct Record {
  std::uint64_t lo;  // the counter word
  std::uint64_t hi;  // the prefix word
  bool garbler;      // garble_instances (true) or evaluate_instances (false)
};
/// Starts recording (clearing earlier records).
void start();
/// Stops recording and returns every hash tweak fed since start(), in no fixed order across threads.
std::vector<Record> stop();
}  // namespace tweak_probe

/// Hands out disjoint ranges of 64-bit tweaks; never resets.
class TweakCounter {
 public:
  /// @throws std::overflow_error when the 64-bit space is exhausted.
  std::uint64_t reserve(std::uint64_t count);
  std::uint64_t next() const { return next_; }

 private:
  std::uint64_t next_ = 0;
};

/// Scratch memory of one thread: the labels of every wire of every instance.
struct GcWorkspace {
  std::vector<Block> labels;  // [wire][instance]
  std::vector<Block> x;       // hash inputs (portable path only)
  std::vector<Block> tweaks;  // hash tweaks (portable path only)
  std::vector<Block> h;       // hash outputs (portable path only)
};

/// One array of input labels: instance i's wires are base[i*stride .. i*stride + width).
struct InputPart {
  const Block* base = nullptr;
  std::size_t stride = 0;
  std::size_t width = 0;
};

/// The input labels of a batch: the circuit's input wires are the `width`
/// wires of `first` followed by those of `second` (width 0 when unused).
struct InputView {
  InputPart first;
  InputPart second;

  /// Labels stored contiguously, [n][width].
  static InputView contiguous(const Block* labels, std::size_t width) {
    return InputView{InputPart{labels, width, width}, InputPart{}};
  }
  std::size_t width() const { return first.width + second.width; }
  /// The same view starting at instance i.
  InputView from(std::size_t i) const {
    return InputView{InputPart{first.base + i * first.stride, first.stride, first.width},
                     InputPart{second.base + i * second.stride, second.stride, second.width}};
  }
};

/// Where the output labels of a batch go ([n][num_outputs] each): the labels
/// themselves, their colour bits (lsb, one byte per output wire), or both;
/// a null pointer skips that form.
struct OutputSink {
  Block* labels = nullptr;
  std::uint8_t* colours = nullptr;

  /// The same sink starting at instance i of a circuit with `outs` outputs.
  OutputSink from(std::size_t i, std::size_t outs) const {
    return OutputSink{labels != nullptr ? labels + i * outs : nullptr,
                      colours != nullptr ? colours + i * outs : nullptr};
  }
};

/// @throws std::invalid_argument unless the view has the circuit's input width.
void check_input_width(const Circuit& c, const InputView& in);

/// Tables (in Blocks) that n instances of c need.
inline std::size_t table_blocks(const Circuit& c, std::size_t n) { return 2 * c.num_and() * n; }

/// Garbles n instances. input_zero: the 0-labels of the input wires; writes
/// tables ([num_and][n][2]) and the 0-labels of the outputs (or their colour
/// bits) to output_zero. ws.labels holds every wire's 0-label afterwards
/// ([wire][n]).
/// @throws std::invalid_argument if lsb(delta) != 1, the prefix is odd (the
///         OT domain) or the view's width is not the circuit's input width.
void garble_instances(const Circuit& c, const TccrHash& hash, const Block& delta,
                      std::uint64_t tweak_prefix, std::uint64_t tweak_base, std::size_t n, const InputView& input_zero,
                      Block* tables, const OutputSink& output_zero, GcWorkspace& ws);

/// Evaluates n instances from one active label per input wire and the tables
/// of garble_instances under the same tweak prefix and base; writes the active output
/// labels (or their colour bits).
/// @throws std::invalid_argument if the prefix is odd or the view's width is not the circuit's input width.
void evaluate_instances(const Circuit& c, const TccrHash& hash, std::uint64_t tweak_prefix,
                        std::uint64_t tweak_base, std::size_t n, const InputView& input_labels, const Block* tables,
                        const OutputSink& output_labels, GcWorkspace& ws);

}  // namespace pie
