"""Predicting what a private inference of a Plan costs: the time model, :class:`Estimate`, :func:`estimate`.

``estimate(plan, profile)`` returns an :class:`Estimate`: per step and in total,
the offline and online traffic (bytes each way) and time, and the number of
online round trips, for the two-party engine of :mod:`pie.protocol`.
A :class:`~pie.cost.Profile` holds micro-benchmark figures of one machine;
:func:`~pie.cost.measure_profile` measures one (about a minute on two cores) and
:meth:`Profile.save` / :meth:`Profile.load` keep it as JSON.

What the model is built on: the Plan's structure only -- its steps, tensor
shapes and rings, the AND gates of every garbled step
(from the circuits the engine garbles, :func:`pie.gc.relu_circuit` and
:func:`pie.gc.truncate_circuit`), the
HE coefficient-encoding layout of every conv/fc term (:func:`pie.he.layout`)
and the online rounds (:meth:`pie.Plan.rounds`).

Traffic is exact and deterministic (:mod:`pie.cost.wire_sizes`).

Time (a model, not a measurement): each phase is a sum of its steps.

* offline: per HE term ``a*inputs + b*products + (c + c'*limbs)*replies + d`` (client
  encryption, server products, reply re-randomisation and flooding, client
  decryption, transfer), per garbled step ``e*AND + f*OT bits + g`` (garbling,
  table transfer, OT extension), one HE key set-up per ring and one base-OT
  set-up per circuit shape; one round-trip time per offline exchange
  (:func:`pie.protocol.schedule.offline_exchanges`), per base-OT set-up and
  for the closing transcript check;
* online: the server's ring arithmetic of every linear step
  (``h*limb MACs + i*limb elements + h'*limb weights + j`` per large conv/fc
  term, float64 limbs as :func:`pie.plan.reference.conv2d_ring` computes them;
  ``(h''*MACs + i''*outputs + w''*weights) / threads + j''`` per term in the native
  kernel, whose vectors of 8 channels a product pays for whole, plus ``t''`` when
  it runs on every core), per garbled step
  ``k*AND + k'*other gates + m*labels + n`` (label selection, transfer,
  evaluation -- XOR gates are free of hashing but not of memory traffic, and
  truncation circuits have more of them per AND gate -- colour bits,
  decoding), one round-trip time per online round (garbled steps that
  share a round of :meth:`Plan.rounds` share one), and the input and output
  messages. The linear steps and the garbled rounds are on one critical path
  (the client waits for the server's labels), so they add up.
* The coefficients are fitted (:mod:`pie.cost.measure`: non-negative least
  squares on the median of repeated runs) to timings of the engine's own
  protocol classes over an in-memory channel with the profile's thread
  count; garbled batches run all their offline phases before the
  online ones, as a session does, so online evaluation reads tables that
  have left the caches. Over TCP the model adds each message's bytes at the measured
  loopback bandwidth minus the in-memory one, and the measured round-trip time.
* Across a link (``link=``): each round trip above costs the link's RTT too,
  and each byte its serialisation time beyond the transport's; garbled tables
  stream while the server garbles and HE replies while it computes, so only
  the part of their transfer that outlasts that work adds.

What it ignores: the Python interpreter's per-step overhead (tens of
microseconds), contention with other processes, memory-bandwidth effects of
very large batches beyond what the fit saw, and work that overlaps across the
two parties beyond the critical path above (over the transport alone,
offline garbling and table transfer are treated as sequential). Times scale with the profile's machine;
a profile measured under load predicts loaded times. On a shared machine,
``profile.scaled(measure_speed_index() / profile.speed_index_s)`` adjusts the
profile to the load of the moment.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import gc, he
from ..link import Link, resolve_link
from ..plan import (ConvTerm, FCTerm, LinearStep, OutputStep, Plan, ReluStep, TruncateStep,
                    he_ring_bits)
from ..plan.reference import native_threads, native_work
from ..protocol.report import InferenceTotals, StepFigures
from ..protocol.schedule import he_sessions, offline_exchanges
from ..tables import Column, format_table
from .profile import Profile
from .wire_sizes import (BYTE_KEYS, and_gates, argmax_bytes, base_ot_bytes, frame_positions, gc_step_bytes,
                         he_hello_bytes, he_term_bytes, other_gates, share_bytes, term_layout)

__all__ = ["Estimate", "StepEstimate", "estimate", "traffic"]

_FLOAT_EXACT_BITS = 53  # see pie.plan.reference: float64 limbs stay exact below 2^53


@dataclass
class StepEstimate(StepFigures):
    """Predicted cost of one Plan step (same meaning as :class:`pie.protocol.StepCost`);
    ``round`` is the step's online round (0: not a garbled step)."""

    round: int = 0


