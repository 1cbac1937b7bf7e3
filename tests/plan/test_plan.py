import dataclasses
import json

import numpy as np
import pytest

import pie.plan as planmod
from pie import gc
from pie.compiler import compile
from pie.plan import WEIGHT_DTYPES, LinearStep, Plan, PlanFormatError, ReluStep, TensorSpec, weight_dtype

from netutil import random_images
from tinynet import tiny


@pytest.fixture(scope="module")
def plan():
    return compile(tiny(), (3, 8, 8), input_norm=((0.5, 0.4, 0.3), (0.2, 0.3, 0.25)))


def _py_plan_run(p: Plan, x: np.ndarray) -> list[int]:
    """An independent interpreter of the Plan semantics in Python ints (one input)."""
    vals = {p.input: {idx: int(v) for idx, v in np.ndenumerate(x)}}

    def signed(v, bits):
        v %= 1 << bits
        return v - (1 << bits) if v >> (bits - 1) else v

    for s in p.steps:
        if s.kind == "output":
            bits = p.tensors[s.input].ring_bits
            return [vals[s.input][k] % (1 << bits) for k in sorted(vals[s.input])]
        out = p.tensors[s.output]
        mod = 1 << out.ring_bits
        if s.kind in ("relu", "truncate"):
            bits = p.tensors[s.input].ring_bits
            f = (lambda v: max(v, 0)) if s.kind == "relu" else (lambda v: v)
            vals[s.output] = {k: (f(signed(v, bits)) >> s.shift) % mod
                              for k, v in vals[s.input].items()}
            continue
        acc = {idx: int(b) for idx, b in np.ndenumerate(s.bias)}
        for t in s.terms:
            src = vals[t.input]
            if t.op == "scale":
                for k in acc:
                    acc[k] += src[k] << t.shift
            elif t.op == "fc":
                flat = [src[k] for k in sorted(src)]
                for (o,) in list(acc):
                    acc[(o,)] += sum(int(w) * v for w, v in zip(t.weight[o], flat)) << t.shift
            else:
                c, h, w = p.tensors[t.input].shape
                og = t.weight_shape[0] // t.groups
                cg = t.weight_shape[1]
                for (o, i, j) in acc:
                    g = o // og
                    for ci in range(cg):
                        for a in range(t.weight_shape[2]):
                            for e in range(t.weight_shape[3]):
                                y = i * t.stride[0] - t.padding[0] + a
                                z = j * t.stride[1] - t.padding[1] + e
                                if 0 <= y < h and 0 <= z < w:
                                    acc[(o, i, j)] += int(t.weight[o, ci, a, e]) * src[
                                        (g * cg + ci, y, z)] << t.shift
        vals[s.output] = {k: v % mod for k, v in acc.items()}
    raise AssertionError("no output step")


def test_reference_matches_independent_python_interpreter(plan):
    pixels = np.random.default_rng(5).integers(0, 256, (2, 3, 8, 8))
    got = plan.run_reference_int(pixels)
    for b in range(2):
        assert [int(v) for v in got[b]] == _py_plan_run(plan, pixels[b])


def test_step_kinds_and_invariants(plan):
    kinds = [s.kind for s in plan.steps]
    assert set(kinds) <= {"linear", "relu", "truncate", "output"} and kinds[-1] == "output"
    assert kinds.count("relu") == 2 and plan.relu_count() == 4 * 64 * 2
    assert plan.tensors[plan.input].frac_bits == 0
    for s in plan.steps:
        if isinstance(s, LinearStep):
            assert s.bias.shape == plan.tensors[s.output].shape and s.bias.dtype == np.int64
            assert plan.tensors[s.output].ring_bits <= 59


def test_return_all_exposes_every_tensor(plan):
    pixels = np.random.default_rng(1).integers(0, 256, (3, 8, 8))
    values = plan.run_reference_int(pixels, return_all=True)
    assert set(values) == set(plan.tensors)
    for s in plan.steps:
        if isinstance(s, ReluStep):
            src, out = plan.tensors[s.input], plan.tensors[s.output]
            v = values[s.input].astype(object) % (1 << src.ring_bits)
            signed = np.where(v >= 1 << (src.ring_bits - 1), v - (1 << src.ring_bits), v)
            want = (np.maximum(signed, 0) >> s.shift) % (1 << out.ring_bits)
            assert (values[s.output].astype(object) == want).all()
    np.testing.assert_array_equal(values[plan.output.input], plan.run_reference_int(pixels))


