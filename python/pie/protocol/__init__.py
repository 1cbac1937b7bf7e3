"""The two-party engine: a server holding a Plan with weights, a client holding
an input, executing the Plan with HE (offline) and garbled circuits."""

from __future__ import annotations

from .engine import Client, ClientSession, Server, ServerSession, SessionStateError, infer
from .report import Report, StepCost
from .wire import (
    PROTOCOL_VERSION,
    HandshakeError,
    MalformedMessageError,
    MalformedPlanError,
    ServerBusyError,
    TranscriptError,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Client",
    "ClientSession",
    "HandshakeError",
    "MalformedMessageError",
    "MalformedPlanError",
    "Report",
    "Server",
    "ServerBusyError",
    "ServerSession",
    "SessionStateError",
    "StepCost",
    "TranscriptError",
    "infer",
]
