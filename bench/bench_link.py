"""The emulated link (``pie.Link``) against the kernel's traffic control and
against the analytic model of its delays.

For each network (``PIE_BENCH_NET`` as in bench_network.py: unset is the smoke
network) and each emulated preset (``PIE_BENCH_LINK``, default ``lan,wan``),
one inference (``PIE_BENCH_INPUTS`` inputs, medians) over TCP:

- across the kernel: netem with the preset's delay and rate on a veth pair
  between two network namespaces made for the run and removed after it
  (``pie.link.kernel_link_pair``). Where the kernel has no netem, the reason is
  recorded and the kernel's token bucket (tbf) checks the bandwidth half of
  the link: the preset's rates without its delay;
- across the emulator with the same settings;
- across the emulator with the full preset: its online time minus the
  rate-only one is what the delays cost, which the analytic model puts at one
  RTT per online round trip.

Figures in ``extra_info``: online and offline seconds each way, the ratio
emulator / kernel (target: online within 15%), the delay cost measured and
modelled, and the netem status. Skipped where the kernel's traffic control
cannot be used (not root, no iproute2).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import pie
from pie.link import Link, NetemUnavailableError, kernel_link_pair

from bench_network import INPUTS, SHAPE, _networks, compiled
from benchnets import infer_over, tcp_inference

AGREEMENT = 0.15  # target: emulator and kernel online times within 15%


def _links() -> list[str]:
    names = [n.strip() for n in os.environ.get("PIE_BENCH_LINK", "lan,wan").split(",") if n.strip()]
    return [n for n in names if Link.preset(n).emulated]


def _checked(plan: pie.Plan, x: np.ndarray, result: tuple[np.ndarray, pie.Report]) -> pie.Report:
    logits, report = result
    assert np.array_equal(logits, plan.run_reference(x))
    return report


def _emulated(plan: pie.Plan, link: Link, x: np.ndarray) -> pie.Report:
    return _checked(plan, x, tcp_inference(plan, x, link))


def _kernel(plan: pie.Plan, link: Link, qdisc: str, x: np.ndarray) -> pie.Report:
    with kernel_link_pair(link, qdisc) as (server_end, client_end):
        return _checked(plan, x, infer_over(plan, server_end, client_end, x))


def _median(reports: list[pie.Report], key: str) -> float:
    return float(np.median([getattr(r, key) for r in reports]))


@pytest.mark.parametrize("link_name", _links())
@pytest.mark.parametrize("name", _networks())
def test_emulator_vs_kernel(benchmark, name: str, link_name: str) -> None:  # type: ignore[no-untyped-def]
    _, plan = compiled(name)
    link = Link.preset(link_name)
    rate_only = Link(c2s_bandwidth=link.c2s_bandwidth, s2c_bandwidth=link.s2c_bandwidth,
                     name=f"{link_name} rate only")
    rng = np.random.default_rng(0)
    images = [rng.random(SHAPE) for _ in range(INPUTS)]
    netem_status = "used"
    try:
        kernel = [_kernel(plan, link, "netem", x) for x in images]
        reference, qdisc = link, "netem"
    except NetemUnavailableError as exc:
        netem_status = f"unavailable: {exc}"
        try:
            kernel = [_kernel(plan, rate_only, "tbf", x) for x in images]
        except NetemUnavailableError as exc2:
            pytest.skip(f"kernel traffic control unavailable: {exc2}")
        reference, qdisc = rate_only, "tbf"
    emulated: list[pie.Report] = []

    def once() -> None:
        emulated.append(_emulated(plan, reference, images[len(emulated) % INPUTS]))

    benchmark.pedantic(once, rounds=INPUTS, iterations=1)
    info = {
        "network": name,
        "link": link_name,
        "link_settings": link.to_dict(),
        "kernel_qdisc": qdisc,
        "netem": netem_status,
        "kernel_link": reference.to_dict(),
        "online_round_trips": emulated[-1].online_round_trips,
        "offline_round_trips": emulated[-1].offline_round_trips,
        "online_bytes": emulated[-1].online_bytes,
        "offline_bytes": emulated[-1].offline_bytes,
    }
    for side, runs in (("kernel", kernel), ("emulator", emulated)):
        info[f"{side}_online_seconds"] = _median(runs, "online_seconds")
        info[f"{side}_offline_seconds"] = _median(runs, "offline_seconds")
    for phase in ("online", "offline"):
        info[f"{phase}_ratio"] = info[f"emulator_{phase}_seconds"] / info[f"kernel_{phase}_seconds"]
    info["online_within_target"] = abs(info["online_ratio"] - 1) <= AGREEMENT
    if qdisc == "tbf":
        # The delays against the analytic model: one RTT per online round trip.
        full = [_emulated(plan, link, x) for x in images]
        info["emulator_full_online_seconds"] = _median(full, "online_seconds")
        info["delay_cost_measured_seconds"] = info["emulator_full_online_seconds"] - info["emulator_online_seconds"]
        info["delay_cost_model_seconds"] = full[-1].online_round_trips * link.rtt
        info["delay_cost_ratio"] = info["delay_cost_measured_seconds"] / info["delay_cost_model_seconds"]
    benchmark.extra_info.update(info)
