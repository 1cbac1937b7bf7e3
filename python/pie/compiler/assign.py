"""Scale and ring assignment: every tensor's scale and ring, every term's frac_w
or shift, the truncations, and the quantised Plan for a chosen precision.

The policy (all of it public and recorded in ``plan.policy``):

* Linear steps never truncate: a term's output scale is ``frac(x) + frac_w``,
  ``frac_w`` chosen from the layer's largest weight so that ``|w_int| <
  2^(b_w - 1)`` for its ``b_w`` weight bits (fewer when the weights are exact
  with fewer, as an average pool's ``1/4``). Terms meet at one scale per
  linear step, the largest any term asks for. A ReLU output asks for ``b_a``
  significant bits of its calibrated maximum, but its scale is free (the shift
  is chosen): it stays at its own activation scale, and where its branch meets
  a stream of a larger scale (a residual add) the branch's conv carries the
  difference as a term ``shift`` (its product times ``2^shift``), so neither
  the stream's scale nor the ReLU output's ring grows; the stream's scale
  rises only where a shortcut conv multiplies it (projection shortcuts are
  composed into the stream's terms before this, :func:`.folding.fold_pointwise`,
  so it hardly does). ``2^(shift-1)`` is added to the preceding bias so the
  shift rounds to nearest.
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
  1 of a DeepReDuce network at full resolution, too large to fold into dense
  layers) chains more products than 59 bits hold. Every truncation and
  lowering is reported with its reason and cost (``plan.summary()``,
  ``plan.gc_cost()``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..plan import (ConvTerm, FCTerm, LinearStep, OutputStep, Plan, ReluStep, ScaleTerm, Step,
                    TensorSpec, Term, TruncateStep, truncate_and_gates, weight_dtype)
from .lowering import INPUT, CompileError, FloatGraph, FloatLinear, FloatRelu, FloatTerm

__all__ = ["Assigner", "Params", "Precision"]

_log = logging.getLogger(__name__)

_TRUNC_SUFFIX = ".trunc"


@dataclass
class Params:
    """The compile options the assignment follows: the scale cap, the ring margin
    and limit, and what an online round is worth in AND gates."""

    frac_bits: int
    margin: int
    max_ring: int
    round_cost: int


@dataclass
class Precision:
    """Significant bits (with sign) of each weighted term, by term id, and of each
    ReLU output (unsigned), by tensor name: what the precision search chooses."""

    weight: dict[int, int]
    act: dict[str, int]
    trunc: int  # significant bits a truncation keeps, where one is needed

    def copy(self) -> Precision:
        return Precision(dict(self.weight), dict(self.act), self.trunc)


# A ring that overflows by at most _MAX_LOWERING_NEED bits is fitted by lowering
# frac_w of the layers that set its scale (one bit at a time, spread over the
# chain, at most _MAX_FW_LOWERING bits per layer) instead of a truncation: free,
# and weights keep weight_bits - _MAX_FW_LOWERING significant bits at worst.
_MAX_FW_LOWERING = 3
_MAX_LOWERING_NEED = 6


def _weight_exponents(weight: np.ndarray) -> tuple[float, int]:
    """The largest ``|w|`` and the fractional bits that hold every weight exactly
    (0 and 0 for all-zero weights): what :func:`_preferred_frac_w` needs, for any
    number of weight bits."""
    nonzero = weight[weight != 0]
    if nonzero.size == 0:
        return 0.0, 0
    # Bits each float needs: w = M * 2^(e-53) with integer M; minus M's trailing zeros.
    mant, exp = np.frexp(np.abs(nonzero))
    ints = (mant * 2.0**53).astype(np.int64)
    trailing = np.log2((ints & -ints).astype(np.float64)).astype(np.int64)
    return float(np.abs(nonzero).max()), int((53 - exp - trailing).max())


def _preferred_frac_w(exponents: tuple[float, int], weight_bits: int) -> int:
    """Fractional bits so that ``|round(w * 2^f)| <= 2^(weight_bits-1) - 1`` for the largest
    ``|w|``; fewer if every weight is exactly representable with fewer (``exponents``:
    :func:`_weight_exponents`)."""
    m, exact = exponents
    if m == 0:
        return 0
    return min(max(0, math.floor(math.log2((2 ** (weight_bits - 1) - 1) / m))), exact)


class WeightCache:
    """What every candidate precision reuses per float term: its weights'
    exponents, and its weights quantised at the last ``frac_w`` asked for (with
    their float32 image for the float run, made on first use), so that a folded
    dense layer of millions of weights is not requantised for each candidate the
    search tries."""

    def __init__(self) -> None:
        self._exponents: dict[int, tuple[float, int]] = {}
        # term id -> [frac_w, quantised weights, their float32 image or None]
        self._quantised: dict[int, list] = {}

    def exponents(self, t: FloatTerm) -> tuple[float, int]:
        if id(t) not in self._exponents:
            self._exponents[id(t)] = _weight_exponents(t.weight)
        return self._exponents[id(t)]

    def quantised(self, t: FloatTerm, fw: int) -> np.ndarray:
        """``round(w * 2^fw)`` in the narrowest of the Plan's weight types
        (shared: callers must not modify it)."""
        cached = self._quantised.get(id(t))
        if cached is not None and cached[0] == fw:
            return cached[1]
        assert t.weight is not None
        w = t.weight * 2.0**fw
        np.rint(w, out=w)
        largest = max(w.max(initial=0), -w.min(initial=0))
        if largest >= 2**40:
            raise CompileError(f"weights of a term reading '{t.input}' need more than 40 bits")
        wi = w.astype(weight_dtype(int(largest)))
        self._quantised[id(t)] = [fw, wi, None]
        return wi

    def as_float(self, weight: np.ndarray, fw: int) -> torch.Tensor:
        """``weight / 2^fw`` in float32, kept for a weight this cache quantised."""
        entry = next((e for e in self._quantised.values() if e[1] is weight and e[0] == fw), None)
        if entry is not None and entry[2] is not None:
            return entry[2]
        floats = torch.from_numpy(weight.astype(np.float32)) * 2.0**-fw
        if entry is not None:
            entry[2] = floats
        return floats


def _frac_for(magnitude: float, bits: int) -> int:
    """Fractional bits that give a value of at most ``magnitude`` (>= 0) ``bits``
    significant bits: ``magnitude * 2^f < 2^bits``; never negative."""
    if magnitude <= 0:
        return bits
    return max(0, math.floor(math.log2((2.0**bits - 1) / magnitude)))


def _bitlen(magnitude: float) -> int:
    return int(math.ceil(magnitude)).bit_length()


class Assigner:
    """Scales, shifts, truncations and rings for a float graph (module doc)."""

    def __init__(self, graph: FloatGraph, maxabs: dict[str, float], params: Params,
                 precision: Precision,
                 weights: WeightCache | None = None) -> None:
        self.g = graph
        self.maxabs = maxabs
        self.p = params
        self.producers = graph.producers()
        self.consumers = graph.consumers()
        self.terms: dict[int, FloatTerm] = {
            id(t): t for op in graph.ops if isinstance(op, FloatLinear) for t in op.terms
        }
        self.weights = weights if weights is not None else WeightCache()
        self.fw_pref: dict[int, int] = {
            id(t): _preferred_frac_w(self.weights.exponents(t), precision.weight[id(t)])
            for t in self.terms.values() if t.op != "scale"
        }
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

    def fw(self, t: FloatTerm) -> int:
        return self.fw_pref[id(t)] - self.fw_lowered.get(id(t), 0) if t.op != "scale" else 0

    def scales(self) -> tuple[dict[str, int], dict[int, tuple[int, int]], dict[str, int]]:
        """Forward pass: frac of every tensor, ``(frac_w, shift)`` per term (keyed by
        term id; a scale term's frac_w is 0), and the term each linear step's
        scale comes from (``dominant``, a term id)."""
        frac: dict[str, int] = {INPUT: 0}
        free_in: dict[str, str] = {}  # GC output -> its input (scale still free)
        term_scale: dict[int, tuple[int, int]] = {}
        dominant: dict[str, int] = {}
        for op in self.g.ops:
            if isinstance(op, FloatRelu):
                free_in[op.output] = self.src(op.input, op.output)
                continue
            cands = []
            for t in op.terms:
                x = self.src(t.input, op.output)
                base = frac[x] if x in frac else min(self.act_frac[x], frac[free_in[x]])
                cands.append(base + self.fw(t))
            f_y = max(cands)
            fixed = [i for i, t in enumerate(op.terms)
                     if self.src(t.input, op.output) in frac and cands[i] == f_y]
            dom = fixed[0] if fixed else cands.index(f_y)
            dominant[op.output] = id(op.terms[dom])
            for t in op.terms:
                x = self.src(t.input, op.output)
                if x not in frac:
                    frac[x] = min(f_y - self.fw(t), frac[free_in[x]], self.act_frac[x])
                term_scale[id(t)] = (self.fw(t), f_y - frac[x] - self.fw(t))
            frac[op.output] = f_y
            if op.output in self.truncated:
                frac[op.output + _TRUNC_SUFFIX] = self.truncated[op.output][0]
        for out, inp in free_in.items():
            frac.setdefault(out, min(frac[inp], self.act_frac[out]))
        self.free_in = free_in
        return frac, term_scale, dominant

    def rounds(self) -> int:
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

    def gc_inputs(self) -> dict[str, int]:
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

    def bits(self, name: str, frac: dict[str, int]) -> int:
        magnitude = self.maxabs.get(name.removesuffix(_TRUNC_SUFFIX), 0.0) * 2.0 ** frac[name]
        offset = self._offset(name, self._shift_of(name, frac))
        return _bitlen(magnitude + offset) + 1 + self.p.margin

    # -------------------------------------------------------------- rings and plan
    def build(self, pixel_max: int) -> Plan:
        """The Plan, weights quantised."""
        frac, term_scale, ring = self.layout()
        return self._emit(pixel_max, frac, term_scale, ring)

    def gc_work(self) -> float:
        """What the precision search (:class:`~pie.compiler.precision.Search`)
        minimises: per ReLU and truncation element, its input ring plus its output
        ring (labels online, adder and mask AND gates)."""
        _, _, ring = self.layout()
        total = 0
        for op in self.g.ops:
            if isinstance(op, FloatRelu):
                total += math.prod(self.g.shapes[op.output]) * (
                    ring[self.src(op.input, op.output)] + ring[op.output])
        for name in self.truncated:
            total += math.prod(self.g.shapes[name]) * (ring[name] + ring[name + _TRUNC_SUFFIX])
        return float(total)

    def layout(self) -> tuple[dict[str, int], dict[int, tuple[int, int]], dict[str, int]]:
        """Fit the rings, then every tensor's scale, every term's ``(frac_w, shift)``
        (by term id) and every tensor's ring."""
        _RingFitter(self).fit()
        frac, term_scale, _ = self.scales()
        # Garbled-circuit inputs (truncated tensors included) need their magnitude;
        # everything else gets the largest ring its consumers need (module doc).
        ring: dict[str, int] = {name: self.bits(name, frac) for name in self.gc_inputs()}
        for op in reversed(self.g.ops):
            if isinstance(op, FloatRelu):
                continue
            out_ring = ring.setdefault(op.output, 1)
            for t in op.terms:
                x = self.src(t.input, op.output)
                ring[x] = max(ring.get(x, 1), out_ring - term_scale[id(t)][1], 1)
        for name in self.free_in:
            ring.setdefault(name, 1)
        ring.setdefault(INPUT, 1)
        too_big = {k: v for k, v in ring.items() if v > self.p.max_ring}
        if too_big:
            raise CompileError(f"rings exceed max_ring_bits={self.p.max_ring}: {too_big}")
        return frac, term_scale, ring

    def _emit(self, pixel_max: int, frac: dict[str, int], term_scale: dict[int, tuple[int, int]],
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
                terms.append(self._quantise_term(t, self.src(t.input, op.output), *term_scale[id(t)]))
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

    def _quantise_term(self, t: FloatTerm, src: str, fw: int, shift: int) -> Term:
        if t.op == "scale":
            return ScaleTerm(src, shift)
        wi = self.weights.quantised(t, fw)
        if t.op == "conv2d":
            o, cg, kh, kw = wi.shape
            return ConvTerm(src, (o, cg, kh, kw), t.stride, t.padding, t.groups, fw, wi, shift)
        return FCTerm(src, (wi.shape[0], wi.shape[1]), fw, wi, shift)


class _RingFitter:
    """Fits every garbled-circuit input of an :class:`Assigner` into ``max_ring_bits``
    by lowering frac_w or inserting truncations (module doc); it records them in the
    Assigner's ``fw_lowered``, ``lowered``, ``truncated`` and ``bypass``."""

    def __init__(self, assigner: Assigner) -> None:
        self.a = assigner

    def fit(self) -> None:
        """Lower frac_w or insert truncations until every garbled-circuit input fits."""
        a = self.a
        limit = (len(a.g.ops) + 1) * (_MAX_FW_LOWERING + 2)
        for _ in range(limit):
            frac, _, dominant = a.scales()
            worst = None
            for name in a.gc_inputs():
                bits = a.bits(name, frac)
                if bits > a.p.max_ring:
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
        a = self.a
        path = []
        cur = g
        while cur in dominant:
            t = a.terms[dominant[cur]]
            cur = a.src(t.input, cur)
            if cur == INPUT or cur in a.free_in or cur.endswith(_TRUNC_SUFFIX):
                break
            path.append(cur)
        return path

    def _lower_fw(self, g: str, bits: int, path: list[str], dominant: dict[str, int]) -> bool:
        """Take one bit off the frac_w of a weight term that sets ``g``'s scale, if
        ``g`` overflows by at most _MAX_LOWERING_NEED bits and the chain's terms can
        give that many: the term lowered least so far, nearest to ``g`` on ties."""
        a = self.a
        need = bits - a.p.max_ring
        if need > _MAX_LOWERING_NEED:
            return False
        terms = [a.terms[dominant[v]] for v in (g, *path) if v in dominant]
        terms = [t for t in terms if t.op != "scale"
                 and a.fw_lowered.get(id(t), 0) < _MAX_FW_LOWERING and a.fw(t) > 0]
        if sum(min(_MAX_FW_LOWERING - a.fw_lowered.get(id(t), 0), a.fw(t)) for t in terms) < need:
            return False
        t = min(terms, key=lambda t: a.fw_lowered.get(id(t), 0))
        a.fw_lowered[id(t)] = a.fw_lowered.get(id(t), 0) + 1
        out = next(v for v in (g, *path) if v in dominant and dominant[v] == id(t))
        key = f"{out} <- {t.input}"
        a.lowered[key] = a.lowered.get(key, 0) + 1
        _log.info("frac_w of %s lowered by one bit: '%s' would need %d bits", key, g, bits)
        return True

    def _truncate_for(self, g: str, bits: int, frac: dict[str, int], path: list[str]) -> None:
        """Truncate the tensor on ``g``'s chain that relieves it at the least cost:
        AND gates, plus ``round_cost`` per online round it adds. Consumers that
        feed a ReLU and fit without it keep reading the untruncated tensor, so the
        truncation shares that ReLU's round."""
        a = self.a
        need = bits - a.p.max_ring
        rounds_before = a.rounds()
        options = []
        for u in path:
            if u in a.truncated:
                continue
            # Down to the precision an activation keeps (trunc_bits significant bits).
            floor_frac = min(a.p.frac_bits, _frac_for(a.maxabs.get(u, 0.0), a.trunc_bits))
            relief = frac[u] - floor_frac
            if relief <= 0:
                continue
            target = frac[u] - relief
            a.truncated[u] = (target, "")
            ubits = a.bits(u, {**frac, u + _TRUNC_SUFFIX: target})
            a.bypass[u] = self._bypassing(u, g, frac)
            extra_rounds = a.rounds() - rounds_before
            bypass = a.bypass.pop(u)
            del a.truncated[u]
            if ubits > a.p.max_ring:
                continue
            numel = math.prod(a.g.shapes[u])
            gates = numel * truncate_and_gates(ubits, max(ubits - relief, 1))
            cost = gates + a.p.round_cost * extra_rounds
            options.append((relief >= need, cost if relief >= need else -relief, u, target, gates,
                            bypass, extra_rounds))
        if not options:
            raise CompileError(
                f"tensor '{g}' needs {bits} bits (> max_ring_bits={a.p.max_ring}) and no "
                "tensor on the chain that sets its scale can be truncated within the limit; "
                "lower weight_bits or frac_bits"
            )
        options.sort(key=lambda o: (not o[0], o[1]))
        _, _, u, target, gates, bypass, extra_rounds = options[0]
        rides = f", sharing the round of the ReLU after {', '.join(sorted(bypass))}" if bypass else ""
        reason = (
            f"'{g}' would need {bits} bits > {a.p.max_ring}; truncating '{u}' by "
            f"{frac[u] - target} bits (~{gates:,} AND gates, {extra_rounds} extra online "
            f"round{'s' if extra_rounds != 1 else ''}{rides})"
        )
        a.truncated[u] = (target, reason)
        if bypass:
            a.bypass[u] = bypass
        _log.info("truncation inserted: %s", reason)

    def _bypassing(self, u: str, g: str, frac: dict[str, int]) -> frozenset[str]:
        """Consumers of ``u`` that may read it untruncated: linear steps feeding only a
        ReLU whose input fits the ring as it is (``g`` excluded, it does not fit)."""
        a = self.a
        keep = set()
        for op in a.consumers.get(u, []):
            if not isinstance(op, FloatLinear) or op.output == g or op.output == a.g.output:
                continue
            users = a.consumers.get(op.output, [])
            if (len(users) == 1 and isinstance(users[0], FloatRelu)
                    and a.bits(op.output, frac) <= a.p.max_ring):
                keep.add(op.output)
        return frozenset(keep)


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
