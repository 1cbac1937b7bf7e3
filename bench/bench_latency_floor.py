"""The online phase's fixed cost per round: a plan of ``k`` sequential small
ReLU layers, in memory (``pie.infer``) and over loopback TCP.

The network is ``k`` blocks of a 1x1 convolution and a ReLU on a 4x4x4 tensor
(64 ReLUs per round), so the garbled-circuit work per round is small and the
online time is mostly what each round costs beyond its kernels: messages,
Python between the wire and the kernels, thread hand-overs. ``extra_info``
records the online time per round (online time over rounds, medians over the
runs), the online time of the first and the other garbled steps, the GC
evaluation it implies at the per-ReLU speed ``bench_gc`` measures, and the
bytes per round. Targets: at most 0.3 ms per round in memory and at most
0.5 ms over loopback TCP.

``PIE_BENCH_ROUNDS`` sets ``k`` (default 16); ``PIE_BENCH_INPUTS`` the runs
(default 3); ``PIE_BENCH_TRANSPORT`` ``memory``, ``tcp`` or ``both`` (default).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import pie

from benchnets import tcp_inference

ROUNDS = int(os.environ.get("PIE_BENCH_ROUNDS", "16"))
INPUTS = int(os.environ.get("PIE_BENCH_INPUTS", "3"))
SHAPE = (4, 4, 4)


def _transports() -> list[str]:
    chosen = os.environ.get("PIE_BENCH_TRANSPORT", "both")
    return ["memory", "tcp"] if chosen == "both" else [chosen]


class Chain(nn.Module):
    """``k`` rounds of conv 1x1 + ReLU, then a classifier: one ReLU layer per round."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 1) for _ in range(k))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(torch.flatten(x, 1))


def _plan(k: int) -> pie.Plan:
    torch.manual_seed(0)
    return pie.compile(Chain(k).eval(), SHAPE)


@pytest.mark.parametrize("transport", _transports())
def test_latency_floor(benchmark, transport: str) -> None:  # type: ignore[no-untyped-def]
    plan = _plan(ROUNDS)
    rounds = max(plan.rounds().values())
    assert rounds == ROUNDS
    rng = np.random.default_rng(0)
    runs: list[pie.Report] = []

    def once() -> None:
        x = rng.random(SHAPE)
        logits, report = tcp_inference(plan, x) if transport == "tcp" else pie.infer(plan, x)
        assert np.array_equal(logits, plan.run_reference(x))
        runs.append(report)

    benchmark.pedantic(once, rounds=INPUTS, iterations=1)
    gc_steps = [[s for s in r.steps if s["kind"] == "relu"] for r in runs]
    online = float(np.median([r.online_seconds for r in runs]))
    first = float(np.median([steps[0]["online_seconds"] for steps in gc_steps]))
    rest = float(np.median([np.median([s["online_seconds"] for s in steps[1:]])
                            for steps in gc_steps]))
    benchmark.extra_info.update(
        transport=transport,
        rounds=rounds,
        relus_per_round=64,
        online_seconds=online,
        online_ms_per_round=1e3 * online / rounds,
        first_gc_step_ms=1e3 * first,
        other_gc_step_ms_median=1e3 * rest,
        online_bytes_per_round=runs[-1].online_bytes / rounds,
        target_ms_per_round=0.3 if transport == "memory" else 0.5,
    )
    print(f"\nlatency floor ({transport}): {benchmark.extra_info}")
