"""HE linear layers: exactness of the two-party protocol against plain integer
convolution (numpy, mod 2^l), on small shapes covering every encoder path and
on every linear-layer shape of CIFAR ResNet-18."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pie import he

from he_oracle import conv2d_mod, resnet18_linear_shapes

RINGS = (37, 48, 59)


def random_share(rng: np.random.Generator, shape: tuple[int, ...], ring_bits: int) -> np.ndarray:
    x = rng.integers(0, 1 << ring_bits, size=shape, dtype=np.uint64)
    x.flat[0] = 0  # the extremes
    x.flat[-1] = (1 << ring_bits) - 1
    return x


def random_weight(rng: np.random.Generator, shape: tuple[int, ...], bits: int = 8) -> np.ndarray:
    w = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=shape, dtype=np.int64)
    w.flat[0] = -(1 << (bits - 1))
    w.flat[-1] = (1 << (bits - 1)) - 1
    return w


def check_conv(
    rng: np.random.Generator, c: int, h: int, o: int, k: int, s: int, p: int, g: int, ring_bits: int
) -> dict:
    x = random_share(rng, (c, h, h), ring_bits)
    w = random_weight(rng, (o, c // g, k, k))
    out, mask, stats = he.secure_conv2d(x, w, stride=s, padding=p, groups=g, ring_bits=ring_bits)
    expect = conv2d_mod(x, w, s, p, g, ring_bits)
    assert out.shape == expect.shape == mask.shape
    assert out.dtype == mask.dtype == np.uint64
    assert np.array_equal((out + mask) & np.uint64((1 << ring_bits) - 1), expect)
    assert int(out.max(initial=0)) < (1 << ring_bits) and int(mask.max(initial=0)) < (1 << ring_bits)
    return stats


@pytest.mark.parametrize("k", range(1, 8))
@pytest.mark.parametrize("s", [1, 2])
def test_conv_kernel_sizes_and_strides(k: int, s: int) -> None:
    rng = np.random.default_rng(100 * k + s)
    ring = RINGS[(k + s) % 3]
    check_conv(rng, c=3, h=9 + k, o=4, k=k, s=s, p=k // 2, g=1, ring_bits=ring)


@pytest.mark.parametrize("ring_bits", RINGS)
@pytest.mark.parametrize(
    ("c", "h", "o", "k", "s", "p", "g"),
    [
        (8, 8, 8, 3, 1, 1, 8),  # depthwise 3x3
        (8, 9, 8, 3, 2, 1, 8),  # depthwise 3x3, stride 2
        (8, 6, 12, 3, 1, 1, 4),  # grouped
        (6, 7, 4, 2, 1, 0, 2),  # grouped, even kernel, no padding
        (5, 11, 3, 3, 3, 2, 1),  # stride 3
        (4, 5, 6, 5, 1, 3, 1),  # padding wider than half the kernel
        (2, 1, 3, 1, 1, 0, 1),  # 1x1 image
    ],
)
def test_conv_variants(c: int, h: int, o: int, k: int, s: int, p: int, g: int, ring_bits: int) -> None:
    check_conv(np.random.default_rng(c * h + o + ring_bits), c, h, o, k, s, p, g, ring_bits)


def test_tiled_layout_large_image() -> None:
    # 96x96 does not fit one polynomial: the planner tiles the output.
    rng = np.random.default_rng(7)
    assert he.layout((1, 96, 96), (2, 1, 3, 3), 1, 1)["num_tiles"] > 1
    check_conv(rng, c=1, h=96, o=2, k=3, s=1, p=1, g=1, ring_bits=37)


@pytest.mark.parametrize("ring_bits", RINGS)
@pytest.mark.parametrize(("k", "m"), [(512, 100), (1, 1), (9000, 3), (256, 10)])
def test_matmul(k: int, m: int, ring_bits: int) -> None:
    rng = np.random.default_rng(k + m + ring_bits)
    x = random_share(rng, (k,), ring_bits)
    w = random_weight(rng, (m, k))
    out, mask, stats = he.secure_matmul(x, w, ring_bits=ring_bits)
    expect = np.einsum("mk,k->m", w.astype(np.uint64), x, dtype=np.uint64) & np.uint64((1 << ring_bits) - 1)
    assert np.array_equal((out + mask) & np.uint64((1 << ring_bits) - 1), expect)
    assert stats["bytes_client_to_server"] > 0 and stats["bytes_server_to_client"] > 0


def _resnet_cases() -> list[tuple[float, float, dict[str, int], int]]:
    full = os.environ.get("PIE_HE_FULL") == "1"
    cases = []
    seen: list[dict[str, int]] = []
    for alpha in (1.0, 0.5):
        for rho in (1.0, 0.5):
            for shape in resnet18_linear_shapes(alpha, rho):
                if shape in seen:
                    continue
                seen.append(shape)
                rings = RINGS if full else (RINGS[len(seen) % 3],)
                cases += [(alpha, rho, shape, r) for r in rings]
    return cases


@pytest.mark.slow
@pytest.mark.parametrize(
    ("alpha", "rho", "shape", "ring_bits"),
    _resnet_cases(),
    ids=lambda v: str(v) if not isinstance(v, dict) else "c{c}h{h}o{o}k{k}s{s}".format(**v),
)
def test_resnet18_layer_shapes(alpha: float, rho: float, shape: dict[str, int], ring_bits: int) -> None:
    """Every distinct linear-layer shape of CIFAR ResNet-18 at alpha, rho in
    {1, 0.5} (rings cycle through 37/48/59; PIE_HE_FULL=1 runs all three)."""
    rng = np.random.default_rng(shape["c"] * 7 + shape["h"] + shape["o"] + ring_bits)
    check_conv(rng, shape["c"], shape["h"], shape["o"], shape["k"], shape["s"], shape["p"], 1, ring_bits)


def test_stats_report_costs() -> None:
    stats = check_conv(np.random.default_rng(3), c=4, h=8, o=4, k=3, s=1, p=1, g=1, ring_bits=37)
    for key in ("client_encrypt_s", "client_decrypt_s", "server_compute_s"):
        assert stats[key] >= 0
    # Client -> server: the seeded public key plus half-size ciphertexts (c0 + seed, 3 limbs);
    # server -> client: one reply of c1 (1 limb at l=37) plus the output coefficients of c0.
    n = 8192
    assert stats["bytes_client_to_server"] < 2 * n * 8 * 4 + stats["num_input_ciphertexts"] * (3 * n * 8 + 1024)
    assert stats["bytes_server_to_client"] <= stats["num_replies"] * n * 8 + 4 * 8 * 8 * 8 + 64


def test_session_over_a_channel_runs_several_steps_under_one_key() -> None:
    """The session API (one key pair, several steps) over the in-memory
    channel: a conv, its stride-2 1x1 shortcut and an FC, each exact."""
    import threading

    from pie import channel

    ring = 41
    rng = np.random.default_rng(11)
    x1 = random_share(rng, (8, 8, 8), ring)
    x2 = random_share(rng, (16,), ring)
    w_conv = random_weight(rng, (6, 8, 3, 3))
    w_short = random_weight(rng, (6, 8, 1, 1))
    w_fc = random_weight(rng, (5, 16))
    client_end, server_end = channel.memory_pair()
    server_out: list[np.ndarray] = []

    def serve() -> None:
        server = he.LinearServer(server_end, ring_bits=ring)
        server_out.append(server.conv2d((8, 8, 8), w_conv, padding=1))
        server_out.append(server.conv2d((8, 8, 8), w_short, stride=2))
        server_out.append(server.matmul(w_fc))

    thread = threading.Thread(target=serve)
    thread.start()
    client = he.LinearClient(client_end, ring_bits=ring)
    outs = [
        client.conv2d(x1, (6, 8, 3, 3), padding=1),
        client.conv2d(x1, (6, 8, 1, 1), stride=2),
        client.matmul(x2, 5),
    ]
    thread.join(timeout=120)
    assert not thread.is_alive() and len(server_out) == 3
    mask = np.uint64((1 << ring) - 1)
    expect = [
        conv2d_mod(x1, w_conv, 1, 1, 1, ring),
        conv2d_mod(x1, w_short, 2, 0, 1, ring),
        np.einsum("mk,k->m", w_fc.astype(np.uint64), x2, dtype=np.uint64) & mask,
    ]
    for c, s, e in zip(outs, server_out, expect):
        assert np.array_equal((c + s) & mask, e)
    assert client.timings["decrypt_s"] >= 0


@pytest.mark.parametrize(
    ("c", "h", "w", "o", "kh", "kw", "s", "p", "g", "ring_bits"),
    [(5, 13, 7, 4, 3, 1, 2, 1, 1, 48), (6, 5, 17, 6, 1, 5, 1, 2, 3, 59), (64, 32, 32, 64, 3, 3, 1, 1, 64, 37)],
)
def test_rectangular_inputs_and_kernels(
    c: int, h: int, w: int, o: int, kh: int, kw: int, s: int, p: int, g: int, ring_bits: int
) -> None:
    rng = np.random.default_rng(h * w + kh)
    x = random_share(rng, (c, h, w), ring_bits)
    wt = random_weight(rng, (o, c // g, kh, kw))
    out, mask, _ = he.secure_conv2d(x, wt, stride=s, padding=p, groups=g, ring_bits=ring_bits)
    assert np.array_equal((out + mask) & np.uint64((1 << ring_bits) - 1), conv2d_mod(x, wt, s, p, g, ring_bits))
