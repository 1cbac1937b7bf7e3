"""The Plan: what the two parties execute, as plain data.

A Plan is a static, topologically ordered list of steps over named tensors. Every
tensor has a shape (no batch dimension), a ring ``Z_{2^ring_bits}`` and a fixed-
point scale ``frac_bits`` (an integer ``v`` stands for ``signed(v) / 2^frac_bits``).

Step kinds (``step.kind``):

``"linear"`` (:class:`LinearStep`)
    ``y = sum_i term_i(x_i) + bias  mod 2^ring(y)``. Each term applies one
    primitive to one input tensor: ``"conv2d"`` (:class:`ConvTerm`: int64
    weights, stride, zero padding, groups; depthwise is ``groups == channels``),
    ``"fc"`` (:class:`FCTerm`: int64 weights over the input flattened in C-major
    order) or ``"scale"`` (:class:`ScaleTerm`: ``x * 2^shift``, local to each
    party's share, also a free lift to a larger ring). ``bias`` is an int64
    tensor of the output's full shape (the centred representative mod the
    output ring). Conv and FC terms are computed with HE: their input ring is at
    least the output ring. A scale term's input ring is at least
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

The public part (:meth:`Plan.public`) is everything but weights and biases;
:meth:`Plan.digest` is the SHA-256 of its canonical JSON serialisation.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from . import reference

__all__ = [
    "CalibrationReport",
    "ConvTerm",
    "FCTerm",
    "LinearStep",
    "OutputStep",
    "Plan",
    "PlanFormatError",
    "ReluStep",
    "ScaleTerm",
    "Step",
    "TensorSpec",
    "Term",
    "TruncateStep",
]

PLAN_FORMAT = "pie-plan"
PLAN_FORMAT_VERSION = 1
MAX_HE_RING_BITS = 59

PathLike = Union[str, "os.PathLike[str]"]


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
    """2-D convolution (zero padding) of one input tensor, computed with HE."""

    input: str
    weight_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    frac_w: int
    weight: np.ndarray | None = None
    op: str = field(default="conv2d", init=False)


@dataclass(eq=False)
class FCTerm:
    """Fully connected layer over the input flattened in C-major order, computed with HE."""

    input: str
    weight_shape: tuple[int, int]
    frac_w: int
    weight: np.ndarray | None = None
    op: str = field(default="fc", init=False)


@dataclass(frozen=True)
class ScaleTerm:
    """``x * 2^shift``: local on shares (identity shortcut, scale alignment, ring lift)."""

    input: str
    shift: int
    op: str = field(default="scale", init=False)


Term = Union[ConvTerm, FCTerm, ScaleTerm]


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
        return {
            "images": self.images,
            "top1_agreement": self.top1_agreement,
            "max_abs_logit_error": self.max_abs_logit_error,
            "max_abs_logit": self.max_abs_logit,
            "relative_logit_error": self.relative_logit_error,
            "overflows": dict(self.overflows),
        }


def relu_and_gates(bits_in: int, bits_out: int, shift: int = 0) -> int:
    """AND gates of the ReLU circuit (gc.relu_circuit): add the shares, zero the
    negative values (one AND per value bit that survives the shift), subtract the mask."""
    return (bits_in - 1) + min(bits_out, bits_in - 1 - shift) + (bits_out - 1)


def truncate_and_gates(bits_in: int, bits_out: int) -> int:
    """AND gates of the truncation circuit: add shares, subtract the mask (~l_in + l_out)."""
    return (bits_in - 1) + (bits_out - 1)


class Plan:
    """A compiled network: public structure plus (optionally) the server's weights.

    Attributes:
        input: name of the input tensor (integer pixels, ``frac_bits == 0``).
        pixel_max: the client encodes an image with values in [0, 1] as the
            integers ``round(x * pixel_max)``.
        tensors: every tensor by name.
        steps: the steps in execution (topological) order.
        policy: the public parameters the scales and rings were derived with and
            what they reveal (see :func:`pie.compile`).
        private: server-side information that is not part of the public plan
            (the input normalisation folded into the first layer).
    """

    def __init__(
        self,
        input: str,
        pixel_max: int,
        tensors: dict[str, TensorSpec],
        steps: Sequence[Step],
        policy: dict[str, Any],
        private: dict[str, Any] | None = None,
    ) -> None:
        self.input = input
        self.pixel_max = int(pixel_max)
        self.tensors = dict(tensors)
        self.steps = list(steps)
        self.policy = dict(policy)
        self.private = dict(private or {})
        self._source_model: nn.Module | None = None
        self.validate()

    # ------------------------------------------------------------------ structure
    @property
    def has_weights(self) -> bool:
        """False for a public plan (weights and biases stripped)."""
        return all(
            s.bias is not None and all(getattr(t, "weight", 0) is not None for t in s.terms)
            for s in self.steps
            if isinstance(s, LinearStep)
        )

    @property
    def output(self) -> OutputStep:
        return next(s for s in self.steps if isinstance(s, OutputStep))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.tensors[self.input].shape

    def relu_count(self) -> int:
        """Number of ReLUs one inference evaluates."""
        return sum(self.tensors[s.output].numel for s in self.steps if isinstance(s, ReluStep))

    def gc_cost(self) -> dict[str, int]:
        """Garbled-circuit work per inference: elements and AND gates of ReLUs and truncations."""
        cost = {"relus": 0, "relu_and_gates": 0, "truncations": 0, "truncate_and_gates": 0}
        for s in self.steps:
            if isinstance(s, (ReluStep, TruncateStep)):
                i, o = self.tensors[s.input], self.tensors[s.output]
                if isinstance(s, ReluStep):
                    cost["relus"] += o.numel
                    cost["relu_and_gates"] += o.numel * relu_and_gates(i.ring_bits, o.ring_bits,
                                                                       s.shift)
                else:
                    cost["truncations"] += o.numel
                    cost["truncate_and_gates"] += o.numel * truncate_and_gates(
                        i.ring_bits, o.ring_bits
                    )
        return cost

    def rounds(self) -> dict[str, int]:
        """Online garbled-circuit round of every ReLU/truncate step (by output name).

        A GC step's round is one more than the latest round among the GC steps its
        input depends on; steps with equal rounds can share one online round.
        """
        depth: dict[str, int] = {self.input: 0}
        rounds: dict[str, int] = {}
        for s in self.steps:
            if isinstance(s, LinearStep):
                depth[s.output] = max(depth[t.input] for t in s.terms)
            elif isinstance(s, (ReluStep, TruncateStep)):
                depth[s.output] = rounds[s.output] = depth[s.input] + 1
        return rounds

    def schedule(self) -> list[tuple[list[int], list[int]]]:
        """The online execution order as waves ``(local, garbled)`` of step indices.

        Wave ``d`` first runs the linear steps whose inputs are ready after ``d``
        garbled rounds (the server computes them locally, no messages), then every
        garbled step of round ``d + 1`` (see :meth:`rounds`) in one round trip.
        Plan order is topological, so steps within a wave keep their plan order.
        The output step is not part of any wave: it runs after the last one.
        """
        depth: dict[str, int] = {self.input: 0}
        local: dict[int, list[int]] = {}
        garbled: dict[int, list[int]] = {}
        for i, s in enumerate(self.steps):
            if isinstance(s, LinearStep):
                depth[s.output] = d = max(depth[t.input] for t in s.terms)
                local.setdefault(d, []).append(i)
            elif isinstance(s, (ReluStep, TruncateStep)):
                depth[s.output] = depth[s.input] + 1
                garbled.setdefault(depth[s.input], []).append(i)
        last = max([*local, *garbled], default=0)
        return [(local.get(d, []), garbled.get(d, [])) for d in range(last + 1)]

    def last_uses(self, order: Sequence[int] | None = None) -> dict[int, list[str]]:
        """For each step index, the tensors read for the last time there (output kept)
        when the steps run in ``order`` (default: plan order)."""
        last: dict[str, int] = {}
        for i in range(len(self.steps)) if order is None else order:
            for name in self.steps[i].inputs:
                last[name] = i
        keep = self.output.input
        out: dict[int, list[str]] = {}
        for name, i in last.items():
            if name != keep:
                out.setdefault(i, []).append(name)
        return out

    def validate(self) -> None:
        """Check the structural invariants the protocol relies on.

        Raises:
            PlanFormatError: naming the step and tensor that break an invariant.
        """
        t = self.tensors
        if self.input not in t:
            raise PlanFormatError(f"input tensor {self.input!r} is not declared")
        if t[self.input].frac_bits != 0:
            raise PlanFormatError("the input tensor must have frac_bits 0 (integer pixels)")
        defined = {self.input}
        outputs = 0
        for i, s in enumerate(self.steps):
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
                self._validate_linear(where, s)
            else:
                src = t[s.input]
                if s.shift < 0 or src.shape != out.shape:
                    raise PlanFormatError(f"{where}: bad shift or shape")
                if src.frac_bits - s.shift != out.frac_bits:
                    raise PlanFormatError(f"{where}: frac_bits do not match the shift")
        if outputs != 1:
            raise PlanFormatError(f"a plan needs exactly one output step, found {outputs}")

    def _validate_linear(self, where: str, s: LinearStep) -> None:
        t = self.tensors
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
            if src.ring_bits < out.ring_bits:
                raise PlanFormatError(
                    f"{where}: HE input {term.input!r} has ring {src.ring_bits} < output "
                    f"ring {out.ring_bits}"
                )
            if out.ring_bits > MAX_HE_RING_BITS:
                raise PlanFormatError(f"{where}: HE output ring {out.ring_bits} > 59 bits")
            if src.frac_bits + term.frac_w != out.frac_bits:
                raise PlanFormatError(f"{where}: frac_bits of {term.input!r} + frac_w mismatch")
            if isinstance(term, ConvTerm):
                o, cg, kh, kw = term.weight_shape
                c, h, w = src.shape
                ho = (h + 2 * term.padding[0] - kh) // term.stride[0] + 1
                wo = (w + 2 * term.padding[1] - kw) // term.stride[1] + 1
                if cg * term.groups != c or o % term.groups or out.shape != (o, ho, wo):
                    raise PlanFormatError(f"{where}: conv shapes do not fit {term.input!r}")
            else:
                if term.weight_shape != (out.numel, src.numel) or len(out.shape) != 1:
                    raise PlanFormatError(f"{where}: fc shapes do not fit {term.input!r}")
            if term.weight is not None and (
                term.weight.dtype != np.int64 or term.weight.shape != term.weight_shape
            ):
                raise PlanFormatError(f"{where}: weight must be int64 of shape {term.weight_shape}")
        if s.bias is not None and (s.bias.dtype != np.int64 or s.bias.shape != out.shape):
            raise PlanFormatError(f"{where}: bias must be int64 of shape {out.shape}")

    # ------------------------------------------------------------- public / digest
    def public(self) -> Plan:
        """A copy without weights, biases or private information (what the client gets)."""
        steps: list[Step] = []
        for s in self.steps:
            if isinstance(s, LinearStep):
                terms: list[Term] = []
                for term in s.terms:
                    if isinstance(term, ConvTerm):
                        terms.append(
                            ConvTerm(term.input, term.weight_shape, term.stride, term.padding,
                                     term.groups, term.frac_w)
                        )
                    elif isinstance(term, FCTerm):
                        terms.append(FCTerm(term.input, term.weight_shape, term.frac_w))
                    else:
                        terms.append(term)
                steps.append(LinearStep(s.output, terms, s.source))
            else:
                steps.append(s)
        return Plan(self.input, self.pixel_max, self.tensors, steps, self.policy)

    def public_dict(self) -> dict[str, Any]:
        """The public part as JSON-compatible data (the canonical form behind :meth:`digest`)."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_FORMAT_VERSION,
            "input": self.input,
            "pixel_max": self.pixel_max,
            "tensors": [
                {"name": v.name, "shape": list(v.shape), "ring_bits": v.ring_bits,
                 "frac_bits": v.frac_bits}
                for v in self.tensors.values()
            ],
            "steps": [_step_to_dict(s) for s in self.steps],
            "policy": self.policy,
        }

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the public part; equal for a plan and
        its public copy, stable across save/load and processes."""
        return hashlib.sha256(_canonical(self.public_dict())).hexdigest()

    # ------------------------------------------------------------- serialisation
    def save(self, path: PathLike) -> None:
        """Write the plan to one ``.npz`` file: a JSON header plus int64 arrays (no pickle)."""
        with open(os.fspath(path), "wb") as f:
            self._write(f)

    def _write(self, f: Any) -> None:
        arrays: dict[str, np.ndarray] = {}
        for i, s in enumerate(self.steps):
            if isinstance(s, LinearStep):
                if s.bias is not None:
                    arrays[f"b{i}"] = s.bias
                for j, term in enumerate(s.terms):
                    if not isinstance(term, ScaleTerm) and term.weight is not None:
                        arrays[f"w{i}_{j}"] = term.weight
        header = {"public": self.public_dict(), "private": self.private}
        arrays["header"] = np.frombuffer(_canonical(header), dtype=np.uint8)
        np.savez(f, allow_pickle=False, **arrays)

    def to_bytes(self) -> bytes:
        """The :meth:`save` file as bytes (e.g. to send a public plan to a client)."""
        buf = io.BytesIO()
        self._write(buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        """Inverse of :meth:`to_bytes`.

        Raises:
            PlanFormatError: not a plan, unsupported version, or inconsistent content.
        """
        return cls._read(io.BytesIO(data), "<bytes>")

    @classmethod
    def load(cls, path: PathLike) -> Plan:
        """Read a plan written by :meth:`save` (public or with weights).

        Raises:
            PlanFormatError: not a plan file, unsupported version, or inconsistent content.
        """
        with open(os.fspath(path), "rb") as f:
            return cls._read(f, repr(os.fspath(path)))

    @classmethod
    def _read(cls, f: Any, where: str) -> Plan:
        try:
            with np.load(f, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise PlanFormatError(f"cannot read plan file {where}: {exc}") from exc
        try:
            # NaN and infinities have no canonical JSON: a header holding them
            # could never be digested.
            header = json.loads(arrays.pop("header").tobytes().decode("utf-8"),
                                parse_constant=_reject_constant)
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise PlanFormatError(f"{where} has no valid plan header") from exc
        if not (isinstance(header, dict) and isinstance(header.get("public"), dict)
                and isinstance(header.get("private", {}), dict)):
            raise PlanFormatError(f"{where} has no valid plan header")
        return cls._from_dict(header["public"], header.get("private", {}), arrays)

    @classmethod
    def _from_dict(cls, pub: dict[str, Any], private: dict[str, Any],
                   arrays: dict[str, np.ndarray]) -> Plan:
        if pub.get("format") != PLAN_FORMAT or pub.get("version") != PLAN_FORMAT_VERSION:
            raise PlanFormatError(
                f"not a {PLAN_FORMAT} version {PLAN_FORMAT_VERSION} file "
                f"(format {pub.get('format')!r}, version {pub.get('version')!r})"
            )
        try:
            tensors = {}
            for d in _field(pub, "tensors", list):
                name = _field(d, "name", str)
                if name in tensors:
                    raise PlanFormatError(f"tensor {name!r} is declared twice")
                tensors[name] = TensorSpec(name, _shape(d["shape"], name),
                                           _int(d["ring_bits"], "ring_bits", 1, 64),
                                           _int(d["frac_bits"], "frac_bits", 0, MAX_FRAC_BITS))
            steps = [_step_from_dict(i, d, arrays) for i, d in enumerate(_field(pub, "steps", list))]
            return cls(_field(pub, "input", str), _int(pub["pixel_max"], "pixel_max", 1, 1 << 16),
                       tensors, steps, _field(pub, "policy", dict), private)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PlanFormatError):
                raise
            raise PlanFormatError(f"malformed plan: {exc!r}") from exc

    # ------------------------------------------------------------------ reporting
    def summary(self) -> str:
        """A per-step table (kind, shapes, ReLUs, rings, scales) and the totals."""
        rounds = self.rounds()
        rows = [("#", "kind", "output", "shape", "inputs", "ReLUs", "ring", "frac", "shift", "rnd")]
        for i, s in enumerate(self.steps):
            if isinstance(s, OutputStep):
                v = self.tensors[s.input]
                rows.append((str(i), "output" if s.reveal == "logits" else "label", s.input, str(s.shape),
                             s.input, "", str(v.ring_bits), str(s.frac_bits), "", ""))
                continue
            v = self.tensors[s.output]
            if isinstance(s, LinearStep):
                ins = " + ".join(_term_label(t) for t in s.terms)
                rows.append((str(i), "linear", s.output, str(v.shape), ins, "",
                             str(v.ring_bits), str(v.frac_bits), "", ""))
            else:
                src = self.tensors[s.input]
                relus = f"{v.numel:,}" if isinstance(s, ReluStep) else ""
                rows.append((str(i), s.kind, s.output, str(v.shape), s.input, relus,
                             f"{src.ring_bits}->{v.ring_bits}", f"{src.frac_bits}->{v.frac_bits}",
                             str(s.shift), str(rounds[s.output])))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        cost = self.gc_cost()
        lines.append("")
        lines.append(
            f"ReLUs {cost['relus']:,} ({cost['relu_and_gates']:,} AND gates); "
            f"truncations {cost['truncations']:,} elements ({cost['truncate_and_gates']:,} AND "
            f"gates); online GC rounds {max(rounds.values(), default=0)}"
        )
        for s in self.steps:
            if isinstance(s, TruncateStep):
                lines.append(f"truncate {s.input}: {s.reason}")
        shown = {k: v for k, v in self.policy.items() if k != "reveals"}  # long: one entry per field
        lines.append("policy: " + json.dumps(shown, sort_keys=True))
        if "reveals" in self.policy:
            lines.append("what the public plan reveals: plan.policy['reveals']")
        return "\n".join(lines)

    # ------------------------------------------------------------------ execution
    def encode_input(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Images with values in [0, 1], (C, H, W) or (N, C, H, W), to integer pixels
        ``round(x * pixel_max)`` (int64, batched).

        Raises:
            ValueError: a wrong shape, or values that are not finite numbers in
                [0, 1] (an 8-bit image must be divided by 255 first: nothing is
                clipped, which would silently change the image).
        """
        arr = _batched(x, self.input_shape, "x")
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"x must be a numeric image with values in [0, 1], got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError("x must hold finite values in [0, 1]; it contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"x must hold values in [0, 1] (an image scaled to [0, 1]); "
                             f"got values in [{lo:g}, {hi:g}]")
        return np.rint(arr * self.pixel_max).astype(np.int64)

    def run_reference_int(
        self, x_int: np.ndarray | torch.Tensor, *, return_all: bool = False
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Execute the plan exactly, as the protocol does, on integer inputs.

        Args:
            x_int: integer pixels, (C, H, W) or (N, C, H, W); reduced mod the input ring.
            return_all: return every tensor (name -> uint64 residues) instead.

        Returns:
            The output tensor's residues mod its ring (uint64, shaped like
            ``x_int``'s batch: (N, *shape) or (*shape)), or the dict of all tensors.
        """
        arr = x_int.numpy() if isinstance(x_int, torch.Tensor) else np.asarray(x_int)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"x_int must be an integer array, got dtype {arr.dtype}")
        single = arr.ndim == len(self.input_shape)
        batch = _batched(arr, self.input_shape, "x_int")
        values, _ = self._execute_chunks(batch, keep_all=return_all, wide=False)
        if return_all:
            return {k: v[0] for k, v in values.items()} if single else values
        out = values[self.output.input].reshape(batch.shape[0], *self.output.shape)
        return out[0] if single else out

    def decode_output(self, y: np.ndarray) -> np.ndarray:
        """Output residues to float logits (``signed / 2^frac_bits``)."""
        spec = self.tensors[self.output.input]
        return reference.to_signed(np.asarray(y, dtype=np.uint64), spec.ring_bits) / float(
            2**spec.frac_bits
        )

    def with_output(self, reveal: str) -> Plan:
        """This Plan with the output step revealing ``reveal`` (``"logits"`` or
        ``"label"``); a different public Plan, so a different digest."""
        if reveal not in OUTPUT_REVEALS:
            raise ValueError(f"output must be one of {OUTPUT_REVEALS}, got {reveal!r}")
        out = self.output
        steps = [dataclasses.replace(s, reveal=reveal) if s is out else s for s in self.steps]
        plan = Plan(self.input, self.pixel_max, self.tensors, steps, self.policy, self.private)
        plan._source_model = self._source_model
        return plan

    def reference_label(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """The top-1 class of the exact fixed-point plan (what a label-only
        inference returns): ``argmax`` of :meth:`run_reference`, lowest index
        among equal maxima; an int64 scalar array for one image, else (N,)."""
        logits = self.run_reference(x)
        single = np.ndim(x) == len(self.input_shape)
        labels = np.argmax(logits.reshape(1 if single else logits.shape[0], -1), axis=1).astype(np.int64)
        return np.asarray(labels[0]) if single else labels

    def run_reference(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Encode images (values in [0, 1], before normalisation; (C, H, W) or
        (N, C, H, W)), run the exact fixed-point plan, decode float logits."""
        out = self.decode_output(self.run_reference_int(self.encode_input(x)))
        return out[0] if np.ndim(x) == len(self.input_shape) else out

    def calibrate(
        self, images: np.ndarray | torch.Tensor, model: nn.Module | None = None
    ) -> CalibrationReport:
        """Compare the float model with the fixed-point plan on a batch of images.

        Args:
            images: (N, C, H, W) images with values in [0, 1] (before normalisation).
            model: the float network; defaults to the one this plan was compiled
                from (kept in memory only, not saved).

        Returns:
            Top-1 agreement, max |logit error|, max |logit| and, per garbled-circuit
            input tensor, the number of elements that overflowed their ring.
        """
        model = model if model is not None else self._source_model
        if model is None:
            raise ValueError("pass the float model: this plan was loaded, not compiled here")
        pixels = self.encode_input(images)
        values, overflow = self._execute_chunks(pixels, keep_all=False, wide=True)
        spec = self.tensors[self.output.input]
        got = reference.to_signed(
            reference.mask(values[self.output.input], spec.ring_bits), spec.ring_bits
        ) / float(2**spec.frac_bits)
        got = got.reshape(pixels.shape[0], -1)
        want = self.float_logits(model, images).reshape(pixels.shape[0], -1)
        return CalibrationReport(
            images=int(pixels.shape[0]),
            top1_agreement=float(np.mean(got.argmax(1) == want.argmax(1))),
            max_abs_logit_error=float(np.abs(got - want).max()),
            max_abs_logit=float(np.abs(want).max()),
            overflows={k: v for k, v in overflow.items() if v},
        )

    def float_logits(self, model: nn.Module, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """The float model's logits on the same quantised pixels the plan sees (float64)."""
        pixels = self.encode_input(images).astype(np.float64) / self.pixel_max
        mean = np.asarray(self.private.get("mean", [0.0] * self.input_shape[0]), np.float64)
        std = np.asarray(self.private.get("std", [1.0] * self.input_shape[0]), np.float64)
        x = torch.from_numpy((pixels - mean[:, None, None]) / std[:, None, None])
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                param = next(model.parameters(), None)
                dtype = param.dtype if param is not None else torch.float32
                return model(x.to(dtype)).double().numpy()
        finally:
            model.train(was_training)

    def _execute_chunks(
        self, batch: np.ndarray, *, keep_all: bool, wide: bool, chunk: int = 16
    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        parts: list[dict[str, np.ndarray]] = []
        overflow: dict[str, int] = {}
        for start in range(0, batch.shape[0], chunk):
            values, over = reference.execute(
                self, batch[start : start + chunk], keep_all=keep_all, wide=wide
            )
            parts.append(values)
            for k, v in over.items():
                overflow[k] = overflow.get(k, 0) + v
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return merged, overflow


def _batched(x: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == len(shape):
        arr = arr[None]
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape) or arr.shape[0] == 0:
        raise ValueError(
            f"{what} must have shape {tuple(shape)} or (N, {', '.join(map(str, shape))}), "
            f"got {tuple(np.shape(x))}"
        )
    return arr


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _term_label(t: Term) -> str:
    if isinstance(t, ScaleTerm):
        return f"{t.input}<<{t.shift}" if t.shift else t.input
    if isinstance(t, ConvTerm):
        kh, kw = t.weight_shape[2:]
        g = f",g{t.groups}" if t.groups > 1 else ""
        return f"conv{kh}x{kw}/{t.stride[0]}{g}({t.input})"
    return f"fc({t.input})"


def _term_to_dict(t: Term) -> dict[str, Any]:
    if isinstance(t, ScaleTerm):
        return {"op": "scale", "input": t.input, "shift": t.shift}
    if isinstance(t, ConvTerm):
        return {"op": "conv2d", "input": t.input, "weight_shape": list(t.weight_shape),
                "stride": list(t.stride), "padding": list(t.padding), "groups": t.groups,
                "frac_w": t.frac_w}
    return {"op": "fc", "input": t.input, "weight_shape": list(t.weight_shape),
            "frac_w": t.frac_w}


def _step_to_dict(s: Step) -> dict[str, Any]:
    if isinstance(s, LinearStep):
        return {"kind": "linear", "output": s.output, "source": list(s.source),
                "terms": [_term_to_dict(t) for t in s.terms]}
    if isinstance(s, ReluStep):
        return {"kind": "relu", "input": s.input, "output": s.output, "shift": s.shift,
                "source": list(s.source)}
    if isinstance(s, TruncateStep):
        return {"kind": "truncate", "input": s.input, "output": s.output, "shift": s.shift,
                "reason": s.reason}
    d = {"kind": "output", "input": s.input, "frac_bits": s.frac_bits, "shape": list(s.shape)}
    if s.reveal != "logits":  # absent for logits: earlier plans keep their digests
        d["reveal"] = s.reveal
    return d


# Bounds on what a plan file may declare: a plan read from an untrusted peer
# must not make the reader allocate or shift without limit.
MAX_FRAC_BITS = 128
MAX_TENSOR_ELEMENTS = 1 << 28


def _reject_constant(name: str) -> Any:
    raise PlanFormatError(f"{name} is not allowed in a plan header")


def _field(d: Any, key: str, kind: type) -> Any:
    if not isinstance(d, dict):
        raise PlanFormatError(f"expected a JSON object holding {key!r}, got {type(d).__name__}")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PlanFormatError(f"{key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise PlanFormatError(f"{what} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _ints(v: Any, what: str, n: int, lo: int, hi: int = 1 << 31) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) != n:
        raise PlanFormatError(f"{what} must be a list of {n} integers, got {v!r}")
    return tuple(_int(x, what, lo, hi) for x in v)


def _shape(v: Any, name: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not 1 <= len(v) <= 4:
        raise PlanFormatError(f"tensor {name!r}: shape must be a list of 1 to 4 sizes, got {v!r}")
    shape = _ints(v, f"tensor {name!r} shape", len(v), 1)
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise PlanFormatError(f"tensor {name!r}: more than {MAX_TENSOR_ELEMENTS} elements")
    return shape


def _names(v: Any, what: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise PlanFormatError(f"{what} must be a list of strings")
    return tuple(v)


def _step_from_dict(i: int, d: dict[str, Any], arrays: dict[str, np.ndarray]) -> Step:
    kind = _field(d, "kind", str)
    if kind == "linear":
        terms: list[Term] = []
        for j, t in enumerate(_field(d, "terms", list)):
            w = arrays.get(f"w{i}_{j}")
            op, src = _field(t, "op", str), _field(t, "input", str)
            if op == "scale":
                terms.append(ScaleTerm(src, _int(t["shift"], "shift", 0, MAX_FRAC_BITS)))
            elif op == "conv2d":
                terms.append(ConvTerm(src, _ints(t["weight_shape"], "weight_shape", 4, 1),
                                      _ints(t["stride"], "stride", 2, 1),
                                      _ints(t["padding"], "padding", 2, 0),
                                      _int(t["groups"], "groups", 1, 1 << 31),
                                      _int(t["frac_w"], "frac_w", 0, MAX_FRAC_BITS), w))
            elif op == "fc":
                terms.append(FCTerm(src, _ints(t["weight_shape"], "weight_shape", 2, 1),
                                    _int(t["frac_w"], "frac_w", 0, MAX_FRAC_BITS), w))
            else:
                raise PlanFormatError(f"step {i}: unknown term op {op!r}")
        return LinearStep(_field(d, "output", str), terms, _names(d["source"], "source"),
                          arrays.get(f"b{i}"))
    if kind in ("relu", "truncate"):
        src, out = _field(d, "input", str), _field(d, "output", str)
        shift = _int(d["shift"], "shift", 0, MAX_FRAC_BITS)
        if kind == "relu":
            return ReluStep(src, out, shift, _names(d["source"], "source"))
        return TruncateStep(src, out, shift, _field(d, "reason", str))
    if kind == "output":
        reveal = d.get("reveal", "logits")
        if reveal not in OUTPUT_REVEALS:
            raise PlanFormatError(f"step {i}: output reveal must be one of {OUTPUT_REVEALS}, got {reveal!r}")
        return OutputStep(_field(d, "input", str), _int(d["frac_bits"], "frac_bits", 0, MAX_FRAC_BITS),
                          _shape(d["shape"], "output"), reveal)
    raise PlanFormatError(f"step {i}: unknown kind {kind!r}")
