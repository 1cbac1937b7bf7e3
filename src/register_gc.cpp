// Bindings of the garbled-circuit engine and OT (cpp/gc, cpp/ot); the Python
// surface is pie.gc (python/pie/gc.py).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "buffer.h"
#include "gc/argmax.h"
#include "gc/builder.h"
#include "gc/circuit.h"
#include "gc/engine.h"
#include "gc/halfgates.h"
#include "gc/relu.h"
#include "io/channel.h"
#include "ot/base_ot.h"
#include "ot/iknp.h"
#include "register.h"

namespace py = pybind11;

namespace pie::bindings {

namespace {

using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

py::bytes blocks_to_bytes(const Block* b, std::size_t n) {
  std::uint8_t* dst = nullptr;
  py::bytes out = new_bytes(n * sizeof(Block), &dst);
  if (n != 0) std::memcpy(dst, b, n * sizeof(Block));
  return out;
}

std::vector<Block> bytes_to_blocks(py::handle obj, std::size_t expected, const char* field) {
  BufferView v(obj, false);
  if (v.size() != expected * sizeof(Block)) {
    throw std::invalid_argument(std::string(field) + ": expected " + std::to_string(expected * sizeof(Block)) +
                                " bytes, got " + std::to_string(v.size()));
  }
  std::vector<Block> out(expected);
  if (expected != 0) std::memcpy(out.data(), v.data(), v.size());
  return out;
}

AesBackend parse_backend(const std::optional<std::string>& name) {
  return name ? aes_backend_from_string(*name) : default_aes_backend();
}

Block block_arg(py::handle obj, const char* field) { return bytes_to_blocks(obj, 1, field)[0]; }

std::vector<std::uint8_t> choice_bits(py::handle obj) {
  BufferView v(obj, false);
  std::vector<std::uint8_t> c(v.data(), v.data() + v.size());
  for (auto x : c) {
    if (x > 1) throw std::invalid_argument("choices: every byte must be 0 or 1");
  }
  return c;
}

// Inputs as little-endian packed bytes (ceil(width/8) each) -> one bit per wire.
std::vector<std::uint8_t> unpack_inputs(const Circuit& c, const std::vector<py::bytes>& inputs) {
  const auto& widths = c.input_widths();
  if (inputs.size() != widths.size()) {
    throw std::invalid_argument("inputs: expected " + std::to_string(widths.size()) + " values, got " +
                                std::to_string(inputs.size()));
  }
  std::vector<std::uint8_t> bits;
  bits.reserve(c.num_input_bits());
  for (std::size_t k = 0; k < widths.size(); ++k) {
    BufferView v(inputs[k], false);
    if (v.size() != (widths[k] + 7) / 8) {
      throw std::invalid_argument("inputs[" + std::to_string(k) + "]: expected " +
                                  std::to_string((widths[k] + 7) / 8) + " bytes");
    }
    const auto unpacked = unpack_bits(v.data(), widths[k]);
    bits.insert(bits.end(), unpacked.begin(), unpacked.end());
  }
  return bits;
}

std::vector<py::bytes> pack_outputs(const Circuit& c, const std::vector<std::uint8_t>& bits) {
  std::vector<py::bytes> out;
  std::size_t off = 0;
  for (auto w : c.output_widths()) {
    const auto packed = pack_bits(bits.data() + off, w);
    out.emplace_back(reinterpret_cast<const char*>(packed.data()), packed.size());
    off += w;
  }
  return out;
}

GcOptions options(int threads, std::size_t block) {
  if (threads < 0) throw std::invalid_argument("threads must be >= 0");
  return GcOptions{threads, block};
}

py::array_t<std::uint64_t> to_array(const std::vector<std::uint64_t>& v) {
  py::array_t<std::uint64_t> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(std::uint64_t));
  return a;
}

// The probe's records as three arrays: counter words, prefix words, garbler flags.
py::tuple probe_arrays(const std::vector<tweak_probe::Record>& recs) {
  py::array_t<std::uint64_t> lo(static_cast<py::ssize_t>(recs.size()));
  py::array_t<std::uint64_t> hi(static_cast<py::ssize_t>(recs.size()));
  py::array_t<bool> garbler(static_cast<py::ssize_t>(recs.size()));
  auto l = lo.mutable_unchecked<1>();
  auto h = hi.mutable_unchecked<1>();
  auto g = garbler.mutable_unchecked<1>();
  for (std::size_t i = 0; i < recs.size(); ++i) {
    const auto k = static_cast<py::ssize_t>(i);
    l(k) = recs[i].lo;
    h(k) = recs[i].hi;
    g(k) = recs[i].garbler;
  }
  return py::make_tuple(lo, hi, garbler);
}

}  // namespace

