// Borrowing contiguous bytes from any Python buffer (bytes, bytearray,
// memoryview, numpy arrays) without copying.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>

namespace pie::bindings {

class BufferView {
 public:
  /// @throws pybind11::type_error if obj is not a C-contiguous buffer
  ///         (or not writable when writable is requested).
  BufferView(pybind11::handle obj, bool writable) {
    const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags) != 0) {
      PyErr_Clear();
      throw pybind11::type_error(writable ? "expected a writable C-contiguous buffer"
                                          : "expected a C-contiguous bytes-like object");
    }
  }
  ~BufferView() { PyBuffer_Release(&view_); }
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;

  std::uint8_t* data() const { return static_cast<std::uint8_t*>(view_.buf); }
  std::size_t size() const { return static_cast<std::size_t>(view_.len); }

 private:
  Py_buffer view_{};
};

/// A new bytes object of n bytes whose contents the caller fills.
inline pybind11::bytes new_bytes(std::size_t n, std::uint8_t** data) {
  PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
  if (obj == nullptr) throw pybind11::error_already_set();
  *data = reinterpret_cast<std::uint8_t*>(PyBytes_AS_STRING(obj));
  return pybind11::reinterpret_steal<pybind11::bytes>(obj);
}

}  // namespace pie::bindings
