"""Helpers the network benchmarks share: random batch-norm statistics for
untrained networks, and one inference over TCP, optionally across an emulated link."""

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


def tcp_inference(plan: pie.Plan, x: np.ndarray, link: pie.Link | None = None,
                  host: str = "127.0.0.1") -> tuple[np.ndarray, pie.Report]:
    """One private inference of ``x`` with the server in a thread over loopback
    TCP (or TCP to ``host``, an address of this machine), both ends wrapped in
    ``link`` when one is given."""
    server = pie.Server(plan)
    errors: list[BaseException] = []
    with pie.TcpListener(host, 0) as listener:

        def serve() -> None:
            try:
                ch = listener.accept(timeout=60)
                server.serve(link.wrap(ch, "server") if link is not None else ch)
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        worker = threading.Thread(target=serve)
        worker.start()
        try:
            ch = pie.tcp_connect(host, listener.port)
            with link.wrap(ch, "client") if link is not None else ch as client_end:
                logits, report = pie.Client(server.public_plan()).infer(client_end, x)
        finally:
            worker.join()
    if errors:
        raise errors[0]
    report.transport = "tcp"
    if link is not None and link.emulated:
        report.link = link.describe()
    return logits, report
