"""Shared pieces of the fault-injection and load tests: a tiny Plan, a server
in a thread, a faulty loopback TCP proxy, and an exactness check."""

from __future__ import annotations

import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pie
import torch
from pie import serve
from pie.protocol import ClientSession
from torch import nn

SHAPE = (3, 4, 4)


class _Tiny(nn.Module):
    """Two ReLU layers (two online rounds), two HE rings, an FC output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(torch.flatten(x, 1))


def tiny_plan() -> pie.Plan:
    torch.manual_seed(0)
    return pie.compile(_Tiny().eval(), SHAPE)


def exact_inference(port: int, plan: pie.Plan, seed: int, timeout: float = 60.0) -> None:
    """A well-behaved client over the integer path: its output residues must
    equal ``plan.run_reference_int`` bit for bit."""
    x_int = np.random.default_rng(seed).integers(0, plan.pixel_max + 1, size=plan.input_shape)
    with pie.tcp_connect("127.0.0.1", port) as ch:
        ch.timeout = timeout
        session = ClientSession(pie.Client(serve.fetch_public_plan(ch), threads=1), ch)
        session.offline()
        y = session.online_int(x_int)
    assert np.array_equal(y, plan.run_reference_int(x_int))


ACTIONS = ("close", "stall", "corrupt")


@dataclass
class Fault:
    """At conversation turn ``turn`` (0: the client's first message), ``action``."""

    turn: int
    action: str


@dataclass
class Turn:
    direction: str  # "c2s" or "s2c"
    nbytes: int = 0


@dataclass
class FaultProxy:
    """A loopback TCP proxy for one connection to ``upstream``.

    It counts the turns of the conversation (maximal runs of bytes in one
    direction: the protocol's message boundaries) and applies ``fault`` when
    its turn starts: ``close`` shuts both sides before forwarding any byte of
    it, ``stall`` stops forwarding (and drains both sides) until an end hangs
    up, ``corrupt`` flips one byte of the turn's first chunk and forwards it.
    """

    upstream: int
    fault: Fault | None = None
    turns: list[Turn] = field(default_factory=list)
    fault_time: float | None = None  # time.monotonic() of the fault
    flipped: int | None = None  # offset of the flipped byte within its turn

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "proxy did not finish"

    def _run(self) -> None:
        with self._listener:
            self._listener.settimeout(60)
            client, _ = self._listener.accept()
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as upstream:
            self._pump(client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, (upstream, "c2s"))
        sel.register(upstream, selectors.EVENT_READ, (client, "s2c"))
        stalled = False
        deadline = time.monotonic() + 120  # the test's own safety net
        with sel:
            while time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.5):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst, direction = key.data
                    try:
                        data = src.recv(1 << 16)
                    except ConnectionError:
                        data = b""
                    if not data:
                        return  # one end hung up: the other follows when the sockets close
                    if not self.turns or self.turns[-1].direction != direction:
                        self.turns.append(Turn(direction))
                        if self.fault is not None and self.fault.turn == len(self.turns) - 1:
                            self.fault_time = time.monotonic()
                            if self.fault.action == "close":
                                return
                            if self.fault.action == "stall":
                                stalled = True
                            else:
                                self.flipped = random.Random(self.fault.turn).randrange(len(data))
                                data = (data[: self.flipped] + bytes([data[self.flipped] ^ 0xFF])
                                        + data[self.flipped + 1:])
                    self.turns[-1].nbytes += len(data)
                    if not stalled:
                        try:
                            dst.sendall(data)
                        except ConnectionError:
                            return
