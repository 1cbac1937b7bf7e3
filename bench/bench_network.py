"""Whole networks: offline and online time and traffic, per step, in memory
(``pie.infer``) and over loopback TCP.

Every run checks the secure output bit for bit against the Plan's reference
and records in ``extra_info`` the engine's report (totals and every step's
time, bytes each way and rounds), the network's ReLUs and garbled work, a
float32 torch forward pass of the same network measured in the same run, the
server's online linear arithmetic (``pie.Server.linear`` over every linear
step, on random shares), and, when ``PIE_BENCH_PROFILE``
names a profile (``pie.estimate``), the cost model's prediction, raw and
rescaled to the machine's speed measured just before and after the run
(``measure_speed_index``, for shared machines).

Loopback runs also record the online kernel floor, measured in the same run:
``gc_eval_seconds`` (the evaluation kernel, ``pie.gc.kernel_seconds`` on all
cores as the engine runs it, of every ReLU and truncate step's own circuit at
its element count, summed over the steps), ``channel_bytes_per_second`` (a
32 MiB transfer over a fresh pair of the run's transport, as ``bench_channel``
measures it), ``kernel_floor_seconds = gc_eval_seconds + online_bytes /
channel_bytes_per_second`` and ``online_to_floor_ratio``. Runs on an emulated
link leave them out: there the link's bandwidth and round trips, not the
kernels, bound the online time.

Which networks (``PIE_BENCH_NET``):

- unset: a small DeepReDuce-style network (culled stage 1, bottom-thinned,
  alpha 0.125, rho 0.5, one block per stage) -- the smoke run, a few seconds;
- ``all``: every DRD_C100 configuration and the ResNet-18 baseline;
- a comma-separated list of names from ``pie.models.names()``.

``PIE_BENCH_TRANSPORT`` (``memory``, ``tcp`` or ``both``, the default) picks
the transports; ``PIE_BENCH_LINK`` (comma-separated ``pie.Link`` presets,
default ``loopback``) the network links: ``loopback`` runs on every chosen
transport as it is, an emulated link (``lan``, ``wan``) wraps both parties'
ends of one transport -- TCP when it is chosen, as a deployment would run,
else the in-memory pair -- and the cost model predicts for that link.
``PIE_BENCH_INPUTS=N`` runs N random inputs per network
(default 1), figures are medians over them. Targets:
DRD_C100_12K online <= 30 ms, DRD_C100_230K online <= 600 ms over loopback TCP,
DRD_C100_230K offline traffic
<= 1.3 GB, server online linear compute <= 8x the torch forward pass, online
time <= 1.5x the kernel floor for every DRD_C100 network.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
import pytest
import torch

import pie
from pie.cost import Profile, estimate, measure_speed_index
from pie.models import ResNet, ResNetConfig
from pie.plan import ReluStep, TruncateStep
from pie.protocol.schedule import gc_shape, offline_exchanges

from benchnets import channel_bytes_per_second, random_bn, tcp_inference

SMOKE = "smoke"
DRD_C100 = [n for n in pie.models.names() if n.startswith("DRD_C100_")]


def _networks() -> list[str]:
    chosen = os.environ.get("PIE_BENCH_NET", "")
    if not chosen:
        return [SMOKE]
    if chosen == "all":
        return [*DRD_C100, "resnet18"]
    return [n.strip() for n in chosen.split(",") if n.strip()]


def _transports() -> list[str]:
    chosen = os.environ.get("PIE_BENCH_TRANSPORT", "both")
    return ["memory", "tcp"] if chosen == "both" else [chosen]


def _runs() -> list[tuple[str, str]]:
    """(transport, link) pairs: loopback on every transport, an emulated link on one."""
    links = [n.strip() for n in os.environ.get("PIE_BENCH_LINK", "loopback").split(",") if n.strip()]
    for name in links:
        pie.Link.preset(name)  # an unknown name fails here, listing the known ones
    transports = _transports()
    over = "tcp" if "tcp" in transports else transports[0]
    runs = [(t, "loopback") for t in transports] if "loopback" in links else []
    return runs + [(over, name) for name in links if name != "loopback"]


INPUTS = int(os.environ.get("PIE_BENCH_INPUTS", "1"))
SHAPE = (3, 32, 32)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == SMOKE:
        cfg = ResNetConfig(blocks=(1, 1, 1, 1), alpha=0.125, rho=0.5, culled=(True, False, False, False),
                           thinned=(False, True))
        return random_bn(ResNet(cfg), 0)
    return random_bn(pie.models.build(name), 0)


@functools.lru_cache(maxsize=1)
def compiled(name: str) -> tuple[torch.nn.Module, pie.Plan]:
    net = build(name)
    return net, pie.compile(net, SHAPE)


def torch_forward_seconds(net: torch.nn.Module, repeat: int = 20) -> float:
    """Median float32 forward pass of one image (torch's default threads)."""
    x = torch.rand(1, *SHAPE)
    with torch.no_grad():
        net(x)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def server_linear_seconds(plan: pie.Plan, repeat: int = 5) -> float:
    """Median time of the server's online arithmetic on one input: every linear
    step's ring products (``pie.Server.linear``, weights prepared once as a
    server does) on uniformly random residues of every tensor's ring -- the
    server's shares are masked, so they span the ring (true values are small
    and would need fewer float64 limbs)."""
    server = pie.Server(plan)
    rng = np.random.default_rng(1)
    values = {name: rng.integers(0, 1 << spec.ring_bits, spec.shape, dtype=np.uint64)
              for name, spec in plan.tensors.items()}
    linear = [i for i, s in enumerate(plan.steps) if s.kind == "linear"]
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        for i in linear:
            server.linear(i, values)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def gc_eval_seconds(plan: pie.Plan, repeat: int = 3, min_elements: int = 1 << 14) -> float:
    """Evaluation-kernel seconds of the plan's garbled steps on one input:
    every ReLU/truncate step's circuit (its rings, shift and kind) evaluated
    at its element count on all cores, as the engine runs it
    (``pie.gc.kernel_seconds``, no I/O), summed over the steps. Each distinct
    (circuit, count) is timed by one call: its garbling set-up, the dearer
    part, runs once, the evaluation at least ``repeat`` times and over at
    least ``min_elements`` elements (small steps would drown in timer noise)."""
    counts: dict[tuple[tuple[int, int, int, bool], int], int] = {}
    for step in plan.steps:
        if isinstance(step, (ReluStep, TruncateStep)):
            key = (gc_shape(plan, step), plan.tensors[step.input].numel)
            counts[key] = counts.get(key, 0) + 1
    total = 0.0
    for ((l_in, l_out, shift, truncate), n), steps in counts.items():
        circuit = (pie.gc.truncate_circuit if truncate else pie.gc.relu_circuit)(l_in, l_out, shift)
        reps = max(repeat, -(-min_elements // n))
        total += steps * pie.gc.kernel_seconds(circuit, n, 0, reps, "evaluate") / reps
    return total


@pytest.mark.parametrize(("transport", "link_name"), _runs())
@pytest.mark.parametrize("name", _networks())
def test_network(benchmark, name: str, transport: str, link_name: str) -> None:  # type: ignore[no-untyped-def]
    net, plan = compiled(name)
    link = pie.Link.preset(link_name)
    profile_path = os.environ.get("PIE_BENCH_PROFILE")
    # The machine's speed around the run (before and after), against the
    # profile's: the load-adjusted prediction rescales the profile by it.
    speed = [measure_speed_index()] if profile_path else []
    rng = np.random.default_rng(0)
    runs: list[pie.Report] = []

    def once() -> None:
        x = rng.random(SHAPE)
        logits, report = tcp_inference(plan, x, link) if transport == "tcp" else pie.infer(plan, x, link=link)
        assert np.array_equal(logits, plan.run_reference(x))
        runs.append(report)

    benchmark.pedantic(once, rounds=INPUTS, iterations=1)
    if profile_path:
        speed.append(measure_speed_index())
    torch_s = torch_forward_seconds(net)
    linear_s = server_linear_seconds(plan)
    online = float(np.median([r.online_seconds for r in runs]))
    last = runs[-1]
    info = dict(  # noqa: C408 - keyword form reads as a record
        network=name,
        transport=transport,
        link=link_name,
        link_settings=link.to_dict(),
        inputs_bit_exact=len(runs),
        relus=last.relus,
        gc_cost=plan.gc_cost(),
        online_gc_rounds=len(set(plan.rounds().values())),
        offline_seconds=float(np.median([r.offline_seconds for r in runs])),
        offline_bytes=last.offline_bytes,
        setup_seconds=float(np.median([r.setup_seconds for r in runs])),
        setup_bytes=last.setup_bytes,
        online_seconds=online,
        online_bytes=last.online_bytes,
        online_rounds=last.online_rounds,
        offline_round_trips=last.offline_round_trips,
        offline_exchanges=len(offline_exchanges(plan)),
        online_round_trips=last.online_round_trips,
        torch_float32_forward_seconds=torch_s,
        online_to_torch_ratio=online / torch_s,
        server_linear_seconds=linear_s,
        server_linear_to_torch_ratio=linear_s / torch_s,
        steps=last.steps,
    )
    if link_name == "loopback":
        gc_s = gc_eval_seconds(plan)
        bandwidth = channel_bytes_per_second(transport)
        floor = gc_s + last.online_bytes / bandwidth
        info.update(gc_eval_seconds=gc_s, channel_bytes_per_second=bandwidth, kernel_floor_seconds=floor,
                    online_to_floor_ratio=online / floor)
    if profile_path:
        profile = Profile.load(profile_path)
        predicted = estimate(plan, profile, transport, link=link)
        info["estimate"] = predicted.totals()
        info["estimate_steps"] = [s.to_dict() for s in predicted.steps]
        if profile.speed_index_s > 0:
            factor = float(np.mean(speed)) / profile.speed_index_s
            info["speed_factor"] = factor
            info["estimate_load_adjusted"] = estimate(plan, profile.scaled(factor), transport, link=link).totals()
    benchmark.extra_info.update(info)
