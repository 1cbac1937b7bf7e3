"""Serving: throughput with concurrent clients, the online latency of a
prepared query against a single query's, the time to first result, and
batches of images -- all over loopback TCP against ``pie.serve.serve_forever``.

Every result is checked bit for bit against the Plan's reference.

- ``test_throughput[N]``: N clients at once, each on its own connection
  answering ``PIE_BENCH_QUERIES`` images one after the other (each query's
  set prepared just before it); inferences per minute over the wall time of
  the whole run, and each client's time to its first result.
- ``test_prepared_vs_single``: alternately, a single query on a fresh
  connection (handshake, offline, online: ``pie.serve.query``) and a query
  whose set one long-lived connection prepared ahead (``prepare(k)``); the
  online times of both in the same run, and the single query's time from
  connecting to its result (time to first result).
- ``test_batch``: ``online(x)`` with x of shape (B, C, H, W) for B = 1, 2, 4
  (twice each, alternating, medians; once each at the smoke size): online time, bytes and messages against B.

Each test records the machine's load averages before and after it.

``PIE_BENCH_NET`` names the network (default: a small DeepReDuce-style one,
the smoke run, a few seconds; e.g. ``DRD_C100_12K``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import pie
from pie import serve
from pie.models import ResNet, ResNetConfig

from benchnets import random_bn

SHAPE = (3, 32, 32)
NET = os.environ.get("PIE_BENCH_NET", "") or "smoke"
QUERIES = int(os.environ.get("PIE_BENCH_QUERIES", "2" if NET == "smoke" else "4"))


@functools.lru_cache(maxsize=1)
def compiled() -> pie.Plan:
    torch.manual_seed(0)
    if NET == "smoke":
        cfg = ResNetConfig(blocks=(1, 1, 1, 1), alpha=0.125, rho=0.5, culled=(True, False, False, False),
                           thinned=(False, True))
        return pie.compile(random_bn(ResNet(cfg), 0), SHAPE)
    return pie.compile(random_bn(pie.models.build(NET), 0), SHAPE)


@contextmanager
def serving(plan: pie.Plan) -> Iterator[int]:
    """``serve_forever`` over loopback TCP in a thread; yields the port."""
    stop = threading.Event()
    listener = pie.TcpListener("127.0.0.1", 0)
    worker = threading.Thread(target=serve.serve_forever,
                              args=(pie.Server(plan), listener, serve.Limits(max_sessions=8, pool=0), stop))
    worker.start()
    try:
        yield listener.port
    finally:
        stop.set()
        worker.join()
        listener.close()


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _connect(port: int) -> tuple[pie.Channel, pie.protocol.ClientSession]:
    ch = pie.tcp_connect("127.0.0.1", port)
    return ch, pie.Client(serve.fetch_public_plan(ch)).session(ch)


@pytest.mark.parametrize("clients", [1, 4])
def test_throughput(benchmark, clients: int) -> None:  # type: ignore[no-untyped-def]
    plan = compiled()
    rng = np.random.default_rng(clients)
    images = [[rng.random(SHAPE) for _ in range(QUERIES)] for _ in range(clients)]
    first: list[float] = []
    online: list[float] = []
    errors: list[BaseException] = []
    wall: list[float] = []

    def client(xs: list[np.ndarray]) -> None:
        try:
            start = time.perf_counter()
            ch, session = _connect(port)
            with ch, session:
                for k, x in enumerate(xs):
                    session.prepare(1)
                    logits, report = session.online(x)
                    assert np.array_equal(logits, plan.run_reference(x))
                    online.append(report.online_seconds)
                    if k == 0:
                        first.append(time.perf_counter() - start)
        except BaseException as exc:  # re-raised in the benchmark's thread
            errors.append(exc)

    def run() -> None:
        threads = [threading.Thread(target=client, args=(xs,)) for xs in images]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall.append(time.perf_counter() - start)
        if errors:
            raise errors[0]

    load = _load()
    with serving(plan) as port:
        benchmark.pedantic(run, rounds=1, iterations=1)
    total = clients * QUERIES
    benchmark.extra_info.update(
        network=NET, clients=clients, queries_per_client=QUERIES, inferences=total,
        wall_seconds=wall[0], inferences_per_minute=60.0 * total / wall[0],
        time_to_first_result_seconds=float(np.median(first)),
        online_seconds_median=float(np.median(online)), cpus=os.cpu_count(),
        load_before=load, load_after=_load(),
    )


def test_prepared_vs_single(benchmark) -> None:  # type: ignore[no-untyped-def]
    plan = compiled()
    rng = np.random.default_rng(7)
    single: list[float] = []
    first: list[float] = []
    prepared: list[float] = []
    waits: list[float] = []

    def run() -> None:
        ch, session = _connect(port)
        with ch, session:
            session.prepare(QUERIES)
            for _ in range(QUERIES):
                x = rng.random(SHAPE)
                start = time.perf_counter()
                with pie.tcp_connect("127.0.0.1", port) as fresh:
                    logits, report, _ = serve.query(fresh, x)
                first.append(time.perf_counter() - start)
                assert np.array_equal(logits, plan.run_reference(x))
                single.append(report.online_seconds)
                x = rng.random(SHAPE)
                start = time.perf_counter()
                logits, report = session.online(x)
                waits.append(time.perf_counter() - start)
                assert np.array_equal(logits, plan.run_reference(x))
                prepared.append(report.online_seconds)

    load = _load()
    with serving(plan) as port:
        benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(
        network=NET, queries=QUERIES, load_before=load, load_after=_load(),
        single_online_seconds=float(np.median(single)),
        prepared_online_seconds=float(np.median(prepared)),
        prepared_to_single_ratio=float(np.median(prepared) / np.median(single)),
        prepared_result_seconds=float(np.median(waits)),
        time_to_first_result_seconds=float(np.median(first)),
    )


def test_batch(benchmark) -> None:  # type: ignore[no-untyped-def]
    plan = compiled()
    rng = np.random.default_rng(9)
    runs: dict[int, list[pie.Report]] = {1: [], 2: [], 4: []}

    def run() -> None:
        ch, session = _connect(port)
        with ch, session:
            for b in list(runs) * (1 if NET == "smoke" else 2):
                xs = rng.random((b, *SHAPE))
                session.prepare(b)
                logits, report = session.online(xs)
                for x, row in zip(xs, logits):
                    assert np.array_equal(row, plan.run_reference(x))
                runs[b].append(report)

    load = _load()
    with serving(plan) as port:
        benchmark.pedantic(run, rounds=1, iterations=1)
    rows = [{"batch": b, "online_seconds": float(np.median([r.online_seconds for r in reports])),
             "online_bytes": reports[0].online_bytes, "online_rounds": reports[0].online_rounds,
             "offline_seconds": float(np.median([r.offline_seconds for r in reports]))}
            for b, reports in runs.items()]
    assert len({r["online_rounds"] for r in rows}) == 1  # B images in the rounds of one
    benchmark.extra_info.update(network=NET, batches=rows, load_before=load, load_after=_load())