@dataclass
class Estimate(InferenceTotals):
    """Predicted cost of one inference of a Plan (see :func:`estimate`).

    Totals follow :class:`pie.Report`: ``offline_*`` include the session
    set-up, ``online_*`` include the masked input. ``online_seconds`` is the
    client's wall time from sending the masked input to decoding the output.
    ``online_round_trips`` counts the online garbled rounds; the steps'
    ``online_round_trips`` add the output's, as the engine's report counts
    them, and ``offline_round_trips`` those of the offline phase with the
    set-up. ``link`` names the link the estimate is for (empty: none).
    """

    steps: list[StepEstimate]
    transport: str
    setup_bytes: int
    setup_seconds: float
    input_bytes: int
    input_seconds: float
    online_round_trips: int
    setup_round_trips: int = 0
    link: str = ""

    _TOTALS: ClassVar[tuple[str, ...]] = (
        "relus", "offline_bytes", "online_bytes", "offline_seconds", "online_seconds", "online_round_trips",
        "offline_round_trips", "setup_bytes", "input_bytes", "transport", "link")

    def _step_figures(self) -> list[StepEstimate]:
        return self.steps

    def table(self) -> str:
        """One line per step, then the totals (bytes in MB, times in ms)."""
        rows = [(s.index, s.kind, s.output[:22], s.round or "", f"{s.offline_bytes / 1e6:.3f}",
                 f"{1e3 * s.offline_seconds:.1f}", f"{s.online_bytes / 1e6:.3f}", f"{1e3 * s.online_seconds:.1f}")
                for s in self.steps]
        total = ("", "total", f"{self.relus:,} ReLUs", self.online_round_trips, f"{self.offline_bytes / 1e6:.3f}",
                 f"{1e3 * self.offline_seconds:.1f}", f"{self.online_bytes / 1e6:.3f}",
                 f"{1e3 * self.online_seconds:.1f}")
        return format_table(_ESTIMATE_COLUMNS, rows, [total])


_ESTIMATE_COLUMNS: list[Column] = [("#", ">", 3), ("kind", "<", 8), ("output", "<", 22), ("rnd", ">", 3),
                                   ("offline MB", ">", 10), ("off ms", ">", 8), ("online MB", ">", 10),
                                   ("on ms", ">", 8)]


