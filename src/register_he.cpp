#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "he/conv_layout.h"
#include "he/inspection.h"
#include "he/linear_protocol.h"
#include "he/params.h"
#include "he/ring_conv.h"
#include "he/seal_check.h"
#include "register.h"

namespace py = pybind11;

namespace pie::bindings {

namespace {

using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

he::HeParameters make_params(int ring_bits, std::size_t poly_degree, const std::optional<std::vector<int>>& coeff_bits,
                             std::uint64_t max_revealed) {
  he::HeParameters p;
  p.ring_bits = ring_bits;
  p.poly_degree = poly_degree;
  if (coeff_bits) p.coeff_bits = *coeff_bits;
  p.max_revealed = max_revealed;
  return p;
}

he::ConvShape make_shape(const std::vector<std::size_t>& s) {
  if (s.size() != 9) {
    throw std::invalid_argument(
        "shape: expected (in_channels, in_height, in_width, out_channels, kernel_h, kernel_w, stride, padding, groups)");
  }
  he::ConvShape shape{s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8]};
  shape.validate();
  return shape;
}

void check_sizes(const he::ConvShape& shape, const U64Array& x, const I64Array& w) {
  if (static_cast<std::size_t>(x.size()) != shape.input_size()) {
    throw std::invalid_argument("client_share: size does not match the shape");
  }
  if (static_cast<std::size_t>(w.size()) != shape.weight_size()) {
    throw std::invalid_argument("weight: size does not match the shape");
  }
}

py::array_t<std::uint64_t> to_array(const std::vector<std::uint64_t>& v) {
  py::array_t<std::uint64_t> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

py::dict timings_dict(const he::LinearTimings& t) {
  py::dict d;
  d["encrypt_s"] = t.encrypt;
  d["compute_s"] = t.compute;
  d["decrypt_s"] = t.decrypt;
  return d;
}

// A protocol party bound to Python: keeps the channel alive as long as the party.
template <typename Party>
struct Session {
  std::shared_ptr<Channel> channel;
  std::unique_ptr<Party> party;
};

template <typename Party>
std::unique_ptr<Session<Party>> open_session(std::shared_ptr<Channel> channel, int ring_bits,
                                             std::uint64_t max_revealed) {
  if (!channel) throw std::invalid_argument("channel: must not be None");
  auto ctx = he::make_context(make_params(ring_bits, 8192, std::nullopt, max_revealed));
  auto s = std::make_unique<Session<Party>>();
  s->channel = std::move(channel);
  py::gil_scoped_release release;
  s->party = std::make_unique<Party>(std::move(ctx), *s->channel);
  return s;
}

py::bytes to_bytes(const std::vector<std::uint8_t>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

}  // namespace

void register_he(py::module_& m) {
  m.def("seal_version", &he::seal_version, "Version of the SEAL library pie was built with.");
  m.def(
      "ring_conv2d",
      [](const U64Array& x, const py::array& weight, std::pair<std::size_t, std::size_t> stride,
         std::pair<std::size_t, std::size_t> padding, std::size_t groups, unsigned bits, int threads,
         bool simd) {
        if (x.ndim() != 4) throw std::invalid_argument("x: expected (N, C, H, W)");
        if (weight.ndim() != 4) throw std::invalid_argument("weight: expected (C / groups, kh, kw, O)");
        if (!(weight.flags() & py::array::c_style)) throw std::invalid_argument("weight: must be C-contiguous");
        he::RingConvShape s;
        s.n = static_cast<std::size_t>(x.shape(0));
        s.c = static_cast<std::size_t>(x.shape(1));
        s.h = static_cast<std::size_t>(x.shape(2));
        s.w = static_cast<std::size_t>(x.shape(3));
        s.kh = static_cast<std::size_t>(weight.shape(1));
        s.kw = static_cast<std::size_t>(weight.shape(2));
        s.o = static_cast<std::size_t>(weight.shape(3));
        std::tie(s.stride_h, s.stride_w) = stride;
        std::tie(s.pad_h, s.pad_w) = padding;
        s.groups = groups;
        if (groups == 0 || static_cast<std::size_t>(weight.shape(0)) * groups != s.c) {
          throw std::invalid_argument("weight: its input channels times groups differ from x's channels");
        }
        he::check_ring_conv(s);
        py::array_t<std::uint64_t> y({static_cast<py::ssize_t>(s.n), static_cast<py::ssize_t>(s.o),
                                      static_cast<py::ssize_t>(s.out_h()), static_cast<py::ssize_t>(s.out_w())});
        const std::uint64_t* xp = x.data();
        std::uint64_t* yp = y.mutable_data();
        const auto run = [&](const auto* wp) {
          py::gil_scoped_release release;
          he::ring_conv2d(s, xp, wp, yp, bits, threads, simd);
        };
        if (py::isinstance<py::array_t<std::int16_t>>(weight)) {
          run(static_cast<const std::int16_t*>(weight.data()));
        } else if (py::isinstance<py::array_t<std::int32_t>>(weight)) {
          run(static_cast<const std::int32_t*>(weight.data()));
        } else if (py::isinstance<py::array_t<std::int64_t>>(weight) ||
                   py::isinstance<py::array_t<std::uint64_t>>(weight)) {
          run(static_cast<const std::int64_t*>(weight.data()));  // uint64: the same residues mod 2^64
        } else {
          throw std::invalid_argument("weight: expected int16, int32, int64 or uint64 entries");
        }
        return y;
      },
      py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"), py::arg("groups"), py::arg("bits"),
      py::arg("threads") = 1, py::arg("simd") = true,
      "Exact conv2d(x, weight) mod 2^bits of uint64 residues x (N, C, H, W); weight is the "
      "(O, C/groups, kh, kw) integer weight transposed to (C/groups, kh, kw, O), C-contiguous, as "
      "int16, int32 or int64 (or uint64 residues mod 2^64). Zero padding. threads: OpenMP threads (0: all); "
      "simd=False: the portable loop even where AVX-512 is available.");
  m.def("ring_conv_vectorised", &he::ring_conv_vectorised,
        "Whether ring_conv2d uses AVX-512 on this CPU.");
  m.def("bfv_roundtrip", &he::bfv_roundtrip, py::arg("coeffs"), py::arg("plain_bits") = 37,
        py::arg("poly_degree") = 8192, py::call_guard<py::gil_scoped_release>(),
        "Encrypt and decrypt a plaintext polynomial with BFV (t = 2^plain_bits); "
        "returns the decrypted coefficients.");

  m.def(
      "he_parameters",
      [](int ring_bits, std::size_t poly_degree, std::optional<std::vector<int>> coeff_bits,
         std::uint64_t max_revealed) {
        const auto ctx = he::make_context(make_params(ring_bits, poly_degree, coeff_bits, max_revealed));
        py::dict d;
        d["poly_degree"] = ctx->poly_degree();
        d["ring_bits"] = ctx->ring_bits();
        d["coeff_bits"] = ctx->params().coeff_bits;
        d["top_limbs"] = ctx->top_limbs();
        d["final_limbs"] = ctx->final_limbs();
        d["top_modulus_bits"] = he::log2_modulus(*ctx->seal().first_context_data());
        d["final_modulus_bits"] = he::log2_modulus(*ctx->seal().get_context_data(ctx->final_parms_id()));
        d["flood_bits"] = ctx->flood_bits();
        d["max_noise_log2"] = ctx->max_noise_log2();
        d["max_weight_l1"] = ctx->max_weight_l1();
        d["max_revealed"] = ctx->params().max_revealed;
        return d;
      },
      py::arg("ring_bits") = 37, py::arg("poly_degree") = 8192, py::arg("coeff_bits") = py::none(),
      py::arg("max_revealed") = std::uint64_t{1} << 30,
      "Validate HE parameters and return what the noise analysis derives from them.");

  m.def(
      "he_layout",
      [](const std::vector<std::size_t>& shape, std::size_t poly_degree) {
        const he::ConvLayout layout(make_shape(shape), poly_degree);
        py::dict d;
        d["num_inputs"] = layout.num_inputs();
        d["num_outputs"] = layout.num_outputs();
        d["num_products"] = layout.num_products();
        d["num_tiles"] = layout.num_tiles();
        d["channels_per_block"] = layout.channels_per_block();
        d["outputs_per_block"] = layout.outputs_per_block();
        return d;
      },
      py::arg("shape"), py::arg("poly_degree") = 8192,
      "The coefficient-encoding plan of a layer (shape as in secure_linear).");

  m.def(
      "secure_linear",
      [](U64Array x, I64Array w, const std::vector<std::size_t>& shape_v, int ring_bits, std::size_t poly_degree,
         std::uint64_t max_revealed) {
        const auto shape = make_shape(shape_v);
        check_sizes(shape, x, w);
        const auto params = make_params(ring_bits, poly_degree, std::nullopt, max_revealed);
        he::SecureLinearResult r;
        {
          py::gil_scoped_release release;
          r = he::run_secure_linear(params, shape, x.data(), w.data());
        }
        py::dict stats;
        stats["bytes_client_to_server"] = r.bytes_client_to_server;
        stats["bytes_server_to_client"] = r.bytes_server_to_client;
        stats["messages"] = r.messages;
        stats["client_encrypt_s"] = r.client.encrypt;
        stats["client_decrypt_s"] = r.client.decrypt;
        stats["server_compute_s"] = r.server.compute;
        stats["num_input_ciphertexts"] = r.num_inputs;
        stats["num_replies"] = r.num_outputs;
        return py::make_tuple(to_array(r.client_out), to_array(r.server_mask), stats);
      },
      py::arg("client_share"), py::arg("weight"), py::arg("shape"), py::arg("ring_bits") = 37,
      py::arg("poly_degree") = 8192, py::arg("max_revealed") = std::uint64_t{1} << 30,
      "Run the offline HE protocol of one linear layer, both parties as threads over an in-memory channel. "
      "shape = (in_channels, in_height, in_width, out_channels, kernel_h, kernel_w, stride, padding, groups); "
      "returns (client_out, server_mask, stats) as flat arrays.");

  py::class_<he::LinearInputs>(m, "HeLinearInputs", "One step's input ciphertexts, as the server received them.")
      .def_property_readonly("nbytes", [](const he::LinearInputs& in) { return in.frame.size(); });

  using ClientSession = Session<he::LinearClient>;
  using ServerSession = Session<he::LinearServer>;
  py::class_<ClientSession>(m, "HeLinearClient",
                            "Client half of an HE linear-layer session over a Channel (one key pair, "
                            "sent as a seeded public key on construction).")
      .def(py::init(&open_session<he::LinearClient>), py::arg("channel"), py::arg("ring_bits") = 37,
           py::arg("max_revealed") = std::uint64_t{1} << 30)
      .def(
          "run",
          [](ClientSession& self, U64Array x, const std::vector<std::size_t>& shape_v) {
            const auto shape = make_shape(shape_v);
            if (static_cast<std::size_t>(x.size()) != shape.input_size()) {
              throw std::invalid_argument("client_share: size does not match the shape");
            }
            std::vector<std::uint64_t> out;
            {
              py::gil_scoped_release release;
              out = self.party->run(shape, x.data());
            }
            return to_array(out);
          },
          py::arg("client_share"), py::arg("shape"),
          "One linear step: returns W x - s (flat) for the client's share x.")
      .def(
          "send",
          [](ClientSession& self, U64Array x, const std::vector<std::size_t>& shape_v) {
            const auto shape = make_shape(shape_v);
            if (static_cast<std::size_t>(x.size()) != shape.input_size()) {
              throw std::invalid_argument("client_share: size does not match the shape");
            }
            py::gil_scoped_release release;
            self.party->send(shape, x.data());
          },
          py::arg("client_share"), py::arg("shape"),
          "First half of run(): encrypt and send x; receive() returns the step's W x - s later.")
      .def(
          "receive",
          [](ClientSession& self) {
            std::vector<std::uint64_t> out;
            {
              py::gil_scoped_release release;
              out = self.party->receive();
            }
            return to_array(out);
          },
          "Second half of run(): W x - s (flat) of the oldest step sent and not yet received.")
      .def_property_readonly("timings", [](const ClientSession& self) { return timings_dict(self.party->timings()); });

  py::class_<ServerSession>(m, "HeLinearServer",
                            "Server half of an HE linear-layer session over a Channel (receives the "
                            "client's public key on construction).")
      .def(py::init(&open_session<he::LinearServer>), py::arg("channel"), py::arg("ring_bits") = 37,
           py::arg("max_revealed") = std::uint64_t{1} << 30)
      .def(
          "run",
          [](ServerSession& self, I64Array w, const std::vector<std::size_t>& shape_v) {
            const auto shape = make_shape(shape_v);
            if (static_cast<std::size_t>(w.size()) != shape.weight_size()) {
              throw std::invalid_argument("weight: size does not match the shape");
            }
            std::vector<std::uint64_t> out;
            {
              py::gil_scoped_release release;
              out = self.party->run(shape, w.data());
            }
            return to_array(out);
          },
          py::arg("weight"), py::arg("shape"), "One linear step: returns the server's mask s (flat).")
      .def(
          "receive",
          [](ServerSession& self, const std::vector<std::size_t>& shape_v) {
            const auto shape = make_shape(shape_v);
            py::gil_scoped_release release;
            return self.party->receive(shape);
          },
          py::arg("shape"), "First half of run(): receive one step's input ciphertexts (held until reply()).")
      .def(
          "reply",
          [](ServerSession& self, const he::LinearInputs& inputs, I64Array w) {
            if (static_cast<std::size_t>(w.size()) != inputs.shape.weight_size()) {
              throw std::invalid_argument("weight: size does not match the shape");
            }
            std::vector<std::uint64_t> out;
            {
              py::gil_scoped_release release;
              out = self.party->reply(inputs, w.data());
            }
            return to_array(out);
          },
          py::arg("inputs"), py::arg("weight"),
          "Second half of run(): compute and send the replies; returns the server's mask s (flat).")
      .def_property_readonly("timings", [](const ServerSession& self) { return timings_dict(self.party->timings()); });

  m.def(
      "inspect_linear",
      [](U64Array x, I64Array w, const std::vector<std::size_t>& shape_v, int ring_bits, std::size_t trials,
         std::uint64_t max_revealed) {
        const auto shape = make_shape(shape_v);
        check_sizes(shape, x, w);
        const auto params = make_params(ring_bits, 8192, std::nullopt, max_revealed);
        he::Inspection r;
        {
          py::gil_scoped_release release;
          r = he::inspect_linear(params, shape, x.data(), w.data(), trials);
        }
        py::dict d;
        d["parms"] = to_bytes(r.parms);
        d["secret_key"] = to_bytes(r.secret_key);
        d["reply"] = to_bytes(r.reply);
        d["expected"] = to_array(r.expected);
        d["decrypted"] = to_array(r.decrypted);
        py::array_t<std::uint32_t> coeffs(static_cast<py::ssize_t>(r.output_coeffs.size()));
        std::copy(r.output_coeffs.begin(), r.output_coeffs.end(), coeffs.mutable_data());
        d["output_coeffs"] = coeffs;
        py::array_t<double> noise(static_cast<py::ssize_t>(r.noise.size()));
        std::copy(r.noise.begin(), r.noise.end(), noise.mutable_data());
        d["noise"] = noise;
        d["unflooded_noise_log2"] = r.unflooded_noise_log2;
        d["product_c1_over_a_log2"] = r.product_c1_over_a_log2;
        d["reply_c1_over_a_log2"] = r.reply_c1_over_a_log2;
        d["limb0_log2"] = r.limb0_log2;
        d["trials"] = r.trials;
        d["failures"] = r.failures;
        d["flood_bits"] = r.flood_bits;
        d["noise_bound_log2"] = r.noise_bound_log2;
        d["max_noise_log2"] = r.max_noise_log2;
        d["top_limbs"] = r.top_limbs;
        d["final_limbs"] = r.final_limbs;
        return d;
      },
      py::arg("client_share"), py::arg("weight"), py::arg("shape"), py::arg("ring_bits") = 37,
      py::arg("trials") = 0, py::arg("max_revealed") = std::uint64_t{1} << 30,
      "Run one linear step's kernels with the secret key in hand and return the inspection record "
      "(SEAL serialisations, expected and decrypted coefficients, noise, c1*a^-1 sizes, decryption failures).");
}

}  // namespace pie::bindings
