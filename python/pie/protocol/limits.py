"""A server's resource limits: sessions, offline material in memory, deadlines.

Offline material is what a server session holds between its offline and
online phases (per prepared set) plus what its largest step needs while it
runs. An admitted session reserves the working peak and one set; each
further set it holds at the same time (a client's ``prepare(k)`` or the
server's refill, :class:`SessionBudget`) reserves one set more, and a set
used by a query gives its share back. The estimate is
estimated from the public Plan alone (the same for every session of a
Plan), before a session is admitted:

- garbled steps: per element the 16-byte 0-labels of the server's ``l_in``
  input bits and the ``l_out`` output colour bits (held until online); while
  a step garbles, the correlated-OT blocks of the client's ``l_in + l_out``
  bits, the 0-labels of all ``2 l_in + l_out`` inputs and of the ``l_out``
  outputs, and at most the step's garbled tables (32 bytes per AND gate,
  streamed to the client and not held afterwards);
- linear steps: the 8-byte mask ``s`` of every output element computed with
  HE (held until online); while a step runs, its input ciphertexts (as
  received and as loaded) and its products and replies;
- per HE session (one per ring and prepared set), the client's public key;
- while an offline exchange runs (:func:`pie.protocol.schedule.offline_exchanges`),
  the OT blocks of its garbled steps and the HE input frames it received,
  at most :data:`pie.protocol.schedule.OFFLINE_EXCHANGE_BYTES` beyond its
  largest item.

The client holds more (the garbled tables themselves): the ``tables`` field
says how much, so that a client can judge a Plan before it starts.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from .. import he
from ..plan import (
    ConvTerm,
    FCTerm,
    LinearStep,
    Plan,
    ReluStep,
    TruncateStep,
    he_ring_bits,
    relu_and_gates,
    truncate_and_gates,
)
from .schedule import he_sessions, offline_exchanges
from .wire import ServerBusyError

__all__ = ["Admission", "Limits", "MaterialEstimate", "Reservation", "SessionBudget"]

_LABEL = 16  # bytes of one wire label / OT block


def _default_total_bytes() -> int:
    """Half the machine's physical memory (8 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 8 << 30


