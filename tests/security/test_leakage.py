"""Statistical leakage tests: what each party receives does not depend on the
other party's secret.

- The server's view across two client inputs: the masked input and the
  colour bits of the garbled outputs, recorded on the wire of real sessions.
- The client's view across two weight sets of one public Plan: the garbled
  tables and the labels of the server's shares (recorded on the wire), the
  HE output shares ``W x_c - s``, and the full decrypted noise of HE replies
  (``c0 + c1*sk - Delta*m``, the place where flooding shows; byte statistics
  of ciphertexts cannot show it).

Every test has a fixed seed where it draws its own data, and thresholds at
p ~ 1e-6, so a correct implementation fails with negligible probability;
negative controls plant a leak (a mask with missing bits, an unmasked share,
unmasked output bits) and show the same detector flags it.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from fuzzing import Relay
from statutil import same_distribution
from torch import nn

import pie
from pie import he
from pie.plan import ConvTerm, FCTerm, LinearStep, Plan
from pie.protocol import engine, wire
from pie.serve import SessionLog, query, serve_forever

SHAPE = (3, 8, 8)
SESSIONS = 6  # recorded sessions per (weights, input) pair
HEADER = struct.Struct("<IQ")
GC_BATCH = 0x47430001  # garbled tables follow: tweak base, n, AND gates, block
GC_ONLINE = 0x47430003  # labels of the server's shares follow: batch id, n
Z = 4.89  # two-sided normal quantile at p = 1e-6


# ------------------------------------------------------------------ detectors


def chi2_critical(df: int, z: float = Z) -> float:
    """Upper quantile of chi-square(df) at the normal quantile z (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def uniform_top_bits(values: np.ndarray, bits: int, k: int = 4) -> float:
    """Chi-square statistic of the top k bits of ring elements mod 2^bits."""
    top = (values.astype(np.uint64) >> np.uint64(bits - k)).astype(np.int64)
    counts = np.bincount(top, minlength=1 << k)
    expected = values.size / (1 << k)
    return float(((counts - expected) ** 2 / expected).sum())


def looks_uniform(values: np.ndarray, bits: int, k: int = 4) -> bool:
    return uniform_top_bits(values, bits, k) < chi2_critical((1 << k) - 1)


def bit_counts(data: bytes, width: int = 16) -> tuple[np.ndarray, int]:
    """Ones per bit position of ``width``-byte words, and the number of words."""
    words = np.frombuffer(data[: len(data) // width * width], dtype=np.uint8).reshape(-1, width)
    return np.unpackbits(words, axis=1).sum(axis=0), words.shape[0]


def bits_uniform(data: bytes, width: int = 16) -> bool:
    """Every bit position of the words is 1 half the time (chi-square, 8*width df)."""
    ones, n = bit_counts(data, width)
    stat = float(((ones - n / 2) ** 2 / (n / 4)).sum())
    return stat < chi2_critical(ones.size)


def bits_alike(a: bytes, b: bytes, width: int = 16) -> bool:
    """The bit frequencies of two samples agree per position (chi-square, 8*width df)."""
    ca, na = bit_counts(a, width)
    cb, nb = bit_counts(b, width)
    pooled = (ca + cb) / (na + nb)
    var = pooled * (1 - pooled) * (1 / na + 1 / nb)
    diff = ca / na - cb / nb
    keep = var > 0
    if not np.array_equal(diff[~keep], np.zeros((~keep).sum())):
        return False  # a position constant in both samples, but not the same constant
    stat = float((diff[keep] ** 2 / var[keep]).sum())
    return stat < chi2_critical(max(int(keep.sum()), 1))


# ------------------------------------------------------------------ sessions


def plan_pair() -> tuple[Plan, Plan]:
    """Two weight sets behind one public Plan: the second negates every weight
    and bias (same magnitudes, so the public scales and rings still fit)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5)).eval()
    a = pie.compile(net, SHAPE)
    steps: list[Any] = []
    for s in a.steps:
        if isinstance(s, LinearStep):
            terms: list[Any] = []
            for t in s.terms:
                if isinstance(t, ConvTerm):
                    terms.append(ConvTerm(t.input, t.weight_shape, t.stride, t.padding, t.groups, t.frac_w,
                                          -t.weight))
                elif isinstance(t, FCTerm):
                    terms.append(FCTerm(t.input, t.weight_shape, t.frac_w, -t.weight))
                else:
                    terms.append(t)
            steps.append(LinearStep(s.output, terms, s.source, -s.bias))
        else:
            steps.append(s)
    b = Plan(a.input, a.pixel_max, a.tensors, steps, a.policy, a.private)
    assert b.digest() == a.digest()
    return a, b


@dataclass
class View:
    """The byte streams of recorded sessions."""

    client: list[bytes]  # what the server received
    server: list[bytes]  # what the client received


def record(plan: Plan, x: np.ndarray, sessions: int = SESSIONS) -> View:
    listener = pie.TcpListener("127.0.0.1", 0)
    log, stop = SessionLog(), threading.Event()
    loop = threading.Thread(target=serve_forever, args=(pie.Server(plan, threads=1), listener, None, stop, log))
    loop.start()
    view = View([], [])
    try:
        for _ in range(sessions):
            relay = Relay(listener.port)
            with pie.tcp_connect("127.0.0.1", relay.port) as channel:
                query(channel, x, threads=1)
            relay.close()
            view.client.append(bytes(relay.client_bytes))
            view.server.append(bytes(relay.server_bytes))
        assert log.wait_for(sessions, 30) and log.counts()["ok"] == sessions
    finally:
        stop.set()
        loop.join()
        listener.close()
    return view


def after(stream: bytes, frame_type: int, payload: int) -> int:
    """Offset just past the (unique) frame header of that type and payload size."""
    pattern = HEADER.pack(frame_type, payload)
    at = stream.find(pattern)
    assert at >= 0 and stream.find(pattern, at + 1) < 0, f"frame {frame_type:#x} not found once"
    return at + HEADER.size


def masked_input(plan: Plan, stream: bytes) -> np.ndarray:
    n = plan.tensors[plan.input].numel
    at = after(stream, wire.MASKED_INPUT, 8 * n)
    return np.frombuffer(stream[at:at + 8 * n], dtype="<u8")


def colour_bits(plan: Plan, stream: bytes) -> bytes:
    """The client's garbled-circuit reply: one colour bit per output wire,
    packed, right after the masked input (one ReLU step, one round)."""
    n = plan.tensors[plan.input].numel
    start = after(stream, wire.MASKED_INPUT, 8 * n) + 8 * n
    relu = next(s for s in plan.steps if s.kind == "relu")
    out = plan.tensors[relu.output]
    return stream[start:start + (out.numel * out.ring_bits + 7) // 8]


def garbled_tables(stream: bytes) -> bytes:
    at = after(stream, GC_BATCH, 32)
    _, n, and_gates, _ = struct.unpack("<4Q", stream[at:at + 32])
    return stream[at + 32:at + 32 + 32 * and_gates * n]


def server_labels(plan: Plan, stream: bytes) -> bytes:
    at = after(stream, GC_ONLINE, 16) + 16
    relu = next(s for s in plan.steps if s.kind == "relu")
    src = plan.tensors[relu.input]
    return stream[at:at + 16 * src.numel * src.ring_bits]


@pytest.fixture(scope="module")
def plans() -> tuple[Plan, Plan]:
    return plan_pair()


INPUTS = (np.zeros(SHAPE), np.ones(SHAPE))


@pytest.fixture(scope="module")
def views(plans: tuple[Plan, Plan]) -> dict[str, View]:
    a, b = plans
    return {"A0": record(a, INPUTS[0]), "A1": record(a, INPUTS[1]), "B0": record(b, INPUTS[0])}


# --------------------------------------------------- the server's view (inputs)


def test_masked_input_is_uniform_and_independent_of_the_input(plans: tuple[Plan, Plan],
                                                              views: dict[str, View]) -> None:
    plan = plans[0]
    bits = plan.tensors[plan.input].ring_bits
    x0 = np.concatenate([masked_input(plan, s) for s in views["A0"].client])
    x1 = np.concatenate([masked_input(plan, s) for s in views["A1"].client])
    assert x0.max() < (1 << bits) and x1.max() < (1 << bits)
    assert looks_uniform(x0, bits) and looks_uniform(x1, bits)
    assert same_distribution(x0 / 2.0**bits, x1 / 2.0**bits)


def test_colour_bits_are_uniform_and_independent_of_the_input(plans: tuple[Plan, Plan],
                                                              views: dict[str, View]) -> None:
    plan = plans[0]
    c0 = b"".join(colour_bits(plan, s) for s in views["A0"].client)
    c1 = b"".join(colour_bits(plan, s) for s in views["A1"].client)
    assert bits_uniform(c0, 1) and bits_uniform(c1, 1)
    assert bits_alike(c0, c1, 1)


def test_negative_control_a_weak_input_mask_is_detected(plans: tuple[Plan, Plan],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a leak: the client's masks keep only 8 random bits, so ``x - r``
    says whether a pixel is 0 or 255. The same detectors must flag it."""
    plan = plans[0]
    bits = plan.tensors[plan.input].ring_bits
    honest = engine._random_ring
    monkeypatch.setattr(engine, "_random_ring", lambda shape, b: honest(shape, b) >> np.uint64(b - 8))
    x0 = np.concatenate([masked_input(plan, s) for s in record(plan, INPUTS[0], 2).client])
    x1 = np.concatenate([masked_input(plan, s) for s in record(plan, INPUTS[1], 2).client])
    assert not looks_uniform(x1, bits)
    assert not same_distribution(x0 / 2.0**bits, x1 / 2.0**bits)


def test_negative_control_unmasked_output_bits_are_detected(plans: tuple[Plan, Plan]) -> None:
    """Had the client returned the ReLU's output bits instead of colour bits,
    the colour-bit detectors would flag them."""
    plan = plans[0]
    relu = next(s for s in plan.steps if s.kind == "relu")
    bits = plan.tensors[relu.output].ring_bits
    rng = np.random.default_rng(1)
    outs = []
    for lo in (0.0, 0.9):
        x = rng.uniform(lo, lo + 0.1, size=(SESSIONS, *SHAPE))
        y = plan.run_reference_int(plan.encode_input(x), return_all=True)[relu.output]
        wires = (y.reshape(-1, 1) >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
        outs.append(np.packbits(wires.astype(np.uint8).reshape(-1), bitorder="little").tobytes())
    assert not (bits_uniform(outs[0], 1) and bits_uniform(outs[1], 1) and bits_alike(outs[0], outs[1], 1))


# --------------------------------------------------- the client's view (weights)


def test_garbled_tables_are_uniform_and_independent_of_the_weights(views: dict[str, View]) -> None:
    ta = b"".join(garbled_tables(s) for s in views["A0"].server)
    tb = b"".join(garbled_tables(s) for s in views["B0"].server)
    assert len(ta) == len(tb) > 0
    assert bits_uniform(ta) and bits_uniform(tb)
    assert bits_alike(ta, tb)


def test_labels_of_the_server_shares_are_uniform_and_independent_of_the_weights(
        plans: tuple[Plan, Plan], views: dict[str, View]) -> None:
    la = b"".join(server_labels(plans[0], s) for s in views["A0"].server)
    lb = b"".join(server_labels(plans[1], s) for s in views["B0"].server)
    assert len(la) == len(lb) > 0
    assert bits_uniform(la) and bits_uniform(lb)
    assert bits_alike(la, lb)


def test_negative_control_unmasked_server_values_are_detected(plans: tuple[Plan, Plan]) -> None:
    """Had the server sent (labels of) its unmasked pre-activations W x + b,
    the two weight sets would be told apart: the detectors see the sign."""
    rng = np.random.default_rng(2)
    x = plans[0].encode_input(rng.uniform(0.4, 0.6, size=(SESSIONS, *SHAPE)))
    relu = next(s for s in plans[0].steps if s.kind == "relu")
    raw = [p.run_reference_int(x, return_all=True)[relu.input].astype("<u8").tobytes() for p in plans]
    assert not bits_alike(raw[0], raw[1], 8)


@pytest.fixture(scope="module")
def conv_case(plans: tuple[Plan, Plan]) -> dict[str, Any]:
    """The plan's convolution under both weight sets, on one client share."""
    a, b = plans
    conv = next(s for s in a.steps if isinstance(s, LinearStep))
    term = conv.terms[0]
    bits = a.tensors[conv.output].ring_bits
    # A small client share: unmasked outputs W x would be small too (and the
    # client chooses its share, so it may choose one like this).
    x = np.random.default_rng(3).integers(0, 16, size=SHAPE, dtype=np.uint64)
    wb = next(s for s in b.steps if isinstance(s, LinearStep)).terms[0].weight
    return {"x": x, "w": (term.weight, wb), "bits": bits, "padding": term.padding[0]}


def test_he_output_shares_are_uniform_and_independent_of_the_weights(conv_case: dict[str, Any]) -> None:
    x, bits, p = conv_case["x"], conv_case["bits"], conv_case["padding"]
    shares, plain = [], []
    for w in conv_case["w"]:
        out, mask, _ = he.secure_conv2d(x, w, padding=p, ring_bits=bits)
        shares.append(np.concatenate([out.ravel()] + [
            he.secure_conv2d(x, w, padding=p, ring_bits=bits)[0].ravel() for _ in range(3)]))
        plain.append(((out + mask) & np.uint64((1 << bits) - 1)).ravel())
    assert looks_uniform(shares[0], bits) and looks_uniform(shares[1], bits)
    assert same_distribution(shares[0] / 2.0**bits, shares[1] / 2.0**bits)
    # Negative control: unmasked outputs W x are flagged (for either weight set).
    assert not looks_uniform(plain[0], bits) and not looks_uniform(plain[1], bits)


def test_he_reply_noise_is_the_same_for_both_weight_sets(conv_case: dict[str, Any]) -> None:
    """The full decrypted noise of a reply (divided by the flooding half-width)
    is uniform on [-1, 1) for both weight sets of the public Plan; see
    tests/core/test_he_privacy.py for weights of very different magnitudes."""
    x, bits, p = conv_case["x"], conv_case["bits"], conv_case["padding"]
    noise = [he.inspect_linear(x, w, padding=p, ring_bits=bits)["noise"] for w in conv_case["w"]]
    assert same_distribution(noise[0], noise[1])
    grid = np.linspace(-1, 1, noise[0].size, endpoint=False) + 1 / noise[0].size
    assert same_distribution(noise[0], grid) and same_distribution(noise[1], grid)
    # Negative control: a flood only 20% narrower is already flagged.
    assert not same_distribution(noise[0], 0.8 * noise[1])
