"""Hash tweaks as the AND gates actually feed them to the hash.

The native test-only probe (``gc_tweak_probe_start/stop``) records every
tweak the garbling and evaluation kernels pass to the hash, on both AES
backends (the AES-NI kernels record their tweak registers). Half-gates needs
each tweak used for exactly one gate half under one Delta: the garbler hashes
both labels of the half with it (two records), the evaluator one (one record).
A planted repetition (one batch garbled twice from the same counter, as a
reset counter would) must be flagged by the same detector.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from pie import _core as core
from pie import crypto, gc, memory_pair

Records = tuple[np.ndarray, np.ndarray, np.ndarray]


def probe(fn) -> Records:  # type: ignore[no-untyped-def]
    core.gc_tweak_probe_start()
    try:
        fn()
    finally:
        recs = core.gc_tweak_probe_stop()
    return recs


def repeated_tweaks(recs: Records) -> int:
    """Tweaks fed more often than one gate half allows: a garbler tweak more
    than twice, an evaluator tweak more than once."""
    lo, hi, garbler = recs
    bad = 0
    for role, limit in ((True, 2), (False, 1)):
        sel = garbler == role
        counts = Counter(zip(hi[sel].tolist(), lo[sel].tolist(), strict=True))
        bad += sum(1 for c in counts.values() if c > limit)
    return bad


def tweak_set(recs: Records, garbler: bool) -> set[tuple[int, int]]:
    lo, hi, g = recs
    sel = g == garbler
    return set(zip(hi[sel].tolist(), lo[sel].tolist(), strict=True))


@pytest.fixture(scope="module")
def circuit() -> gc.Circuit:
    return gc.relu_circuit(12, 10, 2)


@pytest.mark.parametrize("backend", crypto.aes_backends())
def test_kernels_feed_the_tweak_range_they_were_given(circuit: gc.Circuit, backend: str) -> None:
    n, base, prefix = 5, 1000, 0x1234_5678_9ABC_DEF0
    g: dict[str, bytes] = {}
    recs = probe(lambda: g.update(gc.garble(circuit, n, base, backend=backend, tweak_prefix=prefix)))
    span = 2 * circuit.num_and * n
    assert len(recs[0]) == 2 * span and recs[2].all()
    assert set(np.unique(recs[1]).tolist()) == {prefix}
    assert Counter(recs[0].tolist()) == {base + k: 2 for k in range(span)}
    labels = g["input_zero"]  # any labels evaluate; the tweaks do not depend on them
    ev = probe(lambda: gc.evaluate_garbled(circuit, n, base, labels, g["tables"], backend=backend,
                                           tweak_prefix=prefix))
    assert not ev[2].any() and Counter(ev[0].tolist()) == {base + k: 1 for k in range(span)}
    assert repeated_tweaks(recs) == 0 and repeated_tweaks(ev) == 0
    with pytest.raises(ValueError, match="tweak prefix"):
        gc.garble(circuit, 1, 0, backend=backend, tweak_prefix=1)  # the OT domain


@pytest.mark.parametrize("backend", crypto.aes_backends())
def test_negative_control_a_repeated_tweak_range_is_flagged(circuit: gc.Circuit, backend: str) -> None:
    """Plant the fault a reset counter would cause: two batches garbled under
    one Delta from the same tweak base. The detector must flag it."""
    delta = bytes([crypto.secure_random(1)[0] | 1]) + crypto.secure_random(15)

    def twice() -> None:
        for _ in range(2):
            gc.garble(circuit, 3, 0, delta=delta, backend=backend, tweak_prefix=2)

    assert repeated_tweaks(probe(twice)) == 2 * circuit.num_and * 3


def relu_session(sizes: list[int]) -> tuple[Records, int]:
    """A real ReLU session (two worker threads, small blocks, several
    batches) under the probe; returns the records and the server's prefix."""
    a, b = memory_pair()
    server = gc.ReluServer(a, 20, 20, 0, 2, 8)
    client = gc.ReluClient(b, 20, 20, 0, 2, 8)
    rng = np.random.default_rng(1)
    shares = [rng.integers(0, 1 << 20, size=(3, n), dtype=np.uint64) for n in sizes]
    errors: list[BaseException] = []

    def client_side() -> None:
        try:
            for s in shares:
                client.online(client.offline(s[1], s[2]))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    def both() -> None:
        t = threading.Thread(target=client_side)
        t.start()
        for s in shares:
            server.online(server.offline(s.shape[1]), s[0])
        t.join()

    recs = probe(both)
    assert not errors
    return recs, server.tweak_prefix


def test_a_session_never_repeats_a_tweak_and_sessions_do_not_share_one() -> None:
    sizes = [50, 1, 33]
    recs, prefix = relu_session(sizes)
    num_and = gc.relu_circuit(20, 20, 0).num_and
    assert repeated_tweaks(recs) == 0
    assert recs[2].sum() == 4 * num_and * sum(sizes)  # every garbled AND half, from both threads
    garbled = tweak_set(recs, True)
    assert garbled == tweak_set(recs, False)  # the evaluator hashes with the garbler's tweaks
    assert prefix & 1 == 0 and {hi for hi, _ in garbled} == {prefix}
    # A second session draws a fresh prefix, so its tweaks differ from the first's.
    recs2, prefix2 = relu_session(sizes)
    assert prefix2 != prefix and prefix2 & 1 == 0
    assert not garbled & tweak_set(recs2, True)
