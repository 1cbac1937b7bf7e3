"""Fuzzing the checkpoint loader (``pie.load_checkpoint``, ``pie.checkpoint_meta``):
truncated and corrupted files, wrong keys, shapes and dtypes, non-tensor values,
hostile configurations and hostile pickles. Each call returns a network (in eval
mode) or a meta dict, or raises CheckpointError; nothing else, and nothing a
pickle names is ever called."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import fuzzing
import pytest
import torch
from fuzzing import edits, fuzz, mutate
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import pie
from pie import CheckpointError
from pie.models import ResNetConfig, from_config

CONFIG = ResNetConfig(alpha=0.125, blocks=(1, 1, 1, 1), num_classes=4, input_size=8)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return from_config(CONFIG).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


@pytest.fixture(scope="module")
def pie_file(net: nn.Module, folder: Path) -> bytes:
    pie.save_checkpoint(net, folder / "seed.pt", meta={"classes": ["a", "b", "c", "d"]})
    return (folder / "seed.pt").read_bytes()


def check_load(path: Path, **kwargs: Any) -> None:
    try:
        model = pie.load_checkpoint(path, **kwargs)
    except CheckpointError:
        pass
    else:
        assert isinstance(model, nn.Module) and not model.training
    try:
        meta = pie.checkpoint_meta(path)
    except CheckpointError:
        pass
    else:
        assert isinstance(meta, dict)


# Values a hostile file may put anywhere: all loadable with weights_only=True.
VALUES: list[Any] = [
    None, 0, -1, 1, 3, 1 << 20, 1 << 62, 1.5, float("nan"), float("inf"), 1e30, "x", "resnet",
    "mobilenetv1", "pie-checkpoint", "{", "[]", "{\"a\": 1}", [], [1, 2], [1, 1, 1, 1],
    [True, False], {}, {"a": 1}, torch.zeros(0), torch.zeros(3), torch.zeros(2, 2, dtype=torch.int32),
    torch.zeros(1, dtype=torch.complex64), torch.ones(4, 2, 3, 3), torch.tensor(7),
]
CONFIG_VALUES: list[Any] = [0, -1, 2, 1000, 10 ** 6, 1 << 40, 0.001, 1e9, "x", None, [1, 1, 1, 10 ** 6],
                            [10 ** 9] * 4, [1, 1], "mobilenetv1"]
TOP_KEYS = ["format", "version", "config", "state_dict", "meta", "snet"]
DTYPES = [torch.int64, torch.float64, torch.bool, torch.float16]

Change = tuple[str, int, int, list[int]]


@st.composite
def changes(draw: st.DrawFn) -> list[Change]:
    """One to three edits of a checkpoint's top-level dict (see :func:`apply`),
    drawn without looking at the checkpoint so failures replay exactly."""
    return [
        (draw(st.sampled_from(["top", "config", "config", "state", "state", "state"])),
         draw(st.integers(0, 1 << 16)), draw(st.integers(0, 1 << 16)),
         draw(st.lists(st.integers(0, 5), max_size=4)))
        for _ in range(draw(st.integers(1, 3)))
    ]


def apply(obj: dict[str, Any], edits: list[Change]) -> dict[str, Any]:
    """The checkpoint with top-level and configuration entries replaced or
    removed, and state_dict entries dropped, added, reshaped, retyped, replaced
    by non-tensors or joined by a key naming a far-away block."""
    out = dict(obj)
    out["config"] = dict(obj["config"])
    out["state_dict"] = dict(obj["state_dict"])
    for where, a, b, dims in edits:
        if where == "top":
            key = TOP_KEYS[a % len(TOP_KEYS)]
            if b % 3 == 0:
                out.pop(key, None)
            else:
                out[key] = copy.deepcopy(VALUES[b % len(VALUES)])
        elif where == "config" and isinstance(out.get("config"), dict):
            cfg = out["config"]
            keys = sorted(cfg) + ["extra"]
            key = keys[a % len(keys)]
            if b % 5 == 0:
                cfg.pop(key, None)
            else:
                cfg[key] = copy.deepcopy(CONFIG_VALUES[b % len(CONFIG_VALUES)])
        elif where == "state" and isinstance(out.get("state_dict"), dict) and out["state_dict"]:
            state = out["state_dict"]
            key = sorted(state)[a % len(state)]
            op = ["drop", "add", "shape", "dtype", "value", "block"][b % 6]
            if op == "drop":
                del state[key]
            elif op == "add":
                state[key + ".extra"] = torch.zeros(1)
            elif op == "shape":
                state[key] = torch.zeros(tuple(dims))
            elif op == "dtype" and isinstance(state[key], torch.Tensor):
                state[key] = state[key].to(DTYPES[b % len(DTYPES)])
            elif op == "value":
                state[key] = copy.deepcopy(VALUES[a % len(VALUES)])
            elif op == "block":  # a block index far beyond the network
                state[f"layer1.{[5, 10 ** 4, 10 ** 9][a % 3]}.conv1.weight"] = torch.zeros(1)
    return out


@fuzz(0.5)
@given(st.data())
def test_mutated_file_bytes(pie_file: bytes, folder: Path, data: st.DataObject) -> None:
    path = folder / "bytes.pt"
    path.write_bytes(mutate(pie_file, data.draw(edits())))
    check_load(path)


@fuzz(2)
@given(st.data())
def test_mutated_pie_checkpoint(pie_file: bytes, folder: Path, data: st.DataObject) -> None:
    obj = torch.load(folder / "seed.pt", weights_only=True)
    path = folder / "structure.pt"
    torch.save(apply(obj, data.draw(changes())), path)
    check_load(path)


@fuzz()
@given(st.data())
def test_mutated_deepreduce_and_plain_state_dicts(net: nn.Module, folder: Path,
                                                  data: st.DataObject) -> None:
    obj = {"config": {}, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}}
    mutated = apply(obj, data.draw(changes()))
    state = mutated.get("state_dict")
    layout = data.draw(st.sampled_from(["snet", "plain", "model"]))
    payload = state if layout == "plain" else {layout: state, "epoch": 3}
    path = folder / "drd.pt"
    torch.save(payload, path)
    flags = data.draw(st.sampled_from([
        {}, {"arch": "DRD_C100_12K"}, {"arch": CONFIG.to_dict()},
        {"culled": [False] * 4, "thinned": (False, False), "rho": 1.0},
        {"culled": [False] * 4, "thinned": (False, False), "rho": 7.0},
        {"arch": "no-such-network"}, {"arch": {"family": "x"}},
    ]))
    check_load(path, **flags)


@fuzz(0.5)
@given(st.binary(max_size=256))
def test_random_bytes(folder: Path, blob: bytes) -> None:
    path = folder / "random.pt"
    path.write_bytes(blob)
    check_load(path)


class Hostile:
    """Unpickling this calls ``fuzzing.record_call``, unless the loader refuses it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (fuzzing.record_call, ("unpickled",))


