"""Circuits, the Bristol loader, half-gates garbling and the security structure
of the GC engine. Oracles: the Bristol known answers (FIPS-197, SHA-256 of
"abc"), hashlib, and plain Python integer formulas."""

from __future__ import annotations

import gzip
import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pie import crypto, gc, memory_pair

# The public Bristol Fashion test circuits, gzip-compressed, with the sha256 of
# their uncompressed text as published beside them.
BRISTOL = Path(__file__).resolve().parents[1] / "data" / "bristol"
BRISTOL_SHA256 = {
    "aes_128.txt": "40423a0cdaf5d4d34aba872c12660f115dc25c12eea6e24a9304578e79df6d04",
    "sha256.txt": "bd0a91bb7e97bb60c1468fe8caecc546af3f832bd4152d9c8c4e7527412dd11d",
}
AES_KEY = int("000102030405060708090a0b0c0d0e0f", 16)
AES_PLAIN = int("00112233445566778899aabbccddeeff", 16)
AES_CIPHER = int("69c4e0d86a7b0430d8cdb78070b4c55a", 16)
SHA_IV = int("6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19", 16)
SHA_ABC_BLOCK = int.from_bytes(b"abc" + b"\x80" + b"\x00" * 52 + (24).to_bytes(8, "big"), "big")
SHA_ABC = int(hashlib.sha256(b"abc").hexdigest(), 16)


def bristol(name: str, folder: Path) -> gc.Circuit:
    text = gzip.decompress((BRISTOL / f"{name}.gz").read_bytes())
    assert hashlib.sha256(text).hexdigest() == BRISTOL_SHA256[name]
    (folder / name).write_bytes(text)
    return gc.Circuit.from_bristol(folder / name)


@pytest.fixture(scope="module")
def aes(tmp_path_factory: pytest.TempPathFactory) -> gc.Circuit:
    return bristol("aes_128.txt", tmp_path_factory.mktemp("bristol"))


@pytest.fixture(scope="module")
def sha(tmp_path_factory: pytest.TempPathFactory) -> gc.Circuit:
    return bristol("sha256.txt", tmp_path_factory.mktemp("bristol"))


def blocks(data: bytes) -> list[bytes]:
    return [data[i : i + 16] for i in range(0, len(data), 16)]


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ loader


def test_bristol_metadata(aes: gc.Circuit, sha: gc.Circuit) -> None:
    assert aes.input_widths == [128, 128] and aes.output_widths == [128]
    assert (aes.num_gates, aes.num_and) == (36663, 6400)
    assert sha.input_widths == [512, 256] and sha.output_widths == [256]
    assert (sha.num_gates, sha.num_and) == (135073, 22573)


def test_bristol_known_answers_in_the_clear(aes: gc.Circuit, sha: gc.Circuit) -> None:
    assert aes.evaluate([AES_KEY, AES_PLAIN]) == [AES_CIPHER]
    assert sha.evaluate([SHA_ABC_BLOCK, SHA_IV]) == [SHA_ABC]


def test_sha256_matches_hashlib_compression(sha: gc.Circuit) -> None:
    # A second block: SHA-256 of a 64-byte message is two compressions; the
    # first one's output is the chaining value of the second.
    msg = bytes(range(64))
    pad = b"\x80" + b"\x00" * 55 + (512).to_bytes(8, "big")
    h1 = sha.evaluate([int.from_bytes(msg, "big"), SHA_IV])[0]
    h2 = sha.evaluate([int.from_bytes(pad, "big"), h1])[0]
    assert h2.to_bytes(32, "big") == hashlib.sha256(msg).digest()


MALFORMED = [
    ("", 1, "end of file"),
    ("3\n", 1, "header"),
    ("1 3\n2 1\n1 1\n2 1 0 1 2 AND\n", 2, "announces 2 entries"),
    ("1 3\n2 1 1\n1 1\n2 1 0 1 2 NAND\n", 4, "unsupported gate 'NAND'"),
    ("1 3\n2 1 1\n1 1\n2 1 0 7 2 AND\n", 4, "out of range"),
    ("2 4\n2 1 1\n1 1\n2 1 0 2 3 AND\n2 1 0 1 2 XOR\n", 4, "read before it is written"),
    ("2 3\n2 1 1\n1 1\n2 1 0 1 2 AND\n2 1 0 1 2 XOR\n", 5, "written twice"),
    ("2 3\n2 1 1\n1 1\n2 1 0 1 2 AND\n", 5, "end of file"),
    ("1 3\n2 1 1\n1 1\n2 1 0 1 2 AND\n1 1 0 2 INV\n", 5, "content after"),
    ("1 3\n2 1 1\n1 1\n2 1 0 x 2 AND\n", 4, "not a non-negative integer"),
    ("1 3\n2 1 1\n1 1\n3 1 0 1 2 AND\n", 4, "arity"),
    ("1 3\n2 1 1\n1 1\n1 1 5 2 EQ\n", 4, "0 or 1"),
]