def estimate(plan: Plan, profile: Profile, transport: str = "memory",
             link: Link | str | None = None) -> Estimate:
    """Predict the traffic and time of one private inference of ``plan``.

    Args:
        plan: a Plan (public or with weights; weights refine the number of
            float64 limbs of the server's online arithmetic, see below).
        profile: the machine's figures (:func:`pie.cost.measure_profile`, :meth:`Profile.load`).
        transport: ``"memory"`` (:func:`pie.infer`) or ``"tcp"`` (loopback or LAN
            with the profile's TCP bandwidth and round-trip time).
        link: an emulated or real network link between the parties
            (:class:`pie.Link` or a preset name) on top of ``transport``: every
            round trip costs the link's RTT and every byte its serialisation
            time beyond the transport's own (module docstring).

    Returns:
        The :class:`Estimate`. Bytes are exact for the engine in this package
        (:mod:`pie.cost.wire_sizes`); times are the model's prediction. The first call in
        a process measures SEAL's serialised sizes and the session frames once
        (about a second).

    Raises:
        ValueError: unknown transport or link name.
        TypeError: ``plan``, ``profile`` or ``link`` of the wrong type.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a pie.Plan, got {type(plan).__name__}")
    if not isinstance(profile, Profile):
        raise TypeError(f"profile must be a pie.cost.Profile, got {type(profile).__name__}")
    if transport not in ("memory", "tcp"):
        raise ValueError(f"transport must be 'memory' or 'tcp', got {transport!r}")
    return _estimate(plan, profile, transport, _session_frames(), resolve_link(link))


def traffic(plan: Plan) -> Estimate:
    """The exact traffic of one private inference of ``plan``, without a profile:
    per step and in total the bytes each way, AND gates, ReLUs and online
    rounds of :func:`estimate` (bytes do not depend on the machine or the
    transport); every time in the result is zero.

    Raises:
        TypeError: ``plan`` is not a Plan.
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a pie.Plan, got {type(plan).__name__}")
    return _estimate(plan, _FREE, "memory", _session_frames())


# A machine that takes no time: what _estimate gives on it is the bytes alone.
_FREE = Profile(threads=1, bandwidth={"memory": math.inf, "tcp": math.inf}, rtt_s={"memory": 0.0, "tcp": 0.0},
                **{f.name: 0.0 for f in dataclasses.fields(Profile)
                   if f.name not in ("threads", "bandwidth", "rtt_s", "machine")})


