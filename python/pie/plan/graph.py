"""Walks over a Plan's steps: structural checks, garbled rounds and waves, tensor lifetimes, cost.

Every function takes the parts of a plan it reads (input name, tensors, steps),
so the interpreter and the serialisation share them without the Plan class.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from .steps import (
    MAX_HE_RING_BITS, WEIGHT_DTYPES, ConvTerm, LinearStep, OutputStep, PlanFormatError, ReluStep,
    ScaleTerm, Step, TensorSpec, TruncateStep, he_ring_bits, relu_and_gates, truncate_and_gates,
)

__all__ = ["gc_cost", "has_weights", "last_uses", "output_step", "relu_count", "rounds",
           "schedule", "validate", "without_weights"]


def output_step(steps: Sequence[Step]) -> OutputStep:
    """The plan's (one) output step."""
    return next(s for s in steps if isinstance(s, OutputStep))


def has_weights(steps: Sequence[Step]) -> bool:
    """False where any weight or bias was stripped (a public plan)."""
    return all(
        s.bias is not None and all(getattr(t, "weight", 0) is not None for t in s.terms)
        for s in steps
        if isinstance(s, LinearStep)
    )


def without_weights(steps: Sequence[Step]) -> list[Step]:
    """The steps with every weight and bias dropped (the public steps)."""
    return [
        LinearStep(s.output, [t if isinstance(t, ScaleTerm) else dataclasses.replace(t, weight=None)
                              for t in s.terms], s.source)
        if isinstance(s, LinearStep) else s
        for s in steps
    ]


def relu_count(tensors: Mapping[str, TensorSpec], steps: Sequence[Step]) -> int:
    """Number of ReLUs one inference evaluates."""
    return sum(tensors[s.output].numel for s in steps if isinstance(s, ReluStep))


def gc_cost(tensors: Mapping[str, TensorSpec], steps: Sequence[Step]) -> dict[str, int]:
    """Garbled-circuit work per inference: elements and AND gates of ReLUs and truncations."""
    cost = {"relus": 0, "relu_and_gates": 0, "truncations": 0, "truncate_and_gates": 0}
    for s in steps:
        if isinstance(s, (ReluStep, TruncateStep)):
            i, o = tensors[s.input], tensors[s.output]
            if isinstance(s, ReluStep):
                cost["relus"] += o.numel
                gates = relu_and_gates(i.ring_bits, o.ring_bits, s.shift)
                cost["relu_and_gates"] += o.numel * gates
            else:
                cost["truncations"] += o.numel
                cost["truncate_and_gates"] += o.numel * truncate_and_gates(i.ring_bits, o.ring_bits)
    return cost


def _depths(input: str, steps: Sequence[Step]) -> dict[str, int]:
    """Garbled rounds each tensor waits for: a linear step's output is ready with its
    latest input, a garbled step's output one round after its input."""
    depth = {input: 0}
    for s in steps:
        if isinstance(s, LinearStep):
            depth[s.output] = max(depth[t.input] for t in s.terms)
        elif isinstance(s, (ReluStep, TruncateStep)):
            depth[s.output] = depth[s.input] + 1
    return depth


def rounds(input: str, steps: Sequence[Step]) -> dict[str, int]:
    """Online garbled-circuit round of every ReLU/truncate step (by output name).

    A GC step's round is one more than the latest round among the GC steps its
    input depends on; steps with equal rounds can share one online round.
    """
    depth = _depths(input, steps)
    return {s.output: depth[s.output] for s in steps if isinstance(s, (ReluStep, TruncateStep))}


def schedule(input: str, steps: Sequence[Step]) -> list[tuple[list[int], list[int]]]:
    """The online execution order as waves ``(local, garbled)`` of step indices.

    Wave ``d`` first runs the linear steps whose inputs are ready after ``d``
    garbled rounds (the server computes them locally, no messages), then every
    garbled step of round ``d + 1`` (see :func:`rounds`) in one round trip.
    Plan order is topological, so steps within a wave keep their plan order.
    The output step is not part of any wave: it runs after the last one.
    """
    depth = _depths(input, steps)
    local: dict[int, list[int]] = {}
    garbled: dict[int, list[int]] = {}
    for i, s in enumerate(steps):
        if isinstance(s, LinearStep):
            local.setdefault(depth[s.output], []).append(i)
        elif isinstance(s, (ReluStep, TruncateStep)):
            garbled.setdefault(depth[s.input], []).append(i)
    last = max([*local, *garbled], default=0)
    return [(local.get(d, []), garbled.get(d, [])) for d in range(last + 1)]


