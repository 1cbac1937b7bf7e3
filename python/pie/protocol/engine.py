"""The two parties executing a Plan (DESIGN.md section 2).

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
prepares any number of sets (:meth:`ClientSession.prepare`), each query
consumes one set per image, oldest first, and a set leaves the pool before its
query starts; the garbled material itself refuses a second use. A batch of B
images runs B sets side by side in the rounds of one image. Each set has
its own HE keys, so the flooding stays sized for one set's coefficients.
A call that fails once it has talked to the peer leaves the session failed:
every later call raises :class:`SessionStateError` without sending anything
(its material may be half used or half sent).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .. import gc, he
from ..channel import Channel, ChannelError, memory_pair
from ..compiler import compile as compile_plan
from ..crypto import secure_random
from ..link import Link, resolve_link
from ..plan import ConvTerm, FCTerm, LinearStep, OutputStep, Plan, ReluStep, TruncateStep
from ..plan.reference import conv2d_ring, fc_ring, mask, prepare_weight, reduce
from . import schedule, wire
from .report import Report, StepCost

if TYPE_CHECKING:
    from .limits import SessionBudget

__all__ = ["OFFLINE_EXCHANGE_BYTES", "Client", "ClientSession", "schedule.OfflineItem", "Server", "ServerSession",
           "SessionStateError", "infer", "offline_exchanges"]


class SessionStateError(RuntimeError):
    """A session was used after one of its calls failed (or after it was closed)."""


def _random_ring(shape: tuple[int, ...], bits: int) -> np.ndarray:
    """Uniform residues mod 2^bits from the OS CSPRNG (masks must be unpredictable)."""
    n = int(np.prod(shape)) if shape else 1
    raw = np.frombuffer(secure_random(8 * n), dtype=np.uint64).reshape(shape)
    return mask(raw.copy(), bits)


class _Meter:
    """Per-step costs from the client's channel counters and clock."""

    def __init__(self, channel: Channel, plan: Plan) -> None:
        self.channel = channel
        self.costs = [StepCost(i, s.kind, getattr(s, "output", s.inputs[0]),
                               relus=plan.tensors[s.output].numel if isinstance(s, ReluStep) else 0)
                      for i, s in enumerate(plan.steps)]

    @contextmanager
    def measure(self, index: int, phase: str, count_rounds: bool = True) -> Iterator[None]:
        """Charge the time and traffic of the block to step ``index``; steps that
        share a round trip count its messages once (``count_rounds`` on one of them)."""
        ch = self.channel
        sent, received, flushes, trips = ch.bytes_sent, ch.bytes_received, ch.flushes, ch.round_trips
        start = time.perf_counter()
        yield
        ch.flush()
        cost = self.costs[index]
        setattr(cost, f"{phase}_round_trips", getattr(cost, f"{phase}_round_trips") + ch.round_trips - trips)
        setattr(cost, f"{phase}_seconds", getattr(cost, f"{phase}_seconds") + time.perf_counter() - start)
        setattr(cost, f"{phase}_bytes_c2s", getattr(cost, f"{phase}_bytes_c2s") + ch.bytes_sent - sent)
        setattr(cost, f"{phase}_bytes_s2c",
                getattr(cost, f"{phase}_bytes_s2c") + ch.bytes_received - received)
        # One-way messages. Offline: the client's flushes, plus at least one
        # reply for every exchange in which the server sent something. Online,
        # a block's sends go out back to back (one per image of a batch, never
        # waiting for a reply): one message each way at most.
        if count_rounds:
            replied = 1 if ch.bytes_received > received else 0
            if phase == "online":
                rounds = (1 if ch.bytes_sent > sent else 0) + replied
            else:
                rounds = ch.flushes - flushes + replied
            setattr(cost, f"{phase}_rounds", getattr(cost, f"{phase}_rounds") + rounds)