def _estimate(plan: Plan, profile: Profile, transport: str, frames: dict[str, int],
              link: Link | None = None) -> Estimate:
    t = plan.tensors
    p = profile
    # Extra seconds per byte and per message on this transport beyond what the
    # in-memory fits already contain.
    extra_per_byte = max(0.0, 1.0 / p.bandwidth[transport] - 1.0 / p.bandwidth["memory"])
    extra_rtt = max(0.0, p.rtt_s[transport] - p.rtt_s["memory"]) if transport != "memory" else 0.0
    rtt = p.rtt_s[transport]
    wire = _LinkTimes(link, p.bandwidth[transport])
    # Online, the receiving end's per-byte work (copies, transcript) follows
    # each byte's emulated arrival, so the link's serialisation adds in full.
    wire_online = _LinkTimes(link, math.inf)
    rounds = plan.rounds()
    sessions = he_sessions(plan)
    weight_bits = int(plan.policy.get("weight_bits", 12))
    # The offline phase's round trips: one per exchange, where the client first
    # waits for an answer (its first item), one per base-OT set-up.
    opens = {(ex[0].step, ex[0].term) for ex in offline_exchanges(plan)}
    seen_shapes: set[tuple[int, int, int, bool]] = set()
    steps: list[StepEstimate] = []
    for i, s in enumerate(plan.steps):
        est = StepEstimate(i, s.kind, getattr(s, "output", s.inputs[0]))
        if isinstance(s, LinearStep):
            for k, term in enumerate(s.terms):
                if not isinstance(term, (ConvTerm, FCTerm)):
                    continue
                bits = he_ring_bits(term, t[s.output].ring_bits)
                lay = term_layout(plan, term)
                c2s, s2c = he_term_bytes(plan, s, bits, lay, sessions[bits])
                est.offline_bytes_c2s += c2s
                est.offline_bytes_s2c += s2c
                opening = (i, k) in opens
                est.offline_round_trips += opening
                limbs = he.he_parameters(bits, max_revealed=sessions[bits])["final_limbs"]
                # Encrypt, send, compute, reply, decrypt. Across a link the
                # replies drain while the server computes (the exchange's
                # later terms), so only the part of their transfer that
                # outlasts the server's work adds, as for garbled tables.
                per_product = p.he_per_fc_product_s if isinstance(term, FCTerm) else p.he_per_product_s
                server = (per_product * lay["num_products"]
                          + (p.he_per_reply_s + p.he_per_reply_limb_s * limbs) * lay["num_outputs"])
                est.offline_seconds += (
                    p.he_per_input_s * lay["num_inputs"] + server + p.he_per_term_s
                    + extra_per_byte * (c2s + s2c) + wire.transfer(c2s, 0)
                    + max(0.0, wire.transfer(0, s2c) - server)
                    + (extra_rtt + wire.rtt if opening else 0.0)
                )
                macs, _, weights = _term_work(plan, term)
                threads = native_threads(macs)
                if threads is not None:
                    team = 1 if threads == 1 else p.threads  # the work splits across the team
                    vector_macs, outputs = _native_work(plan, term)
                    est.online_seconds += ((p.linear_native_per_mac_s * vector_macs
                                            + p.linear_native_per_element_s * outputs
                                            + p.linear_native_per_weight_s * weights) / team
                                           + p.linear_native_per_term_s
                                           + (p.linear_native_team_s if team != 1 else 0.0))
                else:
                    macs, elements, weights = _limb_work(plan, term, bits, weight_bits)
                    est.online_seconds += (p.linear_per_limb_mac_s * macs + p.linear_per_limb_element_s * elements
                                           + p.linear_per_limb_weight_s * weights + p.linear_per_term_s)
        elif isinstance(s, (ReluStep, TruncateStep)):
            l_in, l_out = t[s.input].ring_bits, t[s.output].ring_bits
            n = t[s.output].numel
            gates = and_gates(l_in, l_out, s.shift, isinstance(s, TruncateStep))
            est.and_gates = n * gates
            est.relus = n if isinstance(s, ReluStep) else 0
            est.round = rounds[s.output]
            shape = (l_in, l_out, s.shift, isinstance(s, TruncateStep))
            first = shape not in seen_shapes
            seen_shapes.add(shape)
            off_c2s, off_s2c, on_c2s, on_s2c = gc_step_bytes(n, l_in, l_out, gates, first, frames)
            est.offline_bytes_c2s, est.offline_bytes_s2c = off_c2s, off_s2c
            est.online_bytes_c2s, est.online_bytes_s2c = on_c2s, on_s2c
            # The OT's matrix goes up, then the tables stream down while the
            # server garbles: the slower of the two sets the pace. The first
            # step of a circuit shape runs the base OTs (one more round trip).
            garbling = p.gc_offline_per_and_s * n * gates
            opening = (i, None) in opens
            est.offline_round_trips = first + opening
            est.offline_seconds = (
                garbling + p.gc_offline_per_ot_s * n * (l_in + l_out)
                + p.gc_offline_per_step_s + (p.base_ot_s if first else 0.0)
                + extra_per_byte * (off_c2s + off_s2c) + (extra_rtt + wire.rtt) * (first + opening)
                + wire.transfer(off_c2s, 0) + max(0.0, wire.transfer(0, off_s2c) - garbling)
            )
            est.online_seconds = (
                p.gc_online_per_and_s * n * gates + p.gc_online_per_gate_s * n * other_gates(*shape)
                + p.gc_online_per_label_s * n * l_in
                + p.gc_online_per_step_s + extra_per_byte * (on_c2s + on_s2c) + wire_online.transfer(on_c2s, on_s2c)
            )
        elif isinstance(s, OutputStep) and s.reveal == "label":
            # The garbled argmax: one instance, its tables, OT of the client's
            # share and the decoding bits offline; the server's labels online.
            numel, bits = t[s.input].numel, t[s.input].ring_bits
            circuit = gc.argmax_circuit(numel, bits)
            gates = circuit.num_and
            est.and_gates = gates
            est.offline_bytes_c2s, est.offline_bytes_s2c, est.online_bytes_s2c = argmax_bytes(numel, bits, circuit,
                                                                                           frames)
            # Two round trips: the base-OT set-up, then the OT with the tables and decoding bits.
            est.offline_round_trips = 2
            est.offline_seconds = (p.gc_offline_per_and_s * gates + p.gc_offline_per_ot_s * numel * bits
                                   + p.gc_offline_per_step_s + p.base_ot_s
                                   + extra_per_byte * (est.offline_bytes_c2s + est.offline_bytes_s2c)
                                   + 2 * (extra_rtt + wire.rtt)
                                   + wire.transfer(est.offline_bytes_c2s, est.offline_bytes_s2c))
            est.online_round_trips = 1
            est.online_seconds = (rtt / 2 + p.gc_online_per_and_s * gates + p.gc_online_per_label_s * numel * bits
                                  + est.online_bytes_s2c / p.bandwidth[transport]
                                  + wire_online.one_way(0, est.online_bytes_s2c))
        elif isinstance(s, OutputStep):
            numel = t[s.input].numel
            est.online_bytes_s2c = share_bytes(numel)
            est.online_round_trips = 1
            est.online_seconds = (rtt / 2 + est.online_bytes_s2c / p.bandwidth[transport]
                                  + wire_online.one_way(0, est.online_bytes_s2c))
        steps.append(est)
    # One round trip per online round: garbled steps of one round share it.
    n_rounds = len(set(rounds.values()))
    gc_steps = [e for e in steps if e.round]
    for r in sorted(set(rounds.values())):
        first_of_round = next(e for e in gc_steps if e.round == r)
        first_of_round.online_seconds += rtt + wire.rtt
        first_of_round.online_round_trips += 1
    # The offline phase ends with the transcript check, one round trip,
    # charged to its last step as the engine's report does.
    last = steps[frame_positions(plan)["last"]]
    last.offline_round_trips += 1
    last.offline_seconds += rtt + wire.rtt
    # Session frames measured on a tiny inference (handshake, phase checks,
    # finish): charged where the engine's report counts them.
    setup_bytes = frames["setup"] + sum(he_hello_bytes(bits) for bits in sessions)
    for position, index in frame_positions(plan).items():
        for key in BYTE_KEYS:
            setattr(steps[index], key, getattr(steps[index], key) + frames[f"{position}:{key}"])
    input_bytes = share_bytes(t[plan.input].numel) + frames["input"]
    # The handshake is one round trip; the key material follows it one way.
    setup_seconds = p.he_session_s * len(sessions) + rtt + wire.round_trip(setup_bytes, 0)
    input_seconds = input_bytes / p.bandwidth[transport] + wire_online.one_way(input_bytes, 0)
    return Estimate(steps, transport, setup_bytes, setup_seconds, input_bytes, input_seconds, n_rounds,
                    setup_round_trips=1, link=link.name if link is not None else "")


