"""Shared pieces of the fuzzers: run length, byte mutations, outcome checks.

The default test run tries ``PIE_FUZZ_EXAMPLES`` inputs per fuzz target
(default 20, derandomised so the run is reproducible). A long run sets a
larger count, which also switches to fresh random inputs on every run::

    PIE_FUZZ_EXAMPLES=5000 python -m pytest tests/security -k fuzz \
        -p no:cacheprovider --hypothesis-show-statistics
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DEFAULT_EXAMPLES = 20
EXAMPLES = int(os.environ.get("PIE_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))
LONG_RUN = "PIE_FUZZ_EXAMPLES" in os.environ

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(scale: float = 1.0) -> Callable[[F], F]:
    """Hypothesis settings of a fuzz target: ``scale * PIE_FUZZ_EXAMPLES``
    examples, no deadline, no example database (nothing written to disk)."""
    return settings(  # type: ignore[return-value]
        max_examples=max(1, int(EXAMPLES * scale)),
        deadline=None,
        database=None,
        derandomize=not LONG_RUN,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


# Values that tend to break length and count fields.
INTERESTING_U64 = [0, 1, 2, 3, 7, 8, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                   1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


@st.composite
def mutation(draw: st.DrawFn, data: bytes, *, focus: int | None = None) -> bytes:
    """``data`` changed by one to four random edits: bit flips, byte writes,
    truncation, insertion, deletion, duplication of a range, or a little-endian
    64/32-bit field overwritten with a boundary value. ``focus`` biases edit
    positions towards the first ``focus`` bytes (headers and length fields)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        n = len(out)
        limit = n if focus is None or draw(st.booleans()) else min(n, focus)
        pos = draw(st.integers(0, max(limit - 1, 0)))
        op = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "dup",
                                   "u64", "u32"]))
        if op == "flip" and n:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and n:
            out[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete" and n:
            del out[pos:pos + draw(st.integers(1, 64))]
        elif op == "dup" and n:
            out[pos:pos] = out[pos:pos + draw(st.integers(1, 64))]
        elif op in ("u64", "u32") and n:
            size = 8 if op == "u64" else 4
            value = draw(st.sampled_from(INTERESTING_U64)) & ((1 << (8 * size)) - 1)
            out[pos:pos + size] = struct.pack("<Q" if size == 8 else "<I", value)
    return bytes(out)


def check_raises_only(allowed: tuple[type[BaseException], ...], call: Callable[[], Any]) -> Any:
    """Run ``call``; return its result, or None if it raised one of ``allowed``.
    Any other exception propagates, so hypothesis reports (and shrinks) it."""
    try:
        return call()
    except allowed:
        return None
