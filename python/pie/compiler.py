"""The compiler: a float network to a fixed-point :class:`~pie.plan.Plan`.

Pipeline: trace with ``torch.fx`` -> lower to linear steps and ReLUs (batch norm,
residual adds, pooling and input normalisation folded; see :mod:`pie.lowering`)
-> calibrate magnitudes on a batch -> assign scales, shifts and rings -> quantise.

Fixed-point policy (all of it public and recorded in ``plan.policy``):

* The input is integer pixels (``frac_bits = 0``); the normalisation is in the
  first layer's weights and bias map.
* Every conv / fc term has ``frac_w`` fractional weight bits, chosen from the
  layer's largest weight so that ``|w_int| < 2^(weight_bits - 1)``; fewer when
  the weights are exact with fewer (an average pool's ``1/4``). Linear steps
  never truncate: a term's output scale is ``frac(x) + frac_w``.
* Terms meet at one scale per linear step, the largest any term asks for: ReLU
  outputs (whose scale is free: the shift is chosen) ask for ``frac_bits``; an
  identity shortcut is lifted by ``x * 2^d``. Each ReLU shift is then chosen so
  its output arrives at the scale its first consumer needs, and ``2^(shift-1)``
  is added to the preceding bias so the shift rounds to nearest.
* Rings are worked out backwards. A tensor read by a garbled circuit (ReLU,
  truncation) or decoded as output needs ``bitlen(ceil(m * 2^frac)) + 1 +
  ring_margin_bits`` bits, where ``m`` is the largest magnitude seen on the
  calibration batch; a tensor read by an HE term needs the output's ring, one
  read by a scale term ``x * 2^d`` the output's ring minus ``d``.
* If a garbled-circuit input would need more than ``max_ring_bits`` (at most
  59, the largest power-of-two plaintext modulus SEAL accepts), the compiler
  walks back along the chain that sets its scale and inserts a truncation step
  (a garbled circuit, ~``l_in + l_out`` AND gates per element) on the cheapest
  tensor of that chain whose truncation to ``frac_bits`` brings it within the
  limit. This happens in culled regions and on the residual stream of bottom-
  thinned networks, which never passes a ReLU. Every truncation is reported
  with its reason and cost (``plan.summary()``, ``plan.gc_cost()``).

What the public plan reveals beyond the architecture: each layer's ``frac_w``
gives ``floor(log2 max|w|)`` of that layer (after batch-norm folding), and each
garbled-circuit input's ring gives ``log2`` of its calibrated magnitude, within
one bit. Both are recorded in ``plan.policy["reveals"]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .lowering import (
    INPUT,
    CompileError,
    FloatGraph,
    FloatLinear,
    FloatRelu,
    FloatTerm,
    UnsupportedOpError,
    lower,
)
from .plan import (
    MAX_HE_RING_BITS,
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

__all__ = ["CompileError", "UnsupportedOpError", "compile", "DEFAULT_CALIBRATION_IMAGES"]

_log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_IMAGES = 64
_TRUNC_SUFFIX = ".trunc"

REVEALS = (
    "architecture and shapes; per layer frac_w = weight_bits - 1 - ceil(log2 max|w|) "
    "(the layer's largest folded weight, to a power of two); per garbled-circuit input "
    "the ring size, i.e. log2 of its calibrated maximum magnitude plus the margin "
    "(to one bit); the positions of truncations"
)


@dataclass
class _Params:
    frac_bits: int
    weight_bits: int
    margin: int
    max_ring: int


def compile(  # noqa: A001 - the public name the package exposes
    model: nn.Module,
    input_shape: Sequence[int],
    frac_bits: int = 12,
    *,
    input_norm: tuple[Sequence[float], Sequence[float]] | None = None,
    pixel_max: int = 255,
    weight_bits: int = 12,
    ring_margin_bits: int = 2,
    max_ring_bits: int = MAX_HE_RING_BITS,
    calibration: np.ndarray | torch.Tensor | None = None,
) -> Plan:
    """Compile a float network into a fixed-point Plan.

    Args:
        model: the network (any ``nn.Module`` that ``torch.fx`` can trace, built
            from conv, batch norm, linear, ReLU, residual add, average pool and
            flatten); it is not modified.
        input_shape: one input's shape ``(C, H, W)``.
        frac_bits: fractional bits of activations (ReLU and truncation outputs).
        input_norm: ``(mean, std)`` per channel: the model expects
            ``(image - mean) / std`` for an image with values in [0, 1]. It is
            folded into the first layer, so the client sends integer pixels.
            ``None``: the model takes the image in [0, 1] directly.
        pixel_max: integer pixel range; an image ``x`` in [0, 1] is sent as
            ``round(x * pixel_max)``.
        weight_bits: significant bits (with sign) of each layer's weights.
        ring_margin_bits: bits of headroom above the calibrated magnitude of every
            garbled-circuit input (and the output).
        max_ring_bits: largest ring allowed (at most 59: HE plaintext modulus).
        calibration: images (N, C, H, W) in [0, 1] used to size the rings;
            default: 64 images of uniformly random pixels (seed 0). Pass real
            data for a trained network.

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
    if not 0 <= ring_margin_bits <= 16:
        raise ValueError(f"ring_margin_bits must be in [0, 16], got {ring_margin_bits}")
    if not 8 <= max_ring_bits <= MAX_HE_RING_BITS:
        raise ValueError(f"max_ring_bits must be in [8, {MAX_HE_RING_BITS}], got {max_ring_bits}")
    if pixel_max < 1:
        raise ValueError(f"pixel_max must be positive, got {pixel_max}")
    mean, std = input_norm if input_norm is not None else (None, None)
    traced = trace(model, input_shape)
    graph = lower(traced, pixel_max, mean, std)
    shape = traced.input_shape

    if calibration is None:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, pixel_max + 1, size=(DEFAULT_CALIBRATION_IMAGES, *shape))
        calibration_desc = f"{DEFAULT_CALIBRATION_IMAGES} uniformly random images (seed 0)"
    else:
        arr = calibration.detach().cpu().numpy() if isinstance(calibration, torch.Tensor) else (
            np.asarray(calibration))
        if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or arr.shape[0] == 0:
            raise ValueError(f"calibration must have shape (N, {', '.join(map(str, shape))})")
        pixels = np.clip(np.rint(arr * pixel_max), 0, pixel_max)
        calibration_desc = f"{arr.shape[0]} images supplied at compile time"
    maxabs = _calibrate(graph, pixels)

    params = _Params(frac_bits, weight_bits, ring_margin_bits, max_ring_bits)
    plan = _Assigner(graph, maxabs, params).build(pixel_max)
    plan.policy.update({
        "frac_bits": frac_bits,
        "weight_bits": weight_bits,
        "ring_margin_bits": ring_margin_bits,
        "max_ring_bits": max_ring_bits,
        "calibration": calibration_desc,
        "reveals": REVEALS,
    })
    if input_norm is not None:
        plan.private["mean"] = [float(v) for v in mean]  # type: ignore[union-attr]
        plan.private["std"] = [float(v) for v in std]  # type: ignore[union-attr]
    plan._source_model = model
    return plan


