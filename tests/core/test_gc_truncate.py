"""The truncation-over-shares circuit and protocol (the Plan's truncate steps)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pie import gc


def truncate_formula(xs: int, xc: int, r: int, l_in: int, l_out: int, shift: int) -> int:
    x = (xs + xc) % (1 << l_in)
    signed = x - (1 << l_in) if x >> (l_in - 1) else x
    return ((signed >> shift) - r) % (1 << l_out)


@given(data=st.data(), l_in=st.integers(2, 64), l_out=st.integers(1, 64))
def test_truncate_circuit_cleartext(data: st.DataObject, l_in: int, l_out: int) -> None:
    shift = data.draw(st.integers(0, l_in - 1))
    xs, xc = (data.draw(st.integers(0, (1 << l_in) - 1)) for _ in range(2))
    r = data.draw(st.integers(0, (1 << l_out) - 1))
    c = gc.truncate_circuit(l_in, l_out, shift)
    assert c.num_and == (l_in - 1) + (l_out - 1)
    assert c.evaluate([xs, xc, r]) == [truncate_formula(xs, xc, r, l_in, l_out, shift)]


@pytest.mark.parametrize(("l_in", "l_out", "shift"), [(59, 40, 20), (48, 59, 12), (20, 20, 0)])
def test_secure_truncate_matches_formula(l_in: int, l_out: int, shift: int) -> None:
    rng = np.random.default_rng(l_in)
    n = 3000
    xs = rng.integers(0, 1 << l_in, n, dtype=np.uint64)
    xc = rng.integers(0, 1 << l_in, n, dtype=np.uint64)
    r = rng.integers(0, 1 << l_out, n, dtype=np.uint64)
    # Edge cases: zero, -1, most negative and most positive values, wrap-around.
    top = (1 << l_in) - 1
    xs[:4] = [0, top, 1 << (l_in - 1), (1 << (l_in - 1)) - 1]
    xc[:4] = [0, 0, 0, 0]
    xs[4], xc[4] = top, 1  # shares wrap to x = 0
    ys, stats = gc.secure_truncate(xs, xc, r, l_in, l_out, shift)
    want = [truncate_formula(int(a), int(b), int(c), l_in, l_out, shift) for a, b, c in zip(xs, xc, r)]
    assert ys.tolist() == want
    assert stats["and_gates_per_relu"] == (l_in - 1) + (l_out - 1)


def test_truncate_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="shift"):
        gc.truncate_circuit(10, 10, 10)
