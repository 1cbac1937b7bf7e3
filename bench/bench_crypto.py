"""AES and hash throughput on one core: the yardstick for the GC engine."""

from __future__ import annotations

import pytest

from pie import crypto

BLOCKS = 1 << 14  # 256 KiB: stays in L2 so the figure is the cipher, not memory
REPEAT = 64


def per_second(benchmark: pytest.FixtureRequest, count: int) -> float:
    stats = benchmark.stats.stats if benchmark.stats else None
    return count / stats.median if stats and stats.median > 0 else float("nan")


@pytest.mark.parametrize("backend", crypto.aes_backends())
def test_aes_blocks_per_second(benchmark, backend: str) -> None:  # type: ignore[no-untyped-def]
    aes = crypto.Aes128(crypto.secure_random(16), backend=backend)
    benchmark(aes.encrypt_blocks, BLOCKS, REPEAT)
    rate = per_second(benchmark, BLOCKS * REPEAT)
    benchmark.extra_info.update(
        backend=backend, blocks_per_call=BLOCKS * REPEAT, aes_blocks_per_second=rate
    )


@pytest.mark.parametrize("backend", crypto.aes_backends())
def test_tccr_hashes_per_second(benchmark, backend: str) -> None:  # type: ignore[no-untyped-def]
    h = crypto.TccrHash(backend=backend)
    n = 1 << 14
    x, t = crypto.secure_random(16 * n), crypto.secure_random(16 * n)
    benchmark(h.hash, x, t)
    benchmark.extra_info.update(
        backend=backend, hashes_per_call=n, hashes_per_second=per_second(benchmark, n)
    )