void register_gc(py::module_& m) {
  // ----------------------------------------------------------- circuits
  py::class_<Circuit, std::shared_ptr<Circuit>>(m, "GcCircuit", R"doc(
A Boolean circuit (XOR, AND, INV gates in topological order). Input k feeds a
contiguous range of wires, bit i of its value on the i-th; outputs likewise.)doc")
      .def_static("from_bristol", &Circuit::from_bristol_file, py::arg("path"),
                  "Load a Bristol Fashion file; ValueError names the offending line.")
      .def_static("from_bristol_text", &Circuit::from_bristol_text, py::arg("text"), py::arg("name") = "<text>",
                  "Parse Bristol Fashion text; errors are reported as '<name>:<line>: ...'.")
      .def_property_readonly("input_widths", &Circuit::input_widths)
      .def_property_readonly("output_widths", &Circuit::output_widths)
      .def_property_readonly("num_and", &Circuit::num_and)
      .def_property_readonly("num_gates", [](const Circuit& c) { return c.gates().size(); })
      .def_property_readonly("num_wires", &Circuit::num_wires)
      .def(
          "evaluate",
          [](const Circuit& c, const std::vector<py::bytes>& inputs) {
            const auto bits = unpack_inputs(c, inputs);
            std::vector<std::uint8_t> out;
            {
              py::gil_scoped_release release;
              out = c.evaluate(bits);
            }
            return pack_outputs(c, out);
          },
          py::arg("inputs"),
          "Cleartext evaluation; each input and output is little-endian packed bits (ceil(width/8) bytes).");

  py::class_<CircuitBuilder>(m, "GcCircuitBuilder", R"doc(
Builds circuits bit by bit with constant folding. Bits are ints: wire ids or
the constants ZERO and ONE; vectors are little-endian lists of bits.)doc")
      .def(py::init<>())
      .def_property_readonly_static("ZERO", [](py::object) { return CircuitBuilder::kZero; })
      .def_property_readonly_static("ONE", [](py::object) { return CircuitBuilder::kOne; })
      .def("input", &CircuitBuilder::input, py::arg("width"))
      .def("xor", &CircuitBuilder::xor_, py::arg("a"), py::arg("b"))
      .def("and_", &CircuitBuilder::and_, py::arg("a"), py::arg("b"))
      .def("not_", &CircuitBuilder::not_, py::arg("a"))
      .def("add", &CircuitBuilder::add, py::arg("a"), py::arg("b"), "a + b mod 2^n (n-1 AND gates).")
      .def("sub", &CircuitBuilder::sub, py::arg("a"), py::arg("b"), "a - b mod 2^n (n-1 AND gates).")
      .def("less_than", &CircuitBuilder::less_than, py::arg("a"), py::arg("b"), "Unsigned a < b (n AND gates).")
      .def("mux", &CircuitBuilder::mux, py::arg("sel"), py::arg("a"), py::arg("b"), "sel ? a : b (n AND gates).")
      .def("shift_right", &CircuitBuilder::shift_right, py::arg("a"), py::arg("k"))
      .def("shift_left", &CircuitBuilder::shift_left, py::arg("a"), py::arg("k"))
      .def("output", &CircuitBuilder::output, py::arg("bits"))
      .def("build", [](CircuitBuilder& b) { return std::make_shared<Circuit>(b.build()); });

  m.def(
      "gc_relu_circuit",
      [](std::uint32_t l_in, std::uint32_t l_out, std::uint32_t shift) {
        return std::make_shared<Circuit>(relu_circuit(l_in, l_out, shift));
      },
      py::arg("l_in"), py::arg("l_out"), py::arg("shift"),
      "The ReLU-over-shares circuit: inputs x_s, x_c (l_in bits), r (l_out bits); output (ReLU(x)>>shift) - r.");
  m.def(
      "gc_truncate_circuit",
      [](std::uint32_t l_in, std::uint32_t l_out, std::uint32_t shift) {
        return std::make_shared<Circuit>(truncate_circuit(l_in, l_out, shift));
      },
      py::arg("l_in"), py::arg("l_out"), py::arg("shift"),
      "The truncation-over-shares circuit: inputs x_s, x_c (l_in bits), r (l_out bits); output (x>>shift) - r.");

  // ------------------------------------------------ pure garbling functions
  m.def(
      "gc_garble",
      [](const Circuit& c, std::size_t n, std::uint64_t tweak_base, py::object delta_obj, py::object seed,
         const std::optional<std::string>& backend, std::uint64_t tweak_prefix) {
        const Block delta = delta_obj.is_none() ? random_delta() : block_arg(delta_obj, "delta");
        const TccrHash hash(parse_backend(backend));
        std::optional<Block> seed_block;
        if (!seed.is_none()) seed_block = block_arg(seed, "seed");
        std::vector<Block> inputs(n * c.num_input_bits());
        std::vector<Block> tables(table_blocks(c, n));
        std::vector<Block> outputs(n * c.num_output_bits());
        GcWorkspace ws;
        {
          py::gil_scoped_release release;
          Prg prg = seed_block ? Prg(*seed_block) : Prg();
          prg.random_blocks(inputs.data(), inputs.size());
          garble_instances(c, hash, delta, tweak_prefix, tweak_base, n,
                           InputView::contiguous(inputs.data(), c.num_input_bits()), tables.data(),
                           OutputSink{outputs.data(), nullptr}, ws);
        }
        py::dict d;
        d["delta"] = blocks_to_bytes(&delta, 1);
        d["input_zero"] = blocks_to_bytes(inputs.data(), inputs.size());
        d["tables"] = blocks_to_bytes(tables.data(), tables.size());
        d["output_zero"] = blocks_to_bytes(outputs.data(), outputs.size());
        d["wire_labels"] = blocks_to_bytes(ws.labels.data(), ws.labels.size());
        return d;
      },
      py::arg("circuit"), py::arg("n"), py::arg("tweak_base"), py::arg("delta") = py::none(),
      py::arg("seed") = py::none(), py::arg("backend") = py::none(), py::arg("tweak_prefix") = 0,
      R"doc(Garble n instances (pure function; input labels fresh from the OS-seeded PRG, or
from a 16-byte seed for reproducible tests; backend 'vaes', 'aes-ni' or 'openssl'; tweak_prefix is the
tweaks' high word, even). Returns a dict of
bytes: delta, input_zero [n][inputs], tables [AND][n][2], output_zero [n][outputs],
wire_labels [wire][n] (every wire's 0-label).)doc");
  m.def(
      "gc_evaluate",
      [](const Circuit& c, std::size_t n, std::uint64_t tweak_base, py::handle input_labels, py::handle tables,
         const std::optional<std::string>& backend, std::uint64_t tweak_prefix) {
        const TccrHash hash(parse_backend(backend));
        const auto in = bytes_to_blocks(input_labels, n * c.num_input_bits(), "input_labels");
        const auto tab = bytes_to_blocks(tables, table_blocks(c, n), "tables");
        std::vector<Block> outputs(n * c.num_output_bits());
        GcWorkspace ws;
        {
          py::gil_scoped_release release;
          evaluate_instances(c, hash, tweak_prefix, tweak_base, n, InputView::contiguous(in.data(), c.num_input_bits()),
                             tab.data(), OutputSink{outputs.data(), nullptr}, ws);
        }
        py::dict d;
        d["outputs"] = blocks_to_bytes(outputs.data(), outputs.size());
        d["wire_labels"] = blocks_to_bytes(ws.labels.data(), ws.labels.size());
        return d;
      },
      py::arg("circuit"), py::arg("n"), py::arg("tweak_base"), py::arg("input_labels"), py::arg("tables"),
      py::arg("backend") = py::none(), py::arg("tweak_prefix") = 0,
      "Evaluate n garbled instances (pure function): returns bytes outputs [n][outputs] and wire_labels [wire][n].");

  m.def(
      "gc_run_two_party",
      [](const Circuit& c, const std::vector<bool>& evaluator_owns, const std::vector<py::bytes>& inputs,
         int threads) {
        const auto bits = unpack_inputs(c, inputs);
        std::vector<std::uint8_t> owns(evaluator_owns.begin(), evaluator_owns.end());
        TwoPartyStats st;
        std::vector<std::uint8_t> out;
        {
          py::gil_scoped_release release;
          out = run_two_party(c, owns, bits, options(threads, 0), &st);
        }
        py::dict d;
        d["and_gates"] = st.and_gates;
        d["bytes_garbler_to_evaluator"] = st.bytes_garbler_to_evaluator;
        d["bytes_evaluator_to_garbler"] = st.bytes_evaluator_to_garbler;
        d["table_bytes"] = st.table_bytes;
        return py::make_tuple(pack_outputs(c, out), d);
      },
      py::arg("circuit"), py::arg("evaluator_owns"), py::arg("inputs"), py::arg("threads") = 0,
      "Garble, OT and evaluate one instance between two threads over an in-memory channel.");

  m.def(
      "gc_throughput",
      [](const Circuit& c, std::size_t n, int threads, std::size_t repeat, const std::string& mode,
         std::size_t block_arg, const std::optional<std::string>& backend) {
        // Benchmark helper: garbles or evaluates n instances in blocks with
        // the session's parallel kernels, repeat times, with no channel; or
        // ("hash") runs the 2*A*n TCCR hash calls an evaluation needs, in the
        // same batch sizes, on one thread. Returns the seconds of the timed loop.
        if (n == 0 || repeat == 0) throw std::invalid_argument("n and repeat must be positive");
        if (mode != "garble" && mode != "evaluate" && mode != "hash") {
          throw std::invalid_argument("mode must be 'garble', 'evaluate' or 'hash'");
        }
        const int t = resolve_threads(threads);
        const std::size_t block = std::min(block_arg != 0 ? block_arg : default_block_size(c), n);
        const BlockRange r{0, 0, n, block, 0, (n + block - 1) / block};
        std::vector<Block> inputs(n * c.num_input_bits());
        std::vector<Block> tables(table_blocks(c, n));
        std::vector<Block> outputs(n * c.num_output_bits());
        const Block delta = random_delta();
        const TccrHash hash(parse_backend(backend));
        double seconds = 0;
        {
          py::gil_scoped_release release;
          Prg prg;
          prg.random_blocks(inputs.data(), inputs.size());
          auto ws = make_workspaces(c, block, t);
          const auto in = InputView::contiguous(inputs.data(), c.num_input_bits());
          const OutputSink out{outputs.data(), nullptr};
          garble_blocks(c, hash, delta, r, in, tables.data(), out, ws);
          std::vector<Block> x(2 * block);
          std::vector<Block> tw(2 * block);
          prg.random_blocks(x.data(), x.size());
          prg.random_blocks(tw.data(), tw.size());
          const std::size_t calls = c.num_and() * r.count;
          const auto start = std::chrono::steady_clock::now();
          for (std::size_t i = 0; i < repeat; ++i) {
            if (mode == "evaluate") {
              evaluate_blocks(c, hash, r, in, tables.data(), out, ws);
            } else if (mode == "garble") {
              garble_blocks(c, hash, delta, r, in, tables.data(), out, ws);
            } else {
              for (std::size_t k = 0; k < calls; ++k) hash.hash(x.data(), tw.data(), x.data(), x.size());
            }
          }
          seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        }
        return seconds;
      },
      py::arg("circuit"), py::arg("n"), py::arg("threads") = 0, py::arg("repeat") = 1, py::arg("mode") = "garble",
      py::arg("block") = 0, py::arg("backend") = py::none(),
      "Benchmark helper: seconds to garble / evaluate n instances (or run the hashes an evaluation needs) repeat times.");
  m.def("gc_tweak_probe_start", &tweak_probe::start,
        "Test-only: start recording every tweak the AND gates feed to the hash (every backend).");
  m.def("gc_tweak_probe_stop", [] { return probe_arrays(tweak_probe::stop()); },
        "Test-only: stop recording; returns (counter words, prefix words, garbler flags) as arrays.");
  m.def("gc_threads", [](int threads) { return resolve_threads(threads); }, py::arg("threads") = 0,
        "Worker threads the GC engine uses for a requested count (0 = all cores; 1 without OpenMP).");

  // ---------------------------------------------------------------- ReLU
  py::class_<ReluServerMaterial>(m, "GcReluServerMaterial", "The server's offline material of one ReLU batch.")
      .def_property_readonly("batch", &ReluServerMaterial::batch)
      .def_property_readonly("size", &ReluServerMaterial::size)
      .def_property_readonly("consumed", &ReluServerMaterial::consumed);
  py::class_<ReluClientMaterial>(m, "GcReluClientMaterial", "The client's offline material of one ReLU batch.")
      .def_property_readonly("batch", &ReluClientMaterial::batch)
      .def_property_readonly("size", &ReluClientMaterial::size)
      .def_property_readonly("consumed", &ReluClientMaterial::consumed)
      .def_property_readonly("table_bytes", &ReluClientMaterial::table_bytes);

  py::class_<ReluServer>(m, "GcReluServer", "The garbling side of the ReLU protocol (one session per object).")
      .def(py::init([](std::shared_ptr<Channel> ch, std::uint32_t l_in, std::uint32_t l_out, std::uint32_t shift,
                       int threads, std::size_t block, bool truncate) {
             return std::make_unique<ReluServer>(*ch, ReluShape{l_in, l_out, shift, truncate}, options(threads, block));
           }),
           py::arg("channel"), py::arg("l_in"), py::arg("l_out"), py::arg("shift"), py::arg("threads") = 0,
           py::arg("block") = 0, py::arg("truncate") = false, py::keep_alive<1, 2>())
      .def_property_readonly("num_and", [](const ReluServer& s) { return s.circuit().num_and(); })
      .def_property_readonly("tweak_prefix", [](const ReluServer& s) { return s.session().tweak_prefix(); },
                             "The high word of this session's garbling tweaks (random per session, even).")
      .def("offline", &ReluServer::offline, py::arg("n"), py::call_guard<py::gil_scoped_release>())
      .def("announce", &ReluServer::announce, py::arg("n"), py::call_guard<py::gil_scoped_release>(),
           "First part of offline(): send the header of a batch of n.")
      .def("receive_ot", &ReluServer::receive_ot, py::arg("material"), py::call_guard<py::gil_scoped_release>(),
           "Second part of offline(): the OT for the client's inputs.")
      .def("garble", &ReluServer::garble, py::arg("material"), py::call_guard<py::gil_scoped_release>(),
           "Third part of offline(): garble the batch and stream its tables.")
      .def(
          "online",
          [](ReluServer& s, ReluServerMaterial& mat, const U64Array& xs) {
            if (xs.ndim() != 1) throw std::invalid_argument("server_share: must be one-dimensional");
            std::vector<std::uint64_t> ys;
            {
              py::gil_scoped_release release;
              ys = s.online(mat, xs.data(), static_cast<std::size_t>(xs.shape(0)));
            }
            return to_array(ys);
          },
          py::arg("material"), py::arg("server_share"))
      .def(
          "send_labels",
          [](ReluServer& s, ReluServerMaterial& mat, const U64Array& xs) {
            if (xs.ndim() != 1) throw std::invalid_argument("server_share: must be one-dimensional");
            py::gil_scoped_release release;
            s.send_labels(mat, xs.data(), static_cast<std::size_t>(xs.shape(0)));
          },
          py::arg("material"), py::arg("server_share"),
          "First half of online(): consume the material and send the labels of the server's shares.")
      .def(
          "finish",
          [](ReluServer& s, ReluServerMaterial& mat) {
            std::vector<std::uint64_t> ys;
            {
              py::gil_scoped_release release;
              ys = s.finish(mat);
            }
            return to_array(ys);
          },
          py::arg("material"), "Second half of online(): receive the client's reply, return the server's shares.");

  py::class_<ReluClient>(m, "GcReluClient", "The evaluating side of the ReLU protocol (one session per object).")
      .def(py::init([](std::shared_ptr<Channel> ch, std::uint32_t l_in, std::uint32_t l_out, std::uint32_t shift,
                       int threads, std::size_t block, bool truncate) {
             return std::make_unique<ReluClient>(*ch, ReluShape{l_in, l_out, shift, truncate}, options(threads, block));
           }),
           py::arg("channel"), py::arg("l_in"), py::arg("l_out"), py::arg("shift"), py::arg("threads") = 0,
           py::arg("block") = 0, py::arg("truncate") = false, py::keep_alive<1, 2>())
      .def(
          "offline",
          [](ReluClient& c, const U64Array& xc, const U64Array& r) {
            if (xc.ndim() != 1 || r.ndim() != 1 || xc.shape(0) != r.shape(0)) {
              throw std::invalid_argument("client_share, client_mask: one-dimensional and of equal length");
            }
            py::gil_scoped_release release;
            return c.offline(xc.data(), r.data(), static_cast<std::size_t>(xc.shape(0)));
          },
          py::arg("client_share"), py::arg("client_mask"))
      .def("receive_header", &ReluClient::receive_header, py::arg("n"), py::call_guard<py::gil_scoped_release>(),
           "First part of offline(): receive the header of the server's next batch, of n.")
      .def(
          "request",
          [](ReluClient& c, ReluClientMaterial& mat, const U64Array& xc, const U64Array& r) {
            if (xc.ndim() != 1 || r.ndim() != 1 || static_cast<std::size_t>(xc.shape(0)) != mat.size() ||
                static_cast<std::size_t>(r.shape(0)) != mat.size()) {
              throw std::invalid_argument("client_share, client_mask: one-dimensional, of the batch's length");
            }
            py::gil_scoped_release release;
            c.request(mat, xc.data(), r.data());
          },
          py::arg("material"), py::arg("client_share"), py::arg("client_mask"),
          "Second part of offline(): the OT for the client's inputs.")
      .def("receive_tables", &ReluClient::receive_tables, py::arg("material"),
           py::call_guard<py::gil_scoped_release>(), "Third part of offline(): receive the batch's tables.")
      .def("online", &ReluClient::online, py::arg("material"), py::call_guard<py::gil_scoped_release>())
      .def("evaluate", &ReluClient::evaluate, py::arg("material"), py::call_guard<py::gil_scoped_release>(),
           "First half of online(): consume the material, receive the server's labels and evaluate.")
      .def("reply", &ReluClient::reply, py::arg("material"), py::call_guard<py::gil_scoped_release>(),
           "Second half of online(): send and flush the evaluated batch's reply.")
      .def("release", &ReluClient::release, py::arg("material"), py::call_guard<py::gil_scoped_release>(),
           "Free the batch's tables and labels (consuming the material): after a round's last reply.");

  // ------------------------------------------------------ label-only output
  m.def(
      "gc_argmax_circuit",
      [](std::uint32_t classes, std::uint32_t l) { return std::make_shared<Circuit>(argmax_circuit(classes, l)); },
      py::arg("classes"), py::arg("l"),
      "The label-only output circuit: inputs x_s, x_c (classes values of l bits); output argmax of x_s + x_c (signed).");
  py::class_<ArgmaxServer>(m, "GcArgmaxServer", "The garbling side of the label-only output (one use per object).")
      .def(py::init([](std::shared_ptr<Channel> ch, std::uint32_t classes, std::uint32_t l, int threads) {
             return std::make_unique<ArgmaxServer>(*ch, classes, l, options(threads, 0));
           }),
           py::arg("channel"), py::arg("classes"), py::arg("l"), py::arg("threads") = 0, py::keep_alive<1, 2>())
      .def("offline", &ArgmaxServer::offline, py::call_guard<py::gil_scoped_release>(),
           "Garble, run the OT for the client's share and send the decoding bits of the index.")
      .def(
          "online",
          [](ArgmaxServer& s, const U64Array& xs) {
            if (xs.ndim() != 1) throw std::invalid_argument("server_share: must be one-dimensional");
            py::gil_scoped_release release;
            s.online(xs.data(), static_cast<std::size_t>(xs.shape(0)));
          },
          py::arg("server_share"), "Send the labels of the server's shares of the logits.");
  py::class_<ArgmaxClient>(m, "GcArgmaxClient", "The evaluating side of the label-only output (one use per object).")
      .def(py::init([](std::shared_ptr<Channel> ch, std::uint32_t classes, std::uint32_t l, int threads) {
             return std::make_unique<ArgmaxClient>(*ch, classes, l, options(threads, 0));
           }),
           py::arg("channel"), py::arg("classes"), py::arg("l"), py::arg("threads") = 0, py::keep_alive<1, 2>())
      .def(
          "offline",
          [](ArgmaxClient& c, const U64Array& xc) {
            if (xc.ndim() != 1) throw std::invalid_argument("client_share: must be one-dimensional");
            py::gil_scoped_release release;
            c.offline(xc.data(), static_cast<std::size_t>(xc.shape(0)));
          },
          py::arg("client_share"), "Obtain the labels of the client's shares, the tables and the decoding bits.")
      .def("online", &ArgmaxClient::online, py::call_guard<py::gil_scoped_release>(),
           "Receive the server's labels, evaluate, and return the index of the largest logit.");

  // ------------------------------------------------------------------ OT
  m.def(
      "base_ot_send",
      [](std::shared_ptr<Channel> ch, py::handle sid, std::size_t n) {
        const Block s = block_arg(sid, "sid");
        std::vector<std::pair<Block, Block>> keys;
        {
          py::gil_scoped_release release;
          keys = base_ot_send(*ch, s, n);
        }
        py::list out;
        for (const auto& k : keys) out.append(py::make_tuple(blocks_to_bytes(&k.first, 1), blocks_to_bytes(&k.second, 1)));
        return out;
      },
      py::arg("channel"), py::arg("sid"), py::arg("n"),
      "Chou-Orlandi base OT, sender side: n random key pairs (16 bytes each).");
  m.def(
      "base_ot_receive",
      [](std::shared_ptr<Channel> ch, py::handle sid, py::handle choices) {
        const Block s = block_arg(sid, "sid");
        const auto c = choice_bits(choices);
        std::vector<Block> keys;
        {
          py::gil_scoped_release release;
          keys = base_ot_receive(*ch, s, c);
        }
        py::list out;
        for (const auto& k : keys) out.append(blocks_to_bytes(&k, 1));
        return out;
      },
      py::arg("channel"), py::arg("sid"), py::arg("choices"),
      "Chou-Orlandi base OT, receiver side: the key of each choice (choices: bytes of 0/1).");

  py::class_<IknpSender>(m, "IknpSender", "IKNP OT-extension sender (correlated, random and chosen-message OT).")
      .def(py::init([](std::shared_ptr<Channel> ch, py::object delta) {
             const Block d = delta.is_none() ? random_delta() : block_arg(delta, "delta");
             return std::make_unique<IknpSender>(*ch, d);
           }),
           py::arg("channel"), py::arg("delta") = py::none(), py::keep_alive<1, 2>())
      .def_property_readonly("delta", [](const IknpSender& s) { return blocks_to_bytes(&s.delta(), 1); },
                             "The correlation (the sender's secret; lowest bit set).")
      .def_property_readonly("count", &IknpSender::count)
      .def(
          "send_cot",
          [](IknpSender& s, std::size_t n) {
            std::vector<Block> q(n);
            {
              py::gil_scoped_release release;
              s.send_cot(q.data(), n);
            }
            return blocks_to_bytes(q.data(), n);
          },
          py::arg("n"), "n correlated OTs: q_i (the receiver gets q_i ^ choice_i * delta).")
      .def(
          "send_random",
          [](IknpSender& s, std::size_t n) {
            std::vector<Block> k0(n);
            std::vector<Block> k1(n);
            {
              py::gil_scoped_release release;
              s.send_random(k0.data(), k1.data(), n);
            }
            return py::make_tuple(blocks_to_bytes(k0.data(), n), blocks_to_bytes(k1.data(), n));
          },
          py::arg("n"), "n random OTs: (k0, k1) as concatenated 16-byte keys.")
      .def(
          "send_chosen",
          [](IknpSender& s, py::handle m0, py::handle m1) {
            BufferView v0(m0, false);
            if (v0.size() % sizeof(Block) != 0) throw std::invalid_argument("m0: length must be a multiple of 16");
            const std::size_t n = v0.size() / sizeof(Block);
            const auto a = bytes_to_blocks(m0, n, "m0");
            const auto b = bytes_to_blocks(m1, n, "m1");
            py::gil_scoped_release release;
            s.send_chosen(a.data(), b.data(), n);
          },
          py::arg("m0"), py::arg("m1"), "Chosen-message OT of 16-byte messages (m0, m1 concatenated).");

  py::class_<IknpReceiver>(m, "IknpReceiver", "IKNP OT-extension receiver.")
      .def(py::init([](std::shared_ptr<Channel> ch) { return std::make_unique<IknpReceiver>(*ch); }),
           py::arg("channel"), py::keep_alive<1, 2>())
      .def_property_readonly("count", &IknpReceiver::count)
      .def(
          "recv_cot",
          [](IknpReceiver& r, py::handle choices) {
            const auto c = choice_bits(choices);
            std::vector<Block> t(c.size());
            {
              py::gil_scoped_release release;
              r.recv_cot(c.data(), t.data(), c.size());
            }
            return blocks_to_bytes(t.data(), t.size());
          },
          py::arg("choices"), "Correlated OT: the labels q_i ^ choice_i * delta (choices: bytes of 0/1).")
      .def(
          "recv_random",
          [](IknpReceiver& r, py::handle choices) {
            const auto c = choice_bits(choices);
            std::vector<Block> k(c.size());
            {
              py::gil_scoped_release release;
              r.recv_random(c.data(), k.data(), c.size());
            }
            return blocks_to_bytes(k.data(), k.size());
          },
          py::arg("choices"))
      .def(
          "recv_chosen",
          [](IknpReceiver& r, py::handle choices) {
            const auto c = choice_bits(choices);
            std::vector<Block> out(c.size());
            {
              py::gil_scoped_release release;
              r.recv_chosen(c.data(), out.data(), c.size());
            }
            return blocks_to_bytes(out.data(), out.size());
          },
          py::arg("choices"));
}

}  // namespace pie::bindings