@pytest.mark.parametrize(("text", "line", "message"), MALFORMED)
def test_malformed_bristol_names_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^bad\.txt:{line}: .*{message}"):
        gc.Circuit.from_bristol_text(text, "bad.txt")


def test_malformed_file_error_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.txt"
    path.write_text("1 3\n2 1 1\n1 1\n2 1 0 1 2 OR\n")
    with pytest.raises(ValueError, match=r"broken\.txt:4: unsupported gate 'OR'"):
        gc.Circuit.from_bristol(path)
    with pytest.raises(ValueError, match="cannot open"):
        gc.Circuit.from_bristol(tmp_path / "missing.txt")


def test_bristol_copies_and_constants() -> None:
    # out0 = a AND 1 (EQ constant), out1 = copy of b (EQW), out2 = NOT(a XOR b)
    text = """6 8
2 1 1
1 3
1 1 1 2 EQ
2 1 0 2 3 AND
2 1 0 1 4 XOR
1 1 4 7 INV
1 1 1 6 EQW
1 1 3 5 EQW
"""
    c = gc.Circuit.from_bristol_text(text)
    for a in (0, 1):
        for b in (0, 1):
            want = a | (b << 1) | ((1 - (a ^ b)) << 2)
            assert c.evaluate([a, b]) == [want]
            assert gc.run_two_party(c, {0: a}, {1: b})[0] == [want]


def test_evaluate_validates_inputs(aes: gc.Circuit) -> None:
    with pytest.raises(ValueError, match="expected 2 values"):
        aes.evaluate([1])
    with pytest.raises(ValueError, match=r"inputs\[1\]: .* does not fit in 128 bits"):
        aes.evaluate([0, 1 << 128])
    with pytest.raises(ValueError, match=r"inputs\[0\]"):
        aes.evaluate([-1, 0])


# ----------------------------------------------------------------- builder

WIDTH = 13
MASK = (1 << WIDTH) - 1


def arithmetic_circuit() -> gc.Circuit:
    b = gc.CircuitBuilder()
    x, y = b.input(WIDTH), b.input(WIDTH)
    sel = b.input(1)[0]
    b.output(b.add(x, y))
    b.output(b.sub(x, y))
    b.output([b.less_than(x, y)])
    b.output(b.mux(sel, x, y))
    b.output(b.shift_right(x, 3))
    b.output(b.shift_left(x, 5))
    b.output([b.ONE, b.ZERO])
    return gc.Circuit.from_builder(b)


ARITH = arithmetic_circuit()


def arith_expected(x: int, y: int, s: int) -> list[int]:
    return [(x + y) & MASK, (x - y) & MASK, int(x < y), x if s else y, x >> 3, (x << 5) & MASK, 1]


def test_builder_gate_counts() -> None:
    # add, sub: n-1 AND each; less_than: n; mux: n; shifts and constants: free.
    assert ARITH.num_and == 2 * (WIDTH - 1) + WIDTH + WIDTH


@given(st.integers(0, MASK), st.integers(0, MASK), st.integers(0, 1))
def test_builder_in_the_clear(x: int, y: int, s: int) -> None:
    assert ARITH.evaluate([x, y, s]) == arith_expected(x, y, s)


@settings(max_examples=10)
@given(st.integers(0, MASK), st.integers(0, MASK), st.integers(0, 1))
def test_builder_garbled(x: int, y: int, s: int) -> None:
    assert gc.run_two_party(ARITH, {0: x}, {1: y, 2: s})[0] == arith_expected(x, y, s)


