"""The server's party: :class:`Server` (a Plan with weights and its online
arithmetic) and :class:`ServerSession` (one client's connection: prepared sets
garbled and masked offline, queries answered online).

The protocol both parties run is described in :mod:`pie.protocol.party`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from .. import gc, he
from ..channel import Channel
from ..compiler import compile as compile_plan
from ..plan import ConvTerm, FCTerm, LinearStep, Plan
from ..plan.reference import mask, prepare_weight, reduce, term_product
from . import schedule, wire
from .party import SessionStateError, exchange_parts, garbled_engines

if TYPE_CHECKING:
    from .limits import SessionBudget

__all__ = ["Server", "ServerSession"]


class Server:
    """The server: holds the network (a Plan with weights) and serves inferences.

    Args:
        plan_or_model: a compiled :class:`pie.Plan` with weights, or a torch
            model to compile (then ``input_shape`` is required and
            ``compile_kwargs`` go to :func:`pie.compile`).
        input_shape: ``(C, H, W)`` when compiling a model.
        threads: garbling threads (0: all cores).
    """

    def __init__(self, plan_or_model: Plan | nn.Module, input_shape: tuple[int, int, int] | None = None,
                 *, threads: int = 0, **compile_kwargs: Any) -> None:
        if isinstance(plan_or_model, Plan):
            plan = plan_or_model
        elif isinstance(plan_or_model, nn.Module):
            if input_shape is None:
                raise ValueError("input_shape is required to compile a model")
            plan = compile_plan(plan_or_model, input_shape, **compile_kwargs)
        else:
            raise TypeError(f"expected a Plan or a torch.nn.Module, got {type(plan_or_model).__name__}")
        if any(isinstance(s, LinearStep) and s.bias is None for s in plan.steps):
            raise ValueError("the server needs a Plan with weights (this is a public plan)")
        self.plan = plan
        self.digest = plan.digest()
        self.threads = threads
        # Every conv/fc weight prepared once for the online ring products.
        self._weights = {(i, k): prepare_weight(term.weight)
                         for i, step in enumerate(plan.steps) if isinstance(step, LinearStep)
                         for k, term in enumerate(step.terms)
                         if isinstance(term, (ConvTerm, FCTerm)) and term.weight is not None}

    def linear(self, index: int, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """The server's online arithmetic of linear step ``index`` on its shares
        ``values`` (tensor name -> residues): bias plus every term, mod the output
        ring. The session adds the step's offline HE mask."""
        step = self.plan.steps[index]
        inputs = {term.input: values[term.input][None] for term in getattr(step, "terms", ())}
        return self.linear_batch(index, inputs)[0]

    def linear_batch(self, index: int, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """:meth:`linear` on a batch: every tensor of ``values`` has a leading
        image axis, and so has the result."""
        step = self.plan.steps[index]
        if not isinstance(step, LinearStep):
            raise ValueError(f"step {index} is a {step.kind} step, not a linear one")
        bits, out_shape = self.plan.tensors[step.output].ring_bits, self.plan.tensors[step.output].shape
        assert step.bias is not None  # checked in __init__
        acc = reduce(step.bias, bits).astype(np.uint64)
        for k, term in enumerate(step.terms):
            x = values[term.input]
            if isinstance(term, (ConvTerm, FCTerm)):
                product = term_product(x, term, self._weights[index, k], bits)
                acc = acc + product.reshape(len(x), *out_shape)  # an fc of the input may fill a (C, H, W) tensor
            else:
                acc = acc + (x << np.uint64(term.shift))
        return mask(acc, bits)

    def public_plan(self) -> Plan:
        """What a client needs (no weights); its digest equals the server's."""
        return self.plan.public()

    def session(self, channel: Channel, *, pool: int = 1) -> ServerSession:
        """Handshake with one client over ``channel`` and set up the sub-protocols;
        ``pool``: prepared sets the session offers to keep ready."""
        return ServerSession(self, channel, pool=pool)

    def serve(self, channel: Channel, *, pool: int = 1) -> None:
        """Serve the client on ``channel``: handshake, then its requests
        (prepared sets and queries) until it says goodbye (see :meth:`ServerSession.serve`)."""
        session = self.session(channel, pool=pool)
        try:
            session.serve()
        finally:
            session.close()


@dataclass
class _ServerSet:
    """One prepared set on the server, for exactly one query (one image): the
    HE masks ``s`` of the linear steps and the garbled material of the GC steps."""

    masks: dict[int, np.ndarray] = field(default_factory=dict)
    gc: dict[int, Any] = field(default_factory=dict)
    argmax: Any = None  # label-only output: this set's garbled argmax


class ServerSession:
    """One client's connection on the server side: prepared sets, then queries.

    The client drives it (see :mod:`pie.protocol.wire`): each ``PREPARE``
    runs the offline phase for that many sets, each query takes one prepared
    set per image, oldest first, and consumes it. A set is never used twice:
    it leaves the pool before the query that uses it starts, and its garbled
    material refuses a second use. After the handshake and after every
    request the session offers to prepare up to ``pool`` sets (within
    ``budget``), which a client that refills in the background accepts.
    """

    def __init__(self, server: Server, channel: Channel, *, conversation: wire.Conversation | None = None,
                 admit: Callable[[], None] | None = None, pool: int = 1,
                 budget: SessionBudget | None = None) -> None:
        """Handshake on ``channel`` (or continue ``conversation`` on it);
        ``admit`` may refuse the session by raising :class:`wire.ServerBusyError`;
        ``budget`` (already admitted by ``admit``) bounds the sets held."""
        self.server = server
        self.plan = server.plan
        self.channel = channel
        self.pool = pool
        self.budget = budget
        self.queries = 0  # queries answered
        self.wire = conversation or wire.Conversation(channel, "server")
        self.wire.server_handshake(server.digest, admit)
        self._gc = garbled_engines(self.plan, gc.ReluServer, channel, server.threads)
        self._ready: deque[_ServerSet] = deque()
        self._failed = False
        self.wire.server_offer(self._offer())

    @property
    def prepared(self) -> int:
        """Prepared sets waiting for a query."""
        return len(self._ready)

    @property
    def failed(self) -> bool:
        """Whether a request failed; the session then refuses every call."""
        return self._failed

    def serve(self) -> None:
        """Answer the client's requests until it says ``BYE``.

        Raises:
            PeerClosedError: the client went away without ``BYE`` (its
                prepared sets are dropped with the session).
            ChannelError: any other failure of the connection or the protocol.
        """
        while self.wire.phase is not wire.Phase.DONE:
            self._request()

    def offline(self) -> None:
        """Answer the client's next request, which must ask for prepared sets."""
        self._request(wire.PREPARE)

    def online(self) -> None:
        """Answer the client's next request, which must be a query."""
        self._request(wire.MASKED_INPUT)

    def close(self) -> None:
        """Drop every prepared set (they are bound to this connection and are
        never used elsewhere) and give back their share of the budget."""
        self._ready.clear()
        if self.budget is not None:
            self.budget.release(self.budget.held)

    def _request(self, expected: int | None = None) -> None:
        if self._failed:
            raise SessionStateError("an earlier call of this session failed; the client must start a new one")
        if self.wire.phase is wire.Phase.DONE:
            raise RuntimeError("the client has ended the session")
        try:
            self._answer(expected)
        except BaseException:
            self._failed = True  # its sets are never used again; close() drops them
            raise

    def _answer(self, expected: int | None) -> None:
        per_image = 8 * self.plan.tensors[self.plan.input].numel
        kind, arg = self.wire.server_request(per_image * len(self._ready))
        if expected is not None and kind != expected:
            self.wire.failed = True
            raise wire.ProtocolError(f"server: expected {wire.message_name(expected)}, "
                                     f"got {wire.message_name(kind)}")
        if kind == wire.PREPARE:
            self._prepare(arg)
        elif kind == wire.MASKED_INPUT:
            self._query(arg)

    def _offer(self) -> int:
        want = self.pool - len(self._ready)
        return max(0, want if self.budget is None else min(want, self.budget.available()))

    def _prepare(self, count: int) -> None:
        if self.budget is not None:
            try:
                self.budget.reserve(count)
            except wire.ServerBusyError as exc:  # refused; the session goes on
                self.wire.server_prepared(str(exc))
                self.wire.server_offer(self._offer())
                return
        self.wire.server_prepared()
        for _ in range(count):
            self._ready.append(self._prepare_set())
        self.wire.server_offer(self._offer())

    def _prepare_set(self) -> _ServerSet:
        """The offline phase of one query, in the exchanges of
        :func:`pie.protocol.schedule.offline_exchanges`: fresh HE keys (their flooding is sized for
        one set's coefficients); per exchange, announce its garbled batches,
        receive every OT and HE input, then garble and reply (the client never
        waits on a write of ours while it writes); a label-only output's
        garbled argmax last."""
        plan, t, channel = self.plan, self.plan.tensors, self.channel
        he_sessions = {bits: he.LinearServer(channel, bits, n) for bits, n in schedule.he_sessions(plan).items()}
        material = _ServerSet()
        masks: dict[int, np.ndarray] = {}
        for items in schedule.offline_exchanges(plan):
            garbled, linear = exchange_parts(items)
            for it in garbled:
                material.gc[it.step] = self._gc[it.step].announce(t[plan.steps[it.step].input].numel)
            for it in garbled:
                self._gc[it.step].receive_ot(material.gc[it.step])
            received = [self._receive_he(he_sessions, it) for it in linear]
            for it in garbled:
                self._gc[it.step].garble(material.gc[it.step])
            for it, inputs in zip(linear, received):
                term = schedule.he_term(plan, it)
                s = he_sessions[schedule.he_ring(plan, it)].reply(inputs, term.weight) << np.uint64(term.shift)
                masks[it.step] = s if it.step not in masks else masks[it.step] + s
        for i, acc in masks.items():
            out = t[plan.steps[i].output]
            material.masks[i] = mask(acc.reshape(out.shape), out.ring_bits)
        label = schedule.argmax_shape(plan)
        if label is not None:
            material.argmax = gc.ArgmaxServer(channel, *label, self.server.threads)
            material.argmax.offline()
        self.wire.server_offline_check()
        return material

    def _receive_he(self, he_sessions: dict[int, Any], item: schedule.OfflineItem) -> Any:
        term = schedule.he_term(self.plan, item)
        party = he_sessions[schedule.he_ring(self.plan, item)]
        if isinstance(term, ConvTerm):
            return party.receive_conv2d(self.plan.tensors[term.input].shape, term.weight.shape,
                                        *schedule.conv_geometry(term))
        return party.receive_matmul(term.weight.shape)

    def _query(self, raw: bytes) -> None:
        """One query of B images (B = the masked input's size over one
        image's): B prepared sets, one online phase, the same rounds as one."""
        plan, t = self.plan, self.plan.tensors
        spec = t[plan.input]
        per_image = 8 * spec.numel
        if not raw or len(raw) % per_image:
            raise wire.MalformedMessageError(f"masked input has {len(raw)} bytes, not a multiple of "
                                             f"one image's {per_image}")
        sets = [self._ready.popleft() for _ in range(len(raw) // per_image)]  # one-time material
        b = len(sets)
        values = {plan.input: mask(np.frombuffer(raw, dtype="<u8").astype(np.uint64), spec.ring_bits)
                  .reshape(b, *spec.shape)}
        waves = plan.schedule()
        out_index = plan.steps.index(plan.output)
        order = [i for local, garbled in waves for i in (*local, *garbled)] + [out_index]
        last_use = plan.last_uses(order)

        def release(i: int) -> None:
            for name in last_use.get(i, ()):
                values.pop(name, None)

        for local, garbled in waves:
            for i in local:
                values[plan.steps[i].output] = self._linear(i, values, sets)
                release(i)
            # One round trip for the whole round, all images together: every
            # batch's labels go out before any reply is read (gc.ReluServer.send_labels).
            for i in garbled:
                x = values[plan.steps[i].input]
                for k, material in enumerate(sets):
                    self._gc[i].send_labels(material.gc[i], np.ascontiguousarray(x[k].reshape(-1)))
            for i in garbled:
                step = plan.steps[i]
                engine = self._gc[i]
                values[step.output] = np.stack([engine.finish(material.gc.pop(i)).reshape(t[step.output].shape)
                                                for material in sets])
                release(i)
        out = values[plan.output.input]
        if sets[0].argmax is not None:
            for k, material in enumerate(sets):
                material.argmax.online(np.ascontiguousarray(out[k].reshape(-1)))
            share = b""  # sealed anyway: the client checks the transcript before using its labels
        else:
            share = out.astype("<u8").tobytes()
        sets.clear()
        if self.budget is not None:
            self.budget.release(b)
        self.queries += 1
        self.wire.server_output(share, self._offer())

    def _linear(self, index: int, values: dict[str, np.ndarray], sets: list[_ServerSet]) -> np.ndarray:
        acc = self.server.linear_batch(index, values)
        if index not in sets[0].masks:
            return acc
        masks = np.stack([material.masks.pop(index) for material in sets])
        return mask(acc + masks, self.plan.tensors[self.plan.steps[index].output].ring_bits)
