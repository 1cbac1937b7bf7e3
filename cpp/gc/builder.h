// A small circuit builder with constant folding: adders, subtractors,
// comparators, multiplexers and shifts over little-endian bit vectors, and
// the ReLU-over-shares circuit of DESIGN.md section 2.
#pragma once

#include <cstdint>
#include <vector>

#include "gc/circuit.h"

namespace pie {

class CircuitBuilder {
 public:
  /// A bit is a wire or one of the two constants (folded away where possible).
  using Bit = std::uint32_t;
  static constexpr Bit kZero = 0xFFFFFFFEu;
  static constexpr Bit kOne = 0xFFFFFFFFu;
  using Bits = std::vector<Bit>;

  /// Declares the next input (all inputs come before any gate).
  /// @throws std::invalid_argument if a gate was already added.
  Bits input(std::uint32_t width);

  Bit xor_(Bit a, Bit b);
  Bit and_(Bit a, Bit b);
  Bit not_(Bit a);

  /// a + b mod 2^n (n = a.size() = b.size()): n-1 AND gates.
  Bits add(const Bits& a, const Bits& b);
  /// a - b mod 2^n: n-1 AND gates.
  Bits sub(const Bits& a, const Bits& b);
  /// Unsigned a < b: n AND gates.
  Bit less_than(const Bits& a, const Bits& b);
  /// sel ? a : b, bitwise: n AND gates.
  Bits mux(Bit sel, const Bits& a, const Bits& b);
  /// Logical shift right by k, keeping the width (free: wiring).
  Bits shift_right(const Bits& a, std::uint32_t k) const;
  /// Logical shift left by k, keeping the width (free: wiring).
  Bits shift_left(const Bits& a, std::uint32_t k) const;

  /// Declares the next output.
  void output(const Bits& bits);

  /// @throws std::invalid_argument if no input was declared (constants need one).
  Circuit build();

 private:
  Bit fresh_wire();
  Bit materialise(Bit b);
  void check_bit(Bit b) const;
  void carry_chain(const Bits& a, const Bits& b, Bits* sum);
  Bit borrow_chain(const Bits& a, const Bits& b, Bits* diff);

  std::uint32_t next_wire_ = 0;
  std::vector<std::uint32_t> input_widths_;
  std::vector<std::uint32_t> output_widths_;
  std::vector<Gate> gates_;
  std::vector<Bit> outputs_;
  Bit zero_wire_ = kZero;
  Bit one_wire_ = kOne;
};

/// The ReLU over additive shares (inputs: 0 = server share of x, l_in bits;
/// 1 = client share of x, l_in bits; 2 = client mask r, l_out bits) with one
/// output of l_out bits: (ReLU(x as signed l_in-bit) >> shift) - r mod 2^l_out,
/// where x = x_s + x_c mod 2^l_in. AND gates: (l_in - 1) + min(l_out, l_in - 1 - shift)
/// + (l_out - 1), at most l_in + 2 l_out.
/// @throws std::invalid_argument unless 2 <= l_in <= 64, 1 <= l_out <= 64, shift < l_in - 1.
Circuit relu_circuit(std::uint32_t l_in, std::uint32_t l_out, std::uint32_t shift);

/// The truncation over additive shares (same inputs as relu_circuit):
/// ((x as signed l_in-bit) >> shift) - r mod 2^l_out; the arithmetic shift is
/// wiring, so AND gates: (l_in - 1) + (l_out - 1).
/// @throws std::invalid_argument unless 2 <= l_in <= 64, 1 <= l_out <= 64, shift < l_in.
Circuit truncate_circuit(std::uint32_t l_in, std::uint32_t l_out, std::uint32_t shift);

/// Label-only output over additive shares: inputs 0 = the server's shares of
/// `classes` values of l bits (value j on bits j*l .. j*l + l - 1), 1 = the
/// client's shares, same layout; one output of argmax_index_bits(classes)
/// bits: the index of the largest x_j = x_s,j + x_c,j mod 2^l as signed l-bit
/// values, the lowest index among equal maxima (as numpy.argmax). AND gates
/// per class after the first: (l - 1) + l + l + index bits (add, signed
/// compare, select value and index), fewer where constants fold.
/// @throws std::invalid_argument unless 1 <= classes <= 65536 and 2 <= l <= 64.
Circuit argmax_circuit(std::uint32_t classes, std::uint32_t l);

/// Bits of argmax_circuit's output: ceil(log2 classes), at least 1.
std::uint32_t argmax_index_bits(std::uint32_t classes);

}  // namespace pie
