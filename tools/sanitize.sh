#!/usr/bin/env bash
# Builds pie._core with AddressSanitizer + UndefinedBehaviorSanitizer into its
# own virtual environment and build folder (build/sanitize/), then runs the
# native-heavy tests (tests/core by default; pass other pytest arguments to
# choose) under it. See README.md, "Sanitizer build".
#
# Environment: SANITIZE_VENV (default build/sanitize/venv), PIE_SANITIZE
# (default address,undefined), CXX (the compiler CMake uses, default c++).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${SANITIZE_VENV:-build/sanitize/venv}
sanitizers=${PIE_SANITIZE:-address,undefined}
cxx=${CXX:-c++}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install torch==2.13.0
fi
"$venv/bin/pip" install -e ".[test]" \
  -Cbuild-dir=build/sanitize/cmake \
  -Ccmake.build-type=RelWithDebInfo \
  -Ccmake.define.PIE_SANITIZE="$sanitizers"

# Python itself is not instrumented, so the ASan runtime must be the first
# library loaded into the process. libstdc++ is preloaded too: the python
# binary does not link it, and ASan's interceptor of C++ throws must find it
# at start-up (otherwise the first exception thrown by pie aborts with
# "real___cxa_throw != 0"). libubsan comes in as the extension's dependency.
asan=$("$cxx" -print-file-name=libasan.so)
stdcxx=$("$cxx" -print-file-name=libstdc++.so)
for lib in "$asan" "$stdcxx"; do
  if [ ! -e "$lib" ]; then
    echo "sanitize.sh: $cxx has no $(basename "$lib")" >&2
    exit 2
  fi
done

# detect_leaks=0: LeakSanitizer would report the interpreter's own
# allocations that CPython deliberately never frees at exit (interned strings,
# static types, module state of numpy and torch), drowning any real report.
# Leaks in pie's C++ are instead guarded by RAII ownership everywhere.
# halt_on_error / abort_on_error: any finding fails the run.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# --capture=sys: pytest must not redirect file descriptor 2, where the
# sanitizers write their reports just before they stop the process.
if [ $# -eq 0 ]; then
  set -- tests/core -q -p no:cacheprovider
fi
LD_PRELOAD="$asan $stdcxx" exec "$venv/bin/python" -m pytest --capture=sys "$@"