def test_builder_rejects_misuse() -> None:
    b = gc.CircuitBuilder()
    x = b.input(4)
    b.xor(x[0], x[1])
    with pytest.raises(ValueError, match="before the first gate"):
        b.input(2)
    with pytest.raises(ValueError, match="unknown wire"):
        b.and_(x[0], 999)
    with pytest.raises(ValueError, match="differ in width"):
        b.add(x, x[:3])


# ----------------------------------------------------- two-party garbling


@pytest.mark.parametrize("threads", [1, 2])
def test_aes_two_party_known_answer(aes: gc.Circuit, threads: int) -> None:
    out, stats = gc.run_two_party(aes, {0: AES_KEY}, {1: AES_PLAIN}, threads=threads)
    assert out == [AES_CIPHER]
    assert stats["and_gates"] == 6400
    assert stats["table_bytes"] == 32 * 6400
    # Tables + the garbler's 128 input labels + OT; the evaluator sends the
    # OT extension matrix, the base-OT points and 16 colour bytes.
    assert stats["bytes_garbler_to_evaluator"] >= 32 * 6400 + 16 * 128
    assert stats["bytes_evaluator_to_garbler"] >= 16 * 128


def test_aes_two_party_roles_swapped(aes: gc.Circuit) -> None:
    out, _ = gc.run_two_party(aes, {1: AES_PLAIN}, {0: AES_KEY})
    assert out == [AES_CIPHER]


def test_sha256_two_party_known_answer(sha: gc.Circuit) -> None:
    out, stats = gc.run_two_party(sha, {1: SHA_IV}, {0: SHA_ABC_BLOCK})
    assert out == [SHA_ABC]
    assert stats["and_gates"] == 22573


def test_run_two_party_validates_ownership(aes: gc.Circuit) -> None:
    with pytest.raises(ValueError, match="both parties"):
        gc.run_two_party(aes, {0: 1, 1: 2}, {1: 2})
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        gc.run_two_party(aes, {0: 1}, {})


def active_inputs(c: gc.Circuit, n: int, zero: bytes, delta: bytes, values: list[list[int]]) -> bytes:
    """Pick the label of each input bit: zero label, or zero ^ delta for a 1."""
    labels = blocks(zero)
    total = sum(c.input_widths)
    out = []
    for i in range(n):
        bits = []
        for v, w in zip(values[i], c.input_widths):
            bits += [(v >> k) & 1 for k in range(w)]
        for wire, bit in enumerate(bits):
            lab = labels[i * total + wire]
            out.append(xor(lab, delta) if bit else lab)
    return b"".join(out)


def decode(outputs: bytes, output_zero: bytes) -> list[int]:
    return [
        (a[0] ^ z[0]) & 1 for a, z in zip(blocks(outputs), blocks(output_zero), strict=True)
    ]


def test_pure_garble_evaluate_many_instances(aes: gc.Circuit) -> None:
    n = 3
    keys = [AES_KEY, 0, (1 << 128) - 1]
    g = gc.garble(aes, n, tweak_base=1000)
    inputs = active_inputs(aes, n, g["input_zero"], g["delta"], [[k, AES_PLAIN] for k in keys])
    e = gc.evaluate_garbled(aes, n, 1000, inputs, g["tables"])
    bits = decode(e["outputs"], g["output_zero"])
    for i, k in enumerate(keys):
        got = sum(b << j for j, b in enumerate(bits[128 * i : 128 * (i + 1)]))
        assert got == aes.evaluate([k, AES_PLAIN])[0]
    assert bits[:128] == [(AES_CIPHER >> j) & 1 for j in range(128)]
    # The tweaks are part of every table: another tweak range gives garbage.
    wrong = gc.evaluate_garbled(aes, n, 1002, inputs, g["tables"])
    assert decode(wrong["outputs"], g["output_zero"]) != bits


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 16, 17, 37])
def test_fused_and_portable_kernels_agree(aes: gc.Circuit, n: int) -> None:
    """The fused kernels (VAES: 8 garbled / 16 evaluated instances per group,
    the rest on 128-bit AES-NI; AES-NI) and the portable path (OpenSSL AES
    through TccrHash) produce identical tables and labels, and evaluate each
    other's."""
    backends = crypto.aes_backends()
    if len(backends) < 2:
        pytest.skip("only one AES backend on this machine")
    seed = crypto.secure_random(16)
    delta = bytes([crypto.secure_random(1)[0] | 1]) + crypto.secure_random(15)
    runs = [gc.garble(aes, n, 40, delta=delta, seed=seed, backend=b) for b in backends]
    assert all(run == runs[-1] for run in runs)
    keys = [AES_KEY + i for i in range(n)]
    inputs = active_inputs(aes, n, runs[0]["input_zero"], delta, [[k, AES_PLAIN] for k in keys])
    outs = [gc.evaluate_garbled(aes, n, 40, inputs, runs[0]["tables"], backend=b) for b in backends]
    assert all(out == outs[-1] for out in outs)
    bits = decode(outs[0]["outputs"], runs[0]["output_zero"])
    for i, k in enumerate(keys):
        assert sum(b << j for j, b in enumerate(bits[128 * i : 128 * (i + 1)])) == aes.evaluate([k, AES_PLAIN])[0]


