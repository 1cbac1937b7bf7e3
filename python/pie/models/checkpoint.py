"""Loading and saving network checkpoints.

Three formats are read:

* DeepReDuce checkpoints: a ``.pth.tar`` file holding a dict whose key ``snet``
  is a state_dict saved from ``nn.DataParallel`` (keys start with ``module.``);
* plain state_dicts (optionally ``module.``-prefixed, or nested under
  ``state_dict`` / ``model``);
* pie's own format, written by :func:`save_checkpoint`: the state_dict plus the
  network configuration, so nothing has to be guessed, and optionally a small
  calibration sample (a tensor entry ``calibration``, read back with
  :func:`calibration_sample`).

Files are read with ``torch.load(..., weights_only=True)`` unless the caller
explicitly trusts them.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from .. import models
from ..calibration import CalibrationError, check_images
from . import ModelConfig, ResNetConfig

__all__ = [
    "CheckpointError",
    "calibration_sample",
    "checkpoint_meta",
    "load_checkpoint",
    "save_checkpoint",
]

_log = logging.getLogger(__name__)

PIE_FORMAT = "pie-checkpoint"
PIE_FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the requested network."""


def save_checkpoint(
    model: nn.Module,
    path: PathLike,
    *,
    meta: Mapping[str, Any] | None = None,
    calibration: np.ndarray | torch.Tensor | None = None,
) -> None:
    """Save ``model`` in pie's format (state_dict plus its configuration).

    Args:
        model: a network built by :mod:`pie.models` (it carries ``.config``).
        path: destination file.
        meta: optional JSON-compatible facts about the model that are not
            weights, e.g. ``{"input_norm": {"mean": [...], "std": [...]},
            "classes": [...]}``; read back with :func:`checkpoint_meta`.
        calibration: optional calibration images ``(N, C, H, W)``: ``uint8``,
            or floats in [0, 1]. Stored as a ``uint8`` tensor (exact for
            ``uint8`` input and for floats on the 8-bit grid ``k / 255``),
            otherwise as ``float16``; read back with :func:`calibration_sample`.

    Raises:
        CheckpointError: the model has no pie configuration, ``meta`` is not
            JSON-compatible, or ``calibration`` is not a batch of images in [0, 1].
    """
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, (models.ResNetConfig, models.MobileNetConfig)):
        raise CheckpointError(
            f"{type(model).__name__} carries no pie configuration (.config); only networks "
            "built by pie.models can be saved in pie's format"
        )
    try:
        meta_json = json.dumps(dict(meta or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"meta must be JSON-compatible: {exc}") from exc
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj: dict[str, Any] = {
        "format": PIE_FORMAT,
        "version": PIE_FORMAT_VERSION,
        "config": cfg.to_dict(),
        "state_dict": state,
        # A JSON string keeps the file loadable with weights_only=True.
        "meta": meta_json,
    }
    if calibration is not None:
        obj["calibration"] = _calibration_tensor(calibration)
    torch.save(obj, os.fspath(path))


def _calibration_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``images`` as the compact tensor a checkpoint stores (uint8, else float16)."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4:
        raise CheckpointError(f"calibration must be images (N, C, H, W), got shape {arr.shape}")
    try:
        values = check_images(arr, arr.shape[1:])
    except CalibrationError as exc:
        raise CheckpointError(str(exc)) from exc
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.copy())
    levels = values * 255.0
    if np.allclose(levels, np.rint(levels), rtol=0.0, atol=1e-4):
        return torch.from_numpy(np.rint(levels).astype(np.uint8))
    return torch.from_numpy(values.astype(np.float16))


def calibration_sample(path: PathLike) -> np.ndarray | None:
    """The calibration images stored in a pie checkpoint, as float64 ``(N, C, H, W)``
    in [0, 1]; ``None`` when the file holds none (other formats never do).

    Raises:
        CheckpointError: unreadable file, or a stored sample that is not a
            ``uint8`` / ``float16`` batch of images in [0, 1].
    """
    obj = _load(path, weights_only=True)
    if not _is_pie(obj) or obj.get("calibration") is None:
        return None
    sample = obj["calibration"]
    if not isinstance(sample, torch.Tensor) or sample.dtype not in (torch.uint8, torch.float16) or sample.dim() != 4:
        raise CheckpointError("pie checkpoint's 'calibration' entry must be a uint8 or float16 "
                              "tensor (N, C, H, W)")
    arr = sample.numpy()
    try:
        return check_images(arr, arr.shape[1:], "checkpoint calibration sample")
    except CalibrationError as exc:
        raise CheckpointError(str(exc)) from exc


