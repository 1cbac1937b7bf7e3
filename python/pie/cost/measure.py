"""Measuring a machine's :class:`~pie.cost.Profile`: micro-benchmarks of the engine's own classes and their fits.

Garbled batches, HE layers, the server's exact ring arithmetic and the
channels are timed with the two parties as threads over an in-memory channel
(as :func:`pie.infer` runs them); the coefficients are non-negative
least-squares fits on the median of repeated runs (the time model they feed
is described in :mod:`pie.cost.predict`).
"""

from __future__ import annotations

import functools
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import gc, he
from ..channel import Channel, TcpListener, memory_pair, tcp_connect
from .profile import Profile
from .wire_sizes import and_gates, other_gates

__all__ = ["measure_profile", "measure_speed_index"]

# Layer shapes the HE and online-linear fits sample: (C, H, O, k, stride,
# padding), ResNet-18 family shapes from 32x32 down to 2x2, widths 16-256.
_CONV_SAMPLES = [
    (3, 32, 32, 3, 2, 1),
    (16, 32, 16, 3, 1, 1),
    (32, 16, 32, 3, 1, 1),
    (32, 16, 64, 3, 2, 1),
    (32, 16, 64, 1, 2, 0),
    (64, 8, 64, 3, 1, 1),
    (64, 8, 128, 3, 2, 1),
    (128, 4, 128, 3, 1, 1),
    (256, 2, 256, 3, 1, 1),
    (32, 32, 32, 3, 1, 1),
    (64, 16, 64, 3, 1, 1),
]
# The server's online arithmetic also samples full-width ResNet-18 layers (its
# per-MAC cost only shows on layers of millions of MACs), a full-resolution stem
# (few taps per output: its per-output cost shows), a wide classifier and
# wide layers at 2x2.
_LINEAR_ONLY_SAMPLES = [
    ("conv", 3, 32, 64, 3, 1, 1),
    ("fc", 8192, 100),
    ("conv", 64, 32, 64, 3, 1, 1),
    ("conv", 128, 8, 128, 3, 1, 1),
    ("conv", 128, 16, 128, 3, 1, 1),
    ("conv", 256, 4, 256, 3, 1, 1),
    ("conv", 512, 4, 512, 3, 1, 1),
    ("conv", 512, 2, 512, 3, 1, 1),
]
# The last: a dense layer of the input, as a folded culled stage 1 is (DRD_C100_12K).
_FC_SAMPLES = [(256, 100), (512, 100), (3072, 4096)]
_SAMPLE_LAYERS: list[tuple[Any, ...]] = [("conv", *c) for c in _CONV_SAMPLES] + [("fc", *f) for f in _FC_SAMPLES]
# Garbled-step samples: (l_in, l_out, shift, truncate) -- ReLUs and truncations
# at the rings compiled DeepReDuce plans use.
_GC_SAMPLES = [(37, 37, 12, False), (58, 57, 16, False), (30, 58, 15, False), (24, 24, 8, False),
               (59, 31, 43, False), (57, 43, 41, True), (46, 20, 30, True), (40, 58, 20, True)]


