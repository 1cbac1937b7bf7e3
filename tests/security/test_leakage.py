"""Statistical leakage tests: what each party can compute from its view does
not depend on the other party's secret.

- The server's view across client inputs (real sessions): the masked input
  (recorded on the wire over TCP), and the shares the server decodes from the
  garbled circuits, ``y_s = f(x) - r``, per session and between sessions.
  (Colour bits and labels on the wire are XORed with the server's own
  secrets, so testing those bytes could not detect a leak; ``y_s`` is what
  the server computes from them.)
- Freshness: the input mask, the ReLU output masks and the HE masks ``s``
  differ between sessions of one Server/Client pair.
- The client's view across two weight sets of one public Plan: the HE output
  shares ``W x_c - s`` and the full decrypted noise of HE replies
  (``c0 + c1*sk - Delta*m``, the place where flooding shows).

Every test has a fixed seed where it draws its own data, and thresholds at
p ~ 1e-6, so a correct implementation fails with negligible probability.
Each detector has a planted-leak control that runs the real protocol with
the leak planted (masks forced to zero, reused across sessions, a weak input
mask) and must be flagged by the same detector.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
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
from pie.protocol import client as client_module
from pie.protocol import wire
from pie.serve import SessionLog, query, serve_forever

SHAPE = (3, 8, 8)
SESSIONS = 6  # recorded sessions per (weights, input) pair
HEADER = struct.Struct("<IQ")
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


@pytest.fixture(scope="module")
def plans() -> tuple[Plan, Plan]:
    return plan_pair()


INPUTS = (np.zeros(SHAPE), np.ones(SHAPE))


@pytest.fixture(scope="module")
def views(plans: tuple[Plan, Plan]) -> dict[str, View]:
    a, b = plans
    return {"A0": record(a, INPUTS[0]), "A1": record(a, INPUTS[1])}


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


def test_negative_control_a_weak_input_mask_is_detected(plans: tuple[Plan, Plan],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a leak: the client's masks keep only 8 random bits, so ``x - r``
    says whether a pixel is 0 or 255. The same detectors must flag it."""
    plan = plans[0]
    bits = plan.tensors[plan.input].ring_bits
    honest = client_module._random_ring
    monkeypatch.setattr(client_module, "_random_ring", lambda shape, b: honest(shape, b) >> np.uint64(b - 8))
    x0 = np.concatenate([masked_input(plan, s) for s in record(plan, INPUTS[0], 2).client])
    x1 = np.concatenate([masked_input(plan, s) for s in record(plan, INPUTS[1], 2).client])
    assert not looks_uniform(x1, bits)
    assert not same_distribution(x0 / 2.0**bits, x1 / 2.0**bits)


# ------------------------------------- what the server decodes (real sessions)


@dataclass
class Trace:
    """What one real in-process session exposed: the masked input and the
    shares ``y_s`` the server decoded (one array per garbled step), the
    server's HE masks ``s`` and every mask the client drew."""

    masked_input: np.ndarray | None = None
    y_s: list[np.ndarray] = field(default_factory=list)
    he_masks: dict[int, np.ndarray] = field(default_factory=dict)
    client_masks: list[np.ndarray] = field(default_factory=list)
    logits: np.ndarray | None = None


class _Decoded:
    """A ReLU server that also hands the shares it decodes to the trace."""

    def __init__(self, inner: Any, log: list[np.ndarray]) -> None:
        self._inner, self._log = inner, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def finish(self, material: Any) -> np.ndarray:
        y = self._inner.finish(material)
        self._log.append(np.array(y, dtype=np.uint64))
        return y


def _record_masked_input(session: Any, trace: Trace) -> None:
    """Let the server session hand the masked input it receives to the trace."""
    receive = session.wire.server_request

    def recorded(limit: int) -> tuple[int, Any]:
        kind, arg = receive(limit)
        if kind == wire.MASKED_INPUT:
            trace.masked_input = np.frombuffer(arg, dtype="<u8").copy()
        return kind, arg

    session.wire.server_request = recorded


Draw = Callable[[tuple[int, ...], int], np.ndarray]


