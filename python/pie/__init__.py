"""pie: private inference for ReLU-reduced neural networks.

A client holding an input and a server holding a network run a two-party
protocol (HE for linear layers in an offline phase, garbled circuits for the
remaining ReLUs) after which the client learns the prediction and nothing
else, and the server learns nothing about the input.
"""

from __future__ import annotations

from . import channel, crypto, he
from ._native import core as _core
from .channel import (
    Channel,
    ChannelError,
    ChannelTimeoutError,
    OversizeMessageError,
    PeerClosedError,
    ProtocolError,
    TcpListener,
    memory_pair,
    tcp_connect,
)
from .selftest import run_selftest

__version__: str = _core.__version__

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelTimeoutError",
    "OversizeMessageError",
    "PeerClosedError",
    "ProtocolError",
    "TcpListener",
    "__version__",
    "channel",
    "crypto",
    "he",
    "memory_pair",
    "run_selftest",
    "tcp_connect",
]