def _calibrate(graph: FloatGraph, pixels: np.ndarray, chunk: int = 32) -> dict[str, float]:
    maxabs: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, pixels.shape[0], chunk):
            batch = torch.from_numpy(np.asarray(pixels[start : start + chunk], dtype=np.float32))
            values = graph.run(batch, torch.float32)
            for name, v in values.items():
                maxabs[name] = max(maxabs.get(name, 0.0), float(v.abs().max()))
    return maxabs


def _preferred_frac_w(weight: np.ndarray, weight_bits: int) -> int:
    """Fractional bits so that ``|round(w * 2^f)| <= 2^(weight_bits-1) - 1`` for the largest
    ``|w|``; fewer if every weight is exactly representable with fewer."""
    nonzero = weight[weight != 0]
    if nonzero.size == 0:
        return 0
    m = float(np.abs(nonzero).max())
    f = math.floor(math.log2((2 ** (weight_bits - 1) - 1) / m))
    # Bits each float needs: w = M * 2^(e-53) with integer M; minus M's trailing zeros.
    mant, exp = np.frexp(np.abs(nonzero))
    ints = (mant * 2.0**53).astype(np.int64)
    trailing = np.log2((ints & -ints).astype(np.float64)).astype(np.int64)
    exact = int((53 - exp - trailing).max())
    return min(f, exact)


def _bitlen(magnitude: float) -> int:
    return int(math.ceil(magnitude)).bit_length()


