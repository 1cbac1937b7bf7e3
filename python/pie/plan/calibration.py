"""Float model versus the exact fixed-point Plan: float logits on the plan's pixels, the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .graph import output_step
from .reference import decode, execute
from .steps import Step, TensorSpec

__all__ = ["CalibrationReport", "calibrate", "float_logits"]


@dataclass(frozen=True)
class CalibrationReport:
    """Float model versus fixed-point Plan on a batch of inputs."""

    images: int
    top1_agreement: float
    max_abs_logit_error: float
    max_abs_logit: float
    overflows: dict[str, int]

    @property
    def relative_logit_error(self) -> float:
        """``max |logit error| / max |logit|``."""
        return self.max_abs_logit_error / self.max_abs_logit if self.max_abs_logit else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-compatible data, the relative error included."""
        return {
            "images": self.images,
            "top1_agreement": self.top1_agreement,
            "max_abs_logit_error": self.max_abs_logit_error,
            "max_abs_logit": self.max_abs_logit,
            "relative_logit_error": self.relative_logit_error,
            "overflows": dict(self.overflows),
        }


def float_logits(model: nn.Module, pixels: np.ndarray, pixel_max: int,
                 private: Mapping[str, Any]) -> np.ndarray:
    """The float model's logits (float64) on integer pixels (N, C, H, W), which it
    sees as ``pixels / pixel_max`` normalised with the plan's private mean and std."""
    channels = pixels.shape[1]
    mean = np.asarray(private.get("mean", [0.0] * channels), np.float64)
    std = np.asarray(private.get("std", [1.0] * channels), np.float64)
    x = torch.from_numpy((pixels.astype(np.float64) / pixel_max - mean[:, None, None])
                         / std[:, None, None])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            dtype = param.dtype if param is not None else torch.float32
            return model(x.to(dtype)).double().numpy()
    finally:
        model.train(was_training)


def calibrate(input: str, tensors: Mapping[str, TensorSpec], steps: Sequence[Step],
              pixels: np.ndarray, pixel_max: int, private: Mapping[str, Any],
              model: nn.Module) -> CalibrationReport:
    """Run the plan (with weights) and ``model`` on the same integer pixels (N, C, H, W)
    and compare their logits; count, per garbled-circuit input, the overflowed elements."""
    values, overflow = execute(input, tensors, steps, pixels, wide=True)
    out = output_step(steps).input
    got = decode(values[out], tensors[out]).reshape(pixels.shape[0], -1)
    want = float_logits(model, pixels, pixel_max, private).reshape(pixels.shape[0], -1)
    return CalibrationReport(
        images=int(pixels.shape[0]),
        top1_agreement=float(np.mean(got.argmax(1) == want.argmax(1))),
        max_abs_logit_error=float(np.abs(got - want).max()),
        max_abs_logit=float(np.abs(want).max()),
        overflows={k: v for k, v in overflow.items() if v},
    )