def test_evaluator_view_never_holds_both_labels(aes: gc.Circuit) -> None:
    """Every wire's evaluated label is one of its two labels, and nothing the
    evaluator sees (its labels of every wire, the tables) differs from another
    such value by Delta, nor equals Delta."""
    n = 2
    g = gc.garble(aes, n, tweak_base=7)
    delta = g["delta"]
    inputs = active_inputs(aes, n, g["input_zero"], delta, [[AES_KEY, AES_PLAIN], [1, 2]])
    e = gc.evaluate_garbled(aes, n, 7, inputs, g["tables"])
    zero = np.frombuffer(g["wire_labels"], dtype=np.uint8).reshape(-1, 16)
    seen = np.frombuffer(e["wire_labels"], dtype=np.uint8).reshape(-1, 16)
    diff = zero ^ seen
    d = np.frombuffer(delta, dtype=np.uint8)
    is_zero = ~diff.any(axis=1)
    is_delta = (diff == d).all(axis=1)
    assert (is_zero ^ is_delta).all()  # exactly one of the two labels per wire
    view = {bytes(row) for row in seen} | set(blocks(g["tables"]))
    assert delta not in view
    assert not any(xor(v, delta) in view for v in view)


def test_global_offset_lsb_set_and_fresh_per_run(aes: gc.Circuit) -> None:
    runs = [gc.garble(aes, 1, tweak_base=0) for _ in range(16)]
    deltas = {r["delta"] for r in runs}
    assert len(deltas) == 16
    assert all(d[0] & 1 for d in deltas)
    assert len({r["input_zero"] for r in runs}) == 16
    assert len({r["tables"] for r in runs}) == 16
    with pytest.raises(ValueError, match="delta: lowest bit"):
        gc.garble(aes, 1, tweak_base=0, delta=bytes(16))


# -------------------------------------------------- ReLU protocol structure


def relu_parties(threads: int = 2, block: int = 8) -> tuple[gc.ReluServer, gc.ReluClient]:
    a, b = memory_pair()
    return gc.ReluServer(a, 20, 20, 0, threads, block), gc.ReluClient(b, 20, 20, 0, threads, block)


def in_thread(fn):  # type: ignore[no-untyped-def]
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_offline_material_is_consumed_once() -> None:
    server, client = relu_parties()
    xs, xc, r = (np.arange(5, dtype=np.uint64) for _ in range(3))
    t, box = in_thread(lambda: client.offline(xc, r))
    smat = server.offline(5)
    t.join()
    cmat = box["value"]
    assert isinstance(cmat, gc.ReluClientMaterial)
    t, box = in_thread(lambda: client.online(cmat))
    server.online(smat, xs)
    t.join()
    assert "error" not in box
    assert smat.consumed and cmat.consumed
    with pytest.raises(ValueError, match="already consumed"):
        server.online(smat, xs)
    with pytest.raises(ValueError, match="already consumed"):
        client.online(cmat)


def test_material_of_another_session_is_refused() -> None:
    server, client = relu_parties()
    other, _ = relu_parties()
    t, box = in_thread(lambda: client.offline(np.zeros(3, np.uint64), np.zeros(3, np.uint64)))
    smat = server.offline(3)
    t.join()
    with pytest.raises(ValueError, match="another session"):
        other.online(smat, np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="length differs"):
        server.online(smat, np.zeros(4, np.uint64))
    assert not smat.consumed


def test_relu_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shift"):
        gc.relu_circuit(8, 8, 7)
    with pytest.raises(ValueError, match="l_in"):
        gc.relu_circuit(65, 8, 0)
    with pytest.raises(ValueError, match="l_out"):
        gc.relu_circuit(8, 0, 0)


