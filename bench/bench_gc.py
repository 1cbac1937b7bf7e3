"""Garbled-circuit throughput: the ReLU circuit at l = 37, per AND gate and per
ReLU, one thread and all cores; end-to-end secure_relu bytes; AES in the same
run; the ratio of evaluation time per AND gate to its two hash calls; and
the fused kernels of every AES backend against each other in one run.

Run: ``pytest bench/bench_gc.py --benchmark-enable``; figures are in
``benchmark.extra_info`` (``--benchmark-json`` keeps them). Targets
(the performance targets): <= 111 AND gates, <= 3.6 KB garbled and
<= 600 + 5 B online per ReLU, <= 1.5 us evaluation and <= 3 us garbling per
ReLU per core, evaluation per AND <= 2x its two hash calls.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from pie import crypto, gc

L = 37
SHIFT = 12
N = 4096  # ReLUs per timed call (a multiple of the block size)
REPEAT = 5
THREADS = sorted({1, gc.worker_threads(0)})


@pytest.fixture(scope="module")
def relu() -> gc.Circuit:
    return gc.relu_circuit(L, L, SHIFT)


def record(benchmark, circuit: gc.Circuit, seconds: float, threads: int) -> float:  # type: ignore[no-untyped-def]
    per_relu = seconds / (REPEAT * N)
    benchmark.extra_info.update(
        threads=threads,
        and_gates_per_relu=circuit.num_and,
        us_per_relu=per_relu * 1e6,
        us_per_relu_per_core=per_relu * 1e6 * threads,
        ns_per_and=per_relu / circuit.num_and * 1e9,
    )
    return per_relu


@pytest.mark.parametrize("threads", THREADS)
def test_garble_relu(benchmark, relu: gc.Circuit, threads: int) -> None:  # type: ignore[no-untyped-def]
    seconds: list[float] = []
    benchmark(lambda: seconds.append(gc.kernel_seconds(relu, N, threads, REPEAT, "garble")))
    record(benchmark, relu, min(seconds), threads)


@pytest.mark.parametrize("threads", THREADS)
def test_evaluate_relu(benchmark, relu: gc.Circuit, threads: int) -> None:  # type: ignore[no-untyped-def]
    seconds: list[float] = []
    benchmark(lambda: seconds.append(gc.kernel_seconds(relu, N, threads, REPEAT, "evaluate")))
    record(benchmark, relu, min(seconds), threads)


def test_evaluation_vs_hash_ratio(benchmark, relu: gc.Circuit) -> None:  # type: ignore[no-untyped-def]
    """Evaluation per AND gate against the two TCCR hash calls it needs, and AES
    blocks per second, measured back to back on one thread."""
    samples: list[tuple[float, float, float]] = []
    aes = crypto.Aes128(crypto.secure_random(16))

    def run() -> None:
        ev = gc.kernel_seconds(relu, N, 1, REPEAT, "evaluate")
        hs = gc.kernel_seconds(relu, N, 1, REPEAT, "hash")
        t0 = time.perf_counter()
        aes.encrypt_blocks(1 << 14, 16)
        samples.append((ev, hs, time.perf_counter() - t0))

    benchmark(run)
    ev, hs, aes_s = (min(column) for column in zip(*samples))  # best of each, as for the others
    per_and_eval = ev / (REPEAT * N * relu.num_and)
    per_and_hashes = hs / (REPEAT * N * relu.num_and)  # two hash calls per AND gate
    benchmark.extra_info.update(
        ns_per_and_evaluate=per_and_eval * 1e9,
        ns_two_hash_calls=per_and_hashes * 1e9,
        ratio_evaluate_to_two_hashes=per_and_eval / per_and_hashes,
        aes_blocks_per_second=(1 << 14) * 16 / aes_s,
    )


FUSED = [b for b in crypto.aes_backends() if b != "openssl"]


@pytest.mark.skipif(len(FUSED) < 2, reason="one fused AES kernel on this CPU")
def test_kernel_by_backend(benchmark, relu: gc.Circuit) -> None:  # type: ignore[no-untyped-def]
    """Garbling and evaluation per ReLU on one thread with each fused kernel
    (VAES on 512-bit registers, AES-NI on 128-bit ones), interleaved so that
    machine noise hits both alike; speedups are the widest kernel's over the
    narrowest."""
    samples: dict[tuple[str, str], list[float]] = {}

    def run() -> None:
        for mode in ("garble", "evaluate"):
            for backend in FUSED:
                seconds = gc.kernel_seconds(relu, N, 1, REPEAT, mode, backend=backend)
                samples.setdefault((backend, mode), []).append(seconds / (REPEAT * N))

    benchmark(run)
    best = {key: min(v) for key, v in samples.items()}
    wide, narrow = FUSED[0], FUSED[-1]
    for (backend, mode), per_relu in best.items():
        benchmark.extra_info[f"{backend}_{mode}_us_per_relu"] = per_relu * 1e6
    for mode in ("garble", "evaluate"):
        benchmark.extra_info[f"{mode}_speedup"] = best[narrow, mode] / best[wide, mode]


def test_secure_relu_bytes(benchmark) -> None:  # type: ignore[no-untyped-def]
    n = 2048
    rng = np.random.default_rng(0)
    xs, xc, r = (rng.integers(0, 2**L, size=n, dtype=np.uint64) for _ in range(3))
    out: list[dict] = []
    benchmark(lambda: out.append(gc.secure_relu(xs, xc, r, L, L, SHIFT)[1]))
    stats = out[-1]
    benchmark.extra_info.update(
        relus=n,
        and_gates_per_relu=stats["and_gates_per_relu"],
        garbled_bytes_per_relu=stats["garbled_bytes_per_relu"],
        offline_bytes_per_relu=stats["offline_bytes"] / n,
        online_server_to_client_per_relu=stats["online_bytes_server_to_client"] / n,
        online_client_to_server_per_relu=stats["online_bytes_client_to_server"] / n,
    )
