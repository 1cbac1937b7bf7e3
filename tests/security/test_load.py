"""Load: eight concurrent well-behaved clients plus a stream of garbage
connections; every well-behaved client gets the exact output."""

from __future__ import annotations

import errno
import json
import random
import socket
import struct
import threading
from collections.abc import Callable

import pie
from netfaults import exact_inference, tiny_plan
from pie import serve
from pie.protocol import wire
from serverutil import serving

CLIENTS = 8
INFERENCES = 2  # per client, one after the other
GARBAGE_THREADS = 2
HALF_OPEN = 6  # silent connections each garbage thread keeps open (a new one per garbage message)


def _frame(kind: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack("<IQ", kind, len(payload) if length is None else length) + payload


def _send(port: int, data: bytes) -> None:
    """Connect, send ``data``, half-close and wait until the server hangs up."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(60)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(1 << 16):
                pass
        except ConnectionError:  # the server may hang up while we still send: fine
            pass
        except OSError as exc:  # half-closing a socket the server already reset: fine
            if exc.errno != errno.ENOTCONN:
                raise


def _garbage(port: int, digest: str, rng: random.Random) -> list[Callable[[], None]]:
    hello = json.dumps({"protocol": wire.PROTOCOL_VERSION, "plan": digest}).encode()
    return [
        lambda: _send(port, rng.randbytes(rng.randrange(1, 4096))),
        lambda: _send(port, _frame(wire.HELLO, json.dumps({"protocol": 1, "plan": digest}).encode())),
        lambda: _send(port, _frame(wire.HELLO, json.dumps({"protocol": 2, "plan": "f" * 64}).encode())),
        lambda: _send(port, _frame(wire.HELLO, b"[1, 2, 3]")),
        lambda: _send(port, _frame(wire.GET_PLAN, b"", length=(1 << 63) + rng.randrange(1 << 20))),
        lambda: _send(port, _frame(wire.HELLO, b"", length=1 << 32)),
        lambda: _send(port, _frame(wire.GET_PLAN, b"{}")[:7]),
        # Admitted, then nonsense where the sub-protocols expect their messages.
        lambda: _send(port, _frame(wire.HELLO, hello) + rng.randbytes(rng.randrange(1, 1 << 16))),
    ]


def test_eight_clients_and_a_stream_of_garbage() -> None:
    plan = tiny_plan()
    # Room for the eight clients and for the garbage connections that pass
    # the handshake (at most one per garbage thread at a time).
    limits = serve.Limits(max_sessions=CLIENTS + GARBAGE_THREADS, handshake_timeout=5.0, idle_timeout=30.0)
    done = threading.Event()
    garbage_sent = [0] * GARBAGE_THREADS
    errors: list[BaseException] = []

    with serving(pie.Server(plan, threads=1), limits) as (port, log):

        def garbage(k: int) -> None:
            rng = random.Random(k)
            kinds = _garbage(port, plan.digest(), rng)
            half_open: list[socket.socket] = []
            try:
                while not done.is_set():
                    if len(half_open) == HALF_OPEN:  # the oldest silent one goes away
                        half_open.pop(0).close()
                    half_open.append(socket.create_connection(("127.0.0.1", port)))
                    rng.choice(kinds)()
                    garbage_sent[k] += 1
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)
            finally:
                for sock in half_open:
                    sock.close()

        def client(k: int) -> None:
            try:
                for i in range(INFERENCES):
                    exact_inference(port, plan, seed=100 * k + i)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        noise = [threading.Thread(target=garbage, args=(k,)) for k in range(GARBAGE_THREADS)]
        for t in noise:
            t.start()
        clients = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(300)
        done.set()
        for t in noise:
            t.join(60)
        assert not any(t.is_alive() for t in clients + noise)
        assert not errors, errors
        assert log.wait_for(CLIENTS * INFERENCES + sum(garbage_sent), 60)

    counts = log.counts()
    assert counts["ok"] == CLIENTS * INFERENCES
    assert counts["refused"] == 0
    assert sum(garbage_sent) >= 20
    for record in log.records():
        if record.outcome == "failed":  # every failure typed: none is an internal error
            assert issubclass(record.error, pie.ChannelError), (record.error, record.message)  # type: ignore[arg-type]
