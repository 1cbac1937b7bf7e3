"""Cost model: predict what a private inference of a Plan costs before running it.

``estimate(plan, profile)`` returns an :class:`Estimate`: per step and in total,
the offline and online traffic (bytes each way) and time, and the number of
online round trips, for the two-party engine of :mod:`pie.protocol`.
A :class:`Profile` holds micro-benchmark figures of one machine;
:func:`measure_profile` measures one (about a minute on two cores) and
:meth:`Profile.save` / :meth:`Profile.load` keep it as JSON.

What the model is built on: the Plan's structure only -- its steps, tensor
shapes and rings, the AND gates of every garbled step
(from the circuits the engine garbles, :func:`pie.gc.relu_circuit` and
:func:`pie.gc.truncate_circuit`), the
HE coefficient-encoding layout of every conv/fc term (:func:`pie.he.layout`)
and the online rounds (:meth:`pie.Plan.rounds`).

Traffic (exact, deterministic):

* garbled steps: 32 bytes of half-gates table per AND gate, the IKNP
  correlated-OT matrix for the client's ``l_in + l_out`` input bits per element,
  16-byte labels of the server's ``l_in`` bits online and ``l_out`` colour
  bits back, the framing of every batch, and one base-OT set-up per circuit
  shape (on its first step);
* linear steps: per conv/fc term one frame of seeded input ciphertexts
  (their count from the layout, their serialised size from SEAL) and one frame
  of replies (``c1`` in full plus ``c0`` at the output coefficients, in the
  final RNS limbs); scale terms are free;
* per session: the public key of every HE ring, the masked input, the output
  share, and the session-level frames (handshake and any other fixed-size
  control frame). The sizes that depend on SEAL's serialisation and the
  session-level frames are measured once per process from the implementation
  itself (a key generation, a one-ciphertext layer, and one inference of a
  tiny plan) rather than written down here, so they follow the protocol.

Time (a model, not a measurement): each phase is a sum of its steps.

* offline: per HE term ``a*inputs + b*products + (c + c'*limbs)*replies + d`` (client
  encryption, server products, reply re-randomisation and flooding, client
  decryption, transfer), per garbled step ``e*AND + f*OT bits + g`` (garbling,
  table transfer, OT extension), one HE key set-up per ring and one base-OT
  set-up per circuit shape; one round-trip time per offline exchange
  (:func:`pie.protocol.schedule.offline_exchanges`), per base-OT set-up and
  for the closing transcript check;
* online: the server's ring arithmetic of every linear step
  (``h*limb MACs + i*limb elements + h'*limb weights + j`` per conv/fc term, float64 limbs as
  :func:`pie.plan.reference.conv2d_ring` computes them), per garbled step
  ``k*AND + k'*other gates + m*labels + n`` (label selection, transfer,
  evaluation -- XOR gates are free of hashing but not of memory traffic, and
  truncation circuits have more of them per AND gate -- colour bits,
  decoding), one round-trip time per online round (garbled steps that
  share a round of :meth:`Plan.rounds` share one), and the input and output
  messages. The linear steps and the garbled rounds are on one critical path
  (the client waits for the server's labels), so they add up.
* The coefficients are fitted (non-negative least squares on the median of
  repeated runs) to timings of the
  engine's own protocol classes over an in-memory channel with the profile's
  thread count; garbled batches run all their offline phases before the
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
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .. import gc, he
from ..channel import Channel, TcpListener, memory_pair, tcp_connect
from ..link import Link, resolve_link
from ..plan import (
    ConvTerm,
    FCTerm,
    LinearStep,
    OutputStep,
    Plan,
    ReluStep,
    TruncateStep,
)
from ..protocol.schedule import he_sessions, offline_exchanges
from ..protocol.report import StepFigures

__all__ = ["Estimate", "Profile", "ProfileError", "StepEstimate", "estimate", "measure_profile",
           "measure_speed_index", "traffic"]

PathLike = Union[str, "os.PathLike[str]"]

PROFILE_FORMAT = "pie-profile"
PROFILE_VERSION = 2

# Wire constants of the native engine (cpp/io/channel.h, cpp/gc, cpp/ot).
FRAME_HEADER_BYTES = 12  # Channel::kFrameHeaderBytes: type (4) + length (8)
LABEL_BYTES = 16  # one 128-bit wire label
TABLE_BYTES_PER_AND = 2 * LABEL_BYTES  # half-gates: two ciphertexts per AND gate
GC_IDS_BYTES = 16  # ReLU batch frames (offline, online): batch id and size
GC_BATCH_HEADER_BYTES = 40  # garbled batch header: tweak prefix, base, n, AND gates, block
IKNP_KAPPA = 128  # base OTs, i.e. rows of the IKNP matrix
IKNP_CHUNK = 1 << 17  # OTs extended per IKNP message
HE_COUNT_BYTES = 8  # u64 ciphertext count, and u64 length before each ciphertext
RESIDUE_BYTES = 8  # one RNS residue of a reply on the wire
SHARE_BYTES = 8  # one uint64 share (masked input, output share)

_FLOAT_EXACT_BITS = 53  # see pie.plan.reference: float64 limbs stay exact below 2^53


class ProfileError(ValueError):
    """A malformed, incomplete or incompatible profile file."""


@dataclass(frozen=True)
class Profile:
    """Micro-benchmark figures of one machine, the input of :func:`estimate`.

    Seconds are wall-clock with ``threads`` worker threads (the engine's
    default: all cores). Coefficients come from non-negative least-squares
    fits of the engine's own protocol classes (see :func:`measure_profile`).

    Attributes:
        threads: garbling / evaluation / HE threads the figures were taken with.
        gc_offline_per_and_s, gc_offline_per_ot_s, gc_offline_per_step_s:
            offline garbled step: garbling plus table transfer per AND gate,
            IKNP correlated OT per client input bit, fixed cost per step.
        gc_online_per_and_s, gc_online_per_gate_s, gc_online_per_label_s, gc_online_per_step_s:
            online garbled step: evaluation per AND gate and per other
            (XOR, INV) gate, selection + transfer per server input label,
            fixed cost per step.
        base_ot_s: base-OT set-up of one circuit shape (first use of its IKNP).
        he_per_input_s, he_per_product_s, he_per_reply_s, he_per_reply_limb_s,
        he_per_term_s: offline HE term: per input ciphertext (encrypt, send,
            load), per ciphertext-plaintext product (weight encoding, product),
            per reply (re-randomise, flood, switch), per reply and final RNS
            limb (send, decrypt), fixed cost per term.
        he_session_s: one HE key set-up on the client (key generation, sending
            the public key; the server loads it in parallel).
        linear_per_limb_mac_s, linear_per_limb_element_s, linear_per_limb_weight_s, linear_per_term_s:
            server online ring arithmetic of one conv/fc term: per limb
            multiply-accumulate, per limb element in and out, per limb weight
            (wide layers on small images stream their weights once per limb
            and run below the large layers' MAC rate), fixed cost.
        bandwidth: bytes per second of each transport (``"memory"``, ``"tcp"``).
        rtt_s: round-trip time of a small message on each transport.
        speed_index_s: seconds of :func:`measure_speed_index`'s reference
            workload while the profile was measured (0: unknown).
        machine: description of the machine and software (informational).
    """

    threads: int
    gc_offline_per_and_s: float
    gc_offline_per_ot_s: float
    gc_offline_per_step_s: float
    gc_online_per_and_s: float
    gc_online_per_gate_s: float
    gc_online_per_label_s: float
    gc_online_per_step_s: float
    base_ot_s: float
    he_per_input_s: float
    he_per_product_s: float
    he_per_reply_s: float
    he_per_reply_limb_s: float
    he_per_term_s: float
    he_session_s: float
    linear_per_limb_mac_s: float
    linear_per_limb_element_s: float
    linear_per_limb_weight_s: float
    linear_per_term_s: float
    bandwidth: dict[str, float]
    rtt_s: dict[str, float]
    speed_index_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)

    def scaled(self, factor: float) -> Profile:
        """This profile on a machine ``factor`` times slower (every time
        coefficient multiplied, every bandwidth divided by it): e.g.
        ``measure_speed_index() / profile.speed_index_s`` rescales a profile to
        the load a shared machine is under right now."""
        if not factor > 0 or not math.isfinite(factor):
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        times = {f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)
                 if f.name.endswith("_s") and f.name != "rtt_s"}
        return dataclasses.replace(
            self, **times, rtt_s={k: v * factor for k, v in self.rtt_s.items()},
            bandwidth={k: v / factor for k, v in self.bandwidth.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, tagged with the profile format and version."""
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Inverse of :meth:`to_dict`.

        Raises:
            ProfileError: wrong format or version, missing or non-numeric fields.
        """
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"not a {PROFILE_FORMAT} document")
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(f"profile version {data.get('version')!r} is not {PROFILE_VERSION}")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "machine":
                kwargs["machine"] = dict(data.get("machine", {}))
                continue
            if f.name == "speed_index_s" and f.name not in data:
                continue
            if f.name not in data:
                raise ProfileError(f"profile field {f.name!r} is missing")
            value = data[f.name]
            if f.name in ("bandwidth", "rtt_s"):
                if not isinstance(value, dict) or not {"memory", "tcp"} <= set(value):
                    raise ProfileError(f"profile field {f.name!r} needs 'memory' and 'tcp' entries")
                kwargs[f.name] = {str(k): _nonneg(v, f"{f.name}.{k}") for k, v in value.items()}
            elif f.name == "threads":
                if not isinstance(value, int) or value < 1:
                    raise ProfileError("profile field 'threads' must be a positive integer")
                kwargs[f.name] = value
            else:
                kwargs[f.name] = _nonneg(value, f.name)
        if min(kwargs["bandwidth"].values()) <= 0:
            raise ProfileError("profile bandwidths must be positive")
        return cls(**kwargs)

    def save(self, path: PathLike) -> None:
        """Write the profile as JSON."""
        with open(os.fspath(path), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, path: PathLike) -> Profile:
        """Read a profile written by :meth:`save`.

        Raises:
            ProfileError: not a profile, or malformed (see :meth:`from_dict`).
        """
        try:
            with open(os.fspath(path), encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as exc:
            raise ProfileError(f"{os.fspath(path)!r} is not JSON: {exc}") from exc
        return cls.from_dict(data)


def _nonneg(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ProfileError(f"profile field {name!r} must be a non-negative number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------- estimate


@dataclass
class StepEstimate(StepFigures):
    """Predicted cost of one Plan step (same meaning as :class:`pie.protocol.StepCost`);
    ``round`` is the step's online round (0: not a garbled step)."""

    round: int = 0


@dataclass
class Estimate:
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

    def _sum(self, attr: str) -> Any:
        return sum(getattr(s, attr) for s in self.steps)

    @property
    def relus(self) -> int:
        return int(self._sum("relus"))

    @property
    def offline_bytes(self) -> int:
        return int(self._sum("offline_bytes")) + self.setup_bytes

    @property
    def online_bytes(self) -> int:
        return int(self._sum("online_bytes")) + self.input_bytes

    @property
    def offline_seconds(self) -> float:
        return float(self._sum("offline_seconds")) + self.setup_seconds

    @property
    def online_seconds(self) -> float:
        return float(self._sum("online_seconds")) + self.input_seconds

    @property
    def offline_round_trips(self) -> int:
        return int(self._sum("offline_round_trips")) + self.setup_round_trips

    def totals(self) -> dict[str, Any]:
        return {
            "relus": self.relus,
            "offline_bytes": self.offline_bytes,
            "online_bytes": self.online_bytes,
            "offline_seconds": self.offline_seconds,
            "online_seconds": self.online_seconds,
            "online_round_trips": self.online_round_trips,
            "offline_round_trips": self.offline_round_trips,
            "setup_bytes": self.setup_bytes,
            "input_bytes": self.input_bytes,
            "transport": self.transport,
            "link": self.link,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"totals": self.totals(), "steps": [s.to_dict() for s in self.steps]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def table(self) -> str:
        """One line per step, then the totals (bytes in MB, times in ms)."""
        head = (f"{'#':>3} {'kind':<8} {'output':<22} {'rnd':>3} {'offline MB':>10} {'off ms':>8} "
                f"{'online MB':>10} {'on ms':>8}")
        lines = [head, "-" * len(head)]
        for s in self.steps:
            lines.append(
                f"{s.index:>3} {s.kind:<8} {s.output[:22]:<22} {s.round or '':>3} "
                f"{s.offline_bytes / 1e6:>10.3f} {1e3 * s.offline_seconds:>8.1f} "
                f"{s.online_bytes / 1e6:>10.3f} {1e3 * s.online_seconds:>8.1f}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'':>3} {'total':<8} {f'{self.relus:,} ReLUs':<22} {self.online_round_trips:>3} "
            f"{self.offline_bytes / 1e6:>10.3f} {1e3 * self.offline_seconds:>8.1f} "
            f"{self.online_bytes / 1e6:>10.3f} {1e3 * self.online_seconds:>8.1f}"
        )
        return "\n".join(lines)


def estimate(plan: Plan, profile: Profile, transport: str = "memory",
             link: Link | str | None = None) -> Estimate:
    """Predict the traffic and time of one private inference of ``plan``.

    Args:
        plan: a Plan (public or with weights; weights refine the number of
            float64 limbs of the server's online arithmetic, see below).
        profile: the machine's figures (:func:`measure_profile`, :meth:`Profile.load`).
        transport: ``"memory"`` (:func:`pie.infer`) or ``"tcp"`` (loopback or LAN
            with the profile's TCP bandwidth and round-trip time).
        link: an emulated or real network link between the parties
            (:class:`pie.Link` or a preset name) on top of ``transport``: every
            round trip costs the link's RTT and every byte its serialisation
            time beyond the transport's own (module docstring).

    Returns:
        The :class:`Estimate`. Bytes are exact for the engine in this package
        (module docstring); times are the model's prediction. The first call in
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
    times = {f.name: 0.0 for f in dataclasses.fields(Profile)
             if f.name not in ("threads", "bandwidth", "rtt_s", "machine")}
    free = Profile(threads=1, bandwidth={"memory": math.inf, "tcp": math.inf},
                   rtt_s={"memory": 0.0, "tcp": 0.0}, **times)
    return _estimate(plan, free, "memory", _session_frames())


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
            bits = t[s.output].ring_bits
            for k, term in enumerate(s.terms):
                if not isinstance(term, (ConvTerm, FCTerm)):
                    continue
                lay = _term_layout(plan, term)
                c2s, s2c = _he_term_bytes(plan, s, lay, sessions[bits])
                est.offline_bytes_c2s += c2s
                est.offline_bytes_s2c += s2c
                opening = (i, k) in opens
                est.offline_round_trips += opening
                limbs = he.he_parameters(bits, max_revealed=sessions[bits])["final_limbs"]
                # Encrypt, send, compute, reply, decrypt. Across a link the
                # replies drain while the server computes (the exchange's
                # later terms), so only the part of their transfer that
                # outlasts the server's work adds, as for garbled tables.
                server = (p.he_per_product_s * lay["num_products"]
                          + (p.he_per_reply_s + p.he_per_reply_limb_s * limbs) * lay["num_outputs"])
                est.offline_seconds += (
                    p.he_per_input_s * lay["num_inputs"] + server + p.he_per_term_s
                    + extra_per_byte * (c2s + s2c) + wire.transfer(c2s, 0)
                    + max(0.0, wire.transfer(0, s2c) - server)
                    + (extra_rtt + wire.rtt if opening else 0.0)
                )
                macs, elements, weights = _limb_work(plan, term, bits, weight_bits)
                est.online_seconds += (p.linear_per_limb_mac_s * macs + p.linear_per_limb_element_s * elements
                                       + p.linear_per_limb_weight_s * weights + p.linear_per_term_s)
        elif isinstance(s, (ReluStep, TruncateStep)):
            l_in, l_out = t[s.input].ring_bits, t[s.output].ring_bits
            n = t[s.output].numel
            gates = _and_gates(l_in, l_out, s.shift, isinstance(s, TruncateStep))
            est.and_gates = n * gates
            est.relus = n if isinstance(s, ReluStep) else 0
            est.round = rounds[s.output]
            shape = (l_in, l_out, s.shift, isinstance(s, TruncateStep))
            first = shape not in seen_shapes
            seen_shapes.add(shape)
            off_c2s, off_s2c, on_c2s, on_s2c = _gc_step_bytes(n, l_in, l_out, gates, first, frames)
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
                p.gc_online_per_and_s * n * gates + p.gc_online_per_gate_s * n * _other_gates(*shape)
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
            est.offline_bytes_c2s = _iknp_matrix_bytes(numel * bits) + frames["base_ot_c2s"]
            est.offline_bytes_s2c = (FRAME_HEADER_BYTES + GC_BATCH_HEADER_BYTES + TABLE_BYTES_PER_AND * gates
                                     + FRAME_HEADER_BYTES + -(-circuit.output_widths[0] // 8)
                                     + frames["base_ot_s2c"])
            # Two round trips: the base-OT set-up, then the OT with the tables and decoding bits.
            est.offline_round_trips = 2
            est.offline_seconds = (p.gc_offline_per_and_s * gates + p.gc_offline_per_ot_s * numel * bits
                                   + p.gc_offline_per_step_s + p.base_ot_s
                                   + extra_per_byte * (est.offline_bytes_c2s + est.offline_bytes_s2c)
                                   + 2 * (extra_rtt + wire.rtt)
                                   + wire.transfer(est.offline_bytes_c2s, est.offline_bytes_s2c))
            est.online_bytes_s2c = 2 * FRAME_HEADER_BYTES + LABEL_BYTES * numel * bits
            est.online_round_trips = 1
            est.online_seconds = (rtt / 2 + p.gc_online_per_and_s * gates + p.gc_online_per_label_s * numel * bits
                                  + est.online_bytes_s2c / p.bandwidth[transport]
                                  + wire_online.one_way(0, est.online_bytes_s2c))
        elif isinstance(s, OutputStep):
            numel = t[s.input].numel
            est.online_bytes_s2c = FRAME_HEADER_BYTES + SHARE_BYTES * numel
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
    last = steps[_frame_positions(plan)["last"]]
    last.offline_round_trips += 1
    last.offline_seconds += rtt + wire.rtt
    # Session frames measured on a tiny inference (handshake, phase checks,
    # finish): charged where the engine's report counts them.
    setup_bytes = frames["setup"] + sum(_he_hello_bytes(bits) for bits in sessions)
    for position, index in _frame_positions(plan).items():
        for key in _BYTE_KEYS:
            setattr(steps[index], key, getattr(steps[index], key) + frames[f"{position}:{key}"])
    input_bytes = FRAME_HEADER_BYTES + SHARE_BYTES * t[plan.input].numel + frames["input"]
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


# ----------------------------------------------------------------- byte model


@functools.cache
def _circuit(l_in: int, l_out: int, shift: int, truncate: bool) -> gc.Circuit:
    """The circuit the engine garbles for one element."""
    return (gc.truncate_circuit if truncate else gc.relu_circuit)(l_in, l_out, shift)


def _and_gates(l_in: int, l_out: int, shift: int, truncate: bool) -> int:
    """AND gates per element (the builder drops gates whose outputs the
    shift discards, so this can be below :func:`pie.plan.relu_and_gates`)."""
    return _circuit(l_in, l_out, shift, truncate).num_and


def _other_gates(l_in: int, l_out: int, shift: int, truncate: bool) -> int:
    """XOR and INV gates per element: free of hashing, not of time."""
    c = _circuit(l_in, l_out, shift, truncate)
    return c.num_gates - c.num_and


def _term_layout(plan: Plan, term: ConvTerm | FCTerm) -> dict[str, int]:
    src = plan.tensors[term.input]
    if isinstance(term, ConvTerm):
        return he.layout(src.shape, term.weight_shape, term.stride[0], term.padding[0], term.groups)  # type: ignore[arg-type]
    m, k = term.weight_shape
    return he.layout((k, 1, 1), (m, k, 1, 1))


def _he_term_bytes(plan: Plan, step: LinearStep, lay: dict[str, int], max_revealed: int) -> tuple[int, int]:
    """Bytes (client to server, server to client) of one HE conv/fc term."""
    bits = plan.tensors[step.output].ring_bits
    params = he.he_parameters(bits, max_revealed=max_revealed)
    ct = _he_input_ciphertext_bytes(bits)
    c2s = FRAME_HEADER_BYTES + HE_COUNT_BYTES + lay["num_inputs"] * (HE_COUNT_BYTES + ct)
    # Each reply: c1 in full and c0 at its output coefficients, in the final
    # limbs; every output element sits in exactly one reply coefficient.
    coeffs = lay["num_outputs"] * params["poly_degree"] + plan.tensors[step.output].numel
    s2c = FRAME_HEADER_BYTES + RESIDUE_BYTES * params["final_limbs"] * coeffs
    return c2s, s2c


def _iknp_matrix_bytes(n: int) -> int:
    """Bytes of the IKNP matrix the receiver sends for n correlated OTs."""
    full, rest = divmod(n, IKNP_CHUNK)
    chunks = [IKNP_CHUNK] * full + ([rest] if rest else [])
    return sum(IKNP_KAPPA * (-(-c // 128) * 128) // 8 for c in chunks)


def _gc_step_bytes(n: int, l_in: int, l_out: int, gates: int, first: bool,
                   frames: dict[str, int]) -> tuple[int, int, int, int]:
    """(offline c2s, offline s2c, online c2s, online s2c) of one garbled step."""
    off_c2s = _iknp_matrix_bytes(n * (l_in + l_out))
    off_s2c = (FRAME_HEADER_BYTES + GC_IDS_BYTES + FRAME_HEADER_BYTES + GC_BATCH_HEADER_BYTES
               + TABLE_BYTES_PER_AND * gates * n)
    if first:  # the IKNP instance of this circuit shape runs its base OTs
        off_c2s += frames["base_ot_c2s"]
        off_s2c += frames["base_ot_s2c"]
    on_s2c = FRAME_HEADER_BYTES + GC_IDS_BYTES + LABEL_BYTES * l_in * n
    on_c2s = -(-n * l_out // 8)
    return off_c2s, off_s2c, on_c2s, on_s2c


def _limb_work(plan: Plan, term: ConvTerm | FCTerm, bits: int, weight_bits: int) -> tuple[int, int, int]:
    """(limb MACs, limb elements in + out, limb weights) of the server's exact
    float64 arithmetic for one term (pie.plan.reference: limbs of b bits with
    ``max_row_L1 * 2^b <= 2^53``; the server's share is uniform, so its
    magnitude needs ``bits - 1`` bits)."""
    src = plan.tensors[term.input]
    if isinstance(term, ConvTerm):
        o, cg, kh, kw = term.weight_shape
        k = cg * kh * kw
        out = plan.tensors[_term_output(plan, term)].numel
        macs_per_limb = out * k
    else:
        o, k = term.weight_shape
        out = o
        macs_per_limb = o * k
    if term.weight is not None:
        l1 = int(np.abs(term.weight.reshape(term.weight.shape[0], -1)).sum(axis=1).max())
    else:  # public plan: a typical row, a quarter of full scale per weight
        l1 = k << max(weight_bits - 3, 0)
    b = _FLOAT_EXACT_BITS - math.ceil(math.log2(max(l1, 1))) if l1 > 1 else _FLOAT_EXACT_BITS
    limbs = max(1, -(-(bits - 1) // max(b, 1)))
    return limbs * macs_per_limb, limbs * (src.numel + out), limbs * o * k


def _term_output(plan: Plan, term: ConvTerm | FCTerm) -> str:
    for s in plan.steps:
        if isinstance(s, LinearStep) and any(t is term for t in s.terms):
            return s.output
    raise ValueError("term does not belong to the plan")


# ------------------------------------------------ sizes measured from the code


@functools.cache
def _he_hello_bytes(bits: int) -> int:
    """The HE session set-up frame (parameters id and seeded public key)."""
    a, _b = memory_pair()
    he.LinearClient(a, bits)
    return int(a.bytes_sent)


@functools.cache
def _he_input_ciphertext_bytes(bits: int) -> int:
    """Serialised size of one seeded input ciphertext (a one-ciphertext layer)."""
    x = np.zeros((1, 1, 1), dtype=np.uint64)
    w = np.ones((1, 1, 1, 1), dtype=np.int64)
    _, _, stats = he.secure_conv2d(x, w, ring_bits=bits)
    if stats["num_input_ciphertexts"] != 1:
        raise RuntimeError("a 1x1 layer should need one input ciphertext")
    return int(stats["bytes_client_to_server"]) - _he_hello_bytes(bits) - FRAME_HEADER_BYTES - 2 * HE_COUNT_BYTES


@functools.lru_cache(maxsize=1)
def _base_ot_bytes() -> tuple[int, int]:
    """(receiver to sender, sender to receiver) bytes of an IKNP set-up: the
    base-OT session id and the Chou-Orlandi messages."""
    a, b = memory_pair()
    sender, receiver = gc.IknpSender(a), gc.IknpReceiver(b)
    worker = threading.Thread(target=receiver.recv_cot, args=(bytes([0]),))
    worker.start()
    sender.send_cot(1)
    worker.join()
    return int(b.bytes_sent) - _iknp_matrix_bytes(1), int(b.bytes_received)


_BYTE_KEYS = ("offline_bytes_c2s", "offline_bytes_s2c", "online_bytes_c2s", "online_bytes_s2c")


def _frame_positions(plan: Plan) -> dict[str, int]:
    """Steps that carry session-level frames: the first step, the last step
    before the output and the output step."""
    out = plan.steps.index(plan.output)
    last = max((i for i, s in enumerate(plan.steps) if not isinstance(s, OutputStep)), default=0)
    return {"first": 0, "last": last, "output": out}


@functools.lru_cache(maxsize=1)
def _session_frames() -> dict[str, int]:
    """Bytes of the session-level frames (handshake, phase checks, finish):
    one inference of a tiny plan, minus everything modelled per step.

    Raises:
        RuntimeError: the engine's traffic differs from the model at a step
            that cannot carry a session frame (the model is out of date).
    """
    from ..protocol import infer

    up, down = _base_ot_bytes()
    frames = {"setup": 0, "input": 0, "base_ot_c2s": up, "base_ot_s2c": down}
    frames.update({f"{pos}:{key}": 0 for pos in ("first", "last", "output") for key in _BYTE_KEYS})
    plan = _tiny_plan()
    _, report = infer(plan, np.full(plan.input_shape, 0.5))
    zero = _estimate(plan, _ZERO_PROFILE, "memory", frames)
    frames["setup"] = report.setup_bytes - zero.setup_bytes
    frames["input"] = report.input_bytes - zero.input_bytes
    positions = _frame_positions(plan)
    for index, (predicted, measured) in enumerate(zip(zero.steps, report.costs)):
        for key in _BYTE_KEYS:
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


_ZERO_PROFILE = Profile(
    threads=1, gc_offline_per_and_s=0, gc_offline_per_ot_s=0, gc_offline_per_step_s=0,
    gc_online_per_and_s=0, gc_online_per_gate_s=0, gc_online_per_label_s=0, gc_online_per_step_s=0, base_ot_s=0,
    he_per_input_s=0, he_per_product_s=0, he_per_reply_s=0, he_per_reply_limb_s=0, he_per_term_s=0, he_session_s=0,
    linear_per_limb_mac_s=0, linear_per_limb_element_s=0, linear_per_limb_weight_s=0, linear_per_term_s=0,
    bandwidth={"memory": 1.0, "tcp": 1.0}, rtt_s={"memory": 0.0, "tcp": 0.0},
)


# ------------------------------------------------------------------ profiling

# Layer shapes the HE and online-linear fits sample: (C, H, O, k, stride,
# padding), ResNet-18 family shapes from 32x32 down to 2x2, widths 16-256.
_CONV_SAMPLES = [
    (3, 32, 32, 3, 2, 1),
    (16, 32, 16, 3, 1, 1),
    (32, 16, 32, 3, 1, 1),
    (32, 16, 64, 3, 2, 1),
    (32, 16, 64, 1, 2, 0),
    (64, 8, 64, 3, 1, 1),
    (64, 8, 128, 3, 2, 1),
    (128, 4, 128, 3, 1, 1),
    (256, 2, 256, 3, 1, 1),
    (32, 32, 32, 3, 1, 1),
    (64, 16, 64, 3, 1, 1),
]
# The server's online arithmetic also samples full-width ResNet-18 layers: its
# per-MAC cost only shows on layers of millions of MACs.
_LINEAR_ONLY_SAMPLES = [
    ("conv", 64, 32, 64, 3, 1, 1),
    ("conv", 128, 8, 128, 3, 1, 1),
    ("conv", 128, 16, 128, 3, 1, 1),
    ("conv", 256, 4, 256, 3, 1, 1),
    ("conv", 512, 4, 512, 3, 1, 1),
]
_FC_SAMPLES = [(256, 100), (512, 100)]
# Garbled-step samples: (l_in, l_out, shift, truncate) -- ReLUs and truncations
# at the rings compiled DeepReDuce plans use.
_GC_SAMPLES = [(37, 37, 12, False), (58, 57, 16, False), (30, 58, 15, False), (24, 24, 8, False),
               (59, 31, 43, False), (57, 43, 41, True), (46, 20, 30, True), (40, 58, 20, True)]


def measure_profile(seconds: float = 60.0, threads: int = 0,
                    progress: Callable[[str], None] | None = None) -> Profile:
    """Measure a :class:`Profile` of this machine with the engine's own classes.

    Runs, each over an in-memory channel with the two parties as threads (as
    :func:`pie.infer` does): garbled ReLU and truncation batches of several
    shapes and sizes (offline and online timed on the client, like the
    engine's report), HE conv and fc layers of ResNet-18-family shapes at two
    rings, the server's exact online ring arithmetic of the same layers, and
    channel bandwidth and round-trip time in memory and over loopback TCP.
    Coefficients are non-negative least-squares fits (module docstring).

    Args:
        seconds: rough time budget; sizes and repetitions scale with it
            (the default takes about a minute on two cores).
        threads: worker threads for garbling and evaluation (0: all cores).
        progress: called with a short description before each part.

    Returns:
        The profile; :meth:`Profile.save` writes it.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    say = progress or (lambda _msg: None)
    scale = max(0.25, min(4.0, seconds / 60.0))
    reps = max(1, round(3 * scale))
    nthreads = gc.worker_threads(threads)
    say("speed index")
    speed = [measure_speed_index(threads, repeat=2)]
    say("channels")
    bandwidth, rtt = _measure_transports(int(16 * scale) << 20)
    say("garbled circuits")
    gc_fit = _measure_gc(threads, [int(4096 * scale), int(32768 * scale)], reps)
    layers = _SAMPLE_LAYERS if scale >= 0.5 else _SAMPLE_LAYERS[::2]
    say("HE linear layers")
    he_fit = _measure_he(layers, reps)
    say("online linear arithmetic")
    lin_fit = _measure_linear(layers + _LINEAR_ONLY_SAMPLES, max(3, reps + 1))
    say("speed index")
    speed.append(measure_speed_index(threads, repeat=2))
    import torch

    machine = {
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "seal": he.seal_version(),
        "aes_backend": _aes_backend(),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
    }
    return Profile(threads=nthreads, bandwidth=bandwidth, rtt_s=rtt, machine=machine,
                   speed_index_s=float(np.mean(speed)), **gc_fit, **he_fit, **lin_fit)


def measure_speed_index(threads: int = 0, repeat: int = 3) -> float:
    """Median seconds of a fixed reference workload: garbling and evaluating
    8192 ReLUs at l = 37, one HE convolution (32 channels, 16x16, both parties)
    and one exact ring convolution -- a quick gauge (about a second) of how
    fast the machine runs right now, for :meth:`Profile.scaled`."""
    from ..plan.reference import conv2d_ring

    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    rng = np.random.default_rng(3)
    relu = gc.relu_circuit(37, 37, 12)
    x = rng.integers(0, 1 << 37, (32, 16, 16), dtype=np.uint64)
    w = rng.integers(-(1 << 11), 1 << 11, (32, 32, 3, 3), dtype=np.int64)
    times = []
    for _ in range(repeat + 1):  # the first, untimed, warms caches and lazy set-up
        t0 = time.perf_counter()
        gc.kernel_seconds(relu, 8192, threads, 1, "garble")
        gc.kernel_seconds(relu, 8192, threads, 1, "evaluate")
        he.secure_conv2d(x, w, stride=1, padding=1, ring_bits=37)
        conv2d_ring(x[None], w, (1, 1), (1, 1), 1, 37)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _nnls(rows: Sequence[Sequence[float]], times: Sequence[float]) -> list[float]:
    """Non-negative least squares over the median time of each distinct
    feature row (repetitions damp the noise of a busy machine), each weighted
    by 1/time: the noise of a shared machine is multiplicative, so every
    sample's relative error counts alike."""
    from scipy.optimize import nnls

    groups: dict[tuple[float, ...], list[float]] = {}
    for row, y_ in zip(rows, times):
        groups.setdefault(tuple(float(v) for v in row), []).append(float(y_))
    a = np.asarray(list(groups), dtype=np.float64)
    y = np.asarray([np.median(v) for v in groups.values()], dtype=np.float64)
    w = 1.0 / np.maximum(y, 1e-6)
    col = np.maximum(np.abs(a).max(axis=0), 1e-30)  # column scaling for conditioning
    coef, _ = nnls(a * w[:, None] / col, y * w)
    return [float(c) for c in coef / col]


def _run_pair(server: Callable[[], None], client: Callable[[], None]) -> None:
    """Run the server side in a thread and the client side here; re-raise either's error."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            server()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    worker = threading.Thread(target=guarded, name="pie-profile-server")
    worker.start()
    try:
        client()
    finally:
        worker.join()
    if errors:
        raise errors[0]


def _measure_gc(threads: int, sizes: list[int], reps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    off_rows, off_t, on_rows, on_t, base = [], [], [], [], []
    for l_in, l_out, shift, trunc in _GC_SAMPLES:
        gates = _and_gates(l_in, l_out, shift, trunc)
        other = _other_gates(l_in, l_out, shift, trunc)
        timings = _gc_timings((l_in, l_out, shift, trunc), [16] + [n for n in sizes for _ in range(reps)],
                              threads, rng)
        base.append(timings[0][1])  # the first batch runs the base OTs
        for n, off, on in timings[1:]:
            off_rows.append([n * gates, n * (l_in + l_out), 1.0])
            off_t.append(off)
            on_rows.append([n * gates, n * other, n * l_in, 1.0])
            on_t.append(on)
    per_and, per_ot, per_step = _nnls(off_rows, off_t)
    on_and, on_gate, on_label, on_step = _nnls(on_rows, on_t)
    return {
        "gc_offline_per_and_s": per_and,
        "gc_offline_per_ot_s": per_ot,
        "gc_offline_per_step_s": per_step,
        "gc_online_per_and_s": on_and,
        "gc_online_per_gate_s": on_gate,
        "gc_online_per_label_s": on_label,
        "gc_online_per_step_s": on_step,
        "base_ot_s": float(np.median(base)),
    }


def _gc_timings(shape: tuple[int, int, int, bool], runs: list[int], threads: int,
                rng: np.random.Generator) -> list[tuple[int, float, float]]:
    """(n, offline seconds, online seconds) on the client for batches of ``runs``
    elements, one session (its first batch pays the base OTs).

    As in the engine, every batch's offline phase runs before any online one,
    so the online phase reads material that has left the caches (timing each
    batch's online right after its offline would find its tables in cache and
    under-predict large steps)."""
    l_in, l_out, shift, trunc = shape
    a, b = memory_pair(256 << 20)
    server = gc.ReluServer(a, l_in, l_out, shift, threads, truncate=trunc)
    client = gc.ReluClient(b, l_in, l_out, shift, threads, truncate=trunc)
    xs = [rng.integers(0, 1 << l_in, n, dtype=np.uint64) for n in runs]
    xc = [rng.integers(0, 1 << l_in, n, dtype=np.uint64) for n in runs]
    r = [rng.integers(0, 1 << l_out, n, dtype=np.uint64) for n in runs]
    offline: list[float] = []
    online: list[float] = []

    def serve() -> None:
        material = [server.offline(n) for n in runs]
        for m, x in zip(material, xs):
            server.online(m, x)

    def evaluate() -> None:
        material = []
        for x, m in zip(xc, r):
            t0 = time.perf_counter()
            material.append(client.offline(x, m))
            offline.append(time.perf_counter() - t0)
        for m in material:
            t0 = time.perf_counter()
            client.online(m)
            online.append(time.perf_counter() - t0)

    _run_pair(serve, evaluate)
    return list(zip(runs, offline, online))


_SAMPLE_LAYERS: list[tuple[Any, ...]] = [("conv", *c) for c in _CONV_SAMPLES] + [("fc", *f) for f in _FC_SAMPLES]


def _measure_he(layers: list[tuple[Any, ...]], reps: int) -> dict[str, float]:
    """Fits each part of an HE term separately (the parties time their own
    parts), then the rest of the client's wall time (transfers, the server's
    weight encoding where it outlasts the encryption, Python)."""
    rng = np.random.default_rng(1)
    enc: tuple[list[list[float]], list[float]] = ([], [])
    srv: tuple[list[list[float]], list[float]] = ([], [])
    dec: tuple[list[list[float]], list[float]] = ([], [])
    rest: tuple[list[list[float]], list[float]] = ([], [])
    sessions = []
    for bits in (37, 58):
        limbs = he.he_parameters(bits)["final_limbs"]
        jobs = [layer for layer in layers for _ in range(reps)]
        session, timings = _he_timings(bits, jobs, rng)
        sessions.append(session)
        for layer, (wall, encrypt, compute, decrypt) in zip(jobs, timings):
            lay = _sample_layout(layer)
            n_in, n_prod, n_out = lay["num_inputs"], lay["num_products"], lay["num_outputs"]
            for (rows, ys), row, y in ((enc, [n_in], encrypt), (srv, [n_in, n_prod, n_out], compute),
                                       (dec, [n_out * limbs], decrypt),
                                       (rest, [n_in, n_prod, 1.0], wall - encrypt - compute - decrypt)):
                rows.append(row)
                ys.append(max(y, 0.0))
    (a_in,) = _nnls(*enc)
    b_in, b_prod, b_out = _nnls(*srv)
    (c_limb,) = _nnls(*dec)
    r_in, r_prod, r_term = _nnls(*rest)
    return {
        "he_per_input_s": a_in + b_in + r_in,
        "he_per_product_s": b_prod + r_prod,
        "he_per_reply_s": b_out,
        "he_per_reply_limb_s": c_limb,
        "he_per_term_s": r_term,
        "he_session_s": float(np.median(sessions)),
    }


def _he_timings(bits: int, jobs: list[tuple[Any, ...]],
                rng: np.random.Generator) -> tuple[float, list[tuple[float, float, float, float]]]:
    """The client's key set-up seconds (key generation, sending the public
    key: the server's side of it overlaps), and per HE layer of ``jobs`` (one session at ring
    ``bits``): the client's wall time, its encryption, the server's compute
    and the client's decryption."""
    a, b = memory_pair(256 << 20)
    weights = {layer: _random_weight(layer, rng) for layer in set(jobs)}
    shares = {layer: rng.integers(0, 1 << bits, _in_shape(layer), dtype=np.uint64) for layer in set(jobs)}
    keygen: list[float] = []
    compute: list[float] = []
    client_side: list[tuple[float, float, float]] = []

    def serve() -> None:
        srv = he.LinearServer(a, bits)
        for layer in jobs:
            if layer[0] == "conv":
                _, c, h, _, _, s, p = layer
                srv.conv2d((c, h, h), weights[layer], stride=s, padding=p)
            else:
                srv.matmul(weights[layer])
            compute.append(srv.timings["compute_s"])

    def run_client() -> None:
        start = time.perf_counter()
        cli = he.LinearClient(b, bits)
        keygen.append(time.perf_counter() - start)
        for layer in jobs:
            t0 = time.perf_counter()
            if layer[0] == "conv":
                _, c, _, o, k, s, p = layer
                cli.conv2d(shares[layer], (o, c, k, k), stride=s, padding=p)
            else:
                cli.matmul(shares[layer], layer[2])
            client_side.append((time.perf_counter() - t0, cli.timings["encrypt_s"], cli.timings["decrypt_s"]))

    _run_pair(serve, run_client)
    return keygen[0], [(w, e, c, d) for (w, e, d), c in zip(client_side, compute)]


def _measure_linear(layers: list[tuple[Any, ...]], reps: int) -> dict[str, float]:
    from ..plan.reference import conv2d_ring, fc_ring, prepare_weight

    rng = np.random.default_rng(2)
    rows, times = [], []
    for bits in (37, 58):
        for layer in layers:
            w = _random_weight(layer, rng)
            pw = prepare_weight(w)  # as the server does, once per weight
            x = rng.integers(0, 1 << bits, _in_shape(layer), dtype=np.uint64)[None]
            runs = []
            for _ in range(reps):
                t0 = time.perf_counter()
                if layer[0] == "conv":
                    _, _, _, _, _, s, p = layer
                    y = conv2d_ring(x, pw, (s, s), (p, p), 1, bits)
                else:
                    y = fc_ring(x, pw, bits)
                runs.append(time.perf_counter() - t0)
            limbs = max(1, -(-(bits - 1) // pw.limb_bits))
            k = int(np.prod(w.shape[1:]))
            for seconds in runs:  # _nnls takes the median of each layer's runs
                rows.append([limbs * y.size * k, limbs * (x.size + y.size), limbs * w.size, 1.0])
                times.append(seconds)
    per_mac, per_element, per_weight, per_term = _nnls(rows, times)
    return {"linear_per_limb_mac_s": per_mac, "linear_per_limb_element_s": per_element,
            "linear_per_limb_weight_s": per_weight, "linear_per_term_s": per_term}


def _random_weight(layer: tuple[Any, ...], rng: np.random.Generator) -> np.ndarray:
    """Weights of the compiler's default precision (12 significant bits)."""
    shape = (layer[3], layer[1], layer[4], layer[4]) if layer[0] == "conv" else (layer[2], layer[1])
    return rng.integers(-(1 << 11), 1 << 11, shape, dtype=np.int64)


def _in_shape(layer: tuple[Any, ...]) -> tuple[int, ...]:
    return (layer[1], layer[2], layer[2]) if layer[0] == "conv" else (layer[1],)


def _sample_layout(layer: tuple[Any, ...]) -> dict[str, int]:
    if layer[0] == "conv":
        _, c, h, o, k, s, p = layer
        return he.layout((c, h, h), (o, c, k, k), s, p)
    _, k, m = layer
    return he.layout((k, 1, 1), (m, k, 1, 1))


def _transfer_seconds(a: Channel, b: Channel, size: int) -> float:
    payload = bytes(size)
    sink = bytearray(size)
    reader = threading.Thread(target=b.recv_into, args=(sink,))
    t0 = time.perf_counter()
    reader.start()
    a.send(payload)
    a.flush()
    reader.join()
    return time.perf_counter() - t0


def _ping_seconds(a: Channel, b: Channel, count: int) -> float:
    def echo() -> None:
        for _ in range(count):
            b.send(b.recv(1))
            b.flush()

    worker = threading.Thread(target=echo)
    worker.start()
    t0 = time.perf_counter()
    for _ in range(count):
        a.send(b"x")
        a.flush()
        a.recv(1)
    elapsed = time.perf_counter() - t0
    worker.join()
    return elapsed / count


def _measure_transports(size: int) -> tuple[dict[str, float], dict[str, float]]:
    bandwidth, rtt = {}, {}
    for name in ("memory", "tcp"):
        if name == "memory":
            a, b = memory_pair(2 * size)
        else:
            with TcpListener("127.0.0.1", 0) as listener:
                a = tcp_connect("127.0.0.1", listener.port)
                b = listener.accept()
        try:
            _transfer_seconds(a, b, 1 << 20)  # warm-up
            bandwidth[name] = size / min(_transfer_seconds(a, b, size) for _ in range(3))
            rtt[name] = min(_ping_seconds(a, b, 200) for _ in range(3))
        finally:
            a.close()
            b.close()
    return bandwidth, rtt


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _aes_backend() -> str:
    from ..crypto import default_aes_backend

    return str(default_aes_backend())