# ------------------------------------------------------------------- server


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
        bits = self.plan.tensors[step.output].ring_bits
        assert step.bias is not None  # checked in __init__
        acc = reduce(step.bias, bits).astype(np.uint64)
        for k, term in enumerate(step.terms):
            x = values[term.input]
            if isinstance(term, ConvTerm):
                acc = acc + conv2d_ring(x, self._weights[index, k], term.stride, term.padding,
                                        term.groups, bits)
            elif isinstance(term, FCTerm):
                acc = acc + fc_ring(x, self._weights[index, k], bits)
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
        self._gc = {shape: gc.ReluServer(channel, shape[0], shape[1], shape[2], server.threads,
                                         truncate=shape[3]) for shape in schedule.gc_shapes(self.plan)}
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
            garbled = [it for it in items if it.term is None]
            linear = [it for it in items if it.term is not None]
            for it in garbled:
                step = plan.steps[it.step]
                material.gc[it.step] = self._gc[schedule.gc_shape(plan, step)].announce(t[step.input].numel)
            for it in garbled:
                self._gc[schedule.gc_shape(plan, plan.steps[it.step])].receive_ot(material.gc[it.step])
            received = [self._receive_he(he_sessions, it) for it in linear]
            for it in garbled:
                self._gc[schedule.gc_shape(plan, plan.steps[it.step])].garble(material.gc[it.step])
            for it, inputs in zip(linear, received):
                step = plan.steps[it.step]
                assert isinstance(step, LinearStep) and it.term is not None
                s = he_sessions[t[step.output].ring_bits].reply(inputs, step.terms[it.term].weight)
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
        step = self.plan.steps[item.step]
        assert isinstance(step, LinearStep) and item.term is not None
        term = step.terms[item.term]
        party = he_sessions[self.plan.tensors[step.output].ring_bits]
        if isinstance(term, ConvTerm):
            return party.receive_conv2d(self.plan.tensors[term.input].shape, term.weight.shape,
                                        schedule.square(term.stride, "stride"), schedule.square(term.padding, "padding"),
                                        term.groups)
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
                step = plan.steps[i]
                engine = self._gc[schedule.gc_shape(plan, step)]
                for k, material in enumerate(sets):
                    engine.send_labels(material.gc[i], np.ascontiguousarray(values[step.input][k].reshape(-1)))
            for i in garbled:
                step = plan.steps[i]
                engine = self._gc[schedule.gc_shape(plan, step)]
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


# ------------------------------------------------------------------- client


class Client:
    """The client: holds the public Plan and an input; learns only the output.

    Args:
        public_plan: the server's public Plan (weights absent or ignored).
        threads: evaluation threads (0: all cores).
    """

    def __init__(self, public_plan: Plan, *, threads: int = 0) -> None:
        self.plan = public_plan.public()
        self.digest = self.plan.digest()
        self.threads = threads

    def session(self, channel: Channel, *, refill: bool = False) -> ClientSession:
        """Handshake with the server on ``channel`` and set up the sub-protocols
        (see :class:`ClientSession`; ``refill`` accepts the server's offers to
        prepare sets in the background)."""
        return ClientSession(self, channel, refill=refill)

    def infer(self, channel: Channel, x: np.ndarray | torch.Tensor,
              progress: bool = False) -> tuple[np.ndarray, Report]:
        """One whole private inference of image ``x`` ((C, H, W), values in [0, 1];
        (B, C, H, W) runs B in one online phase) on a session of its own:
        handshake, offline, online, goodbye. ``progress`` shows a progress bar
        (stderr) over the offline steps."""
        session = self.session(channel)
        session.prepare(int(self.plan.encode_input(x).shape[0]), progress)
        result = session.online(x)
        session.close()
        return result


@dataclass
class _ClientSet:
    """One prepared set on the client, for exactly one query (one image):
    every client share fixed offline (the input mask, the GC material with its
    labels, the share of the output) and what preparing it cost."""

    input_mask: np.ndarray
    gc: dict[int, Any]
    output_share: np.ndarray
    costs: list[StepCost]
    setup_bytes: int
    setup_seconds: float
    setup_round_trips: int = 0
    argmax: Any = None  # label-only output: this set's garbled argmax (then output_share is None)


