#include "gc/relu.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pie {

namespace {

constexpr std::uint32_t kFrameReluOffline = 0x47430002;  // 'GC' 2: batch id, n
constexpr std::uint32_t kFrameReluOnline = 0x47430003;   // 'GC' 3: batch id
// Server labels per send: 1 MiB, which bypasses the channel's buffer.
constexpr std::size_t kLabelPiece = std::size_t{1} << 16;

std::uint64_t ring_mask(std::uint32_t bits) { return bits >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1; }

void check_ring(const std::uint64_t* v, std::size_t n, std::uint32_t bits, const char* field) {
  const std::uint64_t mask = ring_mask(bits);
  for (std::size_t i = 0; i < n; ++i) {
    if ((v[i] & ~mask) != 0) {
      throw std::invalid_argument(std::string(field) + "[" + std::to_string(i) + "]: value exceeds 2^" +
                                  std::to_string(bits));
    }
  }
}

void send_ids(Channel& ch, std::uint32_t type, std::uint64_t a, std::uint64_t b) {
  std::uint8_t buf[16];
  for (int i = 0; i < 8; ++i) {
    buf[i] = static_cast<std::uint8_t>(a >> (8 * i));
    buf[8 + i] = static_cast<std::uint8_t>(b >> (8 * i));
  }
  ch.send_frame(type, buf, sizeof buf);
}

std::pair<std::uint64_t, std::uint64_t> recv_ids(Channel& ch, std::uint32_t type) {
  const auto m = ch.recv_frame(type, 16);
  if (m.size() != 16) throw ProtocolError("ReLU: malformed control message");
  std::uint64_t a = 0;
  std::uint64_t b = 0;
  for (int i = 0; i < 8; ++i) {
    a |= static_cast<std::uint64_t>(m[i]) << (8 * i);
    b |= static_cast<std::uint64_t>(m[8 + i]) << (8 * i);
  }
  return {a, b};
}

}  // namespace

Circuit share_circuit(const ReluShape& shape) {
  return shape.truncate ? truncate_circuit(shape.l_in, shape.l_out, shape.shift)
                        : relu_circuit(shape.l_in, shape.l_out, shape.shift);
}

ReluServer::ReluServer(Channel& ch, ReluShape shape, GcOptions opt)
    : ch_(ch), shape_(shape), circuit_(share_circuit(shape)), session_(ch, opt) {}

ReluServerMaterial ReluServer::offline(std::size_t n) {
  ReluServerMaterial m = announce(n);
  receive_ot(m);
  garble(m);
  return m;
}

ReluServerMaterial ReluServer::announce(std::size_t n) {
  ReluServerMaterial m;
  m.owner_ = this;
  m.batch_ = batches_++;
  m.n_ = n;
  consumed_.push_back(false);
  send_ids(ch_, kFrameReluOffline, m.batch_, n);
  return m;
}

void ReluServer::receive_ot(ReluServerMaterial& m) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  if (m.ot_done_) throw std::invalid_argument("material: the OT of this batch already ran");
  // The client's wires (x_c, then r, per ReLU) get their labels by correlated OT.
  m.q_.resize(m.n_ * (shape_.l_in + shape_.l_out));
  session_.ot().send_cot(m.q_.data(), m.q_.size());
  m.ot_done_ = true;
}

void ReluServer::garble(ReluServerMaterial& m) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  if (!m.ot_done_ || m.garbled_) throw std::invalid_argument("material: needs its OT first, and garbles once");
  const std::size_t n = m.n_;
  const std::size_t l_in = shape_.l_in;
  const std::size_t l_out = shape_.l_out;
  const std::size_t client_bits = l_in + l_out;
  m.xs_zero_.resize(n * l_in);
  session_.prg().random_blocks(m.xs_zero_.data(), m.xs_zero_.size());
  // Circuit inputs: x_s (fresh labels), then x_c and r (the OT's 0-labels).
  const InputView zero{InputPart{m.xs_zero_.data(), l_in, l_in}, InputPart{m.q_.data(), client_bits, client_bits}};
  std::vector<std::uint8_t> colours(n * l_out);
  session_.garble(circuit_, n, zero, OutputSink{nullptr, colours.data()});
  m.out_colour_ = pack_bits(colours.data(), colours.size());  // XORed with the packed reply online
  m.q_ = {};
  m.garbled_ = true;
}

std::vector<std::uint64_t> ReluServer::online(ReluServerMaterial& m, const std::uint64_t* xs, std::size_t n) {
  send_labels(m, xs, n);
  return finish(m);
}

