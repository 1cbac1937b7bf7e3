"""Helpers the benchmarks share: random batch-norm statistics for untrained
networks, connected channel pairs and the bulk transfer that measures their
bandwidth, and one inference across two channel ends (over TCP, optionally
across an emulated link)."""

from __future__ import annotations

import threading
import time

import numpy as np
import torch

import pie
from pie import crypto


def random_bn(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Untrained networks get non-trivial batch-norm statistics so the Plan's
    rings and truncations look like a trained network's."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return net.eval()


def tcp_pair(host: str = "127.0.0.1") -> tuple[pie.Channel, pie.Channel]:
    """Two connected TCP ends on ``host`` (an address of this machine): the
    connecting end, then the accepted one."""
    with pie.TcpListener(host, 0) as listener:
        connected = pie.tcp_connect(host, listener.port)
        accepted = listener.accept(timeout=60)
    return connected, accepted


def channel_pair(transport: str) -> tuple[pie.Channel, pie.Channel]:
    """Two connected ends of ``transport`` ("memory" or "tcp"), as the engine's runs use them."""
    return pie.memory_pair() if transport == "memory" else tcp_pair()


def transfer(a: pie.Channel, b: pie.Channel, payload: bytes, sink: bytearray) -> None:
    """Send ``payload`` from ``a`` into ``sink`` at ``b`` (a reader thread
    drains ``b`` as the sender fills the channel)."""
    reader = threading.Thread(target=b.recv_into, args=(sink,))
    reader.start()
    a.send(payload)
    a.flush()
    reader.join()


def channel_bytes_per_second(transport: str, size: int = 32 << 20, rounds: int = 3) -> float:
    """Bandwidth of a fresh ``transport`` pair: ``size`` bytes over the median
    of ``rounds`` timed :func:`transfer` calls after one warm-up."""
    a, b = channel_pair(transport)
    payload, sink = crypto.Prg().random_bytes(size), bytearray(size)
    try:
        transfer(a, b, payload, sink)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            transfer(a, b, payload, sink)
            times.append(time.perf_counter() - start)
    finally:
        a.close()
        b.close()
    return size / float(np.median(times))


def infer_over(plan: pie.Plan, server_end: pie.Channel, client_end: pie.Channel,
               x: np.ndarray) -> tuple[np.ndarray, pie.Report]:
    """One private inference of ``x`` across two connected channel ends, the
    server in a thread; the server's failure is raised here."""
    server = pie.Server(plan)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve(server_end)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        logits, report = pie.Client(server.public_plan()).infer(client_end, x)
    finally:
        worker.join()
    if errors:
        raise errors[0]
    return logits, report


def tcp_inference(plan: pie.Plan, x: np.ndarray, link: pie.Link | None = None,
                  host: str = "127.0.0.1") -> tuple[np.ndarray, pie.Report]:
    """One private inference of ``x`` (:func:`infer_over`) over loopback TCP (or
    TCP to ``host``, an address of this machine), both ends wrapped in ``link``
    when one is given."""
    client_end, server_end = tcp_pair(host)
    if link is not None:
        server_end, client_end = link.wrap(server_end, "server"), link.wrap(client_end, "client")
    with server_end, client_end:
        logits, report = infer_over(plan, server_end, client_end, x)
    report.transport = "tcp"
    if link is not None and link.emulated:
        report.link = link.describe()
    return logits, report