class _Assigner:
    """Scales, shifts, truncations and rings for a float graph (module doc)."""

    def __init__(self, graph: FloatGraph, maxabs: dict[str, float], params: _Params) -> None:
        self.g = graph
        self.maxabs = maxabs
        self.p = params
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.fw_pref: dict[int, int] = {
            id(t): _preferred_frac_w(t.weight, params.weight_bits)
            for op in graph.ops if isinstance(op, FloatLinear)
            for t in op.terms if t.op != "scale"
        }
        self.truncated: dict[str, tuple[int, str]] = {}  # tensor -> (frac after, reason)

    # -------------------------------------------------------------- scales
    def src(self, name: str) -> str:
        return name + _TRUNC_SUFFIX if name in self.truncated else name

    def _scales(self) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
        """Forward pass: frac of every tensor, the term each linear step's scale comes
        from (``dominant``), and frac_w / shift per term (keyed by term id)."""
        frac: dict[str, int] = {INPUT: 0}
        free_in: dict[str, str] = {}  # GC output -> its input (scale still free)
        term_frac: dict[int, int] = {}
        dominant: dict[str, str] = {}
        for op in self.g.ops:
            if isinstance(op, FloatRelu):
                free_in[op.output] = op.input
                continue
            cands = []
            for t in op.terms:
                x = self.src(t.input)
                base = frac[x] if x in frac else self.p.frac_bits
                cands.append(base + (self.fw_pref[id(t)] if t.op != "scale" else 0))
            f_y = max(cands)
            fixed = [i for i, t in enumerate(op.terms)
                     if self.src(t.input) in frac and cands[i] == f_y]
            dom = fixed[0] if fixed else cands.index(f_y)
            dominant[op.output] = self.src(op.terms[dom].input)
            for t in op.terms:
                x = self.src(t.input)
                if x not in frac:
                    want = f_y - (self.fw_pref[id(t)] if t.op != "scale" else 0)
                    frac[x] = min(want, frac[free_in[x]])
                term_frac[id(t)] = f_y - frac[x]
            frac[op.output] = f_y
            if op.output in self.truncated:
                frac[op.output + _TRUNC_SUFFIX] = self.truncated[op.output][0]
        for out, inp in free_in.items():
            frac.setdefault(out, min(frac[inp], self.p.frac_bits))
        self.free_in = free_in
        return frac, term_frac, dominant

    def _gc_inputs(self) -> dict[str, int]:
        """Tensors read by a garbled circuit or decoded: name -> shift applied to it."""
        out: dict[str, int] = {}
        for op in self.g.ops:
            if isinstance(op, FloatRelu):
                out[self.src(op.input)] = -1
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

    # -------------------------------------------------------------- truncation
    def _fit(self) -> None:
        """Insert truncations until every garbled-circuit input fits ``max_ring_bits``."""
        for _ in range(len(self.g.ops) + 1):
            frac, _, dominant = self._scales()
            worst = None
            for name in self._gc_inputs():
                bits = self._bits(name, frac)
                if bits > self.p.max_ring:
                    worst = (name, bits)
                    break
            if worst is None:
                return
            self._truncate_for(worst[0], worst[1], frac, dominant)
        raise CompileError("could not fit the network's rings (truncation did not converge)")

    def _truncate_for(self, g: str, bits: int, frac: dict[str, int],
                      dominant: dict[str, str]) -> None:
        path = []
        cur = g
        while cur in dominant:
            cur = dominant[cur]
            if cur == INPUT or cur in self.free_in or cur.endswith(_TRUNC_SUFFIX):
                break
            path.append(cur)
        need = bits - self.p.max_ring
        options = []
        for u in path:
            if u in self.truncated:
                continue
            # Down to frac_bits, deeper if needed, keeping frac_bits bits below the maximum.
            magnitude = self.maxabs.get(u, 0.0)
            floor_frac = self.p.frac_bits - max(0, math.ceil(math.log2(magnitude))) if (
                magnitude > 0) else self.p.frac_bits
            relief = min(frac[u] - floor_frac, max(need, frac[u] - self.p.frac_bits))
            if relief <= 0:
                continue
            target = frac[u] - relief
            self.truncated[u] = (target, "")
            ubits = self._bits(u, {**frac, u + _TRUNC_SUFFIX: target})
            del self.truncated[u]
            if ubits > self.p.max_ring:
                continue
            numel = math.prod(self.g.shapes[u])
            cost = numel * truncate_and_gates(ubits, max(ubits - relief, 1))
            options.append((relief >= need, cost if relief >= need else -relief, u, target, cost))
        if not options:
            raise CompileError(
                f"tensor '{g}' needs {bits} bits (> max_ring_bits={self.p.max_ring}) and no "
                "tensor on the chain that sets its scale can be truncated within the limit; "
                "lower weight_bits or frac_bits"
            )
        options.sort(key=lambda o: (not o[0], o[1]))
        _, _, u, target, cost = options[0]
        reason = (
            f"'{g}' would need {bits} bits > {self.p.max_ring}; truncating '{u}' by "
            f"{frac[u] - target} bits (~{cost:,} AND gates)"
        )
        self.truncated[u] = (target, reason)
        _log.info("truncation inserted: %s", reason)

    # -------------------------------------------------------------- rings and plan
    def build(self, pixel_max: int) -> Plan:
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
                x = self.src(t.input)
                need = out_ring if t.op != "scale" else max(out_ring - term_frac[id(t)], 1)
                ring[x] = max(ring.get(x, 1), need)
        for name in self.free_in:
            ring.setdefault(name, 1)
        ring.setdefault(INPUT, 1)
        too_big = {k: v for k, v in ring.items() if v > self.p.max_ring}
        if too_big:
            raise CompileError(f"rings exceed max_ring_bits={self.p.max_ring}: {too_big}")
        return self._emit(pixel_max, frac, term_frac, ring)

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
                src = self.src(op.input)
                steps.append(ReluStep(src, op.output, frac[src] - frac[op.output],
                                      tuple(op.source)))
                continue
            declare(op.output, g.shapes[op.output])
            terms: list[Term] = []
            for t in op.terms:
                terms.append(self._quantise_term(t, term_frac[id(t)]))
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

    def _quantise_term(self, t: FloatTerm, fw: int) -> Term:
        src = self.src(t.input)
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
