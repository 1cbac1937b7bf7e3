"""Channels between the two parties: an in-memory pair and TCP.

Every blocking call releases the GIL, so both parties can run as threads of
one process. Failures raise the :class:`ChannelError` family:

- :class:`PeerClosedError`: the peer went away (possibly mid-message);
- :class:`ChannelTimeoutError` (also a :class:`TimeoutError`): no progress
  within the channel's ``timeout``;
- :class:`OversizeMessageError`: a framed message announced more bytes than allowed;
- :class:`ProtocolError`: a framed message had an unexpected type.
"""

from __future__ import annotations

from ._native import core

Channel = core.Channel
TcpListener = core.TcpListener
ChannelError = core.ChannelError
PeerClosedError = core.PeerClosedError
ChannelTimeoutError = core.ChannelTimeoutError
OversizeMessageError = core.OversizeMessageError
ProtocolError = core.ProtocolError


def memory_pair(capacity_bytes: int = 64 << 20) -> tuple[Channel, Channel]:
    """Return two connected in-process channel ends.

    Each direction holds at most ``capacity_bytes`` in flight; a sender that
    runs further ahead blocks like a TCP sender with a full window.
    """
    return core.memory_pair(capacity_bytes)


def tcp_connect(host: str, port: int, timeout: float = 10.0) -> Channel:
    """Connect to ``host:port``; raise :class:`ChannelError` (or
    :class:`ChannelTimeoutError` after ``timeout`` seconds) on failure.

    The returned channel's I/O timeout is the default (120 s); set
    ``channel.timeout`` to change it.
    """
    return core.tcp_connect(host, port, timeout)


__all__ = [
    "Channel",
    "ChannelError",
    "ChannelTimeoutError",
    "OversizeMessageError",
    "PeerClosedError",
    "ProtocolError",
    "TcpListener",
    "memory_pair",
    "tcp_connect",
]
