#include "gc/builder.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace pie {

namespace {

bool is_const(CircuitBuilder::Bit b) { return b == CircuitBuilder::kZero || b == CircuitBuilder::kOne; }

void check_widths(const CircuitBuilder::Bits& a, const CircuitBuilder::Bits& b, const char* op) {
  if (a.size() != b.size()) throw std::invalid_argument(std::string(op) + ": operands differ in width");
}

}  // namespace

CircuitBuilder::Bit CircuitBuilder::fresh_wire() {
  if (next_wire_ >= kZero) throw std::invalid_argument("circuit: too many wires");
  return next_wire_++;
}

void CircuitBuilder::check_bit(Bit b) const {
  if (!is_const(b) && b >= next_wire_) throw std::invalid_argument("bit: unknown wire " + std::to_string(b));
}

CircuitBuilder::Bits CircuitBuilder::input(std::uint32_t width) {
  if (!gates_.empty()) throw std::invalid_argument("input: declare every input before the first gate");
  Bits bits(width);
  for (auto& b : bits) b = fresh_wire();
  input_widths_.push_back(width);
  return bits;
}

CircuitBuilder::Bit CircuitBuilder::xor_(Bit a, Bit b) {
  check_bit(a);
  check_bit(b);
  if (a == kZero) return b;
  if (b == kZero) return a;
  if (a == kOne) return not_(b);
  if (b == kOne) return not_(a);
  if (a == b) return kZero;
  const Bit o = fresh_wire();
  gates_.push_back(Gate{GateType::kXor, a, b, o});
  return o;
}

CircuitBuilder::Bit CircuitBuilder::and_(Bit a, Bit b) {
  check_bit(a);
  check_bit(b);
  if (a == kZero || b == kZero) return kZero;
  if (a == kOne) return b;
  if (b == kOne) return a;
  if (a == b) return a;
  const Bit o = fresh_wire();
  gates_.push_back(Gate{GateType::kAnd, a, b, o});
  return o;
}

CircuitBuilder::Bit CircuitBuilder::not_(Bit a) {
  check_bit(a);
  if (a == kZero) return kOne;
  if (a == kOne) return kZero;
  const Bit o = fresh_wire();
  gates_.push_back(Gate{GateType::kInv, a, a, o});
  return o;
}

// Ripple carry with one AND per bit: c' = c ^ ((a ^ c) & (b ^ c)) = maj(a, b, c);
// the carry out of the top bit is not computed.
void CircuitBuilder::carry_chain(const Bits& a, const Bits& b, Bits* sum) {
  Bit c = kZero;
  const std::size_t n = a.size();
  for (std::size_t i = 0; i < n; ++i) {
    const Bit axc = xor_(a[i], c);
    (*sum)[i] = xor_(axc, b[i]);
    if (i + 1 < n) c = xor_(c, and_(axc, xor_(b[i], c)));
  }
}

CircuitBuilder::Bits CircuitBuilder::add(const Bits& a, const Bits& b) {
  check_widths(a, b, "add");
  Bits sum(a.size());
  carry_chain(a, b, &sum);
  return sum;
}

// Ripple borrow with one AND per bit and no inversions:
// borrow' = maj(~a, b, borrow) = b ^ ((a ^ borrow) & (b ^ borrow)).
// The borrow out of the top bit is returned (and costs an AND only if used).
CircuitBuilder::Bit CircuitBuilder::borrow_chain(const Bits& a, const Bits& b, Bits* diff) {
  Bit bo = kZero;
  const std::size_t n = a.size();
  for (std::size_t i = 0; i < n; ++i) {
    const Bit axb = xor_(a[i], bo);
    if (diff != nullptr) (*diff)[i] = xor_(axb, b[i]);
    if (i + 1 < n || diff == nullptr) bo = xor_(b[i], and_(axb, xor_(b[i], bo)));
  }
  return bo;
}

CircuitBuilder::Bits CircuitBuilder::sub(const Bits& a, const Bits& b) {
  check_widths(a, b, "sub");
  Bits diff(a.size());
  borrow_chain(a, b, &diff);
  return diff;
}

CircuitBuilder::Bit CircuitBuilder::less_than(const Bits& a, const Bits& b) {
  check_widths(a, b, "less_than");
  return borrow_chain(a, b, nullptr);  // a < b iff a - b borrows out of the top bit
}

CircuitBuilder::Bits CircuitBuilder::mux(Bit sel, const Bits& a, const Bits& b) {
  check_widths(a, b, "mux");
  Bits out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) out[i] = xor_(b[i], and_(sel, xor_(a[i], b[i])));
  return out;
}

CircuitBuilder::Bits CircuitBuilder::shift_right(const Bits& a, std::uint32_t k) const {
  Bits out(a.size(), kZero);
  for (std::size_t i = 0; i + k < a.size(); ++i) out[i] = a[i + k];
  return out;
}

CircuitBuilder::Bits CircuitBuilder::shift_left(const Bits& a, std::uint32_t k) const {
  Bits out(a.size(), kZero);
  for (std::size_t i = k; i < a.size(); ++i) out[i] = a[i - k];
  return out;
}

