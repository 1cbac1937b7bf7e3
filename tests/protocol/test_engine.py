"""The two-party engine: secure output equals the Plan's reference, bit for bit."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import pytest
import torch

import pie
from pie.models import ResNetConfig, from_config
from pie.protocol import HandshakeError

SHAPE = (3, 16, 16)
T = TypeVar("T")


def _random_bn(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return net.eval()


@pytest.fixture(scope="module")
def plan() -> pie.Plan:
    # A DeepReDuce-style network: culled stage 1, bottom-thinned, so the Plan
    # has ReLU, truncate and chained (culled) linear steps.
    torch.manual_seed(0)
    cfg = ResNetConfig(alpha=0.125, culled=(True, False, False, False), thinned=(False, True),
                       num_classes=10, input_size=16)
    return pie.compile(_random_bn(from_config(cfg), 1), SHAPE, fold_pointwise_weights=0)


def _serve_in_thread(plan: pie.Plan, channel: pie.Channel) -> tuple[threading.Thread, list[BaseException]]:
    """One server session on ``channel`` in a thread; its exception, if any, lands in the list."""
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            pie.Server(plan).serve(channel)
        except BaseException as exc:  # inspected by the test
            errors.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    return worker, errors


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [np.zeros(SHAPE), np.ones(SHAPE), rng.random(SHAPE)]


def test_composed_shortcuts_are_bit_exact() -> None:
    # Default compile of the same network: projection shortcuts and the
    # classifier composed into the stream's terms, so linear steps read several
    # ReLU outputs (HE and ring terms of several inputs, strides up to 8).
    torch.manual_seed(0)
    cfg = ResNetConfig(alpha=0.125, culled=(True, False, False, False), thinned=(False, True),
                       num_classes=10, input_size=16)
    plan = pie.compile(_random_bn(from_config(cfg), 1), SHAPE)
    relus = {s.output for s in plan.steps if s.kind == "relu"}
    assert plan.policy["composed_pointwise"]
    assert any(sum(t.input in relus for t in s.terms) >= 3 for s in plan.steps if s.kind == "linear")
    for x in _images():
        logits, _ = pie.infer(plan, x)
        assert np.array_equal(logits, plan.run_reference(x))


def test_secure_output_equals_reference_bit_for_bit(plan: pie.Plan) -> None:
    kinds = {s.kind for s in plan.steps}
    assert {"linear", "relu", "truncate", "output"} <= kinds
    for x in _images():
        logits, report = pie.infer(plan, x)
        assert np.array_equal(logits, plan.run_reference(x))
        assert report.relus == sum(plan.tensors[s.output].numel for s in plan.steps if s.kind == "relu")


def test_report_and_culled_stage_costs_no_online_messages(plan: pie.Plan) -> None:
    _, report = pie.infer(plan, _images()[2])
    steps = report.steps
    assert len(steps) == len(plan.steps)
    for key in ("kind", "relus", "offline_bytes", "online_bytes", "offline_seconds",
                "online_seconds", "online_bytes_c2s", "online_bytes_s2c", "online_rounds"):
        assert key in steps[0]
    # Every linear step, the culled stage included, is local to the server online.
    linear = [s for s in steps if s["kind"] == "linear"]
    assert all(s["online_bytes"] == 0 and s["online_rounds"] == 0 for s in linear)
    assert report.input_bytes == 12 + 8 * plan.tensors[plan.input].numel  # frame header + uint64s
    assert all(s["offline_bytes"] > 0 for s in linear)
    # Garbled steps of one round share one round trip: two one-way messages per round.
    rounds = plan.rounds()
    gc_steps = [s for s in steps if s["kind"] in ("relu", "truncate")]
    assert sum(s["online_rounds"] for s in gc_steps) == 2 * len(set(rounds.values()))
    # + the masked input, the output share and the closing FINISH message.
    assert report.online_rounds == 2 * max(rounds.values()) + 3
    relu_elems = sum(plan.tensors[s.output].numel for s in plan.steps if s.kind == "relu")
    assert report.relus == relu_elems
    assert report.online_bytes == sum(s["online_bytes"] for s in steps) + report.input_bytes
    totals = json.loads(report.to_json())["totals"]
    assert totals["online_bytes"] == report.online_bytes > 0
    assert "total" in report.table()


def test_k_queries_over_one_connection_each_bit_exact(plan: pie.Plan) -> None:
    """prepare(k), then k queries on one session: each bit-exact, each set used
    once; a (k+1)-th query finds no set and sends nothing; BYE ends the server."""
    server, client = pie.Server(plan), pie.Client(plan.public())
    s_end, c_end = pie.memory_pair()
    box: dict[str, object] = {}

    def serve() -> None:
        session = server.session(s_end, pool=0)
        session.serve()
        box["queries"], box["left"] = session.queries, session.prepared
        with pytest.raises(RuntimeError, match="ended"):
            session.online()

    worker = threading.Thread(target=serve)
    worker.start()
    session = client.session(c_end)
    assert session.prepared == 0 and session.offer == 0  # pool=0: the server offers nothing
    session.prepare(3)
    assert session.prepared == 3
    xs = _images()
    for k, x in enumerate(xs):
        logits, report = session.online(x)
        assert np.array_equal(logits, plan.run_reference(x)), k
        assert session.prepared == 2 - k and report.batch == 1 and report.offline_bytes > 0
    sent = c_end.bytes_sent
    with pytest.raises(RuntimeError, match="prepared set.*once"):
        session.online(xs[0])
    assert c_end.bytes_sent == sent  # refused before anything was sent
    session.close()
    worker.join(60)
    assert box == {"queries": 3, "left": 0}


def test_batch_of_images_in_the_rounds_of_one(plan: pie.Plan) -> None:
    server, client = pie.Server(plan), pie.Client(plan.public())
    s_end, c_end = pie.memory_pair()
    worker = threading.Thread(target=lambda: server.serve(s_end, pool=0))
    worker.start()
    xs = np.stack(_images())
    with client.session(c_end) as session:
        session.prepare(1)
        one, single = session.online(xs[2])
        with pytest.raises(RuntimeError, match="needs 3 prepared"):
            session.online(xs)
        session.prepare(3)
        logits, batch = session.online(xs)
    worker.join(60)
    assert logits.shape == (3, *plan.output.shape)
    for x, row in zip(xs, logits):
        assert np.array_equal(row, plan.run_reference(x))
    assert np.array_equal(one, logits[2])
    assert batch.batch == 3 and batch.online_rounds == single.online_rounds
    gc_bytes = sum(s["online_bytes"] for s in single.steps if s["kind"] in ("relu", "truncate"))
    gc_batch = sum(s["online_bytes"] for s in batch.steps if s["kind"] in ("relu", "truncate"))
    assert gc_batch == 3 * gc_bytes
    assert batch.input_bytes == 12 + 3 * 8 * plan.tensors[plan.input].numel


def test_refill_prepares_in_the_background(plan: pie.Plan) -> None:
    """The server offers its pool; a refilling client accepts while idle, so a
    query finds its set ready and the pool is topped up again after it."""
    server, client = pie.Server(plan), pie.Client(plan.public())
    s_end, c_end = pie.memory_pair()
    worker = threading.Thread(target=lambda: server.serve(s_end, pool=2))
    worker.start()
    x = _images()[2]
    with client.session(c_end, refill=True) as session:
        for _ in range(2):
            deadline = time.monotonic() + 120
            while session.prepared < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert session.prepared == 2 and session.offer == 0
            logits, _ = session.online(x)
            assert np.array_equal(logits, plan.run_reference(x))
    worker.join(60)
    assert not worker.is_alive()


def test_disconnect_with_prepared_sets_frees_them(plan: pie.Plan) -> None:
    server, client = pie.Server(plan), pie.Client(plan.public())
    s_end, c_end = pie.memory_pair()
    box: dict[str, object] = {}

    def serve() -> None:
        session = server.session(s_end, pool=0)
        try:
            session.serve()
        except pie.PeerClosedError as exc:
            box["error"], box["held"] = exc, session.prepared
        finally:
            session.close()
        box["after"] = session.prepared

    worker = threading.Thread(target=serve)
    worker.start()
    session = client.session(c_end)
    session.prepare(3)
    x = _images()[1]
    assert np.array_equal(session.online(x)[0], plan.run_reference(x))
    held = list(session._ready)  # the client's two sets left
    c_end.close()  # gone without BYE
    worker.join(60)
    assert isinstance(box["error"], pie.PeerClosedError) and box["held"] == 2 and box["after"] == 0
    session.close()  # drops the client's sets: their garbled tables are freed for good
    assert session.prepared == 0
    assert all(m.consumed for s in held for m in s.gc.values()) and held[0].gc == {}


def test_a_session_whose_phase_failed_refuses_to_run_again(plan: pie.Plan) -> None:
    """The client vanishes before its offline phase completes (instead of its
    transcript check): both sessions are failed and refuse every later phase
    with a typed error, before sending anything (so no half-used material is
    ever reused)."""
    server, client = pie.Server(plan), pie.Client(plan.public())
    s_end, c_end = pie.memory_pair()
    box: dict[str, object] = {}

    def serve() -> None:
        session = server.session(s_end)
        try:
            session.offline()
        except pie.ChannelError as exc:
            box["offline"] = exc
        box["failed"] = session.failed
        for phase in (session.offline, session.online):
            with pytest.raises(pie.SessionStateError, match="failed"):
                phase()

    worker = threading.Thread(target=serve)
    worker.start()
    session = client.session(c_end)

    def vanish(*args: object, **kwargs: object) -> None:
        c_end.close()
        raise pie.PeerClosedError("the client went away")

    session.wire.client_offline_check = vanish  # type: ignore[method-assign]
    with pytest.raises(pie.ChannelError):
        session.offline()
    assert session.failed
    sent = c_end.bytes_sent
    with pytest.raises(pie.SessionStateError, match="failed"):
        session.offline()
    with pytest.raises(pie.SessionStateError, match="failed"):
        session.online(_images()[0])
    assert c_end.bytes_sent == sent
    worker.join(60)
    assert isinstance(box.get("offline"), pie.ChannelError) and box["failed"]


def test_a_wrong_shape_leaves_the_session_usable(plan: pie.Plan) -> None:
    server, client = pie.Server(plan), pie.Client(plan.public())
    s_end, c_end = pie.memory_pair()
    worker = threading.Thread(target=server.serve, args=(s_end,))
    worker.start()
    session = client.session(c_end)
    session.offline()
    with pytest.raises(ValueError, match="shape"):
        session.online_int(np.zeros((1, 2, 3), dtype=np.uint64))
    assert session.prepared == 1 and not session.failed
    x = _images()[1]
    logits, _ = session.online(x)
    session.close()
    worker.join(60)
    assert np.array_equal(logits, plan.run_reference(x))


def test_handshake_refuses_another_plan(plan: pie.Plan) -> None:
    other_cfg = ResNetConfig(alpha=0.125, culled=(True, False, False, True), thinned=(False, True),
                             num_classes=10, input_size=16)
    other = pie.compile(_random_bn(from_config(other_cfg), 2), SHAPE)
    s_end, c_end = pie.memory_pair()
    worker, errors = _serve_in_thread(plan, s_end)
    with pytest.raises(HandshakeError, match="digest"):
        pie.Client(other.public()).infer(c_end, _images()[0])
    worker.join(60)
    assert len(errors) == 1 and isinstance(errors[0], HandshakeError)


def test_server_needs_weights_and_client_input_shape(plan: pie.Plan) -> None:
    with pytest.raises(ValueError, match="weights"):
        pie.Server(plan.public())
    with pytest.raises(TypeError):
        pie.Server("model.pt")  # type: ignore[arg-type]


def test_server_linear_equals_the_reference_steps(plan: pie.Plan) -> None:
    """The server's online arithmetic (weights prepared once) on the reference
    tensors gives each linear step's reference output; repeated calls agree."""
    server = pie.Server(plan)
    x = np.random.default_rng(5).integers(0, plan.pixel_max + 1, plan.input_shape)
    values = plan.run_reference_int(x, return_all=True)
    linear = [i for i, s in enumerate(plan.steps) if s.kind == "linear"]
    assert len(linear) > 3
    for _ in range(2):
        for i in linear:
            assert np.array_equal(server.linear(i, values), values[plan.steps[i].output])
    relu = next(i for i, s in enumerate(plan.steps) if s.kind == "relu")
    with pytest.raises(ValueError, match="not a linear"):
        server.linear(relu, values)


