#include "gc/argmax.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace pie {

namespace {

constexpr std::uint32_t kFrameArgmaxDecode = 0x47430004;  // 'GC' 4: output decoding bits
constexpr std::uint32_t kFrameArgmaxLabels = 0x47430005;  // 'GC' 5: labels of the server's shares

void check_shares(const std::uint64_t* v, std::size_t n, std::uint32_t classes, std::uint32_t l, const char* what) {
  if (n != classes) {
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(n) + " values, the output has " +
                                std::to_string(classes) + " classes");
  }
  const std::uint64_t mask = l >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << l) - 1;
  for (std::size_t i = 0; i < n; ++i) {
    if ((v[i] & ~mask) != 0) throw std::invalid_argument(std::string(what) + ": value exceeds 2^" + std::to_string(l));
  }
}

}  // namespace

ArgmaxServer::ArgmaxServer(Channel& ch, std::uint32_t classes, std::uint32_t l, GcOptions opt)
    : ch_(ch), classes_(classes), l_(l), circuit_(argmax_circuit(classes, l)), session_(ch, opt) {}

void ArgmaxServer::offline() {
  if (state_ != State::kReady) throw std::invalid_argument("argmax: offline() runs once");
  state_ = State::kDone;  // until it completes: a failed offline phase is not resumed
  const std::size_t width = static_cast<std::size_t>(classes_) * l_;
  std::vector<Block> q(width);
  session_.ot().send_cot(q.data(), q.size());
  xs_zero_.resize(width);
  session_.prg().random_blocks(xs_zero_.data(), xs_zero_.size());
  const InputView zero{InputPart{xs_zero_.data(), width, width}, InputPart{q.data(), width, width}};
  std::vector<std::uint8_t> colours(circuit_.num_output_bits());
  session_.garble(circuit_, 1, zero, OutputSink{nullptr, colours.data()});
  const auto packed = pack_bits(colours.data(), colours.size());
  ch_.send_frame(kFrameArgmaxDecode, packed.data(), packed.size());
  state_ = State::kOffline;
}

void ArgmaxServer::online(const std::uint64_t* xs, std::size_t n) {
  if (state_ != State::kOffline) throw std::invalid_argument("argmax: online() needs offline() and runs once");
  check_shares(xs, n, classes_, l_, "server_share");
  state_ = State::kDone;
  std::vector<Block> labels(xs_zero_.size());
  const Block offset[2] = {Block{}, session_.delta()};
  for (std::size_t j = 0; j < classes_; ++j) {
    for (std::size_t w = 0; w < l_; ++w) labels[j * l_ + w] = xs_zero_[j * l_ + w] ^ offset[(xs[j] >> w) & 1U];
  }
  ch_.send_frame(kFrameArgmaxLabels, labels.data(), labels.size() * sizeof(Block));
  xs_zero_ = {};
}

ArgmaxClient::ArgmaxClient(Channel& ch, std::uint32_t classes, std::uint32_t l, GcOptions opt)
    : ch_(ch), classes_(classes), l_(l), circuit_(argmax_circuit(classes, l)), session_(ch, opt) {}

void ArgmaxClient::offline(const std::uint64_t* xc, std::size_t n) {
  if (state_ != State::kReady) throw std::invalid_argument("argmax: offline() runs once");
  check_shares(xc, n, classes_, l_, "client_share");
  state_ = State::kDone;
  const std::size_t width = static_cast<std::size_t>(classes_) * l_;
  std::vector<std::uint8_t> choices(width);
  for (std::size_t j = 0; j < classes_; ++j) {
    for (std::size_t w = 0; w < l_; ++w) choices[j * l_ + w] = (xc[j] >> w) & 1U;
  }
  own_labels_.resize(width);
  session_.ot().recv_cot(choices.data(), own_labels_.data(), width);
  tables_ = session_.receive(circuit_, 1);
  const std::size_t outs = circuit_.num_output_bits();
  const auto packed = ch_.recv_frame(kFrameArgmaxDecode, (outs + 7) / 8);
  if (packed.size() != (outs + 7) / 8) throw ProtocolError("argmax: malformed decoding bits");
  decode_ = unpack_bits(packed.data(), outs);
  state_ = State::kOffline;
}

std::uint32_t ArgmaxClient::online() {
  if (state_ != State::kOffline) throw std::invalid_argument("argmax: online() needs offline() and runs once");
  state_ = State::kDone;
  const std::size_t width = static_cast<std::size_t>(classes_) * l_;
  std::vector<Block> labels(width);
  const auto raw = ch_.recv_frame(kFrameArgmaxLabels, width * sizeof(Block));
  if (raw.size() != width * sizeof(Block)) throw ProtocolError("argmax: malformed server labels");
  std::memcpy(labels.data(), raw.data(), raw.size());
  const InputView in{InputPart{labels.data(), width, width}, InputPart{own_labels_.data(), width, width}};
  std::vector<std::uint8_t> colours(circuit_.num_output_bits());
  session_.evaluate(circuit_, tables_, in, OutputSink{nullptr, colours.data()});
  std::uint32_t index = 0;
  for (std::size_t k = 0; k < colours.size(); ++k) index |= static_cast<std::uint32_t>(colours[k] ^ decode_[k]) << k;
  tables_ = {};
  own_labels_ = {};
  if (index >= classes_) throw ProtocolError("argmax: the decoded index is out of range");
  return index;
}

}  // namespace pie
