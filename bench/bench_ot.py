"""OT throughput: Chou-Orlandi base OTs (one IKNP setup) and IKNP correlated OT
extension per second over the in-memory channel, sender and receiver as two
threads. Run: ``pytest bench/bench_ot.py --benchmark-enable``."""

from __future__ import annotations

import threading

from pie import crypto, gc, memory_pair

COTS = 1 << 20


def run_pair(n: int, fresh: bool, state: dict) -> None:
    """Extend n COTs (after a fresh base-OT setup if fresh)."""
    if fresh or "pair" not in state:
        a, b = memory_pair()
        state["pair"] = (gc.IknpSender(a), gc.IknpReceiver(b))
    sender, receiver = state["pair"]
    if state.get("n") != n:
        state["n"], state["choices"] = n, bytes(x & 1 for x in crypto.Prg().random_bytes(n))
    choices = state["choices"]
    t = threading.Thread(target=receiver.recv_cot, args=(choices,))
    t.start()
    sender.send_cot(n)
    t.join()


def test_base_ot_setup(benchmark) -> None:  # type: ignore[no-untyped-def]
    """128 Chou-Orlandi OTs plus one tiny extension: the per-session setup."""
    state: dict = {}
    benchmark(run_pair, 1, True, state)
    benchmark.extra_info.update(base_ots=128)


def test_iknp_cot_per_second(benchmark) -> None:  # type: ignore[no-untyped-def]
    state: dict = {}
    run_pair(1, True, state)  # base OTs outside the timed loop
    benchmark(run_pair, COTS, False, state)
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats and stats.median > 0:
        benchmark.extra_info.update(cots=COTS, cot_per_second=COTS / stats.median)
