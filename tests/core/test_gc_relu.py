"""The ReLU-over-shares circuit and the secure_relu protocol against plain
integer formulas (the oracle is written here, independently of pie)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pie
from pie import gc

SHAPES = [(37, 37, 12), (48, 37, 24), (59, 37, 30), (20, 20, 0)]


def relu_formula(xs: int, xc: int, r: int, l_in: int, l_out: int, shift: int) -> int:
    """(ReLU(x as a signed l_in-bit integer) >> shift) - r mod 2^l_out, in Python ints."""
    x = (xs + xc) % 2**l_in
    if x >= 2 ** (l_in - 1):
        x -= 2**l_in
    return (max(x, 0) // 2**shift - r) % 2**l_out


def relu_formula_np(xs: np.ndarray, xc: np.ndarray, r: np.ndarray, l_in: int, l_out: int, shift: int) -> np.ndarray:
    """The same formula over uint64 arrays (exact: l_in, l_out <= 63 here)."""
    x = (xs + xc) & np.uint64(2**l_in - 1)
    negative = (x >> np.uint64(l_in - 1)) == 1
    v = np.where(negative, np.uint64(0), x >> np.uint64(shift))
    return (v - r) & np.uint64(2**l_out - 1)


def edge_values(l_in: int) -> list[int]:
    m = 2**l_in
    return [0, 1, m - 1, m // 2, m // 2 - 1, m // 2 + 1, 2, m - 2, 2**30, m - 2**30]


def edge_case_shares(l_in: int, l_out: int, rng: np.random.Generator) -> tuple[list[int], list[int], list[int]]:
    """x in {0, -1, most negative, most positive, ...}, each split three ways:
    x_c = 0, x_c random, and shares that wrap around when added (x_c = 2^l - 1
    etc.); masks at both ends of their ring and random."""
    m = 2**l_in
    xs: list[int] = []
    xc: list[int] = []
    for x in edge_values(l_in):
        for c in (0, m - 1, m // 2, int(rng.integers(0, m))):
            xs.append((x - c) % m)
            xc.append(c)
    masks = [0, 2**l_out - 1, 1, int(rng.integers(0, 2**l_out))]
    r = [masks[i % len(masks)] for i in range(len(xs))]
    return xs, xc, r


@pytest.mark.parametrize(("l_in", "l_out", "shift"), SHAPES)
def test_relu_circuit_size(l_in: int, l_out: int, shift: int) -> None:
    c = gc.relu_circuit(l_in, l_out, shift)
    assert c.input_widths == [l_in, l_in, l_out]
    assert c.output_widths == [l_out]
    assert c.num_and <= l_in + 2 * l_out
    assert c.num_and == (l_in - 1) + min(l_out, l_in - 1 - shift) + (l_out - 1)


def test_relu_circuit_meets_the_target_at_37_bits() -> None:
    assert gc.relu_circuit(37, 37, 0).num_and <= 111
    assert gc.relu_circuit(37, 37, 12).num_and <= 111


@pytest.mark.parametrize(("l_in", "l_out", "shift"), SHAPES)
def test_relu_circuit_edges_in_the_clear(l_in: int, l_out: int, shift: int) -> None:
    c = gc.relu_circuit(l_in, l_out, shift)
    xs, xc, r = edge_case_shares(l_in, l_out, np.random.default_rng(0))
    for a, b, m in zip(xs, xc, r):
        assert c.evaluate([a, b, m]) == [relu_formula(a, b, m, l_in, l_out, shift)]


@given(st.data())
def test_relu_circuit_random_shapes_in_the_clear(data: st.DataObject) -> None:
    l_in = data.draw(st.integers(2, 64))
    l_out = data.draw(st.integers(1, 64))
    shift = data.draw(st.integers(0, l_in - 2))
    a = data.draw(st.integers(0, 2**l_in - 1))
    b = data.draw(st.integers(0, 2**l_in - 1))
    m = data.draw(st.integers(0, 2**l_out - 1))
    c = gc.relu_circuit(l_in, l_out, shift)
    assert c.num_and <= l_in + 2 * l_out
    assert c.evaluate([a, b, m]) == [relu_formula(a, b, m, l_in, l_out, shift)]


@pytest.mark.parametrize(("l_in", "l_out", "shift"), SHAPES)
def test_secure_relu_random_and_edge_cases(l_in: int, l_out: int, shift: int) -> None:
    rng = np.random.default_rng(l_in * 1000 + shift)
    n = 100_000
    xs = rng.integers(0, 2**l_in, size=n, dtype=np.uint64)
    xc = rng.integers(0, 2**l_in, size=n, dtype=np.uint64)
    r = rng.integers(0, 2**l_out, size=n, dtype=np.uint64)
    exs, exc, er = edge_case_shares(l_in, l_out, rng)
    xs = np.concatenate([np.array(exs, dtype=np.uint64), xs])
    xc = np.concatenate([np.array(exc, dtype=np.uint64), xc])
    r = np.concatenate([np.array(er, dtype=np.uint64), r])
    ys, stats = gc.secure_relu(xs, xc, r, l_in, l_out, shift)
    assert ys.dtype == np.uint64 and ys.shape == xs.shape
    for i in range(len(exs)):  # edge cases against the Python-int formula
        assert int(ys[i]) == relu_formula(exs[i], exc[i], er[i], l_in, l_out, shift), i
    np.testing.assert_array_equal(ys, relu_formula_np(xs, xc, r, l_in, l_out, shift))
    total = len(xs)
    assert stats["relus"] == total
    assert stats["and_gates_per_relu"] == gc.relu_circuit(l_in, l_out, shift).num_and
    assert stats["garbled_bytes_per_relu"] == 32 * stats["and_gates_per_relu"]
    # Online: 16 bytes per label of x_s plus a small header per batch one way,
    # the packed colour bits the other way.
    header = 12 + 16
    assert stats["online_bytes_server_to_client"] == 16 * l_in * total + header * stats["batches"]
    assert stats["online_bytes_client_to_server"] <= (total * l_out + 7) // 8 + stats["batches"]
    assert stats["offline_bytes"] > 32 * stats["and_gates_per_relu"] * total


@settings(max_examples=8)
@given(
    st.lists(
        st.tuples(st.integers(0, 2**37 - 1), st.integers(0, 2**37 - 1), st.integers(0, 2**37 - 1)),
        min_size=1,
        max_size=40,
    )
)
def test_secure_relu_hypothesis(triples: list[tuple[int, int, int]]) -> None:
    xs, xc, r = (np.array(col, dtype=np.uint64) for col in zip(*triples))
    ys, _ = gc.secure_relu(xs, xc, r, 37, 37, 12, batch_size=16)
    assert [int(y) for y in ys] == [relu_formula(a, b, m, 37, 37, 12) for a, b, m in triples]


def test_secure_relu_small_batches_and_threads() -> None:
    rng = np.random.default_rng(5)
    n = 1000
    xs, xc = (rng.integers(0, 2**20, size=n, dtype=np.uint64) for _ in range(2))
    r = rng.integers(0, 2**20, size=n, dtype=np.uint64)
    want = relu_formula_np(xs, xc, r, 20, 20, 0)
    for threads in (1, 2):
        ys, stats = gc.secure_relu(xs, xc, r, 20, 20, 0, threads=threads, batch_size=300)
        assert stats["batches"] == 4
        np.testing.assert_array_equal(ys, want)


def test_secure_relu_empty_and_validation() -> None:
    ys, stats = gc.secure_relu([], [], [], 37, 37, 12)
    assert ys.shape == (0,) and stats["relus"] == 0
    with pytest.raises(ValueError, match="client_mask: values must be below 2\\^20"):
        gc.secure_relu([1], [1], [2**20], 20, 20, 0)
    with pytest.raises(ValueError, match="server_share: values must be non-negative"):
        gc.secure_relu(np.array([-1]), [1], [1], 20, 20, 0)
    with pytest.raises(ValueError, match="lengths differ"):
        gc.secure_relu([1, 2], [1], [1], 20, 20, 0)
    with pytest.raises(ValueError, match="shift"):
        gc.secure_relu([1], [1], [1], 20, 20, 19)


def test_secure_relu_masks_are_fresh_shares() -> None:
    """The server's share alone says nothing: with fresh masks, the same input
    gives different server shares, each consistent with its mask."""
    xs = np.full(64, 5 << 12, dtype=np.uint64)
    xc = np.zeros(64, dtype=np.uint64)
    rng = np.random.default_rng(9)
    r = rng.integers(0, 2**37, size=64, dtype=np.uint64)
    ys, _ = gc.secure_relu(xs, xc, r, 37, 37, 12)
    assert len(set(ys.tolist())) == 64
    np.testing.assert_array_equal((ys + r) & np.uint64(2**37 - 1), np.full(64, 5, dtype=np.uint64))


def test_relu_protocol_classes_over_tcp() -> None:
    """The protocol classes run over any channel: here TCP on loopback, with
    two offline batches consumed in order."""
    rng = np.random.default_rng(11)
    batches = [rng.integers(0, 2**37, size=(3, n), dtype=np.uint64) for n in (200, 57)]
    with pie.TcpListener("127.0.0.1", 0) as listener:
        client_end = pie.tcp_connect("127.0.0.1", listener.port, timeout=5.0)
        server_end = listener.accept(timeout=5.0)
    server = gc.ReluServer(server_end, 37, 37, 12)
    client = gc.ReluClient(client_end, 37, 37, 12)
    errors: list[BaseException] = []

    def client_side() -> None:
        try:
            materials = [client.offline(b[1], b[2]) for b in batches]
            for m in materials:
                client.online(m)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    t = threading.Thread(target=client_side)
    t.start()
    materials = [server.offline(b.shape[1]) for b in batches]
    results = [server.online(m, b[0]) for m, b in zip(materials, batches)]
    t.join()
    server_end.close()
    client_end.close()
    assert not errors
    for ys, b in zip(results, batches):
        np.testing.assert_array_equal(ys, relu_formula_np(b[0], b[1], b[2], 37, 37, 12))


def test_batches_of_one_round_share_a_round_trip_without_deadlock() -> None:
    """send_labels for every batch before any finish, evaluate every batch before
    any reply: exact, and no deadlock although each batch's labels (and the
    truncation's reply) exceed the channel's capacity. Released material stays
    consumed."""
    rng = np.random.default_rng(12)
    relu_in = rng.integers(0, 2**37, size=(3, 3000), dtype=np.uint64)
    trunc_in = rng.integers(0, 2**59, size=(2, 2500), dtype=np.uint64)
    trunc_in = np.vstack([trunc_in, rng.integers(0, 2**45, size=(1, 2500), dtype=np.uint64)])
    server_end, client_end = pie.memory_pair(capacity_bytes=16 << 10)
    servers = [gc.ReluServer(server_end, 37, 37, 12), gc.ReluServer(server_end, 59, 45, 14, truncate=True)]
    clients = [gc.ReluClient(client_end, 37, 37, 12), gc.ReluClient(client_end, 59, 45, 14, truncate=True)]
    batches = [relu_in, trunc_in]
    errors: list[BaseException] = []

    def client_side() -> None:
        try:
            materials = [c.offline(b[1], b[2]) for c, b in zip(clients, batches)]
            for c, m in zip(clients, materials):
                c.evaluate(m)
            with pytest.raises(ValueError, match="already consumed"):
                clients[0].evaluate(materials[0])
            for c, m in zip(clients, materials):
                c.reply(m)
            with pytest.raises(ValueError, match="reply already sent"):
                clients[1].reply(materials[1])
            for c, m in zip(clients, materials):
                c.release(m)
                assert m.consumed
            with pytest.raises(ValueError, match="already consumed"):
                clients[0].evaluate(materials[0])
            with pytest.raises(ValueError, match="another session"):
                clients[1].release(materials[0])
            client_end.flush()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    t = threading.Thread(target=client_side)
    t.start()
    materials = [s.offline(b.shape[1]) for s, b in zip(servers, batches)]
    with pytest.raises(ValueError, match="labels not sent"):
        servers[0].finish(materials[0])
    for s, m, b in zip(servers, materials, batches):
        s.send_labels(m, b[0])
    results = [s.finish(m) for s, m in zip(servers, materials)]
    with pytest.raises(ValueError, match="already finished"):
        servers[1].finish(materials[1])
    t.join()
    assert not errors
    np.testing.assert_array_equal(results[0], relu_formula_np(*relu_in, 37, 37, 12))
    x = (trunc_in[0] + trunc_in[1]) & np.uint64(2**59 - 1)
    signed = x.astype(np.int64) - np.where(x >> np.uint64(58) == 1, np.int64(2**59), np.int64(0))
    expected = ((signed >> 14).astype(np.uint64) - trunc_in[2]) & np.uint64(2**45 - 1)
    np.testing.assert_array_equal(results[1], expected)
