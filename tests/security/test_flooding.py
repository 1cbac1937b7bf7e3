"""Flooding covers the real noise of replies.

A reply's noise before flooding (re-randomisation, the product's noise grown
by the weights, the masking) must stay below the bound B that the flood is
sized for (``noise_bound_log2``, from the weights' L1 norm), and B times the
statistical margin must fit the flood (``max_noise_log2``). This measures the
noise of real replies, decrypted in full with the secret key, over many
trials, layer shapes and weight magnitudes up to the largest the HE layer
accepts; the control shows the measurement follows the weights, so a bound
too small by that factor would be caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from pie import he

# (input C, H, W), (output channels, kernel), stride, padding, groups
SHAPES = [
    ((4, 8, 8), (5, 3), 1, 1, 1),
    ((3, 16, 16), (8, 3), 2, 1, 1),
    ((8, 6, 6), (8, 3), 1, 1, 8),  # depthwise
    ((16, 4, 4), (32, 1), 1, 0, 1),
    ((2, 12, 12), (4, 5), 1, 2, 2),
]
TRIALS = 6


def weights(rng: np.random.Generator, shape: tuple, magnitude: int) -> np.ndarray:
    (c, _, _), (o, k), _, _, groups = shape
    w = rng.integers(-magnitude, magnitude + 1, size=(o, c // groups, k, k), dtype=np.int64)
    w.flat[0] = magnitude  # the extreme value occurs
    return w


def measure(shape: tuple, magnitude: int, ring_bits: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    (c, h, w_), _, stride, padding, groups = shape
    x = rng.integers(0, 1 << ring_bits, size=(c, h, w_), dtype=np.uint64)
    return he.inspect_linear(x, weights(rng, shape, magnitude), stride, padding, groups, ring_bits, TRIALS)


@pytest.mark.parametrize("ring_bits", [37, 59])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"shape{i}" for i in range(len(SHAPES))])
def test_measured_noise_before_flooding_stays_below_the_bound(shape: tuple, ring_bits: int) -> None:
    for k, magnitude in enumerate((1, 1 << 8, 1 << 16)):
        r = measure(shape, magnitude, ring_bits, 10 * k + ring_bits)
        assert r["failures"] == 0
        assert r["unflooded_noise_log2"] < r["noise_bound_log2"], (magnitude, r["unflooded_noise_log2"])
        assert r["noise_bound_log2"] <= r["max_noise_log2"]
        # The flood covers B: the flooded noise is within [-1, 1) of the half-width 2^(F-1).
        assert np.abs(r["noise"]).max() <= 1.0


def test_negative_control_the_measurement_follows_the_weights() -> None:
    """The noise of large weights exceeds the bound of small ones: a bound
    computed for the wrong weights would be caught by the test above.

    The encryption randomness is not seeded, so the measured noise varies
    from run to run: over 30 runs the gap was 3.99 to 4.48 bits, and the
    assertion asks for 2, which still means four times the wrong bound."""
    small = measure(SHAPES[0], 1, 37, 1)
    large = measure(SHAPES[0], 1 << 16, 37, 2)
    assert large["unflooded_noise_log2"] > small["noise_bound_log2"] + 2
