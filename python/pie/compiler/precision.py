"""The precision search: the fewest weight and activation bits whose Plan stays
within a :class:`Tolerance` of the float model on the calibration images.

Each conv / fc term gets ``b_w`` significant weight bits, each ReLU output
``b_a`` significant bits of its calibrated maximum (:mod:`.assign` turns them
into scales and rings). :class:`Search` picks them: the fewest bits, measured as
the garbled-circuit work the rings imply, whose Plan stays within the tolerance.
The calibration images (:func:`calibration_pixels`) size the rings and measure
the accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..plan import ConvTerm, FCTerm, LinearStep, Plan, ReluStep, ScaleTerm, TruncateStep
from .assign import Assigner, Params, Precision, WeightCache
from .lowering import CompileError, FloatGraph, FloatLinear, FloatRelu

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "Search", "Tolerance", "calibrate", "calibration_pixels"]

DEFAULT_CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class Tolerance:
    """How far the fixed-point Plan may be from the float model on the calibration
    images: top-1 agreement at least ``min_agreement`` and ``max |logit error| /
    max |logit|`` at most ``max_relative_logit_error``."""

    min_agreement: float = 0.98
    max_relative_logit_error: float = 0.003

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        if not 0.0 < self.max_relative_logit_error < 1.0:
            raise ValueError("max_relative_logit_error must be in (0, 1), got "
                             f"{self.max_relative_logit_error}")



def calibration_pixels(calibration: np.ndarray | torch.Tensor | None, shape: tuple[int, ...],
                       pixel_max: int) -> tuple[np.ndarray, str]:
    """The calibration images as integer pixels, and where they came from (for
    ``plan.policy``): ``calibration`` (N, *shape) in [0, 1], or by default
    :data:`DEFAULT_CALIBRATION_IMAGES` uniformly random images (seed 0)."""
    if calibration is None:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, pixel_max + 1, size=(DEFAULT_CALIBRATION_IMAGES, *shape))
        return pixels, f"{DEFAULT_CALIBRATION_IMAGES} uniformly random images (seed 0)"
    arr = calibration.detach().cpu().numpy() if isinstance(calibration, torch.Tensor) else (
        np.asarray(calibration, dtype=np.float64))
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or arr.shape[0] == 0:
        raise ValueError(f"calibration must have shape (N, {', '.join(map(str, shape))})")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError("calibration images must have finite values in [0, 1]")
    return np.rint(arr * pixel_max), f"{arr.shape[0]} images supplied at compile time"


def calibrate(graph: FloatGraph, pixels: np.ndarray,
              chunk: int = 32) -> tuple[dict[str, float], np.ndarray]:
    """Largest magnitude of every tensor on the calibration pixels, and the float logits."""
    maxabs: dict[str, float] = {}
    logits = []
    with torch.no_grad():
        for start in range(0, pixels.shape[0], chunk):
            batch = torch.from_numpy(np.asarray(pixels[start : start + chunk], dtype=np.float32))
            values = graph.run(batch, torch.float32)
            for name, v in values.items():
                maxabs[name] = max(maxabs.get(name, 0.0), float(v.abs().max()))
            logits.append(values[graph.output].reshape(batch.shape[0], -1).double().numpy())
    return maxabs, np.concatenate(logits)


def _float_run(plan: Plan, pixels: np.ndarray, weights: WeightCache, chunk: int = 32) -> np.ndarray:
    """The Plan's output on integer pixels in float32 (values in real units): every
    rounding the fixed point makes (weights, biases, ReLU and truncation shifts)
    without the ring arithmetic. Much faster than the exact reference and within
    float32 rounding of it wherever the rings hold the values."""
    out = []
    # Each weight once per run, not once per chunk (a folded head holds millions).
    floats = {id(t): weights.as_float(t.weight, t.frac_w)
              for step in plan.steps if isinstance(step, LinearStep) for t in step.terms
              if isinstance(t, (ConvTerm, FCTerm)) and t.weight is not None}
    with torch.no_grad():
        for start in range(0, pixels.shape[0], chunk):
            x = torch.from_numpy(np.asarray(pixels[start : start + chunk], dtype=np.float32))
            values: dict[str, torch.Tensor] = {plan.input: x}
            for step in plan.steps:
                if isinstance(step, LinearStep):
                    f_out = plan.tensors[step.output].frac_bits
                    assert step.bias is not None
                    acc = torch.from_numpy(step.bias.astype(np.float64) / 2.0**f_out).float()
                    acc = acc.unsqueeze(0).expand(x.shape[0], *acc.shape).clone()
                    for t in step.terms:
                        v = values[t.input]
                        if isinstance(t, ScaleTerm):
                            acc += v
                            continue
                        w = floats[id(t)]
                        if isinstance(t, ConvTerm):
                            acc += F.conv2d(v, w, None, t.stride, t.padding, 1, t.groups)
                        else:
                            acc += (v.reshape(v.shape[0], -1) @ w.T).reshape(acc.shape)
                    values[step.output] = acc
                elif isinstance(step, (ReluStep, TruncateStep)):
                    v = values[step.input]
                    v = torch.relu(v) if isinstance(step, ReluStep) else v
                    scale = 2.0 ** plan.tensors[step.output].frac_bits
                    values[step.output] = torch.floor(v * scale) / scale
                else:
                    out.append(values[step.input].reshape(x.shape[0], -1).double().numpy())
    return np.concatenate(out)


class Search:
    """The precision search: the fewest bits whose Plan stays within the tolerance.

    Cost is the garbled-circuit work the rings imply (:meth:`.assign.Assigner.gc_work`).
    Accuracy is measured on the calibration images with :func:`_float_run`
    against the float model. Steps: all layers move together (weight bits, then
    activation bits, by bisection); then single layers give up one more bit, the
    largest cost saving first, while the tolerance holds (:meth:`_polish`).
    """

    _FLOOR = 2  # fewest significant bits any weight or activation gets

    def __init__(self, graph: FloatGraph, maxabs: dict[str, float], params: Params,
                 pixel_max: int, pixels: np.ndarray, want: np.ndarray, tol: Tolerance) -> None:
        self.g, self.maxabs, self.p, self.pixel_max = graph, maxabs, params, pixel_max
        self.pixels, self.want, self.tol = pixels, want, tol
        self.weighted = [t for op in graph.ops if isinstance(op, FloatLinear)
                         for t in op.terms if t.op != "scale"]
        self.relus = [op.output for op in graph.ops if isinstance(op, FloatRelu)]
        self.owner = {id(t): op.output for op in graph.ops if isinstance(op, FloatLinear)
                      for t in op.terms}
        self._err_cache: dict[tuple, tuple[float, float] | None] = {}
        self.weights = WeightCache()

    def _key(self, prec: Precision) -> tuple:
        return (tuple(prec.weight[id(t)] for t in self.weighted),
                tuple(prec.act[r] for r in self.relus), prec.trunc)

    def uniform(self, w: int, a: int) -> Precision:
        return Precision({id(t): w for t in self.weighted}, {r: a for r in self.relus}, a)

    def build(self, prec: Precision) -> Plan | None:
        try:
            return Assigner(self.g, self.maxabs, self.p, prec, self.weights).build(self.pixel_max)
        except CompileError:
            return None

    def accuracy(self, plan: Plan) -> tuple[float, float]:
        got = _float_run(plan, self.pixels, self.weights)
        agreement = float(np.mean(got.argmax(1) == self.want.argmax(1)))
        scale = float(np.abs(self.want).max()) or 1.0
        return agreement, float(np.abs(got - self.want).max()) / scale

    def error(self, prec: Precision) -> tuple[float, float] | None:
        """(top-1 agreement, relative logit error) on the calibration images, or None
        if the precision cannot be laid out."""
        key = self._key(prec)
        if key not in self._err_cache:
            plan = self.build(prec)
            self._err_cache[key] = None if plan is None else self.accuracy(plan)
        return self._err_cache[key]

    def ok(self, prec: Precision) -> bool:
        e = self.error(prec)
        return (e is not None and e[0] >= self.tol.min_agreement
                and e[1] <= self.tol.max_relative_logit_error)

    def cost(self, prec: Precision) -> float:
        try:
            return Assigner(self.g, self.maxabs, self.p, prec, self.weights).gc_work()
        except CompileError:
            return math.inf

    def run(self, weight_bits: int, act_bits: int, budget: int) -> Precision:
        w = self._lowest(weight_bits, lambda b: self.uniform(b, act_bits))
        a = self._lowest(act_bits, lambda b: self.uniform(w, b))
        prec = self.uniform(w, a)
        if not self.ok(prec):
            return prec  # the tolerance cannot be met; policy records what was reached
        return self._polish(prec, budget)

    def _lowest(self, hi: int, make: Callable[[int], Precision]) -> int:
        """The fewest bits in [_FLOOR, hi] that still pass (bisection; hi if none)."""
        lo = self._FLOOR
        if not self.ok(make(hi)):
            return hi
        while lo < hi:
            mid = (lo + hi) // 2
            if self.ok(make(mid)):
                hi = mid
            else:
                lo = mid + 1
        return hi

    def _knobs(self) -> list[tuple[str, Any]]:
        return [("w", id(t)) for t in self.weighted] + [("a", r) for r in self.relus]

    @staticmethod
    def _get(prec: Precision, knob: tuple[str, Any]) -> int:
        return (prec.weight if knob[0] == "w" else prec.act)[knob[1]]

    @staticmethod
    def _set(prec: Precision, knob: tuple[str, Any], bits: int) -> Precision:
        out = prec.copy()
        (out.weight if knob[0] == "w" else out.act)[knob[1]] = bits
        return out

    def _polish(self, prec: Precision, budget: int) -> Precision:
        """Single layers give up one more bit, the largest cost saving first, while
        the tolerance holds and ``budget`` tries last."""
        tries = 0
        blocked: set[tuple[str, Any]] = set()
        while tries < budget:
            base = self.cost(prec)
            options = []
            for k in self._knobs():
                if self._get(prec, k) <= self._FLOOR or k in blocked:
                    continue
                cand = self._set(prec, k, self._get(prec, k) - 1)
                saving = base - self.cost(cand)
                if saving > 0:
                    options.append((saving, k, cand))
            if not options:
                break
            options.sort(key=lambda o: -o[0])
            for _, k, cand in options:
                if tries >= budget:
                    break
                tries += 1
                if self.ok(cand):
                    prec = cand
                    break
                blocked.add(k)
            else:
                break
        return prec

    def weight_table(self, prec: Precision) -> dict[str, int]:
        """Chosen weight bits as ``"<output> <- <input>"`` (the public names)."""
        return {f"{self.owner[id(t)]} <- {t.input}": prec.weight[id(t)] for t in self.weighted}
