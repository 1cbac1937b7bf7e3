#include <pybind11/stl.h>

#include "he/seal_check.h"
#include "register.h"

namespace py = pybind11;

namespace pie::bindings {

void register_he(py::module_& m) {
  m.def("seal_version", &he::seal_version, "Version of the SEAL library pie was built with.");
  m.def("bfv_roundtrip", &he::bfv_roundtrip, py::arg("coeffs"), py::arg("plain_bits") = 37,
        py::arg("poly_degree") = 8192, py::call_guard<py::gil_scoped_release>(),
        "Encrypt and decrypt a plaintext polynomial with BFV (t = 2^plain_bits); "
        "returns the decrypted coefficients.");
}

}  // namespace pie::bindings
