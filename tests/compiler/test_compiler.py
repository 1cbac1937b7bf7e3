import os
import time

import numpy as np
import pytest
import torch
from torch import nn

import pie.models as models
from pie.compiler import CompileError, Tolerance, UnsupportedOpError, compile
from pie.plan import LinearStep, ReluStep, TruncateStep
from pie.compiler import relu_report

from netutil import CIFAR_NORM, float_logits, random_images, randomize
from tinynet import tiny

DRD_C100 = ["DRD_C100_230K", "DRD_C100_115K", "DRD_C100_57K", "DRD_C100_49K", "DRD_C100_29K",
            "DRD_C100_14K", "DRD_C100_12K", "DRD_C100_7K"]

_CACHE: dict[tuple[str, int | None], tuple] = {}

# More weight draws per network: PIE_PRECISION_SEEDS=21,33 python -m pytest -k agrees
EXTRA_SEEDS = [int(s) for s in os.environ.get("PIE_PRECISION_SEEDS", "").split(",") if s]


def compiled(name, seed=None):
    if (name, seed) not in _CACHE:
        draw = seed if seed is not None else DRD_C100.index(name) + 7 if name in DRD_C100 else 0
        net = randomize(models.build(name), seed=draw)
        _CACHE[name, seed] = (net, compile(net, (3, 32, 32), input_norm=CIFAR_NORM))
    return _CACHE[name, seed]


@pytest.mark.parametrize("seed", [None, *EXTRA_SEEDS])
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in ("DRD_C100_230K", "DRD_C100_115K") else n
    for n in DRD_C100
])
def test_fixed_point_agrees_with_float_model(name, seed):
    net, plan = compiled(name, seed)
    images = random_images(256, seed=11)
    want = float_logits(net, images)
    got = plan.run_reference(images)
    assert len(np.unique(want.argmax(1))) > 1  # the predictions depend on the input
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()


def test_culled_network_structure():
    net, plan = compiled("DRD_C100_12K")
    relu_layers = relu_report(net, (3, 32, 32)).layers
    relu_steps = [s for s in plan.steps if isinstance(s, ReluStep)]
    assert len(relu_steps) == len(relu_layers) == 4
    assert plan.relu_count() == 12_288
    # Culled stages 1 and 4 hold no ReLU steps: stage 1 (with the stem) is folded into
    # dense layers of the input, stage 4 into the classifier, so no truncation is needed
    # to keep their ReLU-free chains within 59 bits and every online round is a ReLU's.
    for s in plan.steps:
        if isinstance(s, ReluStep):
            assert s.source[0].startswith(("layer2", "layer3"))
    culled = [s for s in plan.steps if any(n.startswith(("layer1", "layer4")) for n in
                                           getattr(s, "source", ()))]
    assert culled and all(isinstance(s, LinearStep) for s in culled)
    assert plan.policy["folded_head"] == ["layer2_0_bn1", "add_2.head"]
    assert plan.policy["folded_tail"] == "add_5"
    assert not any(isinstance(s, TruncateStep) for s in plan.steps)
    assert len(set(plan.rounds().values())) == 4
    assert plan.gc_cost()["truncations"] == 0


def test_culled_head_is_folded_into_exact_dense_layers():
    from pie.compiler.folding import fold_linear_head
    from pie.compiler.lowering import lower
    from pie.compiler.tracing import trace

    net, plan = compiled("DRD_C100_12K")
    # The stem and culled stage 1 became two fc terms of the input: the first ReLU's
    # input, and the shortcut part of the first residual add.
    first = [s for s in plan.steps if isinstance(s, LinearStep)][:2]
    assert [s.output for s in first] == ["layer2_0_bn1", "add_2.head"]
    assert all([t.op for t in s.terms] == ["fc"] and s.terms[0].input == "input" for s in first)
    assert all(any(n.startswith("layer1") for n in s.source) for s in first)
    add = next(s for s in plan.steps if s.output == "add_2")
    assert sorted(t.input for t in add.terms) == ["add_2.head", "layer2_0_relu1"]
    # The fold is exact up to float32 rounding: every tensor after it keeps its value.
    graph = lower(trace(net, (3, 32, 32)), 255, *CIFAR_NORM)
    pixels = torch.from_numpy(np.rint(random_images(8, seed=3) * 255))
    before = graph.run(pixels)
    assert fold_linear_head(graph, 1 << 25) == ["layer2_0_bn1", "add_2.head"]
    after = graph.run(pixels)
    for name in ("layer2_0_bn1", "add_2", graph.output):
        scale = float(before[name].abs().max())
        assert torch.allclose(before[name], after[name], rtol=0, atol=1e-5 * scale), name
    # Not folded beyond the weight budget, nor a head of one product.
    assert fold_linear_head(lower(trace(net, (3, 32, 32)), 255, *CIFAR_NORM), (1 << 24) - 1) is None
    base = lower(trace(models.build("resnet18").eval(), (3, 32, 32)), 255, *CIFAR_NORM)
    assert fold_linear_head(base, 1 << 30) is None