def run_traced(server: pie.Server, client: pie.Client, x: np.ndarray,
               monkeypatch: pytest.MonkeyPatch, draw: Draw | None = None) -> Trace:
    """One real session (threads over the in-memory channel); ``draw``
    replaces the client's mask source (a planted leak) when given."""
    trace = Trace()
    source = draw or client_module._random_ring

    def recorded(shape: tuple[int, ...], bits: int) -> np.ndarray:
        r = source(shape, bits)
        trace.client_masks.append(r.copy())
        return r

    monkeypatch.setattr(client_module, "_random_ring", recorded)
    s_end, c_end = pie.memory_pair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            session = server.session(s_end)
            session._gc = {k: _Decoded(v, trace.y_s) for k, v in session._gc.items()}
            _record_masked_input(session, trace)
            session.offline()
            trace.he_masks = {i: m.copy() for i, m in session._ready[0].masks.items()}
            session.online()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)
            s_end.close()

    worker = threading.Thread(target=serve)
    worker.start()
    trace.logits, _ = client.infer(c_end, x)
    worker.join(60)
    monkeypatch.undo()
    assert not errors
    return trace


def traces(plan: Plan, x: np.ndarray, monkeypatch: pytest.MonkeyPatch, draw: Draw | None = None,
           sessions: int = SESSIONS) -> list[Trace]:
    server, client = pie.Server(plan, threads=1), pie.Client(plan.public(), threads=1)
    return [run_traced(server, client, x, monkeypatch, draw) for _ in range(sessions)]


def relu_bits(plan: Plan) -> int:
    relu = next(s for s in plan.steps if s.kind == "relu")
    return plan.tensors[relu.output].ring_bits


def decoded_shares_leak(a: list[Trace], b: list[Trace], bits: int) -> bool:
    """The server's decoded shares are not uniform, or their distribution
    depends on the input (sessions ``a`` against sessions ``b``)."""
    ya = np.concatenate([y for t in a for y in t.y_s])
    yb = np.concatenate([y for t in b for y in t.y_s])
    return not (looks_uniform(ya, bits) and looks_uniform(yb, bits)
                and same_distribution(ya / 2.0**bits, yb / 2.0**bits))


def sessions_linked(values: list[np.ndarray], bits: int) -> bool:
    """Values of consecutive sessions are not independent: their difference
    mod 2^bits is not uniform (a reused mask cancels in it)."""
    diffs = np.concatenate([(b.astype(np.uint64) - a.astype(np.uint64)) & np.uint64((1 << bits) - 1)
                            for a, b in zip(values, values[1:])])
    return not looks_uniform(diffs, bits)


@pytest.fixture(scope="module")
def honest(plans: tuple[Plan, Plan]) -> dict[str, list[Trace]]:
    with pytest.MonkeyPatch.context() as mp:
        return {str(k): traces(plans[0], INPUTS[k], mp) for k in (0, 1)}


def test_decoded_shares_are_uniform_and_independent_of_the_input(plans: tuple[Plan, Plan],
                                                                 honest: dict[str, list[Trace]]) -> None:
    plan = plans[0]
    assert not decoded_shares_leak(honest["0"], honest["1"], relu_bits(plan))
    for trace, x in zip(honest["1"], [INPUTS[1]] * SESSIONS):
        assert np.array_equal(trace.logits, plan.run_reference(x))  # the sessions are real and correct


def test_sessions_are_unlinked(plans: tuple[Plan, Plan], honest: dict[str, list[Trace]]) -> None:
    """Same input, consecutive sessions: neither the masked inputs nor the
    decoded shares are related (fresh masks every session)."""
    plan = plans[0]
    for k in ("0", "1"):
        assert not sessions_linked([np.concatenate(t.y_s) for t in honest[k]], relu_bits(plan))
        assert not sessions_linked([t.masked_input for t in honest[k]], plan.tensors[plan.input].ring_bits)


