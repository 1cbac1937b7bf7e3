"""Channels between the two parties: an in-memory pair, TCP and TLS over TCP.

Every blocking call releases the GIL, so both parties can run as threads of
one process. Failures raise the :class:`ChannelError` family:

- :class:`PeerClosedError`: the peer went away (possibly mid-message);
- :class:`ChannelTimeoutError` (also a :class:`TimeoutError`): no progress
  within the channel's ``timeout``;
- :class:`OversizeMessageError`: a framed message announced more bytes than allowed;
- :class:`ProtocolError`: a framed message had an unexpected type;
- :class:`TlsError`: a TLS handshake, certificate check or record failed.

TLS (:func:`tls_connect`, :class:`TlsListener`) is TLS 1.3 only, with the
server authenticated by a CA file and its name and, when the listener is given
``client_ca``, the client by its certificate. The protocol's privacy does not
depend on it; authentication of the peer does. Plain TCP stays available for
loopback and benchmarks.
"""

from __future__ import annotations

from ._native import core

Channel = core.Channel
TcpListener = core.TcpListener
TlsListener = core.TlsListener
ChannelError = core.ChannelError
PeerClosedError = core.PeerClosedError
ChannelTimeoutError = core.ChannelTimeoutError
OversizeMessageError = core.OversizeMessageError
ProtocolError = core.ProtocolError
TlsError = core.TlsError


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


def tls_connect(
    host: str,
    port: int,
    *,
    ca: str,
    cert: str | None = None,
    key: str | None = None,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> Channel:
    """Connect to ``host:port`` and complete a TLS 1.3 handshake within ``timeout`` seconds.

    The server's certificate chain must lead to a CA in the PEM file ``ca``
    and name ``server_name`` (default: ``host``; IP addresses are matched
    against the certificate's IP entries). ``cert`` and ``key`` (PEM, key not
    encrypted) present a client certificate to servers that require one.

    Raises :class:`TlsError` when the handshake or a check fails or a file
    cannot be loaded, :class:`ChannelTimeoutError` after ``timeout`` and
    :class:`ChannelError` when the host cannot be reached. A server that
    refuses the client's certificate tells the client after the client's side
    of the handshake is done, so that refusal raises :class:`TlsError` on the
    first ``recv``. The returned channel's I/O timeout is the default (120 s).
    """
    return core.tls_connect(
        host, port, ca=ca, cert=cert, key=key, server_name=server_name, timeout=timeout
    )


__all__ = [
    "Channel",
    "ChannelError",
    "ChannelTimeoutError",
    "OversizeMessageError",
    "PeerClosedError",
    "ProtocolError",
    "TcpListener",
    "TlsError",
    "TlsListener",
    "memory_pair",
    "tcp_connect",
    "tls_connect",
]