def measure_profile(seconds: float = 60.0, threads: int = 0,
                    progress: Callable[[str], None] | None = None) -> Profile:
    """Measure a :class:`Profile` of this machine with the engine's own classes.

    Runs, each over an in-memory channel with the two parties as threads (as
    :func:`pie.infer` does): garbled ReLU and truncation batches of several
    shapes and sizes (offline and online timed on the client, like the
    engine's report), HE conv and fc layers of ResNet-18-family shapes at two
    rings, the server's exact online ring arithmetic of the same layers, and
    channel bandwidth and round-trip time in memory and over loopback TCP.
    Coefficients are non-negative least-squares fits (module docstring).

    Args:
        seconds: rough time budget; sizes and repetitions scale with it
            (the default takes about a minute on two cores).
        threads: worker threads for garbling and evaluation (0: all cores).
        progress: called with a short description before each part.

    Returns:
        The profile; :meth:`Profile.save` writes it.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    say = progress or (lambda _msg: None)
    scale = max(0.25, min(4.0, seconds / 60.0))
    reps = max(1, round(3 * scale))
    nthreads = gc.worker_threads(threads)
    say("speed index")
    speed = [measure_speed_index(threads, repeat=2)]
    say("channels")
    bandwidth, rtt = _measure_transports(int(16 * scale) << 20)
    say("garbled circuits")
    gc_fit = _measure_gc(threads, [int(4096 * scale), int(32768 * scale)], reps)
    # A short budget samples every other conv shape, but every fc: the fc
    # products' own coefficient needs the large dense layer.
    layers = _SAMPLE_LAYERS if scale >= 0.5 else (
        [("conv", *c) for c in _CONV_SAMPLES[::2]] + [("fc", *f) for f in _FC_SAMPLES])
    say("HE linear layers")
    he_fit = _measure_he(layers, reps)
    say("online linear arithmetic")
    lin_fit = _measure_linear(layers + _LINEAR_ONLY_SAMPLES, max(3, reps + 1), nthreads)
    say("speed index")
    speed.append(measure_speed_index(threads, repeat=2))
    import torch

    machine = {
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "seal": he.seal_version(),
        "aes_backend": _aes_backend(),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
    }
    return Profile(threads=nthreads, bandwidth=bandwidth, rtt_s=rtt, machine=machine,
                   speed_index_s=float(np.mean(speed)), **gc_fit, **he_fit, **lin_fit)


def measure_speed_index(threads: int = 0, repeat: int = 3) -> float:
    """Median seconds of a fixed reference workload: garbling and evaluating
    8192 ReLUs at l = 37, one HE convolution (32 channels, 16x16, both parties)
    and one exact ring convolution -- a quick gauge (about a second) of how
    fast the machine runs right now, for :meth:`Profile.scaled`."""
    from ..plan.reference import conv2d_ring

    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    rng = np.random.default_rng(3)
    relu = gc.relu_circuit(37, 37, 12)
    x = rng.integers(0, 1 << 37, (32, 16, 16), dtype=np.uint64)
    w = rng.integers(-(1 << 11), 1 << 11, (32, 32, 3, 3), dtype=np.int64)
    times = []
    for _ in range(repeat + 1):  # the first, untimed, warms caches and lazy set-up
        t0 = time.perf_counter()
        gc.kernel_seconds(relu, 8192, threads, 1, "garble")
        gc.kernel_seconds(relu, 8192, threads, 1, "evaluate")
        he.secure_conv2d(x, w, stride=1, padding=1, ring_bits=37)
        conv2d_ring(x[None], w, (1, 1), (1, 1), 1, 37)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _nnls(rows: Sequence[Sequence[float]], times: Sequence[float]) -> list[float]:
    """Non-negative least squares over the median time of each distinct
    feature row (repetitions damp the noise of a busy machine), each weighted
    by 1/time: the noise of a shared machine is multiplicative, so every
    sample's relative error counts alike."""
    from scipy.optimize import nnls

    groups: dict[tuple[float, ...], list[float]] = {}
    for row, y_ in zip(rows, times):
        groups.setdefault(tuple(float(v) for v in row), []).append(float(y_))
    a = np.asarray(list(groups), dtype=np.float64)
    y = np.asarray([np.median(v) for v in groups.values()], dtype=np.float64)
    w = 1.0 / np.maximum(y, 1e-6)
    col = np.maximum(np.abs(a).max(axis=0), 1e-30)  # column scaling for conditioning
    coef, _ = nnls(a * w[:, None] / col, y * w)
    return [float(c) for c in coef / col]


