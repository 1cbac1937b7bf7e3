"""Emulated network links: what a deployment's bandwidth and latency cost.

A :class:`Link` wraps the two ends of any connection (the in-memory pair,
TCP, TLS) in a native channel decorator that paces every byte like a
serialising link -- each direction sends one byte per ``1 / bandwidth``
seconds and delivers it ``rtt / 2`` later -- so a protocol run over it takes
the time it would take across that network. The wrapped ends' counters and
transcripts are those of the unwrapped channel; the waits happen in C++
without the GIL, so every part of the engine is paced.

Presets (:data:`PRESETS`, by name wherever a link is accepted):

- ``loopback``: no emulation; the transport as it is.
- ``lan``: 3 Gbit/s each way, 0.3 ms round trip -- the LAN setting of Cheetah
  (Huang et al., USENIX Security 2022), which throttles a link to about
  3 Gbit/s with 0.3 ms ping.
- ``wan``: 400 Mbit/s each way, 40 ms round trip -- Cheetah's WAN setting.

CrypTFlow2 (Rathee et al., CCS 2020) reports LAN figures at 377 MB/s with
0.8 ms echo latency and WAN figures at 40 MB/s with 80 ms;
``Link(bandwidth=377e6 * 8, rtt=0.8e-3)`` and ``Link(bandwidth=40e6 * 8,
rtt=0.08)`` reproduce those settings.

:func:`kernel_link_pair` connects two ends across the kernel's own traffic
control (netem, or a token bucket where the kernel lacks netem, on a veth
pair between two network namespaces it makes and removes), the reference the
emulated link is validated against where the machine allows it.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ._native import core
from .channel import Channel, TcpListener, memory_pair, tcp_connect

__all__ = ["PRESETS", "Link", "NetemUnavailableError", "kernel_link_pair", "resolve_link"]

DEFAULT_SEND_BUFFER = 4 << 20  # bytes: Linux's largest default TCP send buffer (tcp_wmem)


def _bandwidth(value: float | None, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be a positive number of bits per second (None: unlimited), got {value!r}")
    return float(value)


def _seconds(value: float, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be a non-negative number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True, init=False)
class Link:
    """A network link between client and server, emulated on this host.

    Args:
        bandwidth: bits per second of each direction (None: unlimited).
        rtt: round-trip time in seconds; each direction delays by half of it.
        c2s_bandwidth, s2c_bandwidth: per-direction bits per second
            (client to server, server to client), overriding ``bandwidth``.
        c2s_delay, s2c_delay: per-direction one-way delays in seconds,
            overriding ``rtt / 2``.
        send_buffer: bytes a sender may run ahead of its link before it blocks
            (a socket's send buffer).
        name: how reports and tables name the link.

    Raises:
        ValueError: a bandwidth that is not positive, a negative or non-finite
            time, a send buffer below one byte.
    """

    name: str
    c2s_bandwidth: float | None
    s2c_bandwidth: float | None
    c2s_delay: float
    s2c_delay: float
    send_buffer: int

    def __init__(self, bandwidth: float | None = None, rtt: float = 0.0, *,
                 c2s_bandwidth: float | None = None, s2c_bandwidth: float | None = None,
                 c2s_delay: float | None = None, s2c_delay: float | None = None,
                 send_buffer: int = DEFAULT_SEND_BUFFER, name: str = "custom") -> None:
        bandwidth = _bandwidth(bandwidth, "bandwidth")
        rtt = _seconds(rtt, "rtt")
        if isinstance(send_buffer, bool) or not isinstance(send_buffer, int) or send_buffer < 1:
            raise ValueError(f"send_buffer must be a positive number of bytes, got {send_buffer!r}")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        values = {
            "name": name,
            "c2s_bandwidth": bandwidth if c2s_bandwidth is None else _bandwidth(c2s_bandwidth, "c2s_bandwidth"),
            "s2c_bandwidth": bandwidth if s2c_bandwidth is None else _bandwidth(s2c_bandwidth, "s2c_bandwidth"),
            "c2s_delay": rtt / 2 if c2s_delay is None else _seconds(c2s_delay, "c2s_delay"),
            "s2c_delay": rtt / 2 if s2c_delay is None else _seconds(s2c_delay, "s2c_delay"),
            "send_buffer": send_buffer,
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @classmethod
    def preset(cls, name: str) -> Link:
        """The named preset (``loopback``, ``lan``, ``wan``; module docstring).

        Raises:
            ValueError: an unknown name (the message lists the known ones).
        """
        try:
            return PRESETS[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown link {name!r}; known links: {', '.join(PRESETS)}") from None

    @property
    def rtt(self) -> float:
        """Round-trip time in seconds (both one-way delays)."""
        return self.c2s_delay + self.s2c_delay

    @property
    def emulated(self) -> bool:
        """False when the link adds nothing (unlimited both ways, no delay)."""
        return not (self.c2s_bandwidth is None and self.s2c_bandwidth is None and self.rtt == 0)

    def one_way_seconds(self, nbytes: int, direction: str) -> float:
        """Seconds for a message of ``nbytes`` to arrive in full in ``direction``
        (``"c2s"`` or ``"s2c"``) on an idle link: serialisation plus delay."""
        if direction not in ("c2s", "s2c"):
            raise ValueError(f"direction must be 'c2s' or 's2c', got {direction!r}")
        return self.delay(direction) + nbytes * self.seconds_per_byte(direction)

    def seconds_per_byte(self, direction: str) -> float:
        """Serialisation time of one byte in ``direction`` (0: unlimited)."""
        bits = self.c2s_bandwidth if direction == "c2s" else self.s2c_bandwidth
        return 0.0 if bits is None else 8.0 / bits

    def delay(self, direction: str) -> float:
        """One-way delay of ``direction`` in seconds."""
        return self.c2s_delay if direction == "c2s" else self.s2c_delay

    def wrap(self, channel: Channel, side: str) -> Channel:
        """Wrap one end of a connection; ``side`` is the party using this end
        (``"client"`` or ``"server"``). The other end must be wrapped by the
        same link for the other side, on the same host. The returned channel
        replaces ``channel``, which must not be used directly afterwards;
        closing it closes ``channel``. A link that adds nothing returns
        ``channel`` itself."""
        if side not in ("client", "server"):
            raise ValueError(f"side must be 'client' or 'server', got {side!r}")
        if not self.emulated:
            return channel
        out, into = ("c2s", "s2c") if side == "client" else ("s2c", "c2s")
        return core.link_channel(channel, self._bytes_per_second(out), self.delay(out),
                                 self._bytes_per_second(into), self.delay(into), self.send_buffer)

    def memory_pair(self, capacity_bytes: int = 64 << 20) -> tuple[Channel, Channel]:
        """An in-process connection across this link: ``(server_end, client_end)``."""
        server_end, client_end = memory_pair(capacity_bytes)
        return self.wrap(server_end, "server"), self.wrap(client_end, "client")

    def describe(self) -> str:
        """``name (bandwidth, RTT)``, e.g. ``wan (400 Mbit/s, 40 ms RTT)``."""
        if not self.emulated:
            return f"{self.name} (no emulation)"
        if self.c2s_bandwidth == self.s2c_bandwidth:
            rate = _rate(self.c2s_bandwidth)
        else:
            rate = f"{_rate(self.c2s_bandwidth)} up, {_rate(self.s2c_bandwidth)} down"
        return f"{self.name} ({rate}, {_ms(self.rtt)} RTT)"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON reports (bandwidths in bits per second, None: unlimited)."""
        return {"name": self.name, "c2s_bandwidth": self.c2s_bandwidth, "s2c_bandwidth": self.s2c_bandwidth,
                "c2s_delay": self.c2s_delay, "s2c_delay": self.s2c_delay, "rtt": self.rtt,
                "send_buffer": self.send_buffer}

    def _bytes_per_second(self, direction: str) -> float:
        bits = self.c2s_bandwidth if direction == "c2s" else self.s2c_bandwidth
        return 0.0 if bits is None else bits / 8.0


def _rate(bits: float | None) -> str:
    if bits is None:
        return "unlimited"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} bit/s"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:g} ms"


