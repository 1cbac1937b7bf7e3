"""Fuzzing the Plan parser (``Plan.from_bytes`` / ``Plan.load``): the file a
server loads and the public Plan a client receives from a server. Random and
mutated plans either load into a Plan that passes its own checks and works, or
fail with a PlanFormatError."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fuzzing import edits, fuzz, mutate
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pie
from pie import Plan, PlanFormatError

SHAPE = (3, 4, 4)


@pytest.fixture(scope="module")
def plan() -> Plan:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).eval()
    return pie.compile(net, SHAPE)


def split(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(arrays.pop("header").tobytes()), arrays


def join(header: Any, arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    raw = json.dumps(header).encode()
    np.savez(buf, allow_pickle=False, header=np.frombuffer(raw, dtype=np.uint8), **arrays)
    return buf.getvalue()


def check_parse(data: bytes) -> None:
    """The parser's contract: a Plan that works, or a PlanFormatError."""
    try:
        loaded = Plan.from_bytes(data)
    except PlanFormatError:
        return
    loaded.validate()
    public = loaded.public()
    assert public.digest() == loaded.digest()
    assert Plan.from_bytes(loaded.to_bytes()).digest() == loaded.digest()
    loaded.summary()
    loaded.gc_cost()
    pie.Client(public)  # what a client does with a received public Plan
    if loaded.has_weights and max(t.numel for t in loaded.tensors.values()) <= 1 << 12:
        # Runs, or refuses weights too large for exact arithmetic (as HE would).
        try:
            out = loaded.run_reference_int(np.zeros(loaded.input_shape, dtype=np.int64))
        except ValueError as exc:
            assert "too large" in str(exc)
            return
        assert out.size == loaded.tensors[loaded.output.input].numel


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.sampled_from(
        [0, 1, -1, 2, 59, 60, 64, 65, 1 << 31, 1 << 40]) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_header(draw: st.DrawFn, header: dict[str, Any]) -> Any:
    """The header tree with one to three nodes replaced, removed or duplicated,
    biased to the numbers that matter (shapes, rings, shifts, strides)."""
    root: Any = copy.deepcopy(header)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(root)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "dup", "number", "number"]))
        if not path:
            if op == "replace":
                root = draw(JSON)
            continue
        parent = root
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if op == "replace":
            parent[key] = draw(JSON)
        elif op == "delete":
            del parent[key]
        elif op == "dup" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "number":
            parent[key] = draw(st.sampled_from([0, -1, 1, 2, 3, 59, 60, 64, 65, 1 << 20, 1 << 62, 1 << 64,
                                                "1", 1.5, True, None, [], {}]))
    return root


@st.composite
def mutated_arrays(draw: st.DrawFn, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(arrays)
    for _ in range(draw(st.integers(0, 2))):
        if not out:
            break
        name = draw(st.sampled_from(sorted(out)))
        op = draw(st.sampled_from(["drop", "dtype", "shape", "extra", "huge"]))
        if op == "drop":
            del out[name]
        elif op == "dtype":
            out[name] = out[name].astype(draw(st.sampled_from([np.float64, np.int32, np.uint64, np.bool_])))
        elif op == "shape":
            out[name] = out[name].reshape(-1)[: draw(st.integers(0, max(out[name].size - 1, 0)))]
        elif op == "extra":
            out[draw(st.sampled_from(["w0_5", "b99", "x", "header2"]))] = np.zeros(3, dtype=np.int64)
        else:
            out[name] = np.full(out[name].shape, np.iinfo(np.int64).max, dtype=np.int64)
    return out


@fuzz()
@given(st.data())
def test_mutated_plan_bytes(plan: Plan, data: st.DataObject) -> None:
    source = data.draw(st.sampled_from([plan.to_bytes(), plan.public().to_bytes()]))
    check_parse(mutate(source, data.draw(edits()), focus=128))


@fuzz(2)
@given(st.data())
def test_mutated_plan_structure(plan: Plan, data: st.DataObject) -> None:
    source = plan.to_bytes() if data.draw(st.booleans()) else plan.public().to_bytes()
    header, arrays = split(source)
    check_parse(join(data.draw(mutated_header(header)), data.draw(mutated_arrays(arrays))))


@fuzz()
@given(st.binary(max_size=512))
def test_random_bytes(blob: bytes) -> None:
    check_parse(blob)


@fuzz(0.5)
@given(st.data())
def test_plan_load_from_file(plan: Plan, tmp_path_factory: pytest.TempPathFactory,
                             data: st.DataObject) -> None:
    path = tmp_path_factory.mktemp("plan") / "plan.npz"
    header, arrays = split(plan.to_bytes())
    path.write_bytes(join(data.draw(mutated_header(header)), arrays))
    try:
        Plan.load(path)
    except PlanFormatError:
        pass


def test_round_trip_of_the_seed(plan: Plan, tmp_path: Path) -> None:
    # The fuzzers start from plans that do load: mutations, not the seeds, fail.
    check_parse(plan.to_bytes())
    check_parse(join(*split(plan.public().to_bytes())))
    assert Plan.from_bytes(plan.to_bytes()).digest() == plan.digest()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_header_with_non_json_numbers_is_refused(plan: Plan, value: float) -> None:
    # Such a plan loaded once, then failed to digest in the client.
    header, arrays = split(plan.public().to_bytes())
    header["public"]["policy"]["x"] = value
    with pytest.raises(PlanFormatError):
        Plan.from_bytes(join(header, arrays))


@fuzz()
@given(st.data())
def test_client_fed_mutated_public_plans(plan: Plan, data: st.DataObject) -> None:
    """The client side of the plan request: a server answering with a mutated
    public Plan gets a typed error or a Plan that passes the parser's contract."""
    from pie.protocol import wire
    from pie.serve import fetch_public_plan

    body = mutate(plan.public().to_bytes(), data.draw(edits()), focus=128)
    client_end, server_end = pie.memory_pair()
    with client_end, server_end:
        server_end.send_frame(wire.PUBLIC_PLAN, body)
        client_end.timeout = 0.5
        try:
            received = fetch_public_plan(client_end)
        except (pie.ChannelError, PlanFormatError):
            return
        check_parse(received.to_bytes())