def test_unfolded_culled_stage_needs_a_truncation():
    # Without the head fold, culled stage 1 chains more products than 59 bits hold.
    net, _ = compiled("DRD_C100_12K")
    plan = compile(net, (3, 32, 32), input_norm=CIFAR_NORM, fold_head_weights=0)
    assert plan.policy["folded_head"] is None
    truncs = [s for s in plan.steps if isinstance(s, TruncateStep)]
    assert truncs and all("bits >" in s.reason for s in truncs)
    assert plan.gc_cost()["truncations"] == sum(plan.tensors[s.output].numel for s in truncs)


def test_rings_and_scales_policy():
    _, plan = compiled("DRD_C100_230K")
    for s in plan.steps:
        if isinstance(s, LinearStep):
            out = plan.tensors[s.output]
            assert out.ring_bits <= 59
            for t in s.terms:
                src = plan.tensors[t.input]
                assert src.ring_bits >= out.ring_bits - t.shift  # HE and scale terms alike
    ins = [plan.tensors[s.input].ring_bits for s in plan.steps if isinstance(s, ReluStep)]
    # Past the culled stage 1, every ReLU layer resets the precision: small rings.
    assert np.median(ins) <= 32 and sorted(ins)[-3] <= 40
    policy = plan.policy
    relus = {s.output for s in plan.steps if isinstance(s, ReluStep)}
    assert set(policy["chosen_act_bits"]) == relus
    assert all(2 <= b <= policy["act_bits"] for b in policy["chosen_act_bits"].values())
    assert all(2 <= b <= policy["weight_bits"] for b in policy["chosen_weight_bits"].values())
    assert policy["calibration_agreement"]["met"] and "reveals" in policy
    assert policy["tolerance"] == {"min_agreement": 0.98, "max_relative_logit_error": 0.003}


def test_residual_stream_scale_does_not_grow():
    # Bottom-thinned: the stream never passes a ReLU. Each projection shortcut and
    # the classifier are composed into the stream's terms (fold_pointwise), so every
    # product on the stream reads a ReLU output or the input and is quantised once:
    # the stream's scale does not pile up weight bits stage by stage (the culled
    # stage 1 is folded into dense layers of the input).
    _, plan = compiled("DRD_C100_12K")
    relu_outputs = {s.output for s in plan.steps if isinstance(s, ReluStep)}
    linear = {s.output for s in plan.steps if isinstance(s, LinearStep)}
    stream = [s for s in plan.steps
              if isinstance(s, LinearStep) and any(t.input in relu_outputs for t in s.terms)]
    assert len(stream) >= 4  # the adds of stages 2 and 3 and the classifier
    for s in stream:
        for t in s.terms:
            if t.op == "scale":
                assert t.input in linear and t.shift <= 6, (s.output, t.input, t.shift)
            else:
                assert t.input in relu_outputs or t.input == plan.input, (s.output, t.input)
    fracs = [plan.tensors[s.output].frac_bits for s in stream]
    assert max(fracs) - min(fracs) <= 8, fracs


