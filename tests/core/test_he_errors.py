"""Bad input to the HE layer fails with a ValueError that names the problem."""

from __future__ import annotations

import numpy as np
import pytest

from pie import he


def share(shape: tuple[int, ...], ring_bits: int = 37) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint64) + np.uint64(1)


@pytest.mark.parametrize("ring_bits", [0, 1, 60, 64])
def test_ring_bits_out_of_range(ring_bits: int) -> None:
    with pytest.raises(ValueError, match="ring_bits"):
        he.secure_conv2d(share((1, 4, 4)), np.ones((1, 1, 3, 3), dtype=np.int64), ring_bits=ring_bits)
    with pytest.raises(ValueError, match="ring_bits"):
        he.he_parameters(ring_bits)


def test_shape_mismatches() -> None:
    w = np.ones((2, 3, 3, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="channels"):
        he.secure_conv2d(share((4, 5, 5)), w)
    with pytest.raises(ValueError, match="dimensions"):
        he.secure_conv2d(share((5, 5)), w)
    with pytest.raises(ValueError, match="groups"):
        he.secure_conv2d(share((3, 5, 5)), np.ones((2, 1, 3, 3), dtype=np.int64), groups=3)
    with pytest.raises(ValueError, match="kernel"):
        he.secure_conv2d(share((3, 2, 2)), w)
    with pytest.raises(ValueError, match="columns"):
        he.secure_matmul(share((5,)), np.ones((2, 4), dtype=np.int64))


def test_values_out_of_ring() -> None:
    x = share((1, 4, 4))
    x[0, 0, 0] = np.uint64(1 << 37)
    with pytest.raises(ValueError, match="client_share"):
        he.secure_conv2d(x, np.ones((1, 1, 3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="client_share"):
        he.secure_conv2d(-np.ones((1, 4, 4), dtype=np.int64), np.ones((1, 1, 3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="integer"):
        he.secure_conv2d(np.ones((1, 4, 4)), np.ones((1, 1, 3, 3), dtype=np.int64))


def test_weights_that_overflow_the_noise_budget() -> None:
    big = np.full((8, 8, 3, 3), 1 << 57, dtype=np.int64)
    with pytest.raises(ValueError, match="weight.*noise budget"):
        he.secure_conv2d(share((8, 6, 6), 59), big, padding=1, ring_bits=59)
    # Weights are taken mod 2^l (centred), so 2^40 + 1 at l = 37 is just 1.
    x = share((1, 4, 4))
    out, mask, _ = he.secure_conv2d(x, np.full((1, 1, 1, 1), (1 << 40) + 1, dtype=np.int64))
    assert np.array_equal((out + mask) & np.uint64((1 << 37) - 1), x)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"poly_degree": 4096}, "coeff_bits"),  # 218 bits > 109 allowed at N = 4096
        ({"coeff_bits": [60, 60, 60, 60]}, "coeff_bits"),  # 240 > 218
        ({"poly_degree": 4096, "coeff_bits": [36, 36, 37]}, "coeff_bits"),  # secure but too small to flood
        ({"poly_degree": 5000}, "poly_degree"),
        ({"coeff_bits": [60]}, "coeff_bits"),
        ({"max_revealed": 0}, "max_revealed"),
    ],
)
def test_parameters_below_security_or_noise_are_refused(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        he.he_parameters(**kwargs)


def test_session_refuses_to_reveal_more_than_the_flooding_covers() -> None:
    """Binding-layer test: the flooding is sized for max_revealed coefficients
    per key pair, and both parties refuse a step that would exceed it."""
    from pie._native import core

    x = share((1, 4, 4)).ravel()
    w = np.ones(9, dtype=np.int64)
    shape = [1, 4, 4, 1, 3, 3, 1, 1, 1]  # 16 outputs
    with pytest.raises(RuntimeError, match="max_revealed"):
        core.secure_linear(x, w, shape, 37, 8192, 15)
    out, mask, _ = core.secure_linear(x, w, shape, 37, 8192, 16)
    assert out.shape == mask.shape == (16,)
