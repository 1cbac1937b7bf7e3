"""Channel throughput for 64 MiB transfers, in-memory and over loopback TCP."""

from __future__ import annotations

import pytest

from pie import crypto

from benchnets import channel_pair, transfer

SIZE = 64 << 20


@pytest.mark.parametrize("transport", ["memory", "tcp"])
def test_transfer_64mib(benchmark, transport: str) -> None:  # type: ignore[no-untyped-def]
    a, b = channel_pair(transport)
    payload = crypto.Prg().random_bytes(SIZE)
    sink = bytearray(SIZE)
    benchmark.pedantic(lambda: transfer(a, b, payload, sink), rounds=5, warmup_rounds=1)
    assert sink == payload
    median = benchmark.stats.stats.median if benchmark.stats else float("nan")
    benchmark.extra_info.update(transport=transport, bytes=SIZE, mib_per_second=SIZE / 2**20 / median)
    a.close()
    b.close()
