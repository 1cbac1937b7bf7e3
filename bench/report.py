"""Run the benchmark suites and write the performance report.

    python bench/report.py                 # everything (20-25 minutes on 2 cores)
    python bench/report.py --render-only   # rebuild REPORT.md and the plots from the JSON files

Writes into ``bench/results/`` (``--out``): ``profile.json`` (the machine
profile for ``pie.estimate``), ``<suite>.json`` (pytest-benchmark JSON of
``bench/bench_<suite>.py``, figures in ``extra_info``), ``run.json`` (machine,
load and timings of this run), ``REPORT.md`` and the PNG plots. The suites run
one after the other in child processes, at these sizes: the micro suites as
written, ``bench_he.py`` with ``PIE_BENCH_HE=all`` (every linear layer of
ResNet-18 and DRD_C100_12K at rings 37 and 59), ``bench_network.py`` with
``PIE_BENCH_NET=all`` (every DRD_C100 configuration and the ResNet-18 baseline,
in memory and over loopback TCP, three inputs each (medians), with the cost
model's prediction from the fresh profile) and ``PIE_BENCH_LINK`` from ``--links``
(default ``loopback,lan,wan``: each emulated link once more over TCP), and
``bench_serving.py`` with ``PIE_BENCH_NET=DRD_C100_12K`` (throughput with 1
and 4 clients, prepared vs single-query online latency, time to first result,
batches), ``bench_latency_floor.py`` with 9 inputs per transport and
``bench_transcript.py`` with 13 inputs per configuration, ``bench_accuracy.py``
with its DRD_C100_12K-shaped model trained for 30 epochs, ``bench_fixed_point.py``
with ``PIE_BENCH_FP=all`` (the compiled Plan of every DRD_C100 and DRD_TINY
configuration, ResNet-18 and the demo model). The report has a table per link (offline and online time, bytes and
round trips, and the cost model's prediction for that link) and a plot of
online latency against ReLUs with one line per link.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITES = ["crypto", "channel", "ot", "gc", "he", "latency_floor", "transcript", "accuracy", "fixed_point", "network",
          "serving"]
SERVING_NET = "DRD_C100_12K"
TOLERANCE = 0.15  # the cost model's target on loopback: within 15% of measured time
LINK_TOLERANCE = 0.20  # on emulated links: within 20%
FLOOR_RATIO = 1.5  # online time at most this multiple of the kernel floor
NETWORK_INPUTS = 3  # inputs per network run: medians, as a shared machine's speed drifts between runs

# Published anchors: Delphi on CIFAR ResNet-18,
# measured by a third party.
DELPHI = {
    "garbled_bytes_per_relu": 17072.0,
    "online_bytes_per_relu": 1184.0,
    "evaluate_us_per_relu": 18.0,
    "garble_us_per_relu": 30.0,
    "and_gates_per_relu": 290.0,
}


# ----------------------------------------------------------------------- running


def _load_snapshot() -> dict[str, Any]:
    """Machine load now: load averages and the busiest other processes."""
    snap: dict[str, Any] = {"time": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    if hasattr(os, "getloadavg"):
        snap["load_average"] = [round(v, 2) for v in os.getloadavg()]
    try:
        out = subprocess.run(["top", "-bn1", "-w", "200"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
        lines = out.splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("PID"))
        busy = []
        for line in lines[start + 1:]:
            cols = line.split(None, 11)
            if len(cols) == 12 and float(cols[8].replace(",", ".")) >= 5.0 and int(cols[0]) != os.getpid():
                busy.append(f"{cols[11][:60]} ({cols[8]}% CPU)")
        snap["busy_processes"] = busy[:8]
    except (OSError, StopIteration, ValueError, subprocess.SubprocessError):
        snap["busy_processes"] = []
    return snap


def _machine() -> dict[str, Any]:
    import pie
    from pie.cost.measure import _cpu_name

    return {
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pie": pie.__version__,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True, check=False).stdout.strip(),
        "uncommitted": subprocess.run(["git", "status", "--short", "--untracked-files=no"], cwd=ROOT,
                                      capture_output=True, text=True, check=False).stdout.split("\n")[:-1],
    }


def run_all(out: Path, networks: str, profile_seconds: float, links: str = "loopback,lan,wan") -> None:
    from pie.cost import measure_profile

    out.mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {"machine": _machine(), "load_before": _load_snapshot(), "suites": {}}
    t0 = time.perf_counter()
    print("profile ...", flush=True)
    measure_profile(profile_seconds, progress=lambda m: print(f"  {m}", flush=True)).save(out / "profile.json")
    run["profile_seconds"] = round(time.perf_counter() - t0, 1)
    env_extra = {
        "he": {"PIE_BENCH_HE": "all"},
        "network": {"PIE_BENCH_NET": networks, "PIE_BENCH_PROFILE": str(out / "profile.json"),
                    "PIE_BENCH_LINK": links, "PIE_BENCH_INPUTS": str(NETWORK_INPUTS)},
        "serving": {"PIE_BENCH_NET": SERVING_NET},
        "latency_floor": {"PIE_BENCH_INPUTS": "9"},
        "transcript": {"PIE_BENCH_INPUTS": "13"},
        "accuracy": {"PIE_BENCH_TRAIN_EPOCHS": "30"},
        "fixed_point": {"PIE_BENCH_FP": "all"},
    }
    for suite in SUITES:
        print(f"bench_{suite} ...", flush=True)
        env = {**os.environ, **env_extra.get(suite, {})}
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", f"bench/bench_{suite}.py", "--benchmark-enable",
             f"--benchmark-json={out / f'{suite}.json'}", "-q", "-p", "no:cacheprovider"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        )
        run["suites"][suite] = {"seconds": round(time.perf_counter() - start, 1), "returncode": proc.returncode}
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            run["suites"][suite]["failure"] = tail
            print(tail, flush=True)
    run["load_after"] = _load_snapshot()
    run["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")


# --------------------------------------------------------------------- rendering


def _benchmarks(out: Path, suite: str) -> list[dict[str, Any]]:
    path = out / f"{suite}.json"
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("benchmarks", []))


def _find(benches: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((b["extra_info"] for b in benches if b["name"] == name), None)


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _network_runs(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The runs without an emulated link, by (network, transport)."""
    return {(e["network"], e["transport"]): e for e in (b["extra_info"] for b in _benchmarks(out, "network"))
            if e.get("link", "loopback") == "loopback"}


