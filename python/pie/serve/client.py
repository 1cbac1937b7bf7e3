"""The client side of serving: fetch a server's public Plan and run one private
inference against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..channel import Channel
from ..plan import Plan
from ..protocol import Client, ClientSession, wire
from ..protocol.report import Report
from .inputs import fit_input, read_input

__all__ = ["fetch_public_plan", "query"]


def fetch_public_plan(channel: Channel) -> Plan:
    """Ask the server on ``channel`` for its public Plan (raises
    :class:`~pie.protocol.wire.MalformedPlanError` if the reply is not one)."""
    return wire.Conversation(channel, "client").request_plan()


def query(channel: Channel, x: np.ndarray | str | Path, *, threads: int = 0,
          progress: bool = False, resize: bool = False,
          transport: str = "tcp") -> tuple[np.ndarray, Report, Plan]:
    """One private inference against a server: fetch its public Plan, run the
    protocol on ``x`` (an image (C, H, W) with values in [0, 1], or a file
    that :func:`load_input` reads, with its ``resize``) and return the logits,
    the cost report (its ``transport`` set to ``transport``) and the Plan.
    A file is read and checked (:func:`read_input`) before anything is sent.
    Raises the :class:`ChannelError` family
    (:class:`~pie.protocol.wire.ServerBusyError` when the server is at a
    limit, :class:`~pie.protocol.wire.MalformedPlanError` for an unreadable
    Plan), or :class:`ValueError` for an input that is unreadable or does not
    fit the Plan."""
    raw = read_input(x) if isinstance(x, (str, Path)) else None
    conv = wire.Conversation(channel, "client")
    plan = conv.request_plan()
    image = fit_input(raw, plan.input_shape, resize=resize, source=x) if raw is not None else x
    logits, report = _infer(channel, conv, plan, image, threads, progress)
    report.transport = transport
    return logits, report, plan


def _infer(channel: Channel, conv: wire.Conversation, plan: Plan, image: Any, threads: int,
           progress: bool) -> tuple[np.ndarray, Report]:
    with ClientSession(Client(plan, threads=threads), channel, conversation=conv) as session:
        session.offline(progress)
        return session.online(image)