class ClientSession:
    """A connection on the client side: prepared sets, then any number of queries.

    :meth:`prepare` runs the offline phase (no input needed) for ``k`` future
    queries; :meth:`online` answers a query of one image or a batch, using
    (and consuming) one prepared set per image. ``refill=True`` accepts, in a
    background thread, the server's offers to prepare more sets while the
    session has no query, and lets :meth:`online` prepare what is missing.
    :meth:`close` (or leaving a ``with`` block) says goodbye to the server and
    drops the sets left; they are never used again.
    """

    def __init__(self, client: Client, channel: Channel, *,
                 conversation: wire.Conversation | None = None, refill: bool = False) -> None:
        """Handshake on ``channel`` (or continue ``conversation`` on it)."""
        self.plan = client.plan
        self.channel = channel
        start = time.perf_counter()
        self.wire = conversation or wire.Conversation(channel, "client")
        self.wire.client_handshake(client.digest)
        self._gc = {shape: gc.ReluClient(channel, shape[0], shape[1], shape[2], client.threads,
                                         truncate=shape[3]) for shape in schedule.gc_shapes(self.plan)}
        channel.flush()
        self.wire.client_offer()
        # The session's set-up is charged to its first query's report.
        self._setup_bytes = channel.bytes_sent + channel.bytes_received
        self._setup_seconds = time.perf_counter() - start
        self._setup_round_trips = channel.round_trips
        self._threads = client.threads
        #: The latest query's cost report.
        self.report = Report(costs=_Meter(channel, self.plan).costs)
        self._ready: deque[_ClientSet] = deque()
        # The channel belongs to one caller at a time: a user call or the refill thread.
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0
        self._closed = False
        self._failed = False
        self._error: BaseException | None = None
        self._refill = refill
        self._worker: threading.Thread | None = None
        if refill:
            self._worker = threading.Thread(target=self._refill_loop, name="pie-refill", daemon=True)
            self._worker.start()

    @property
    def prepared(self) -> int:
        """Prepared sets waiting for a query."""
        return len(self._ready)

    @property
    def failed(self) -> bool:
        """Whether a call failed once it talked to the server; the session then
        refuses every call with :class:`SessionStateError`."""
        return self._failed

    @property
    def offer(self) -> int:
        """Sets the server offered, at its latest message, to prepare now."""
        return self.wire.offer

    def prepare(self, k: int = 1, progress: bool = False) -> None:
        """Run the offline phase for ``k`` future queries (one image each) now.

        Raises:
            ServerBusyError: the server's memory limits do not allow ``k`` more
                sets; nothing was prepared and the session goes on.
            ValueError: ``k`` is not in [1, :data:`wire.MAX_PREPARE`].
        """
        with self._turn(), self._talking():
            self._prepare(k, progress)

    def offline(self, progress: bool = False) -> None:
        """Prepare one set (:meth:`prepare` with ``k = 1``): fix every client
        share of the next query: input mask, HE outputs, GC masks (with their
        labels). ``progress`` shows a progress bar (stderr) over the steps."""
        self.prepare(1, progress)

    def online(self, x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, Report]:
        """Run the online phase on image ``x`` ((C, H, W), values in [0, 1]),
        or on a batch (B, C, H, W) in the same rounds as one image: returns
        the decoded logits ((K,), or (B, K) for a batch) and the report.
        Under a label-only Plan it returns the top-1 class instead: an int64
        scalar array, or (B,) for a batch.

        Raises:
            ValueError: ``x`` is not images of the Plan's shape with values in
                [0, 1] (nothing is sent).
            RuntimeError: fewer prepared sets than images (nothing is sent;
                with ``refill`` the missing sets are prepared first).
        """
        pixels = self.plan.encode_input(x)
        y = self.online_int(pixels)
        single = np.ndim(x) == len(self.plan.input_shape)
        if self.plan.output.reveal == "label":
            return (np.asarray(y[0]) if single else y), self.report
        logits = self.plan.decode_output(y)
        return (logits[0] if single else logits), self.report

    def online_int(self, x_int: np.ndarray) -> np.ndarray:
        """The online phase on integer pixels, (C, H, W) or (B, C, H, W):
        returns the output residues (with the batch axis if given one)."""
        spec = self.plan.tensors[self.plan.input]
        x = np.asarray(x_int)
        single = x.ndim == len(spec.shape)
        batch = x[None] if single else x
        if batch.ndim != len(spec.shape) + 1 or tuple(batch.shape[1:]) != spec.shape or not len(batch):
            raise ValueError(f"input has shape {np.shape(x_int)}, the plan expects {spec.shape} "
                             f"or a batch of them")
        with self._turn():
            missing = len(batch) - len(self._ready)
            if missing > 0 and self._refill:
                with self._talking():
                    self._prepare(missing, False)
            elif missing > 0:
                raise RuntimeError(f"online() needs {len(batch)} prepared set(s), {len(self._ready)} "
                                   f"ready: run offline() or prepare(k) first; each set serves "
                                   f"one query, once")
            sets = [self._ready.popleft() for _ in range(len(batch))]  # one-time material
            with self._talking():
                y = self._query(batch, sets)
        return y[0] if single else y

    def close(self) -> None:
        """Stop refilling, drop the prepared sets left and say goodbye to the
        server (if the connection is still in order). Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()
        with self._turn(closing=True):
            while self._ready:
                self._free(self._ready.popleft())
            if self.wire.phase is wire.Phase.IDLE and not self.wire.failed:
                try:
                    self.wire.client_bye()
                except ChannelError:
                    pass  # the server is gone already: nothing is left to end

    def __enter__(self) -> ClientSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ----------------------------------------------------------- internals
    @contextmanager
    def _talking(self) -> Iterator[None]:
        """A call's exchange with the server: if it fails (a refusal for lack
        of memory aside, after which the session goes on) the session is failed."""
        try:
            yield
        except wire.ServerBusyError:
            raise
        except BaseException:
            self._failed = True
            raise

    @contextmanager
    def _turn(self, closing: bool = False) -> Iterator[None]:
        """Hold the channel for one user call (the refill thread waits)."""
        with self._cond:
            if self._closed and not closing:
                raise RuntimeError("the session is closed")
            self._waiting += 1
            self._cond.wait_for(lambda: not self._busy)
            self._waiting -= 1
            if self._error is not None and not closing:
                raise self._error
            if self._failed and not closing:
                raise SessionStateError("an earlier call of this session failed; start a new session")
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _refill_loop(self) -> None:
        """Accept the server's offers one set at a time while no call waits."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (
                    not self._busy and not self._waiting and self.wire.offer > 0))
                if self._closed:
                    return
                self._busy = True
            try:
                self._prepare(1, False)
            except wire.ServerBusyError:
                pass  # the server's memory is taken: its next offer says when to go on
            except BaseException as exc:  # handed to the next call
                with self._cond:
                    self._error = exc
                    self._failed = True
                    self._busy = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _prepare(self, k: int, progress: bool) -> None:
        self.wire.client_prepare(k)
        sets = [self._prepare_set(f"offline {j + 1}/{k}" if progress else None) for j in range(k)]
        # The server's next offer is read before the sets count as prepared, so
        # `prepared` and `offer` never disagree to a watching thread.
        self.wire.client_offer()
        self._ready.extend(sets)

    def _prepare_set(self, progress: str | None) -> _ClientSet:
        """One set's offline phase, in the exchanges of :func:`pie.protocol.schedule.offline_exchanges`
        (one round trip each), then a label-only output's garbled argmax."""
        plan, t, channel = self.plan, self.plan.tensors, self.channel
        meter = _Meter(channel, plan)
        start, moved, trips = time.perf_counter(), channel.bytes_sent + channel.bytes_received, channel.round_trips
        he_sessions = {bits: he.LinearClient(channel, bits, n) for bits, n in schedule.he_sessions(plan).items()}
        channel.flush()
        setup_bytes = channel.bytes_sent + channel.bytes_received - moved
        setup_seconds = time.perf_counter() - start
        setup_round_trips = channel.round_trips - trips
        spec = t[plan.input]
        input_mask = _random_ring(spec.shape, spec.ring_bits)
        shares = {plan.input: input_mask}
        for s in plan.steps:  # output masks are chosen up front: they feed HE
            if isinstance(s, (ReluStep, TruncateStep)):
                shares[s.output] = _random_ring(t[s.output].shape, t[s.output].ring_bits)
        material: dict[int, Any] = {}
        he_out: dict[int, np.ndarray] = {}
        pending = {i: sum(isinstance(term, (ConvTerm, FCTerm)) for term in s.terms)
                   for i, s in enumerate(plan.steps) if isinstance(s, LinearStep)}
        exchanges: Any = schedule.offline_exchanges(plan)
        if progress:
            from tqdm.auto import tqdm

            exchanges = tqdm(exchanges, desc=progress, unit="exchange", leave=False)
        self._settle(shares, he_out, pending)
        last = max(i for i, s in enumerate(plan.steps) if not isinstance(s, OutputStep))
        measure = meter.measure
        for items in exchanges:
            garbled = [it for it in items if it.term is None]
            linear = [it for it in items if it.term is not None]
            for it in garbled:
                with measure(it.step, "offline"):
                    step = plan.steps[it.step]
                    material[it.step] = self._gc[schedule.gc_shape(plan, step)].receive_header(t[step.input].numel)
            for it in garbled:
                with measure(it.step, "offline"):
                    step = plan.steps[it.step]
                    x = np.ascontiguousarray(shares[step.input].reshape(-1))
                    self._gc[schedule.gc_shape(plan, step)].request(material[it.step], x, shares[step.output].reshape(-1))
            for it in linear:
                with measure(it.step, "offline"):
                    self._send_he(he_sessions, it, shares)
            for it in garbled:
                with measure(it.step, "offline"):
                    self._gc[schedule.gc_shape(plan, plan.steps[it.step])].receive_tables(material[it.step])
            for it in linear:
                with measure(it.step, "offline"):
                    step = plan.steps[it.step]
                    y = he_sessions[t[step.output].ring_bits].receive()
                    he_out[it.step] = y if it.step not in he_out else he_out[it.step] + y
                    pending[it.step] -= 1
            self._settle(shares, he_out, pending)
        out_share: np.ndarray | None = shares[plan.output.input]
        argmax = None
        label = schedule.argmax_shape(plan)
        if label is not None:
            with measure(plan.steps.index(plan.output), "offline"):
                argmax = gc.ArgmaxClient(channel, *label, self._threads)
                argmax.offline(np.ascontiguousarray(out_share.reshape(-1)))
            out_share = None  # it lives on in the garbled argmax only
        with measure(last, "offline"):  # the transcript check: the phase's last round trip
            self.wire.client_offline_check()
        return _ClientSet(input_mask, material, out_share, meter.costs,  # type: ignore[arg-type]
                          setup_bytes, setup_seconds, setup_round_trips, argmax)

    def _send_he(self, he_sessions: dict[int, Any], item: schedule.OfflineItem, shares: dict[str, np.ndarray]) -> None:
        step = self.plan.steps[item.step]
        assert isinstance(step, LinearStep) and item.term is not None
        term = step.terms[item.term]
        bits = self.plan.tensors[step.output].ring_bits
        x = mask(shares[term.input], bits)
        if isinstance(term, ConvTerm):
            he_sessions[bits].send_conv2d(x, term.weight_shape, schedule.square(term.stride, "stride"),
                                          schedule.square(term.padding, "padding"), term.groups)
        else:
            he_sessions[bits].send_matmul(x.reshape(-1), term.weight_shape[0])

    def _settle(self, shares: dict[str, np.ndarray], he_out: dict[int, np.ndarray],
                pending: dict[int, int]) -> None:
        """Fix the client share of every linear step whose HE replies have all
        arrived and whose other inputs are known (Plan order is topological)."""
        t = self.plan.tensors
        for i, step in enumerate(self.plan.steps):
            if not isinstance(step, LinearStep) or step.output in shares or pending[i]:
                continue
            if not all(term.input in shares for term in step.terms):
                continue
            bits = t[step.output].ring_bits
            acc = np.zeros(t[step.output].shape, dtype=np.uint64)
            if i in he_out:
                acc = acc + he_out.pop(i).reshape(acc.shape)
            for term in step.terms:
                if not isinstance(term, (ConvTerm, FCTerm)):
                    acc = acc + (shares[term.input] << np.uint64(term.shift))
            shares[step.output] = mask(acc, bits)

    def _query(self, batch: np.ndarray, sets: list[_ClientSet]) -> np.ndarray:
        """One online phase for B images with B prepared sets; fills ``report``."""
        plan, t = self.plan, self.plan.tensors
        spec, out_spec = t[plan.input], t[plan.output.input]
        meter = _Meter(self.channel, plan)
        report = Report(costs=meter.costs, batch=len(sets))
        masked = np.stack([mask(reduce(x, spec.ring_bits) - material.input_mask, spec.ring_bits)
                           for x, material in zip(batch, sets)])
        for material in sets:
            material.input_mask = None  # type: ignore[assignment]  # one-time material
        start, sent = time.perf_counter(), self.channel.bytes_sent
        self.wire.client_query(masked.astype("<u8").tobytes())
        report.input_seconds = time.perf_counter() - start
        report.input_bytes = self.channel.bytes_sent - sent
        for _, garbled in plan.schedule():
            # The server sends every batch of the round, for every image,
            # before reading any reply: evaluate them all, then reply (one
            # round trip per round).
            for k, i in enumerate(garbled):
                engine = self._gc[schedule.gc_shape(plan, plan.steps[i])]
                with meter.measure(i, "online", count_rounds=k == 0):
                    for material in sets:
                        engine.evaluate(material.gc[i])
            for k, i in enumerate(garbled):
                engine = self._gc[schedule.gc_shape(plan, plan.steps[i])]
                with meter.measure(i, "online", count_rounds=k == len(garbled) - 1):
                    for material in sets:
                        engine.reply(material.gc[i])
            # Freeing the round's tables waits until every reply is out.
            for i in garbled:
                engine = self._gc[schedule.gc_shape(plan, plan.steps[i])]
                for material in sets:
                    engine.release(material.gc.pop(i))
        with meter.measure(plan.steps.index(plan.output), "online"):
            if sets[0].argmax is not None:
                labels = np.array([material.argmax.online() for material in sets], dtype=np.int64)
                self.wire.client_output(0)  # transcript checked before the labels are returned
            else:
                raw = self.wire.client_output(8 * out_spec.numel * len(sets))  # transcript checked
                server_share = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
                y = mask(server_share.reshape(len(sets), *out_spec.shape)
                         + np.stack([material.output_share for material in sets]), out_spec.ring_bits)
        for material in sets:
            report.add_offline(material.costs, material.setup_bytes, material.setup_seconds,
                               material.setup_round_trips)
        report.add_offline([], self._setup_bytes, self._setup_seconds, self._setup_round_trips)
        self._setup_bytes, self._setup_seconds, self._setup_round_trips = 0, 0.0, 0
        self.report = report
        if sets[0].argmax is not None:
            return labels
        return y.reshape(len(sets), *plan.output.shape)

    def _free(self, material: _ClientSet) -> None:
        for i, m in material.gc.items():
            self._gc[schedule.gc_shape(self.plan, self.plan.steps[i])].release(m)
        material.gc.clear()