def _run_pair(server: Callable[[], None], client: Callable[[], None]) -> None:
    """Run the server side in a thread and the client side here; re-raise either's error."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            server()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    worker = threading.Thread(target=guarded, name="pie-profile-server")
    worker.start()
    try:
        client()
    finally:
        worker.join()
    if errors:
        raise errors[0]


def _measure_gc(threads: int, sizes: list[int], reps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    off_rows, off_t, on_rows, on_t, base = [], [], [], [], []
    for l_in, l_out, shift, trunc in _GC_SAMPLES:
        gates = and_gates(l_in, l_out, shift, trunc)
        other = other_gates(l_in, l_out, shift, trunc)
        timings = _gc_timings((l_in, l_out, shift, trunc), [16] + [n for n in sizes for _ in range(reps)],
                              threads, rng)
        base.append(timings[0][1])  # the first batch runs the base OTs
        for n, off, on in timings[1:]:
            off_rows.append([n * gates, n * (l_in + l_out), 1.0])
            off_t.append(off)
            on_rows.append([n * gates, n * other, n * l_in, 1.0])
            on_t.append(on)
    per_and, per_ot, per_step = _nnls(off_rows, off_t)
    on_and, on_gate, on_label, on_step = _nnls(on_rows, on_t)
    return {
        "gc_offline_per_and_s": per_and,
        "gc_offline_per_ot_s": per_ot,
        "gc_offline_per_step_s": per_step,
        "gc_online_per_and_s": on_and,
        "gc_online_per_gate_s": on_gate,
        "gc_online_per_label_s": on_label,
        "gc_online_per_step_s": on_step,
        "base_ot_s": float(np.median(base)),
    }


def _gc_timings(shape: tuple[int, int, int, bool], runs: list[int], threads: int,
                rng: np.random.Generator) -> list[tuple[int, float, float]]:
    """(n, offline seconds, online seconds) on the client for batches of ``runs``
    elements, one session (its first batch pays the base OTs).

    As in the engine, every batch's offline phase runs before any online one,
    so the online phase reads material that has left the caches (timing each
    batch's online right after its offline would find its tables in cache and
    under-predict large steps)."""
    l_in, l_out, shift, trunc = shape
    a, b = memory_pair(256 << 20)
    server = gc.ReluServer(a, l_in, l_out, shift, threads, truncate=trunc)
    client = gc.ReluClient(b, l_in, l_out, shift, threads, truncate=trunc)
    xs = [rng.integers(0, 1 << l_in, n, dtype=np.uint64) for n in runs]
    xc = [rng.integers(0, 1 << l_in, n, dtype=np.uint64) for n in runs]
    r = [rng.integers(0, 1 << l_out, n, dtype=np.uint64) for n in runs]
    offline: list[float] = []
    online: list[float] = []

    def serve() -> None:
        material = [server.offline(n) for n in runs]
        for m, x in zip(material, xs):
            server.online(m, x)

    def evaluate() -> None:
        material = []
        for x, m in zip(xc, r):
            t0 = time.perf_counter()
            material.append(client.offline(x, m))
            offline.append(time.perf_counter() - t0)
        for m in material:
            t0 = time.perf_counter()
            client.online(m)
            online.append(time.perf_counter() - t0)

    _run_pair(serve, evaluate)
    return list(zip(runs, offline, online))


def _measure_he(layers: list[tuple[Any, ...]], reps: int) -> dict[str, float]:
    """Fits each part of an HE term separately (the parties time their own
    parts), then the rest of the client's wall time (transfers, the server's
    weight encoding where it outlasts the encryption, Python)."""
    rng = np.random.default_rng(1)
    enc: tuple[list[list[float]], list[float]] = ([], [])
    srv: tuple[list[list[float]], list[float]] = ([], [])
    dec: tuple[list[list[float]], list[float]] = ([], [])
    rest: tuple[list[list[float]], list[float]] = ([], [])
    sessions = []
    for bits in (37, 58):
        limbs = he.he_parameters(bits)["final_limbs"]
        jobs = [layer for layer in layers for _ in range(reps)]
        session, timings = _he_timings(bits, jobs, rng)
        sessions.append(session)
        for layer, (wall, encrypt, compute, decrypt) in zip(jobs, timings):
            lay = _sample_layout(layer)
            n_in, n_prod, n_out = lay["num_inputs"], lay["num_products"], lay["num_outputs"]
            conv_prod, fc_prod = (n_prod, 0) if layer[0] == "conv" else (0, n_prod)
            for (rows, ys), row, y in ((enc, [n_in], encrypt),
                                       (srv, [n_in, conv_prod, fc_prod, n_out], compute),
                                       (dec, [n_out * limbs], decrypt),
                                       (rest, [n_in, conv_prod, fc_prod, 1.0], wall - encrypt - compute - decrypt)):
                rows.append(row)
                ys.append(max(y, 0.0))
    (a_in,) = _nnls(*enc)
    b_in, b_prod, b_fc, b_out = _nnls(*srv)
    (c_limb,) = _nnls(*dec)
    r_in, r_prod, r_fc, r_term = _nnls(*rest)
    return {
        "he_per_input_s": a_in + b_in + r_in,
        "he_per_product_s": b_prod + r_prod,
        "he_per_fc_product_s": b_fc + r_fc,
        "he_per_reply_s": b_out,
        "he_per_reply_limb_s": c_limb,
        "he_per_term_s": r_term,
        "he_session_s": float(np.median(sessions)),
    }


def _he_timings(bits: int, jobs: list[tuple[Any, ...]],
                rng: np.random.Generator) -> tuple[float, list[tuple[float, float, float, float]]]:
    """The client's key set-up seconds (key generation, sending the public
    key: the server's side of it overlaps), and per HE layer of ``jobs`` (one session at ring
    ``bits``): the client's wall time, its encryption, the server's compute
    and the client's decryption."""
    a, b = memory_pair(256 << 20)
    weights = {layer: _random_weight(layer, rng) for layer in set(jobs)}
    shares = {layer: rng.integers(0, 1 << bits, _in_shape(layer), dtype=np.uint64) for layer in set(jobs)}
    keygen: list[float] = []
    compute: list[float] = []
    client_side: list[tuple[float, float, float]] = []

    def serve() -> None:
        srv = he.LinearServer(a, bits)
        for layer in jobs:
            if layer[0] == "conv":
                _, c, h, _, _, s, p = layer
                srv.conv2d((c, h, h), weights[layer], stride=s, padding=p)
            else:
                srv.matmul(weights[layer])
            compute.append(srv.timings["compute_s"])

    def run_client() -> None:
        start = time.perf_counter()
        cli = he.LinearClient(b, bits)
        keygen.append(time.perf_counter() - start)
        for layer in jobs:
            t0 = time.perf_counter()
            if layer[0] == "conv":
                _, c, _, o, k, s, p = layer
                cli.conv2d(shares[layer], (o, c, k, k), stride=s, padding=p)
            else:
                cli.matmul(shares[layer], layer[2])
            client_side.append((time.perf_counter() - t0, cli.timings["encrypt_s"], cli.timings["decrypt_s"]))

    _run_pair(serve, run_client)
    return keygen[0], [(w, e, c, d) for (w, e, d), c in zip(client_side, compute)]