def test_negative_control_zero_relu_masks_are_detected(plans: tuple[Plan, Plan],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a leak: the client's ReLU output masks are 0, so the server
    decodes the plaintext activations. The detector must flag it."""
    plan = plans[0]
    input_shape = plan.tensors[plan.input].shape

    honest_ring = client_module._random_ring

    def draw(shape: tuple[int, ...], bits: int) -> np.ndarray:
        mask = honest_ring(shape, bits)
        return mask if shape == input_shape else np.zeros_like(mask)

    a = traces(plan, INPUTS[0], monkeypatch, draw, 2)
    b = traces(plan, INPUTS[1], monkeypatch, draw, 2)
    assert decoded_shares_leak(a, b, relu_bits(plan))


def reusing(honest_ring: Draw, shapes: set[tuple[int, ...]] | None) -> Draw:
    """A mask source that draws each mask once and then reuses it in every
    later session (for the given shapes, or for all)."""
    kept: dict[tuple[tuple[int, ...], int], np.ndarray] = {}

    def draw(shape: tuple[int, ...], bits: int) -> np.ndarray:
        if shapes is not None and shape not in shapes:
            return honest_ring(shape, bits)
        if (shape, bits) not in kept:
            kept[shape, bits] = honest_ring(shape, bits)
        return kept[shape, bits].copy()

    return draw


def test_negative_control_relu_masks_reused_across_sessions_are_detected(
        plans: tuple[Plan, Plan], monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plans[0]
    relu = next(s for s in plan.steps if s.kind == "relu")
    draw = reusing(client_module._random_ring, {plan.tensors[relu.output].shape})
    run = traces(plan, INPUTS[1], monkeypatch, draw, 3)
    assert sessions_linked([np.concatenate(t.y_s) for t in run], relu_bits(plan))


def test_negative_control_a_reused_input_mask_is_detected(plans: tuple[Plan, Plan],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plans[0]
    spec = plan.tensors[plan.input]
    run = traces(plan, INPUTS[1], monkeypatch, reusing(client_module._random_ring, {spec.shape}), 3)
    assert sessions_linked([t.masked_input for t in run], spec.ring_bits)


# --------------------------------------------------- freshness of one-time material


def fresh(a: np.ndarray, b: np.ndarray) -> bool:
    """Two masks share (almost) no element: at most 1% equal positions."""
    return a.shape == b.shape and float((a == b).mean()) <= 0.01


def test_masks_are_fresh_in_every_session(plans: tuple[Plan, Plan], honest: dict[str, list[Trace]]) -> None:
    """The input mask, every ReLU output mask (client) and every HE mask s
    (server) differ between two sessions of one Server/Client pair."""
    first, second = honest["1"][0], honest["1"][1]
    assert len(first.client_masks) == len(second.client_masks) >= 2  # input mask + ReLU masks
    assert all(fresh(a, b) for a, b in zip(first.client_masks, second.client_masks))
    assert first.he_masks and first.he_masks.keys() == second.he_masks.keys()
    assert all(fresh(first.he_masks[i], second.he_masks[i]) for i in first.he_masks)


def test_negative_control_reused_client_masks_fail_the_freshness_check(
        plans: tuple[Plan, Plan], monkeypatch: pytest.MonkeyPatch) -> None:
    run = traces(plans[0], INPUTS[1], monkeypatch, reusing(client_module._random_ring, None), 2)
    assert not any(fresh(a, b) for a, b in zip(run[0].client_masks, run[1].client_masks))


# --------------------------------------------------- the client's view (weights)


def shifted_logits(plan: Plan) -> Plan:
    """The same public Plan with every logit raised by one constant (the last
    layer's bias): the same top-1 class for every input, other logits."""
    fc = max(i for i, st_ in enumerate(plan.steps) if isinstance(st_, LinearStep))
    step = plan.steps[fc]
    c = np.int64(1) << np.int64(plan.tensors[step.output].ring_bits - 5)  # well inside the ring
    steps = list(plan.steps)
    steps[fc] = LinearStep(step.output, step.terms, step.source, step.bias + c)
    shifted = Plan(plan.input, plan.pixel_max, plan.tensors, steps, plan.policy, plan.private)
    assert shifted.digest() == plan.digest()
    return shifted


def client_results(plan: Plan, images: np.ndarray) -> list[np.ndarray]:
    return [pie.infer(plan, x, threads=1)[0] for x in images]


def test_a_label_only_client_learns_nothing_beyond_the_label(plans: tuple[Plan, Plan]) -> None:
    """Two weight sets behind one public Plan that differ in every logit but
    never in the top-1 class: what a label-only client computes is the same.
    Control (the real protocol with the logits revealed, i.e. the server's
    share sent in the clear): the same comparison tells them apart."""
    a = plans[0]
    b = shifted_logits(a)
    images = np.random.default_rng(4).random((3, *SHAPE))
    label_a = client_results(a.with_output("label"), images)
    label_b = client_results(b.with_output("label"), images)
    assert all(np.array_equal(u, v) for u, v in zip(label_a, label_b, strict=True))
    assert [int(v) for v in label_a] == [int(np.argmax(a.run_reference(x))) for x in images]
    logits_a, logits_b = client_results(a, images), client_results(b, images)
    assert not any(np.array_equal(u, v) for u, v in zip(logits_a, logits_b, strict=True))


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