void CircuitBuilder::output(const Bits& bits) {
  for (Bit b : bits) check_bit(b);
  output_widths_.push_back(static_cast<std::uint32_t>(bits.size()));
  outputs_.insert(outputs_.end(), bits.begin(), bits.end());
}

CircuitBuilder::Bit CircuitBuilder::materialise(Bit b) {
  if (!is_const(b)) return b;
  if (zero_wire_ == kZero) {
    if (input_widths_.empty() || next_wire_ == 0) {
      throw std::invalid_argument("output: a constant output needs at least one input wire");
    }
    zero_wire_ = fresh_wire();
    gates_.push_back(Gate{GateType::kXor, 0, 0, zero_wire_});
  }
  if (b == kZero) return zero_wire_;
  if (one_wire_ == kOne) {
    one_wire_ = fresh_wire();
    gates_.push_back(Gate{GateType::kInv, zero_wire_, zero_wire_, one_wire_});
  }
  return one_wire_;
}

Circuit CircuitBuilder::build() {
  std::vector<std::uint32_t> outs(outputs_.size());
  for (std::size_t k = 0; k < outs.size(); ++k) outs[k] = materialise(outputs_[k]);
  return Circuit(next_wire_, input_widths_, output_widths_, gates_, std::move(outs));
}

Circuit relu_circuit(std::uint32_t l_in, std::uint32_t l_out, std::uint32_t shift) {
  if (l_in < 2 || l_in > 64) throw std::invalid_argument("l_in must be in [2, 64]");
  if (l_out < 1 || l_out > 64) throw std::invalid_argument("l_out must be in [1, 64]");
  if (shift >= l_in - 1) throw std::invalid_argument("shift must be below l_in - 1");
  CircuitBuilder cb;
  const auto xs = cb.input(l_in);
  const auto xc = cb.input(l_in);
  const auto r = cb.input(l_out);
  const auto x = cb.add(xs, xc);
  const auto sign = x[l_in - 1];
  // Bits shift .. l_in-2 of x, zeroed when x < 0: x_k & ~sign = x_k ^ (x_k & sign).
  // The sign bit and everything above it are zero when x >= 0 (constants: no gates).
  CircuitBuilder::Bits v(l_out, CircuitBuilder::kZero);
  for (std::uint32_t k = 0; k < l_out && k + shift < l_in - 1; ++k) {
    v[k] = cb.xor_(x[k + shift], cb.and_(x[k + shift], sign));
  }
  cb.output(cb.sub(v, r));
  return cb.build();
}

Circuit truncate_circuit(std::uint32_t l_in, std::uint32_t l_out, std::uint32_t shift) {
  if (l_in < 2 || l_in > 64) throw std::invalid_argument("l_in must be in [2, 64]");
  if (l_out < 1 || l_out > 64) throw std::invalid_argument("l_out must be in [1, 64]");
  if (shift >= l_in) throw std::invalid_argument("shift must be below l_in");
  CircuitBuilder cb;
  const auto xs = cb.input(l_in);
  const auto xc = cb.input(l_in);
  const auto r = cb.input(l_out);
  const auto x = cb.add(xs, xc);
  // Arithmetic shift: bit k of the result is bit k + shift of x, or the sign
  // bit past the top (sign extension): wiring only.
  CircuitBuilder::Bits v(l_out);
  for (std::uint32_t k = 0; k < l_out; ++k) v[k] = x[std::min(k + shift, l_in - 1)];
  cb.output(cb.sub(v, r));
  return cb.build();
}

std::uint32_t argmax_index_bits(std::uint32_t classes) {
  std::uint32_t bits = 1;
  while ((std::uint64_t{1} << bits) < classes) ++bits;
  return bits;
}

Circuit argmax_circuit(std::uint32_t classes, std::uint32_t l) {
  if (classes < 1 || classes > 65536) throw std::invalid_argument("classes must be in [1, 65536]");
  if (l < 2 || l > 64) throw std::invalid_argument("l must be in [2, 64]");
  const std::uint32_t ib = argmax_index_bits(classes);
  CircuitBuilder cb;
  const auto xs = cb.input(classes * l);
  const auto xc = cb.input(classes * l);
  // Signed order = unsigned order with the sign bit flipped (a free NOT).
  auto value = [&](std::uint32_t j) {
    const CircuitBuilder::Bits a(xs.begin() + j * l, xs.begin() + (j + 1) * l);
    const CircuitBuilder::Bits b(xc.begin() + j * l, xc.begin() + (j + 1) * l);
    auto v = cb.add(a, b);
    v[l - 1] = cb.not_(v[l - 1]);
    return v;
  };
  auto best = value(0);
  CircuitBuilder::Bits index(ib, CircuitBuilder::kZero);
  for (std::uint32_t j = 1; j < classes; ++j) {
    const auto v = value(j);
    const auto greater = cb.less_than(best, v);  // strict: a tie keeps the lower index
    if (j + 1 < classes) best = cb.mux(greater, v, best);  // the last value is never compared again
    CircuitBuilder::Bits jb(ib);
    for (std::uint32_t k = 0; k < ib; ++k) jb[k] = ((j >> k) & 1U) != 0 ? CircuitBuilder::kOne : CircuitBuilder::kZero;
    index = cb.mux(greater, jb, index);
  }
  cb.output(index);
  return cb.build();
}

}  // namespace pie
