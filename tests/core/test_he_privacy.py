"""Circuit privacy and decryption correctness of server replies, checked with
the client's secret key in hand (pie.he.inspect_linear), and the independent
decryption of an exported reply by the seal-python wheel."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pie import he
from statutil import ks_critical, ks_statistic

N = 8192


def small_conv(seed: int, weight_bits: int, ring_bits: int = 37) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 16, size=(2, 8, 8), dtype=np.uint64)  # small: unmasked partial sums would be small too
    w = rng.integers(-(1 << weight_bits), 1 << weight_bits, size=(3, 2, 3, 3), dtype=np.int64)
    return x, w


def test_reply_noise_does_not_depend_on_the_weights() -> None:
    x, w_small = small_conv(1, 2)
    _, w_large = small_conv(2, 35)
    a = he.inspect_linear(x, w_small, padding=1)
    b = he.inspect_linear(x, w_large, padding=1)
    assert b["noise_bound_log2"] > a["noise_bound_log2"] + 20  # very different computed noise ...
    # ... yet the full decrypted noise (c0 + c1*s - Delta*m, over the flood's
    # half-width) has one distribution, uniform on [-1, 1).
    crit = ks_critical(N, N)
    assert ks_statistic(a["noise"], b["noise"]) < crit
    uniform = np.linspace(-1, 1, N, endpoint=False) + 1 / N
    assert ks_statistic(a["noise"], uniform) < crit
    assert ks_statistic(b["noise"], uniform) < crit
    assert np.abs(a["noise"]).max() <= 1.0 and np.abs(b["noise"]).max() <= 1.0


def test_non_output_coefficients_decrypt_to_uniform_values() -> None:
    x, w = small_conv(3, 4)
    rec = he.inspect_linear(x, w, padding=1)
    assert np.array_equal(rec["decrypted"], rec["expected"])
    others = np.setdiff1d(np.arange(N), rec["output_coeffs"])
    top = (rec["decrypted"][others] >> np.uint64(37 - 8)).astype(np.int64)  # top 8 bits of each value
    counts = np.bincount(top, minlength=256)
    expected = others.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400  # 255 degrees of freedom: p < 1e-8 beyond this


def test_reply_second_half_is_rerandomised() -> None:
    """Regression for the a*W leak: with one input ciphertext, the bare
    product's c1 is a*W, so c1 * a^-1 is the short weight polynomial; the
    reply's c1 * a^-1 must look uniform mod q."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 1 << 37, size=(2, 6, 6), dtype=np.uint64)
    w = rng.integers(-100, 100, size=(3, 2, 3, 3), dtype=np.int64)
    rec = he.inspect_linear(x, w, padding=1)
    assert rec["product_c1_over_a_log2"] <= math.log2(100 + 1) + 1e-9  # the detector sees W ...
    assert rec["reply_c1_over_a_log2"] > rec["limb0_log2"] - 2  # ... and nothing short in the reply


def test_exact_kept_coefficients_on_the_wire() -> None:
    """Only c1 and the output coefficients of c0 travel (final level)."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 1 << 37, size=(4, 8, 8), dtype=np.uint64)
    w = rng.integers(-8, 8, size=(5, 4, 3, 3), dtype=np.int64)
    _, _, stats = he.secure_conv2d(x, w, padding=1)
    limbs = he.he_parameters(37)["final_limbs"]
    outputs = 5 * 8 * 8
    frame_header = 12
    assert stats["bytes_server_to_client"] == frame_header + 8 * limbs * (stats["num_replies"] * N + outputs)


def test_modulus_levels_hold_the_flood_and_the_switched_reply() -> None:
    """The flood's measured sufficiency is tests/security/test_flooding.py."""
    for ring in (37, 48, 59):
        p = he.he_parameters(ring)
        # |B + f| <= 2^F <= q / (8t) at the top level
        assert p["flood_bits"] <= math.floor(p["top_modulus_bits"]) - ring - 3
        # the final level holds 8 t (N + 1)
        assert p["final_modulus_bits"] >= ring + 3 + math.log2(N + 1)
        assert p["top_modulus_bits"] + 38 <= 218


def test_decryption_correct_in_1000_trials_at_the_tightest_parameters() -> None:
    ring = 59
    budget = he.he_parameters(ring)["max_weight_l1"]
    x = np.random.default_rng(6).integers(0, 1 << ring, size=(1, 3, 3), dtype=np.uint64)
    w = np.full((1, 1, 3, 3), int(budget // 9), dtype=np.int64)
    w[0, 0, 1, 1] = -w[0, 0, 1, 1]
    rec = he.inspect_linear(x, w, padding=1, ring_bits=ring, trials=1000)
    assert rec["max_noise_log2"] - rec["noise_bound_log2"] < 0.01  # at the edge of the budget
    assert rec["trials"] == 1000 and rec["failures"] == 0
    with pytest.raises(ValueError, match="weight"):
        he.inspect_linear(x, w * 2, padding=1, ring_bits=ring)


ORACLE = textwrap.dedent(
    """
    import re, sys
    import numpy as np
    import seal
    folder = sys.argv[1]
    parms = seal.EncryptionParameters(seal.scheme_type.bfv)
    parms.load(folder + "/parms.bin")
    ctx = seal.SEALContext(parms)
    assert ctx.parameters_set(), ctx.parameter_error_message()
    sk = seal.SecretKey()
    sk.load(ctx, folder + "/secret_key.bin")
    ct = seal.Ciphertext()
    ct.load(ctx, folder + "/reply.bin")
    plain = seal.Decryptor(ctx, sk).decrypt(ct)
    coeffs = np.zeros(parms.poly_modulus_degree(), dtype=np.uint64)
    for term in plain.to_string().split(" + "):
        m = re.fullmatch(r"([0-9A-F]+)(?:x\\^(\\d+))?", term)
        coeffs[int(m.group(2) or 0)] = int(m.group(1), 16)
    np.save(folder + "/decrypted.npy", coeffs)
    """
)


@pytest.mark.parametrize("ring_bits", [37, 59])
def test_seal_python_decrypts_an_exported_reply(tmp_path: Path, ring_bits: int) -> None:
    pytest.importorskip("seal")
    rng = np.random.default_rng(ring_bits)
    x = rng.integers(0, 1 << ring_bits, size=(3, 7, 7), dtype=np.uint64)
    w = rng.integers(-64, 64, size=(4, 3, 3, 3), dtype=np.int64)
    folder = he.export_for_inspection(tmp_path / "export", x, w, padding=1, ring_bits=ring_bits)
    assert {p.name for p in folder.iterdir()} == {"parms.bin", "secret_key.bin", "reply.bin", "expected.npy"}
    # A separate interpreter: seal-python carries its own SEAL build.
    subprocess.run([sys.executable, "-c", ORACLE, str(folder)], check=True, timeout=120)
    decrypted = np.load(folder / "decrypted.npy")
    expected = np.load(folder / "expected.npy")
    assert expected.shape == (N,) and expected.dtype == np.uint64
    assert np.array_equal(decrypted, expected)
    # SEAL header: magic 0xA15E, header size 16, version 4.1, compression mode 0 (none)
    assert (folder / "reply.bin").read_bytes()[:6] == bytes([0x5E, 0xA1, 0x10, 4, 1, 0])