def test_save_load_round_trip_and_digest(plan, tmp_path):
    path = tmp_path / "tiny.plan"
    plan.save(path)
    loaded = Plan.load(path)
    assert loaded.digest() == plan.digest()
    pixels = np.random.default_rng(2).integers(0, 256, (4, 3, 8, 8))
    np.testing.assert_array_equal(loaded.run_reference_int(pixels), plan.run_reference_int(pixels))
    assert loaded.private == plan.private
    with np.load(path, allow_pickle=False) as data:  # a plain npz, no pickled objects
        assert "header" in data.files


def _weights_as(plan, dtype):
    """The plan's steps with every weight converted to ``dtype``."""
    def term(t):
        return t if t.op == "scale" else dataclasses.replace(t, weight=t.weight.astype(dtype))
    return [dataclasses.replace(s, terms=[term(t) for t in s.terms]) if isinstance(s, LinearStep) else s
            for s in plan.steps]


def test_weights_are_stored_narrow_and_every_width_computes_alike(plan, tmp_path):
    """The compiler stores each term's weights in the narrowest of int16 / int32 /
    int64; a file keeps that type; the same weights in a wider type compute
    the same; other types are refused."""
    weighted = [t for s in plan.steps if isinstance(s, LinearStep) for t in s.terms if t.op != "scale"]
    for t in weighted:
        largest = int(np.abs(t.weight.astype(np.int64)).max())
        assert t.weight.dtype == weight_dtype(largest) and t.weight.dtype in WEIGHT_DTYPES
    plan.save(tmp_path / "narrow.plan")
    loaded = Plan.load(tmp_path / "narrow.plan")
    assert [t.weight.dtype for s in loaded.steps if isinstance(s, LinearStep) for t in s.terms
            if t.op != "scale"] == [t.weight.dtype for t in weighted]
    pixels = np.random.default_rng(3).integers(0, 256, (3, 3, 8, 8))
    want = plan.run_reference_int(pixels)
    np.testing.assert_array_equal(loaded.run_reference_int(pixels), want)
    for wide in (np.int32, np.int64):
        widened = Plan(plan.input, plan.pixel_max, plan.tensors, _weights_as(plan, wide), plan.policy, plan.private)
        np.testing.assert_array_equal(widened.run_reference_int(pixels), want)
    for bad in (np.float64, np.uint16, np.int8):
        with pytest.raises(PlanFormatError, match="int16, int32 or int64"):
            Plan(plan.input, plan.pixel_max, plan.tensors, _weights_as(plan, bad), plan.policy)
    assert weight_dtype(32767) == np.int16 and weight_dtype(32768) == np.int32
    with pytest.raises(ValueError, match="int64"):
        weight_dtype(1 << 63)


def test_public_plan_has_no_weights_and_same_digest(plan, tmp_path):
    pub = plan.public()
    assert plan.has_weights and not pub.has_weights and pub.private == {}
    assert pub.digest() == plan.digest()
    text = json.dumps(pub.public_dict())
    assert "mean" not in text
    pub.save(tmp_path / "pub.plan")
    again = Plan.load(tmp_path / "pub.plan")
    assert again.digest() == plan.digest() and not again.has_weights
    with pytest.raises(ValueError, match="no weights"):
        again.run_reference(random_images(1, size=8)[0])


def test_digest_changes_with_public_content(plan):
    spec = next(iter(plan.tensors.values()))
    tensors = dict(plan.tensors)
    name = plan.input
    t = tensors[name]
    tensors[name] = TensorSpec(t.name, t.shape, t.ring_bits + 1, t.frac_bits)
    changed = Plan(plan.input, plan.pixel_max, tensors, plan.steps, plan.policy)
    assert changed.digest() != plan.digest()
    other_policy = Plan(plan.input, plan.pixel_max, plan.tensors, plan.steps,
                        {**plan.policy, "frac_bits": 13})
    assert other_policy.digest() != plan.digest()
    assert len(plan.digest()) == 64 and spec.name == plan.input


def test_validation_rejects_inconsistent_plans(plan, tmp_path):
    tensors = dict(plan.tensors)
    step = plan.steps[0]
    src = tensors[plan.input]
    tensors[plan.input] = TensorSpec(src.name, src.shape, tensors[step.output].ring_bits - 1, 0)
    with pytest.raises(PlanFormatError, match="HE input"):
        Plan(plan.input, plan.pixel_max, tensors, plan.steps, plan.policy)
    with pytest.raises(PlanFormatError, match="before it is computed"):
        Plan(plan.input, plan.pixel_max, plan.tensors, plan.steps[1:], plan.policy)
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(PlanFormatError):
        Plan.load(bad)
    header = plan.public_dict() | {"version": 99}
    np.savez(tmp_path / "v99.npz",
             header=np.frombuffer(json.dumps({"public": header}).encode(), np.uint8))
    with pytest.raises(PlanFormatError, match="version"):
        Plan.load(tmp_path / "v99.npz")


