"""The offline phase in exchanges: fewer round trips than steps, every share
known when it is sent, splitting at the server's memory bound, and the parts
of the garbled and HE protocols refusing to run out of order."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import pie
from pie import gc, he
from pie.models import ResNetConfig, from_config
from pie.plan import ConvTerm, FCTerm, LinearStep, ReluStep, TruncateStep
from pie.protocol import schedule

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def plan() -> pie.Plan:
    # Culled stage 1 (not folded) and bottom thinning: HE chains through the
    # culled stage and the shortcut convolutions, truncations, several garbled shapes.
    torch.manual_seed(3)
    cfg = ResNetConfig(alpha=0.125, blocks=(1, 1, 1, 1), culled=(True, False, False, False),
                       thinned=(False, True), num_classes=10, input_size=16)
    net = from_config(cfg).eval()
    return pie.compile(net, SHAPE, calibration=np.random.default_rng(0).random((8, *SHAPE)), fold_head_weights=0)


def _items(plan: pie.Plan) -> list[tuple[int, int | None]]:
    out: list[tuple[int, int | None]] = []
    for i, s in enumerate(plan.steps):
        if isinstance(s, (ReluStep, TruncateStep)):
            out.append((i, None))
        elif isinstance(s, LinearStep):
            out += [(i, k) for k, term in enumerate(s.terms) if isinstance(term, (ConvTerm, FCTerm))]
    return out


def test_every_item_once_and_every_share_known_when_sent(plan: pie.Plan) -> None:
    exchanges = schedule.offline_exchanges(plan)
    flat = [(it.step, it.term) for ex in exchanges for it in ex]
    assert sorted(flat, key=str) == sorted(_items(plan), key=str)
    assert len(exchanges) < len(flat)  # the point: fewer round trips than pieces of work
    # Replay the client: a share is known from the start (input, garbled
    # outputs) or once every HE term of its step has come back.
    known = {plan.input} | {s.output for s in plan.steps if isinstance(s, (ReluStep, TruncateStep))}
    pending = {i: [k for k, term in enumerate(s.terms) if isinstance(term, (ConvTerm, FCTerm))]
               for i, s in enumerate(plan.steps) if isinstance(s, LinearStep)}

    def settle() -> None:
        for i, s in enumerate(plan.steps):
            if isinstance(s, LinearStep) and not pending[i] and all(t.input in known for t in s.terms):
                known.add(s.output)

    settle()
    for ex in exchanges:
        for it in ex:
            step = plan.steps[it.step]
            needed = step.input if it.term is None else step.terms[it.term].input
            assert needed in known, f"step {it.step} sent before its share is known"
        for it in ex:
            if it.term is not None:
                pending[it.step].remove(it.term)
        settle()
        garbled_first = [it.term is None for it in ex]
        assert garbled_first == sorted(garbled_first, reverse=True)


def test_exchanges_split_at_the_memory_bound(plan: pie.Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(4).random(SHAPE)
    _, batched = pie.infer(plan, x)
    exchanges = len(schedule.offline_exchanges(plan))
    monkeypatch.setattr(schedule, "OFFLINE_EXCHANGE_BYTES", 1)
    assert all(len(ex) == 1 for ex in schedule.offline_exchanges(plan))
    logits, single = pie.infer(plan, x)
    assert np.array_equal(logits, plan.run_reference(x))
    assert single.offline_bytes == batched.offline_bytes
    # One round trip per item instead of one per exchange.
    assert single.offline_round_trips - batched.offline_round_trips == len(_items(plan)) - exchanges


def _pair() -> tuple[pie.Channel, pie.Channel]:
    return pie.memory_pair()


def test_garbled_parts_refuse_to_run_out_of_order() -> None:
    a, b = _pair()
    server = gc.ReluServer(a, 8, 8, 0)
    client = gc.ReluClient(b, 8, 8, 0)
    m = server.announce(4)
    with pytest.raises(ValueError, match="OT first"):
        server.garble(m)
    header = client.receive_header(4)
    with pytest.raises(ValueError, match="OT first"):
        client.receive_tables(header)
    with pytest.raises(ValueError, match="tables"):
        client.evaluate(header)
    xs = np.arange(4, dtype=np.uint64)
    with pytest.raises(ValueError, match="not garbled"):
        server.online(m, xs)
    worker = threading.Thread(target=server.receive_ot, args=(m,))
    worker.start()
    client.request(header, xs, xs)
    worker.join()
    with pytest.raises(ValueError, match="already ran"):
        server.receive_ot(m)
    with pytest.raises(ValueError, match="already ran"):
        client.request(header, xs, xs)
    with pytest.raises(ValueError, match="client_share"):
        client.request(header, xs[:3], xs[:3])


def test_he_parts_pair_up_in_order() -> None:
    a, b = _pair()
    results: dict[str, object] = {}
    rng = np.random.default_rng(5)
    w1 = rng.integers(-8, 8, (2, 1, 3, 3))
    w2 = rng.integers(-8, 8, (3, 4))
    x1 = rng.integers(0, 1 << 20, (1, 4, 4), dtype=np.uint64)
    x2 = rng.integers(0, 1 << 20, 4, dtype=np.uint64)

    def serve() -> None:
        srv = he.LinearServer(a, 37)
        first = srv.receive_conv2d((1, 4, 4), w1.shape, padding=1)
        second = srv.receive_matmul(w2.shape)
        results["s1"] = srv.reply(first, w1)
        results["s2"] = srv.reply(second, w2)

    worker = threading.Thread(target=serve)
    worker.start()
    cli = he.LinearClient(b, 37)
    cli.send_conv2d(x1, w1.shape, padding=1)
    cli.send_matmul(x2, 3)
    y1, y2 = cli.receive(), cli.receive()
    worker.join()
    with pytest.raises(RuntimeError, match="no step"):
        cli.receive()
    from pie.plan.reference import conv2d_ring, fc_ring, mask, prepare_weight

    want1 = conv2d_ring(x1[None], prepare_weight(w1), (1, 1), (1, 1), 1, 37)[0].reshape(-1)
    want2 = fc_ring(x2[None], prepare_weight(w2), 37)[0]
    assert np.array_equal(mask(y1 + results["s1"], 37), want1)
    assert np.array_equal(mask(y2 + results["s2"], 37), want2)
