// Boolean circuits for garbling: a topologically ordered gate list over
// XOR, AND and INV (DESIGN.md section 6).
//
// Wires 0 .. num_input_bits()-1 are the inputs, input k occupying a
// contiguous range in input order (bit i of input k on wire offset_k + i).
// Outputs are an explicit list of wires, output k occupying a contiguous
// range of that list. Every gate writes a fresh wire from wires written
// before it, so one pass in order evaluates (or garbles) the circuit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pie {

enum class GateType : std::uint8_t { kXor, kAnd, kInv };

struct Gate {
  GateType type;
  std::uint32_t a;    // first input wire
  std::uint32_t b;    // second input wire (equal to a for INV)
  std::uint32_t out;  // output wire
};

class Circuit {
 public:
  /// Validates the structure (wires in range, every wire written once and
  /// before it is read, outputs written).
  /// @throws std::invalid_argument naming the field and gate that is wrong.
  Circuit(std::uint32_t num_wires, std::vector<std::uint32_t> input_widths,
          std::vector<std::uint32_t> output_widths, std::vector<Gate> gates,
          std::vector<std::uint32_t> output_wires);

  /// Parses a Bristol Fashion circuit (gates XOR, AND, INV, EQW, EQ).
  /// @throws std::invalid_argument "<name>:<line>: <problem>" for a malformed file.
  static Circuit from_bristol_text(const std::string& text, const std::string& name);
  /// @throws std::invalid_argument if the file cannot be read or is malformed.
  static Circuit from_bristol_file(const std::string& path);

  std::uint32_t num_wires() const { return num_wires_; }
  const std::vector<std::uint32_t>& input_widths() const { return input_widths_; }
  const std::vector<std::uint32_t>& output_widths() const { return output_widths_; }
  const std::vector<Gate>& gates() const { return gates_; }
  const std::vector<std::uint32_t>& output_wires() const { return output_wires_; }
  std::size_t num_input_bits() const { return num_input_bits_; }
  std::size_t num_output_bits() const { return output_wires_.size(); }
  std::size_t num_and() const { return num_and_; }
  /// First wire of input k.
  std::size_t input_offset(std::size_t k) const;

  /// Cleartext evaluation: inputs holds num_input_bits() bits (0/1, wire
  /// order); returns num_output_bits() bits in output order.
  /// @throws std::invalid_argument if inputs has the wrong length.
  std::vector<std::uint8_t> evaluate(const std::vector<std::uint8_t>& inputs) const;

 private:
  std::uint32_t num_wires_;
  std::vector<std::uint32_t> input_widths_;
  std::vector<std::uint32_t> output_widths_;
  std::vector<Gate> gates_;
  std::vector<std::uint32_t> output_wires_;
  std::size_t num_input_bits_ = 0;
  std::size_t num_and_ = 0;
};

}  // namespace pie