void ReluServer::send_labels(ReluServerMaterial& m, const std::uint64_t* xs, std::size_t n) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  if (m.consumed_ || consumed_[m.batch_]) throw std::invalid_argument("material: offline batch already consumed");
  if (!m.garbled_) throw std::invalid_argument("material: the batch is not garbled yet");
  if (n != m.n_) throw std::invalid_argument("server_share: length differs from the offline batch");
  check_ring(xs, n, shape_.l_in, "server_share");
  m.consumed_ = true;
  consumed_[m.batch_] = true;
  const std::size_t l_in = shape_.l_in;
  send_ids(ch_, kFrameReluOnline, m.batch_, n);
  // Labels go out in pieces of one reused buffer: the peer receives (and
  // hashes) one piece while the next is selected, and no batch-sized buffer
  // is allocated on the online critical path.
  label_buf_.resize(std::min(n * l_in, kLabelPiece));
  const Block offset[2] = {Block{}, session_.delta()};
  std::size_t fill = 0;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t w = 0; w < l_in; ++w) {
      label_buf_[fill++] = m.xs_zero_[i * l_in + w] ^ offset[(xs[i] >> w) & 1U];
      if (fill == label_buf_.size()) {
        ch_.send(label_buf_.data(), fill * sizeof(Block));
        fill = 0;
      }
    }
  }
  ch_.send(label_buf_.data(), fill * sizeof(Block));
  m.labels_sent_ = true;
  m.xs_zero_.clear();
  m.xs_zero_.shrink_to_fit();
}

std::vector<std::uint64_t> ReluServer::finish(ReluServerMaterial& m) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  if (!m.labels_sent_) throw std::invalid_argument("material: labels not sent, or batch already finished");
  m.labels_sent_ = false;
  const std::size_t n = m.n_;
  const std::size_t l_out = shape_.l_out;
  // The reply XOR the packed colours of the 0-labels is the packed output;
  // each l_out-bit field is read with two little-endian 64-bit loads (x86-64,
  // as the AES-NI code requires). The buffer is reused (16 spare bytes for the
  // loads): no batch-sized allocation, nor its page faults, on the online path.
  const std::size_t bytes = (n * l_out + 7) / 8;
  reply_scratch_.resize(bytes + 16);
  std::fill(reply_scratch_.begin() + static_cast<std::ptrdiff_t>(bytes), reply_scratch_.end(), std::uint8_t{0});
  ch_.recv(reply_scratch_.data(), bytes);
  for (std::size_t b = 0; b < bytes; ++b) reply_scratch_[b] ^= m.out_colour_[b];
  const std::uint8_t* bits = reply_scratch_.data();
  const std::uint64_t keep = ring_mask(shape_.l_out);
  std::vector<std::uint64_t> ys(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t at = i * l_out;
    std::uint64_t lo = 0;
    std::uint64_t hi = 0;
    std::memcpy(&lo, bits + at / 8, 8);
    std::memcpy(&hi, bits + at / 8 + 8, 8);
    const unsigned s = at % 8;
    ys[i] = (s == 0 ? lo : (lo >> s) | (hi << (64 - s))) & keep;
  }
  m.out_colour_.clear();
  m.out_colour_.shrink_to_fit();
  return ys;
}

ReluClient::ReluClient(Channel& ch, ReluShape shape, GcOptions opt)
    : ch_(ch), shape_(shape), circuit_(share_circuit(shape)), session_(ch, opt) {}

ReluClientMaterial ReluClient::offline(const std::uint64_t* xc, const std::uint64_t* r, std::size_t n) {
  // Inputs are checked before anything is received.
  check_ring(xc, n, shape_.l_in, "client_share");
  check_ring(r, n, shape_.l_out, "client_mask");
  ReluClientMaterial m = receive_header(n);
  request(m, xc, r);
  receive_tables(m);
  return m;
}

ReluClientMaterial ReluClient::receive_header(std::size_t n) {
  const auto ids = recv_ids(ch_, kFrameReluOffline);
  if (ids.first != batches_ || ids.second != n) {
    throw ProtocolError("ReLU offline: the server's batch " + std::to_string(ids.first) + " of " +
                        std::to_string(ids.second) + " does not match batch " + std::to_string(batches_) +
                        " of " + std::to_string(n));
  }
  ReluClientMaterial m;
  m.owner_ = this;
  m.batch_ = batches_++;
  m.n_ = n;
  consumed_.push_back(false);
  grow_scratch(n);
  return m;
}

