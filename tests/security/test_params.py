"""Parameter guards: the security parameters SECURITY.md states are the ones
in force, weaker ones are refused, and one-time material cannot be reused.

Complements tests/core/test_he_errors.py (rings 0/1/60/64 and a few weak HE
parameter sets refused) and tests/core/test_gc.py (garbled material consumed
once): here the exact boundaries of the HomomorphicEncryption.org table at
every supported N, the 59/60-bit ring boundary in the HE layer and in Plans,
the GC/OT parameters, and run-once sessions of the engine."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

import pie
from pie import gc, he
from pie.plan import PlanFormatError, TensorSpec

# HomomorphicEncryption.org security standard, 128-bit classical security,
# ternary secret: the largest log2 q per ring dimension N.
HE_STANDARD_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


def moduli(total: int) -> list[int]:
    """Prime sizes summing to ``total`` bits: 60-bit primes and a remainder."""
    bits = [60] * (total // 60)
    if total % 60:
        bits.append(total % 60)
    if bits[-1] < 20:  # no NTT-friendly prime that small: borrow from a 60
        bits[-2] -= 20 - bits[-1]
        bits[-1] = 20
    return bits


@pytest.mark.parametrize("n", [8192, 16384, 32768])
def test_he_modulus_at_the_128_bit_limit_is_accepted_and_one_bit_more_refused(n: int) -> None:
    limit = HE_STANDARD_128[n]
    assert he.he_parameters(37, n, moduli(limit))["poly_degree"] == n
    with pytest.raises(ValueError, match=rf"coeff_bits: {limit + 1} bits .* {limit} bits allowed at N={n} "
                                         r"for 128-bit security"):
        he.he_parameters(37, n, moduli(limit + 1))


def test_he_n4096_limit_is_109_bits() -> None:
    with pytest.raises(ValueError, match=r"110 bits .* 109 bits allowed at N=4096"):
        he.he_parameters(37, 4096, [36, 37, 37])
    # At the limit the parameters are secure but cannot carry 40-bit flooding
    # of a session's outputs: refused for that reason instead.
    with pytest.raises(ValueError, match="flooding"):
        he.he_parameters(37, 4096, [36, 36, 37])


@pytest.mark.parametrize("n", [1024, 2048, 8191, 65536])
def test_other_ring_dimensions_are_refused(n: int) -> None:
    with pytest.raises(ValueError, match="poly_degree"):
        he.he_parameters(37, n)


def test_default_parameters_and_statistical_security() -> None:
    p = he.he_parameters()
    assert p["poly_degree"] == 8192 and sum(p["coeff_bits"]) <= 218
    # Flooding: 2^40 times the noise bound, times the coefficients a key may
    # reveal (2^30 by default): 40-bit statistical circuit privacy.
    assert p["flood_bits"] - 1 >= 40 + 30 + p["max_noise_log2"]


@pytest.mark.parametrize("ring", [58, 59])
def test_rings_up_to_59_bits_run_exactly(ring: int) -> None:
    rng = np.random.default_rng(ring)
    x = rng.integers(0, 1 << ring, size=(1, 4, 4), dtype=np.uint64)
    w = rng.integers(-4, 4, size=(1, 1, 3, 3), dtype=np.int64)
    out, mask, _ = he.secure_conv2d(x, w, padding=1, ring_bits=ring)
    x_pad = np.pad(x[0].astype(object), 1)
    want = [[sum(int(w[0, 0, a, b]) * x_pad[i + a, j + b] for a in range(3) for b in range(3)) % (1 << ring)
             for j in range(4)] for i in range(4)]
    assert ((out + mask) & np.uint64((1 << ring) - 1)).tolist() == [want]


def test_rings_above_59_bits_are_refused_everywhere_he_is_used() -> None:
    # SEAL's plaintext modulus 2^60 is refused by the HE layer ...
    for ring in (60, 61, 64):
        with pytest.raises(ValueError, match="ring_bits"):
            he.he_parameters(ring)
        with pytest.raises(ValueError, match="ring_bits"):
            he.LinearClient(pie.memory_pair()[0], ring)
    # ... and by a Plan whose HE step outputs to such a ring; a garbled step
    # (no HE) may output up to 64 bits.
    plan = small_plan()
    conv = next(s for s in plan.steps if s.kind == "linear")
    relu = next(s for s in plan.steps if s.kind == "relu")
    for name, ring, ok in ((conv.output, 60, False), (relu.output, 60, True), (relu.output, 64, True),
                           (relu.output, 65, False)):
        tensors = dict(plan.tensors)
        t = tensors[name]
        tensors[name] = TensorSpec(t.name, t.shape, ring, t.frac_bits)
        if ok:
            pie.Plan(plan.input, plan.pixel_max, tensors, plan.steps, plan.policy, plan.private)
        else:
            with pytest.raises(PlanFormatError, match="ring"):
                pie.Plan(plan.input, plan.pixel_max, tensors, plan.steps, plan.policy, plan.private)


def test_garbling_parameters() -> None:
    """128-bit labels, free-XOR offset with the colour bit set, a fresh offset
    per garbling, two 128-bit rows per AND gate (half-gates)."""
    circuit = gc.relu_circuit(8, 8, 0)
    a = gc.garble(circuit, 4, tweak_base=0)
    b = gc.garble(circuit, 4, tweak_base=0)
    assert len(a["delta"]) == 16 and a["delta"][0] & 1
    assert a["delta"] != b["delta"] and a["input_zero"] != b["input_zero"]
    assert len(a["input_zero"]) == 4 * sum(circuit.input_widths) * 16
    assert len(a["tables"]) == circuit.num_and * 4 * 2 * 16


def test_ot_parameters() -> None:
    """IKNP on 128 base OTs (kappa = 128), 128-bit correlation, fresh per sender."""
    s_end, r_end = pie.memory_pair()
    out: dict[str, object] = {}

    def receiver() -> None:
        r = gc.IknpReceiver(r_end)
        out["labels"] = r.recv_cot(bytes(64))

    worker = threading.Thread(target=receiver)
    worker.start()
    sender = gc.IknpSender(s_end)
    zero = sender.send_cot(64)
    worker.join()
    assert len(sender.delta) == 16 and len(zero) == 64 * 16
    assert out["labels"] == zero  # all choices 0: the receiver gets the 0-labels
    # The sender is the receiver of kappa = 128 base OTs: it sends 128 P-256
    # points (33 bytes each, compressed) plus the frame header.
    assert s_end.bytes_sent == 12 + 128 * 33


def small_plan() -> pie.Plan:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
    return pie.compile(net, (3, 4, 4))


def test_sessions_run_once_and_refuse_reuse_before_sending() -> None:
    plan = small_plan()
    server, client = pie.Server(plan, threads=1), pie.Client(plan.public(), threads=1)
    server_end, client_end = pie.memory_pair()
    box: dict[str, object] = {}

    def serve() -> None:
        session = server.session(server_end)
        session.offline()
        session.online()
        box["session"] = session
        session.serve()  # until the client's BYE

    worker = threading.Thread(target=serve)
    worker.start()
    session = client.session(client_end)
    with pytest.raises(RuntimeError, match="offline"):
        session.online(np.zeros((3, 4, 4)))  # no material yet
    session.offline()
    logits, _ = session.online(np.zeros((3, 4, 4)))
    assert np.array_equal(logits, plan.run_reference(np.zeros((3, 4, 4))))
    sent = client_end.bytes_sent
    with pytest.raises(RuntimeError, match="once"):
        session.online(np.ones((3, 4, 4)))  # the set was used: nothing is sent
    assert client_end.bytes_sent == sent
    session.close()
    worker.join()
    server_session = box["session"]
    with pytest.raises(RuntimeError, match="ended"):
        server_session.offline()  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="ended"):
        server_session.online()  # type: ignore[attr-defined]
