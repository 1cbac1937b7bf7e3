"""The Plan's plain data types: tensors, terms and steps, and the sizes of their circuits.

A Plan is a static, topologically ordered list of steps over named tensors. Every
tensor has a shape (no batch dimension), a ring ``Z_{2^ring_bits}`` and a fixed-
point scale ``frac_bits`` (an integer ``v`` stands for ``signed(v) / 2^frac_bits``).

Step kinds (``step.kind``):

``"linear"`` (:class:`LinearStep`)
    ``y = sum_i term_i(x_i) + bias  mod 2^ring(y)``. Each term applies one
    primitive to one input tensor: ``"conv2d"`` (:class:`ConvTerm`: integer
    weights, stride, zero padding, groups; depthwise is ``groups == channels``),
    ``"fc"`` (:class:`FCTerm`: integer weights over the input flattened in C-major
    order; weights are int16, int32 or int64, the narrowest that holds them:
    see :func:`weight_dtype`) or ``"scale"`` (:class:`ScaleTerm`: ``x * 2^shift``, local to each
    party's share, also a free lift to a larger ring). ``bias`` is an int64
    tensor of the output's full shape (the centred representative mod the
    output ring). Conv and FC terms are computed with HE and multiplied by
    ``2^shift`` (their own ``shift``, 0 unless the term is aligned to a larger
    output scale): the product is then needed mod ``2^(ring(y) - shift)`` only,
    which is the ring its HE runs in (:func:`he_ring_bits`) and the least ring
    of its input. A scale term's input ring is likewise at least
    ``ring(y) - shift``. Linear steps never truncate.
``"relu"`` (:class:`ReluStep`)
    ``y = (ReLU(x as signed mod 2^ring(x)) >> shift) mod 2^ring(y)`` with an
    arithmetic (floor) shift, exactly the garbled circuit. Rounding to nearest is
    obtained by adding ``2^(shift-1)`` into the producing step's bias.
``"truncate"`` (:class:`TruncateStep`)
    ``y = ((x as signed mod 2^ring(x)) >> shift) mod 2^ring(y)``: a garbled
    circuit inserted only where a ReLU-free chain would outgrow the ring limit.
``"output"`` (:class:`OutputStep`)
    The logits tensor; decode as ``signed(v) / 2^frac_bits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

import numpy as np

__all__ = [
    "MAX_HE_RING_BITS",
    "OUTPUT_REVEALS",
    "ConvTerm",
    "FCTerm",
    "LinearStep",
    "OutputStep",
    "PlanFormatError",
    "ReluStep",
    "ScaleTerm",
    "Step",
    "TensorSpec",
    "Term",
    "TruncateStep",
    "WEIGHT_DTYPES",
    "he_ring_bits",
    "relu_and_gates",
    "truncate_and_gates",
    "weight_dtype",
]

MAX_HE_RING_BITS = 59

# The integer types a term's weights may be stored in: a folded dense layer of
# tens of millions of 12-bit weights takes a quarter of int64's memory and file.
WEIGHT_DTYPES = (np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))


def weight_dtype(largest: int) -> np.dtype:
    """The narrowest of :data:`WEIGHT_DTYPES` that holds ``-largest .. largest``."""
    for t in WEIGHT_DTYPES:
        if largest <= np.iinfo(t).max:
            return t
    raise ValueError(f"a weight of magnitude {largest} does not fit int64")


class PlanFormatError(ValueError):
    """A malformed or inconsistent plan (file or object)."""


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor: shape (no batch), ring ``Z_{2^ring_bits}``, scale ``2^-frac_bits``."""

    name: str
    shape: tuple[int, ...]
    ring_bits: int
    frac_bits: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(eq=False)
class ConvTerm:
    """2-D convolution (zero padding) of one input tensor, computed with HE, times ``2^shift``."""

    input: str
    weight_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    frac_w: int
    weight: np.ndarray | None = None
    shift: int = 0
    op: str = field(default="conv2d", init=False)


@dataclass(eq=False)
class FCTerm:
    """Fully connected layer over the input flattened in C-major order, computed with
    HE, times ``2^shift``."""

    input: str
    weight_shape: tuple[int, int]
    frac_w: int
    weight: np.ndarray | None = None
    shift: int = 0
    op: str = field(default="fc", init=False)


@dataclass(frozen=True)
class ScaleTerm:
    """``x * 2^shift``: local on shares (identity shortcut, scale alignment, ring lift)."""

    input: str
    shift: int
    op: str = field(default="scale", init=False)


Term = Union[ConvTerm, FCTerm, ScaleTerm]


def he_ring_bits(term: ConvTerm | FCTerm, out_ring_bits: int) -> int:
    """The ring an HE term's product is computed in: its step's output ring less
    the term's shift (the shift's high bits fall off the output ring)."""
    return out_ring_bits - term.shift


@dataclass(eq=False)
class LinearStep:
    """``output = sum(terms) + bias mod 2^ring(output)``; ``source`` names the fused graph nodes."""

    output: str
    terms: list[Term]
    source: tuple[str, ...] = ()
    bias: np.ndarray | None = None
    kind: str = field(default="linear", init=False)

    @property
    def inputs(self) -> list[str]:
        return [t.input for t in self.terms]


@dataclass(frozen=True)
class ReluStep:
    """``output = (ReLU(signed input) >> shift) mod 2^ring(output)`` (garbled circuit)."""

    input: str
    output: str
    shift: int
    source: tuple[str, ...] = ()
    kind: str = field(default="relu", init=False)

    @property
    def inputs(self) -> list[str]:
        return [self.input]


@dataclass(frozen=True)
class TruncateStep:
    """``output = (signed input >> shift) mod 2^ring(output)`` (garbled circuit)."""

    input: str
    output: str
    shift: int
    reason: str = ""
    kind: str = field(default="truncate", init=False)

    @property
    def inputs(self) -> list[str]:
        return [self.input]


OUTPUT_REVEALS = ("logits", "label")


@dataclass(frozen=True)
class OutputStep:
    """The network output: decode ``input`` as ``signed / 2^frac_bits``, reshaped to ``shape``.

    ``reveal`` says what the client learns: ``"logits"`` (the server sends its
    share of them), or ``"label"`` (a garbled argmax gives the client only the
    index of the largest logit, lowest among equals, and the logits never
    leave the shares)."""

    input: str
    frac_bits: int
    shape: tuple[int, ...]
    reveal: str = "logits"
    kind: str = field(default="output", init=False)

    @property
    def inputs(self) -> list[str]:
        return [self.input]


Step = Union[LinearStep, ReluStep, TruncateStep, OutputStep]


def relu_and_gates(bits_in: int, bits_out: int, shift: int = 0) -> int:
    """AND gates of the ReLU circuit (gc.relu_circuit): add the shares, zero the
    negative values (one AND per value bit that survives the shift), subtract the mask."""
    return (bits_in - 1) + min(bits_out, bits_in - 1 - shift) + (bits_out - 1)


def truncate_and_gates(bits_in: int, bits_out: int) -> int:
    """AND gates of the truncation circuit: add shares, subtract the mask (~l_in + l_out)."""
    return (bits_in - 1) + (bits_out - 1)