PRESETS: dict[str, Link] = {
    "loopback": Link(name="loopback"),
    "lan": Link(bandwidth=3e9, rtt=0.3e-3, name="lan"),
    "wan": Link(bandwidth=400e6, rtt=40e-3, name="wan"),
}


def resolve_link(link: Link | str | None) -> Link | None:
    """A :class:`Link`, a preset name, or None (no link) as a Link or None.

    Raises:
        ValueError: an unknown preset name.
        TypeError: anything else.
    """
    if link is None or isinstance(link, Link):
        return link
    if isinstance(link, str):
        return Link.preset(link)
    raise TypeError(f"link must be a pie.Link, a preset name or None, got {type(link).__name__}")


# ------------------------------------------------------------------ kernel netem


class NetemUnavailableError(RuntimeError):
    """The kernel's traffic control cannot emulate the link here (not root, no
    ``ip`` or ``tc``, or the kernel refused a namespace, veth pair or qdisc --
    e.g. a kernel built without netem)."""


_NETNS_COUNTER = itertools.count()
_CLONE_NEWNET = 0x40000000


def _run(*args: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise NetemUnavailableError(f"{' '.join(args)}: {(proc.stderr or proc.stdout).strip()}")


def _qdisc_args(link: Link, direction: str, qdisc: str) -> list[str]:
    """The qdisc of one direction's egress. ``netem``: delay plus rate, with a
    queue far longer than the bandwidth-delay product (the link never drops).
    ``tbf``: a token bucket at the rate (no delay) with a 16 KiB burst, small
    against the messages so that the link serialises them as the emulator
    does (tbf splits larger segmentation-offload packets itself)."""
    bits = link.c2s_bandwidth if direction == "c2s" else link.s2c_bandwidth
    if qdisc == "netem":
        args = ["netem", "delay", f"{link.delay(direction) * 1e6:.0f}us", "limit", "1000000"]
        return args + (["rate", f"{bits:.0f}bit"] if bits is not None else [])
    return ["tbf", "rate", f"{bits:.0f}bit", "burst", str(16 << 10), "limit", str(16 << 20)]


def _in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread that has entered network namespace ``name``
    (sockets it creates live there; they work from any thread afterwards)."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if hasattr(os, "setns"):
                    os.setns(fd, os.CLONE_NEWNET)
                else:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as exc:  # handed to the caller
            out["error"] = exc

    worker = threading.Thread(target=body, name=f"pie-netns-{name}")
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@contextmanager
def kernel_link_pair(link: Link, qdisc: str = "netem",
                     timeout: float = 10.0) -> Iterator[tuple[Channel, Channel]]:
    """A TCP connection across the kernel's traffic control with ``link``'s
    settings, for validating the emulator: yields ``(server_end, client_end)``,
    plain TCP channels (not wrapped), connected over a veth pair between two
    network namespaces made for this call, with ``qdisc`` on each end's egress:
    ``"netem"`` (the direction's delay and rate) or ``"tbf"`` (a token bucket
    at the direction's rate, for links without delay on kernels without
    netem). Traffic stays inside those namespaces; they are removed on exit,
    and the channels closed.

    Raises:
        ValueError: an unknown qdisc; ``tbf`` for a link with a delay or an
            unlimited direction.
        NetemUnavailableError: not root, ``ip`` or ``tc`` missing, or the
            kernel refused (the message says which command and why).
    """
    if qdisc not in ("netem", "tbf"):
        raise ValueError(f"qdisc must be 'netem' or 'tbf', got {qdisc!r}")
    if qdisc == "tbf" and (link.rtt > 0 or link.c2s_bandwidth is None or link.s2c_bandwidth is None):
        raise ValueError("tbf emulates a rate only: the link needs both bandwidths and no delay")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise NetemUnavailableError("network namespaces and netem need root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetemUnavailableError(f"the '{tool}' command (iproute2) is not installed")
    tag = f"{os.getpid()}n{next(_NETNS_COUNTER)}"
    spaces = {"server": f"pie-netem-{tag}-s", "client": f"pie-netem-{tag}-c"}
    devices = {"server": f"pie{tag}s"[:15], "client": f"pie{tag}c"[:15]}
    addresses = {"server": "10.0.0.1", "client": "10.0.0.2"}
    made: list[str] = []
    ends: list[Channel] = []
    try:
        for side in ("server", "client"):
            _run("ip", "netns", "add", spaces[side])
            made.append(spaces[side])
        _run("ip", "link", "add", devices["server"], "netns", spaces["server"], "type", "veth",
             "peer", "name", devices["client"], "netns", spaces["client"])
        for side, direction in (("server", "s2c"), ("client", "c2s")):
            ns, dev = spaces[side], devices[side]
            _run("ip", "-n", ns, "addr", "add", f"{addresses[side]}/30", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *_qdisc_args(link, direction, qdisc))
        listener = _in_netns(spaces["server"], lambda: TcpListener(addresses["server"], 0))
        with listener:
            accepted: dict[str, Any] = {}

            def accept() -> None:
                try:
                    accepted["channel"] = listener.accept(timeout)
                except BaseException as exc:  # handed to the caller
                    accepted["error"] = exc

            acceptor = threading.Thread(target=accept)
            acceptor.start()
            try:
                ends.append(_in_netns(spaces["client"],
                                      lambda: tcp_connect(addresses["server"], listener.port, timeout)))
            finally:
                acceptor.join()
            if "error" in accepted:
                raise accepted["error"]
            ends.insert(0, accepted["channel"])
        yield ends[0], ends[1]
    finally:
        for ch in ends:
            ch.close()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)
