"""The Plan's printed table: one row a step (kind, shapes, ReLUs, rings, scales) and the totals."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .graph import gc_cost, rounds
from .steps import (
    ConvTerm, LinearStep, OutputStep, ReluStep, ScaleTerm, Step, TensorSpec, Term, TruncateStep,
)

__all__ = ["summary"]


def summary(input: str, tensors: Mapping[str, TensorSpec], steps: Sequence[Step],
            policy: dict[str, Any]) -> str:
    """A per-step table (kind, shapes, ReLUs, rings, scales) and the totals."""
    rnd = rounds(input, steps)
    rows = [("#", "kind", "output", "shape", "inputs", "ReLUs", "ring", "frac", "shift", "rnd")]
    for i, s in enumerate(steps):
        if isinstance(s, OutputStep):
            v = tensors[s.input]
            rows.append((str(i), "output" if s.reveal == "logits" else "label", s.input, str(s.shape),
                         s.input, "", str(v.ring_bits), str(s.frac_bits), "", ""))
            continue
        v = tensors[s.output]
        if isinstance(s, LinearStep):
            ins = " + ".join(_term_label(t) for t in s.terms)
            rows.append((str(i), "linear", s.output, str(v.shape), ins, "",
                         str(v.ring_bits), str(v.frac_bits), "", ""))
        else:
            src = tensors[s.input]
            relus = f"{v.numel:,}" if isinstance(s, ReluStep) else ""
            rows.append((str(i), s.kind, s.output, str(v.shape), s.input, relus,
                         f"{src.ring_bits}->{v.ring_bits}", f"{src.frac_bits}->{v.frac_bits}",
                         str(s.shift), str(rnd[s.output])))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    cost = gc_cost(tensors, steps)
    lines.append("")
    lines.append(
        f"ReLUs {cost['relus']:,} ({cost['relu_and_gates']:,} AND gates); "
        f"truncations {cost['truncations']:,} elements ({cost['truncate_and_gates']:,} AND "
        f"gates); online GC rounds {max(rnd.values(), default=0)}"
    )
    for s in steps:
        if isinstance(s, TruncateStep):
            lines.append(f"truncate {s.input}: {s.reason}")
    shown = {k: v for k, v in policy.items() if k != "reveals"}  # long: one entry per field
    lines.append("policy: " + json.dumps(shown, sort_keys=True))
    if "reveals" in policy:
        lines.append("what the public plan reveals: plan.policy['reveals']")
    return "\n".join(lines)


def _term_label(t: Term) -> str:
    if isinstance(t, ScaleTerm):
        return f"{t.input}<<{t.shift}" if t.shift else t.input
    shifted = f"<<{t.shift}" if t.shift else ""
    if isinstance(t, ConvTerm):
        kh, kw = t.weight_shape[2:]
        g = f",g{t.groups}" if t.groups > 1 else ""
        return f"conv{kh}x{kw}/{t.stride[0]}{g}({t.input}){shifted}"
    return f"fc({t.input}){shifted}"
