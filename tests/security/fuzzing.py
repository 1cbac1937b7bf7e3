"""Shared pieces of the fuzzers: run length, byte mutations, a corrupting relay.

The default test run tries ``PIE_FUZZ_EXAMPLES`` inputs per fuzz target
(default 20, derandomised so the run is reproducible; a target's ``scale``
multiplies the count). A long run sets a larger count, which also switches to
fresh random inputs on every run (README, "Fuzzing")::

    PIE_FUZZ_EXAMPLES=1000 python -m pytest tests/security -k fuzz \
        -o timeout=3600 -p no:cacheprovider --hypothesis-show-statistics
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DEFAULT_EXAMPLES = 20
EXAMPLES = int(os.environ.get("PIE_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))
LONG_RUN = "PIE_FUZZ_EXAMPLES" in os.environ

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(scale: float = 1.0) -> Callable[[F], F]:
    """Hypothesis settings of a fuzz target: ``scale * PIE_FUZZ_EXAMPLES``
    examples, no deadline, no example database (nothing written to disk); a
    failure prints the blob that replays it."""
    return settings(  # type: ignore[return-value]
        max_examples=max(1, int(EXAMPLES * scale)),
        deadline=None,
        database=None,
        derandomize=not LONG_RUN,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


# Values that tend to break length and count fields.
INTERESTING_U64 = [0, 1, 2, 3, 7, 8, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                   1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


Edit = tuple[str, int, int, bool, bytes]


@st.composite
def edits(draw: st.DrawFn) -> list[Edit]:
    """One to four random edits for :func:`mutate`: bit flips, byte writes,
    truncation, insertion, deletion, duplication of a range, or a little-endian
    64/32-bit field overwritten with a boundary value. Drawn independently of
    the data they will change, so a failing example replays exactly."""
    ops = ["flip", "byte", "truncate", "insert", "delete", "dup", "u64", "u32"]
    return [
        (draw(st.sampled_from(ops)), draw(st.integers(0, (1 << 32) - 1)), draw(st.integers(0, 255)),
         draw(st.booleans()), draw(st.binary(min_size=1, max_size=64)))
        for _ in range(draw(st.integers(1, 4)))
    ]


def mutate(data: bytes, changes: list[Edit], focus: int | None = None) -> bytes:
    """Apply ``changes`` to ``data``. With ``focus``, about half of the edits
    land in the first ``focus`` bytes (headers, counts and length fields)."""
    out = bytearray(data)
    for op, where, arg, focused, blob in changes:
        n = len(out)
        limit = min(n, focus) if focus is not None and focused else n
        pos = where % limit if limit else 0
        if op == "flip" and n:
            out[pos] ^= 1 << (arg % 8)
        elif op == "byte" and n:
            out[pos] = arg
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = blob
        elif op == "delete" and n:
            del out[pos:pos + 1 + arg % 64]
        elif op == "dup" and n:
            out[pos:pos] = out[pos:pos + 1 + arg % 64]
        elif op in ("u64", "u32") and n:
            size = 8 if op == "u64" else 4
            value = INTERESTING_U64[arg % len(INTERESTING_U64)] & ((1 << (8 * size)) - 1)
            out[pos:pos + size] = value.to_bytes(size, "little")
    return bytes(out)


#: Calls made by unpickling a hostile test object (see ``record_call``).
CALLS: list[str] = []


def record_call(what: str) -> None:
    """What a hostile pickle in the tests invokes: a loader that refuses it
    never gets here."""
    CALLS.append(what)


FINISH_WITHIN = 30.0  # a connection not ended by then counts as a hang


@dataclass
class Corruption:
    """What the relay does to the client's stream at byte ``offset``."""

    op: str
    offset: int
    arg: int = 0
    blob: bytes = b""


@dataclass
class Relay:
    """A man in the middle between one client and the server on
    ``server_port``: it records both byte streams as they arrive
    (``client_bytes``, ``server_bytes``) and the offsets at which its reads
    of the client's stream began (``chunks``: message starts, as each flush
    tends to arrive in one read), and applies ``corruption`` to what it
    forwards to the server."""

    server_port: int
    corruption: Corruption | None = None
    chunks: list[int] = field(default_factory=list)
    client_bytes: bytearray = field(default_factory=bytearray)
    server_bytes: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(FINISH_WITHIN)
        try:
            client, _ = self.sock.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.server_port))
        back = threading.Thread(target=self._pump, args=(upstream, client, None, self.server_bytes))
        back.start()
        self._pump(client, upstream, self.corruption, self.client_bytes)
        back.join()
        client.close()
        upstream.close()

    def _pump(self, src: socket.socket, dst: socket.socket, corruption: Corruption | None,
              record: bytearray) -> None:
        src.settimeout(FINISH_WITHIN)
        offset = 0
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if record is self.client_bytes:
                    self.chunks.append(offset)
                record += data
                start, offset = offset, offset + len(data)
                if corruption is not None and start <= corruption.offset < offset:
                    if not self._corrupt(dst, data, corruption.offset - start, corruption):
                        break
                    corruption = None
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:  # pass the hang-up on, both ways
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _corrupt(dst: socket.socket, data: bytes, at: int, c: Corruption) -> bool:
        """Send ``data`` corrupted at ``at``; False ends this direction."""
        head, tail = bytearray(data[:at]), bytearray(data[at:])
        if c.op == "flip":
            tail[0] ^= 1 << (c.arg % 8)
        elif c.op == "u64":
            tail[:8] = (c.arg).to_bytes(8, "little")
        elif c.op == "insert":
            tail[:0] = c.blob
        elif c.op == "delete":
            del tail[:1 + c.arg % 256]
        elif c.op in ("close", "stall", "garbage"):
            dst.sendall(bytes(head) + (c.blob if c.op == "garbage" else b""))
            if c.op == "stall":  # say nothing more, longer than the server's deadline in the tests
                threading.Event().wait(2.0)
            return False
        dst.sendall(bytes(head + tail))
        return True

    def close(self) -> None:
        self.sock.close()
        self.thread.join()
