"""HE offline linear layers: client encrypt, server compute, client decrypt
and bytes each way per layer, and totals for every linear layer of CIFAR
ResNet-18 and DRD_C100_12K (targets: all ResNet-18
linear layers <= 10 s on 2 cores, <= 300 MB at rings <= 40 bits).

By default one layer runs (also the smoke run with benchmarks disabled).
PIE_BENCH_HE=all adds the whole networks: ``PIE_BENCH_HE=all pytest
bench/bench_he.py --benchmark-enable -s``.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from pie import he

ALL = os.environ.get("PIE_BENCH_HE") == "all"


def resnet18_layers(alpha: float, rho: float, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> list[tuple]:
    """(name, C, H, O, k, stride, padding) of every linear layer, in order (FC as 1x1)."""
    w = [int(64 * alpha), int(128 * alpha), int(256 * alpha), int(512 * alpha)]
    s0 = int(1 // rho)
    layers = [("stem", 3, 32, w[0], 3, s0, 1)]
    h, cin = (32 + 2 - 3) // s0 + 1, w[0]
    for stage, (width, nb) in enumerate(zip(w, blocks)):
        for b in range(nb):
            stride = 2 if stage > 0 and b == 0 else 1
            layers.append((f"l{stage + 1}.{b}.conv1", cin, h, width, 3, stride, 1))
            if stride != 1 or cin != width:
                layers.append((f"l{stage + 1}.{b}.shortcut", cin, h, width, 1, stride, 0))
            h = (h + 2 - 3) // stride + 1
            layers.append((f"l{stage + 1}.{b}.conv2", width, h, width, 3, 1, 1))
            cin = width
    layers.append(("fc", w[3], 1, 100, 1, 1, 0))
    return layers


def run_layer(layer: tuple, ring_bits: int, rng: np.random.Generator) -> dict:
    name, c, h, o, k, s, p = layer
    x = rng.integers(0, 1 << ring_bits, size=(c, h, h), dtype=np.uint64)
    w = rng.integers(-128, 128, size=(o, c, k, k), dtype=np.int64)
    t0, c0 = time.perf_counter(), time.process_time()
    out, mask, stats = he.secure_conv2d(x, w, stride=s, padding=p, ring_bits=ring_bits)
    stats["wall_s"] = time.perf_counter() - t0
    stats["cpu_s"] = time.process_time() - c0  # both parties, all threads
    stats["layer"] = name
    assert out.shape == mask.shape
    return stats


def totals(stats: list[dict]) -> dict:
    keys = ("client_encrypt_s", "server_compute_s", "client_decrypt_s", "wall_s", "cpu_s")
    out = {k: round(sum(s.get(k, 0.0) for s in stats), 3) for k in keys}
    out["mb_client_to_server"] = round(sum(s["bytes_client_to_server"] for s in stats) / 1e6, 2)
    out["mb_server_to_client"] = round(sum(s["bytes_server_to_client"] for s in stats) / 1e6, 2)
    return out


def test_he_one_layer(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A stage-4 conv of DRD_C100_12K (256 channels, 2x2)."""
    layer = ("l4.1.conv2", 256, 2, 256, 3, 1, 1)
    rng = np.random.default_rng(0)
    stats = benchmark.pedantic(run_layer, args=(layer, 37, rng), rounds=1, iterations=1)
    benchmark.extra_info.update(stats)


NETWORKS = {
    "resnet18": resnet18_layers(1.0, 1.0),
    "DRD_C100_12K": resnet18_layers(0.5, 0.5),  # culling/thinning remove ReLUs, not linear layers
}


def run_network(layers: list[tuple], ring_bits: int, rng: np.random.Generator) -> list[dict]:
    """All layers in one session (one key pair) over the in-memory channel,
    client and server as threads; per-layer times and bytes each way."""
    from pie import channel

    shares = [rng.integers(0, 1 << ring_bits, size=(c, h, h), dtype=np.uint64) for _, c, h, *_ in layers]
    weights = [rng.integers(-128, 128, size=(o, c, k, k), dtype=np.int64) for _, c, _, o, k, _, _ in layers]
    client_end, server_end = channel.memory_pair(256 << 20)
    server_times: list[float] = []
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server = he.LinearServer(server_end, ring_bits=ring_bits)
            for (_, c, h, _, _, s, p), w in zip(layers, weights):
                server.conv2d((c, h, h), w, stride=s, padding=p)
                server_times.append(server.timings["compute_s"])
        except BaseException as e:  # reported by the client thread below
            errors.append(e)
            server_end.close()

    thread = threading.Thread(target=serve)
    t0, c0 = time.perf_counter(), time.process_time()
    thread.start()
    client = he.LinearClient(client_end, ring_bits=ring_bits)
    stats = []
    for (name, c, h, o, k, s, p), x in zip(layers, shares):
        up, down = client_end.bytes_sent, client_end.bytes_received
        client.conv2d(x, (o, c, k, k), stride=s, padding=p)
        stats.append(
            dict(
                layer=name,
                client_encrypt_s=client.timings["encrypt_s"],
                client_decrypt_s=client.timings["decrypt_s"],
                bytes_client_to_server=client_end.bytes_sent - up,
                bytes_server_to_client=client_end.bytes_received - down,
            )
        )
    thread.join()
    if errors:
        raise errors[0]
    for st, srv in zip(stats, server_times):
        st["server_compute_s"] = srv
    stats[0]["wall_s"] = time.perf_counter() - t0
    stats[0]["cpu_s"] = time.process_time() - c0
    return stats


@pytest.mark.skipif(not ALL, reason="set PIE_BENCH_HE=all for whole networks")
@pytest.mark.parametrize("ring_bits", [37, 59])
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_he_network(benchmark, network: str, ring_bits: int) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    stats = benchmark.pedantic(run_network, args=(NETWORKS[network], ring_bits, rng), rounds=1, iterations=1)
    summary = totals(stats)
    benchmark.extra_info.update(network=network, ring_bits=ring_bits, **summary)
    print(f"\n{network} l={ring_bits} (one session, both parties, wall and CPU of the whole run): {summary}")
    for s in stats:
        print(
            f"  {s['layer']:<16} enc {s['client_encrypt_s']:.3f}s srv {s['server_compute_s']:.3f}s "
            f"dec {s['client_decrypt_s']:.3f}s up {s['bytes_client_to_server'] / 1e6:.2f}MB "
            f"down {s['bytes_server_to_client'] / 1e6:.2f}MB"
        )
