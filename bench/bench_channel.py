"""Channel throughput for 64 MiB transfers, in-memory and over loopback TCP."""

from __future__ import annotations

import threading

import pytest

import pie
from pie import crypto

SIZE = 64 << 20


def tcp_pair() -> tuple[pie.Channel, pie.Channel]:
    with pie.TcpListener("127.0.0.1", 0) as listener:
        a = pie.tcp_connect("127.0.0.1", listener.port)
        b = listener.accept()
    return a, b


@pytest.mark.parametrize("transport", ["memory", "tcp"])
def test_transfer_64mib(benchmark, transport: str) -> None:  # type: ignore[no-untyped-def]
    a, b = pie.memory_pair() if transport == "memory" else tcp_pair()
    payload = crypto.Prg().random_bytes(SIZE)
    sink = bytearray(SIZE)

    def transfer() -> None:
        reader = threading.Thread(target=b.recv_into, args=(sink,))
        reader.start()
        a.send(payload)
        a.flush()
        reader.join()

    benchmark.pedantic(transfer, rounds=5, warmup_rounds=1)
    assert sink == payload
    median = benchmark.stats.stats.median if benchmark.stats else float("nan")
    benchmark.extra_info.update(transport=transport, bytes=SIZE, mib_per_second=SIZE / 2**20 / median)
    a.close()
    b.close()