def checkpoint_meta(path: PathLike) -> dict[str, Any]:
    """The ``meta`` dict saved with a pie checkpoint (empty for other formats).

    Raises:
        CheckpointError: unreadable file or malformed ``meta``.
    """
    obj = _load(path, weights_only=True)
    if not _is_pie(obj):
        return {}
    try:
        meta = json.loads(obj.get("meta", "{}"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"pie checkpoint has malformed meta: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError("pie checkpoint meta must be a JSON object")
    return meta


def load_checkpoint(
    path: PathLike,
    arch: str | ModelConfig | Mapping[str, Any] | None = None,
    *,
    culled: Sequence[bool] | None = None,
    thinned: Sequence[bool] | None = None,
    rho: float | None = None,
    stem_relu: bool | None = None,
    weights_only: bool = True,
) -> nn.Module:
    """Load a checkpoint into a pie network, in eval mode.

    Args:
        path: a DeepReDuce ``.pth.tar``, a state_dict file, or a pie checkpoint.
        arch: the network: a name from :func:`pie.models.names`, a configuration
            (object or dict), or ``None``. A pie checkpoint records its own
            configuration (``arch``, if given, must agree with it). For other
            files with ``arch=None``, the channel multiplier ``alpha``, the
            blocks per stage and the class count are inferred from the weights'
            shapes; culling, thinning and ``rho`` leave no trace in the weights,
            so they must then be given as ``culled``, ``thinned`` and ``rho``.
        culled: per-stage culling flags (with ``arch=None``).
        thinned: ``(top, bottom)`` thinning flags (with ``arch=None``).
        rho: resolution multiplier (with ``arch=None``).
        stem_relu: whether the stem has a ReLU (with ``arch=None``; default False,
            as in the DeepReDuce networks).
        weights_only: passed to ``torch.load``; set False only for trusted files.

    Raises:
        CheckpointError: unreadable or malformed file, configuration that cannot
            be determined, or weights that do not match the network (missing and
            unexpected keys and mismatched shapes are listed).
    """
    obj = _load(path, weights_only=weights_only)

    if _is_pie(obj):
        cfg, state = _read_pie(obj)
        try:
            requested = None if arch is None else _as_config(arch, cfg.num_classes)
        except ValueError as exc:  # unknown name, invalid configuration
            raise CheckpointError(str(exc)) from exc
        if requested is not None and requested.to_dict() != cfg.to_dict():
            raise CheckpointError(
                f"checkpoint records configuration {cfg.to_dict()}, which differs from the "
                f"requested arch {arch!r}"
            )
    else:
        state = _extract_state_dict(obj)
        cfg = _resolve_config(state, arch, culled, thinned, rho, stem_relu)
        state = _rename_for(cfg, state)
    # The configuration came from the file: check it against the weights on a
    # network without memory before allocating one of its size.
    _check_state(_skeleton(cfg), state, arch)
    model = models.from_config(cfg)
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


# How a file torch.load can read starts: a zip archive (torch.save's format
# since 1.6) or a pickle (the legacy format: protocol 2+ opens with 0x80).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def _load(path: PathLike, weights_only: bool) -> Any:
    """``torch.load`` with one-line errors that never advise loading unsafely.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: anything else that stops the file from loading.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {exc.strerror or exc}") from exc
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        what = "an empty file" if not head else (
            "a NumPy array file" if head.startswith(b"\x93NUM") else "neither a zip archive nor a pickle")
        raise CheckpointError(f"cannot read checkpoint {name!r}: not a checkpoint ({what})")
    try:
        return torch.load(name, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        # torch's message for weights_only refusals suggests turning the
        # safety off; pie never does for a file it was handed.
        reason = ("it holds objects other than tensors and plain containers"
                  if weights_only else _first_line(exc))
        raise CheckpointError(f"cannot read checkpoint {name!r}: not a checkpoint pie can "
                              f"load ({reason})") from exc
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {name!r}: not a checkpoint "
                              f"({type(exc).__name__}: {_first_line(exc)})") from exc


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc``'s message, cut to ``limit`` characters, with
    nothing about ``weights_only`` (torch's advice to load unsafely)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((x for x in lines if "weights_only" not in x), "unreadable")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _config(d: dict[str, Any]) -> ModelConfig:
    """A configuration object from its dict form, without building the network."""
    family = d.get("family", "resnet")
    if family == "mobilenetv1":
        return models.MobileNetConfig.from_dict(d)
    return ResNetConfig.from_dict(d)


def _skeleton(cfg: ModelConfig) -> nn.Module:
    """The network of ``cfg`` on the meta device: its shapes, and no memory."""
    try:
        with torch.device("meta"):
            return models.from_config(cfg)
    except RuntimeError as exc:  # sizes beyond what any tensor can hold
        raise CheckpointError(f"configuration {cfg} describes no buildable network: {exc}") from exc


def _is_pie(obj: Any) -> bool:
    # Compared by type first: a tensor in a hostile file compares element-wise.
    return isinstance(obj, Mapping) and isinstance(obj.get("format"), str) and obj["format"] == PIE_FORMAT


def _read_pie(obj: Mapping[str, Any]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    version = obj.get("version")
    if type(version) is not int or version != PIE_FORMAT_VERSION:
        raise CheckpointError(
            f"pie checkpoint version {version!r} is not supported (expected {PIE_FORMAT_VERSION})"
        )
    cfg_dict, state = obj.get("config"), obj.get("state_dict")
    if not isinstance(cfg_dict, Mapping) or not isinstance(state, Mapping):
        raise CheckpointError("pie checkpoint lacks its 'config' or 'state_dict' entry")
    tensors = _tensor_dict(state)
    try:
        cfg = _config(dict(cfg_dict))
        # Every block holds several tensors: more blocks than tensors cannot
        # match, and would only make the network slow to build.
        if isinstance(cfg, ResNetConfig) and sum(cfg.blocks) > len(tensors):
            raise ValueError(f"{sum(cfg.blocks)} blocks for {len(tensors)} tensors")
        _skeleton(cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"pie checkpoint has an invalid configuration: {exc}") from exc
    return cfg, tensors


def _tensor_dict(state: Mapping[Any, Any]) -> dict[str, torch.Tensor]:
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"state_dict entries that are not tensors: {bad[:5]}")
    return {str(k): v for k, v in state.items()}


def _extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The state_dict inside a DeepReDuce / plain checkpoint, ``module.`` stripped."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint holds a {type(obj).__name__}, expected a dict (a state_dict, or a "
            "DeepReDuce checkpoint with key 'snet')"
        )
    state: Any = obj
    for key in ("snet", "state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            state = obj[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            "checkpoint is neither a state_dict nor a dict holding one under 'snet', "
            f"'state_dict' or 'model' (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    out = {}
    for k, v in state.items():
        k = str(k)
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.conv1\.weight$")


def _infer_resnet(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """alpha, blocks per stage and class count of a ResNet state_dict."""
    stem = state.get("conv1.weight")
    head = state.get("fc.weight", state.get("linear.weight"))
    if stem is None or head is None or stem.dim() != 4 or head.dim() != 2:
        raise CheckpointError(
            "cannot infer the configuration: expected ResNet keys 'conv1.weight' and "
            "'fc.weight' (or 'linear.weight'); pass arch= explicitly"
        )
    found: list[set[int]] = [set(), set(), set(), set()]
    for key in state:
        m = _BLOCK_KEY.match(key)
        if m:
            found[int(m.group(1)) - 1].add(int(m.group(2)))
    # Block indices must run 0..n-1: the count comes from the weights present,
    # never from a number in a key name.
    blocks = [len(f) for f in found]
    if min(blocks) == 0 or any(f != set(range(len(f))) for f in found):
        raise CheckpointError(
            f"cannot infer blocks per stage: block indices {[sorted(f)[:8] for f in found]} in "
            "layer1-4 are not 0, 1, 2, ..."
        )
    return {
        "alpha": stem.shape[0] / 64,
        "blocks": tuple(blocks),
        "num_classes": int(head.shape[0]),
    }


def _as_config(arch: str | ModelConfig | Mapping[str, Any], num_classes: int | None) -> ModelConfig:
    if isinstance(arch, str):
        return models.config(arch, num_classes)
    if isinstance(arch, Mapping):
        cfg = _config(dict(arch))
        _skeleton(cfg)  # validates the configuration the way building it would
        return cfg
    if isinstance(arch, (models.ResNetConfig, models.MobileNetConfig)):
        return arch
    raise CheckpointError(f"arch must be a name, a configuration or None, got {arch!r}")


def _num_classes(state: Mapping[str, torch.Tensor]) -> int | None:
    head = state.get("fc.weight", state.get("linear.weight"))
    return int(head.shape[0]) if head is not None and head.dim() == 2 else None


def _resolve_config(
    state: Mapping[str, torch.Tensor],
    arch: str | ModelConfig | Mapping[str, Any] | None,
    culled: Sequence[bool] | None,
    thinned: Sequence[bool] | None,
    rho: float | None,
    stem_relu: bool | None,
) -> ModelConfig:
    if arch is not None:
        if culled is not None or thinned is not None or rho is not None or stem_relu is not None:
            raise CheckpointError("give either arch or the culled/thinned/rho/stem_relu flags")
        try:
            return _as_config(arch, _num_classes(state) if isinstance(arch, str) else None)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
    inferred = _infer_resnet(state)
    seen = (
        f"ResNet with alpha={inferred['alpha']:g}, blocks={list(inferred['blocks'])}, "
        f"num_classes={inferred['num_classes']}"
    )
    if culled is None or thinned is None or rho is None:
        raise CheckpointError(
            f"inferred {seen} from the weights, but culling, thinning and rho leave no trace "
            "in a state_dict: pass arch='<name>' (see pie.models.names()) or all of "
            "culled=[4 flags], thinned=(top, bottom) and rho"
        )
    try:
        cfg = ResNetConfig(
            blocks=inferred["blocks"],
            alpha=inferred["alpha"],
            rho=rho,
            culled=tuple(culled),
            thinned=tuple(thinned),
            stem_relu=bool(stem_relu),
            num_classes=inferred["num_classes"],
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"invalid configuration flags: {exc}") from exc
    named = [
        n for n in models.names() if _same_arch(models.config(n, cfg.num_classes), cfg)
    ]
    _log.info(
        "inferred %s%s", seen, f" (matches {', '.join(named)})" if named else ""
    )
    return cfg


def _same_arch(a: ModelConfig, b: ModelConfig) -> bool:
    da, db = a.to_dict(), b.to_dict()
    da.pop("input_size"), db.pop("input_size")
    return da == db


def _rename_for(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the classifier's alternative name (``linear`` / ``fc``) to the network's."""
    want, other = ("fc", "linear") if isinstance(cfg, ResNetConfig) else ("linear", "fc")
    if any(k.startswith(want + ".") for k in state):
        return state
    return {
        (want + k[len(other) :] if k.startswith(other + ".") else k): v for k, v in state.items()
    }


def _check_state(model: nn.Module, state: Mapping[str, torch.Tensor], arch: Any = None) -> None:
    """Raise a short, one-line :class:`CheckpointError` naming ``arch`` (the
    requested network) and a few examples if ``state`` does not fit ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and (state[k].shape != expected[k].shape or state[k].is_complex()
                           or state[k].is_floating_point() != expected[k].is_floating_point())
    ]
    if missing or unexpected or mismatched:
        parts = []
        for what, items, show in (("missing keys", missing, 2), ("unexpected keys", unexpected, 2),
                                  ("shape mismatches", mismatched, 1)):
            if items:
                more = ", ..." if len(items) > show else ""
                parts.append(f"{what} ({len(items)}): {', '.join(items[:show])}{more}")
        if isinstance(arch, str):
            target = f"arch {arch!r}"
        else:
            cfg = getattr(model, "config", None)
            target = f"the {getattr(cfg, 'family', None) or type(model).__name__} network it describes" \
                if arch is None else "the requested configuration"
        message = f"checkpoint does not match {target} (wrong arch?): " + "; ".join(parts)
        raise CheckpointError(message if len(message) <= 300 else message[:297] + "...")