def _over_tcp(server: pie.Server, client_side: Callable[[pie.Channel], T]) -> T:
    """One session of ``server`` over loopback TCP, the client side run here."""
    listener = pie.TcpListener("127.0.0.1", 0)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with listener.accept(timeout=30) as ch:
                server.serve(ch)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    with pie.tcp_connect("127.0.0.1", listener.port) as ch:
        result = client_side(ch)
    worker.join(60)
    listener.close()
    assert not errors
    return result


def test_over_loopback_tcp(plan: pie.Plan) -> None:
    server = pie.Server(plan)
    x = _images()[2]
    logits, report = _over_tcp(server, lambda ch: pie.Client(server.public_plan()).infer(ch, x))
    assert np.array_equal(logits, plan.run_reference(x))
    assert report.online_bytes > 0


def test_label_only_output_in_memory_and_over_tcp(plan: pie.Plan) -> None:
    """A label-only Plan returns the reference's top-1 class and nothing
    else: the client holds no share of the logits, and the server's sealed
    output frame carries no payload."""
    label_plan = plan.with_output("label")
    assert label_plan.digest() != plan.digest()
    for x in _images():
        label, report = pie.infer(label_plan, x, threads=1)
        assert label.shape == () and label.dtype == np.int64
        assert label == label_plan.reference_label(x) == int(np.argmax(plan.run_reference(x)))
    out = report.costs[label_plan.steps.index(label_plan.output)]
    classes, bits = 10, label_plan.tensors[label_plan.output.input].ring_bits
    frame, offer, seal = 12, 4, 32
    # Online, the server sends the labels of its logit share and a sealed
    # output frame holding no share (only the next offer).
    assert out.online_bytes_s2c == frame + 16 * classes * bits + frame + offer + seal

    server = pie.Server(label_plan)
    x = _images()[2]

    def client_side(ch: pie.Channel) -> np.ndarray:
        with pie.Client(server.public_plan()).session(ch) as session:
            session.offline()
            assert session._ready[0].output_share is None  # it went into the garbled argmax only
            return session.online(x)[0]

    assert _over_tcp(server, client_side) == label_plan.reference_label(x)


