"""The two parties executing a Plan (DESIGN.md section 2).

Shares live in ``Z_{2^l}`` per tensor: ``v = v_s + v_c mod 2^l``. Every client
share is fixed in the offline phase, before the input exists:

- the input's client share is a fresh uniform mask ``r``;
- a linear step's client share is ``sum_i W_i(x_c,i) - s_i`` obtained by HE
  (the server keeps the fresh masks ``s_i``), plus its local scale terms;
- a ReLU/truncate step's client share is a fresh mask ``r`` that the garbled
  circuit subtracts from its output; the client gets the labels of its share
  and of ``r`` by OT, the server garbles.

Offline work runs in exchanges (:func:`offline_exchanges`): the client sends
every HE input and OT whose share it knows, then receives every answer, one
round trip per level of the HE dependency chains rather than one per step.

Online, the client sends ``x - r`` (the server's input share); linear steps are
local on the server (``W(x_s) + s + b``), so chains of them (culled stages) cost
no messages; each round of garbled steps (:meth:`Plan.rounds`: ReLUs and
truncations that do not depend on each other) costs one round trip (labels of
``x_s`` out, colour bits back; :meth:`Plan.schedule`); the server finally sends
its share of the logits. Under a label-only Plan (``plan.output.reveal ==
"label"``) it sends instead the labels of its share of the logits for a
garbled argmax prepared offline (:class:`pie.gc.ArgmaxServer`): the client
learns the top-1 index, the logits stay shared.

Offline material is bound to one session and one inference: a session runs
``offline`` then ``online`` exactly once, and the garbled material refuses a
second use. A session moves to its next state before it sends anything, and a
phase that raised leaves it failed: it then refuses every phase with
:class:`SessionStateError` (its material may be half used or half sent).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import gc, he
from ..channel import Channel, memory_pair
from ..compiler import compile as compile_plan
from ..crypto import secure_random
from ..link import Link, resolve_link
from ..plan import ConvTerm, FCTerm, LinearStep, OutputStep, Plan, ReluStep, TruncateStep
from ..reference import conv2d_ring, fc_ring, mask, prepare_weight, reduce
from . import wire
from .report import Report, StepCost

__all__ = ["OFFLINE_EXCHANGE_BYTES", "Client", "ClientSession", "OfflineItem", "Server", "ServerSession",
           "SessionStateError", "infer", "offline_exchanges"]


class SessionStateError(RuntimeError):
    """A session phase was called out of order, a second time, or after a
    phase of the session failed."""


class _Lifecycle:
    """A session's state: ``ready`` -> ``offline`` -> ``done``, or ``failed``.

    :meth:`phase` moves the state before the phase's first message and marks
    the session failed if the phase raises, so no one-time material is used
    twice and a broken session is never resumed."""

    def __init__(self) -> None:
        self.state = "ready"

    @contextmanager
    def phase(self, name: str, before: str, after: str) -> Iterator[None]:
        if self.state == "failed":
            raise SessionStateError(f"{name}(): an earlier phase of this session failed; start a new session")
        if self.state != before:
            need = "runs once per session" if before == "ready" else "needs offline() first and runs once per session"
            raise SessionStateError(f"{name}() {need}")
        self.state = f"in {name}"
        try:
            yield
        except BaseException:
            self.state = "failed"
            raise
        self.state = after


def _random_ring(shape: tuple[int, ...], bits: int) -> np.ndarray:
    """Uniform residues mod 2^bits from the OS CSPRNG (masks must be unpredictable)."""
    n = int(np.prod(shape)) if shape else 1
    raw = np.frombuffer(secure_random(8 * n), dtype=np.uint64).reshape(shape)
    return mask(raw.copy(), bits)


def _square(pair: tuple[int, int], what: str) -> int:
    if pair[0] != pair[1]:
        raise ValueError(f"{what} {pair} is not square; the HE layer supports square {what}s only")
    return int(pair[0])


def _gc_shape(plan: Plan, step: ReluStep | TruncateStep) -> tuple[int, int, int, bool]:
    t = plan.tensors
    return (t[step.input].ring_bits, t[step.output].ring_bits, step.shift,
            isinstance(step, TruncateStep))


def _he_sessions(plan: Plan) -> dict[int, int]:
    """HE sessions (one key pair per output ring) and the coefficients each may
    reveal: the flooding is sized for that count (DESIGN.md section 5), so a
    tight, public count buys noise budget for larger weights. Twice the
    outputs, rounded up to a power of two, covers every slot a reply opens."""
    outputs: dict[int, int] = {}
    for s in plan.steps:
        if isinstance(s, LinearStep):
            n = sum(plan.tensors[s.output].numel for t in s.terms if t.op != "scale")
            if n:
                bits = plan.tensors[s.output].ring_bits
                outputs[bits] = outputs.get(bits, 0) + n
    return {bits: 1 << (2 * n - 1).bit_length() for bits, n in sorted(outputs.items())}


def _gc_shapes(plan: Plan) -> list[tuple[int, int, int, bool]]:
    return sorted({_gc_shape(plan, s) for s in plan.steps if isinstance(s, (ReluStep, TruncateStep))})


def _argmax_shape(plan: Plan) -> tuple[int, int] | None:
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
                    levels.setdefault(level, []).append(OfflineItem(i, k, _he_frame_bytes(plan, s, term)))
                    level += 1  # its share arrives with the exchange's replies
                known = max(known, level)
            ready[s.output] = known
        elif isinstance(s, (ReluStep, TruncateStep)):
            held = _LABEL_BYTES * t[s.output].numel * (t[s.input].ring_bits + t[s.output].ring_bits)
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


_LABEL_BYTES = 16  # one OT block / wire label


def _he_frame_bytes(plan: Plan, step: LinearStep, term: ConvTerm | FCTerm) -> int:
    """A bound on one HE term's input frame: its seeded ciphertexts (one
    polynomial in every top-level limb each)."""
    params = he.he_parameters(plan.tensors[step.output].ring_bits)
    src = plan.tensors[term.input]
    if isinstance(term, ConvTerm):
        lay = he.layout(src.shape, term.weight_shape, _square(term.stride, "stride"),
                        _square(term.padding, "padding"), term.groups)
    else:
        lay = he.layout((src.numel, 1, 1), (term.weight_shape[0], src.numel, 1, 1))
    return lay["num_inputs"] * params["poly_degree"] * params["top_limbs"] * 8


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
        # One-way messages: the client's flushes, plus at least one reply for
        # every exchange in which the server sent something.
        if count_rounds:
            rounds = ch.flushes - flushes + (1 if ch.bytes_received > received else 0)
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
        if not isinstance(step, LinearStep):
            raise ValueError(f"step {index} is a {step.kind} step, not a linear one")
        bits = self.plan.tensors[step.output].ring_bits
        assert step.bias is not None  # checked in __init__
        acc = reduce(step.bias, bits).astype(np.uint64)
        for k, term in enumerate(step.terms):
            x = values[term.input]
            if isinstance(term, ConvTerm):
                acc = acc + conv2d_ring(x[None], self._weights[index, k], term.stride, term.padding,
                                        term.groups, bits)[0]
            elif isinstance(term, FCTerm):
                acc = acc + fc_ring(x[None], self._weights[index, k], bits)[0]
            else:
                acc = acc + (x << np.uint64(term.shift))
        return mask(acc, bits)

    def public_plan(self) -> Plan:
        """What a client needs (no weights); its digest equals the server's."""
        return self.plan.public()

    def session(self, channel: Channel) -> ServerSession:
        """Handshake with one client over ``channel`` and set up the sub-protocols."""
        return ServerSession(self, channel)

    def serve(self, channel: Channel) -> None:
        """Run one whole inference (handshake, offline, online) for the client on ``channel``."""
        session = self.session(channel)
        session.offline()
        session.online()


