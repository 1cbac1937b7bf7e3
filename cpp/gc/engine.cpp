#include "gc/engine.h"

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

#ifdef PIE_HAVE_OPENMP
#include <omp.h>
#endif

#include "io/memory_channel.h"

namespace pie {

namespace {

constexpr std::uint32_t kFrameBatchHeader = 0x47430001;  // 'GC' 1: tweak prefix, base, n, AND gates, block
constexpr std::size_t kBatchHeaderBytes = 40;
// Half a MiB of labels per block stays in L2, which measured ~6% faster
// evaluation than 2 MiB (bench/bench_gc.py).
constexpr std::size_t kLabelBudgetBytes = std::size_t{512} << 10;
constexpr std::size_t kMaxBlock = 256;

int thread_id() {
#ifdef PIE_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

std::size_t block_size(const Circuit& c, const GcOptions& opt) {
  return opt.block != 0 ? opt.block : default_block_size(c);
}

void put_u64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint64_t get_u64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

std::size_t default_block_size(const Circuit& c) {
  const std::size_t per_instance = std::max<std::size_t>(c.num_wires(), 1) * sizeof(Block);
  return std::clamp<std::size_t>(kLabelBudgetBytes / per_instance, 8, kMaxBlock);
}

std::vector<GcWorkspace> make_workspaces(const Circuit& c, std::size_t block, int threads) {
  std::vector<GcWorkspace> ws(static_cast<std::size_t>(threads));
  for (auto& w : ws) {
    w.labels.resize(static_cast<std::size_t>(c.num_wires()) * block);
    w.x.resize(4 * block);
    w.tweaks.resize(4 * block);
    w.h.resize(4 * block);
  }
  return ws;
}

namespace {

// Runs body(block index, first instance, instance count, workspace) for every
// block of r, one block per worker at a time.
template <typename Body>
void for_each_block(const BlockRange& r, std::vector<GcWorkspace>& ws, const Body& body) {
  const auto nb = static_cast<long long>(r.count);
  const int threads = static_cast<int>(ws.size());
  (void)threads;
#ifdef PIE_HAVE_OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(threads)
#endif
  for (long long k = 0; k < nb; ++k) {
    const std::size_t b = r.first_block + static_cast<std::size_t>(k);
    const std::size_t first = b * r.block;
    body(b, first, std::min(r.block, r.n - first), ws[static_cast<std::size_t>(thread_id())]);
  }
}

}  // namespace

void garble_blocks(const Circuit& c, const TccrHash& hash, const Block& delta, const BlockRange& r,
                   const InputView& inputs, Block* tables, const OutputSink& outputs,
                   std::vector<GcWorkspace>& ws) {
  const std::size_t A = c.num_and();
  const std::size_t outs = c.num_output_bits();
  const std::size_t table_origin = 2 * A * r.first_block * r.block;
  check_input_width(c, inputs);  // before the parallel loop: a throw inside it would terminate
  for_each_block(r, ws, [&](std::size_t, std::size_t first, std::size_t cnt, GcWorkspace& w) {
    garble_instances(c, hash, delta, r.tweak_prefix, r.tweak_base + 2 * A * first, cnt, inputs.from(first),
                     tables + (2 * A * first - table_origin), outputs.from(first, outs), w);
  });
}

void evaluate_blocks(const Circuit& c, const TccrHash& hash, const BlockRange& r, const InputView& inputs,
                     const Block* tables, const OutputSink& outputs, std::vector<GcWorkspace>& ws) {
  const std::size_t A = c.num_and();
  const std::size_t outs = c.num_output_bits();
  const std::size_t table_origin = 2 * A * r.first_block * r.block;
  check_input_width(c, inputs);  // before the parallel loop: a throw inside it would terminate
  for_each_block(r, ws, [&](std::size_t, std::size_t first, std::size_t cnt, GcWorkspace& w) {
    evaluate_instances(c, hash, r.tweak_prefix, r.tweak_base + 2 * A * first, cnt, inputs.from(first),
                       tables + (2 * A * first - table_origin), outputs.from(first, outs), w);
  });
}

int resolve_threads(int requested) {
  if (requested < 0) throw std::invalid_argument("threads must be >= 0");
#ifdef PIE_HAVE_OPENMP
  return requested == 0 ? omp_get_max_threads() : requested;
#else
  return 1;
#endif
}

std::vector<std::uint8_t> pack_bits(const std::uint8_t* bits, std::size_t n) {
  std::vector<std::uint8_t> out((n + 7) / 8, 0);
  for (std::size_t i = 0; i < n; ++i) out[i / 8] = static_cast<std::uint8_t>(out[i / 8] | ((bits[i] & 1U) << (i % 8)));
  return out;
}

std::vector<std::uint8_t> unpack_bits(const std::uint8_t* packed, std::size_t n) {
  std::vector<std::uint8_t> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = (packed[i / 8] >> (i % 8)) & 1U;
  return out;
}

// ------------------------------------------------------------------ garbler

GarblerSession::GarblerSession(Channel& ch, GcOptions opt)
    : ch_(ch), opt_(opt), delta_(random_delta()), ot_(ch, delta_), tweak_prefix_(random_tweak_prefix()) {
  opt_.threads = resolve_threads(opt.threads);
}

void GarblerSession::garble(const Circuit& c, std::size_t n, const InputView& input_zero,
                            const OutputSink& output_zero) {
  check_input_width(c, input_zero);  // before anything is sent
  const std::size_t A = c.num_and();
  const std::size_t B = block_size(c, opt_);
  const std::size_t nblocks = (n + B - 1) / B;
  const std::uint64_t base = tweaks_.reserve(2 * static_cast<std::uint64_t>(A) * n);

  std::uint8_t hdr[kBatchHeaderBytes];
  put_u64(hdr, tweak_prefix_);
  put_u64(hdr + 8, base);
  put_u64(hdr + 16, n);
  put_u64(hdr + 24, A);
  put_u64(hdr + 32, B);
  ch_.send_frame(kFrameBatchHeader, hdr, sizeof hdr);

  const std::size_t wave = 2 * static_cast<std::size_t>(opt_.threads);
  auto ws = make_workspaces(c, std::min(B, std::max<std::size_t>(n, 1)), opt_.threads);
  std::vector<Block> buf(2 * A * std::min(n, wave * B));
  for (std::size_t w0 = 0; w0 < nblocks; w0 += wave) {
    const BlockRange r{tweak_prefix_, base, n, B, w0, std::min(wave, nblocks - w0)};
    garble_blocks(c, hash_, delta_, r, input_zero, buf.data(), output_zero, ws);
    const std::size_t wave_instances = std::min(n, (w0 + r.count) * B) - w0 * B;
    ch_.send(buf.data(), 2 * A * wave_instances * sizeof(Block));
  }
  ch_.flush();
}

// ---------------------------------------------------------------- evaluator

EvaluatorSession::EvaluatorSession(Channel& ch, GcOptions opt) : ch_(ch), opt_(opt), ot_(ch) {
  opt_.threads = resolve_threads(opt.threads);
}

GarbledBatch EvaluatorSession::receive_header(const Circuit& c, std::size_t n) {
  const auto hdr = ch_.recv_frame(kFrameBatchHeader, kBatchHeaderBytes);
  if (hdr.size() != kBatchHeaderBytes) throw ProtocolError("GC: malformed batch header");
  GarbledBatch b;
  b.tweak_prefix = get_u64(hdr.data());
  b.tweak_base = get_u64(hdr.data() + 8);
  b.n = get_u64(hdr.data() + 16);
  const std::uint64_t and_gates = get_u64(hdr.data() + 24);
  b.block = get_u64(hdr.data() + 32);
  if (b.n != n || and_gates != c.num_and()) {
    throw ProtocolError("GC: the garbler's batch (" + std::to_string(b.n) + " instances, " +
                        std::to_string(and_gates) + " AND gates) does not match the expected circuit");
  }
  if (b.block == 0 || b.block > (std::size_t{1} << 20)) throw ProtocolError("GC: invalid block size");
  if ((b.tweak_prefix & kTweakDomainOt) != 0) throw ProtocolError("GC: the garbler's tweak prefix is in the OT domain");
  if (tweak_prefix_ && *tweak_prefix_ != b.tweak_prefix) {
    throw ProtocolError("GC: the garbler changed the session's tweak prefix");
  }
  tweak_prefix_ = b.tweak_prefix;
  const std::uint64_t span = 2 * static_cast<std::uint64_t>(c.num_and()) * n;
  if (b.tweak_base < tweak_floor_ || span > UINT64_MAX - b.tweak_base) {
    throw ProtocolError("GC: the garbler reuses hash tweaks of an earlier batch");
  }
  tweak_floor_ = b.tweak_base + span;
  return b;
}

GarbledBatch EvaluatorSession::receive(const Circuit& c, std::size_t n) {
  GarbledBatch b = receive_header(c, n);
  b.tables.resize(table_blocks(c, n));
  ch_.recv(b.tables.data(), b.tables.size() * sizeof(Block));
  return b;
}

void EvaluatorSession::evaluate(const Circuit& c, const GarbledBatch& batch, const InputView& inputs,
                                const OutputSink& outputs) {
  if (batch.tables.size() != table_blocks(c, batch.n)) throw std::invalid_argument("batch: tables do not match the circuit");
  if (batch.n == 0) return;
  auto ws = make_workspaces(c, std::min(batch.block, batch.n), opt_.threads);
  const BlockRange r{batch.tweak_prefix, batch.tweak_base, batch.n, batch.block, 0, (batch.n + batch.block - 1) / batch.block};
  evaluate_blocks(c, hash_, r, inputs, batch.tables.data(), outputs, ws);
}

void EvaluatorSession::receive_and_evaluate(const Circuit& c, std::size_t n, const InputView& inputs,
                                            const OutputSink& outputs) {
  check_input_width(c, inputs);  // before anything is read
  const GarbledBatch hdr = receive_header(c, n);
  if (n == 0) return;
  const std::size_t A = c.num_and();
  const std::size_t B = hdr.block;
  const std::size_t nblocks = (n + B - 1) / B;
  const std::size_t wave = 2 * static_cast<std::size_t>(opt_.threads);
  auto ws = make_workspaces(c, std::min(B, n), opt_.threads);
  std::vector<Block> buf(2 * A * std::min(n, wave * B));
  for (std::size_t w0 = 0; w0 < nblocks; w0 += wave) {
    const std::size_t wcount = std::min(wave, nblocks - w0);
    const std::size_t wave_instances = std::min(n, (w0 + wcount) * B) - w0 * B;
    ch_.recv(buf.data(), 2 * A * wave_instances * sizeof(Block));
    const BlockRange r{hdr.tweak_prefix, hdr.tweak_base, n, B, w0, wcount};
    evaluate_blocks(c, hash_, r, inputs, buf.data(), outputs, ws);
  }
}

// ------------------------------------------------------------ two parties

std::vector<std::uint8_t> run_two_party(const Circuit& c, const std::vector<std::uint8_t>& evaluator_owns,
                                        const std::vector<std::uint8_t>& input_bits, GcOptions opt,
                                        TwoPartyStats* stats) {
  const std::size_t ni = c.input_widths().size();
  if (evaluator_owns.size() != ni) throw std::invalid_argument("evaluator_owns: one entry per circuit input");
  if (input_bits.size() != c.num_input_bits()) throw std::invalid_argument("input_bits: one bit per input wire");
  resolve_threads(opt.threads);
  // owner[w] = 1 if the evaluator holds input wire w.
  std::vector<std::uint8_t> owner(c.num_input_bits());
  for (std::size_t k = 0, w = 0; k < ni; ++k) {
    for (std::uint32_t i = 0; i < c.input_widths()[k]; ++i) owner[w++] = evaluator_owns[k] ? 1 : 0;
  }
  const std::size_t ins = c.num_input_bits();
  const std::size_t outs = c.num_output_bits();
  auto channels = MemoryChannel::make_pair();
  Channel& gch = *channels.first;
  Channel& ech = *channels.second;
  std::vector<std::uint8_t> result(outs);
  std::exception_ptr garbler_error;
  std::exception_ptr evaluator_error;

  std::thread evaluator([&] {
    try {
      EvaluatorSession ev(ech, opt);
      std::vector<std::uint8_t> choices;
      std::vector<Block> garbler_labels;
      for (std::size_t w = 0; w < ins; ++w) {
        if (owner[w]) choices.push_back(input_bits[w]);
      }
      std::vector<Block> mine(choices.size());
      ev.ot().recv_cot(choices.data(), mine.data(), choices.size());
      garbler_labels.resize(ins - choices.size());
      ech.recv(garbler_labels.data(), garbler_labels.size() * sizeof(Block));
      std::vector<Block> labels(ins);
      for (std::size_t w = 0, e = 0, g = 0; w < ins; ++w) labels[w] = owner[w] ? mine[e++] : garbler_labels[g++];
      std::vector<std::uint8_t> colours(outs);
      ev.receive_and_evaluate(c, 1, InputView::contiguous(labels.data(), ins), OutputSink{nullptr, colours.data()});
      const auto packed = pack_bits(colours.data(), outs);
      ech.send(packed.data(), packed.size());
      ech.flush();
    } catch (...) {
      evaluator_error = std::current_exception();
      ech.close();
    }
  });
  try {
    GarblerSession gb(gch, opt);
    std::vector<Block> zero(ins);
    const std::size_t n_eval = static_cast<std::size_t>(std::count(owner.begin(), owner.end(), 1));
    std::vector<Block> q(n_eval);
    gb.ot().send_cot(q.data(), n_eval);
    std::vector<Block> active;
    for (std::size_t w = 0, e = 0; w < ins; ++w) {
      if (owner[w]) {
        zero[w] = q[e++];
      } else {
        zero[w] = gb.prg().random_block();
        active.push_back(input_bits[w] ? zero[w] ^ gb.delta() : zero[w]);
      }
    }
    gch.send(active.data(), active.size() * sizeof(Block));
    std::vector<std::uint8_t> zero_colours(outs);
    gb.garble(c, 1, InputView::contiguous(zero.data(), ins), OutputSink{nullptr, zero_colours.data()});
    std::vector<std::uint8_t> packed((outs + 7) / 8);
    gch.recv(packed.data(), packed.size());
    const auto colours = unpack_bits(packed.data(), outs);
    for (std::size_t k = 0; k < outs; ++k) result[k] = colours[k] ^ zero_colours[k];
  } catch (...) {
    garbler_error = std::current_exception();
    gch.close();
  }
  evaluator.join();
  // The first failure is the cause; the other side then sees a closed channel.
  if (garbler_error && evaluator_error) {
    try {
      std::rethrow_exception(garbler_error);
    } catch (const PeerClosedError&) {
      std::rethrow_exception(evaluator_error);
    }
  }
  if (garbler_error) std::rethrow_exception(garbler_error);
  if (evaluator_error) std::rethrow_exception(evaluator_error);
  if (stats != nullptr) {
    stats->and_gates = c.num_and();
    stats->bytes_garbler_to_evaluator = gch.stats().bytes_sent;
    stats->bytes_evaluator_to_garbler = ech.stats().bytes_sent;
    stats->table_bytes = table_blocks(c, 1) * sizeof(Block);
  }
  return result;
}

}  // namespace pie
