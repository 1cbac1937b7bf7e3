"""Channel test helpers: connected pairs over every transport (the ``pair`` fixture
of core/conftest.py), a peer thread, the checks every transport must pass, and
the transcript oracle (importable from every test directory: tests/ is on the path)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

import pie
import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from pie import crypto

#: The fixed public key of the channels' transcript checks.
TRANSCRIPT_KEY = b"pie transcript check poly1305 v1"


def transcript_check(stream: bytes) -> bytes:
    """The oracle of ``Channel.transcript()``: the ``cryptography`` package's
    Poly1305 of a whole byte stream under the public key."""
    return Poly1305.generate_tag(TRANSCRIPT_KEY, stream)

Pair = tuple[pie.Channel, pie.Channel]

#: Message sizes of :func:`exchange`, each way (empty, tiny and multi-MiB ones).
SIZES_AB = (0, 1, 15, 4096, 3 << 20, 7)
SIZES_BA = (5, 1 << 21, 0, 33)


def tcp_pair() -> Pair:
    """Two connected loopback TCP channels: (the connecting end, the accepted end)."""
    with pie.TcpListener("127.0.0.1", 0) as listener:
        client = pie.tcp_connect("127.0.0.1", listener.port, timeout=5.0)
        server = listener.accept(timeout=5.0)
    return client, server


MAKERS: dict[str, Callable[[], Pair]] = {"memory": pie.memory_pair, "tcp": tcp_pair}


class Runner:
    """Runs a function in a thread and re-raises its exception on join."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None

        def body() -> None:
            try:
                self.result = fn()
            except BaseException as exc:  # handed back to the test thread
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 120.0) -> object:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "peer thread hung"
        if self.error is not None:
            raise self.error
        return self.result


def exchange(a: pie.Channel, b: pie.Channel, end: Callable[[pie.Channel], object] = pie.Channel.flush,
             sizes_ab: Sequence[int] = SIZES_AB,
             sizes_ba: Sequence[int] = SIZES_BA) -> tuple[list[bytes], list[bytes]]:
    """Random messages of ``sizes_ab`` from ``a`` to ``b`` (a peer thread), then of
    ``sizes_ba`` back, ``b`` finishing with ``end(b)``; asserts each arrives intact
    and returns the payloads of both ways."""
    payload_ab = [crypto.secure_random(n) for n in sizes_ab]
    payload_ba = [crypto.secure_random(n) for n in sizes_ba]

    def side_b() -> list[bytes]:
        got = [b.recv(n) for n in sizes_ab]
        for p in payload_ba:
            b.send(p)
        end(b)
        return got

    peer = Runner(side_b)
    for p in payload_ab:
        a.send(p)
    a.flush()
    got_ba = [a.recv(n) for n in sizes_ba]
    assert peer.join() == payload_ab
    assert got_ba == payload_ba
    return payload_ab, payload_ba


def large_message_intact(a: pie.Channel, b: pie.Channel, n: int) -> None:
    """One random ``n``-byte message from ``a`` arrives at ``b`` intact (checked by hash)."""
    payload = crypto.Prg(crypto.secure_random(16)).random_bytes(n)
    peer = Runner(lambda: hashlib.sha256(b.recv(n)).digest())
    a.send(payload)
    a.flush()
    assert peer.join() == hashlib.sha256(payload).digest()


def peer_closed_mid_message(a: pie.Channel, b: pie.Channel) -> None:
    """``a`` closes after half of the message ``b`` waits for: ``b`` raises
    :class:`pie.PeerClosedError`, saying how much arrived."""
    a.send(b"x" * 1000)
    a.flush()
    a.close()
    with pytest.raises(pie.PeerClosedError, match="1000 of 2000"):
        b.recv(2000)
