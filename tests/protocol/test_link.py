"""Emulated network links: settings, the channel decorator's counters and
pacing, the engine and the cost model across a link, and the kernel's own
traffic control as a reference where this machine allows it."""

from __future__ import annotations

import dataclasses
import struct
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import pie
from pie.cost import Profile, estimate
from pie.link import PRESETS, Link, NetemUnavailableError, kernel_link_pair

from chanutil import Pair, Runner, tcp_pair


def _wrapped(make: Callable[[], Pair], link: Link) -> Pair:
    client, server = make()
    return link.wrap(server, "server"), link.wrap(client, "client")


def _exchange(server: pie.Channel, client: pie.Channel) -> None:
    """A little protocol: frames, a bulk transfer larger than a link piece, replies."""
    def serve() -> None:
        for _ in range(3):
            msg = server.recv_frame(7, 1 << 20)
            server.send(msg[::-1])
            server.send(bytes(300_000))
            server.flush()

    worker = threading.Thread(target=serve)
    worker.start()
    for k in range(3):
        client.send_frame(7, bytes([k]) * (10 + k))
        assert client.recv(10 + k) == bytes([k]) * (10 + k)
        assert client.recv(300_000) == bytes(300_000)
    worker.join()


def _counters(ch: pie.Channel) -> tuple[int, int, int, int, tuple[bytes, bytes]]:
    return ch.bytes_sent, ch.bytes_received, ch.flushes, ch.round_trips, ch.transcript()


# ------------------------------------------------------------------ settings


def test_presets_come_from_the_literature() -> None:
    assert set(PRESETS) == {"loopback", "lan", "wan"}
    lan, wan = Link.preset("lan"), Link.preset("wan")
    assert (lan.c2s_bandwidth, lan.s2c_bandwidth, lan.rtt) == (3e9, 3e9, pytest.approx(0.3e-3))
    assert (wan.c2s_bandwidth, wan.s2c_bandwidth, wan.rtt) == (400e6, 400e6, pytest.approx(0.04))
    assert not Link.preset("loopback").emulated and lan.emulated
    assert wan.describe() == "wan (400 Mbit/s, 40 ms RTT)"
    assert "Cheetah" in (pie.link.__doc__ or "") and "CrypTFlow2" in (pie.link.__doc__ or "")


