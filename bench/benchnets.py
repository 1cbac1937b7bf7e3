"""Helpers the network benchmarks share: random batch-norm statistics for
untrained networks, and one inference over loopback TCP."""

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


def tcp_inference(plan: pie.Plan, x: np.ndarray) -> tuple[np.ndarray, pie.Report]:
    """One private inference of ``x`` with the server in a thread over loopback TCP."""
    server = pie.Server(plan)
    errors: list[BaseException] = []
    with pie.TcpListener("127.0.0.1", 0) as listener:

        def serve() -> None:
            try:
                server.serve(listener.accept(timeout=60))
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        worker = threading.Thread(target=serve)
        worker.start()
        try:
            with pie.tcp_connect("127.0.0.1", listener.port) as ch:
                logits, report = pie.Client(server.public_plan()).infer(ch, x)
        finally:
            worker.join()
    if errors:
        raise errors[0]
    report.transport = "tcp"
    return logits, report
