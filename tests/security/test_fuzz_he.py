"""Fuzzing the HE sub-protocol with malformed SEAL objects: the server fed
mutated public keys and input ciphertexts, the client fed mutated replies
(truncated, bit-flipped, length and count fields at their limits, objects made
under other parameters). Each party ends with its output or a typed error
(ChannelError or ValueError), never a crash, a hang or a huge allocation."""

from __future__ import annotations

import resource
import struct
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from fuzzing import edits, fuzz, mutate
from hypothesis import given
from hypothesis import strategies as st

import pie
from pie import he

RING = 37
IN_SHAPE = (2, 4, 4)
W_SHAPE = (2, 2, 3, 3)
REVEALED = 64
HEADER = struct.Struct("<IQ")
TYPED = (pie.ChannelError, ValueError)


def read_frame(channel: pie.Channel) -> tuple[int, bytes]:
    kind, n = HEADER.unpack(channel.recv(HEADER.size))
    return kind, channel.recv(n)


def frame(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def record_client(ring: int) -> list[tuple[int, bytes]]:
    """An honest client's hello (public key) and input frame (seeded ciphertexts)."""
    client_end, peer = pie.memory_pair()
    x = np.arange(np.prod(IN_SHAPE), dtype=np.uint64).reshape(IN_SHAPE)

    def run() -> None:
        try:
            he.LinearClient(client_end, ring, REVEALED).conv2d(x, W_SHAPE, padding=1)
        except pie.ChannelError:
            pass  # the recorder hangs up instead of replying

    worker = threading.Thread(target=run)
    worker.start()
    frames = [read_frame(peer), read_frame(peer)]
    peer.close()
    worker.join()
    return frames


def weights() -> np.ndarray:
    return np.random.default_rng(0).integers(-8, 8, size=W_SHAPE, dtype=np.int64)


def serve(stream: bytes, ring: int = RING) -> np.ndarray | None:
    """A server session fed ``stream`` as everything the client says."""
    server_end, attacker = pie.memory_pair()
    with server_end, attacker:
        attacker.send(stream)
        attacker.flush()
        server_end.timeout = 0.5  # a stream cut short must end in a timeout, not a hang
        try:
            return he.LinearServer(server_end, ring, REVEALED).conv2d(IN_SHAPE, weights(), padding=1)
        except TYPED:
            return None


def ask(reply: bytes, ring: int = RING) -> np.ndarray | None:
    """A client session whose server answers with ``reply``."""
    client_end, attacker = pie.memory_pair()
    with client_end, attacker:
        attacker.send(reply)
        attacker.flush()
        client_end.timeout = 0.5
        x = np.ones(IN_SHAPE, dtype=np.uint64)
        try:
            return he.LinearClient(client_end, ring, REVEALED).conv2d(x, W_SHAPE, padding=1)
        except TYPED:
            return None


@pytest.fixture(scope="module")
def honest() -> dict[str, list[tuple[int, bytes]]]:
    """Recorded frames: client frames at two rings, and a server's reply frame."""
    frames = {"client": record_client(RING), "client59": record_client(59)}
    server_end, attacker = pie.memory_pair()
    with server_end, attacker:
        attacker.send(b"".join(frame(k, p) for k, p in frames["client"]))
        attacker.flush()
        he.LinearServer(server_end, RING, REVEALED).conv2d(IN_SHAPE, weights(), padding=1)
        frames["reply"] = [read_frame(attacker)]
    return frames


@pytest.fixture(scope="module", autouse=True)
def bounded_memory() -> Iterator[None]:
    """No input may make a party allocate much: the peak RSS stays in bounds."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 1024, f"peak memory grew by {grown_mib:.0f} MiB"


def test_seeds_are_accepted(honest: dict[str, list[tuple[int, bytes]]]) -> None:
    # Unmodified recordings run through: the fuzzers mutate working sessions.
    stream = b"".join(frame(k, p) for k, p in honest["client"])
    assert serve(stream) is not None
    out = ask(frame(*honest["reply"][0]))
    assert out is not None and out.shape == (2, 4, 4)


@fuzz(2)
@given(st.data())
def test_server_fed_mutated_key_and_ciphertexts(honest: dict[str, list[tuple[int, bytes]]],
                                                data: st.DataObject) -> None:
    (k_hello, hello), (k_inputs, inputs) = honest["client"]
    target = data.draw(st.sampled_from(["hello", "inputs", "inputs-head", "headers"]))
    if target == "hello":
        hello = mutate(hello, data.draw(edits()), focus=96)
    elif target == "inputs":
        inputs = mutate(inputs, data.draw(edits()))
    elif target == "inputs-head":  # count, lengths and the SEAL headers of the first ciphertext
        inputs = mutate(inputs, data.draw(edits()), focus=160)
    stream = frame(k_hello, hello) + frame(k_inputs, inputs)
    if target == "headers":
        stream = mutate(stream[:HEADER.size], data.draw(edits()), focus=HEADER.size) + stream[HEADER.size:]
    serve(stream)


@fuzz()
@given(st.data())
def test_client_fed_mutated_replies(honest: dict[str, list[tuple[int, bytes]]],
                                    data: st.DataObject) -> None:
    kind, reply = honest["reply"][0]
    out = ask(mutate(frame(kind, reply), data.draw(edits()), focus=HEADER.size + 64))
    assert out is None or out.shape == (2, 4, 4)


def test_objects_under_other_parameters_are_refused(honest: dict[str, list[tuple[int, bytes]]]) -> None:
    (k_hello, hello), (k_inputs, inputs) = honest["client"]
    (_, hello59), (_, inputs59) = honest["client59"]
    # A public key made for t = 2^59 sent to a t = 2^37 server ...
    with pytest.raises(pie.ProtocolError, match="other HE parameters"):
        _strict_serve(frame(k_hello, hello59) + frame(k_inputs, inputs))
    # ... its parameter id replaced by the right one: SEAL's own checks refuse it.
    forged = hello[:32] + hello59[32:]
    with pytest.raises(pie.ProtocolError):
        _strict_serve(frame(k_hello, forged) + frame(k_inputs, inputs))
    # Ciphertexts made for t = 2^59 after a good key.
    with pytest.raises(pie.ProtocolError):
        _strict_serve(frame(k_hello, hello) + frame(k_inputs, inputs59))


def _strict_serve(stream: bytes) -> np.ndarray:
    server_end, attacker = pie.memory_pair()
    with server_end, attacker:
        attacker.send(stream)
        attacker.flush()
        server_end.timeout = 0.5
        return he.LinearServer(server_end, RING, REVEALED).conv2d(IN_SHAPE, weights(), padding=1)


@pytest.mark.parametrize("announced", [1 << 40, (1 << 64) - 1])
def test_huge_announced_sizes_allocate_nothing(honest: dict[str, list[tuple[int, bytes]]],
                                               announced: int) -> None:
    (k_hello, hello), (k_inputs, inputs) = honest["client"]
    # A frame announcing more than the limit is refused before reading it.
    with pytest.raises(pie.OversizeMessageError):
        _strict_serve(HEADER.pack(k_hello, announced) + hello)
    # A ciphertext length field beyond the frame.
    bad = inputs[:8] + struct.pack("<Q", announced) + inputs[16:]
    with pytest.raises(pie.ProtocolError, match="truncated"):
        _strict_serve(frame(k_hello, hello) + frame(k_inputs, bad))
    # A ciphertext count beyond the layout.
    bad = struct.pack("<Q", announced) + inputs[8:]
    with pytest.raises(pie.ProtocolError, match="number of input ciphertexts"):
        _strict_serve(frame(k_hello, hello) + frame(k_inputs, bad))
