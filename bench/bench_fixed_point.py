"""The compiler's fixed point: what a network's Plan costs before it runs.

For each network (random weights and random batch-norm statistics, as in
``bench_network``) compiled at the default settings, ``extra_info`` records:
the ReLUs, the truncation steps and their elements, the histogram of ReLU
input rings (median and largest), the AND gates of ReLUs and truncations, the
online and offline bytes (``pie.cost.traffic``: exact, no profile needed),
the online garbled-circuit rounds against the network's ReLU depth (the rounds
its ReLUs alone need), the precision the search chose and the float-vs-fixed
agreement on the calibration images, plus the compile time.

Which networks (``PIE_BENCH_FP``): unset, DRD_C100_12K (the smoke run);
``all``, every DRD_C100 and DRD_TINY configuration, ResNet-18 and the bundled
demo model; or a comma-separated list of names (``demo`` for the demo model).
Targets: no truncation steps; DRD_C100 ReLU input rings median <= 32 bits and
largest <= 40; DRD_C100_12K online bytes <= 7 MB; DRD_C100_230K offline bytes
<= 1.1 GB; online rounds equal to the ReLU depth.
"""

from __future__ import annotations

import collections
import os
import time
from importlib import resources

import numpy as np
import pytest
import torch

import pie
from pie import serve
from pie.cost import traffic
from pie.plan import ReluStep, TruncateStep

from benchnets import random_bn

DEMO = "demo"


def _networks() -> list[str]:
    chosen = os.environ.get("PIE_BENCH_FP", "")
    if not chosen:
        return ["DRD_C100_12K"]
    if chosen == "all":
        drd = [n for n in pie.models.names() if n.startswith(("DRD_C100_", "DRD_TINY_"))]
        return [*drd, "resnet18", DEMO]
    return [n.strip() for n in chosen.split(",") if n.strip()]


def _compile(name: str) -> pie.Plan:
    if name == DEMO:
        with resources.as_file(resources.files("pie") / "data" / "demo_model.pt") as path:
            return serve.load_server(path).plan
    torch.manual_seed(0)
    net = random_bn(pie.models.build(name), 0)
    size = net.config.input_size if hasattr(net, "config") else 32
    return pie.compile(net, (3, size, size))


def relu_depth(plan: pie.Plan) -> int:
    """Online rounds the ReLUs alone need: the most ReLU steps on any path."""
    depth: dict[str, int] = {plan.input: 0}
    for s in plan.steps:
        if s.kind == "linear":
            depth[s.output] = max(depth[t.input] for t in s.terms)
        elif s.kind in ("relu", "truncate"):
            depth[s.output] = depth[s.input] + (1 if s.kind == "relu" else 0)
    return max(depth.values())


def figures(plan: pie.Plan) -> dict[str, object]:
    rings = [plan.tensors[s.input].ring_bits for s in plan.steps if isinstance(s, ReluStep)]
    weights = [plan.tensors[s.input].numel for s in plan.steps if isinstance(s, ReluStep)]
    truncs = [s for s in plan.steps if isinstance(s, TruncateStep)]
    per_element = np.repeat(rings, weights) if rings else np.zeros(1)
    est = traffic(plan)
    cost = plan.gc_cost()
    return {
        "relus": plan.relu_count(),
        "truncation_steps": len(truncs),
        "truncated_elements": cost["truncations"],
        "relu_and_gates": cost["relu_and_gates"],
        "truncate_and_gates": cost["truncate_and_gates"],
        "relu_ring_histogram": dict(sorted(collections.Counter(rings).items())),
        "relu_ring_median_layers": float(np.median(rings)) if rings else 0.0,
        "relu_ring_median_elements": float(np.median(per_element)),
        "relu_ring_max": max(rings, default=0),
        "online_bytes": est.online_bytes,
        "truncate_online_bytes": sum(st.online_bytes for st in est.steps if st.kind == "truncate"),
        "offline_bytes": est.offline_bytes,
        "online_rounds": max(plan.rounds().values(), default=0),
        "relu_depth": relu_depth(plan),
        "calibration_agreement": plan.policy.get("calibration_agreement"),
        "chosen_weight_bits": sorted(set(plan.policy.get("chosen_weight_bits", {}).values())),
        "chosen_act_bits": sorted(set(plan.policy.get("chosen_act_bits", {}).values())),
        "folded_tail": plan.policy.get("folded_tail"),
        "folded_head": plan.policy.get("folded_head"),
    }


@pytest.mark.parametrize("name", _networks())
def test_fixed_point(benchmark, name):
    start = time.perf_counter()
    plan = benchmark.pedantic(_compile, args=(name,), rounds=1, iterations=1)
    benchmark.extra_info["network"] = name
    benchmark.extra_info.update(figures(plan))
    benchmark.extra_info["compile_seconds"] = time.perf_counter() - start
    info = benchmark.extra_info
    assert info["online_rounds"] >= info["relu_depth"]
    assert info["relus"] == plan.relu_count() > 0
    print(f"\n{name}: {info}")
