"""Fuzzing the server's message handling: a real server loop
(``pie.serve.serve_forever`` on a TCP listener) and a real client
(``pie.serve.query``) talk through a relay that corrupts the client's byte
stream at a chosen offset: every message (plan request, handshake, HE keys and
ciphertexts, OT and garbled-circuit messages, masked input, transcript checks)
is hit, with bit flips, overwritten length fields, inserted, deleted or
garbage bytes, a hang-up or a stall. Garbage connections that never speak the
protocol are fuzzed too. Every connection must end, within its deadline, as
served, refused, or failed with a typed error (ChannelError or ValueError);
an internal error, a crash or a hang fails the test."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from fuzzing import FINISH_WITHIN, Corruption, Relay, fuzz
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pie
from pie.protocol.limits import Limits
from pie.serve import SessionLog, query, serve_forever

TYPED = (pie.ChannelError, ValueError)
DEADLINE = 1.0  # the server's handshake and idle timeouts in these tests
IMAGE = np.full((3, 4, 4), 0.5)


@dataclass
class Server:
    port: int
    log: SessionLog
    seen: int = 0


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
    plan = pie.compile(net, (3, 4, 4))
    listener = pie.TcpListener("127.0.0.1", 0)
    log, stop = SessionLog(), threading.Event()
    limits = Limits(handshake_timeout=DEADLINE, idle_timeout=DEADLINE)
    loop = threading.Thread(target=serve_forever, args=(pie.Server(plan, threads=1), listener, limits, stop, log))
    loop.start()
    try:
        yield Server(listener.port, log)
    finally:
        stop.set()
        loop.join()
        listener.close()


def finished(server: Server) -> pie.serve.SessionRecord:
    """The record of the connection just made; fails on a hang or an untyped error."""
    server.seen += 1
    assert server.log.wait_for(server.seen, FINISH_WITHIN), "the server did not end the connection"
    record = server.log.records()[-1]
    assert record.outcome in ("ok", "refused", "failed")
    if record.error is not None:
        assert issubclass(record.error, TYPED), (
            f"untyped server error in phase {record.phase}: {record.error.__name__}: {record.message}")
    return record


def run_client(port: int) -> None:
    try:
        with pie.tcp_connect("127.0.0.1", port, timeout=5.0) as channel:
            channel.timeout = FINISH_WITHIN
            query(channel, IMAGE, threads=1)
    except TYPED:
        pass  # the client may fail too; the server is under test


@pytest.fixture(scope="module")
def boundaries(server: Server) -> list[int]:
    """Offsets in an honest client's stream where its messages begin (each
    read of the relay starts at one), and the stream's length."""
    relay = Relay(server.port)
    run_client(relay.port)
    relay.close()
    record = finished(server)
    assert record.outcome == "ok", record
    assert len(relay.chunks) >= 6  # plan request, hello, HE, OT, masked input, checks ...
    return relay.chunks


@fuzz(0.75)
@given(op=st.sampled_from(["flip", "flip", "u64", "insert", "delete", "close", "stall", "garbage"]),
       which=st.integers(0, 1 << 16), delta=st.integers(0, 24), far=st.integers(0, 1 << 24),
       anywhere=st.booleans(), arg=st.sampled_from([0, 1, 3, 7, 255, 1 << 32, 1 << 40, (1 << 64) - 1]),
       blob=st.binary(min_size=1, max_size=64))
def test_corrupted_client_stream(server: Server, boundaries: list[int], op: str, which: int, delta: int,
                                 far: int, anywhere: bool, arg: int, blob: bytes) -> None:
    # Near a message start (frame headers, counts, SEAL headers) or anywhere inside one.
    start = boundaries[which % len(boundaries)]
    offset = start + (far % 4096 if anywhere else delta)
    relay = Relay(server.port, Corruption(op, offset, arg, blob))
    run_client(relay.port)
    relay.close()
    finished(server)


@fuzz(0.5)
@given(blob=st.binary(max_size=256), hang_up=st.booleans())
def test_garbage_connections(server: Server, blob: bytes, hang_up: bool) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(blob)
        if not hang_up:  # stay silent: the handshake deadline must end it
            s.settimeout(FINISH_WITHIN)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    record = finished(server)
    assert record.outcome != "ok"


def test_server_still_serves_after_fuzzing(server: Server, boundaries: list[int]) -> None:
    relay = Relay(server.port)
    run_client(relay.port)
    relay.close()
    assert finished(server).outcome == "ok"
