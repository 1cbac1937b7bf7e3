"""What the transcript check costs the online phase, with and without it in one run.

Every channel keeps a running Poly1305 of the bytes it sent and received
(``Channel.transcript``), and the sealed session frames compare them. This
runs the same network (random weights and batch-norm statistics, as
``bench_network``) over in-memory pairs with the check and over pairs made
without it (``pie._core.memory_pair(transcript_check=False)``: both ends keep
no check and seal zeros, a measurement-only configuration), alternating
input by input so that both see the same machine. ``extra_info`` records the
median online times, the check's share of the checked online time, and the
check's throughput on one 64 MiB transfer each way (checked against unchecked
pairs, same run). Target: at most 3% of DRD_C100_12K's online time.

``PIE_BENCH_TRANSCRIPT_NET`` names the network (default DRD_C100_12K);
``PIE_BENCH_INPUTS`` the inputs per configuration (default 3; the first of
each is a warm-up and not counted when more than two ran).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

import pie
from pie import _core, crypto

from benchnets import infer_over, random_bn

NETWORK = os.environ.get("PIE_BENCH_TRANSCRIPT_NET", "DRD_C100_12K")
INPUTS = int(os.environ.get("PIE_BENCH_INPUTS", "3"))
TRANSFER = 64 << 20


def _transfer_seconds(check: bool, payload: bytes) -> float:
    """One transfer of ``payload`` over a fresh in-memory pair, sender and
    receiver in this thread (the pair's capacity holds it all)."""
    a, b = _core.memory_pair(len(payload), transcript_check=check)
    sink = bytearray(len(payload))
    start = time.perf_counter()
    a.send(payload)
    a.flush()
    b.recv_into(sink)
    elapsed = time.perf_counter() - start
    a.close()
    b.close()
    return elapsed


def test_transcript_check_cost(benchmark) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = random_bn(pie.models.build(NETWORK), 0)
    size = net.config.input_size
    plan = pie.compile(net, (3, size, size))
    rng = np.random.default_rng(0)
    online: dict[bool, list[float]] = {True: [], False: []}

    def once() -> None:
        x = rng.random((3, size, size))
        for check in (True, False):
            server_end, client_end = _core.memory_pair(transcript_check=check)
            logits, report = infer_over(plan, server_end, client_end, x)
            assert np.array_equal(logits, plan.run_reference(x))
            online[check].append(report.online_seconds)

    benchmark.pedantic(once, rounds=INPUTS, iterations=1)
    skip = 1 if len(online[True]) > 2 else 0  # a smoke run (no --benchmark-enable) runs once
    with_s = float(np.median(online[True][skip:]))
    without_s = float(np.median(online[False][skip:]))
    payload = crypto.Prg().random_bytes(TRANSFER)
    checked = min(_transfer_seconds(True, payload) for _ in range(3))
    unchecked = min(_transfer_seconds(False, payload) for _ in range(3))
    benchmark.extra_info.update(
        network=NETWORK,
        inputs=len(online[True]) - skip,
        online_seconds_with_check=with_s,
        online_seconds_without_check=without_s,
        check_share_of_online=(with_s - without_s) / with_s,
        # Both ends hash the stream once: the sender's and the receiver's check.
        check_bytes_per_second=2 * TRANSFER / max(checked - unchecked, 1e-9),
        target_share=0.03,
    )
