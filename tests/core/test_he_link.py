"""The SEAL dependency is linked and usable (the HE layers are tested elsewhere)."""

from __future__ import annotations

import random

import pytest

from pie import he


def test_seal_version_is_pinned_41() -> None:
    major, minor, _ = he.seal_version().split(".")
    assert (major, minor) == ("4", "1")


@pytest.mark.parametrize(("bits", "degree"), [(2, 4096), (37, 8192), (59, 8192)])
def test_bfv_roundtrip(bits: int, degree: int) -> None:
    rng = random.Random(bits)
    coeffs = [rng.randrange(1 << bits) for _ in range(degree)]
    coeffs[0], coeffs[-1] = 0, (1 << bits) - 1  # extremes
    assert he.bfv_roundtrip(coeffs, plain_bits=bits, poly_degree=degree) == coeffs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"coeffs": [1], "plain_bits": 60}, "plain_bits"),
        ({"coeffs": [1], "plain_bits": 1}, "plain_bits"),
        ({"coeffs": [1], "poly_degree": 1000}, "poly_degree"),
        ({"coeffs": [1 << 37], "plain_bits": 37}, "coeffs"),
        ({"coeffs": [0] * 4097, "poly_degree": 4096}, "coeffs"),
    ],
)
def test_bfv_roundtrip_rejects_bad_parameters(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        he.bfv_roundtrip(**kwargs)
