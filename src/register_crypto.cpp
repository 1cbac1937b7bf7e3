#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "buffer.h"
#include "crypto/aes.h"
#include "crypto/hash.h"
#include "crypto/openssl_util.h"
#include "crypto/prg.h"
#include "register.h"

namespace py = pybind11;

namespace pie::bindings {

namespace {

AesBackend parse_backend(const std::optional<std::string>& name) {
  return name ? aes_backend_from_string(*name) : default_aes_backend();
}

Block block_from(py::handle obj, const char* field) {
  BufferView view(obj, false);
  if (view.size() != sizeof(Block)) {
    throw std::invalid_argument(std::string(field) + " must be exactly 16 bytes");
  }
  return Block::from_bytes(view.data());
}

std::size_t block_count(const BufferView& view, const char* field) {
  if (view.size() % sizeof(Block) != 0) {
    throw std::invalid_argument(std::string(field) + ": length must be a multiple of 16 bytes");
  }
  return view.size() / sizeof(Block);
}

}  // namespace

void register_crypto(py::module_& m) {
  m.def("aesni_available", &aesni_available, "True if the CPU and this build support AES-NI.");
  m.def("vaes_available", &vaes_available,
        "True if the CPU and this build support VAES on 512-bit registers (AVX-512F).");
  m.def("default_aes_backend", [] { return to_string(default_aes_backend()); },
        "The AES backend pie uses: 'vaes', 'aes-ni' or 'openssl' (the portable fallback).");
  m.def(
      "aes_backends",
      [] {
        std::vector<std::string> out;
        if (vaes_available()) out.push_back(to_string(AesBackend::kVaes));
        if (aesni_available()) out.push_back(to_string(AesBackend::kAesNi));
        out.push_back(to_string(AesBackend::kOpenSsl));
        return out;
      },
      "The AES backends usable on this machine.");

  py::class_<Aes128>(m, "Aes128", "AES-128 encryption (FIPS-197) under one key.")
      .def(py::init([](py::handle key, std::optional<std::string> backend) {
             return Aes128(block_from(key, "key"), parse_backend(backend));
           }),
           py::arg("key"), py::arg("backend") = py::none())
      .def_property_readonly("backend", [](const Aes128& a) { return to_string(a.backend()); })
      .def(
          "encrypt",
          [](const Aes128& aes, py::handle data) {
            BufferView in(data, false);
            const std::size_t n = block_count(in, "data");
            std::uint8_t* dst = nullptr;
            py::bytes out = new_bytes(in.size(), &dst);
            if (n != 0) {  // an empty vector's data() may be null: no memcpy from it
              py::gil_scoped_release release;
              // Block is 16-byte aligned; Python buffers need not be.
              std::vector<Block> tmp(n);
              std::memcpy(tmp.data(), in.data(), in.size());
              aes.encrypt(tmp.data(), tmp.data(), n);
              std::memcpy(dst, tmp.data(), in.size());
            }
            return out;
          },
          py::arg("data"), "Encrypt whole 16-byte blocks (ECB): returns the ciphertext bytes.")
      .def(
          "encrypt_blocks",
          [](const Aes128& aes, std::size_t n, std::size_t repeat) {
            // Encrypts a buffer of n blocks `repeat` times in place, all native:
            // the throughput benchmark without Python overhead per batch.
            std::vector<Block> buf(n);
            for (std::size_t i = 0; i < n; ++i) buf[i] = Block{i, 0};
            {
              py::gil_scoped_release release;
              for (std::size_t r = 0; r < repeat; ++r) aes.encrypt(buf.data(), buf.data(), n);
            }
            return n == 0 ? std::uint64_t{0} : buf[0].lo ^ buf[n - 1].hi;
          },
          py::arg("n"), py::arg("repeat") = 1,
          "Benchmark helper: encrypt n blocks in place, repeat times; returns a checksum.");

  py::class_<Prg>(m, "Prg", "AES-CTR pseudo-random generator (OS-seeded unless a seed is given).")
      .def(py::init([](py::object seed, std::optional<std::string> backend) {
             if (seed.is_none()) return Prg(parse_backend(backend));
             return Prg(block_from(seed, "seed"), parse_backend(backend));
           }),
           py::arg("seed") = py::none(), py::arg("backend") = py::none())
      .def(
          "random_bytes",
          [](Prg& prg, std::size_t n) {
            std::uint8_t* dst = nullptr;
            py::bytes out = new_bytes(n, &dst);
            py::gil_scoped_release release;
            prg.random_bytes(dst, n);
            return out;
          },
          py::arg("n"));

  py::class_<TccrHash>(m, "TccrHash", R"doc(
Tweakable circular correlation-robust hash H(x, i) = pi(pi(x) ^ i) ^ pi(x),
pi = fixed-key AES-128 (Guo-Katz-Wang-Yu, IEEE S&P 2020, section 7.4).)doc")
      .def(py::init([](std::optional<std::string> backend) { return TccrHash(parse_backend(backend)); }),
           py::arg("backend") = py::none())
      .def_property_readonly("backend", [](const TccrHash& h) { return to_string(h.backend()); })
      .def_static("fixed_key", [] {
        const auto b = TccrHash::fixed_key().bytes();
        return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
      })
      .def(
          "hash",
          [](const TccrHash& h, py::handle x, py::handle tweaks) {
            BufferView xv(x, false);
            BufferView tv(tweaks, false);
            const std::size_t n = block_count(xv, "x");
            if (tv.size() != xv.size()) throw std::invalid_argument("tweaks: must be as long as x");
            std::uint8_t* dst = nullptr;
            py::bytes out = new_bytes(xv.size(), &dst);
            if (n != 0) {  // an empty vector's data() may be null: no memcpy from it
              py::gil_scoped_release release;
              std::vector<Block> xs(n);
              std::vector<Block> ts(n);
              std::memcpy(xs.data(), xv.data(), xv.size());
              std::memcpy(ts.data(), tv.data(), tv.size());
              h.hash(xs.data(), ts.data(), xs.data(), n);
              std::memcpy(dst, xs.data(), xv.size());
            }
            return out;
          },
          py::arg("x"), py::arg("tweaks"), "Hash 16-byte blocks of x under the matching 16-byte tweaks.");

  m.def(
      "sha256",
      [](py::handle data) {
        BufferView v(data, false);
        Sha256Digest d;
        {
          py::gil_scoped_release release;
          d = sha256(v.data(), v.size());
        }
        return py::bytes(reinterpret_cast<const char*>(d.data()), d.size());
      },
      py::arg("data"), "SHA-256 through OpenSSL.");
  m.def(
      "secure_random",
      [](std::size_t n) {
        std::uint8_t* dst = nullptr;
        py::bytes out = new_bytes(n, &dst);
        secure_random(dst, n);
        return out;
      },
      py::arg("n"), "n bytes from OpenSSL's OS-seeded CSPRNG.");
  m.def("openssl_version", &openssl_version);
}

}  // namespace pie::bindings