class _LinkTimes:
    """What a link adds to the transport's times (all zero without a link):
    its delays, and its serialisation beyond the transport's own per-byte time."""

    def __init__(self, link: Link | None, transport_bandwidth: float) -> None:
        self.link = link
        self.rtt = link.rtt if link is not None else 0.0
        base = 1.0 / transport_bandwidth
        self._per_byte = {d: max(0.0, link.seconds_per_byte(d) - base) if link is not None else 0.0
                          for d in ("c2s", "s2c")}

    def transfer(self, c2s: int, s2c: int) -> float:
        """Serialisation of ``c2s`` bytes up and ``s2c`` bytes down, one after the other."""
        return c2s * self._per_byte["c2s"] + s2c * self._per_byte["s2c"]

    def one_way(self, c2s: int, s2c: int) -> float:
        """One message each way that is given (only one of the two is non-zero): transfer plus delay."""
        if self.link is None:
            return 0.0
        return self.transfer(c2s, s2c) + self.link.delay("c2s" if c2s else "s2c")

    def round_trip(self, c2s: int, s2c: int) -> float:
        """A request of ``c2s`` bytes and its answer of ``s2c`` bytes."""
        return self.transfer(c2s, s2c) + self.rtt


def _term_work(plan: Plan, term: ConvTerm | FCTerm) -> tuple[int, int, int]:
    """(multiply-accumulates, elements in + out, weights) of one term's product."""
    src = plan.tensors[term.input]
    if isinstance(term, ConvTerm):
        o, cg, kh, kw = term.weight_shape
        k = cg * kh * kw
        out = plan.tensors[_term_output(plan, term)].numel
    else:
        o, k = term.weight_shape
        out = o
    return out * k, src.numel + out, o * k


