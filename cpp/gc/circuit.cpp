#include "gc/circuit.h"

#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

namespace pie {

namespace {

std::size_t sum_widths(const std::vector<std::uint32_t>& widths) {
  std::size_t s = 0;
  for (auto w : widths) s += w;
  return s;
}

}  // namespace

Circuit::Circuit(std::uint32_t num_wires, std::vector<std::uint32_t> input_widths,
                 std::vector<std::uint32_t> output_widths, std::vector<Gate> gates,
                 std::vector<std::uint32_t> output_wires)
    : num_wires_(num_wires),
      input_widths_(std::move(input_widths)),
      output_widths_(std::move(output_widths)),
      gates_(std::move(gates)),
      output_wires_(std::move(output_wires)) {
  num_input_bits_ = sum_widths(input_widths_);
  if (num_input_bits_ > num_wires_) {
    throw std::invalid_argument("input_widths: more input bits than wires");
  }
  if (sum_widths(output_widths_) != output_wires_.size()) {
    throw std::invalid_argument("output_wires: length differs from the sum of output_widths");
  }
  std::vector<std::uint8_t> written(num_wires_, 0);
  for (std::size_t w = 0; w < num_input_bits_; ++w) written[w] = 1;
  for (std::size_t g = 0; g < gates_.size(); ++g) {
    const Gate& gate = gates_[g];
    const std::string where = "gates[" + std::to_string(g) + "]: ";
    if (gate.a >= num_wires_ || gate.b >= num_wires_ || gate.out >= num_wires_) {
      throw std::invalid_argument(where + "wire index out of range");
    }
    if (!written[gate.a] || !written[gate.b]) {
      throw std::invalid_argument(where + "reads a wire that no earlier gate or input wrote");
    }
    if (written[gate.out]) throw std::invalid_argument(where + "writes a wire twice");
    if (gate.type == GateType::kInv && gate.a != gate.b) {
      throw std::invalid_argument(where + "INV must have b == a");
    }
    written[gate.out] = 1;
    if (gate.type == GateType::kAnd) ++num_and_;
  }
  for (std::size_t k = 0; k < output_wires_.size(); ++k) {
    if (output_wires_[k] >= num_wires_ || !written[output_wires_[k]]) {
      throw std::invalid_argument("output_wires[" + std::to_string(k) + "]: wire is never written");
    }
  }
}

std::size_t Circuit::input_offset(std::size_t k) const {
  if (k >= input_widths_.size()) throw std::invalid_argument("input index out of range");
  std::size_t off = 0;
  for (std::size_t i = 0; i < k; ++i) off += input_widths_[i];
  return off;
}

std::vector<std::uint8_t> Circuit::evaluate(const std::vector<std::uint8_t>& inputs) const {
  if (inputs.size() != num_input_bits_) {
    throw std::invalid_argument("inputs: expected " + std::to_string(num_input_bits_) + " bits");
  }
  std::vector<std::uint8_t> v(num_wires_, 0);
  for (std::size_t w = 0; w < num_input_bits_; ++w) v[w] = inputs[w] & 1U;
  for (const Gate& g : gates_) {
    switch (g.type) {
      case GateType::kXor: v[g.out] = v[g.a] ^ v[g.b]; break;
      case GateType::kAnd: v[g.out] = v[g.a] & v[g.b]; break;
      case GateType::kInv: v[g.out] = v[g.a] ^ 1U; break;
    }
  }
  std::vector<std::uint8_t> out(output_wires_.size());
  for (std::size_t k = 0; k < out.size(); ++k) out[k] = v[output_wires_[k]];
  return out;
}

namespace {

constexpr std::uint64_t kMaxBristolWires = std::uint64_t{1} << 26;

class BristolParser {
 public:
  BristolParser(const std::string& text, const std::string& name) : in_(text), name_(name) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument(name_ + ":" + std::to_string(line_no_) + ": " + what);
  }

  // Next non-empty line, split into tokens.
  std::vector<std::string> next_line(const char* expecting) {
    std::string line;
    while (std::getline(in_, line)) {
      ++line_no_;
      std::istringstream ss(line);
      std::vector<std::string> toks;
      for (std::string t; ss >> t;) toks.push_back(t);
      if (!toks.empty()) return toks;
    }
    ++line_no_;
    fail(std::string("unexpected end of file, expected ") + expecting);
  }

  std::uint64_t number(const std::string& tok, const char* field) const {
    if (tok.empty() || tok.size() > 10 || tok.find_first_not_of("0123456789") != std::string::npos) {
      fail(std::string(field) + ": '" + tok + "' is not a non-negative integer");
    }
    const std::uint64_t v = std::stoull(tok);
    if (v > std::numeric_limits<std::uint32_t>::max() - 2) fail(std::string(field) + ": value too large");
    return v;
  }

  std::vector<std::uint32_t> widths(const char* field) {
    const auto toks = next_line(field);
    const std::uint64_t count = number(toks[0], field);
    if (toks.size() != count + 1) {
      fail(std::string(field) + ": announces " + std::to_string(count) + " entries, found " +
           std::to_string(toks.size() - 1));
    }
    std::vector<std::uint32_t> out;
    for (std::size_t i = 1; i < toks.size(); ++i) {
      out.push_back(static_cast<std::uint32_t>(number(toks[i], field)));
    }
    return out;
  }

  bool has_more_content() {
    std::string line;
    while (std::getline(in_, line)) {
      ++line_no_;
      if (line.find_first_not_of(" \t\r") != std::string::npos) return true;
    }
    return false;
  }

  std::size_t line_no() const { return line_no_; }

 private:
  std::istringstream in_;
  std::string name_;
  std::size_t line_no_ = 0;
};

}  // namespace