class ServerSession:
    """One client's inference on the server side: offline, then online, once."""

    def __init__(self, server: Server, channel: Channel, *, conversation: wire.Conversation | None = None,
                 admit: Callable[[], None] | None = None) -> None:
        """Handshake on ``channel`` (or continue ``conversation`` on it);
        ``admit`` may refuse the session by raising :class:`wire.ServerBusyError`."""
        self.server = server
        self.plan = server.plan
        self.channel = channel
        self.wire = conversation or wire.Conversation(channel, "server")
        self.wire.server_handshake(server.digest, admit)
        self._he = {bits: he.LinearServer(channel, bits, n) for bits, n in _he_sessions(self.plan).items()}
        self._gc = {shape: gc.ReluServer(channel, shape[0], shape[1], shape[2], server.threads,
                                         truncate=shape[3]) for shape in _gc_shapes(self.plan)}
        label = _argmax_shape(self.plan)
        self._argmax = gc.ArgmaxServer(channel, *label, server.threads) if label else None
        self._masks: dict[int, np.ndarray] = {}
        self._material: dict[int, Any] = {}
        self._life = _Lifecycle()

    @property
    def state(self) -> str:
        """``ready``, ``offline`` (online may run), ``done``, ``failed``, or the phase running."""
        return self._life.state

    def offline(self) -> None:
        """HE for every linear step (fresh masks s), garbling + OT for every GC
        step, in the exchanges of :func:`offline_exchanges`: announce the
        exchange's garbled batches, receive every OT and HE input of the
        exchange, then garble and reply (the client never waits on a write of
        ours while it writes). A label-only output's garbled argmax follows.

        Raises:
            SessionStateError: not the session's first phase, or a phase failed.
        """
        with self._life.phase("offline", "ready", "offline"):
            self._offline()

    def _offline(self) -> None:
        plan, t = self.plan, self.plan.tensors
        masks: dict[int, np.ndarray] = {}
        for items in offline_exchanges(plan):
            garbled = [it for it in items if it.term is None]
            linear = [it for it in items if it.term is not None]
            for it in garbled:
                step = plan.steps[it.step]
                self._material[it.step] = self._gc[_gc_shape(plan, step)].announce(t[step.input].numel)
            for it in garbled:
                self._gc[_gc_shape(plan, plan.steps[it.step])].receive_ot(self._material[it.step])
            received = [self._receive_he(it) for it in linear]
            for it in garbled:
                self._gc[_gc_shape(plan, plan.steps[it.step])].garble(self._material[it.step])
            for it, inputs in zip(linear, received):
                step = plan.steps[it.step]
                assert isinstance(step, LinearStep) and it.term is not None
                s = self._he[t[step.output].ring_bits].reply(inputs, step.terms[it.term].weight)
                masks[it.step] = s if it.step not in masks else masks[it.step] + s
        for i, acc in masks.items():
            out = t[plan.steps[i].output]
            self._masks[i] = mask(acc.reshape(out.shape), out.ring_bits)
        if self._argmax is not None:
            self._argmax.offline()
        self.wire.server_offline_check()

    def _receive_he(self, item: OfflineItem) -> Any:
        step = self.plan.steps[item.step]
        assert isinstance(step, LinearStep) and item.term is not None
        term = step.terms[item.term]
        party = self._he[self.plan.tensors[step.output].ring_bits]
        if isinstance(term, ConvTerm):
            return party.receive_conv2d(self.plan.tensors[term.input].shape, term.weight.shape,
                                        _square(term.stride, "stride"), _square(term.padding, "padding"),
                                        term.groups)
        return party.receive_matmul(term.weight.shape)

    def online(self) -> None:
        """Receive the masked input, evaluate, send the server's share of the output.

        Raises:
            SessionStateError: offline() did not complete, online() ran, or a phase failed.
        """
        with self._life.phase("online", "offline", "done"):
            try:
                self._online()
            finally:
                self._masks.clear()  # one-time material, used or not
                self._material.clear()

    def _online(self) -> None:
        plan, t = self.plan, self.plan.tensors
        spec = t[plan.input]
        raw = self.channel.recv_frame(wire.MASKED_INPUT, 8 * spec.numel)
        if len(raw) != 8 * spec.numel:
            raise wire.ProtocolError(f"masked input has {len(raw)} bytes, expected {8 * spec.numel}")
        values = {plan.input: mask(np.frombuffer(raw, dtype="<u8").astype(np.uint64), spec.ring_bits)
                  .reshape(spec.shape)}
        waves = plan.schedule()
        out_index = plan.steps.index(plan.output)
        order = [i for local, garbled in waves for i in (*local, *garbled)] + [out_index]
        last_use = plan.last_uses(order)

        def release(i: int) -> None:
            for name in last_use.get(i, ()):
                values.pop(name, None)

        for local, garbled in waves:
            for i in local:
                values[plan.steps[i].output] = self._linear(i, values)
                release(i)
            # One round trip for the whole round: every batch's labels go out
            # before any reply is read (see gc.ReluServer.send_labels).
            for i in garbled:
                step = plan.steps[i]
                self._gc[_gc_shape(plan, step)].send_labels(
                    self._material[i], np.ascontiguousarray(values[step.input].reshape(-1)))
            for i in garbled:
                step = plan.steps[i]
                y = self._gc[_gc_shape(plan, step)].finish(self._material.pop(i))
                values[step.output] = y.reshape(t[step.output].shape)
                release(i)
        out = values[plan.output.input]
        if self._argmax is not None:
            self._argmax.online(np.ascontiguousarray(out.reshape(-1)))
            self.wire.server_output(b"")  # sealed: the client checks the transcript before using its label
        else:
            self.wire.server_output(out.astype("<u8").tobytes())

    def _linear(self, index: int, values: dict[str, np.ndarray]) -> np.ndarray:
        acc = self.server.linear(index, values)
        if index not in self._masks:
            return acc
        return mask(acc + self._masks.pop(index), self.plan.tensors[self.plan.steps[index].output].ring_bits)


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

    def session(self, channel: Channel) -> ClientSession:
        """Handshake with the server on ``channel`` and set up the sub-protocols."""
        return ClientSession(self, channel)

    def infer(self, channel: Channel, x: np.ndarray | torch.Tensor,
              progress: bool = False) -> tuple[np.ndarray, Report]:
        """One whole private inference of image ``x`` ((C, H, W), values in [0, 1]);
        ``progress`` shows a progress bar (stderr) over the offline steps."""
        session = self.session(channel)
        session.offline(progress)
        return session.online(x)


