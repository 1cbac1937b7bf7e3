"""What the two parties' sessions share: the session-state error, their
garbled-circuit engines per step, and the two halves of an offline exchange.

:mod:`pie.protocol.server` and :mod:`pie.protocol.client` both build on it
(neither imports the other) to run a Plan together (DESIGN.md section 2).

Shares live in ``Z_{2^l}`` per tensor: ``v = v_s + v_c mod 2^l``. Every client
share is fixed in the offline phase, before the input exists:

- the input's client share is a fresh uniform mask ``r``;
- a linear step's client share is ``sum_i W_i(x_c,i) - s_i`` obtained by HE
  (the server keeps the fresh masks ``s_i``), plus its local scale terms;
- a ReLU/truncate step's client share is a fresh mask ``r`` that the garbled
  circuit subtracts from its output; the client gets the labels of its share
  and of ``r`` by OT, the server garbles.

Online, the client sends ``x - r`` (the server's input share); linear steps are
local on the server (``W(x_s) + s + b``), so chains of them (culled stages) cost
no messages; each round of garbled steps (:meth:`Plan.rounds`: ReLUs and
truncations that do not depend on each other) costs one round trip (labels of
``x_s`` out, colour bits back; :meth:`Plan.schedule`); the server finally sends
its share of the logits.

Offline work runs in exchanges (:func:`pie.protocol.schedule.offline_exchanges`): the client sends
every HE input and OT whose share it knows, then receives every answer, one
round trip per level of the HE dependency chains rather than one per step.
Under a label-only Plan (``plan.output.reveal == "label"``) the server sends,
instead of its share of the logits, the labels of that share for a garbled
argmax prepared offline (:class:`pie.gc.ArgmaxServer`, one per set): the
client learns the top-1 index, the logits stay shared.

Offline material is bound to one connection and one query: a session
prepares any number of sets (:meth:`~pie.protocol.ClientSession.prepare`), each query
consumes one set per image, oldest first, and a set leaves the pool before its
query starts; the garbled material itself refuses a second use. A batch of B
images runs B sets side by side in the rounds of one image. Each set has
its own HE keys, so the flooding stays sized for one set's coefficients.
A call that fails once it has talked to the peer leaves the session failed:
every later call raises :class:`SessionStateError` without sending anything
(its material may be half used or half sent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..channel import Channel
from ..plan import Plan, ReluStep, TruncateStep
from . import schedule

__all__ = ["SessionStateError", "exchange_parts", "garbled_engines"]


class SessionStateError(RuntimeError):
    """A session was used after one of its calls failed (or after it was closed)."""


_Engine = TypeVar("_Engine")


def garbled_engines(plan: Plan, engine: Callable[..., _Engine], channel: Channel, threads: int) -> dict[int, _Engine]:
    """One ``engine`` (:class:`pie.gc.ReluServer` or :class:`pie.gc.ReluClient`) per ReLU/truncate
    shape of ``plan``, keyed by the index of every step it serves. They are set
    up in :func:`~pie.protocol.schedule.gc_shapes` order, the order in which
    the peer sets up its own."""
    engines = {shape: engine(channel, shape[0], shape[1], shape[2], threads, truncate=shape[3])
               for shape in schedule.gc_shapes(plan)}
    return {i: engines[schedule.gc_shape(plan, step)] for i, step in enumerate(plan.steps)
            if isinstance(step, (ReluStep, TruncateStep))}


def exchange_parts(items: list[schedule.OfflineItem]) -> tuple[list[schedule.OfflineItem], list[schedule.OfflineItem]]:
    """One offline exchange's garbled steps and HE terms (in that order within
    the exchange, as :func:`~pie.protocol.schedule.offline_exchanges` lists them)."""
    return [it for it in items if it.term is None], [it for it in items if it.term is not None]
