"""Whole networks over loopback TCP: offline and online latency and traffic.

Targets (../shared/REFERENCE.md): DRD_C100_12K online <= 45 ms, DRD_C100_230K
online <= 1 s, offline traffic for 230K <= 1.3 GB. Each figure is reported
next to a float32 torch forward pass of the same network measured in the same
run. DRD_C100_12K runs by default; PIE_BENCH_NET=all adds DRD_C100_230K.
PIE_BENCH_INPUTS=N runs N random inputs per network (default 1), each checked
bit for bit against the Plan's reference; figures are medians over them.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

import pie

NETWORKS = ["DRD_C100_12K"] + (["DRD_C100_230K"] if os.environ.get("PIE_BENCH_NET") == "all" else [])
INPUTS = int(os.environ.get("PIE_BENCH_INPUTS", "1"))


def _random_bn(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return net.eval()


def _torch_forward_seconds(net: torch.nn.Module, shape: tuple[int, ...], repeat: int = 20) -> float:
    x = torch.rand(1, *shape)
    with torch.no_grad():
        net(x)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def _tcp_inference(plan: pie.Plan, x: np.ndarray) -> tuple[np.ndarray, pie.Report]:
    server = pie.Server(plan)
    listener = pie.TcpListener("127.0.0.1", 0)
    worker = threading.Thread(target=lambda: server.serve(listener.accept(timeout=60)))
    worker.start()
    with pie.tcp_connect("127.0.0.1", listener.port) as ch:
        logits, report = pie.Client(server.public_plan()).infer(ch, x)
    worker.join()
    listener.close()
    report.transport = "tcp"
    return logits, report


@pytest.mark.parametrize("name", NETWORKS)
def test_network_over_tcp(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = _random_bn(pie.models.build(name), 0)
    shape = (3, 32, 32)
    plan = pie.compile(net, shape)
    rng = np.random.default_rng(0)
    runs: list[pie.Report] = []

    def once() -> None:
        x = rng.random(shape)
        logits, report = _tcp_inference(plan, x)
        assert np.array_equal(logits, plan.run_reference(x))
        runs.append(report)

    benchmark.pedantic(once, rounds=INPUTS, iterations=1)
    torch_s = _torch_forward_seconds(net, shape)
    online = float(np.median([r.online_seconds for r in runs]))
    benchmark.extra_info.update(
        network=name,
        inputs_bit_exact=len(runs),
        relus=runs[-1].relus,
        offline_seconds=float(np.median([r.offline_seconds for r in runs])),
        offline_bytes=runs[-1].offline_bytes,
        online_seconds=online,
        online_bytes=runs[-1].online_bytes,
        online_rounds=runs[-1].online_rounds,
        torch_float32_forward_seconds=torch_s,
        online_to_torch_ratio=online / torch_s,
        steps=runs[-1].steps,
    )