def test_output_reveal_is_validated(plan: pie.Plan) -> None:
    with pytest.raises(ValueError, match="output must be one of"):
        plan.with_output("probabilities")
    with pytest.raises(ValueError, match="output must be one of"):
        pie.compile(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)), (3, 2, 2), output="x")
    data = plan.with_output("label").public_dict()
    assert data["steps"][-1]["reveal"] == "label" and "reveal" not in plan.public_dict()["steps"][-1]
    data["steps"][-1]["reveal"] = "everything"
    with pytest.raises(pie.PlanFormatError, match="reveal"):
        pie.Plan._from_dict(data, {}, {})


def test_client_disappearing_raises_on_the_server(plan: pie.Plan) -> None:
    s_end, c_end = pie.memory_pair()
    worker, errors = _serve_in_thread(plan, s_end)
    pie.Client(plan.public()).session(c_end)  # handshake, then vanish
    c_end.close()
    worker.join(60)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], pie.ChannelError)


def test_infer_compiles_a_model() -> None:
    torch.manual_seed(3)
    cfg = ResNetConfig(alpha=0.125, culled=(True, False, True, True), thinned=(False, True),
                       num_classes=4, input_size=8)
    net = _random_bn(from_config(cfg), 3)
    x = np.random.default_rng(1).random((3, 8, 8))
    logits, report = pie.infer(net, x)
    plan = pie.compile(net, (3, 8, 8))
    assert np.array_equal(logits, plan.run_reference(x))
    assert report.relus == pie.relu_count(net, (3, 8, 8))


def test_infer_refuses_bad_images_with_the_clients_own_error(plan: pie.Plan) -> None:
    x = np.random.default_rng(2).random(plan.input_shape)
    cases = [(x * 255, r"\[0, 1\]"), (np.full(plan.input_shape, np.nan), "NaN"),
             (np.stack([x, x]), "one image per inference"),
             (np.moveaxis(x, 0, -1), "must have shape"), (None, "must have shape"),
             ("image.png", "must have shape"), ((x * 255).astype(np.uint8), r"\[0, 1\]")]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            pie.infer(plan, bad)


@pytest.mark.slow
def test_drd_c100_12k_twenty_inputs_bit_exact() -> None:
    torch.manual_seed(12)
    net = _random_bn(pie.models.build("DRD_C100_12K"), 12)
    plan = pie.compile(net, (3, 32, 32))
    rng = np.random.default_rng(12)
    for _ in range(20):
        x = rng.random((3, 32, 32))
        logits, report = pie.infer(plan, x)
        assert np.array_equal(logits, plan.run_reference(x))
    assert report.relus == 12_288
