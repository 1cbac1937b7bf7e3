"""The two-party engine: a server holding a Plan with weights, a client holding
an input, executing the Plan with HE (offline) and garbled circuits.

:mod:`.server` and :mod:`.client` are the two parties (sharing :mod:`.party`),
:mod:`.engine` runs both in one process, :mod:`.wire` frames their session
messages, :mod:`.schedule` says when they exchange what, :mod:`.limits` bounds
a server's resources and :mod:`.report` holds what a query cost.
"""

from . import client, engine, server
from .client import *
from .engine import *
from .party import SessionStateError
from .report import Report, StepCost
from .server import *
from .wire import (
    PROTOCOL_VERSION,
    HandshakeError,
    MalformedMessageError,
    MalformedPlanError,
    ServerBusyError,
    TranscriptError,
)

# The parties' and infer's names, then those picked from modules that define more.
__all__ = [*client.__all__, *engine.__all__, *server.__all__, "PROTOCOL_VERSION", "HandshakeError",
           "MalformedMessageError", "MalformedPlanError", "Report", "ServerBusyError", "SessionStateError",
           "StepCost", "TranscriptError"]