class ClientSession:
    """One inference on the client side: offline (no input needed), then online, once."""

    def __init__(self, client: Client, channel: Channel, *,
                 conversation: wire.Conversation | None = None) -> None:
        """Handshake on ``channel`` (or continue ``conversation`` on it)."""
        self.plan = client.plan
        self.channel = channel
        start = time.perf_counter()
        self.wire = conversation or wire.Conversation(channel, "client")
        self.wire.client_handshake(client.digest)
        self._he = {bits: he.LinearClient(channel, bits, n) for bits, n in _he_sessions(self.plan).items()}
        self._gc = {shape: gc.ReluClient(channel, shape[0], shape[1], shape[2], client.threads,
                                         truncate=shape[3]) for shape in _gc_shapes(self.plan)}
        label = _argmax_shape(self.plan)
        self._argmax = gc.ArgmaxClient(channel, *label, client.threads) if label else None
        channel.flush()
        self.report = Report()
        self.report.setup_bytes = channel.bytes_sent + channel.bytes_received
        self.report.setup_round_trips = channel.round_trips
        self.report.setup_seconds = time.perf_counter() - start
        self._meter = _Meter(channel, self.plan)
        self.report.costs = self._meter.costs
        self._material: dict[int, Any] = {}
        self._input_mask: np.ndarray | None = None
        self._shares: dict[str, np.ndarray] = {}
        self._life = _Lifecycle()

    @property
    def state(self) -> str:
        """``ready``, ``offline`` (online may run), ``done``, ``failed``, or the phase running."""
        return self._life.state

    def offline(self, progress: bool = False) -> None:
        """Fix every client share: input mask, HE outputs, GC masks (with their
        labels), in the exchanges of :func:`offline_exchanges` (one round trip
        each), then a label-only output's garbled argmax. ``progress`` shows a
        progress bar (stderr) over the exchanges.

        Raises:
            SessionStateError: not the session's first phase, or a phase failed.
        """
        with self._life.phase("offline", "ready", "offline"):
            self._offline(progress)

    def _offline(self, progress: bool) -> None:
        plan, t = self.plan, self.plan.tensors
        spec = t[plan.input]
        self._input_mask = _random_ring(spec.shape, spec.ring_bits)
        shares = {plan.input: self._input_mask}
        for s in plan.steps:  # output masks are chosen up front: they feed HE
            if isinstance(s, (ReluStep, TruncateStep)):
                shares[s.output] = _random_ring(t[s.output].shape, t[s.output].ring_bits)
        he_out: dict[int, np.ndarray] = {}
        pending = {i: sum(isinstance(term, (ConvTerm, FCTerm)) for term in s.terms)
                   for i, s in enumerate(plan.steps) if isinstance(s, LinearStep)}
        exchanges: Any = offline_exchanges(plan)
        if progress:
            from tqdm.auto import tqdm

            exchanges = tqdm(exchanges, desc="offline", unit="exchange", leave=False)
        self._settle(shares, he_out, pending)
        last = max(i for i, s in enumerate(plan.steps) if not isinstance(s, OutputStep))
        measure = self._meter.measure
        for items in exchanges:
            garbled = [it for it in items if it.term is None]
            linear = [it for it in items if it.term is not None]
            for it in garbled:
                with measure(it.step, "offline"):
                    step = plan.steps[it.step]
                    self._material[it.step] = self._gc[_gc_shape(plan, step)].receive_header(t[step.input].numel)
            for it in garbled:
                with measure(it.step, "offline"):
                    step = plan.steps[it.step]
                    x = np.ascontiguousarray(shares[step.input].reshape(-1))
                    self._gc[_gc_shape(plan, step)].request(self._material[it.step], x,
                                                            shares[step.output].reshape(-1))
            for it in linear:
                with measure(it.step, "offline"):
                    self._send_he(it, shares)
            for it in garbled:
                with measure(it.step, "offline"):
                    self._gc[_gc_shape(plan, plan.steps[it.step])].receive_tables(self._material[it.step])
            for it in linear:
                with measure(it.step, "offline"):
                    step = plan.steps[it.step]
                    y = self._he[t[step.output].ring_bits].receive()
                    he_out[it.step] = y if it.step not in he_out else he_out[it.step] + y
                    pending[it.step] -= 1
            self._settle(shares, he_out, pending)
        out_share = shares[plan.output.input]
        if self._argmax is not None:
            with measure(plan.steps.index(plan.output), "offline"):
                self._argmax.offline(np.ascontiguousarray(out_share.reshape(-1)))
        else:
            self._shares = {plan.output.input: out_share}
        with measure(last, "offline"):  # the transcript check: the phase's last round trip
            self.wire.client_offline_check()

    def _send_he(self, item: OfflineItem, shares: dict[str, np.ndarray]) -> None:
        step = self.plan.steps[item.step]
        assert isinstance(step, LinearStep) and item.term is not None
        term = step.terms[item.term]
        bits = self.plan.tensors[step.output].ring_bits
        x = mask(shares[term.input], bits)
        if isinstance(term, ConvTerm):
            self._he[bits].send_conv2d(x, term.weight_shape, _square(term.stride, "stride"),
                                       _square(term.padding, "padding"), term.groups)
        else:
            self._he[bits].send_matmul(x.reshape(-1), term.weight_shape[0])

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

    def online(self, x: np.ndarray | torch.Tensor) -> tuple[np.ndarray, Report]:
        """Run the online phase on image ``x`` ((C, H, W), values in [0, 1]):
        returns the decoded logits (or, under a label-only Plan, the top-1
        class as an int64 scalar array) and the report."""
        pixels = self.plan.encode_input(x)
        if pixels.shape[0] != 1:
            raise ValueError("one image per inference: x must have shape (C, H, W) or (1, C, H, W)")
        y = self.online_int(pixels[0])
        if self._argmax is not None:
            return y, self.report
        return self.plan.decode_output(y[None])[0], self.report

    def online_int(self, x_int: np.ndarray) -> np.ndarray:
        """The online phase on integer pixels: returns the output residues (or,
        under a label-only Plan, the top-1 class as an int64 scalar array).

        Raises:
            ValueError: ``x_int`` does not have the Plan's input shape (the
                session is unchanged).
            SessionStateError: offline() did not complete, online() ran, or a phase failed.
        """
        spec = self.plan.tensors[self.plan.input]
        if tuple(np.shape(x_int)) != spec.shape:
            raise ValueError(f"input has shape {np.shape(x_int)}, the plan expects {spec.shape}")
        with self._life.phase("online", "offline", "done"):
            try:
                return self._online(x_int)
            finally:
                self._input_mask = None  # one-time material, used or not
                self._material.clear()
                self._shares.clear()

    def _online(self, x_int: np.ndarray) -> np.ndarray:
        plan, t = self.plan, self.plan.tensors
        spec = t[plan.input]
        assert self._input_mask is not None
        masked = mask(reduce(np.asarray(x_int), spec.ring_bits) - self._input_mask, spec.ring_bits)
        out_spec = t[plan.output.input]
        start, sent = time.perf_counter(), self.channel.bytes_sent
        self.channel.send_frame(wire.MASKED_INPUT, masked.astype("<u8").tobytes())
        self.report.input_seconds = time.perf_counter() - start
        self.report.input_bytes = self.channel.bytes_sent - sent
        for _, garbled in plan.schedule():
            # The server sends every batch of the round before reading any reply:
            # evaluate them all, then reply (one round trip per round).
            for k, i in enumerate(garbled):
                with self._meter.measure(i, "online", count_rounds=k == 0):
                    self._gc[_gc_shape(plan, plan.steps[i])].evaluate(self._material[i])
            for k, i in enumerate(garbled):
                with self._meter.measure(i, "online", count_rounds=k == len(garbled) - 1):
                    self._gc[_gc_shape(plan, plan.steps[i])].reply(self._material[i])
            # Freeing the round's tables waits until every reply is out.
            for i in garbled:
                self._gc[_gc_shape(plan, plan.steps[i])].release(self._material.pop(i))
        step = plan.output
        if self._argmax is not None:
            with self._meter.measure(plan.steps.index(step), "online"):
                label = self._argmax.online()
                self.wire.client_output(0)  # transcript checked before the label is returned
            return np.asarray(label, dtype=np.int64)
        with self._meter.measure(plan.steps.index(step), "online"):
            raw = self.wire.client_output(8 * out_spec.numel)  # transcript checked
            server_share = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
            y = mask(server_share.reshape(out_spec.shape) + self._shares.pop(step.input),
                     out_spec.ring_bits)
        return y.reshape(plan.output.shape)


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