# --------------------------------------------------------------- embedded


@dataclass
class _Failure:
    error: BaseException | None = None


def infer(model_or_plan: nn.Module | Plan, x: np.ndarray | torch.Tensor,
          input_shape: tuple[int, int, int] | None = None, *, threads: int = 0,
          link: Link | str | None = None, **compile_kwargs: Any) -> tuple[np.ndarray, Report]:
    """Private inference with both parties in this process (threads over the
    in-memory channel). Returns the client's logits and the cost report.

    ``x`` is one image (C, H, W) with values in [0, 1]; a model is compiled
    first (``input_shape`` defaults to ``x``'s shape). ``link`` (a
    :class:`pie.Link` or a preset name: ``"loopback"``, ``"lan"``, ``"wan"``)
    runs the parties across an emulated network link, so the report shows what
    that deployment would cost; the report's ``link`` names it.

    Raises:
        ValueError: ``x`` is not one image of the Plan's input shape with finite
            values in [0, 1] (checked before either party starts); an unknown
            link name.
    """
    import threading

    emulated = resolve_link(link)

    if not isinstance(model_or_plan, Plan):
        shape = input_shape or tuple(np.shape(x))[-3:]
        server = Server(model_or_plan, shape, threads=threads, **compile_kwargs)
    else:
        server = Server(model_or_plan, threads=threads)
    if server.plan.encode_input(x).shape[0] != 1:
        raise ValueError("one image per inference: x must have shape (C, H, W) or (1, C, H, W)")
    client = Client(server.public_plan(), threads=threads)
    server_end, client_end = emulated.memory_pair() if emulated is not None else memory_pair()
    failure = _Failure()

    def run_server() -> None:
        try:
            server.serve(server_end)
        except BaseException as exc:  # handed to the caller below
            failure.error = exc
            server_end.close()

    worker = threading.Thread(target=run_server, name="pie-server", daemon=True)
    worker.start()
    try:
        logits, report = client.infer(client_end, x)
    except BaseException:
        client_end.close()
        worker.join()
        if failure.error is not None:
            raise failure.error
        raise
    worker.join()
    if failure.error is not None:
        raise failure.error
    if emulated is not None:
        report.link = emulated.describe()
    return logits, report