@pytest.mark.parametrize("where", ["top", "state", "meta", "config"])
def test_hostile_pickles_are_refused(net: nn.Module, tmp_path: Path, where: str) -> None:
    obj: dict[str, Any] = {"format": "pie-checkpoint", "version": 1, "config": CONFIG.to_dict(),
                           "state_dict": dict(net.state_dict()), "meta": "{}"}
    if where == "top":
        obj = Hostile()  # type: ignore[assignment]
    elif where == "state":
        obj["state_dict"]["fc.weight"] = Hostile()
    else:
        obj[where] = Hostile()
    path = tmp_path / "hostile.pt"
    torch.save(obj, path)
    fuzzing.CALLS.clear()
    with pytest.raises(CheckpointError, match="cannot read"):
        pie.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        pie.checkpoint_meta(path)
    assert fuzzing.CALLS == []
    # The control: a loader that trusts the file does call it.
    torch.load(path, weights_only=False)
    assert fuzzing.CALLS == ["unpickled"]


@pytest.mark.parametrize("blocks", [10 ** 4, 10 ** 9])
def test_block_count_comes_from_the_weights_not_a_key_name(net: nn.Module, tmp_path: Path,
                                                           blocks: int) -> None:
    # A key naming block 10^9 once sized a network with 10^9 blocks.
    state = dict(net.state_dict())
    state[f"layer1.{blocks}.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="blocks"):
        pie.load_checkpoint(tmp_path / "sd.pt", culled=[False] * 4, thinned=(False, False), rho=1.0)


@pytest.mark.parametrize("change", [{"alpha": 1000.0}, {"num_classes": 1 << 40},
                                    {"blocks": [1, 1, 1, 10 ** 6]}])
def test_huge_configuration_is_refused_without_building_it(pie_file: bytes, folder: Path,
                                                           tmp_path: Path, change: dict[str, Any]) -> None:
    # The configuration is checked against the weights before a network of
    # its size is allocated.
    obj = torch.load(folder / "seed.pt", weights_only=True)
    obj["config"] = {**obj["config"], **change}
    torch.save(obj, tmp_path / "big.pt")
    with pytest.raises(CheckpointError):
        pie.load_checkpoint(tmp_path / "big.pt")


def test_seed_checkpoint_loads(pie_file: bytes, folder: Path, net: nn.Module) -> None:
    model = pie.load_checkpoint(folder / "seed.pt")
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert pie.checkpoint_meta(folder / "seed.pt") == {"classes": ["a", "b", "c", "d"]}
