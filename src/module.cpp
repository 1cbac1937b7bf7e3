// pie._core: the native half of pie. It is flat (one namespace, one .pyi);
// the Python package groups its names by area (pie.channel, pie.crypto, ...)
// and re-exports the public ones.
#include <pybind11/pybind11.h>

#include "register.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "pie native core: channels, crypto primitives, garbled circuits, OT and HE kernels";
  m.attr("__version__") = PIE_VERSION;
  pie::bindings::register_io(m);
  pie::bindings::register_crypto(m);
  pie::bindings::register_he(m);
  pie::bindings::register_gc(m);
}
