"""The Plan's file format: JSON-compatible public part, canonical digest, ``.npz`` read and write.

A plan file is one ``.npz`` archive without pickles: a canonical JSON header
(``{"public": ..., "private": ...}``) plus the weights ``w{step}_{term}`` (int16,
int32 or int64, as the Plan holds them) and the int64 biases ``b{step}``. Parsing checks every field's type and bounds, since a
plan may come from an untrusted peer.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO, TypeVar

import numpy as np

from .steps import (
    OUTPUT_REVEALS, ConvTerm, FCTerm, LinearStep, OutputStep, PlanFormatError, ReluStep,
    ScaleTerm, Step, TensorSpec, Term, TruncateStep,
)

__all__ = ["PLAN_FORMAT", "PLAN_FORMAT_VERSION", "digest", "parse", "public_dict", "read", "write"]

PLAN_FORMAT = "pie-plan"
PLAN_FORMAT_VERSION = 1

T = TypeVar("T")
# Builds the plan object from (input, pixel_max, tensors, steps, policy, private).
Build = Callable[[str, int, dict[str, TensorSpec], list[Step], dict[str, Any], dict[str, Any]], T]


def public_dict(input: str, pixel_max: int, tensors: Mapping[str, TensorSpec],
                steps: Sequence[Step], policy: dict[str, Any]) -> dict[str, Any]:
    """The public part of a plan as JSON-compatible data (what :func:`digest` hashes)."""
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_FORMAT_VERSION,
        "input": input,
        "pixel_max": pixel_max,
        "tensors": [
            {"name": v.name, "shape": list(v.shape), "ring_bits": v.ring_bits,
             "frac_bits": v.frac_bits}
            for v in tensors.values()
        ],
        "steps": [_step_to_dict(s) for s in steps],
        "policy": policy,
    }


def digest(public: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a :func:`public_dict`."""
    return hashlib.sha256(_canonical(public)).hexdigest()


def write(f: BinaryIO, public: dict[str, Any], private: dict[str, Any],
          steps: Sequence[Step]) -> None:
    """Write a plan file: the header and the weights and biases the steps hold."""
    arrays: dict[str, np.ndarray] = {}
    for i, s in enumerate(steps):
        if isinstance(s, LinearStep):
            if s.bias is not None:
                arrays[f"b{i}"] = s.bias
            for j, term in enumerate(s.terms):
                if not isinstance(term, ScaleTerm) and term.weight is not None:
                    arrays[f"w{i}_{j}"] = term.weight
    header = {"public": public, "private": private}
    arrays["header"] = np.frombuffer(_canonical(header), dtype=np.uint8)
    np.savez(f, allow_pickle=False, **arrays)


def read(f: BinaryIO, where: str, build: Build[T]) -> T:
    """Read a plan file written by :func:`write` and :func:`parse` it with ``build``.

    Raises:
        PlanFormatError: not a plan file, unsupported version, or inconsistent
            content (``where`` names the file in the message).
    """
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
    return parse(header["public"], header.get("private", {}), arrays, build)


def parse(pub: dict[str, Any], private: dict[str, Any], arrays: dict[str, np.ndarray],
          build: Build[T]) -> T:
    """A plan from its :func:`public_dict`, private part and arrays: ``build``
    receives the checked parts; whatever it raises on bad content becomes a
    :class:`PlanFormatError` too.

    Raises:
        PlanFormatError: unsupported format or version, or malformed content.
    """
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
        return build(_field(pub, "input", str), _int(pub["pixel_max"], "pixel_max", 1, 1 << 16),
                     tensors, steps, _field(pub, "policy", dict), private)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, PlanFormatError):
            raise
        raise PlanFormatError(f"malformed plan: {exc!r}") from exc


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _term_to_dict(t: Term) -> dict[str, Any]:
    if isinstance(t, ScaleTerm):
        return {"op": "scale", "input": t.input, "shift": t.shift}
    if isinstance(t, ConvTerm):
        d = {"op": "conv2d", "input": t.input, "weight_shape": list(t.weight_shape),
             "stride": list(t.stride), "padding": list(t.padding), "groups": t.groups,
             "frac_w": t.frac_w}
    else:
        d = {"op": "fc", "input": t.input, "weight_shape": list(t.weight_shape), "frac_w": t.frac_w}
    if t.shift:  # absent when 0: earlier plans keep their digests
        d["shift"] = t.shift
    return d


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


def _term_shift(t: dict[str, Any]) -> int:
    return _int(t["shift"], "shift", 0, 63) if "shift" in t else 0


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
                                      _int(t["frac_w"], "frac_w", 0, MAX_FRAC_BITS), w,
                                      _term_shift(t)))
            elif op == "fc":
                terms.append(FCTerm(src, _ints(t["weight_shape"], "weight_shape", 2, 1),
                                    _int(t["frac_w"], "frac_w", 0, MAX_FRAC_BITS), w,
                                    _term_shift(t)))
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