def _measure_linear(layers: list[tuple[Any, ...]], reps: int, threads: int) -> dict[str, float]:
    """Fits of the server's online ring arithmetic: the native kernel on every
    sampled layer it computes, and the float64-limb path on every layer above
    the one-thread size (what runs there on a CPU without AVX-512)."""
    from ..plan.reference import (SMALL_PRODUCT_MACS, conv2d_limbs, conv2d_ring, fc_limbs, fc_ring,
                                  native_threads, native_work, prepare_weight)

    rng = np.random.default_rng(2)
    limb_rows: list[list[float]] = []
    limb_times: list[float] = []
    native_rows: list[list[float]] = []
    native_times: list[float] = []

    def passes(products: list[Callable[[], np.ndarray]]) -> list[list[float]]:
        # One product after the other, as a plan's steps run: each reads its
        # weights and input from memory rather than from a cache that timing it
        # twice in a row would have warmed (wide layers on small images stream
        # megabytes of taps).
        runs: list[list[float]] = [[] for _ in products]
        for _ in range(reps):
            for product, times in zip(products, runs):
                t0 = time.perf_counter()
                product()
                times.append(time.perf_counter() - t0)
        return runs

    def run() -> None:
        # (bits, weight, prepared weight, output, product on the dispatched path, on the limb path)
        jobs = []
        for bits in (37, 58):
            for layer in layers:
                w = _random_weight(layer, rng)
                pw = prepare_weight(w)  # as the server does, once per weight
                x = rng.integers(0, 1 << bits, _in_shape(layer), dtype=np.uint64)[None]
                if layer[0] == "conv":
                    _, _, _, _, _, s, p = layer
                    dispatched = functools.partial(conv2d_ring, x, pw, (s, s), (p, p), 1, bits)
                    limb_path = functools.partial(conv2d_limbs, x, pw, (s, s), (p, p), 1, bits)
                else:
                    dispatched = functools.partial(fc_ring, x, pw, bits)
                    limb_path = functools.partial(fc_limbs, x.reshape(1, -1), pw, bits)
                jobs.append((bits, w, pw, x, dispatched(), dispatched, limb_path))
        native_runs = passes([job[5] for job in jobs])
        macs = [y.size * (w.size // w.shape[0]) for _, w, _, _, y, _, _ in jobs]
        large = [i for i, m in enumerate(macs) if m > SMALL_PRODUCT_MACS]
        limb_runs = dict(zip(large, passes([jobs[i][6] for i in large])))
        for i, (bits, w, pw, x, y, _, _) in enumerate(jobs):
            team = native_threads(macs[i])
            if team is not None:  # per thread of the team it splits across, as predict counts it
                share = 1.0 if team == 1 else 1.0 / threads
                o = w.shape[0]
                vector_macs, outputs = native_work(1, 1, o, y.size // o, w.size // o)
                native_rows.extend([[vector_macs * share, outputs * share, w.size * share, 1.0,
                                     float(team != 1)]] * reps)
                native_times.extend(native_runs[i])  # _nnls takes the median of each layer's runs
            if i in limb_runs:
                runs = native_runs[i] if team is None else limb_runs[i]
                limbs = max(1, -(-(bits - 1) // pw.limb_bits))
                limb_rows.extend([[limbs * macs[i], limbs * (x.size + y.size), limbs * w.size, 1.0]] * reps)
                limb_times.extend(runs)

    # Timed on a thread of its own, as a server session computes: torch's
    # OpenMP team on a thread other than the main one is a second team, and
    # with more OpenMP threads than cores its workers sleep between regions
    # instead of spinning, which makes small convolutions up to ~1.7x slower
    # on two cores than the same calls on the main thread.
    _run_pair(run, lambda: None)
    per_mac, per_element, per_weight, per_term = _nnls(limb_rows, limb_times)
    native_mac, native_element, native_weight, native_term, native_team = _nnls(native_rows, native_times)
    return {"linear_per_limb_mac_s": per_mac, "linear_per_limb_element_s": per_element,
            "linear_per_limb_weight_s": per_weight, "linear_per_term_s": per_term,
            "linear_native_per_mac_s": native_mac, "linear_native_per_element_s": native_element,
            "linear_native_per_weight_s": native_weight, "linear_native_per_term_s": native_term,
            "linear_native_team_s": native_team}


def _random_weight(layer: tuple[Any, ...], rng: np.random.Generator) -> np.ndarray:
    """Weights of the compiler's default precision (12 significant bits)."""
    shape = (layer[3], layer[1], layer[4], layer[4]) if layer[0] == "conv" else (layer[2], layer[1])
    return rng.integers(-(1 << 11), 1 << 11, shape, dtype=np.int64)


def _in_shape(layer: tuple[Any, ...]) -> tuple[int, ...]:
    return (layer[1], layer[2], layer[2]) if layer[0] == "conv" else (layer[1],)


def _sample_layout(layer: tuple[Any, ...]) -> dict[str, int]:
    if layer[0] == "conv":
        _, c, h, o, k, s, p = layer
        return he.layout((c, h, h), (o, c, k, k), s, p)
    _, k, m = layer
    return he.layout((k, 1, 1), (m, k, 1, 1))


def _transfer_seconds(a: Channel, b: Channel, size: int) -> float:
    payload = bytes(size)
    sink = bytearray(size)
    reader = threading.Thread(target=b.recv_into, args=(sink,))
    t0 = time.perf_counter()
    reader.start()
    a.send(payload)
    a.flush()
    reader.join()
    return time.perf_counter() - t0


def _ping_seconds(a: Channel, b: Channel, count: int) -> float:
    def echo() -> None:
        for _ in range(count):
            b.send(b.recv(1))
            b.flush()

    worker = threading.Thread(target=echo)
    worker.start()
    t0 = time.perf_counter()
    for _ in range(count):
        a.send(b"x")
        a.flush()
        a.recv(1)
    elapsed = time.perf_counter() - t0
    worker.join()
    return elapsed / count


def _measure_transports(size: int) -> tuple[dict[str, float], dict[str, float]]:
    bandwidth, rtt = {}, {}
    for name in ("memory", "tcp"):
        if name == "memory":
            a, b = memory_pair(2 * size)
        else:
            with TcpListener("127.0.0.1", 0) as listener:
                a = tcp_connect("127.0.0.1", listener.port)
                b = listener.accept()
        try:
            _transfer_seconds(a, b, 1 << 20)  # warm-up
            bandwidth[name] = size / min(_transfer_seconds(a, b, size) for _ in range(3))
            rtt[name] = min(_ping_seconds(a, b, 200) for _ in range(3))
        finally:
            a.close()
            b.close()
    return bandwidth, rtt


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _aes_backend() -> str:
    from ..crypto import default_aes_backend

    return str(default_aes_backend())
