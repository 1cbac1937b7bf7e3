"""pie.estimate: exact traffic against the engine's report, the time model's
composition, and the profile file."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import pie
from pie import gc
from pie.cost import Estimate, Profile, ProfileError, estimate, measure_profile
from pie.models import ResNet, ResNetConfig
from pie.plan import ReluStep, TruncateStep


def _profile(**overrides: object) -> Profile:
    base: dict[str, object] = {f.name: 0.0 for f in dataclasses.fields(Profile) if f.name not in ("machine",)}
    base.update(threads=2, bandwidth={"memory": 1e30, "tcp": 1e30}, rtt_s={"memory": 0.0, "tcp": 0.0})
    base.update(overrides)
    return Profile(**base)  # type: ignore[arg-type]


def _small_cnn() -> pie.Plan:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()
    return pie.compile(net, (3, 16, 16), calibration=np.random.default_rng(0).random((16, 3, 16, 16)),
                       fold_head_weights=0)


def _small_drd() -> pie.Plan:
    """Culled stage 1 (not folded, so that it keeps its truncation) and bottom
    thinning (shortcuts not composed): truncations, several rings and GC shapes."""
    torch.manual_seed(2)
    cfg = ResNetConfig(blocks=(1, 1, 1, 1), alpha=0.125, rho=1.0, culled=(True, False, False, False),
                       thinned=(False, True), num_classes=10)
    net = ResNet(cfg).eval()
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return pie.compile(net, (3, 16, 16), calibration=np.random.default_rng(0).random((16, 3, 16, 16)),
                       fold_head_weights=0, fold_pointwise_weights=0)


@pytest.fixture(scope="module", params=["cnn", "drd", "cnn-label"])
def plan(request: pytest.FixtureRequest) -> pie.Plan:
    if request.param == "cnn-label":
        return _small_cnn().with_output("label")
    return _small_cnn() if request.param == "cnn" else _small_drd()


def test_bytes_equal_the_engine_report(plan: pie.Plan) -> None:
    x = np.random.default_rng(3).random(plan.input_shape)
    _, report = pie.infer(plan, x)
    est = estimate(plan, _profile())
    assert len(est.steps) == len(report.costs)
    for predicted, measured in zip(est.steps, report.costs):
        for key in ("offline_bytes_c2s", "offline_bytes_s2c", "online_bytes_c2s", "online_bytes_s2c"):
            assert getattr(predicted, key) == getattr(measured, key), (predicted.index, predicted.kind, key)
    assert est.setup_bytes == report.setup_bytes
    assert est.input_bytes == report.input_bytes
    assert est.offline_bytes == report.offline_bytes
    assert est.online_bytes == report.online_bytes
    assert est.relus == report.relus


def test_drd_plan_exercises_truncations_and_several_shapes() -> None:
    plan = _small_drd()
    kinds = {type(s) for s in plan.steps}
    assert TruncateStep in kinds and ReluStep in kinds
    shapes = {(plan.tensors[s.input].ring_bits, plan.tensors[s.output].ring_bits, s.shift)
              for s in plan.steps if isinstance(s, (ReluStep, TruncateStep))}
    assert len(shapes) > 1


def test_garbled_bytes_follow_the_circuits(plan: pie.Plan) -> None:
    """Tables are 32 bytes per AND gate of the circuit the engine garbles, and
    online the server sends one 16-byte label per input bit of its share."""
    est = estimate(plan, _profile())
    for s, e in zip(plan.steps, est.steps):
        if isinstance(s, (ReluStep, TruncateStep)):
            l_in, l_out = plan.tensors[s.input].ring_bits, plan.tensors[s.output].ring_bits
            make = gc.truncate_circuit if isinstance(s, TruncateStep) else gc.relu_circuit
            n = plan.tensors[s.output].numel
            assert e.and_gates == n * make(l_in, l_out, s.shift).num_and
            assert e.online_bytes_s2c - 16 * l_in * n < 64  # plus one small frame
            assert e.online_bytes_c2s == math.ceil(n * l_out / 8)
            assert e.offline_bytes_s2c >= 32 * e.and_gates


def test_time_model_counts_one_round_trip_per_round(plan: pie.Plan) -> None:
    est = estimate(plan, _profile(rtt_s={"memory": 1.0, "tcp": 1.0}))
    rounds = len(set(plan.rounds().values()))
    assert est.online_round_trips == rounds
    # Each round trip, plus half of one for the output share.
    assert est.online_seconds == pytest.approx(rounds + 0.5)
    assert est.offline_seconds == pytest.approx(2.0)  # the handshake and the closing transcript check


def test_time_model_is_linear_in_the_profile(plan: pie.Plan) -> None:
    one = estimate(plan, _profile(gc_online_per_and_s=1e-9))
    gates = sum(e.and_gates for e in one.steps)
    assert one.online_seconds == pytest.approx(gates * 1e-9)
    two = estimate(plan, _profile(gc_online_per_and_s=2e-9, he_per_input_s=1.0))
    assert two.online_seconds == pytest.approx(2 * one.online_seconds)
    assert two.offline_seconds > 0 and one.offline_seconds == 0


def test_tcp_adds_time_not_bytes(plan: pie.Plan) -> None:
    profile = _profile(bandwidth={"memory": 1e9, "tcp": 1e8}, rtt_s={"memory": 1e-5, "tcp": 1e-4})
    mem, tcp = estimate(plan, profile, "memory"), estimate(plan, profile, "tcp")
    assert (mem.offline_bytes, mem.online_bytes) == (tcp.offline_bytes, tcp.online_bytes)
    assert tcp.online_seconds > mem.online_seconds
    assert tcp.offline_seconds > mem.offline_seconds


def test_public_plan_estimates_the_same_bytes(plan: pie.Plan) -> None:
    full, public = estimate(plan, _profile()), estimate(plan.public(), _profile())
    assert full.to_dict()["totals"]["offline_bytes"] == public.offline_bytes
    assert full.online_bytes == public.online_bytes


def test_estimate_serialises(plan: pie.Plan) -> None:
    est = estimate(plan, _profile())
    assert isinstance(est, Estimate)
    data = json.loads(est.to_json())
    assert data["totals"]["online_bytes"] == est.online_bytes
    assert len(data["steps"]) == len(plan.steps)
    assert "total" in est.table()


def test_scaled_profile_scales_every_time(plan: pie.Plan) -> None:
    profile = _profile(gc_online_per_and_s=1e-9, he_per_input_s=1e-3, linear_per_limb_mac_s=1e-10,
                       bandwidth={"memory": 1e9, "tcp": 1e8}, rtt_s={"memory": 1e-5, "tcp": 1e-4})
    slow = profile.scaled(3.0)
    for transport in ("memory", "tcp"):
        a, b = estimate(plan, profile, transport), estimate(plan, slow, transport)
        assert b.online_seconds == pytest.approx(3 * a.online_seconds)
        assert b.offline_seconds == pytest.approx(3 * a.offline_seconds)
        assert b.online_bytes == a.online_bytes
    with pytest.raises(ValueError, match="factor"):
        profile.scaled(0)


def test_profile_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    profile = _profile(gc_online_per_and_s=3e-9, machine={"processor": "x"})
    path = tmp_path / "profile.json"
    profile.save(path)
    assert Profile.load(path) == profile


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("gc_online_per_and_s"), "missing"),
        (lambda d: d.update(he_per_input_s=-1.0), "non-negative"),
        (lambda d: d.update(he_per_input_s="fast"), "non-negative"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d.update(format="other"), "not a pie-profile"),
        (lambda d: d.update(bandwidth={"memory": 1.0}), "tcp"),
        (lambda d: d.update(threads=0), "threads"),
    ],
)
def test_profile_rejects_bad_files(tmp_path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = _profile().to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=message):
        Profile.load(path)


def test_profile_rejects_non_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not JSON"):
        Profile.load(path)


def test_estimate_rejects_bad_arguments(plan: pie.Plan) -> None:
    with pytest.raises(ValueError, match="transport"):
        estimate(plan, _profile(), "udp")
    with pytest.raises(TypeError, match="Plan"):
        estimate("plan", _profile())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Profile"):
        estimate(plan, {"threads": 1})  # type: ignore[arg-type]


def test_measure_profile_rejects_bad_budget() -> None:
    with pytest.raises(ValueError, match="seconds"):
        measure_profile(0)