def last_uses(steps: Sequence[Step], order: Sequence[int] | None = None) -> dict[int, list[str]]:
    """For each step index, the tensors read for the last time there (output kept)
    when the steps run in ``order`` (default: plan order)."""
    last: dict[str, int] = {}
    for i in range(len(steps)) if order is None else order:
        for name in steps[i].inputs:
            last[name] = i
    keep = output_step(steps).input
    out: dict[int, list[str]] = {}
    for name, i in last.items():
        if name != keep:
            out.setdefault(i, []).append(name)
    return out


def validate(input: str, tensors: Mapping[str, TensorSpec], steps: Sequence[Step]) -> None:
    """Check the structural invariants the protocol relies on.

    Raises:
        PlanFormatError: naming the step and tensor that break an invariant.
    """
    t = tensors
    if input not in t:
        raise PlanFormatError(f"input tensor {input!r} is not declared")
    if t[input].frac_bits != 0:
        raise PlanFormatError("the input tensor must have frac_bits 0 (integer pixels)")
    defined = {input}
    outputs = 0
    for i, s in enumerate(steps):
        where = f"step {i} ({getattr(s, 'kind', type(s).__name__)})"
        for name in s.inputs:
            if name not in defined:
                raise PlanFormatError(f"{where} reads {name!r} before it is computed")
        if isinstance(s, OutputStep):
            outputs += 1
            if t[s.input].frac_bits != s.frac_bits:
                raise PlanFormatError(f"{where}: frac_bits differs from tensor {s.input!r}")
            if math.prod(s.shape) != t[s.input].numel:
                raise PlanFormatError(f"{where}: shape {s.shape} does not match {s.input!r}")
            continue
        if s.output not in t or s.output in defined:
            raise PlanFormatError(f"{where}: output {s.output!r} undeclared or written twice")
        defined.add(s.output)
        out = t[s.output]
        if not 1 <= out.ring_bits <= 64:
            raise PlanFormatError(f"{where}: ring_bits {out.ring_bits} out of range")
        if isinstance(s, LinearStep):
            _validate_linear(where, t, s)
        else:
            src = t[s.input]
            if s.shift < 0 or src.shape != out.shape:
                raise PlanFormatError(f"{where}: bad shift or shape")
            if src.frac_bits - s.shift != out.frac_bits:
                raise PlanFormatError(f"{where}: frac_bits do not match the shift")
    if outputs != 1:
        raise PlanFormatError(f"a plan needs exactly one output step, found {outputs}")


def _validate_linear(where: str, t: Mapping[str, TensorSpec], s: LinearStep) -> None:
    out = t[s.output]
    if not s.terms:
        raise PlanFormatError(f"{where}: no terms")
    for term in s.terms:
        src = t[term.input]
        if isinstance(term, ScaleTerm):
            if term.shift < 0 or src.shape != out.shape:
                raise PlanFormatError(f"{where}: bad scale term on {term.input!r}")
            if src.frac_bits + term.shift != out.frac_bits:
                raise PlanFormatError(f"{where}: scale term frac_bits mismatch")
            if src.ring_bits < out.ring_bits - term.shift:
                raise PlanFormatError(f"{where}: ring of {term.input!r} too small")
            continue
        if not 0 <= term.shift < out.ring_bits:
            raise PlanFormatError(f"{where}: shift {term.shift} of the term on {term.input!r} "
                                  f"outside [0, {out.ring_bits})")
        product_bits = he_ring_bits(term, out.ring_bits)
        if src.ring_bits < product_bits:
            raise PlanFormatError(
                f"{where}: HE input {term.input!r} has ring {src.ring_bits} < the term's "
                f"product ring {product_bits}"
            )
        if product_bits > MAX_HE_RING_BITS:
            raise PlanFormatError(f"{where}: HE product ring {product_bits} > 59 bits")
        if src.frac_bits + term.frac_w + term.shift != out.frac_bits:
            raise PlanFormatError(f"{where}: frac_bits of {term.input!r} + frac_w + shift mismatch")
        if isinstance(term, ConvTerm):
            o, cg, kh, kw = term.weight_shape
            c, h, w = src.shape
            ho = (h + 2 * term.padding[0] - kh) // term.stride[0] + 1
            wo = (w + 2 * term.padding[1] - kw) // term.stride[1] + 1
            if cg * term.groups != c or o % term.groups or out.shape != (o, ho, wo):
                raise PlanFormatError(f"{where}: conv shapes do not fit {term.input!r}")
        else:
            if term.weight_shape != (out.numel, src.numel):
                raise PlanFormatError(f"{where}: fc shapes do not fit {term.input!r}")
        if term.weight is not None and (
            term.weight.dtype not in WEIGHT_DTYPES or term.weight.shape != term.weight_shape
        ):
            raise PlanFormatError(f"{where}: weight must be int16, int32 or int64 of shape {term.weight_shape}")
    if s.bias is not None and (s.bias.dtype != np.int64 or s.bias.shape != out.shape):
        raise PlanFormatError(f"{where}: bias must be int64 of shape {out.shape}")
