"""pie: private inference for ReLU-reduced neural networks.

A client holding an input and a server holding a network run a two-party
protocol (HE for linear layers in an offline phase, garbled circuits for the
remaining ReLUs) after which the client learns the prediction and nothing
else, and the server learns nothing about the input.
"""

from __future__ import annotations

from . import channel, crypto, gc, he, link, models
from ._native import core as _core
from .channel import (
    Channel,
    ChannelError,
    ChannelTimeoutError,
    OversizeMessageError,
    PeerClosedError,
    ProtocolError,
    TcpListener,
    TlsError,
    TlsListener,
    memory_pair,
    tcp_connect,
    tls_connect,
)
from .calibration import CalibrationError, load_calibration
from .models.checkpoint import (
    CheckpointError,
    calibration_sample,
    checkpoint_meta,
    load_checkpoint,
    save_checkpoint,
)
from .compiler import CompileError, Tolerance, UnsupportedOpError, compile
from .cost import Estimate, Profile, estimate
from .link import Link
from .plan import Plan, PlanFormatError
from .protocol import (
    Client,
    HandshakeError,
    MalformedMessageError,
    Report,
    Server,
    ServerBusyError,
    SessionStateError,
    TranscriptError,
    infer,
)
from .compiler import relu_count, relu_report
from .selftest import run_selftest

__version__: str = _core.__version__

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelTimeoutError",
    "CalibrationError",
    "CheckpointError",
    "Client",
    "CompileError",
    "Estimate",
    "HandshakeError",
    "Link",
    "MalformedMessageError",
    "Plan",
    "PlanFormatError",
    "Profile",
    "UnsupportedOpError",
    "OversizeMessageError",
    "PeerClosedError",
    "ProtocolError",
    "Report",
    "Server",
    "ServerBusyError",
    "SessionStateError",
    "TcpListener",
    "TlsError",
    "TlsListener",
    "TranscriptError",
    "__version__",
    "calibration_sample",
    "channel",
    "checkpoint_meta",
    "compile",
    "Tolerance",
    "crypto",
    "estimate",
    "gc",
    "he",
    "infer",
    "link",
    "load_calibration",
    "load_checkpoint",
    "memory_pair",
    "models",
    "relu_count",
    "relu_report",
    "run_selftest",
    "save_checkpoint",
    "tcp_connect",
    "tls_connect",
]