def test_summary_and_costs(plan):
    text = plan.summary()
    for word in ("linear", "relu", "output", "ReLUs", "AND gates", "policy", "reveals"):
        assert word in text
    cost = plan.gc_cost()
    assert cost["relus"] == plan.relu_count()
    assert cost["relu_and_gates"] == sum(
        plan.tensors[s.output].numel * gc.relu_circuit(
            plan.tensors[s.input].ring_bits, plan.tensors[s.output].ring_bits, s.shift).num_and
        for s in plan.steps if isinstance(s, ReluStep))


@pytest.mark.parametrize("l_in, l_out, shift", [
    (37, 37, 12), (37, 37, 0), (59, 58, 44), (45, 58, 30), (20, 20, 0), (59, 37, 30), (30, 59, 15),
    (59, 20, 0), (20, 59, 3), (8, 8, 6), (40, 10, 35), (2, 2, 0),
])
def test_and_gate_formulas_match_the_circuits(l_in, l_out, shift):
    assert planmod.relu_and_gates(l_in, l_out, shift) == gc.relu_circuit(l_in, l_out, shift).num_and
    assert planmod.truncate_and_gates(l_in, l_out) == gc.truncate_circuit(l_in, l_out, shift).num_and


def test_input_validation(plan):
    with pytest.raises(ValueError, match="shape"):
        plan.run_reference(np.zeros((3, 9, 8)))
    with pytest.raises(TypeError, match="integer"):
        plan.run_reference_int(np.zeros((3, 8, 8)))
    single = plan.run_reference(random_images(1, size=8)[0])
    assert single.shape == (5,)


@pytest.mark.parametrize("bad,match", [
    (random_images(1, size=8)[0] * 255, r"values in \[0, 1\].*got values in"),
    (np.full((3, 8, 8), np.nan), "NaN"),
    (np.full((3, 8, 8), np.inf), "NaN or infinity"),
    (-random_images(1, size=8)[0] - 0.01, r"\[0, 1\]"),
    (np.zeros((3, 8, 8), dtype=bool), "dtype"),
])
def test_inputs_outside_the_unit_range_are_refused_not_clipped(plan, bad, match):
    for call in (plan.encode_input, plan.run_reference):
        with pytest.raises(ValueError, match=match):
            call(bad)
    edge = np.zeros((3, 8, 8))
    edge[0, 0, 0] = 1.0
    assert plan.encode_input(edge).max() == plan.pixel_max  # 0 and 1 themselves are fine


def _shift_fc(plan: Plan, shift: int, input_ring: int | None = None) -> Plan:
    """The plan with its fc term times ``2^shift`` (output frac raised to match)."""
    steps, tensors = list(plan.steps), dict(plan.tensors)
    k, step = next((k, s) for k, s in enumerate(steps)
                   if isinstance(s, LinearStep) and s.terms[0].op == "fc")
    steps[k] = dataclasses.replace(step, terms=[dataclasses.replace(step.terms[0], shift=shift)])
    out = tensors[step.output]
    tensors[out.name] = TensorSpec(out.name, out.shape, out.ring_bits, out.frac_bits + shift)
    steps[-1] = dataclasses.replace(steps[-1], frac_bits=out.frac_bits + shift)
    if input_ring is not None:
        src = tensors[step.terms[0].input]
        tensors[src.name] = TensorSpec(src.name, src.shape, input_ring, src.frac_bits)
    return Plan(plan.input, plan.pixel_max, tensors, steps, plan.policy, plan.private)


def test_shifted_term_matches_interpreter_and_round_trips(plan, tmp_path):
    shifted = _shift_fc(plan, 3)
    pixels = np.random.default_rng(7).integers(0, 256, (2, 3, 8, 8))
    got = shifted.run_reference_int(pixels)
    for b in range(2):
        assert [int(v) for v in got[b]] == _py_plan_run(shifted, pixels[b])
    assert shifted.digest() != plan.digest()
    shifted.save(tmp_path / "shifted.plan")
    loaded = Plan.load(tmp_path / "shifted.plan")
    assert loaded.digest() == shifted.digest()
    np.testing.assert_array_equal(loaded.run_reference_int(pixels), got)
    fc = next(t for s in loaded.steps if isinstance(s, LinearStep) for t in s.terms if t.op == "fc")
    assert fc.shift == 3


def test_validation_rejects_bad_term_shifts(plan):
    out_ring = next(plan.tensors[s.output].ring_bits for s in plan.steps
                    if isinstance(s, LinearStep) and s.terms[0].op == "fc")
    with pytest.raises(PlanFormatError, match="shift"):
        _shift_fc(plan, out_ring)
    with pytest.raises(PlanFormatError):
        _shift_fc(plan, 2, input_ring=out_ring - 3)