def test_table_layout_is_32_bytes_per_and(aes: gc.Circuit) -> None:
    g = gc.garble(aes, 2, tweak_base=0)
    assert len(g["tables"]) == 32 * aes.num_and * 2


def test_kernel_seconds_helper() -> None:
    relu = gc.relu_circuit(37, 37, 12)
    for mode in ("garble", "evaluate", "hash"):
        assert gc.kernel_seconds(relu, 64, threads=1, repeat=1, mode=mode) > 0
    with pytest.raises(ValueError, match="mode"):
        gc.kernel_seconds(relu, 64, mode="decrypt")
    with pytest.raises(ValueError, match="positive"):
        gc.kernel_seconds(relu, 0)


# ------------------------------------------------------ label-only output


def _pack(values: list[int], l: int) -> int:
    return sum((v % (1 << l)) << (l * j) for j, v in enumerate(values))


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 64).flatmap(lambda l: st.tuples(
    st.just(l),
    st.lists(st.integers(-(1 << (l - 1)), (1 << (l - 1)) - 1), min_size=1, max_size=12),
    st.randoms(use_true_random=False))))
def test_argmax_circuit_is_numpy_argmax_of_the_signed_sum(case: tuple) -> None:
    """Signs, extremes, ties (lowest index wins) and shares that wrap around."""
    l, values, rnd = case
    if len(values) > 1 and rnd.random() < 0.3:
        values[rnd.randrange(len(values))] = max(values)  # a tie
    xs = [rnd.randrange(1 << l) for _ in values]
    xc = [(v - s) % (1 << l) for v, s in zip(values, xs, strict=True)]
    c = gc.argmax_circuit(len(values), l)
    assert c.evaluate([_pack(xs, l), _pack(xc, l)]) == [int(np.argmax(values))]
    assert c.output_widths == [max(1, (len(values) - 1).bit_length())]


def test_argmax_circuit_refuses_bad_shapes() -> None:
    for classes, l in ((0, 8), (65537, 8), (4, 1), (4, 65)):
        with pytest.raises(ValueError):
            gc.argmax_circuit(classes, l)


def _argmax_protocol(xs: np.ndarray, xc: np.ndarray, l: int) -> int:
    a, b = memory_pair()
    server, client = gc.ArgmaxServer(a, xs.size, l, 1), gc.ArgmaxClient(b, xs.size, l, 1)

    def client_side() -> int:
        client.offline(xc)
        return client.online()

    t, box = in_thread(client_side)
    server.offline()
    server.online(xs)
    t.join()
    assert "error" not in box, box.get("error")
    with pytest.raises(ValueError, match="runs once"):
        server.online(xs)
    with pytest.raises(ValueError, match="runs once"):
        client.online()
    return int(box["value"])  # type: ignore[call-overload]


@pytest.mark.parametrize("l", [2, 37, 59, 64])
def test_argmax_protocol_gives_the_client_the_index(l: int) -> None:
    rng = np.random.default_rng(l)
    top = (1 << (l - 1)) - 1
    for values in ([-(top + 1), top, 0, top], [5], list(rng.integers(-top - 1, top, size=100))):
        v = np.array(values, dtype=object)
        xs = rng.integers(0, 1 << min(l, 63), size=v.size, dtype=np.uint64)
        if l == 64:
            xs = xs * np.uint64(2) + np.uint64(1)  # shares with the top bit set
        mod = 1 << l
        xc = np.array([(int(val) - int(s)) % mod for val, s in zip(v, xs, strict=True)], dtype=np.uint64)
        assert _argmax_protocol(xs, xc, l) == int(np.argmax(np.array(values, dtype=object)))


def test_argmax_protocol_refuses_malformed_shares() -> None:
    a, _ = memory_pair()
    server = gc.ArgmaxServer(a, 4, 8, 1)
    with pytest.raises(ValueError, match="needs offline"):
        server.online(np.zeros(4, dtype=np.uint64))
    _, b = memory_pair()
    client = gc.ArgmaxClient(b, 4, 8, 1)
    with pytest.raises(ValueError, match="classes"):
        client.offline(np.zeros(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="exceeds"):
        client.offline(np.full(4, 256, dtype=np.uint64))
