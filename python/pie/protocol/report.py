"""Per-step cost report of one private inference: time, bytes each way, rounds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..tables import Column, format_table

__all__ = ["InferenceTotals", "Report", "StepCost", "StepFigures", "format_size"]


@dataclass
class StepFigures:
    """Time and traffic of one Plan step, measured (:class:`StepCost`) or
    predicted (:class:`pie.cost.StepEstimate`).

    Bytes are split by direction (``c2s``: client to server, ``s2c``: server
    to client). Seconds are the client's wall time for the phase of this step.
    Round trips count the client's waits for an answer after it sent
    something (:attr:`pie.Channel.round_trips`), each of which costs up to one
    round-trip time on a link.
    """

    index: int
    kind: str
    output: str
    relus: int = 0
    and_gates: int = 0
    offline_bytes_c2s: int = 0
    offline_bytes_s2c: int = 0
    online_bytes_c2s: int = 0
    online_bytes_s2c: int = 0
    offline_seconds: float = 0.0
    online_seconds: float = 0.0
    offline_round_trips: int = 0
    online_round_trips: int = 0

    @property
    def offline_bytes(self) -> int:
        return self.offline_bytes_c2s + self.offline_bytes_s2c

    @property
    def online_bytes(self) -> int:
        return self.online_bytes_c2s + self.online_bytes_s2c

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["offline_bytes"] = self.offline_bytes
        d["online_bytes"] = self.online_bytes
        return d


@dataclass
class StepCost(StepFigures):
    """Costs of one Plan step, measured on the client's channel (see
    :class:`StepFigures`); rounds count the flushes of each side, i.e. one-way
    messages."""

    offline_rounds: int = 0
    online_rounds: int = 0


class InferenceTotals:
    """Totals of one inference over its per-step figures, measured
    (:class:`Report`) or predicted (:class:`pie.Estimate`): the offline
    totals include the session set-up, the online totals the masked input."""

    _TOTALS: ClassVar[tuple[str, ...]]  # the keys of totals(), in order
    setup_bytes: int
    setup_seconds: float
    setup_round_trips: int
    input_bytes: int
    input_seconds: float

    def _step_figures(self) -> Sequence[StepFigures]:
        raise NotImplementedError

    def _sum(self, attr: str) -> Any:
        return sum(getattr(s, attr) for s in self._step_figures())

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
        """Round trips of the offline phase, session set-up included."""
        return int(self._sum("offline_round_trips")) + self.setup_round_trips

    def totals(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._TOTALS}

    def to_dict(self) -> dict[str, Any]:
        return {"totals": self.totals(), "steps": [s.to_dict() for s in self._step_figures()]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


@dataclass
class Report(InferenceTotals):
    """What one inference cost, per step and in total.

    One report covers one online phase (``batch`` images) and the offline
    work of the prepared sets it used. ``steps`` holds one dict per Plan step (see :class:`StepCost`; keys
    ``kind``, ``relus``, ``offline_bytes``, ``online_bytes``,
    ``offline_seconds``, ``online_seconds`` and the per-direction and round
    counts). ``setup`` covers the handshake and per-session key material;
    ``input`` the masked input that opens the online phase (counted in the
    online totals, not in any step). ``link`` describes the emulated link the
    parties ran over (:meth:`pie.Link.describe`; empty for none).
    """

    costs: list[StepCost] = field(default_factory=list)
    setup_bytes: int = 0
    setup_seconds: float = 0.0
    setup_round_trips: int = 0
    input_bytes: int = 0  # the masked input, the first online message
    input_seconds: float = 0.0
    transport: str = "memory"
    link: str = ""
    batch: int = 1  # images answered in this online phase, one prepared set each

    _TOTALS = ("relus", "offline_bytes", "online_bytes", "offline_seconds", "online_seconds", "online_rounds",
               "offline_round_trips", "online_round_trips", "setup_bytes", "setup_seconds", "input_bytes",
               "transport", "link", "batch")

    def add_offline(self, costs: list[StepCost], setup_bytes: int = 0, setup_seconds: float = 0.0,
                    setup_round_trips: int = 0) -> None:
        """Charge a prepared set's offline costs (per step, and its key set-up)
        to this report."""
        for mine, theirs in zip(self.costs, costs):
            for name in ("offline_bytes_c2s", "offline_bytes_s2c", "offline_seconds", "offline_rounds",
                         "offline_round_trips"):
                setattr(mine, name, getattr(mine, name) + getattr(theirs, name))
        self.setup_bytes += setup_bytes
        self.setup_seconds += setup_seconds
        self.setup_round_trips += setup_round_trips

    def _step_figures(self) -> list[StepCost]:
        return self.costs

    @property
    def steps(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.costs]

    @property
    def online_rounds(self) -> int:
        return int(self._sum("online_rounds")) + (1 if self.input_bytes else 0)

    @property
    def online_round_trips(self) -> int:
        """Round trips from the masked input to the output share: the garbled
        rounds plus the output's (the input rides with the first)."""
        return int(self._sum("online_round_trips"))

    def table(self) -> str:
        """A short human-readable table: one line per step, then the totals."""
        rows = [(c.index, c.kind, c.output[:22], f"{c.relus:,}", format_size(c.offline_bytes),
                 f"{c.offline_seconds:.2f}", format_size(c.online_bytes), f"{1e3 * c.online_seconds:.2f}",
                 c.online_rounds) for c in self.costs]
        totals = [("", "input", "(masked input)", "", "", "", format_size(self.input_bytes),
                   f"{1e3 * self.input_seconds:.2f}", 1),
                  ("", "total", "", f"{self.relus:,}", format_size(self.offline_bytes), f"{self.offline_seconds:.2f}",
                   format_size(self.online_bytes), f"{1e3 * self.online_seconds:.2f}", self.online_rounds)]
        lines = [f"link: {self.link}"] if self.link else []
        lines.append(format_table(_REPORT_COLUMNS, rows, totals))
        lines.append(f"round trips: {self.offline_round_trips} offline (set-up included), "
                     f"{self.online_round_trips} online")
        return "\n".join(lines)


_REPORT_COLUMNS: list[Column] = [("#", ">", 3), ("kind", "<", 8), ("output", "<", 22), ("ReLUs", ">", 8),
                                 ("offline", ">", 10), ("off s", ">", 7), ("online", ">", 10),
                                 ("on ms", ">", 8), ("rounds", ">", 6)]


def format_size(n: int) -> str:
    """A byte count for people: 1.23 MB (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