def _native_work(plan: Plan, term: ConvTerm | FCTerm) -> tuple[int, int]:
    """(multiply-adds in whole vectors, output elements) of one term's product in
    the native kernel (:func:`pie.plan.reference.native_work`)."""
    if isinstance(term, ConvTerm):
        o, cg, kh, kw = term.weight_shape
        out = plan.tensors[_term_output(plan, term)]
        return native_work(1, term.groups, o // term.groups, out.numel // o, cg * kh * kw)
    o, k = term.weight_shape
    return native_work(1, 1, o, 1, k)


def _limb_work(plan: Plan, term: ConvTerm | FCTerm, bits: int, weight_bits: int) -> tuple[int, int, int]:
    """(limb MACs, limb elements in + out, limb weights) of the server's exact
    float64 arithmetic for one term (pie.plan.reference: limbs of b bits with
    ``max_row_L1 * 2^b <= 2^53``; the server's share is uniform, so its
    magnitude needs ``bits - 1`` bits)."""
    macs, elements, weights = _term_work(plan, term)
    if term.weight is not None:
        l1 = int(np.abs(term.weight.reshape(term.weight.shape[0], -1)).sum(axis=1).max())
    else:  # public plan: a typical row, a quarter of full scale per weight
        l1 = weights // term.weight_shape[0] << max(weight_bits - 3, 0)
    b = _FLOAT_EXACT_BITS - math.ceil(math.log2(max(l1, 1))) if l1 > 1 else _FLOAT_EXACT_BITS
    limbs = max(1, -(-(bits - 1) // max(b, 1)))
    return limbs * macs, limbs * elements, limbs * weights


def _term_output(plan: Plan, term: ConvTerm | FCTerm) -> str:
    for s in plan.steps:
        if isinstance(s, LinearStep) and any(t is term for t in s.terms):
            return s.output
    raise ValueError("term does not belong to the plan")


@functools.lru_cache(maxsize=1)
def _session_frames() -> dict[str, int]:
    """Bytes of the session-level frames (handshake, phase checks, finish):
    one inference of a tiny plan, minus everything modelled per step.

    Raises:
        RuntimeError: the engine's traffic differs from the model at a step
            that cannot carry a session frame (the model is out of date).
    """
    from ..protocol import infer

    up, down = base_ot_bytes()
    frames = {"setup": 0, "input": 0, "base_ot_c2s": up, "base_ot_s2c": down}
    frames.update({f"{pos}:{key}": 0 for pos in ("first", "last", "output") for key in BYTE_KEYS})
    plan = _tiny_plan()
    _, report = infer(plan, np.full(plan.input_shape, 0.5))
    zero = _estimate(plan, _FREE, "memory", frames)
    frames["setup"] = report.setup_bytes - zero.setup_bytes
    frames["input"] = report.input_bytes - zero.input_bytes
    positions = frame_positions(plan)
    for index, (predicted, measured) in enumerate(zip(zero.steps, report.costs)):
        for key in BYTE_KEYS:
            diff = getattr(measured, key) - getattr(predicted, key)
            position = next((p for p, i in positions.items() if i == index), None)
            if position is not None:
                frames[f"{position}:{key}"] = diff
            elif diff:
                raise RuntimeError(f"pie.estimate's traffic model is out of date: step {index} "
                                   f"({predicted.kind}) {key} is {getattr(measured, key)}, "
                                   f"the model says {getattr(predicted, key)}")
    return frames


def _tiny_plan() -> Plan:
    import torch
    from torch import nn

    from ..compiler import compile as compile_plan

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    return compile_plan(net.eval(), (1, 4, 4), calibration=np.random.default_rng(0).random((8, 1, 4, 4)))
