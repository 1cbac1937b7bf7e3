// One register_<area>() per binding file; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace pie::bindings {

void register_io(pybind11::module_& m);
void register_crypto(pybind11::module_& m);
void register_he(pybind11::module_& m);
void register_gc(pybind11::module_& m);

}  // namespace pie::bindings
