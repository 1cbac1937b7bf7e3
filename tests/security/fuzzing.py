"""Shared pieces of the fuzzers: run length, byte mutations, outcome checks.

The default test run tries ``PIE_FUZZ_EXAMPLES`` inputs per fuzz target
(default 20, derandomised so the run is reproducible). A long run sets a
larger count, which also switches to fresh random inputs on every run::

    PIE_FUZZ_EXAMPLES=5000 python -m pytest tests/security -k fuzz \
        -p no:cacheprovider --hypothesis-show-statistics
"""

from __future__ import annotations

import os
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


Edit = tuple[str, int, int, bool, bytes]


@st.composite
def edits(draw: st.DrawFn) -> list[Edit]:
    """One to four random edits for :func:`mutate`: bit flips, byte writes,
    truncation, insertion, deletion, duplication of a range, or a little-endian
    64/32-bit field overwritten with a boundary value. Drawn independently of
    the data they will change, so a failing example replays exactly."""
    ops = ["flip", "byte", "truncate", "insert", "delete", "dup", "u64", "u32"]
    return [
        (draw(st.sampled_from(ops)), draw(st.integers(0, (1 << 32) - 1)), draw(st.integers(0, 255)),
         draw(st.booleans()), draw(st.binary(min_size=1, max_size=64)))
        for _ in range(draw(st.integers(1, 4)))
    ]


def mutate(data: bytes, changes: list[Edit], focus: int | None = None) -> bytes:
    """Apply ``changes`` to ``data``. With ``focus``, about half of the edits
    land in the first ``focus`` bytes (headers, counts and length fields)."""
    out = bytearray(data)
    for op, where, arg, focused, blob in changes:
        n = len(out)
        limit = min(n, focus) if focus is not None and focused else n
        pos = where % limit if limit else 0
        if op == "flip" and n:
            out[pos] ^= 1 << (arg % 8)
        elif op == "byte" and n:
            out[pos] = arg
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = blob
        elif op == "delete" and n:
            del out[pos:pos + 1 + arg % 64]
        elif op == "dup" and n:
            out[pos:pos] = out[pos:pos + 1 + arg % 64]
        elif op in ("u64", "u32") and n:
            size = 8 if op == "u64" else 4
            value = INTERESTING_U64[arg % len(INTERESTING_U64)] & ((1 << (8 * size)) - 1)
            out[pos:pos + size] = value.to_bytes(size, "little")
    return bytes(out)


#: Calls made by unpickling a hostile test object (see ``record_call``).
CALLS: list[str] = []


def record_call(what: str) -> None:
    """What a hostile pickle in the tests invokes: a loader that refuses it
    never gets here."""
    CALLS.append(what)
