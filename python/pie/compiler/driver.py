"""The compiler: a float network to a fixed-point :class:`~pie.plan.Plan`.

Pipeline: trace with ``torch.fx`` -> lower to linear steps and ReLUs (batch norm,
residual adds, pooling and input normalisation folded; see :mod:`pie.compiler.lowering`)
-> fold the ReLU-free chain that ends at the output into one layer -> calibrate
magnitudes on a batch -> search the precision -> assign scales, shifts and
rings -> quantise.

Fixed-point policy (all of it public and recorded in ``plan.policy``):

* The input is integer pixels (``frac_bits = 0``); the normalisation is in the
  first layer's weights and bias map.
* **Precision from accuracy.** Each conv / fc term gets ``b_w`` significant
  weight bits (``frac_w`` chosen from the layer's largest weight so that
  ``|w_int| < 2^(b_w - 1)``; fewer when the weights are exact with fewer, as an
  average pool's ``1/4``), each ReLU output ``b_a`` significant bits of its
  calibrated maximum. The search (:class:`_Search`) picks them: the fewest
  bits, measured as the garbled-circuit work the rings imply, whose Plan stays
  within a :class:`Tolerance` of the float model on the calibration images.
* Linear steps never truncate: a term's output scale is ``frac(x) + frac_w``.
  Terms meet at one scale per linear step, the largest any term asks for. A ReLU
  output's scale is free (the shift is chosen): where its branch meets a stream
  of a larger scale (a residual add), the branch arrives at the stream's scale
  and the ReLU output takes the difference, so the stream's scale does not
  grow; it rises only where a shortcut conv multiplies it. ``2^(shift-1)`` is
  added to the preceding bias so the shift rounds to nearest.
* **Folding.** Culled last stages, the pool and the classifier form a ReLU-free
  chain whose composition is one affine map; it is folded into one fully
  connected layer, quantised once (:func:`pie.compiler.lowering.fold_linear_tail`),
  instead of multiplying the scales of every layer on the way.
* Rings are worked out backwards. A tensor read by a garbled circuit (ReLU,
  truncation) or decoded as output needs ``bitlen(ceil(m * 2^frac)) + 1 +
  ring_margin_bits`` bits, where ``m`` is the largest magnitude seen on the
  calibration batch; a tensor read by an HE term needs the output's ring, one
  read by a scale term ``x * 2^d`` the output's ring minus ``d``.
* If a garbled-circuit input would still need more than ``max_ring_bits`` (at
  most 59, the largest power-of-two plaintext modulus SEAL accepts), the
  compiler walks back along the chain that sets its scale. An overflow of at
  most 6 bits is fitted by lowering ``frac_w`` of the chain's layers (one bit
  at a time, spread, at most 3 bits per layer): free. A larger one gets a
  truncation step (a garbled circuit, ~``l_in + l_out`` AND gates per
  element) on the tensor of that chain whose truncation (to the activation
  precision) brings it within the limit at the least cost: its AND gates plus
  ``round_cost_and_gates`` for each online round it adds. A consumer of the
  truncated tensor that feeds a ReLU and fits without the truncation keeps
  reading the untruncated tensor, so the truncation shares that ReLU's round.
  Truncations remain where a culled region that is not at the output (stage
  1 of every DeepReDuce network) chains more products than 59 bits hold, and
  on the residual stream of bottom-thinned networks, which never passes a
  ReLU. Every truncation and lowering is reported with its reason and cost
  (``plan.summary()``, ``plan.gc_cost()``).

What the public plan reveals beyond the architecture is recorded in
``plan.policy["reveals"]`` (:data:`REVEALS`, one entry per field in
:data:`REVEALED_FIELDS`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .lowering import (
    INPUT,
    CompileError,
    FloatGraph,
    FloatLinear,
    FloatRelu,
    FloatTerm,
    UnsupportedOpError,
    fold_linear_tail,
    lower,
)
from ..plan import (
    MAX_HE_RING_BITS,
    OUTPUT_REVEALS,
    ConvTerm,
    FCTerm,
    LinearStep,
    OutputStep,
    Plan,
    ReluStep,
    ScaleTerm,
    Step,
    TensorSpec,
    Term,
    TruncateStep,
    truncate_and_gates,
)
from .tracing import trace

__all__ = ["CompileError", "Tolerance", "UnsupportedOpError", "compile", "DEFAULT_CALIBRATION_IMAGES",
           "REVEALED_FIELDS"]

_log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 64
_TRUNC_SUFFIX = ".trunc"

# What each field of the public Plan (Plan.public_dict(): the client gets it,
# and the digest covers it) tells about the server's model, beyond the
# architecture. tests/compiler/test_compiler.py checks that every field a
# compiled Plan carries is listed here.
REVEALED_FIELDS: dict[str, str] = {
    "input": "the input tensor's name",
    "pixel_max": "the input encoding's largest pixel value",
    "tensors": "every tensor's name (from the traced graph), shape, ring size and scale",
    "tensors.ring_bits": "per tensor, log2 of its calibrated maximum magnitude plus the margin "
                         "(to one bit), for garbled-circuit inputs and every linear output",
    "tensors.frac_bits": "per tensor, its fixed-point scale",
    "steps.kind": "the order and kind of every step (linear, relu, truncate, output)",
    "steps.source": "the names of the traced operations each step implements",
    "steps.terms": "per linear step its terms: conv/fc shapes, stride, padding, groups",
    "steps.terms.frac_w": "per layer frac_w = b_w - 1 - ceil(log2 max|w|) with the layer's chosen "
                          "weight bits b_w, i.e. its largest folded weight to a power of two, or up "
                          "to 3 less where a ring was fitted by lowering it",
    "steps.shift": "per ReLU/truncation its shift, i.e. the output scale: log2 of the ReLU "
                   "output's calibrated maximum at the chosen activation bits",
    "steps.reveal": "whether the client learns the logits or only the top-1 label",
    "steps.reason": "per truncation why it was inserted, quoting the ring the untruncated tensor "
                    "would need (log2 of its calibrated maximum magnitude plus the margin, to one "
                    "bit), the bits cut and the estimated AND gates and rounds",
    "policy.frac_bits": "the compile option (the scale cap)",
    "policy.weight_bits": "the compile option (the weight-bit cap)",
    "policy.act_bits": "the compile option (the activation-bit cap)",
    "policy.tolerance": "the accuracy tolerance the precision search met",
    "policy.calibration_agreement": "top-1 agreement and relative logit error of the fixed-point "
                                    "Plan against the float model on the calibration images",
    "policy.chosen_weight_bits": "per layer the chosen weight bits, which depend on how sensitive "
                                 "the model is to rounding its weights",
    "policy.chosen_act_bits": "per ReLU the chosen activation bits, likewise",
    "policy.folded_tail": "which ReLU-free chain at the output was folded into one linear map",
    "policy.ring_margin_bits": "the compile option",
    "policy.max_ring_bits": "the compile option",
    "policy.round_cost_and_gates": "the compile option",
    "policy.frac_w_lowered": "the layers whose frac_w was lowered to fit a ring, and by how much",
    "policy.calibration": "where the calibration images came from (e.g. the checkpoint's sample, a "
                          "file, or random images), not the images",
    "policy.reveals": "this list",
}
REVEALS = "; ".join(f"{k}: {v}" for k, v in REVEALED_FIELDS.items())


@dataclass
class _Params:
    frac_bits: int
    margin: int
    max_ring: int
    round_cost: int


@dataclass
class _Precision:
    """Significant bits (with sign) of each weighted term, by term id, and of each
    ReLU output (unsigned), by tensor name: what the precision search chooses."""

    weight: dict[int, int]
    act: dict[str, int]
    trunc: int  # significant bits a truncation keeps, where one is needed

    def copy(self) -> _Precision:
        return _Precision(dict(self.weight), dict(self.act), self.trunc)


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


# A ring that overflows by at most _MAX_LOWERING_NEED bits is fitted by lowering
# frac_w of the layers that set its scale (one bit at a time, spread over the
# chain, at most _MAX_FW_LOWERING bits per layer) instead of a truncation: free,
# and weights keep weight_bits - _MAX_FW_LOWERING significant bits at worst.
_MAX_FW_LOWERING = 3
_MAX_LOWERING_NEED = 6


def compile(  # noqa: A001 - the public name the package exposes
    model: nn.Module,
    input_shape: Sequence[int],
    frac_bits: int = 24,
    *,
    input_norm: tuple[Sequence[float], Sequence[float]] | None = None,
    pixel_max: int = 255,
    weight_bits: int = 16,
    act_bits: int = 16,
    tolerance: Tolerance | None = None,
    ring_margin_bits: int = 2,
    max_ring_bits: int = MAX_HE_RING_BITS,
    calibration: np.ndarray | torch.Tensor | None = None,
    round_cost_and_gates: int = 1 << 18,
    search_budget: int = 12,
    fold_tail_weights: int = 1 << 22,
    output: str = "logits",
) -> Plan:
    """Compile a float network into a fixed-point Plan.

    Args:
        model: the network (any ``nn.Module`` that ``torch.fx`` can trace, built
            from conv, batch norm, linear, ReLU, residual add, average pool and
            flatten); it is not modified.
        input_shape: one input's shape ``(C, H, W)``.
        frac_bits: the most fractional bits an activation (ReLU output) may have.
        input_norm: ``(mean, std)`` per channel: the model expects
            ``(image - mean) / std`` for an image with values in [0, 1]. It is
            folded into the first layer, so the client sends integer pixels.
            ``None``: the model takes the image in [0, 1] directly.
        pixel_max: integer pixel range; an image ``x`` in [0, 1] is sent as
            ``round(x * pixel_max)``.
        weight_bits: the most significant bits (with sign) a layer's weights get;
            the precision search starts here and lowers them per layer.
        act_bits: the most significant bits a ReLU output gets (likewise).
        tolerance: how close the Plan must stay to the float model on the
            calibration images (default ``Tolerance()``).
        ring_margin_bits: bits of headroom above the calibrated magnitude of every
            garbled-circuit input (and the output).
        max_ring_bits: largest ring allowed (at most 59: HE plaintext modulus).
        calibration: images (N, C, H, W) with values in [0, 1], used to size the
            rings and to choose the precision; default: 64 images of uniformly
            random pixels (seed 0). Pass real data for a trained network.
        round_cost_and_gates: what one extra online round is worth in AND gates
            when placing truncations (default 2^18, a few milliseconds of
            garbled-circuit work: a LAN round trip plus the per-round overhead).
        search_budget: the most candidate precisions the per-layer search tries.
        fold_tail_weights: the largest weight matrix (entries) that the ReLU-free
            chain ending at the output is folded into (0: never fold).
        output: what the client learns: ``"logits"``, or ``"label"`` (only the
            index of the largest logit, by a garbled argmax; see
            :meth:`Plan.with_output`).

    Returns:
        The Plan (with weights). ``plan.run_reference(x)`` takes images in [0, 1].

    Raises:
        UnsupportedOpError: the network uses an unsupported op (named with its
            graph node).
        CompileError: the network cannot be made to fit ``max_ring_bits``.
        ValueError: bad arguments.
    """
    if not 0 <= frac_bits <= 40:
        raise ValueError(f"frac_bits must be in [0, 40], got {frac_bits}")
    if not 2 <= weight_bits <= 24:
        raise ValueError(f"weight_bits must be in [2, 24], got {weight_bits}")
    if not 2 <= act_bits <= 24:
        raise ValueError(f"act_bits must be in [2, 24], got {act_bits}")
    if not 0 <= ring_margin_bits <= 16:
        raise ValueError(f"ring_margin_bits must be in [0, 16], got {ring_margin_bits}")
    if not 8 <= max_ring_bits <= MAX_HE_RING_BITS:
        raise ValueError(f"max_ring_bits must be in [8, {MAX_HE_RING_BITS}], got {max_ring_bits}")
    if pixel_max < 1:
        raise ValueError(f"pixel_max must be positive, got {pixel_max}")
    if round_cost_and_gates < 0:
        raise ValueError(f"round_cost_and_gates must be >= 0, got {round_cost_and_gates}")
    if search_budget < 0 or fold_tail_weights < 0:
        raise ValueError("search_budget and fold_tail_weights must be >= 0")
    if output not in OUTPUT_REVEALS:
        raise ValueError(f"output must be one of {OUTPUT_REVEALS}, got {output!r}")
    tol = tolerance if tolerance is not None else Tolerance()
    mean, std = input_norm if input_norm is not None else (None, None)
    traced = trace(model, input_shape)
    graph = lower(traced, pixel_max, mean, std)
    shape = traced.input_shape
    folded = fold_linear_tail(graph, fold_tail_weights) if fold_tail_weights else None

    if calibration is None:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, pixel_max + 1, size=(DEFAULT_CALIBRATION_IMAGES, *shape))
        calibration_desc = f"{DEFAULT_CALIBRATION_IMAGES} uniformly random images (seed 0)"
    else:
        arr = calibration.detach().cpu().numpy() if isinstance(calibration, torch.Tensor) else (
            np.asarray(calibration, dtype=np.float64))
        if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or arr.shape[0] == 0:
            raise ValueError(f"calibration must have shape (N, {', '.join(map(str, shape))})")
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise ValueError("calibration images must have finite values in [0, 1]")
        pixels = np.rint(arr * pixel_max)
        calibration_desc = f"{arr.shape[0]} images supplied at compile time"
    maxabs, want = _calibrate(graph, pixels)

    params = _Params(frac_bits, ring_margin_bits, max_ring_bits, round_cost_and_gates)
    search = _Search(graph, maxabs, params, pixel_max, pixels, want, tol)
    prec = search.run(weight_bits, act_bits, search_budget)
    assigner = _Assigner(graph, maxabs, params, prec)
    plan = assigner.build(pixel_max)
    measured = search.error(prec)  # the search measured this precision already
    assert measured is not None  # it was laid out just above
    agreement, error = measured
    met = agreement >= tol.min_agreement and error <= tol.max_relative_logit_error
    if not met:
        _log.warning("the tolerance is not met even at %d weight and %d activation bits: "
                     "top-1 agreement %.4f, relative logit error %.4g on the calibration images",
                     weight_bits, act_bits, agreement, error)
    plan.policy.update({
        "frac_bits": frac_bits,
        "weight_bits": weight_bits,
        "act_bits": act_bits,
        "tolerance": {"min_agreement": tol.min_agreement,
                      "max_relative_logit_error": tol.max_relative_logit_error},
        "calibration_agreement": {"top1_agreement": round(agreement, 6),
                                  "relative_logit_error": round(error, 6),
                                  "met": met},
        "chosen_weight_bits": search.weight_table(prec),
        "chosen_act_bits": dict(sorted(prec.act.items())),
        "folded_tail": folded,
        "ring_margin_bits": ring_margin_bits,
        "max_ring_bits": max_ring_bits,
        "round_cost_and_gates": round_cost_and_gates,
        "frac_w_lowered": dict(sorted(assigner.lowered.items())),
        "calibration": calibration_desc,
        "reveals": REVEALS,
    })
    if input_norm is not None:
        plan.private["mean"] = [float(v) for v in mean]  # type: ignore[union-attr]
        plan.private["std"] = [float(v) for v in std]  # type: ignore[union-attr]
    plan._source_model = model
    return plan.with_output(output) if output != "logits" else plan


def _calibrate(graph: FloatGraph, pixels: np.ndarray,
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


def _float_run(plan: Plan, pixels: np.ndarray, chunk: int = 32) -> np.ndarray:
    """The Plan's output on integer pixels in float32 (values in real units): every
    rounding the fixed point makes (weights, biases, ReLU and truncation shifts)
    without the ring arithmetic. Much faster than the exact reference and within
    float32 rounding of it wherever the rings hold the values."""
    out = []
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
                        assert t.weight is not None
                        w = torch.from_numpy(t.weight.astype(np.float64) / 2.0**t.frac_w).float()
                        if isinstance(t, ConvTerm):
                            acc += F.conv2d(v, w, None, t.stride, t.padding, 1, t.groups)
                        else:
                            acc += v.reshape(v.shape[0], -1) @ w.T
                    values[step.output] = acc
                elif isinstance(step, (ReluStep, TruncateStep)):
                    v = values[step.input]
                    v = torch.relu(v) if isinstance(step, ReluStep) else v
                    scale = 2.0 ** plan.tensors[step.output].frac_bits
                    values[step.output] = torch.floor(v * scale) / scale
                else:
                    out.append(values[step.input].reshape(x.shape[0], -1).double().numpy())
    return np.concatenate(out)


class _Search:
    """The precision search: the fewest bits whose Plan stays within the tolerance.

    Cost is the garbled-circuit work the rings imply (:meth:`_Assigner.gc_work`).
    Accuracy is measured on the calibration images with :func:`_float_run`
    against the float model. Steps: all layers move together (weight bits, then
    activation bits, by bisection); then single layers give up one more bit, the
    largest cost saving first, while the tolerance holds (:meth:`_polish`).
    """

    _FLOOR = 2  # fewest significant bits any weight or activation gets

    def __init__(self, graph: FloatGraph, maxabs: dict[str, float], params: _Params,
                 pixel_max: int, pixels: np.ndarray, want: np.ndarray, tol: Tolerance) -> None:
        self.g, self.maxabs, self.p, self.pixel_max = graph, maxabs, params, pixel_max
        self.pixels, self.want, self.tol = pixels, want, tol
        self.weighted = [t for op in graph.ops if isinstance(op, FloatLinear)
                         for t in op.terms if t.op != "scale"]
        self.relus = [op.output for op in graph.ops if isinstance(op, FloatRelu)]
        self.owner = {id(t): op.output for op in graph.ops if isinstance(op, FloatLinear)
                      for t in op.terms}
        self._err_cache: dict[tuple, tuple[float, float] | None] = {}
        self._fw: dict[tuple[int, int], int] = {}  # (term id, weight bits) -> frac_w

    def _key(self, prec: _Precision) -> tuple:
        return (tuple(prec.weight[id(t)] for t in self.weighted),
                tuple(prec.act[r] for r in self.relus), prec.trunc)

    def uniform(self, w: int, a: int) -> _Precision:
        return _Precision({id(t): w for t in self.weighted}, {r: a for r in self.relus}, a)

    def build(self, prec: _Precision) -> Plan | None:
        try:
            return _Assigner(self.g, self.maxabs, self.p, prec, self._fw).build(self.pixel_max)
        except CompileError:
            return None

    def accuracy(self, plan: Plan) -> tuple[float, float]:
        got = _float_run(plan, self.pixels)
        agreement = float(np.mean(got.argmax(1) == self.want.argmax(1)))
        scale = float(np.abs(self.want).max()) or 1.0
        return agreement, float(np.abs(got - self.want).max()) / scale

    def error(self, prec: _Precision) -> tuple[float, float] | None:
        """(top-1 agreement, relative logit error) on the calibration images, or None
        if the precision cannot be laid out."""
        key = self._key(prec)
        if key not in self._err_cache:
            plan = self.build(prec)
            self._err_cache[key] = None if plan is None else self.accuracy(plan)
        return self._err_cache[key]

    def ok(self, prec: _Precision) -> bool:
        e = self.error(prec)
        return (e is not None and e[0] >= self.tol.min_agreement
                and e[1] <= self.tol.max_relative_logit_error)

    def cost(self, prec: _Precision) -> float:
        try:
            return _Assigner(self.g, self.maxabs, self.p, prec, self._fw).gc_work()
        except CompileError:
            return math.inf

    def run(self, weight_bits: int, act_bits: int, budget: int) -> _Precision:
        w = self._lowest(weight_bits, lambda b: self.uniform(b, act_bits))
        a = self._lowest(act_bits, lambda b: self.uniform(w, b))
        prec = self.uniform(w, a)
        if not self.ok(prec):
            return prec  # the tolerance cannot be met; policy records what was reached
        return self._polish(prec, budget)

    def _lowest(self, hi: int, make: Callable[[int], _Precision]) -> int:
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
    def _get(prec: _Precision, knob: tuple[str, Any]) -> int:
        return (prec.weight if knob[0] == "w" else prec.act)[knob[1]]

    @staticmethod
    def _set(prec: _Precision, knob: tuple[str, Any], bits: int) -> _Precision:
        out = prec.copy()
        (out.weight if knob[0] == "w" else out.act)[knob[1]] = bits
        return out

    def _polish(self, prec: _Precision, budget: int) -> _Precision:
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

    def weight_table(self, prec: _Precision) -> dict[str, int]:
        """Chosen weight bits as ``"<output> <- <input>"`` (the public names)."""
        return {f"{self.owner[id(t)]} <- {t.input}": prec.weight[id(t)] for t in self.weighted}


def _preferred_frac_w(weight: np.ndarray, weight_bits: int) -> int:
    """Fractional bits so that ``|round(w * 2^f)| <= 2^(weight_bits-1) - 1`` for the largest
    ``|w|``; fewer if every weight is exactly representable with fewer."""
    nonzero = weight[weight != 0]
    if nonzero.size == 0:
        return 0
    m = float(np.abs(nonzero).max())
    f = max(0, math.floor(math.log2((2 ** (weight_bits - 1) - 1) / m)))
    # Bits each float needs: w = M * 2^(e-53) with integer M; minus M's trailing zeros.
    mant, exp = np.frexp(np.abs(nonzero))
    ints = (mant * 2.0**53).astype(np.int64)
    trailing = np.log2((ints & -ints).astype(np.float64)).astype(np.int64)
    exact = int((53 - exp - trailing).max())
    return min(f, exact)


def _frac_for(magnitude: float, bits: int) -> int:
    """Fractional bits that give a value of at most ``magnitude`` (>= 0) ``bits``
    significant bits: ``magnitude * 2^f < 2^bits``; never negative."""
    if magnitude <= 0:
        return bits
    return max(0, math.floor(math.log2((2.0**bits - 1) / magnitude)))


def _bitlen(magnitude: float) -> int:
    return int(math.ceil(magnitude)).bit_length()


class _Assigner:
    """Scales, shifts, truncations and rings for a float graph (module doc)."""

    def __init__(self, graph: FloatGraph, maxabs: dict[str, float], params: _Params,
                 precision: _Precision,
                 frac_w_cache: dict[tuple[int, int], int] | None = None) -> None:
        self.g = graph
        self.maxabs = maxabs
        self.p = params
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.terms: dict[int, FloatTerm] = {
            id(t): t for op in graph.ops if isinstance(op, FloatLinear) for t in op.terms
        }
        cache = frac_w_cache if frac_w_cache is not None else {}
        self.fw_pref: dict[int, int] = {}
        for t in self.terms.values():
            if t.op != "scale":
                key = (id(t), precision.weight[id(t)])
                if key not in cache:
                    cache[key] = _preferred_frac_w(t.weight, key[1])
                self.fw_pref[id(t)] = cache[key]
        # The scale a ReLU output asks for: ``act`` significant bits of its largest value.
        self.act_frac: dict[str, int] = {
            name: min(params.frac_bits, _frac_for(maxabs.get(name, 0.0), bits))
            for name, bits in precision.act.items()
        }
        self.trunc_bits = precision.trunc
        self.fw_lowered: dict[int, int] = {}  # term id -> bits taken off its frac_w to fit a ring
        self.truncated: dict[str, tuple[int, str]] = {}  # tensor -> (frac after, reason)
        # Consumers (linear step outputs) that keep reading a truncated tensor
        # untruncated, so its truncation can share their ReLU's round.
        self.bypass: dict[str, frozenset[str]] = {}
        self.lowered: dict[str, int] = {}  # "<output> <- <input>" -> bits taken off frac_w

    # -------------------------------------------------------------- scales
    def src(self, name: str, consumer: str | None = None) -> str:
        """The tensor ``consumer`` reads for ``name``: its truncation, unless bypassed."""
        if name in self.truncated and consumer not in self.bypass.get(name, ()):
            return name + _TRUNC_SUFFIX
        return name

    def _fw(self, t: FloatTerm) -> int:
        return self.fw_pref[id(t)] - self.fw_lowered.get(id(t), 0) if t.op != "scale" else 0

    def _scales(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Forward pass: frac of every tensor, the term each linear step's scale comes
        from (``dominant``, a term id), and frac_w / shift per term (keyed by term id)."""
        frac: dict[str, int] = {INPUT: 0}
        free_in: dict[str, str] = {}  # GC output -> its input (scale still free)
        term_frac: dict[int, int] = {}
        dominant: dict[str, int] = {}
        for op in self.g.ops:
            if isinstance(op, FloatRelu):
                free_in[op.output] = self.src(op.input, op.output)
                continue
            cands = []
            for t in op.terms:
                x = self.src(t.input, op.output)
                base = frac[x] if x in frac else self.act_frac[x]
                cands.append(base + self._fw(t))
            f_y = max(cands)
            fixed = [i for i, t in enumerate(op.terms)
                     if self.src(t.input, op.output) in frac and cands[i] == f_y]
            dom = fixed[0] if fixed else cands.index(f_y)
            dominant[op.output] = id(op.terms[dom])
            for t in op.terms:
                x = self.src(t.input, op.output)
                if x not in frac:
                    frac[x] = min(f_y - self._fw(t), frac[free_in[x]])
                term_frac[id(t)] = f_y - frac[x]
            frac[op.output] = f_y
            if op.output in self.truncated:
                frac[op.output + _TRUNC_SUFFIX] = self.truncated[op.output][0]
        for out, inp in free_in.items():
            frac.setdefault(out, min(frac[inp], self.act_frac[out]))
        self.free_in = free_in
        return frac, term_frac, dominant

    def _rounds(self) -> int:
        """Online garbled-circuit rounds of the graph as it stands (Plan.rounds)."""
        depth: dict[str, int] = {INPUT: 0}
        rounds = 0
        for op in self.g.ops:
            if isinstance(op, FloatRelu):
                depth[op.output] = depth[self.src(op.input, op.output)] + 1
                rounds = max(rounds, depth[op.output])
                continue
            depth[op.output] = max(depth[self.src(t.input, op.output)] for t in op.terms)
            if op.output in self.truncated:
                depth[op.output + _TRUNC_SUFFIX] = depth[op.output] + 1
                rounds = max(rounds, depth[op.output] + 1)
        return rounds

    def _gc_inputs(self) -> dict[str, int]:
        """Tensors read by a garbled circuit or decoded: name -> shift applied to it."""
        out: dict[str, int] = {}
        for op in self.g.ops:
            if isinstance(op, FloatRelu):
                out[self.src(op.input, op.output)] = -1
        for name in self.truncated:
            out[name] = -1
        out[self.src(self.g.output)] = 0
        return out

    def _offset(self, name: str, shift: int) -> int:
        """Rounding offset added to ``name``'s bias for a consumer that shifts by ``shift``."""
        if shift <= 0 or name == INPUT or not isinstance(self.producers.get(name), FloatLinear):
            return 0
        if name in self.truncated:
            return 1 << (shift - 1)
        users = self.consumers.get(name, [])
        if len(users) == 1 and isinstance(users[0], FloatRelu) and name != self.g.output:
            return 1 << (shift - 1)
        return 0

    def _shift_of(self, name: str, frac: dict[str, int]) -> int:
        if name in self.truncated:
            return frac[name] - frac[name + _TRUNC_SUFFIX]
        for op in self.consumers.get(name, []):
            if isinstance(op, FloatRelu):
                return frac[name] - frac[op.output]
        return 0

    def _bits(self, name: str, frac: dict[str, int]) -> int:
        magnitude = self.maxabs.get(name.removesuffix(_TRUNC_SUFFIX), 0.0) * 2.0 ** frac[name]
        offset = self._offset(name, self._shift_of(name, frac))
        return _bitlen(magnitude + offset) + 1 + self.p.margin

    # -------------------------------------------------------------- fitting rings
    def _fit(self) -> None:
        """Lower frac_w or insert truncations until every garbled-circuit input fits."""
        limit = (len(self.g.ops) + 1) * (_MAX_FW_LOWERING + 2)
        for _ in range(limit):
            frac, _, dominant = self._scales()
            worst = None
            for name in self._gc_inputs():
                bits = self._bits(name, frac)
                if bits > self.p.max_ring:
                    worst = (name, bits)
                    break
            if worst is None:
                return
            path = self._chain(worst[0], dominant)
            if not self._lower_fw(worst[0], worst[1], path, dominant):
                self._truncate_for(worst[0], worst[1], frac, path)
        raise CompileError("could not fit the network's rings (truncation did not converge)")

    def _chain(self, g: str, dominant: dict[str, int]) -> list[str]:
        """The tensors whose scale sets ``g``'s, nearest first (``g`` excluded)."""
        path = []
        cur = g
        while cur in dominant:
            t = self.terms[dominant[cur]]
            cur = self.src(t.input, cur)
            if cur == INPUT or cur in self.free_in or cur.endswith(_TRUNC_SUFFIX):
                break
            path.append(cur)
        return path

    def _lower_fw(self, g: str, bits: int, path: list[str], dominant: dict[str, int]) -> bool:
        """Take one bit off the frac_w of a weight term that sets ``g``'s scale, if
        ``g`` overflows by at most _MAX_LOWERING_NEED bits and the chain's terms can
        give that many: the term lowered least so far, nearest to ``g`` on ties."""
        need = bits - self.p.max_ring
        if need > _MAX_LOWERING_NEED:
            return False
        terms = [self.terms[dominant[v]] for v in (g, *path) if v in dominant]
        terms = [t for t in terms if t.op != "scale"
                 and self.fw_lowered.get(id(t), 0) < _MAX_FW_LOWERING and self._fw(t) > 0]
        if sum(min(_MAX_FW_LOWERING - self.fw_lowered.get(id(t), 0), self._fw(t)) for t in terms) < need:
            return False
        t = min(terms, key=lambda t: self.fw_lowered.get(id(t), 0))
        self.fw_lowered[id(t)] = self.fw_lowered.get(id(t), 0) + 1
        out = next(v for v in (g, *path) if v in dominant and dominant[v] == id(t))
        key = f"{out} <- {t.input}"
        self.lowered[key] = self.lowered.get(key, 0) + 1
        _log.info("frac_w of %s lowered by one bit: '%s' would need %d bits", key, g, bits)
        return True

    def _truncate_for(self, g: str, bits: int, frac: dict[str, int], path: list[str]) -> None:
        """Truncate the tensor on ``g``'s chain that relieves it at the least cost:
        AND gates, plus ``round_cost`` per online round it adds. Consumers that
        feed a ReLU and fit without it keep reading the untruncated tensor, so the
        truncation shares that ReLU's round."""
        need = bits - self.p.max_ring
        rounds_before = self._rounds()
        options = []
        for u in path:
            if u in self.truncated:
                continue
            # Down to the precision an activation keeps (trunc_bits significant bits).
            floor_frac = min(self.p.frac_bits, _frac_for(self.maxabs.get(u, 0.0), self.trunc_bits))
            relief = frac[u] - floor_frac
            if relief <= 0:
                continue
            target = frac[u] - relief
            self.truncated[u] = (target, "")
            ubits = self._bits(u, {**frac, u + _TRUNC_SUFFIX: target})
            self.bypass[u] = self._bypassing(u, g, frac)
            extra_rounds = self._rounds() - rounds_before
            bypass = self.bypass.pop(u)
            del self.truncated[u]
            if ubits > self.p.max_ring:
                continue
            numel = math.prod(self.g.shapes[u])
            gates = numel * truncate_and_gates(ubits, max(ubits - relief, 1))
            cost = gates + self.p.round_cost * extra_rounds
            options.append((relief >= need, cost if relief >= need else -relief, u, target, gates,
                            bypass, extra_rounds))
        if not options:
            raise CompileError(
                f"tensor '{g}' needs {bits} bits (> max_ring_bits={self.p.max_ring}) and no "
                "tensor on the chain that sets its scale can be truncated within the limit; "
                "lower weight_bits or frac_bits"
            )
        options.sort(key=lambda o: (not o[0], o[1]))
        _, _, u, target, gates, bypass, extra_rounds = options[0]
        rides = f", sharing the round of the ReLU after {', '.join(sorted(bypass))}" if bypass else ""
        reason = (
            f"'{g}' would need {bits} bits > {self.p.max_ring}; truncating '{u}' by "
            f"{frac[u] - target} bits (~{gates:,} AND gates, {extra_rounds} extra online "
            f"round{'s' if extra_rounds != 1 else ''}{rides})"
        )
        self.truncated[u] = (target, reason)
        if bypass:
            self.bypass[u] = bypass
        _log.info("truncation inserted: %s", reason)

    def _bypassing(self, u: str, g: str, frac: dict[str, int]) -> frozenset[str]:
        """Consumers of ``u`` that may read it untruncated: linear steps feeding only a
        ReLU whose input fits the ring as it is (``g`` excluded, it does not fit)."""
        keep = set()
        for op in self.consumers.get(u, []):
            if not isinstance(op, FloatLinear) or op.output == g or op.output == self.g.output:
                continue
            users = self.consumers.get(op.output, [])
            if (len(users) == 1 and isinstance(users[0], FloatRelu)
                    and self._bits(op.output, frac) <= self.p.max_ring):
                keep.add(op.output)
        return frozenset(keep)

    # -------------------------------------------------------------- rings and plan
    def build(self, pixel_max: int) -> Plan:
        """The Plan, weights quantised."""
        frac, term_frac, ring = self.layout()
        return self._emit(pixel_max, frac, term_frac, ring)

    def gc_work(self) -> float:
        """What :class:`_Search` minimises: per ReLU and truncation element, its input
        ring plus its output ring (labels online, adder and mask AND gates)."""
        _, _, ring = self.layout()
        total = 0
        for op in self.g.ops:
            if isinstance(op, FloatRelu):
                total += math.prod(self.g.shapes[op.output]) * (
                    ring[self.src(op.input, op.output)] + ring[op.output])
        for name in self.truncated:
            total += math.prod(self.g.shapes[name]) * (ring[name] + ring[name + _TRUNC_SUFFIX])
        return float(total)

    def layout(self) -> tuple[dict[str, int], dict[int, int], dict[str, int]]:
        """Fit the rings, then every tensor's scale, every term's frac_w or shift
        (by term id) and every tensor's ring."""
        self._fit()
        frac, term_frac, _ = self._scales()
        # Garbled-circuit inputs (truncated tensors included) need their magnitude;
        # everything else gets the largest ring its consumers need (module doc).
        ring: dict[str, int] = {name: self._bits(name, frac) for name in self._gc_inputs()}
        for op in reversed(self.g.ops):
            if isinstance(op, FloatRelu):
                continue
            out_ring = ring.setdefault(op.output, 1)
            for t in op.terms:
                x = self.src(t.input, op.output)
                need = out_ring if t.op != "scale" else max(out_ring - term_frac[id(t)], 1)
                ring[x] = max(ring.get(x, 1), need)
        for name in self.free_in:
            ring.setdefault(name, 1)
        ring.setdefault(INPUT, 1)
        too_big = {k: v for k, v in ring.items() if v > self.p.max_ring}
        if too_big:
            raise CompileError(f"rings exceed max_ring_bits={self.p.max_ring}: {too_big}")
        return frac, term_frac, ring

    def _emit(self, pixel_max: int, frac: dict[str, int], term_frac: dict[int, int],
              ring: dict[str, int]) -> Plan:
        g = self.g
        tensors: dict[str, TensorSpec] = {}

        def declare(name: str, shape: tuple[int, ...]) -> None:
            tensors[name] = TensorSpec(name, tuple(shape), ring[name], frac[name])

        declare(INPUT, g.shapes[INPUT])
        steps: list[Step] = []
        for op in g.ops:
            if isinstance(op, FloatRelu):
                declare(op.output, g.shapes[op.output])
                src = self.src(op.input, op.output)
                steps.append(ReluStep(src, op.output, frac[src] - frac[op.output],
                                      tuple(op.source)))
                continue
            declare(op.output, g.shapes[op.output])
            terms: list[Term] = []
            for t in op.terms:
                terms.append(self._quantise_term(t, self.src(t.input, op.output), term_frac[id(t)]))
            shift = self._shift_of(op.output, frac)
            offset = self._offset(op.output, shift)
            bias = _to_ring(op.bias, frac[op.output], offset, ring[op.output])
            steps.append(LinearStep(op.output, terms, tuple(op.source), bias))
            if op.output in self.truncated:
                out = op.output + _TRUNC_SUFFIX
                declare(out, g.shapes[op.output])
                steps.append(TruncateStep(op.output, out, frac[op.output] - frac[out],
                                          self.truncated[op.output][1]))
        out = self.src(g.output)
        steps.append(OutputStep(out, frac[out], tuple(g.output_shape)))
        return Plan(INPUT, pixel_max, tensors, steps, {})

    def _quantise_term(self, t: FloatTerm, src: str, fw: int) -> Term:
        if t.op == "scale":
            return ScaleTerm(src, fw)
        assert t.weight is not None
        w = np.rint(t.weight * 2.0**fw)
        if np.abs(w).max(initial=0) >= 2**40:
            raise CompileError(f"weights of a term reading '{t.input}' need more than 40 bits")
        wi = w.astype(np.int64)
        if t.op == "conv2d":
            o, cg, kh, kw = wi.shape
            return ConvTerm(src, (o, cg, kh, kw), t.stride, t.padding, t.groups, fw, wi)
        return FCTerm(src, (wi.shape[0], wi.shape[1]), fw, wi)


def _to_ring(bias: np.ndarray, frac: int, offset: int, bits: int) -> np.ndarray:
    """``round(bias * 2^frac) + offset`` as the centred representative mod ``2^bits`` (int64)."""
    scaled = np.rint(bias * 2.0**frac)
    modulus = 2.0**bits
    residue = np.fmod(scaled, modulus)  # exact for floats
    residue = np.where(residue < 0, residue + modulus, residue)
    as_int = residue.astype(np.uint64)
    as_int = (as_int + np.uint64(offset % (1 << bits))) & np.uint64((1 << bits) - 1)
    signed = as_int.astype(np.int64)
    half = np.int64(1) << np.int64(bits - 1)
    return np.where(signed >= half, signed - (np.int64(1) << np.int64(bits)), signed)