def test_culled_tail_is_folded_into_one_exact_layer():
    from pie.compiler.folding import fold_linear_tail, fold_pointwise
    from pie.compiler.lowering import lower
    from pie.compiler.tracing import trace

    net, plan = compiled("DRD_C100_12K")
    # Stage 4 (culled), the pool and the classifier became one fc over stage 3's
    # output, which was then composed into the terms of stage 3's stream: dense
    # layers of the ReLU outputs and of the input.
    assert plan.policy["folded_tail"] == "add_5" and "fc" in plan.policy["composed_pointwise"]
    last = [s for s in plan.steps if isinstance(s, LinearStep)][-1]
    relus = {s.output for s in plan.steps if isinstance(s, ReluStep)}
    assert all(t.op == "fc" and (t.input in relus or t.input == plan.input) for t in last.terms)
    assert any(n.startswith("layer4") for n in last.source)
    # Both folds are exact in real arithmetic: the float graph computes the same logits.
    graph = lower(trace(net, (3, 32, 32)), 255, *CIFAR_NORM)
    pixels = torch.from_numpy(np.rint(random_images(8, seed=3) * 255))
    before = graph.run(pixels)[graph.output]
    assert fold_linear_tail(graph, 1 << 22) == "add_5"
    after = graph.run(pixels)[graph.output]
    assert torch.allclose(before, after, rtol=1e-9, atol=1e-9 * float(before.abs().max()))
    assert "fc" in fold_pointwise(graph, 1 << 24) and "add_5" not in graph.shapes
    after = graph.run(pixels)[graph.output]
    assert torch.allclose(before, after, rtol=1e-9, atol=1e-9 * float(before.abs().max()))
    # Without folding the culled tail needs its own truncations and rounds.
    unfolded = compile(net, (3, 32, 32), input_norm=CIFAR_NORM, fold_tail_weights=0,
                       fold_pointwise_weights=0)
    assert unfolded.policy["folded_tail"] is None
    assert max(unfolded.rounds().values()) > max(plan.rounds().values())
    assert unfolded.gc_cost()["truncations"] > plan.gc_cost()["truncations"]


