"""Chou-Orlandi base OT and IKNP extension: correctness of correlated, random
and chosen-message OT, point validation, and the session structure."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import pie
from pie import crypto, gc

FRAME_SENDER_POINT = 0x4F540001
FRAME_RECEIVER_POINTS = 0x4F540002


def both(left: Callable[[], Any], right: Callable[[], Any]) -> tuple[Any, Any]:
    """Run right in a thread and left here; re-raise the first failure."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = right()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    try:
        value = left()
    finally:
        t.join(timeout=60)
    if "error" in box:
        raise box["error"]
    return value, box["value"]


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def blocks(data: bytes) -> list[bytes]:
    return [data[i : i + 16] for i in range(0, len(data), 16)]


def test_base_ot_delivers_the_chosen_key() -> None:
    a, b = pie.memory_pair()
    sid = crypto.secure_random(16)
    choices = bytes([0, 1, 1, 0, 1] * 10)
    pairs, keys = both(lambda: gc.base_ot_send(a, sid, len(choices)), lambda: gc.base_ot_receive(b, sid, choices))
    assert len(pairs) == len(keys) == len(choices)
    for (k0, k1), k, c in zip(pairs, keys, choices):
        assert k == (k1 if c else k0)
        assert k != (k0 if c else k1)
    every = [k for pair in pairs for k in pair]
    assert len(set(every)) == len(every)


def test_base_ot_keys_depend_on_the_session_id() -> None:
    a, b = pie.memory_pair()
    pairs, keys = both(
        lambda: gc.base_ot_send(a, bytes(16), 4), lambda: gc.base_ot_receive(b, bytes([1]) + bytes(15), b"\0\1\0\1")
    )
    assert all(k not in pair for pair, k in zip(pairs, keys))


@pytest.mark.parametrize(
    "point",
    [
        b"\x02" + b"\xff" * 32,  # x beyond the field prime
        b"\x05" + b"\x01" * 32,  # not a point encoding
        b"\x00" * 33,  # not an encoding (infinity's is 1 byte, refused by the size check)
        b"\x02" + bytes(31) + b"\x01",  # x = 1: no point on P-256 has it (checked by Euler)
    ],
)
def test_base_ot_receiver_rejects_invalid_points(point: bytes) -> None:
    a, b = pie.memory_pair()
    a.send_frame(FRAME_SENDER_POINT, point)
    with pytest.raises(pie.ProtocolError, match="invalid elliptic-curve point"):
        gc.base_ot_receive(b, bytes(16), b"\0\1")


def test_base_ot_sender_rejects_invalid_points() -> None:
    a, b = pie.memory_pair()

    def bad_receiver() -> None:
        b.recv_frame(FRAME_SENDER_POINT, 33)
        b.send_frame(FRAME_RECEIVER_POINTS, b"\x02" + b"\xff" * 32)

    with pytest.raises(pie.ProtocolError, match="invalid elliptic-curve point"):
        both(lambda: gc.base_ot_send(a, bytes(16), 1), bad_receiver)


def test_base_ot_sender_refuses_a_receiver_point_that_makes_a_key_the_point_at_infinity() -> None:
    """A receiver that answers with the sender's own point A makes
    a*(B - A) the point at infinity: the sender must refuse, and this reaches
    that check (the point is a valid curve point, so decoding accepts it)."""
    a, b = pie.memory_pair()

    def reflecting_receiver() -> None:
        sender_point = b.recv_frame(FRAME_SENDER_POINT, 33)
        b.send_frame(FRAME_RECEIVER_POINTS, sender_point)

    with pytest.raises(pie.ProtocolError, match="degenerate receiver point"):
        both(lambda: gc.base_ot_send(a, bytes(16), 1), reflecting_receiver)


def test_base_ot_infinity_is_refused_by_its_size() -> None:
    a, b = pie.memory_pair()
    a.send_frame(FRAME_SENDER_POINT, b"\x00")  # the point at infinity's encoding
    with pytest.raises(pie.ProtocolError, match="size"):
        gc.base_ot_receive(b, bytes(16), b"\0\1")


def test_base_ot_wrong_sizes_are_protocol_errors() -> None:
    a, b = pie.memory_pair()
    a.send_frame(FRAME_SENDER_POINT, b"\x02" * 10)
    with pytest.raises(pie.ProtocolError, match="size"):
        gc.base_ot_receive(b, bytes(16), b"\0")
    with pytest.raises(ValueError, match="choices"):
        gc.base_ot_receive(b, bytes(16), b"\2")


def iknp_pair() -> tuple[gc.IknpSender, gc.IknpReceiver]:
    a, b = pie.memory_pair()
    return gc.IknpSender(a), gc.IknpReceiver(b)


def test_correlated_ot_across_batches_and_chunks() -> None:
    sender, receiver = iknp_pair()
    delta = sender.delta
    assert delta[0] & 1
    # The second batch crosses the 2^17-OT chunk boundary of one extension round.
    for n in (1, 300, (1 << 17) + 77):
        choices = crypto.Prg().random_bytes(n)
        choices = bytes(c & 1 for c in choices)
        q, t = both(lambda n=n: sender.send_cot(n), lambda c=choices: receiver.recv_cot(c))
        qs, ts = blocks(q), blocks(t)
        for i in range(0, n, max(1, n // 997)):
            assert ts[i] == (xor(qs[i], delta) if choices[i] else qs[i])
        assert len(set(qs[: min(n, 5000)])) == min(n, 5000)
    assert sender.count == receiver.count == 1 + 300 + (1 << 17) + 77


def test_random_and_chosen_ot() -> None:
    sender, receiver = iknp_pair()
    choices = bytes([1, 0, 0, 1, 1, 1, 0, 0, 1] * 7)
    n = len(choices)
    (k0, k1), k = both(lambda: sender.send_random(n), lambda: receiver.recv_random(choices))
    for i, c in enumerate(choices):
        got = blocks(k)[i]
        assert got == (blocks(k1)[i] if c else blocks(k0)[i])
        assert got != (blocks(k0)[i] if c else blocks(k1)[i])
    m0, m1 = crypto.secure_random(16 * n), crypto.secure_random(16 * n)
    _, m = both(lambda: sender.send_chosen(m0, m1), lambda: receiver.recv_chosen(choices))
    for i, c in enumerate(choices):
        assert blocks(m)[i] == (blocks(m1)[i] if c else blocks(m0)[i])


def test_random_ot_keys_are_not_the_raw_correlation() -> None:
    """Random OT hashes the correlation away: k0 ^ k1 is not Delta."""
    sender, receiver = iknp_pair()
    (k0, k1), _ = both(lambda: sender.send_random(64), lambda: receiver.recv_random(bytes(64)))
    assert all(xor(a, b) != sender.delta for a, b in zip(blocks(k0), blocks(k1)))


def test_fresh_delta_and_validation() -> None:
    a, b = pie.memory_pair()
    deltas = {gc.IknpSender(a).delta for _ in range(8)}
    assert len(deltas) == 8 and all(d[0] & 1 for d in deltas)
    with pytest.raises(ValueError, match="delta: lowest bit"):
        gc.IknpSender(a, bytes(16))
    with pytest.raises(ValueError, match="choices"):
        gc.IknpReceiver(b).recv_cot(b"\0\3")
    assert gc.IknpSender(a, b"\1" + bytes(15)).delta == b"\1" + bytes(15)
