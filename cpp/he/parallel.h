// A parallel loop over OpenMP threads (sequential without OpenMP) that
// carries exceptions out of the parallel region.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>

namespace pie::he {

// Runs body(i) for i in [0, count) over OpenMP threads; an exception thrown
// by any iteration is rethrown here (it must not escape a parallel region).
template <typename Body>
inline void parallel_for(std::size_t count, Body body) {
  std::exception_ptr error;
  const auto count_i = static_cast<std::int64_t>(count);
#ifdef PIE_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic)
#endif
  for (std::int64_t i = 0; i < count_i; ++i) {
    try {
      body(static_cast<std::size_t>(i));
    } catch (...) {
#ifdef PIE_HAVE_OPENMP
#pragma omp critical(pie_he_parallel_error)
#endif
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace pie::he
