"""Helpers the network benchmarks share: random batch-norm statistics for
untrained networks, and one inference across two channel ends (over TCP,
optionally across an emulated link)."""

from __future__ import annotations

import threading

import numpy as np
import torch

import pie


def random_bn(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Untrained networks get non-trivial batch-norm statistics so the Plan's
    rings and truncations look like a trained network's."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return net.eval()


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
    with pie.TcpListener(host, 0) as listener:
        client_end = pie.tcp_connect(host, listener.port)
        server_end = listener.accept(timeout=60)
    if link is not None:
        server_end, client_end = link.wrap(server_end, "server"), link.wrap(client_end, "client")
    with server_end, client_end:
        logits, report = infer_over(plan, server_end, client_end, x)
    report.transport = "tcp"
    if link is not None and link.emulated:
        report.link = link.describe()
    return logits, report
