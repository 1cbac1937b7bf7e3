"""When the protocol exchanges what: the offline exchanges, the HE sessions
and the garbled-circuit shapes a Plan needs (DESIGN.md section 2).

Both parties and the cost model (:mod:`pie.cost`) derive the schedule from the
public Plan alone, so they agree on it without negotiating.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import he
from ..plan import ConvTerm, FCTerm, LinearStep, Plan, ReluStep, TruncateStep, he_ring_bits

__all__ = ["LABEL_BYTES", "OFFLINE_EXCHANGE_BYTES", "OfflineItem", "argmax_shape", "conv_geometry", "gc_shape",
           "gc_shapes", "he_frame_bytes", "he_sessions", "offline_exchanges"]


def _square(pair: tuple[int, int], what: str) -> int:
    if pair[0] != pair[1]:
        raise ValueError(f"{what} {pair} is not square; the HE layer supports square {what}s only")
    return int(pair[0])


def conv_geometry(term: ConvTerm) -> tuple[int, int, int]:
    """A convolution term's ``(stride, padding, groups)`` as the HE layer takes
    them (square strides and paddings only: :class:`ValueError` otherwise)."""
    return _square(term.stride, "stride"), _square(term.padding, "padding"), term.groups


def gc_shape(plan: Plan, step: ReluStep | TruncateStep) -> tuple[int, int, int, bool]:
    t = plan.tensors
    return (t[step.input].ring_bits, t[step.output].ring_bits, step.shift,
            isinstance(step, TruncateStep))


def he_sessions(plan: Plan) -> dict[int, int]:
    """HE sessions (one key pair per output ring) and the coefficients each may
    reveal: the flooding is sized for that count (DESIGN.md section 5), so a
    tight, public count buys noise budget for larger weights. Twice the
    outputs, rounded up to a power of two, covers every slot a reply opens."""
    outputs: dict[int, int] = {}
    for s in plan.steps:
        if isinstance(s, LinearStep):
            for t in s.terms:
                if isinstance(t, (ConvTerm, FCTerm)):
                    bits = he_ring_bits(t, plan.tensors[s.output].ring_bits)
                    outputs[bits] = outputs.get(bits, 0) + plan.tensors[s.output].numel
    return {bits: 1 << (2 * n - 1).bit_length() for bits, n in sorted(outputs.items())}


def he_term(plan: Plan, item: OfflineItem) -> ConvTerm | FCTerm:
    """The conv or fc term an HE offline item computes."""
    step = plan.steps[item.step]
    assert isinstance(step, LinearStep) and item.term is not None
    term = step.terms[item.term]
    assert isinstance(term, (ConvTerm, FCTerm))
    return term


def he_ring(plan: Plan, item: OfflineItem) -> int:
    """The ring (HE session) an HE offline item's product is computed in."""
    return he_ring_bits(he_term(plan, item), plan.tensors[plan.steps[item.step].output].ring_bits)


def gc_shapes(plan: Plan) -> list[tuple[int, int, int, bool]]:
    return sorted({gc_shape(plan, s) for s in plan.steps if isinstance(s, (ReluStep, TruncateStep))})


def argmax_shape(plan: Plan) -> tuple[int, int] | None:
    """(classes, ring bits) of a label-only output, None for logits."""
    if plan.output.reveal != "label":
        return None
    spec = plan.tensors[plan.output.input]
    return spec.numel, spec.ring_bits


# What the server may hold for one offline exchange: the OT blocks of its
# garbled steps (until garbled) and the HE input frames it received (until
# answered). A public constant, so both parties split exchanges alike.
OFFLINE_EXCHANGE_BYTES = 256 << 20


@dataclass(frozen=True)
class OfflineItem:
    """One piece of offline work: a garbled step (``term`` is None) or one HE
    term of a linear step; ``held_bytes`` is what the server holds for it
    during its exchange."""

    step: int
    term: int | None
    held_bytes: int


def offline_exchanges(plan: Plan) -> list[list[OfflineItem]]:
    """The offline phase as round trips: in each exchange the client sends all
    it can (the OTs of garbled steps and the HE inputs whose shares it knows),
    then receives every answer (garbled tables, HE replies), which makes the
    shares of the next exchange known. Client shares known from the start are
    the input mask and every garbled step's output mask, so the exchanges are
    the levels of the HE dependency chains (culled stages, shortcut
    convolutions), not one per step. An exchange whose held bytes would pass
    :data:`OFFLINE_EXCHANGE_BYTES` is split. Garbled steps come first within an
    exchange, then HE terms, each in Plan order."""
    t = plan.tensors
    ready: dict[str, int] = {plan.input: 0}
    for s in plan.steps:
        if isinstance(s, (ReluStep, TruncateStep)):
            ready[s.output] = 0
    levels: dict[int, list[OfflineItem]] = {}
    for i, s in enumerate(plan.steps):
        if isinstance(s, LinearStep):
            known = 0
            for k, term in enumerate(s.terms):
                level = ready[term.input]
                if isinstance(term, (ConvTerm, FCTerm)):
                    levels.setdefault(level, []).append(OfflineItem(i, k, he_frame_bytes(plan, s, term)))
                    level += 1  # its share arrives with the exchange's replies
                known = max(known, level)
            ready[s.output] = known
        elif isinstance(s, (ReluStep, TruncateStep)):
            held = LABEL_BYTES * t[s.output].numel * (t[s.input].ring_bits + t[s.output].ring_bits)
            levels.setdefault(ready[s.input], []).append(OfflineItem(i, None, held))
    exchanges: list[list[OfflineItem]] = []
    for level in sorted(levels):
        current: list[OfflineItem] = []
        held = 0
        for item in sorted(levels[level], key=lambda it: (it.term is not None, it.step, it.term or 0)):
            if current and held + item.held_bytes > OFFLINE_EXCHANGE_BYTES:
                exchanges.append(current)
                current, held = [], 0
            current.append(item)
            held += item.held_bytes
        exchanges.append(current)
    return exchanges


LABEL_BYTES = 16  # one OT block / wire label


def he_frame_bytes(plan: Plan, step: LinearStep, term: ConvTerm | FCTerm) -> int:
    """A bound on one HE term's input frame: its seeded ciphertexts (one
    polynomial in every top-level limb each)."""
    params = he.he_parameters(he_ring_bits(term, plan.tensors[step.output].ring_bits))
    src = plan.tensors[term.input]
    if isinstance(term, ConvTerm):
        lay = he.layout(src.shape, term.weight_shape, *conv_geometry(term))
    else:
        lay = he.layout((src.numel, 1, 1), (term.weight_shape[0], src.numel, 1, 1))
    return lay["num_inputs"] * params["poly_degree"] * params["top_limbs"] * 8