@dataclass(frozen=True)
class Limits:
    """What one server allows (``python -m pie.serve server`` flags in brackets).

    Attributes:
        max_sessions: sessions admitted at the same time (``--max-sessions``);
            a client over the limit is refused with :class:`ServerBusyError`.
        max_connections: connections handled at the same time, sessions and
            handshakes together (``--max-connections``); further connections
            wait in the listen backlog.
        handshake_timeout: seconds a connection has, in all, to ask for the
            Plan and say HELLO (``--handshake-timeout``).
        idle_timeout: seconds an admitted session may go without progress
            (``--idle-timeout``): it is then dropped and its material freed.
        max_session_bytes: offline material one session may need
            (``--max-session-memory``); a Plan over it is refused.
        max_total_bytes: offline material of all admitted sessions together
            (``--max-total-memory``; default half the physical memory).
        pool: prepared sets the server offers to keep ready per connection
            (``--pool``), refilled while the connection is idle, within the
            two memory limits.
    """

    max_sessions: int = 4
    max_connections: int = 64
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_session_bytes: int = 4 << 30
    max_total_bytes: int = _default_total_bytes()
    pool: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.pool, int) or isinstance(self.pool, bool) or self.pool < 0:
            raise ValueError(f"pool must be a non-negative integer, got {self.pool!r}")
        for name in ("max_sessions", "max_connections", "max_session_bytes", "max_total_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("handshake_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.max_connections < self.max_sessions:
            raise ValueError(f"max_connections ({self.max_connections}) must be at least "
                             f"max_sessions ({self.max_sessions})")


@dataclass(frozen=True)
class MaterialEstimate:
    """Bytes of offline material one server session needs (see the module).

    Attributes:
        gc_held: garbled steps, held from offline to online.
        gc_peak: the largest garbled step's working set while it garbles.
        he_held: HE output masks, held from offline to online.
        he_peak: the largest HE term's ciphertexts while it runs.
        he_keys: the client's public keys (one per HE session).
        tables: garbled-table bytes streamed to the client (what the client holds).
        exchange: the largest offline exchange's held OT blocks and HE input frames.
    """

    gc_held: int
    gc_peak: int
    he_held: int
    he_peak: int
    he_keys: int
    tables: int
    exchange: int = 0

    @property
    def server_bytes(self) -> int:
        """The server's peak with one prepared set: everything held plus the
        larger working set."""
        return self.set_bytes + self.peak_bytes

    @property
    def set_bytes(self) -> int:
        """What one prepared set holds until its query: labels, masks, keys."""
        return self.gc_held + self.he_held + self.he_keys

    @property
    def peak_bytes(self) -> int:
        """The working set while a set is prepared: an offline exchange's
        held items plus the larger of the GC and HE working sets."""
        return self.exchange + max(self.gc_peak, self.he_peak)

    @classmethod
    def from_plan(cls, plan: Plan) -> MaterialEstimate:
        """The estimate for one session of ``plan`` (public or with weights)."""
        t = plan.tensors
        gc_held = gc_peak = tables = 0
        for s in plan.steps:
            if isinstance(s, (ReluStep, TruncateStep)):
                n, l_in, l_out = t[s.output].numel, t[s.input].ring_bits, t[s.output].ring_bits
                ands = (relu_and_gates(l_in, l_out, s.shift) if isinstance(s, ReluStep)
                        else truncate_and_gates(l_in, l_out))
                held = n * (_LABEL * l_in + l_out)
                work = n * _LABEL * ((l_in + l_out) + (2 * l_in + l_out) + l_out) + 2 * _LABEL * ands * n
                gc_held += held
                gc_peak = max(gc_peak, work)
                tables += 2 * _LABEL * ands * n
        sessions = he_sessions(plan)
        he_held = he_peak = he_keys = 0
        ct_bytes: dict[int, int] = {}
        for bits, revealed in sessions.items():
            p = he.he_parameters(bits, max_revealed=revealed)
            ct_bytes[bits] = 2 * p["poly_degree"] * len(p["coeff_bits"]) * 8
            he_keys += ct_bytes[bits]  # a public key is the size of a ciphertext
        for s in plan.steps:
            if not isinstance(s, LinearStep):
                continue
            terms = [term for term in s.terms if isinstance(term, (ConvTerm, FCTerm))]
            if terms:
                he_held += 8 * t[s.output].numel
            for term in terms:
                bits = he_ring_bits(term, t[s.output].ring_bits)
                if isinstance(term, ConvTerm):
                    lay = he.layout(t[term.input].shape, term.weight_shape, int(term.stride[0]),
                                    int(term.padding[0]), term.groups)
                else:  # the HE layer runs y = W x as a 1x1 convolution
                    k = t[term.input].numel
                    lay = he.layout((k, 1, 1), (term.weight_shape[0], k, 1, 1))
                # inputs as received and as loaded, products and replies
                he_peak = max(he_peak, 2 * (lay["num_inputs"] + lay["num_outputs"]) * ct_bytes[bits])
        exchange = max((sum(it.held_bytes for it in ex) for ex in offline_exchanges(plan)), default=0)
        return cls(gc_held, gc_peak, he_held, he_peak, he_keys, tables, exchange)


@dataclass
class Reservation:
    """An admitted session's share of the limits (it grows and shrinks with
    the sets it holds); give it back with :meth:`Admission.release`."""

    bytes: int


class Admission:
    """Thread-safe accounting of admitted sessions against :class:`Limits`."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._sessions = 0
        self._bytes = 0

    @property
    def sessions(self) -> int:
        """Sessions admitted and not yet released."""
        with self._lock:
            return self._sessions

    @property
    def reserved_bytes(self) -> int:
        """Material of the admitted sessions."""
        with self._lock:
            return self._bytes

    def admit(self, material_bytes: int) -> Reservation:
        """Admit a session needing ``material_bytes``, or raise :class:`ServerBusyError`
        saying which limit it would exceed."""
        lim = self.limits
        if material_bytes > lim.max_session_bytes:
            raise ServerBusyError(f"a session of this plan needs {_mib(material_bytes)} of offline "
                                  f"material, over the per-session limit of {_mib(lim.max_session_bytes)}")
        with self._lock:
            if self._sessions >= lim.max_sessions:
                raise ServerBusyError(f"all {lim.max_sessions} session slots are in use")
            if self._bytes + material_bytes > lim.max_total_bytes:
                raise ServerBusyError(f"offline material in use ({_mib(self._bytes)}) plus this session's "
                                      f"({_mib(material_bytes)}) would exceed {_mib(lim.max_total_bytes)}")
            self._sessions += 1
            self._bytes += material_bytes
        return Reservation(material_bytes)

    def grow(self, reservation: Reservation, nbytes: int, what: str = "more material") -> None:
        """Add ``nbytes`` to an admitted session's share, or raise
        :class:`ServerBusyError` (``what`` names them) if a limit would be crossed."""
        lim = self.limits
        with self._lock:
            if reservation.bytes + nbytes > lim.max_session_bytes:
                raise ServerBusyError(f"{what} ({_mib(nbytes)}) would take this session's material "
                                      f"to {_mib(reservation.bytes + nbytes)}, over the per-session "
                                      f"limit of {_mib(lim.max_session_bytes)}")
            if self._bytes + nbytes > lim.max_total_bytes:
                raise ServerBusyError(f"offline material in use ({_mib(self._bytes)}) plus {what} "
                                      f"({_mib(nbytes)}) would exceed {_mib(lim.max_total_bytes)}")
            self._bytes += nbytes
            reservation.bytes += nbytes

    def shrink(self, reservation: Reservation, nbytes: int) -> None:
        """Give back ``nbytes`` of an admitted session's share."""
        with self._lock:
            nbytes = min(nbytes, reservation.bytes)
            self._bytes -= nbytes
            reservation.bytes -= nbytes

    def room(self, reservation: Reservation) -> int:
        """Bytes the session's share could still grow by."""
        lim = self.limits
        with self._lock:
            return max(0, min(lim.max_session_bytes - reservation.bytes, lim.max_total_bytes - self._bytes))

    def release(self, reservation: Reservation) -> None:
        """Give back an admitted session's share."""
        with self._lock:
            self._sessions -= 1
            self._bytes -= reservation.bytes
            reservation.bytes = 0


class SessionBudget:
    """One session's prepared sets against the server's limits.

    :meth:`admit` admits the session with the working peak and one set (what
    a single query needs); every set held beyond the first reserves
    ``estimate.set_bytes`` more (:meth:`reserve`, all-or-nothing), and a set
    that a query used or the session dropped gives it back (:meth:`release`).
    Thread-safe through the :class:`Admission`.
    """

    def __init__(self, admission: Admission, estimate: MaterialEstimate) -> None:
        self.admission = admission
        self.estimate = estimate
        self.held = 0
        self._reservation: Reservation | None = None

    def admit(self) -> None:
        """Admit the session, or raise :class:`ServerBusyError`."""
        self._reservation = self.admission.admit(self.estimate.server_bytes)

    def reserve(self, count: int) -> None:
        """Reserve ``count`` more sets, or raise :class:`ServerBusyError` and reserve none."""
        res = self._admitted()
        extra = max(0, self.held + count - 1) - max(0, self.held - 1)
        if extra:
            self.admission.grow(res, extra * self.estimate.set_bytes,
                                f"{count} more prepared set{'s' if count > 1 else ''}")
        self.held += count

    def release(self, count: int = 1) -> None:
        """Give back ``count`` held sets."""
        res = self._admitted()
        count = min(count, self.held)
        freed = max(0, self.held - 1) - max(0, self.held - count - 1)
        self.held -= count
        self.admission.shrink(res, freed * self.estimate.set_bytes)

    def available(self) -> int:
        """How many more sets could be reserved now."""
        res = self._admitted()
        spare = 1 if self.held == 0 else 0  # the admission covers one set
        return spare + self.admission.room(res) // max(self.estimate.set_bytes, 1)

    def close(self) -> None:
        """Give back the whole session's share (if it was admitted)."""
        if self._reservation is not None:
            self.admission.release(self._reservation)
            self._reservation = None
            self.held = 0

    def _admitted(self) -> Reservation:
        if self._reservation is None:
            raise RuntimeError("the session was not admitted")
        return self._reservation


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
