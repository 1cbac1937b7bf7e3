"""Transcript checks: each end's running Poly1305 (fixed public key) of the
bytes it sent and received.

The oracle is the ``cryptography`` package's Poly1305 over the bytes the test
itself handed to the channel (chanutil.transcript_check).
"""

from __future__ import annotations

import threading

import pie
from chanutil import Pair, transcript_check
from pie import crypto


class Stream:
    """The oracle: the check of everything passed to update()."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)

    def update(self, data: bytes) -> None:
        self.data += data

    def digest(self) -> bytes:
        return transcript_check(bytes(self.data))


EMPTY = transcript_check(b"")


def test_fresh_channel_digests_are_empty_hash(pair: Pair) -> None:
    a, b = pair
    assert a.transcript() == (EMPTY, EMPTY)
    assert b.transcript() == (EMPTY, EMPTY)


def test_transcript_matches_the_oracle_and_peer(pair: Pair) -> None:
    """Raw sends, frames and a send larger than the 1 MiB buffer, in both directions."""
    a, b = pair
    big = crypto.Prg(crypto.secure_random(16)).random_bytes(3 << 20)
    ab = Stream()
    ba = Stream()

    def side_b() -> None:
        assert b.recv(5) == b"hello"
        assert b.recv_frame(3, max_bytes=10) == b"frame"
        assert b.recv(len(big)) == big
        b.send(b"reply")
        b.send_frame(4, b"")
        b.flush()

    peer = threading.Thread(target=side_b)
    peer.start()
    a.send(b"hello")
    ab.update(b"hello")
    a.send_frame(3, b"frame")
    ab.update((3).to_bytes(4, "little") + (5).to_bytes(8, "little") + b"frame")
    a.send(big)  # bypasses the buffer
    ab.update(big)
    a.flush()
    assert a.recv(5) == b"reply"
    assert a.recv_frame(4, max_bytes=0) == b""
    ba.update(b"reply" + (4).to_bytes(4, "little") + (0).to_bytes(8, "little"))
    peer.join(60)
    assert not peer.is_alive()

    assert a.transcript() == (ab.digest(), ba.digest())
    assert b.transcript() == (ba.digest(), ab.digest())


def test_sent_digest_covers_buffered_bytes_before_flush() -> None:
    a, b = pie.memory_pair()
    a.send(b"pending")
    assert a.transcript()[0] == transcript_check(b"pending")
    assert b.transcript()[1] == EMPTY
    a.flush()
    b.recv(7)
    assert b.transcript()[1] == a.transcript()[0]


def test_snapshot_does_not_stop_the_running_check() -> None:
    a, b = pie.memory_pair()
    a.send(b"one")
    first = a.transcript()[0]
    a.send(b"two")
    a.flush()
    b.recv(6)
    assert first == transcript_check(b"one")
    assert a.transcript()[0] == b.transcript()[1] == transcript_check(b"onetwo")


def test_reset_stats_keeps_transcript() -> None:
    a, b = pie.memory_pair()
    a.send(b"abc")
    a.flush()
    b.recv(3)
    before = (a.transcript(), b.transcript())
    a.reset_stats()
    b.reset_stats()
    assert (a.transcript(), b.transcript()) == before


def test_different_split_same_stream_same_digest() -> None:
    """The digest covers the byte stream, not how it was cut into calls."""
    a, b = pie.memory_pair()
    data = crypto.secure_random(10000)
    for i in range(0, len(data), 777):
        a.send(data[i : i + 777])
    a.flush()
    b.recv(4000)
    b.recv(6000)
    assert a.transcript()[0] == b.transcript()[1] == transcript_check(data)


def test_tampered_byte_changes_digest() -> None:
    a, b = pie.memory_pair()
    c, d = pie.memory_pair()
    data = bytearray(crypto.secure_random(64))
    a.send(bytes(data))
    a.flush()
    b.recv(64)
    data[17] ^= 1
    c.send(bytes(data))
    c.flush()
    d.recv(64)
    assert b.transcript()[1] != d.transcript()[1]


def test_a_pair_made_without_the_check_keeps_none() -> None:
    """The measurement-only pair (``transcript_check=False``) hashes nothing on
    either end, so its sealed checks carry zeros; the default pair checks."""
    a, b = pie._core.memory_pair(transcript_check=False)
    a.send(b"abc")
    a.flush()
    assert b.recv(3) == b"abc"
    assert a.transcript() == b.transcript() == (bytes(16), bytes(16))
    c, d = pie.memory_pair()
    c.send(b"abc")
    c.flush()
    d.recv(3)
    assert c.transcript()[0] == d.transcript()[1] == transcript_check(b"abc") != bytes(16)
