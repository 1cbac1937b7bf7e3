"""The client's party: :class:`Client` (the public Plan) and
:class:`ClientSession` (one connection: a pool of prepared sets, refilled in
the background on request, and the queries that consume them).

:class:`_ClientParty` runs the client's half of the protocol (one set's
offline phase, one query's online phase) for the session; the protocol both
parties run is described in :mod:`pie.protocol.party`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import gc, he
from ..channel import Channel, ChannelError
from ..crypto import secure_random
from ..plan import ConvTerm, FCTerm, LinearStep, OutputStep, Plan, ReluStep, TruncateStep
from ..plan.reference import mask, reduce
from . import schedule, wire
from .party import SessionStateError, exchange_parts, garbled_engines
from .report import Report, StepCost

__all__ = ["Client", "ClientSession"]


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


class _ClientParty:
    """The client's half of the protocol on one connection: the handshake and
    the garbled-circuit engines' set-up (their costs are charged to the first
    query's report), one set's offline phase (:meth:`prepare_set`) and one
    query's online phase (:meth:`query`)."""

    def __init__(self, client: Client, channel: Channel, conversation: wire.Conversation) -> None:
        self.plan = client.plan
        self.channel = channel
        self.wire = conversation
        self._threads = client.threads
        start = time.perf_counter()
        self.wire.client_handshake(client.digest)
        self._gc = garbled_engines(self.plan, gc.ReluClient, channel, client.threads)
        channel.flush()
        self.wire.client_offer()
        self._setup_bytes = channel.bytes_sent + channel.bytes_received
        self._setup_seconds = time.perf_counter() - start
        self._setup_round_trips = channel.round_trips

    def prepare_set(self, progress: str | None) -> _ClientSet:
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
            garbled, linear = exchange_parts(items)
            for it in garbled:
                with measure(it.step, "offline"):
                    material[it.step] = self._gc[it.step].receive_header(t[plan.steps[it.step].input].numel)
            for it in garbled:
                with measure(it.step, "offline"):
                    step = plan.steps[it.step]
                    x = np.ascontiguousarray(shares[step.input].reshape(-1))
                    self._gc[it.step].request(material[it.step], x, shares[step.output].reshape(-1))
            for it in linear:
                with measure(it.step, "offline"):
                    self._send_he(he_sessions, it, shares)
            for it in garbled:
                with measure(it.step, "offline"):
                    self._gc[it.step].receive_tables(material[it.step])
            for it in linear:
                with measure(it.step, "offline"):
                    term = schedule.he_term(plan, it)
                    y = he_sessions[schedule.he_ring(plan, it)].receive() << np.uint64(term.shift)
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
        term = schedule.he_term(self.plan, item)
        bits = schedule.he_ring(self.plan, item)
        x = mask(shares[term.input], bits)
        if isinstance(term, ConvTerm):
            he_sessions[bits].send_conv2d(x, term.weight_shape, *schedule.conv_geometry(term))
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

    def query(self, batch: np.ndarray, sets: list[_ClientSet]) -> tuple[np.ndarray, Report]:
        """One online phase for B images with B prepared sets: the output
        residues (or labels) and the query's report."""
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
                with meter.measure(i, "online", count_rounds=k == 0):
                    for material in sets:
                        self._gc[i].evaluate(material.gc[i])
            for k, i in enumerate(garbled):
                with meter.measure(i, "online", count_rounds=k == len(garbled) - 1):
                    for material in sets:
                        self._gc[i].reply(material.gc[i])
        with meter.measure(plan.steps.index(plan.output), "online"):
            if sets[0].argmax is not None:
                labels = np.array([material.argmax.online() for material in sets], dtype=np.int64)
                self.wire.client_output(0)  # transcript checked before the labels are returned
            else:
                raw = self.wire.client_output(8 * out_spec.numel * len(sets))  # transcript checked
                server_share = np.frombuffer(raw, dtype="<u8").astype(np.uint64)
                y = mask(server_share.reshape(len(sets), *out_spec.shape)
                         + np.stack([material.output_share for material in sets]), out_spec.ring_bits)
        # The tables are freed once the output is decoded: unmapping hundreds of
        # MB holds the process's memory map lock, which stalled the server's
        # allocations when it happened between rounds (the peak is the start
        # of the query anyway).
        for material in sets:
            self.free(material)
            report.add_offline(material.costs, material.setup_bytes, material.setup_seconds,
                               material.setup_round_trips)
        report.add_offline([], self._setup_bytes, self._setup_seconds, self._setup_round_trips)
        self._setup_bytes, self._setup_seconds, self._setup_round_trips = 0, 0.0, 0
        if sets[0].argmax is not None:
            return labels, report
        return y.reshape(len(sets), *plan.output.shape), report

    def free(self, material: _ClientSet) -> None:
        """Release a set's garbled tables for good: after its query, or unused."""
        for i, m in material.gc.items():
            self._gc[i].release(m)
        material.gc.clear()


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
        self.wire = conversation or wire.Conversation(channel, "client")
        self._party = _ClientParty(client, channel, self.wire)
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
                y, self.report = self._party.query(batch, sets)
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
                self._party.free(self._ready.popleft())
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
        sets = [self._party.prepare_set(f"offline {j + 1}/{k}" if progress else None) for j in range(k)]
        # The server's next offer is read before the sets count as prepared, so
        # `prepared` and `offer` never disagree to a watching thread.
        self.wire.client_offer()
        self._ready.extend(sets)