Circuit Circuit::from_bristol_text(const std::string& text, const std::string& name) {
  BristolParser p(text, name);
  const auto header = p.next_line("the header 'gates wires'");
  if (header.size() != 2) p.fail("header: expected 'num_gates num_wires'");
  const std::uint64_t num_gates = p.number(header[0], "num_gates");
  const std::uint64_t num_wires = p.number(header[1], "num_wires");
  // Every gate takes a line of at least 8 bytes: bounding the count by the
  // text keeps a hostile header from reserving gigabytes.
  if (num_gates > text.size() / 8) p.fail("num_gates: more gates than the text can hold");
  // One 16-byte label per wire and instance: 2^26 wires (1 GiB of labels per
  // instance) is far beyond any circuit pie garbles, and bounds the wire map.
  if (num_wires > kMaxBristolWires) p.fail("num_wires: more than 2^26 wires");
  const auto in_widths = p.widths("input widths");
  const auto out_widths = p.widths("output widths");
  const std::size_t in_bits = sum_widths(in_widths);
  const std::size_t out_bits = sum_widths(out_widths);
  if (in_bits > num_wires || out_bits > num_wires) p.fail("widths exceed num_wires");
  // Every wire is an input or the output of one gate; more wires than that
  // could never be written, and would only size the wire map.
  if (num_wires > in_bits + num_gates) p.fail("num_wires: more wires than the inputs and gates can write");

  // Bristol wires map to internal wires; EQW (copy) aliases, EQ (constant)
  // maps to a constant wire built from XOR(w, w) = 0 and its inverse.
  constexpr std::uint32_t kUnset = std::numeric_limits<std::uint32_t>::max();
  std::vector<std::uint32_t> map(num_wires, kUnset);
  for (std::size_t w = 0; w < in_bits; ++w) map[w] = static_cast<std::uint32_t>(w);
  std::vector<Gate> gates;
  gates.reserve(num_gates);
  std::uint32_t next_internal = static_cast<std::uint32_t>(num_wires);  // extra wires for constants
  std::uint32_t zero = kUnset;
  std::uint32_t one = kUnset;
  auto read_wire = [&](const std::string& tok) {
    const std::uint64_t w = p.number(tok, "input wire");
    if (w >= num_wires) p.fail("input wire " + tok + " out of range");
    if (map[w] == kUnset) p.fail("wire " + tok + " is read before it is written");
    return map[w];
  };
  auto write_wire = [&](const std::string& tok) {
    const std::uint64_t w = p.number(tok, "output wire");
    if (w >= num_wires) p.fail("output wire " + tok + " out of range");
    if (map[w] != kUnset) p.fail("wire " + tok + " is written twice");
    return static_cast<std::uint32_t>(w);
  };
  auto constant = [&](bool v) {
    if (zero == kUnset) {
      if (in_bits == 0) p.fail("EQ: constants need at least one input wire");
      zero = next_internal++;
      gates.push_back(Gate{GateType::kXor, 0, 0, zero});
    }
    if (!v) return zero;
    if (one == kUnset) {
      one = next_internal++;
      gates.push_back(Gate{GateType::kInv, zero, zero, one});
    }
    return one;
  };

  for (std::uint64_t g = 0; g < num_gates; ++g) {
    const auto t = p.next_line("a gate");
    const std::string& op = t.back();
    if (t.size() < 4) p.fail("gate line too short");
    const std::uint64_t nin = p.number(t[0], "gate input count");
    const std::uint64_t nout = p.number(t[1], "gate output count");
    if (nout != 1 || t.size() != 2 + nin + nout + 1) p.fail("gate '" + op + "': malformed arity");
    if (op == "XOR" || op == "AND") {
      if (nin != 2) p.fail(op + " needs 2 inputs");
      const std::uint32_t a = read_wire(t[2]);
      const std::uint32_t b = read_wire(t[3]);
      const std::uint32_t o = write_wire(t[4]);
      gates.push_back(Gate{op == "XOR" ? GateType::kXor : GateType::kAnd, a, b, o});
      map[o] = o;
    } else if (op == "INV" || op == "NOT") {
      if (nin != 1) p.fail(op + " needs 1 input");
      const std::uint32_t a = read_wire(t[2]);
      const std::uint32_t o = write_wire(t[3]);
      gates.push_back(Gate{GateType::kInv, a, a, o});
      map[o] = o;
    } else if (op == "EQW") {
      if (nin != 1) p.fail("EQW needs 1 input");
      const std::uint32_t a = read_wire(t[2]);
      map[write_wire(t[3])] = a;
    } else if (op == "EQ") {
      if (nin != 1) p.fail("EQ needs 1 input");
      const std::uint64_t v = p.number(t[2], "EQ constant");
      if (v > 1) p.fail("EQ constant must be 0 or 1");
      const std::uint32_t o = write_wire(t[3]);
      map[o] = constant(v == 1);
    } else {
      p.fail("unsupported gate '" + op + "'");
    }
  }
  if (p.has_more_content()) p.fail("content after the announced " + std::to_string(num_gates) + " gates");

  std::vector<std::uint32_t> outputs(out_bits);
  for (std::size_t k = 0; k < out_bits; ++k) {
    const std::size_t w = num_wires - out_bits + k;
    if (map[w] == kUnset) p.fail("output wire " + std::to_string(w) + " is never written");
    outputs[k] = map[w];
  }
  return Circuit(next_internal, in_widths, out_widths, std::move(gates), std::move(outputs));
}

Circuit Circuit::from_bristol_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::invalid_argument("path: cannot open '" + path + "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return from_bristol_text(ss.str(), path);
}

}  // namespace pie