def test_direction_overrides() -> None:
    link = Link(bandwidth=1e6, rtt=0.1, s2c_bandwidth=8e6, c2s_delay=0.01)
    assert (link.c2s_bandwidth, link.s2c_bandwidth) == (1e6, 8e6)
    assert (link.c2s_delay, link.s2c_delay) == (0.01, 0.05)
    assert link.one_way_seconds(1000, "s2c") == pytest.approx(0.05 + 1000 * 8 / 8e6)
    assert "up" in link.describe() and "down" in link.describe()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"bandwidth": -1.0}, "bandwidth"),
        ({"bandwidth": 0}, "bandwidth"),
        ({"bandwidth": float("inf")}, "bandwidth"),
        ({"rtt": -0.1}, "rtt"),
        ({"rtt": float("nan")}, "rtt"),
        ({"c2s_bandwidth": -5.0}, "c2s_bandwidth"),
        ({"s2c_delay": -1.0}, "s2c_delay"),
        ({"send_buffer": 0}, "send_buffer"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Link(**kwargs)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known links: loopback, lan, wan"):
        Link.preset("satellite")
    with pytest.raises(ValueError, match="satellite"):
        pie.infer(nn.Linear(1, 1), np.zeros((1, 1, 1)), link="satellite")
    with pytest.raises(TypeError, match="link"):
        pie.link.resolve_link(3)


def test_wrap_checks_the_side_and_loopback_adds_nothing() -> None:
    a, b = pie.memory_pair()
    with pytest.raises(ValueError, match="side"):
        Link(rtt=0.01).wrap(a, "peer")
    assert Link.preset("loopback").wrap(a, "client") is a


# ---------------------------------------------------------- channel decorator


@pytest.mark.parametrize("make", [pie.memory_pair, tcp_pair], ids=["memory", "tcp"])
def test_counters_and_transcripts_are_those_of_the_wrapped_channel(make: Callable[[], Pair]) -> None:
    plain = make()
    _exchange(*plain)
    linked = _wrapped(make, Link(bandwidth=1e9, rtt=1e-3))
    _exchange(*linked)
    for p, q in zip(plain, linked):
        assert _counters(p) == _counters(q)
    server, client = linked
    assert client.round_trips == 3  # one wait for an answer per request
    assert client.transcript()[0] == server.transcript()[1]
    for ch in (*plain, *linked):
        ch.close()


def test_delay_and_bandwidth_are_at_least_the_link_s() -> None:
    # Lower bounds only: the emulator never delivers early; how late a busy
    # machine makes it is not a property of the link.
    server, client = Link(bandwidth=80e6, rtt=0.05).memory_pair()

    def echo() -> None:
        server.send(server.recv(1))
        server.flush()
        server.recv_into(bytearray(1_000_000))

    worker = threading.Thread(target=echo)
    worker.start()
    start = time.perf_counter()
    client.send(b"x")
    client.flush()
    assert client.recv(1) == b"x"
    assert time.perf_counter() - start >= 0.05
    start = time.perf_counter()
    client.send(bytes(1_000_000))
    client.flush()
    worker.join()
    assert time.perf_counter() - start >= 1_000_000 * 8 / 80e6 + 0.025


def test_timeout_reaches_the_wrapped_channel() -> None:
    a, b = pie.memory_pair()
    wrapped = Link(rtt=0.01).wrap(a, "client")
    wrapped.timeout = 0.2
    assert wrapped.timeout == pytest.approx(0.2)
    with pytest.raises(pie.ChannelTimeoutError):
        wrapped.recv(1)
    b.close()


def test_a_peer_that_is_not_a_link_is_a_protocol_error() -> None:
    a, b = pie.memory_pair()
    wrapped = Link(rtt=0.01).wrap(a, "client")
    b.send(struct.pack("<qQ", 0, 0))  # a piece of zero bytes
    b.flush()
    with pytest.raises(pie.ProtocolError, match="emulated link"):
        wrapped.recv(1)
    a, b = pie.memory_pair()
    wrapped = Link(rtt=0.01).wrap(a, "client")
    b.send(struct.pack("<qQ", 2**62, 1) + b"x")  # stamped far in the future: another clock
    b.flush()
    with pytest.raises(pie.ProtocolError, match="one host"):
        wrapped.recv(1)


def test_closing_the_link_closes_the_wrapped_channel() -> None:
    server, client = Link(rtt=0.002).memory_pair()
    client.close()
    with pytest.raises(pie.PeerClosedError):
        server.recv(1)


# ----------------------------------------------------------- engine and model


@pytest.fixture(scope="module")
def plan() -> pie.Plan:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    return pie.compile(net, (3, 6, 6), calibration=np.random.default_rng(0).random((8, 3, 6, 6)))


def test_infer_across_a_link_is_bit_exact_and_names_it(plan: pie.Plan) -> None:
    x = np.random.default_rng(1).random((3, 6, 6))
    _, plain = pie.infer(plan, x)
    link = Link(bandwidth=200e6, rtt=0.02, name="test")
    logits, report = pie.infer(plan, x, link=link)
    assert np.array_equal(logits, plan.run_reference(x))
    assert report.link == link.describe() and "link: test" in report.table()
    assert report.totals()["link"] == link.describe()
    # Traffic and round trips do not depend on the link; time pays its RTT per round trip.
    assert (report.offline_bytes, report.online_bytes) == (plain.offline_bytes, plain.online_bytes)
    assert (report.offline_round_trips, report.online_round_trips) == (plain.offline_round_trips,
                                                                        plain.online_round_trips)
    assert report.online_round_trips == len(set(plan.rounds().values())) + 1  # + the output's
    assert report.online_seconds >= report.online_round_trips * link.rtt
    assert report.offline_seconds >= report.offline_round_trips * link.rtt


def _zero_profile() -> Profile:
    base: dict = {f.name: 0.0 for f in dataclasses.fields(Profile) if f.name != "machine"}
    base.update(threads=2, bandwidth={"memory": 1e30, "tcp": 1e30}, rtt_s={"memory": 0.0, "tcp": 0.0})
    return Profile(**base)


def test_estimate_counts_the_engine_s_round_trips(plan: pie.Plan) -> None:
    _, report = pie.infer(plan, np.full((3, 6, 6), 0.5))
    est = estimate(plan, _zero_profile(), link="wan")
    assert est.link == "wan" and est.totals()["link"] == "wan"
    assert est.offline_round_trips == report.offline_round_trips
    assert [s.offline_round_trips for s in est.steps] == [c.offline_round_trips for c in report.costs]
    assert [s.online_round_trips for s in est.steps] == [c.online_round_trips for c in report.costs]


def test_estimate_adds_the_link_s_delays_and_serialisation(plan: pie.Plan) -> None:
    profile = _zero_profile()
    link = Link(bandwidth=8e6, rtt=0.1)  # 1 MB/s
    none, linked = estimate(plan, profile), estimate(plan, profile, link=link)
    assert none.online_seconds == pytest.approx(0, abs=1e-9) and none.offline_seconds == pytest.approx(0, abs=1e-9)
    on_trips = sum(s.online_round_trips for s in linked.steps)
    # Every round trip and every byte (but the few of the session frames).
    assert linked.online_seconds == pytest.approx(on_trips * 0.1 + linked.online_bytes / 1e6, rel=1e-3)
    # Offline too: table bytes overlap garbling, which costs nothing in this profile.
    assert linked.offline_seconds == pytest.approx(linked.offline_round_trips * 0.1 + linked.offline_bytes / 1e6,
                                                   rel=1e-3)
    with pytest.raises(ValueError, match="known links"):
        estimate(plan, profile, link="moon")


# ------------------------------------------------------------ kernel reference


def _run_over(plan: pie.Plan, server_end: pie.Channel, client_end: pie.Channel,
              x: np.ndarray) -> tuple[np.ndarray, pie.Report]:
    server = Runner(lambda: pie.Server(plan).serve(server_end))
    try:
        return pie.Client(plan.public()).infer(client_end, x)
    finally:
        server.join()


@pytest.mark.parametrize("qdisc", ["netem", "tbf"])
def test_kernel_link_matches_the_emulator(plan: pie.Plan, qdisc: str) -> None:
    """Where this machine allows it (root, iproute2, the qdisc in the kernel):
    the same inference across the kernel's link and across the emulator over
    TCP; equal traffic, and times of the same order (the benchmark
    bench_link.py measures the agreement)."""
    link = Link(bandwidth=100e6, rtt=0.02 if qdisc == "netem" else 0.0)
    x = np.random.default_rng(2).random((3, 6, 6))
    try:
        with kernel_link_pair(link, qdisc) as (server_end, client_end):
            logits, kernel = _run_over(plan, server_end, client_end, x)
    except NetemUnavailableError as exc:
        pytest.skip(f"kernel {qdisc} unavailable here: {exc}")
    assert np.array_equal(logits, plan.run_reference(x))
    server_end, client_end = _wrapped(tcp_pair, link)
    with server_end, client_end:
        _, emulated = _run_over(plan, server_end, client_end, x)
    assert (kernel.online_bytes, kernel.offline_bytes) == (emulated.online_bytes, emulated.offline_bytes)
    assert kernel.online_round_trips == emulated.online_round_trips
    assert 0.2 < emulated.online_seconds / kernel.online_seconds < 5


def test_kernel_link_refuses_what_tbf_cannot_emulate() -> None:
    with pytest.raises(ValueError, match="tbf"):
        with kernel_link_pair(Link(bandwidth=1e6, rtt=0.01), "tbf"):
            pass
    with pytest.raises(ValueError, match="qdisc"):
        with kernel_link_pair(Link(bandwidth=1e6), "red"):
            pass
