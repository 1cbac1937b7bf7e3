"""Exact cleartext execution of a Plan with the protocol's ring arithmetic; fixed-point codec.

Every tensor value is held as ``uint64`` residues. Arithmetic mod ``2^l`` for any
``l <= 64`` is plain ``uint64`` arithmetic (which wraps mod ``2^64``) followed by
masking to the low ``l`` bits, because ``2^l`` divides ``2^64``.

Convolutions and matrix products (a matrix product is a 1x1 convolution) run
in the native core (``pie._core.ring_conv2d``): plain ``uint64`` products and
sums, which wrap mod ``2^64`` and are therefore exact, in one call with the
GIL released; products of at most ``SMALL_PRODUCT_MACS`` multiply-adds on one
thread, so no thread team is woken between protocol rounds. On a CPU without
AVX-512 the larger ones are computed with float64 arithmetic instead (torch's
CPU convolution and BLAS matrix products), split into limbs so that every
float operation is exact.

Exactness argument (``_limb_bits``, ``_limbs``). Let ``S = max_o sum_k |w[o, k]|``
be the largest L1 norm of a weight row (all the weights of one output). The
input (a residue mod ``2^l``, taken as its centred representative ``x``) has
``|x| < 2^m`` where ``m`` is the bit length of the batch's largest ``|x|``
(``m <= l``). It is split as ``x = sum_j c_j * 2^(b*j)`` with ``n =
max(1, ceil(m / b))`` limbs: limbs ``j < n-1`` are the unsigned fields
``(x >> b*j) & (2^b - 1)`` in ``[0, 2^b)`` and the top limb is the arithmetic
shift ``x >> b*(n-1)``, so ``|c_top| <= 2^(m-b*(n-1)) <= 2^b``. Hence every
partial sum of ``sum_k w[o,k] * c_j[k]`` (zero padding adds zeros), in whatever
order it is accumulated, is an integer of magnitude ``<= S * 2^b <= 2^53``; all
such integers are float64 numbers, so every product and every addition is
exact, whatever the summation order or blocking. This holds for any algorithm
that only multiplies weights by inputs and adds the products -- direct or
im2col + GEMM convolution, which is what torch uses on the CPU for float64 (its
transform-based algorithms, Winograd and FFT, are not used for float64); the
tests check the result against plain integer arithmetic. The limb results are
converted to int64 exactly and recombined as ``sum_j r_j * 2^(b*j)`` in
``uint64``, which wraps mod ``2^64`` and is therefore exact mod ``2^l``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._native import core
from .graph import last_uses
from .steps import (
    ConvTerm, FCTerm, LinearStep, OutputStep, ReluStep, Step, TensorSpec, TruncateStep, weight_dtype,
)

__all__ = [
    "mask",
    "reduce",
    "to_signed",
    "relu_shift",
    "truncate_shift",
    "RingWeight",
    "conv2d_ring",
    "conv2d_limbs",
    "fc_limbs",
    "native_threads",
    "native_work",
    "SMALL_PRODUCT_MACS",
    "fc_ring",
    "term_product",
    "prepare_weight",
    "execute",
    "batched",
    "encode_pixels",
    "decode",
]

_FLOAT_EXACT_BITS = 53


def mask(value: np.ndarray, bits: int) -> np.ndarray:
    """``value mod 2^bits`` for a uint64 array (``bits`` in 1..64)."""
    if bits >= 64:
        return value
    return value & np.uint64((1 << bits) - 1)


def reduce(values: np.ndarray, bits: int) -> np.ndarray:
    """Reduce any integer array (signed or unsigned, any width) mod ``2^bits`` to uint64."""
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return mask(arr, bits)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"expected an integer array, got dtype {arr.dtype}")
    return mask(arr.astype(np.int64).view(np.uint64), bits)


def to_signed(value: np.ndarray, bits: int) -> np.ndarray:
    """The centred representative in ``[-2^(bits-1), 2^(bits-1))`` of residues mod ``2^bits``."""
    v = mask(value, bits)
    if bits >= 64:
        return v.view(np.int64)
    s = v.astype(np.int64)
    return s - ((s >> np.int64(bits - 1)) << np.int64(bits))


def relu_shift(x: np.ndarray, bits_in: int, shift: int, bits_out: int) -> np.ndarray:
    """The ReLU circuit: ``(ReLU(x as signed mod 2^bits_in) >> shift) mod 2^bits_out``."""
    s = to_signed(x, bits_in)
    return mask((np.maximum(s, 0) >> np.int64(shift)).view(np.uint64), bits_out)


def truncate_shift(x: np.ndarray, bits_in: int, shift: int, bits_out: int) -> np.ndarray:
    """The truncation circuit: ``((x as signed mod 2^bits_in) >> shift) mod 2^bits_out`` (floor)."""
    s = to_signed(x, bits_in)
    return mask((s >> np.int64(shift)).view(np.uint64), bits_out)


def _limb_bits(weight: np.ndarray) -> int:
    """Largest limb width ``b`` with ``max_row_L1(weight) * 2^b <= 2^53`` (see module doc)."""
    flat = weight.reshape(weight.shape[0], -1)
    # In float64 (exact here: |w| < 2^53), a few rows at a time: a narrow
    # type's abs could wrap, and a whole dense layer's copy is hundreds of MB.
    step = max(1, (1 << 20) // max(1, flat.shape[1]))
    rows = np.concatenate([np.abs(flat[i:i + step], dtype=np.float64).sum(axis=1)
                           for i in range(0, flat.shape[0], step)] or [np.zeros(0)])
    l1 = int(rows.max()) if rows.size else 0
    if l1 == 0:
        return _FLOAT_EXACT_BITS
    b = _FLOAT_EXACT_BITS - math.ceil(math.log2(l1))
    if b < 1:
        raise ValueError(f"weights too large for exact float64 limbs (row L1 norm {l1})")
    return b


def _limbs(x: np.ndarray, bits: int, b: int) -> list[np.ndarray]:
    """Split residues mod ``2^bits`` into float64 limbs of width ``b`` (module doc)."""
    s = to_signed(x, bits)
    largest = max(int(s.max()), -int(s.min())) if s.size else 0  # Python ints: exact
    n = max(1, -(-largest.bit_length() // b))
    out = []
    for j in range(n - 1):
        out.append(((s >> np.int64(b * j)) & np.int64((1 << b) - 1)).astype(np.float64))
    out.append((s >> np.int64(b * (n - 1))).astype(np.float64))
    return out


def _recombine(results: list[torch.Tensor], b: int, bits: int) -> np.ndarray:
    acc: np.ndarray | None = None
    for j, r in enumerate(results):
        part = r.numpy().astype(np.int64).view(np.uint64) << np.uint64(b * j)
        acc = part if acc is None else acc + part
    assert acc is not None
    return mask(acc, bits)


# Products of at most this many multiply-adds run natively on one thread: a
# second thread's wake-up costs more than it saves. Larger ones run natively on
# every core where the CPU has AVX-512 (faster than torch's float64 convolution
# at every DRD_C100 and ResNet-18 size: DRD_C100_230K's online linear steps on a
# server thread 46.8 -> 28.6 ms), else on torch's float64 limbs.
SMALL_PRODUCT_MACS = 1 << 22


@dataclass(frozen=True)
class RingWeight:
    """An integer weight prepared for :func:`conv2d_ring` / :func:`fc_ring`:
    its shape and limb width, its taps laid out for the native kernel,
    (C/groups, kh, kw, O) (an fc weight (O, K) as (K, 1, 1, O)), in the
    narrowest of int16 / int32 / int64 that holds them (a wide layer at small
    resolution is bound by reading its taps), and its float64 tensor for the
    limb path, made on first use (a folded dense layer's would be hundreds of
    MB that a CPU with AVX-512 never reads). Preparing a wide layer's weight
    costs about as much as its product, so a server prepares each weight once."""

    shape: tuple[int, ...]
    limb_bits: int
    taps: np.ndarray
    _floats: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def tensor(self) -> torch.Tensor:
        """The weight as float64, (O, C/groups, kh, kw) or (O, K)."""
        if "tensor" not in self._floats:
            as_conv = self.taps.transpose(3, 0, 1, 2).astype(np.float64)
            self._floats["tensor"] = torch.from_numpy(as_conv.reshape(self.shape).copy())
        return self._floats["tensor"]


def prepare_weight(weight: np.ndarray) -> RingWeight:
    """Prepare an integer weight (any of the Plan's weight types) for repeated
    exact ring products."""
    w = np.asarray(weight)
    if w.dtype.kind != "i":
        raise ValueError(f"weight must be a signed integer array, got {w.dtype}")
    largest = max(-int(w.min(initial=0)), int(w.max(initial=0)))
    as_conv = w if w.ndim == 4 else w.reshape(*w.shape, 1, 1)
    taps = np.ascontiguousarray(as_conv.transpose(1, 2, 3, 0), dtype=weight_dtype(largest))
    return RingWeight(w.shape, _limb_bits(w), taps)


def native_threads(macs: int) -> int | None:
    """Threads the native core computes a product of ``macs`` multiply-adds
    with (0: every core), or None when it runs on torch's float64 limbs."""
    if macs <= SMALL_PRODUCT_MACS:
        return 1
    return 0 if core.ring_conv_vectorised() else None


def native_work(images: int, groups: int, out_per_group: int, pixels: int, taps: int) -> tuple[int, int]:
    """(multiply-adds, output elements) the native kernel computes for a product
    with ``pixels`` output pixels per image and ``taps`` taps per output.

    It works in vectors of 8 output channels per group (a group's last
    ``out_per_group % 8`` channels take a scalar loop, counted as a whole
    vector), so a product pays for whole vectors: a classifier of 100 outputs
    costs 104 multiply-adds per input."""
    vector_channels = -(-out_per_group // 8) * 8
    return (images * groups * pixels * vector_channels * taps,
            images * groups * pixels * out_per_group)


def _prepared(weight: np.ndarray | RingWeight) -> RingWeight:
    return weight if isinstance(weight, RingWeight) else prepare_weight(weight)


def conv2d_ring(
    x: np.ndarray,
    weight: np.ndarray | RingWeight,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
    bits: int,
) -> np.ndarray:
    """Exact ``conv2d(x, weight) mod 2^bits`` with zero padding.

    Args:
        x: uint64 residues (only ``x mod 2^bits`` matters), shape (N, C, H, W).
        weight: int64, shape (O, C // groups, kh, kw), or its :func:`prepare_weight`.
    Returns:
        uint64 residues mod ``2^bits``, shape (N, O, Ho, Wo).
    """
    w = _prepared(weight)
    threads = native_threads(_conv_macs(x.shape, w.shape, stride, padding))
    if threads is not None:
        return _conv_native(x, w.taps, stride, padding, groups, bits, threads=threads)
    return conv2d_limbs(x, w, stride, padding, groups, bits)


def _conv_macs(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: tuple[int, int],
               padding: tuple[int, int]) -> int:
    (n, _, h, wd), (o, cg, kh, kw) = x_shape, w_shape
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (wd + 2 * padding[1] - kw) // stride[1] + 1
    return n * o * ho * wo * cg * kh * kw


def conv2d_limbs(x: np.ndarray, w: RingWeight, stride: tuple[int, int], padding: tuple[int, int],
                 groups: int, bits: int) -> np.ndarray:
    """The convolution on float64 limbs (module doc): what :func:`conv2d_ring`
    runs for large products on a CPU without AVX-512; public for measuring it."""
    limbs = torch.from_numpy(np.concatenate(_limbs(x, bits, w.limb_bits)))
    out = F.conv2d(limbs, w.tensor, None, stride, padding, 1, groups)
    return _recombine(list(out.split(x.shape[0])), w.limb_bits, bits)


def _conv_native(x: np.ndarray, taps: np.ndarray, stride: tuple[int, int], padding: tuple[int, int],
                 groups: int, bits: int, simd: bool = True, threads: int = 1) -> np.ndarray:
    """The convolution in the native core, exact mod 2^64 (taps: the weight's
    residues, (C/groups, kh, kw, O))."""
    return core.ring_conv2d(np.ascontiguousarray(x, dtype=np.uint64), taps, tuple(stride), tuple(padding),
                            groups, bits, threads=threads, simd=simd)


def fc_ring(x: np.ndarray, weight: np.ndarray | RingWeight, bits: int) -> np.ndarray:
    """Exact ``x.flatten(1) @ weight.T mod 2^bits`` (x: uint64 (N, ...), weight:
    int64 (O, K) or its :func:`prepare_weight`)."""
    w = _prepared(weight)
    flat = x.reshape(x.shape[0], -1)
    threads = native_threads(flat.size * w.shape[0])
    if threads is not None:
        return _conv_native(flat.reshape(*flat.shape, 1, 1), w.taps, (1, 1), (0, 0), 1, bits,
                            threads=threads).reshape(x.shape[0], -1)
    return fc_limbs(flat, w, bits)


def fc_limbs(flat: np.ndarray, w: RingWeight, bits: int) -> np.ndarray:
    """The matrix product on float64 limbs (module doc), as :func:`conv2d_limbs`."""
    results = [torch.from_numpy(limb) @ w.tensor.T for limb in _limbs(flat, bits, w.limb_bits)]
    return _recombine(results, w.limb_bits, bits)


def term_product(x: np.ndarray, term: ConvTerm | FCTerm, weight: np.ndarray | RingWeight,
                 bits: int) -> np.ndarray:
    """A conv or fc term's contribution ``W(x) * 2^term.shift mod 2^bits``
    (uint64 residues): the product mod ``2^(bits - shift)``, then shifted."""
    b = bits - term.shift
    if isinstance(term, ConvTerm):
        product = conv2d_ring(x, weight, term.stride, term.padding, term.groups, b)
    else:
        product = fc_ring(x, weight, b)
    return product << np.uint64(term.shift) if term.shift else product


def execute(
    input: str,
    tensors: Mapping[str, TensorSpec],
    steps: Sequence[Step],
    x: np.ndarray,
    *,
    keep_all: bool = False,
    wide: bool = False,
    chunk: int = 16,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Run a plan (its input name, tensors and steps, with weights) on a batch of
    input residues, ``chunk`` images at a time (bounding the memory of wide layers).

    Args:
        x: integer array (N, *input_shape), N >= 1; reduced mod the input's ring.
        keep_all: keep every tensor (else only the output's input tensor).
        wide: compute linear steps mod ``2^64`` instead of mod their rings and
            count, at every garbled-circuit input and the output, the elements
            whose (64-bit) value does not fit the tensor's ring. The results are
            identical (reduction mod ``2^l`` commutes with the linear steps); the
            counts detect calibration overflow as long as true values fit 64 bits.

    Returns:
        (tensors by name as uint64 residues, overflow counts by tensor name).
    """
    last_use = None if keep_all else last_uses(steps)
    parts: list[dict[str, np.ndarray]] = []
    overflow: dict[str, int] = {}
    weights: dict[int, RingWeight] = {}  # prepared once for all chunks (a folded head holds 10^8)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk]
        parts.append(_execute(input, tensors, steps, part, last_use, wide, overflow, weights))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return merged, overflow


def _execute(
    input: str,
    specs: Mapping[str, TensorSpec],
    steps: Sequence[Step],
    x: np.ndarray,
    last_use: dict[int, list[str]] | None,
    wide: bool,
    overflow: dict[str, int],
    weights: dict[int, RingWeight],
) -> dict[str, np.ndarray]:
    """One chunk of :func:`execute`, adding to ``overflow``; ``last_use`` None keeps every
    tensor; ``weights``: the terms' prepared weights by term id, filled on first use."""

    def weight(term: ConvTerm | FCTerm) -> RingWeight:
        if id(term) not in weights:
            weights[id(term)] = prepare_weight(_weight(term))
        return weights[id(term)]

    def ring(name: str) -> int:
        return 64 if wide else specs[name].ring_bits

    values: dict[str, np.ndarray] = {input: reduce(x, ring(input))}

    def gc_input(name: str) -> np.ndarray:
        v = values[name]
        if wide:
            bits = specs[name].ring_bits
            s = v.view(np.int64)
            bad = int(np.count_nonzero((s >= (1 << (bits - 1))) | (s < -(1 << (bits - 1)))))
            overflow[name] = overflow.get(name, 0) + bad
        return v

    for index, step in enumerate(steps):
        if isinstance(step, LinearStep):
            bits = ring(step.output)
            if step.bias is None:
                raise ValueError("this plan has no weights (it is a public plan)")
            bias = step.bias.astype(np.int64).view(np.uint64)
            acc = np.broadcast_to(bias, (x.shape[0], *bias.shape)).copy()
            for term in step.terms:
                src = values[term.input]
                if term.op == "scale":
                    acc += src << np.uint64(term.shift)
                else:
                    acc += term_product(src, term, weight(term), bits).reshape(acc.shape)
            values[step.output] = mask(acc, bits)
        elif isinstance(step, ReluStep):
            src = gc_input(step.input)
            values[step.output] = relu_shift(
                src, specs[step.input].ring_bits, step.shift, ring(step.output)
            )
        elif isinstance(step, TruncateStep):
            src = gc_input(step.input)
            values[step.output] = truncate_shift(
                src, specs[step.input].ring_bits, step.shift, ring(step.output)
            )
        elif isinstance(step, OutputStep):
            values[step.input] = mask(gc_input(step.input), specs[step.input].ring_bits)
        if last_use is not None:
            for name in last_use.get(index, ()):
                values.pop(name, None)
    return values


def _weight(term: ConvTerm | FCTerm) -> np.ndarray:
    if term.weight is None:
        raise ValueError("this plan has no weights (it is a public plan)")
    return term.weight


def batched(x: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``x`` as a numpy batch (N, *shape), N >= 1: one item gains a batch axis.

    Raises:
        ValueError: any other shape (the message calls the argument ``what``).
    """
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == len(shape):
        arr = arr[None]
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape) or arr.shape[0] == 0:
        raise ValueError(
            f"{what} must have shape {tuple(shape)} or (N, {', '.join(map(str, shape))}), "
            f"got {tuple(np.shape(x))}"
        )
    return arr


def encode_pixels(x: np.ndarray | torch.Tensor, shape: tuple[int, ...],
                  pixel_max: int) -> np.ndarray:
    """Images with values in [0, 1], ``shape`` or (N, *shape), to integer pixels
    ``round(x * pixel_max)`` (int64, batched).

    Raises:
        ValueError: a wrong shape, or values that are not finite numbers in
            [0, 1] (an 8-bit image must be divided by 255 first: nothing is
            clipped, which would silently change the image).
    """
    arr = batched(x, shape, "x")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"x must be a numeric image with values in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("x must hold finite values in [0, 1]; it contains NaN or infinity")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"x must hold values in [0, 1] (an image scaled to [0, 1]); "
                         f"got values in [{lo:g}, {hi:g}]")
    return np.rint(arr * pixel_max).astype(np.int64)


def decode(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Residues of tensor ``spec`` to floats (``signed / 2^frac_bits``)."""
    return to_signed(np.asarray(y, dtype=np.uint64), spec.ring_bits) / float(2**spec.frac_bits)