def _link_runs(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """link -> network -> run; loopback's run is the TCP one where there is one
    (the transport the emulated links wrap)."""
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for e in (b["extra_info"] for b in _benchmarks(out, "network")):
        by_net = runs.setdefault(e.get("link", "loopback"), {})
        if e["network"] not in by_net or e["transport"] == "tcp":
            by_net[e["network"]] = e
    order = {"loopback": 0, "lan": 1, "wan": 2}
    return dict(sorted(runs.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


def _link_text(e: dict[str, Any]) -> str:
    link = e.get("link_settings")
    if not link or (link["c2s_bandwidth"] is None and link["s2c_bandwidth"] is None and link["rtt"] == 0):
        return f"{e.get('link', 'loopback')} (no emulation)"
    rate = "unlimited" if link["c2s_bandwidth"] is None else f"{link['c2s_bandwidth'] / 1e6:g} Mbit/s"
    return f"{link['name']} ({rate}, {link['rtt'] * 1e3:g} ms RTT)"


def _link_tables(links: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], dict[str, list[str]]]:
    """One table per link, and per prediction (raw, load-adjusted) the DRD_C100
    runs on emulated links that it misses by more than the tolerance."""
    lines: list[str] = []
    misses: dict[str, list[str]] = {"raw": [], "adjusted": []}
    for name, by_net in links.items():
        first = next(iter(by_net.values()))
        tol = TOLERANCE if name == "loopback" else LINK_TOLERANCE
        lines += [f"### {_link_text(first)}", "",
                  "| network | transport | ReLUs | offline time | offline bytes | offline round trips "
                  "| online time | online bytes | online round trips | predicted offline (raw / load-adj.) "
                  "| predicted online (raw / load-adj.) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for net, e in sorted(by_net.items(), key=lambda kv: kv[1]["relus"]):
            cells = []
            for key in ("offline_seconds", "online_seconds"):
                parts = []
                for variant, pred in (("raw", e.get("estimate")), ("adjusted", e.get("estimate_load_adjusted"))):
                    if pred is None:
                        parts.append("n/a")
                        continue
                    err = pred[key] / e[key] - 1
                    missed = abs(err) > tol
                    parts.append(f"{_fmt_s(pred[key])} ({err:+.0%}){' **miss**' if missed else ''}")
                    if missed and net.startswith("DRD_C100") and name != "loopback":
                        misses[variant].append(f"{net} on {name} ({key.split('_')[0]})")
                cells.append(" / ".join(parts))
            lines.append(
                f"| {net} | {e['transport']} | {e['relus']:,} | {_fmt_s(e['offline_seconds'])} "
                f"| {_fmt_bytes(e['offline_bytes'])} | {e.get('offline_round_trips', 'n/a')} "
                f"| {_fmt_s(e['online_seconds'])} | {_fmt_bytes(e['online_bytes'])} "
                f"| {e.get('online_round_trips', 'n/a')} | {cells[0]} | {cells[1]} |")
        lines.append("")
    return lines, misses


def _targets(out: Path, nets: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    gc = _benchmarks(out, "gc")
    he = _benchmarks(out, "he")
    rows = ["| what | target | measured | status | source |", "|---|---|---|---|---|"]

    def row(what: str, target: str, measured: str, ok: bool | None, source: str) -> None:
        rows.append(f"| {what} | {target} | {measured} | {_status(ok)} | {source} |")

    relu = _find(gc, "test_secure_relu_bytes")
    if relu:
        gates = relu["and_gates_per_relu"]
        row("ReLU circuit, l_in = l_out = 37", "<= 111 AND gates", f"{gates} AND gates (shift 12)",
            gates <= 111, "bench_gc::test_secure_relu_bytes")
        gb = relu["garbled_bytes_per_relu"]
        row("garbled bytes per ReLU (l=37)", "<= 3.6 KB", f"{gb:,.0f} B", gb <= 3600, "bench_gc::test_secure_relu_bytes")
        s2c, c2s = relu["online_server_to_client_per_relu"], relu["online_client_to_server_per_relu"]
        row("online bytes per ReLU (l=37)", "<= 600 B s->c and <= 5 B c->s",
            f"{s2c:,.1f} B s->c, {c2s:,.2f} B c->s", s2c <= 600 and c2s <= 5, "bench_gc::test_secure_relu_bytes")
    else:
        row("ReLU circuit / garbled bytes / online bytes", "see REFERENCE.md", "not measured", None, "bench_gc")
    kernels = _find(gc, "test_kernel_by_backend") or {}

    def by_backend(mode: str) -> str:
        """The fused kernels of each AES backend side by side, as measured in one run."""
        figures = {k.removesuffix(f"_{mode}_us_per_relu"): v for k, v in kernels.items()
                   if k.endswith(f"_{mode}_us_per_relu")}
        if len(figures) < 2:
            return ""
        listed = ", ".join(f"{b} {v:.2f}" for b, v in figures.items())
        return f"; by kernel, same run: {listed} us ({kernels[f'{mode}_speedup']:.2f}x)"

    ev = _find(gc, "test_evaluate_relu[1]")
    ratio = _find(gc, "test_evaluation_vs_hash_ratio")
    if ev and ratio:
        us = ev["us_per_relu_per_core"]
        r = ratio["ratio_evaluate_to_two_hashes"]
        row("GC evaluation (l=37)", "<= 1.5 us per ReLU per core; per AND <= 2x its 2 hash calls",
            f"{us:.2f} us per ReLU (1 thread); {r:.2f}x{by_backend('evaluate')}", us <= 1.5 and r <= 2.0,
            "bench_gc::test_evaluate_relu[1], test_evaluation_vs_hash_ratio, test_kernel_by_backend")
    gb1 = _find(gc, "test_garble_relu[1]")
    if gb1:
        us = gb1["us_per_relu_per_core"]
        row("GC garbling (l=37)", "<= 3 us per ReLU per core",
            f"{us:.2f} us per ReLU (1 thread){by_backend('garble')}", us <= 3.0,
            "bench_gc::test_garble_relu[1], test_kernel_by_backend")
    he37 = _find(he, "test_he_network[resnet18-37]")
    he59 = _find(he, "test_he_network[resnet18-59]")
    if he37:
        mb = he37["mb_client_to_server"] + he37["mb_server_to_client"]
        row("HE offline, all linear layers of CIFAR ResNet-18, ring 37", "<= 10 s on 2 cores, <= 300 MB",
            f"{he37['wall_s']:.2f} s, {mb:,.0f} MB", he37["wall_s"] <= 10 and mb <= 300,
            "bench_he::test_he_network[resnet18-37]")
    if he59:
        mb = he59["mb_client_to_server"] + he59["mb_server_to_client"]
        row("HE offline, all linear layers of CIFAR ResNet-18, ring 59", "<= 10 s on 2 cores, <= 500 MB",
            f"{he59['wall_s']:.2f} s, {mb:,.0f} MB", he59["wall_s"] <= 10 and mb <= 500,
            "bench_he::test_he_network[resnet18-59]")
    base = nets.get(("resnet18", "tcp")) or nets.get(("resnet18", "memory"))
    if base:
        lin_s = sum(s["offline_seconds"] for s in base["steps"] if s["kind"] == "linear")
        lin_b = sum(s["offline_bytes"] for s in base["steps"] if s["kind"] == "linear") + base["setup_bytes"]
        row("HE offline in the engine, ResNet-18 baseline (compiled rings, up to 59 bits)",
            "<= 10 s on 2 cores, <= 500 MB", f"{lin_s:.2f} s, {_fmt_bytes(lin_b)} (with key set-up)",
            lin_s <= 10 and lin_b <= 500e6, f"bench_network[resnet18-{base['transport']}]")
    n230 = nets.get(("DRD_C100_230K", "tcp")) or nets.get(("DRD_C100_230K", "memory"))
    if n230:
        row("offline traffic per inference, DRD_C100_230K", "<= 1.3 GB", _fmt_bytes(n230["offline_bytes"]),
            n230["offline_bytes"] <= 1.3e9, f"bench_network[DRD_C100_230K-{n230['transport']}]")
    for name, limit in (("DRD_C100_12K", 0.030), ("DRD_C100_230K", 0.600)):
        e = nets.get((name, "tcp"))
        if e:
            row(f"{name} online latency, loopback TCP, 2 cores", f"<= {_fmt_s(limit)}", _fmt_s(e["online_seconds"]),
                e["online_seconds"] <= limit, f"bench_network[{name}-tcp]")
        else:
            row(f"{name} online latency, loopback TCP, 2 cores", f"<= {_fmt_s(limit)}", "not measured", None,
                "bench_network")
    for transport, limit in (("memory", 0.3), ("tcp", 0.5)):
        lf = _find(_benchmarks(out, "latency_floor"), f"test_latency_floor[{transport}]")
        what = f"online time per round, 16 rounds of 64 ReLUs, {transport}"
        if lf:
            row(what, f"<= {limit} ms", f"{lf['online_ms_per_round']:.3f} ms", lf["online_ms_per_round"] <= limit,
                f"bench_latency_floor[{transport}]")
        else:
            row(what, f"<= {limit} ms", "not measured", None, "bench_latency_floor")
    tr = _find(_benchmarks(out, "transcript"), "test_transcript_check_cost")
    what = "transcript check, share of DRD_C100_12K online time (in memory)"
    if tr:
        row(what, f"<= {100 * tr['target_share']:.0f}%",
            f"{100 * tr['check_share_of_online']:.1f}% ({_fmt_s(tr['online_seconds_with_check'])} with, "
            f"{_fmt_s(tr['online_seconds_without_check'])} without, medians of {tr['inputs']} alternating inputs; "
            f"check {tr['check_bytes_per_second'] / 1e9:.1f} GB/s)",
            tr["check_share_of_online"] <= tr["target_share"], "bench_transcript")
    else:
        row(what, "<= 3%", "not measured", None, "bench_transcript")
    accuracy = _benchmarks(out, "accuracy")
    for test, model in (("test_demo_accuracy", "the demo model"),
                        ("test_trained_12k_accuracy", "DRD_C100_12K shape trained by pie.reduce")):
        acc = _find(accuracy, test)
        what = f"fixed-point vs float top-1 on held-out built-in images, {model}"
        if acc:
            ok = (abs(acc["top1_difference_points"]) <= acc["target_top1_difference_points"]
                  and acc["top1_agreement"] >= acc["target_agreement"])
            row(what, "within 0.2 points; agreement >= 99.5%",
                f"{100 * acc['fixed_top1']:.2f}% vs {100 * acc['float_top1']:.2f}% "
                f"({acc['top1_difference_points']:+.2f} points), agreement {100 * acc['top1_agreement']:.2f}%, "
                f"logit error {100 * acc['relative_logit_error']:.2f}% of max |logit|, {acc['images']} images"
                + (f", {acc['epochs']} epochs" if "epochs" in acc else ""), ok, f"bench_accuracy::{test}")
        else:
            row(what, "within 0.2 points; agreement >= 99.5%", "not measured", None, "bench_accuracy")
    fixed = _fixed_point_runs(out)
    if fixed:
        truncating = [n for n, e in fixed.items() if e["truncation_steps"]]
        row("no truncation steps at default settings (DRD_C100, DRD_TINY, ResNet-18, demo)", "0 networks with any",
            f"{len(truncating)} of {len(fixed)} have some" + (f" ({', '.join(truncating)})" if truncating else ""),
            not truncating, "bench_fixed_point")
        drd = {n: e for n, e in fixed.items() if n.startswith("DRD_C100")}
        if drd:
            worst_median = max(e["relu_ring_median_elements"] for e in drd.values())
            worst_max = max(e["relu_ring_max"] for e in drd.values())
            row("DRD_C100 ReLU input rings", "median <= 32 bits, largest <= 40",
                f"median {worst_median:.0f} bits at worst, largest {worst_max}; per network in the table below",
                worst_median <= 32 and worst_max <= 40, "bench_fixed_point")
        for name, key, limit in (("DRD_C100_12K", "online_bytes", 7e6), ("DRD_C100_230K", "offline_bytes", 1.1e9)):
            if name in fixed:
                what = "online" if key == "online_bytes" else "offline"
                row(f"{name} {what} bytes (exact, from the Plan)", f"<= {_fmt_bytes(limit)}",
                    _fmt_bytes(fixed[name][key]), fixed[name][key] <= limit, "bench_fixed_point")
        extra = [n for n, e in drd.items() if e["online_rounds"] > e["relu_depth"]]
        row("DRD_C100 online GC rounds equal to the ReLU depth", "no extra rounds",
            f"{len(extra)} of {len(drd)} networks with extra rounds" + (f" ({', '.join(extra)})" if extra else ""),
            not extra, "bench_fixed_point")
    lin = [(e["server_linear_to_torch_ratio"], k[0]) for k, e in nets.items() if k[1] == "memory"]
    if lin:
        worst, name = max(lin)
        row("server online linear compute", "<= 8x a float32 torch forward",
            f"{worst:.1f}x at worst ({name}); all networks in the table below", worst <= 8,
            "bench_network (server_linear_to_torch_ratio)")
    floor = [(e["online_to_floor_ratio"], f"{k[0]}, {k[1]}") for k, e in nets.items()
             if k[0].startswith("DRD_C100") and "online_to_floor_ratio" in e]
    what = "online time within 1.5x of the kernel floor, every DRD_C100 network, loopback"
    if floor:
        worst, name = max(floor)
        row(what, f"<= {FLOOR_RATIO:g}x (GC evaluation + online bytes / channel bandwidth, same run)",
            f"{worst:.2f}x at worst ({name}); all networks in the table below", worst <= FLOOR_RATIO,
            "bench_network (online_to_floor_ratio)")
    else:
        row(what, f"<= {FLOOR_RATIO:g}x", "not measured", None, "bench_network")
    model = [(max(abs(e["estimate"][k] / e[k] - 1) for k in ("offline_seconds", "online_seconds")), k_)
             for k_, e in nets.items() if k_[0].startswith("DRD_C100") and "estimate" in e]
    what = "cost model, every DRD_C100 run, loopback (raw prediction, offline and online time)"
    if model:
        worst, (name, transport) = max(model)
        inside = sum(err <= TOLERANCE for err, _ in model)
        row(what, f"within {TOLERANCE:.0%}", f"{inside}/{len(model)} runs within; worst {worst:.0%} "
            f"({name}, {transport}); the table under Cost model", inside == len(model), "bench_network + profile")
    else:
        row(what, f"within {TOLERANCE:.0%}", "not measured", None, "bench_network")
    if nets:
        exact = sum(e["inputs_bit_exact"] for e in nets.values())
        row("secure output vs fixed-point reference", "bit-exact, always",
            f"{exact}/{exact} network runs bit-exact (every run asserts it)", True, "bench_network")
    return rows


def _fixed_point_runs(out: Path) -> dict[str, dict[str, Any]]:
    return {b["extra_info"]["network"]: b["extra_info"] for b in _benchmarks(out, "fixed_point")
            if "network" in b["extra_info"]}


def _fixed_point_table(out: Path) -> list[str]:
    rows = ["| network | ReLUs | truncation steps (elements) | ReLU input rings: median (by element) / largest "
            "| histogram (ring: ReLU layers) | online bytes (truncations' share) | offline bytes "
            "| GC rounds / ReLU depth | folded head |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, e in _fixed_point_runs(out).items():
        head = ", ".join(e.get("folded_head") or []) or "no"
        hist = ", ".join(f"{ring}: {count}" for ring, count in e["relu_ring_histogram"].items())
        share = e["truncate_online_bytes"] / e["online_bytes"] if e["online_bytes"] else 0.0
        rows.append(f"| {name} | {e['relus']:,} | {e['truncation_steps']} ({e['truncated_elements']:,}) "
                    f"| {e['relu_ring_median_elements']:.0f} / {e['relu_ring_max']} | {hist} "
                    f"| {_fmt_bytes(e['online_bytes'])} ({100 * share:.0f}%) | {_fmt_bytes(e['offline_bytes'])} "
                    f"| {e['online_rounds']} / {e['relu_depth']} | {head} |")
    return rows if len(rows) > 2 else []


def _network_table(nets: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    rows = ["| network | transport | ReLUs | trunc. elems | GC rounds | offline time | offline bytes | online time "
            "| online bytes | kernel floor | online / kernel floor | torch fp32 | online / torch "
            "| server linear / torch |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, transport), e in sorted(nets.items(), key=lambda kv: (kv[1]["relus"], kv[0][1])):
        floor = (f"{_fmt_s(e['kernel_floor_seconds'])} | {e['online_to_floor_ratio']:.2f}x"
                 if "kernel_floor_seconds" in e else "n/a | n/a")
        rows.append(
            f"| {name} | {transport} | {e['relus']:,} | {e['gc_cost']['truncations']:,} | {e['online_gc_rounds']} "
            f"| {_fmt_s(e['offline_seconds'])} | {_fmt_bytes(e['offline_bytes'])} | {_fmt_s(e['online_seconds'])} "
            f"| {_fmt_bytes(e['online_bytes'])} | {floor} | {_fmt_s(e['torch_float32_forward_seconds'])} "
            f"| {e['online_to_torch_ratio']:.0f}x | {e['server_linear_to_torch_ratio']:.1f}x |"
        )
    return rows


def _model_table(nets: dict[tuple[str, str], dict[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    """Rows: measured time, the raw prediction and the load-adjusted one (the
    profile rescaled by the speed index measured just before the run)."""
    rows = ["| network | transport | offline measured | predicted (raw) | load-adj. | online measured "
            f"| predicted (raw) | load-adj. | speed factor | within {TOLERANCE:.0%} raw / adj. | offline bytes "
            "| online bytes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    misses: dict[str, list[str]] = {"raw": [], "adjusted": []}
    for (name, transport), e in sorted(nets.items(), key=lambda kv: (kv[1]["relus"], kv[0][1])):
        est = e.get("estimate")
        if not est:
            continue
        adj = e.get("estimate_load_adjusted")
        cells, verdicts = [], []
        for variant, pred in (("raw", est), ("adjusted", adj)):
            if pred is None:
                verdicts.append("n/a")
                continue
            errs = [abs(pred[k] / e[k] - 1) for k in ("offline_seconds", "online_seconds")]
            ok = max(errs) <= TOLERANCE
            verdicts.append("yes" if ok else "**no**")
            if not ok and name.startswith("DRD_C100"):
                misses[variant].append(f"{name} ({transport})")
        for key in ("offline_seconds", "online_seconds"):
            cell = f"{_fmt_s(e[key])} | {_fmt_s(est[key])} ({est[key] / e[key] - 1:+.0%})"
            cell += f" | {_fmt_s(adj[key])} ({adj[key] / e[key] - 1:+.0%})" if adj else " | n/a"
            cells.append(cell)
        bytes_cells = ["exact" if est[k] == e[k] else f"{est[k] - e[k]:+,} B" for k in ("offline_bytes", "online_bytes")]
        factor = f"{e['speed_factor']:.2f}" if "speed_factor" in e else "n/a"
        rows.append(f"| {name} | {transport} | {cells[0]} | {cells[1]} | {factor} | {' / '.join(verdicts)} "
                    f"| {bytes_cells[0]} | {bytes_cells[1]} |")
    return rows, misses


def _delphi(out: Path, nets: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    gc = _benchmarks(out, "gc")
    relu = _find(gc, "test_secure_relu_bytes")
    ev1, ev_all = _find(gc, "test_evaluate_relu[1]"), None
    gb1 = _find(gc, "test_garble_relu[1]")
    for b in gc:
        if b["name"].startswith("test_evaluate_relu[") and b["name"] != "test_evaluate_relu[1]":
            ev_all = b["extra_info"]
    rows = ["| per ReLU | Delphi (ResNet-18) | pie | Delphi / pie | pie measured by |", "|---|---|---|---|---|"]

    def row(what: str, delphi: float, ours: float, unit: str, source: str) -> None:
        rows.append(f"| {what} | {delphi:,.1f} {unit} | {ours:,.2f} {unit} | {delphi / ours:,.1f}x | {source} |")

    if relu:
        row("AND gates", DELPHI["and_gates_per_relu"], relu["and_gates_per_relu"], "", "ReLU circuit, l=37, shift 12")
        row("garbled bytes", DELPHI["garbled_bytes_per_relu"], relu["garbled_bytes_per_relu"], "B",
            "bench_gc, l=37")
        on = relu["online_server_to_client_per_relu"] + relu["online_client_to_server_per_relu"]
        row("online bytes", DELPHI["online_bytes_per_relu"], on, "B", "bench_gc, l=37")
    if ev1:
        row("evaluation time", DELPHI["evaluate_us_per_relu"], ev1["us_per_relu"], "us", "bench_gc, 1 thread")
    if ev_all:
        row("evaluation time", DELPHI["evaluate_us_per_relu"], ev_all["us_per_relu"], "us",
            f"bench_gc, {ev_all['threads']} threads")
    if gb1:
        row("garbling time", DELPHI["garble_us_per_relu"], gb1["us_per_relu"], "us", "bench_gc, 1 thread")
    base = nets.get(("resnet18", "memory"))
    if base:
        relus = base["relus"]
        gc_off = sum(s["offline_bytes"] for s in base["steps"] if s["kind"] in ("relu", "truncate"))
        row("garbled + OT bytes, whole network", DELPHI["garbled_bytes_per_relu"], gc_off / relus, "B",
            "ResNet-18 engine run (compiled rings, truncations included)")
        row("online bytes, whole network", DELPHI["online_bytes_per_relu"], base["online_bytes"] / relus, "B",
            "ResNet-18 engine run")
        gc_on = sum(s["online_seconds"] for s in base["steps"] if s["kind"] in ("relu", "truncate"))
        row("online GC time, whole network", DELPHI["evaluate_us_per_relu"], 1e6 * gc_on / relus, "us",
            "ResNet-18 engine run (includes the server's linear work between rounds)")
    return rows


def _plots(out: Path, nets: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    drd = {k: v for k, v in nets.items() if k[0].startswith("DRD_C100")}
    if drd:
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for transport, marker in (("memory", "o"), ("tcp", "s")):
            pts = sorted((e["relus"], e["online_seconds"], k[0]) for k, e in drd.items() if k[1] == transport)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker=marker, label=f"measured, {transport}")
            pred = sorted((e["relus"], e["estimate"]["online_seconds"]) for k, e in drd.items()
                          if k[1] == transport and "estimate" in e)
            if pred:
                ax.plot([p[0] for p in pred], [p[1] * 1e3 for p in pred], linestyle="--", marker="x",
                        label=f"pie.estimate, {transport}")
            if transport == "tcp":
                for relus, seconds, name in pts:
                    ax.annotate(name.replace("DRD_C100_", ""), (relus, seconds * 1e3), fontsize=7,
                                textcoords="offset points", xytext=(4, -10))
        ax.scatter([12288, 229376], [45, 1000], marker="*", s=120, color="red", zorder=5,
                   label="targets (12K: 45 ms, 230K: 1 s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ReLUs")
        ax.set_ylabel("online latency (ms)")
        ax.set_title("Online latency vs ReLU count, DRD_C100 configurations")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "online_vs_relus.png", dpi=120)
        plt.close(fig)
        made.append("online_vs_relus.png")
    links = _link_runs(out)
    if any(n.startswith("DRD_C100") for by_net in links.values() for n in by_net):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for (name, by_net), colour in zip(links.items(), ("C0", "C1", "C3", "C2", "C4", "C5")):
            runs = sorted((e["relus"], e) for n, e in by_net.items() if n.startswith("DRD_C100"))
            if not runs:
                continue
            ax.plot([r for r, _ in runs], [e["online_seconds"] * 1e3 for _, e in runs], marker="o", color=colour,
                    label=f"measured, {_link_text(runs[0][1])}")
            pred = [(r, e["estimate"]["online_seconds"]) for r, e in runs if "estimate" in e]
            if pred:
                ax.plot([r for r, _ in pred], [t * 1e3 for _, t in pred], linestyle="--", marker="x", color=colour,
                        label=f"pie.estimate, {name}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ReLUs")
        ax.set_ylabel("online latency (ms)")
        ax.set_title("Online latency vs ReLU count per network link, DRD_C100 configurations")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "online_vs_relus_links.png", dpi=120)
        plt.close(fig)
        made.append("online_vs_relus_links.png")
    pick = next((k for k in (("DRD_C100_230K", "tcp"), ("DRD_C100_12K", "tcp")) if k in nets),
                next(iter(nets), None))
    if pick:
        e = nets[pick]
        steps = e["steps"]
        parts = {
            "offline": [("session set-up", e["setup_seconds"], e["setup_bytes"])]
            + [(label, sum(s["offline_seconds"] for s in steps if s["kind"] == kind),
                sum(s["offline_bytes"] for s in steps if s["kind"] == kind))
               for kind, label in (("linear", "HE linear"), ("relu", "GC ReLU (garble+OT)"),
                                   ("truncate", "GC truncation (garble+OT)"))],
            "online": [("masked input", 0.0, 0)]
            + [(label, sum(s["online_seconds"] for s in steps if s["kind"] == kind),
                sum(s["online_bytes"] for s in steps if s["kind"] == kind))
               for kind, label in (("relu", "GC ReLU rounds"), ("truncate", "GC truncation rounds"),
                                   ("output", "output share"))]
            + [("server linear (inside the rounds)", e["server_linear_seconds"], 0)],
        }
        input_bytes = e["online_bytes"] - sum(s["online_bytes"] for s in steps)
        parts["online"][0] = ("masked input", 0.0, input_bytes)
        fig, axes = plt.subplots(2, 2, figsize=(10, 5.5))
        for col, phase in enumerate(("offline", "online")):
            labels = [p[0] for p in parts[phase]]
            for row, (idx, unit, scale) in enumerate(((1, "seconds", 1.0), (2, "MB", 1e-6))):
                ax = axes[row][col]
                vals = [p[idx] * scale for p in parts[phase]]
                ax.barh(labels, vals, color=["#4477aa", "#66ccee", "#228833", "#ccbb44", "#aa3377"][: len(vals)])
                ax.set_xlabel(unit)
                ax.set_title(f"{phase}: {unit}", fontsize=9)
                ax.tick_params(axis="y", labelsize=8)
        fig.suptitle(f"Per-stage breakdown, {pick[0]} ({pick[1]})")
        fig.tight_layout()
        fig.savefig(out / "breakdown.png", dpi=120)
        plt.close(fig)
        made.append("breakdown.png")
        stages = _network_stages(steps)
        names = list(dict.fromkeys(stages))
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, phase in zip(axes, ("offline", "online")):
            bottom = [0.0] * len(names)
            for kind, color in (("linear", "#4477aa"), ("relu", "#228833"), ("truncate", "#ccbb44"),
                                ("output", "#aa3377")):
                vals = [sum(s[f"{phase}_seconds"] for s, st in zip(steps, stages) if st == n and s["kind"] == kind)
                        for n in names]
                if any(vals):
                    ax.bar(names, vals, bottom=bottom, color=color, label=kind)
                    bottom = [b + v for b, v in zip(bottom, vals)]
            ax.set_ylabel("seconds")
            ax.set_title(f"{phase} time by network stage", fontsize=9)
            ax.legend(fontsize=8)
        fig.suptitle(f"{pick[0]} ({pick[1]}): online GC steps include the server's linear work before them",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=120)
        plt.close(fig)
        made.append("stages.png")
    return made


def _network_stages(steps: list[dict[str, Any]]) -> list[str]:
    """The ResNet stage of every step from its output tensor's name: ``layerN``
    names open stage N, the adds and truncations after them stay in it."""
    stages, current = [], "stem"
    for s in steps:
        name = s["output"]
        if name.startswith("layer"):
            current = f"stage {name[5]}"
        elif name.startswith("fc") or s["kind"] == "output":
            current = "fc"
        stages.append(current)
    return stages


def _load_range(info: dict[str, Any]) -> str:
    """The 1-minute load average before -> after a benchmark."""
    before, after = info.get("load_before") or ["?"], info.get("load_after") or ["?"]
    return f"{before[0]} -> {after[0]}"


def _serving(out: Path) -> list[str]:
    """The serving section: throughput, prepared vs single latency, batches."""
    benches = _benchmarks(out, "serving")
    if not benches:
        return []
    lines = ["## Serving", ""]
    one, four = _find(benches, "test_throughput[1]"), _find(benches, "test_throughput[4]")
    pvs, batch = _find(benches, "test_prepared_vs_single"), _find(benches, "test_batch")
    net = next((e["network"] for e in (one, four, pvs, batch) if e), "?")
    meta = json.loads((out / "serving.json").read_text())
    commit = str(meta.get("commit_info", {}).get("id", "?"))[:7]
    lines += [f"{net} over loopback TCP against `pie.serve.serve_forever` on the machine above (all "
              "parties on its CPUs), every result bit-exact (`bench_serving.py`, run "
              f"{str(meta.get('datetime', '?'))[:19].replace('T', ' ')} UTC at commit `{commit}`). A query "
              "whose set was prepared ahead costs its online phase only.", "",
              "| what | measured |", "|---|---|"]
    for e in (one, four):
        if e:
            lines.append(f"| throughput, {e['clients']} concurrent client{'s' if e['clients'] > 1 else ''} "
                         f"({e['queries_per_client']} queries each, offline included) | "
                         f"{e['inferences_per_minute']:.1f} inferences/minute ({e['inferences']} in "
                         f"{_fmt_s(e['wall_seconds'])}); first result after "
                         f"{_fmt_s(e['time_to_first_result_seconds'])} (median); load "
                         f"{_load_range(e)} |")
    if pvs:
        lines.append(f"| online latency, prepared query vs single query (same run, median of "
                     f"{pvs['queries']}) | {_fmt_s(pvs['prepared_online_seconds'])} vs "
                     f"{_fmt_s(pvs['single_online_seconds'])} ({pvs['prepared_to_single_ratio']:.2f}x); "
                     f"load {_load_range(pvs)} |")
        lines.append(f"| time to first result (fresh connection: plan, handshake, offline, online) | "
                     f"{_fmt_s(pvs['time_to_first_result_seconds'])} |")
    if batch:
        lines += ["", "Batches: `online(x)` with x of shape (B, C, H, W), B prepared sets, one connection "
                  f"(medians of two runs; load {_load_range(batch)}).", "",
                  "| B | online time | online time per image | online bytes | messages | offline (B sets) |",
                  "|---|---|---|---|---|---|"]
        for r in batch["batches"]:
            lines.append(f"| {r['batch']} | {_fmt_s(r['online_seconds'])} | "
                         f"{_fmt_s(r['online_seconds'] / r['batch'])} | {_fmt_bytes(r['online_bytes'])} | "
                         f"{r['online_rounds']} | {_fmt_s(r['offline_seconds'])} |")
    return lines + [""]


def render(out: Path) -> None:
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    nets = _network_runs(out)
    lines = ["# pie performance report", ""]
    machine = run.get("machine", {})
    before, after = run.get("load_before", {}), run.get("load_after", {})
    lines += [
        f"Produced by `python bench/report.py` at commit `{machine.get('commit', '?')}`, "
        f"{before.get('time', '?')} to {after.get('time', '?')} "
        f"({run.get('total_seconds', 0) / 60:.1f} minutes).",
        "",
        f"Uncommitted changes in the working tree at the time: {', '.join(machine['uncommitted'])}."
        if machine.get("uncommitted") else "The working tree was clean.",
        "",
        f"Machine: {machine.get('processor', '?')}, {machine.get('cpus', '?')} CPUs, {machine.get('platform', '?')}, "
        f"Python {machine.get('python', '?')}.",
        f"Load average (1, 5, 15 min) before: {before.get('load_average', '?')}, after: "
        f"{after.get('load_average', '?')}.",
    ]
    busy = sorted(set(before.get("busy_processes", []) + after.get("busy_processes", [])))
    if busy:
        lines.append("Other busy processes seen: " + "; ".join(busy) + ". Times are from a shared, loaded "
                     "machine: treat them as upper bounds for an idle one.")
    failed = {k: v for k, v in run.get("suites", {}).items() if v.get("returncode")}
    if failed:
        lines.append("")
        lines.append("**Suites that failed:** " + ", ".join(f"bench_{k}" for k in failed) + " (see run.json).")
    lines += ["", "Suite wall times: " + ", ".join(f"bench_{k} {v['seconds']:.0f} s"
                                                   for k, v in run.get("suites", {}).items())
              + f"; profile {run.get('profile_seconds', 0):.0f} s.", ""]
    lines += ["## Targets", ""] + _targets(out, nets) + [""]
    lines += ["## Networks", "",
              f"{NETWORK_INPUTS} inputs per network and transport (figures are medians), each bit-exact "
              "against the Plan's reference. Untrained networks "
              "with random batch-norm statistics, compiled with the default policy of "
              "`pie.compile`. *offline* includes the session set-up; *online* is the client's wall time from "
              "the masked input to the decoded output; *torch fp32* is a float32 forward pass of the same "
              "network in the same run; *server linear* is the server's online ring arithmetic "
              "(`pie.Server.linear` over every linear step, on uniformly random shares as the server holds them); "
              "*kernel floor* is the GC evaluation kernel of every ReLU and truncate step's own circuit at its "
              "element count (`pie.gc.kernel_seconds`, all cores) plus the online bytes over the transport's "
              "bandwidth (a 32 MiB transfer as in `bench_channel`), both measured in the same run. Target: online "
              "time within 1.5x of the kernel floor for every DRD_C100 network.", ""]
    lines += _network_table(nets) + [""]
    fixed_rows = _fixed_point_table(out)
    if fixed_rows:
        lines += ["## Fixed point", "",
                  "The compiled Plan of each network at `pie.compile`'s default settings (random weights and "
                  "batch-norm statistics as above; the demo model as bundled), from `bench_fixed_point.py`: "
                  "bytes are exact (`pie.cost.traffic`), no protocol runs. *folded head*: the tensors the "
                  "ReLU-free region at the input was folded into (dense layers of the input, "
                  "`fold_head_weights`).", ""] + fixed_rows + [""]
    plots = _plots(out, nets)
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    links = _link_runs(out)
    if set(links) - {"loopback"}:
        link_rows, link_misses = _link_tables(links)
        lines += ["## Network links", "",
                  "Each network once per link (`PIE_BENCH_LINK`): *loopback* is the transport as it is, the "
                  "emulated links (`pie.Link` presets, Cheetah's LAN and WAN settings) wrap both ends of the TCP "
                  "connection. Round trips are the client's waits for an answer after it sent something, the "
                  "latency a link's RTT multiplies. *predicted* is `pie.estimate(plan, profile, transport, "
                  "link=...)` with the profile of this run; target on the emulated links: within 20% for every "
                  "DRD_C100 configuration.", ""]
        lines += link_rows
        for variant, key in (("raw", "estimate"), ("adjusted", "estimate_load_adjusted")):
            drd = [f"{n} on {name}" for name, by_net in links.items() if name != "loopback"
                   for n, e in by_net.items() if n.startswith("DRD_C100") and key in e]
            if drd:
                missed = link_misses[variant]
                outside = {m.split(" (")[0] for m in missed}
                lines += [f"DRD_C100 runs on emulated links within 20% on both times ({variant}): "
                          f"{len(drd) - len(outside)}/{len(drd)}"
                          + (f"; outside: {', '.join(missed)}." if missed else "."), ""]
    lines += ["## Delphi anchors", "",
              "Ratios above 1 mean pie needs less. Delphi's figures are a third party's measurement on CIFAR "
              "ResNet-18 (557,056 ReLUs, 41-bit prime field); pie's micro figures are at l = 37.", ""]
    lines += _delphi(out, nets) + [""]
    lines += _serving(out)
    model_rows, misses = _model_table(nets)
    lines += ["## Cost model: predicted vs measured", "",
              "`pie.estimate(plan, Profile.load('profile.json'), transport)` with the profile measured at the "
              "start of this run (*raw*), and with that profile rescaled to the machine's speed measured just "
              "before and after each network run (*load-adj.*: `profile.scaled(measure_speed_index() / "
              "profile.speed_index_s)`; the *speed factor* is that ratio, 1 on an unchanged machine). Bytes are "
              "predicted exactly; times are the model (see `pie/cost/`). Target: within "
              f"{TOLERANCE:.0%} of measured offline and online time for every DRD_C100 configuration (medians "
              f"of {NETWORK_INPUTS} inputs per run).", ""]
    lines += model_rows + [""]
    lines += ["The raw prediction is the cost model's answer. The load-adjusted one is a diagnostic for shared "
              "machines: a one-second gauge of the machine's speed is itself a noisy measure of the load, so "
              "compare the two columns with the load averages above before trusting either on a busy machine.",
              ""]
    drd_rows = [k for k, e in nets.items() if k[0].startswith("DRD_C100") and "estimate" in e]
    if drd_rows:
        for variant in ("raw", "adjusted"):
            missed = misses[variant]
            key = "estimate" if variant == "raw" else "estimate_load_adjusted"
            count = sum(1 for k in drd_rows if key in nets[k])
            lines.append(f"DRD_C100 runs within {TOLERANCE:.0%} on both times ({variant}): "
                         f"{count - len(missed)}/{count}"
                         + (f"; outside: {', '.join(missed)}." if missed else "."))
            lines.append("")
    profile_path = out / "profile.json"
    if profile_path.exists():
        prof = json.loads(profile_path.read_text())
        keys = [k for k, v in prof.items() if isinstance(v, (int, float)) and (k.endswith("_s") or k == "threads")]
        lines += ["## Machine profile (profile.json)", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {prof[k]:.4g} |" for k in keys]
        lines += [f"| bandwidth {t} | {v / 1e9:.2f} GB/s |" for t, v in prof["bandwidth"].items()]
        lines += [f"| round trip {t} | {v * 1e6:.1f} us |" for t, v in prof["rtt_s"].items()]
        lines.append("")
    (out / "REPORT.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--networks", default="all",
                        help="PIE_BENCH_NET for bench_network.py: 'all' or comma-separated names")
    parser.add_argument("--profile-seconds", type=float, default=60.0, help="budget of measure_profile")
    parser.add_argument("--links", default="loopback,lan,wan",
                        help="PIE_BENCH_LINK for bench_network.py: comma-separated pie.Link presets")
    parser.add_argument("--render-only", action="store_true", help="only rebuild REPORT.md and the plots")
    args = parser.parse_args(argv)
    if not args.render_only:
        run_all(args.out, args.networks, args.profile_seconds, args.links)
    render(args.out)
    print(f"wrote {args.out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
