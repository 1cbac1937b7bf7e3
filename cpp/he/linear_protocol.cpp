#include "he/linear_protocol.h"

#include <chrono>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "he/linear_kernel.h"
#include "he/parallel.h"
#include "io/memory_channel.h"

namespace pie::he {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void put_u64(std::vector<std::uint8_t>& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint64_t get_u64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

constexpr std::size_t kParmsIdBytes = sizeof(seal::parms_id_type);

// Bytes of one reply on the wire: c1 in full, c0 at the slots, each residue
// as a little-endian 64-bit word.
std::size_t reply_bytes(const HeContext& ctx, std::size_t slots) {
  return ctx.final_limbs() * (ctx.poly_degree() + slots) * 8;
}

std::uint64_t step_revealed(const ConvLayout& layout) {
  std::uint64_t step = 0;
  for (std::size_t r = 0; r < layout.num_outputs(); ++r) step += layout.slots(r).size();
  return step;
}

void check_budget(const HeContext& ctx, std::uint64_t revealed, const ConvLayout& layout) {
  if (revealed + step_revealed(layout) > ctx.params().max_revealed) {
    throw std::runtime_error("session: this step would reveal more than max_revealed coefficients under one key; "
                             "start a new session (fresh keys)");
  }
}

}  // namespace

LinearClient::LinearClient(std::shared_ptr<const HeContext> ctx, Channel& channel)
    : ctx_(std::move(ctx)),
      channel_(channel),
      keygen_(ctx_->seal()),
      encryptor_(ctx_->seal(), keygen_.secret_key()),
      decryptor_(ctx_->seal(), keygen_.secret_key()) {
  const auto pk = keygen_.create_public_key();  // seeded: the uniform half is a seed
  std::vector<std::uint8_t> msg(kParmsIdBytes);
  const auto id = ctx_->seal().key_parms_id();
  std::memcpy(msg.data(), id.data(), kParmsIdBytes);
  const std::size_t start = msg.size();
  msg.resize(start + static_cast<std::size_t>(pk.save_size(seal::compr_mode_type::none)));
  const auto n = pk.save(reinterpret_cast<seal::seal_byte*>(msg.data() + start), msg.size() - start,
                         seal::compr_mode_type::none);
  msg.resize(start + static_cast<std::size_t>(n));
  channel_.send_frame(kHeHello, msg.data(), msg.size());
}

std::vector<std::uint64_t> LinearClient::run(const ConvShape& shape, const std::uint64_t* x) {
  send(shape, x);
  return receive();
}

void LinearClient::send(const ConvShape& shape, const std::uint64_t* x) {
  const ConvLayout layout(shape, ctx_->poly_degree());
  const std::uint64_t t = ctx_->plain_modulus();
  for (std::size_t i = 0; i < shape.input_size(); ++i) {
    if (x[i] >= t) throw std::invalid_argument("client_share: every value must be below 2^ring_bits");
  }
  check_budget(*ctx_, revealed_, layout);

  const auto start = Clock::now();
  const auto cts = encrypt_inputs(*ctx_, encryptor_, layout, x);
  std::vector<std::uint8_t> msg;
  put_u64(msg, cts.size());
  for (const auto& ct : cts) {
    put_u64(msg, ct.size());
    msg.insert(msg.end(), ct.begin(), ct.end());
  }
  timings_.encrypt = seconds_since(start);
  channel_.send_frame(kHeInputs, msg.data(), msg.size());
  revealed_ += step_revealed(layout);
  pending_.push_back(shape);
}

std::vector<std::uint64_t> LinearClient::receive() {
  if (pending_.empty()) throw std::logic_error("he: no step is waiting for its replies");
  const ConvShape shape = pending_.front();
  pending_.pop_front();
  const ConvLayout layout(shape, ctx_->poly_degree());
  std::size_t expected = 0;
  for (std::size_t r = 0; r < layout.num_outputs(); ++r) expected += reply_bytes(*ctx_, layout.slots(r).size());
  const auto reply = channel_.recv_frame(kHeReplies, expected);
  if (reply.size() != expected) throw ProtocolError("he: reply frame has the wrong length");

  const auto start = Clock::now();
  const std::size_t n = ctx_->poly_degree(), limbs = ctx_->final_limbs();
  std::vector<std::uint64_t> out(shape.output_size(), 0);
  const auto& moduli = ctx_->seal().get_context_data(ctx_->final_parms_id())->parms().coeff_modulus();
  std::vector<std::size_t> offsets(layout.num_outputs() + 1, 0);
  for (std::size_t r = 0; r < layout.num_outputs(); ++r) {
    offsets[r + 1] = offsets[r] + reply_bytes(*ctx_, layout.slots(r).size());
  }
  parallel_for(layout.num_outputs(), [&](std::size_t r) {
    const std::uint8_t* p = reply.data() + offsets[r];
    seal::Ciphertext ct;
    ct.resize(ctx_->seal(), ctx_->final_parms_id(), 2);
    ct.is_ntt_form() = false;
    std::fill(ct.data(0), ct.data(0) + limbs * n, 0);
    for (std::size_t j = 0; j < limbs; ++j) {
      for (std::size_t k = 0; k < n; ++k, p += 8) {
        const std::uint64_t v = get_u64(p);
        if (v >= moduli[j].value()) throw ProtocolError("he: reply residue out of range");
        ct.data(1)[j * n + k] = v;
      }
    }
    const auto& slots = layout.slots(r);
    for (std::size_t j = 0; j < limbs; ++j) {
      for (const auto& s : slots) {
        const std::uint64_t v = get_u64(p);
        p += 8;
        if (v >= moduli[j].value()) throw ProtocolError("he: reply residue out of range");
        ct.data(0)[j * n + s.coeff] = v;
      }
    }
    decrypt_reply(*ctx_, decryptor_, ct, slots, out.data());
  });
  timings_.decrypt = seconds_since(start);
  return out;
}

LinearServer::LinearServer(std::shared_ptr<const HeContext> ctx, Channel& channel)
    : ctx_(std::move(ctx)), channel_(channel) {
  const auto msg = channel_.recv_frame(kHeHello, kParmsIdBytes + (std::size_t{1} << 22));
  const auto id = ctx_->seal().key_parms_id();
  if (msg.size() < kParmsIdBytes || std::memcmp(msg.data(), id.data(), kParmsIdBytes) != 0) {
    throw ProtocolError("he: the client uses other HE parameters");
  }
  try {
    pk_.load(ctx_->seal(), reinterpret_cast<const seal::seal_byte*>(msg.data() + kParmsIdBytes),
             msg.size() - kParmsIdBytes);
  } catch (const std::exception& e) {
    throw ProtocolError(std::string("he: malformed public key (") + e.what() + ")");
  }
  if (pk_.parms_id() != id) throw ProtocolError("he: public key at the wrong level");
}

std::vector<std::uint64_t> LinearServer::run(const ConvShape& shape, const std::int64_t* weights) {
  const ConvLayout layout(shape, ctx_->poly_degree());
  // The weights are checked before anything is received.
  const LinearServerKernel kernel(ctx_, layout, weights);
  return respond(layout, kernel, receive(shape).frame);
}

LinearInputs LinearServer::receive(const ConvShape& shape) {
  const ConvLayout layout(shape, ctx_->poly_degree());
  check_budget(*ctx_, revealed_, layout);
  // A seeded ciphertext is c0 plus a seed: bounded by one full ciphertext.
  const std::size_t ct_max = 2 * ctx_->top_limbs() * ctx_->poly_degree() * 8 + 4096;
  return LinearInputs{shape, channel_.recv_frame(kHeInputs, 8 + layout.num_inputs() * (8 + ct_max))};
}

std::vector<std::uint64_t> LinearServer::reply(const LinearInputs& inputs, const std::int64_t* weights) {
  const ConvLayout layout(inputs.shape, ctx_->poly_degree());
  const LinearServerKernel kernel(ctx_, layout, weights);
  return respond(layout, kernel, inputs.frame);
}

std::vector<std::uint64_t> LinearServer::respond(const ConvLayout& layout, const LinearServerKernel& kernel,
                                                 const std::vector<std::uint8_t>& msg) {
  const ConvShape& shape = layout.shape();
  check_budget(*ctx_, revealed_, layout);
  auto start = Clock::now();
  if (msg.size() < 8 || get_u64(msg.data()) != layout.num_inputs()) {
    throw ProtocolError("he: wrong number of input ciphertexts");
  }
  std::vector<std::pair<std::size_t, std::size_t>> spans;  // (offset, length) of each ciphertext
  std::size_t off = 8;
  for (std::size_t i = 0; i < layout.num_inputs(); ++i) {
    if (msg.size() - off < 8) throw ProtocolError("he: truncated input frame");
    const std::uint64_t len = get_u64(msg.data() + off);
    off += 8;
    if (len > msg.size() - off) throw ProtocolError("he: truncated input frame");
    spans.emplace_back(off, static_cast<std::size_t>(len));
    off += static_cast<std::size_t>(len);
  }
  if (off != msg.size()) throw ProtocolError("he: trailing bytes in the input frame");
  std::vector<seal::Ciphertext> inputs(spans.size());
  try {
    parallel_for(spans.size(), [&](std::size_t i) {
      inputs[i] = load_input(*ctx_, msg.data() + spans[i].first, spans[i].second);
    });
  } catch (const std::invalid_argument& e) {
    throw ProtocolError(std::string("he: ") + e.what());
  }

  auto replies = make_replies(*ctx_, kernel, kernel.products(inputs), pk_);
  revealed_ += step_revealed(layout);

  // Coefficient dropping: c1 in full, c0 only at the output slots (every
  // other c0 coefficient is withheld).
  const std::size_t n = ctx_->poly_degree(), limbs = ctx_->final_limbs();
  std::vector<std::uint8_t> out;
  std::vector<std::uint64_t> mask(shape.output_size(), 0);
  for (std::size_t r = 0; r < replies.size(); ++r) {
    const auto& ct = replies[r].ct;
    const auto& slots = layout.slots(r);
    out.reserve(out.size() + reply_bytes(*ctx_, slots.size()));
    for (std::size_t j = 0; j < limbs; ++j) {
      for (std::size_t k = 0; k < n; ++k) put_u64(out, ct.data(1)[j * n + k]);
    }
    for (std::size_t j = 0; j < limbs; ++j) {
      for (const auto& s : slots) put_u64(out, ct.data(0)[j * n + s.coeff]);
    }
    for (const auto& s : slots) mask[s.index] = replies[r].mask[s.coeff];
  }
  timings_.compute = seconds_since(start);
  channel_.send_frame(kHeReplies, out.data(), out.size());
  return mask;
}

SecureLinearResult run_secure_linear(const HeParameters& params, const ConvShape& shape, const std::uint64_t* x,
                                     const std::int64_t* weights) {
  const auto ctx = make_context(params);
  // Validate everything checkable up front, so neither thread fails alone.
  const ConvLayout layout(shape, ctx->poly_degree());
  { const LinearServerKernel check(ctx, layout, weights); }
  for (std::size_t i = 0; i < shape.input_size(); ++i) {
    if (x[i] >= ctx->plain_modulus()) {
      throw std::invalid_argument("client_share: every value must be below 2^ring_bits");
    }
  }
  auto [client_end, server_end] = MemoryChannel::make_pair();
  SecureLinearResult result;
  std::exception_ptr server_error;
  std::thread server([&, ch = server_end.get()] {
    try {
      LinearServer srv(ctx, *ch);
      result.server_mask = srv.run(shape, weights);
      result.server = srv.timings();
    } catch (...) {
      server_error = std::current_exception();
      ch->close();
    }
  });
  std::exception_ptr client_error;
  try {
    LinearClient cli(ctx, *client_end);
    result.client_out = cli.run(shape, x);
    result.client = cli.timings();
  } catch (...) {
    client_error = std::current_exception();
    client_end->close();
  }
  server.join();
  if (server_error) std::rethrow_exception(server_error);
  if (client_error) std::rethrow_exception(client_error);
  result.bytes_client_to_server = client_end->stats().bytes_sent;
  result.bytes_server_to_client = server_end->stats().bytes_sent;
  result.messages = client_end->stats().flushes + server_end->stats().flushes;
  result.num_inputs = layout.num_inputs();
  result.num_outputs = layout.num_outputs();
  return result;
}

}  // namespace pie::he
