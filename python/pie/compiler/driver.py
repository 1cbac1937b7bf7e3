"""The compiler's entry point: :func:`compile`, the pipeline from a float network
to a fixed-point :class:`~pie.plan.Plan`, and what the Plan reveals (:data:`REVEALED_FIELDS`).

Pipeline: trace with ``torch.fx`` (:mod:`.tracing`) -> lower to linear steps and
ReLUs (batch norm, residual adds, pooling and input normalisation folded;
:mod:`.lowering`) -> fold the ReLU-free chain that ends at the output into one
layer, and the ReLU-free region that starts at the input into dense layers of the
input -> calibrate magnitudes on a batch and search the precision
(:mod:`.precision`) -> assign scales, shifts and rings and quantise
(:mod:`.assign`).

Fixed-point policy (all of it public and recorded in ``plan.policy``):

* The input is integer pixels (``frac_bits = 0``); the normalisation is in the
  first layer's weights and bias map.
* **Precision from accuracy.** Each conv / fc term gets ``b_w`` significant
  weight bits, each ReLU output ``b_a`` significant bits of its calibrated
  maximum: the fewest, measured as the garbled-circuit work the rings imply,
  whose Plan stays within a :class:`~pie.compiler.precision.Tolerance` of the
  float model on the calibration images.
* **Folding.** Culled last stages, the pool and the classifier form a ReLU-free
  chain whose composition is one affine map; it is folded into one fully
  connected layer, quantised once (:func:`pie.compiler.folding.fold_linear_tail`),
  instead of multiplying the scales of every layer on the way. A culled first
  stage likewise becomes one dense layer of the input per tensor the network
  reads from it (:func:`pie.compiler.folding.fold_linear_head`), where those
  matrices fit ``fold_head_weights``: the residual stream then starts at one
  product's scale, and no truncation is needed before the first ReLU.
  Projection shortcuts (1x1 convolutions) and the classifier are composed into
  the terms of the linear ops they read (:func:`pie.compiler.folding.fold_pointwise`,
  exact: a 1x1 convolution commutes with its input's padding): on a residual
  stream that never passes a ReLU every product then reads a ReLU output and
  is quantised once, so the stream's scale does not grow stage by stage.
* Linear steps never truncate; ReLU shifts choose the scales; rings are sized
  from the calibrated magnitudes, and a ring over ``max_ring_bits`` is fitted by
  lowering ``frac_w`` or by a truncation step, each reported with its reason and
  cost (:mod:`.assign` has the details).

What the public plan reveals beyond the architecture is recorded in
``plan.policy["reveals"]`` (:data:`REVEALS`, one entry per field in
:data:`REVEALED_FIELDS`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..plan import MAX_HE_RING_BITS, OUTPUT_REVEALS, Plan
from .assign import Assigner, Params
from .folding import fold_linear_head, fold_linear_tail, fold_pointwise
from .lowering import CompileError, UnsupportedOpError, lower
from .precision import DEFAULT_CALIBRATION_IMAGES, Search, Tolerance, calibrate, calibration_pixels
from .tracing import trace

# compile() and the names of its interface: what the package exports.
__all__ = ["CompileError", "DEFAULT_CALIBRATION_IMAGES", "REVEALED_FIELDS", "Tolerance",
           "UnsupportedOpError", "compile"]

_log = logging.getLogger(__name__)

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
    "policy.composed_pointwise": "which linear ops had a projection shortcut or the classifier "
                                 "composed into the terms it reads",
    "policy.folded_head": "which tensors of the ReLU-free region at the input were folded into dense "
                          "layers of the input",
    "policy.ring_margin_bits": "the compile option",
    "policy.max_ring_bits": "the compile option",
    "policy.round_cost_and_gates": "the compile option",
    "policy.frac_w_lowered": "the layers whose frac_w was lowered to fit a ring, and by how much",
    "policy.calibration": "where the calibration images came from (e.g. the checkpoint's sample, a "
                          "file, or random images), not the images",
    "policy.reveals": "this list",
}
REVEALS = "; ".join(f"{k}: {v}" for k, v in REVEALED_FIELDS.items())


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
    fold_head_weights: int = 1 << 28,
    fold_pointwise_weights: int = 1 << 24,
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
        fold_head_weights: the most weights (entries, all matrices together) that
            the ReLU-free region starting at the input (a culled first stage) is
            folded into, one dense fully connected layer of the input per tensor
            the rest of the network reads from it (0: never fold). The default
            (2^28) folds the culled stage 1 of every DRD_C100 network: 25M
            weights at 16x16 (7K, 12K, 14K), 50M (29K), 100M at 32x32 and
            half width (49K, 57K), 200M at full width (115K, 230K: ~0.4 GB of
            int16 weights, the server's online products ~11 ms on two cores,
            and ~7 s more offline HE work, against a truncation of the whole
            stage-1 output, its extra online round and ~40% of the online
            bytes). Larger ones (64x64 inputs) keep a truncation instead.
        fold_pointwise_weights: the largest dense matrix (entries) that a
            composition of a projection shortcut or the classifier with the
            terms it reads may make (0: never compose).
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
    if min(search_budget, fold_tail_weights, fold_head_weights, fold_pointwise_weights) < 0:
        raise ValueError("search_budget, fold_tail_weights, fold_head_weights and "
                         "fold_pointwise_weights must be >= 0")
    if output not in OUTPUT_REVEALS:
        raise ValueError(f"output must be one of {OUTPUT_REVEALS}, got {output!r}")
    tol = tolerance if tolerance is not None else Tolerance()
    mean, std = input_norm if input_norm is not None else (None, None)
    traced = trace(model, input_shape)
    graph = lower(traced, pixel_max, mean, std)
    shape = traced.input_shape
    folded = fold_linear_tail(graph, fold_tail_weights) if fold_tail_weights else None
    folded_head = fold_linear_head(graph, fold_head_weights) if fold_head_weights else None
    composed = fold_pointwise(graph, fold_pointwise_weights) if fold_pointwise_weights else []

    pixels, calibration_desc = calibration_pixels(calibration, shape, pixel_max)
    maxabs, want = calibrate(graph, pixels)

    params = Params(frac_bits, ring_margin_bits, max_ring_bits, round_cost_and_gates)
    search = Search(graph, maxabs, params, pixel_max, pixels, want, tol)
    prec = search.run(weight_bits, act_bits, search_budget)
    assigner = Assigner(graph, maxabs, params, prec, search.weights)
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
        "folded_head": folded_head,
        "composed_pointwise": composed,
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