class _Grouped(nn.Module):
    """A depthwise strided conv, then pointwise convs and a classifier, no ReLU between."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.sc = nn.Conv2d(8, 16, 1, stride=2)
        self.fc = nn.Linear(16 * 16 * 16, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        y = self.pw(self.dw(h)) + self.sc(h)
        return self.fc(torch.relu(y).flatten(1) + y.flatten(1))


@pytest.mark.parametrize("name", ["DRD_C100_57K", "grouped"])
def test_pointwise_composition_is_exact(name):
    # Projection shortcuts composed through strided and padded 3x3 convolutions,
    # identity shortcuts and dense layers (57K: its stream starts in the culled
    # stage 1, unfolded); a pointwise conv after a depthwise one, and a classifier
    # after both (grouped).
    from pie.compiler.folding import fold_pointwise
    from pie.compiler.lowering import lower
    from pie.compiler.tracing import trace

    torch.manual_seed(5)
    net = _Grouped().eval() if name == "grouped" else randomize(models.build(name), seed=5)
    graph = lower(trace(net, (3, 32, 32)), 255, *CIFAR_NORM)
    pixels = torch.from_numpy(np.rint(random_images(4, seed=6) * 255))
    before = graph.run(pixels)
    changed = fold_pointwise(graph, 1 << 24)
    after = graph.run(pixels)
    assert changed and graph.output in after
    for name_ in graph.shapes:
        if name_ in before and name_ in after:
            ref = before[name_]
            assert torch.allclose(ref, after[name_], rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    # No projection or dense term reads a linear op's output any more, unless the
    # composite would pass the weight limit.
    producers = graph.producers()
    from pie.compiler.lowering import FloatLinear
    for op in graph.ops:
        for t in op.terms if isinstance(op, FloatLinear) else []:
            if t.op == "fc" or (t.op == "conv2d" and t.weight.shape[2:] == (1, 1) and t.groups == 1):
                assert not isinstance(producers.get(t.input), FloatLinear), (op.output, t.input)


def test_precision_search_follows_the_tolerance():
    net = randomize(models.build("DRD_C100_7K"), seed=3)
    calib = random_images(32, seed=21)

    def and_gates(p):
        cost = p.gc_cost()
        return cost["relu_and_gates"] + cost["truncate_and_gates"]

    loose = compile(net, (3, 32, 32), input_norm=CIFAR_NORM, calibration=calib,
                    tolerance=Tolerance(0.9, 0.02))
    tight = compile(net, (3, 32, 32), input_norm=CIFAR_NORM, calibration=calib,
                    tolerance=Tolerance(1.0, 0.004))
    assert and_gates(loose) < 0.9 * and_gates(tight)
    assert (sum(loose.policy["chosen_weight_bits"].values())
            < sum(tight.policy["chosen_weight_bits"].values()))
    for p, tol in ((loose, 0.02), (tight, 0.004)):
        assert p.policy["calibration_agreement"]["met"]
        # What the search measured in float32 is what the exact reference gives.
        report = p.calibrate(calib, net)
        assert report.relative_logit_error <= tol * 1.05
    with pytest.raises(ValueError, match="min_agreement"):
        Tolerance(1.5, 0.01)
    with pytest.raises(ValueError, match="max_relative_logit_error"):
        Tolerance(0.9, 0.0)


def test_calibration_images_must_lie_in_the_unit_range():
    net = tiny()
    for bad in (random_images(4, size=8) * 255, np.full((4, 3, 8, 8), np.nan),
                -random_images(4, size=8)):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            compile(net, (3, 8, 8), calibration=bad)


def test_reference_runs_a_230k_network_in_seconds():
    _, plan = compiled("DRD_C100_230K")
    x = random_images(1)[0]
    start = time.perf_counter()
    logits = plan.run_reference(x)
    assert time.perf_counter() - start < 5.0
    assert logits.shape == (100,)


def test_calibrate_reports_agreement_and_overflow():
    net = tiny(seed=2)
    good = compile(net, (3, 8, 8), calibration=random_images(32, size=8, seed=3))
    report = good.calibrate(random_images(64, size=8, seed=4))
    assert report.images == 64 and report.top1_agreement >= 0.95
    assert report.relative_logit_error < 0.01 and report.overflows == {}
    # Calibrating on dim images sizes the rings too small for real inputs.
    bad = compile(net, (3, 8, 8), calibration=random_images(4, size=8, seed=3) * 0.1,
                  ring_margin_bits=0)
    report = bad.calibrate(random_images(64, size=8, seed=4))
    assert sum(report.overflows.values()) > 0


def test_other_families_compile():
    net = randomize(models.build("mobilenetv1"), seed=5)
    plan = compile(net, (3, 32, 32), input_norm=CIFAR_NORM)
    assert sum(isinstance(s, ReluStep) for s in plan.steps) == 27
    images = random_images(8, seed=6)
    want, got = float_logits(net, images), plan.run_reference(images)
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()
    base = compile(models.build("resnet18").eval(), (3, 32, 32))
    assert base.relu_count() == 557_056


class _Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.sigmoid(self.conv(x)).flatten(1)


class _MaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


@pytest.mark.parametrize("net,op,node", [(_Sigmoid(), "sigmoid", "sigmoid"),
                                         (_MaxPool(), "MaxPool2d", "pool")])
def test_unsupported_ops_are_named(net, op, node):
    with pytest.raises(UnsupportedOpError) as err:
        compile(net.eval(), (3, 8, 8))
    assert op in str(err.value) and f"graph node '{node}'" in str(err.value)


def test_bad_arguments():
    net = tiny()
    with pytest.raises(ValueError, match="input_shape"):
        compile(net, (8, 8))
    with pytest.raises(ValueError, match="frac_bits"):
        compile(net, (3, 8, 8), frac_bits=-1)
    with pytest.raises(ValueError, match="input_norm"):
        compile(net, (3, 8, 8), input_norm=((0.5,), (0.2,)))
    with pytest.raises(ValueError, match="calibration"):
        compile(net, (3, 8, 8), calibration=np.zeros((2, 3, 4, 4)))
    with pytest.raises(CompileError):
        compile(net, (3, 8, 8), max_ring_bits=8)


def test_truncations_share_rounds_with_relus_and_schedule_is_topological():
    # Folded head, shortcuts not composed: a stage-4 truncation rides in a ReLU's round.
    net = randomize(models.build("DRD_C100_29K"), seed=DRD_C100.index("DRD_C100_29K") + 7)
    plan = compile(net, (3, 32, 32), input_norm=CIFAR_NORM, fold_pointwise_weights=0)
    rounds = plan.rounds()
    truncs = [s for s in plan.steps if isinstance(s, TruncateStep)]
    relu_rounds = {rounds[s.output] for s in plan.steps if isinstance(s, ReluStep)}
    riding = [s for s in truncs if rounds[s.output] in relu_rounds]
    assert riding and all("sharing the round of the ReLU" in s.reason for s in riding)
    # One round per distinct round number, fewer than one per garbled step.
    assert max(rounds.values()) == len(set(rounds.values())) < len(rounds)
    # The schedule runs every step once, inputs before uses, each wave's garbled
    # steps all of one round.
    done = {plan.input}
    seen = []
    for d, (local, garbled) in enumerate(plan.schedule()):
        for i in (*local, *garbled):
            assert all(name in done for name in plan.steps[i].inputs)
            if i in garbled:
                assert rounds[plan.steps[i].output] == d + 1
            else:
                assert isinstance(plan.steps[i], LinearStep)
            seen.append(i)
            if i in local:
                done.add(plan.steps[i].output)
        done.update(plan.steps[i].output for i in garbled)
    assert sorted(seen) == [i for i, s in enumerate(plan.steps) if s.kind != "output"]


def test_short_overflows_lower_frac_w_instead_of_failing(monkeypatch):
    # A culled chain under a tight ring limit: lowering frac_w by a few bits fits it.
    net = tiny(seed=1, culled=True)
    plan = compile(net, (3, 8, 8), max_ring_bits=34, search_budget=0)
    assert all(plan.tensors[s.input].ring_bits <= 34 for s in plan.steps
               if isinstance(s, ReluStep))
    import pie.compiler.assign as assign_module

    monkeypatch.setattr(assign_module, "_MAX_LOWERING_NEED", 0)
    with pytest.raises(CompileError, match="max_ring_bits=34"):
        compile(net, (3, 8, 8), max_ring_bits=34, search_budget=0)


def _public_fields(d: dict, prefix: str = "") -> set[str]:
    """Every field path of a public Plan dict, lists of objects flattened."""
    out: set[str] = set()
    for key, value in d.items():
        path = f"{prefix}{key}"
        out.add(path)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict) and key not in ("chosen_weight_bits", "chosen_act_bits",
                                                      "frac_w_lowered", "tolerance",
                                                      "calibration_agreement"):
                out |= _public_fields(item, f"{path}.")
    return out


def test_every_public_plan_field_is_listed_in_what_it_reveals():
    """Compiled Plans with truncations, folded heads and tails and lowered layers:
    each field of their public part (what the client gets) is listed, or is
    covered by its parent's entry, in REVEALED_FIELDS; a new field fails here."""
    from pie.compiler import REVEALED_FIELDS

    _, plan = compiled("DRD_C100_12K")
    truncated = compile(randomize(models.build("DRD_C100_57K"), seed=5), (3, 32, 32),
                        input_norm=CIFAR_NORM, fold_head_weights=0)
    assert plan.policy["folded_head"] and plan.policy["folded_tail"]
    assert any(isinstance(s, TruncateStep) and s.reason for s in truncated.steps)
    fields = (_public_fields(plan.public_dict()) | _public_fields(truncated.public_dict())) - {
        "format", "version", "steps", "policy"}
    generic = {"steps.input", "steps.output", "steps.terms.op", "steps.terms.input",
               "steps.terms.weight_shape", "steps.terms.stride", "steps.terms.padding",
               "steps.terms.groups", "steps.terms.shift", "steps.frac_bits", "steps.shape",
               "tensors.name", "tensors.shape"}  # architecture: covered by "steps.terms"/"tensors"
    unlisted = {f for f in fields - generic if f not in REVEALED_FIELDS}
    assert not unlisted, f"public Plan fields not listed in REVEALED_FIELDS: {sorted(unlisted)}"
    assert plan.policy["reveals"] == "; ".join(f"{k}: {v}" for k, v in REVEALED_FIELDS.items())
