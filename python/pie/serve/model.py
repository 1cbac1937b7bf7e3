"""Loading a checkpoint for serving: compile it to a Plan, with its input
normalisation and calibration images, and wrap it in a :class:`~pie.protocol.Server`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import compiler
from ..calibration import check_images, load_calibration
from ..models import checkpoint
from ..plan import Plan
from ..protocol import Server
from ..reduce.data import CIFAR100_STATS, TINY_IMAGENET_STATS

__all__ = ["LoadedModel", "load_model", "load_server"]


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint compiled for serving: the float network, its Plan, the
    checkpoint's ``meta``, and the calibration images the Plan was compiled
    on (``None``: :func:`pie.compile`'s random images) with where they came from."""

    net: Any
    plan: Plan
    meta: dict[str, Any]
    calibration: np.ndarray | None
    calibration_source: str


def load_model(model: str | Path, arch: str | None = None,
               calibration: np.ndarray | str | Path | None = None, output: str = "logits") -> LoadedModel:
    """Load a checkpoint and compile it, folding the input normalisation that a
    pie checkpoint records (other checkpoints: the CIFAR-100 or TinyImageNet
    statistics the DeepReDuce releases were trained with, by input size).

    Calibration images, in this order: ``calibration`` (an array (N, C, H, W)
    in [0, 1], or a file / folder for :func:`pie.calibration.load_calibration`),
    the sample the checkpoint stores (:func:`pie.models.checkpoint.calibration_sample`),
    else :func:`pie.compile`'s random images. ``output`` is what clients learn:
    ``"logits"`` or ``"label"`` (the top-1 class only; see :func:`pie.compile`).

    Raises:
        CheckpointError: unreadable checkpoint or unknown / mismatched arch.
        CalibrationError: unusable calibration file or array.
        CompileError: the network does not compile.
        FileNotFoundError: no checkpoint at ``model``.
    """
    net = checkpoint.load_checkpoint(model, arch)
    meta = checkpoint.checkpoint_meta(model)
    size = net.config.input_size
    norm = meta.get("input_norm")
    if norm is None:
        mean, std = TINY_IMAGENET_STATS if size == 64 else CIFAR100_STATS
        norm = {"mean": list(mean), "std": list(std)}
    shape = tuple(meta.get("input_shape", (3, size, size)))
    images: np.ndarray | None
    if isinstance(calibration, (str, Path)):
        images = load_calibration(calibration, shape)
        source = f"{images.shape[0]} images from {calibration}"
    elif calibration is not None:
        images = check_images(np.asarray(calibration), shape)
        source = f"{images.shape[0]} images given"
    else:
        images = checkpoint.calibration_sample(model)
        if images is not None and tuple(images.shape[1:]) != shape:
            raise checkpoint.CheckpointError(
                f"the checkpoint's calibration sample has shape {images.shape}, the network "
                f"expects (N, {', '.join(map(str, shape))})")
        source = (f"{images.shape[0]} images stored in the checkpoint" if images is not None
                  else "none (random images)")
    plan = compiler.compile(net, shape, input_norm=(norm["mean"], norm["std"]), calibration=images,
                            output=output)
    return LoadedModel(net, plan, meta, images, source)


def load_server(model: str | Path, arch: str | None = None, threads: int = 0,
                calibration: np.ndarray | str | Path | None = None, output: str = "logits") -> Server:
    """Load a checkpoint and compile it for serving (see :func:`load_model`,
    which also says where the calibration images come from and what ``output`` is)."""
    return Server(load_model(model, arch, calibration, output).plan, threads=threads)