void ReluClient::grow_scratch(std::size_t n) {
  // Sized, and its pages touched, when a batch's material arrives offline: a
  // first touch costs a page fault per 4 KiB (about 2 us each in a VM), ~20 ms
  // on the online path for a batch of 65,536 wide elements.
  if (labels_scratch_.size() < n * shape_.l_in) labels_scratch_.resize(n * shape_.l_in);
  if (colours_scratch_.size() < n * shape_.l_out) colours_scratch_.resize(n * shape_.l_out);
}

void ReluClient::request(ReluClientMaterial& m, const std::uint64_t* xc, const std::uint64_t* r) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  if (m.requested_) throw std::invalid_argument("material: the OT of this batch already ran");
  const std::size_t n = m.n_;
  check_ring(xc, n, shape_.l_in, "client_share");
  check_ring(r, n, shape_.l_out, "client_mask");
  const std::size_t l_in = shape_.l_in;
  const std::size_t l_out = shape_.l_out;
  const std::size_t client_bits = l_in + l_out;
  std::vector<std::uint8_t> choices(n * client_bits);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t w = 0; w < l_in; ++w) choices[i * client_bits + w] = (xc[i] >> w) & 1U;
    for (std::size_t w = 0; w < l_out; ++w) choices[i * client_bits + l_in + w] = (r[i] >> w) & 1U;
  }
  m.own_labels_.resize(choices.size());
  session_.ot().recv_cot(choices.data(), m.own_labels_.data(), choices.size());
  m.requested_ = true;
}

void ReluClient::receive_tables(ReluClientMaterial& m) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  if (!m.requested_ || m.has_tables_ || m.consumed_) {
    throw std::invalid_argument("material: needs its OT first, and receives its tables once");
  }
  m.tables_ = session_.receive(circuit_, m.n_);
  m.has_tables_ = true;
}

void ReluClient::online(ReluClientMaterial& m) {
  evaluate(m);
  reply(m);
  release(m);
}

void ReluClient::evaluate(ReluClientMaterial& m) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  if (m.consumed_ || consumed_[m.batch_]) throw std::invalid_argument("material: offline batch already consumed");
  if (!m.has_tables_) throw std::invalid_argument("material: the batch's tables were not received");
  m.consumed_ = true;
  consumed_[m.batch_] = true;
  const std::size_t n = m.n_;
  const auto ids = recv_ids(ch_, kFrameReluOnline);
  if (ids.first != m.batch_ || ids.second != n) {
    throw ProtocolError("ReLU online: the server uses batch " + std::to_string(ids.first) +
                        ", the client's material is batch " + std::to_string(m.batch_));
  }
  const std::size_t l_in = shape_.l_in;
  const std::size_t client_bits = l_in + shape_.l_out;
  settle_labels();  // an earlier batch of this session, not yet replied to
  // Scratch reused across batches: fresh batch-sized buffers would cost page
  // faults on the online critical path.
  grow_scratch(n);
  // The labels are checked after the reply is sent (reply()), while the server
  // decodes it: off the round's critical path. The scratch stays untouched until then.
  ch_.recv_deferred_check(labels_scratch_.data(), n * l_in * sizeof(Block));
  labels_unchecked_ = true;
  try {
    // Circuit inputs: x_s (the server's labels), then x_c and r (from OT), gathered per block.
    const InputView in{InputPart{labels_scratch_.data(), l_in, l_in},
                       InputPart{m.own_labels_.data(), client_bits, client_bits}};
    session_.evaluate(circuit_, m.tables_, in, OutputSink{nullptr, colours_scratch_.data()});
    m.reply_ = pack_bits(colours_scratch_.data(), n * shape_.l_out);
  } catch (...) {
    settle_labels();
    throw;
  }
  m.evaluated_ = true;
}

void ReluClient::reply(ReluClientMaterial& m) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  if (!m.evaluated_) throw std::invalid_argument("material: not evaluated, or reply already sent");
  m.evaluated_ = false;
  ch_.send(m.reply_.data(), m.reply_.size());
  ch_.flush();
  settle_labels();
  m.reply_.clear();
  m.reply_.shrink_to_fit();
}

void ReluClient::settle_labels() {
  if (!labels_unchecked_) return;
  labels_unchecked_ = false;
  ch_.settle_check();
}

ReluClient::~ReluClient() {
  try {
    settle_labels();  // the channel outlives this session (the bindings keep it alive)
  } catch (...) {
    // A check that cannot be computed any more fails the transcript comparison later.
  }
}

void ReluClient::release(ReluClientMaterial& m) {
  if (m.owner_ != this) throw std::invalid_argument("material: belongs to another session");
  m.consumed_ = true;
  consumed_[m.batch_] = true;
  m.evaluated_ = false;
  m.reply_ = {};
  m.tables_.tables = {};
  m.own_labels_ = {};
}

}  // namespace pie
