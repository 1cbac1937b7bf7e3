"""Framing of the session-level messages and the handshake.

Every message is a frame (type, length) read with a size limit; the
handshake carries the protocol version and the public Plan's digest, so two
parties with different Plans stop before any cryptographic material flows.
Bulk data (ciphertexts, garbled tables, labels) travels inside the HE and GC
sub-protocols, which frame and bound their own messages.
"""

from __future__ import annotations

import json
from typing import Any

from ..channel import Channel, ProtocolError

PROTOCOL_VERSION = 1

# Frame types of the session layer ("PI" + a counter).
HELLO = 0x50490001  # client -> server: {"protocol", "plan"}
WELCOME = 0x50490002  # server -> client: {"ok"} or {"ok": false, "error"}
MASKED_INPUT = 0x50490003  # client -> server: (x - r) mod 2^l, uint64 little endian
OUTPUT_SHARE = 0x50490004  # server -> client: the server's share of the logits
GET_PLAN = 0x50490005  # client -> server: {} (asks for the public Plan)
PUBLIC_PLAN = 0x50490006  # server -> client: Plan.to_bytes() of the public Plan

MAX_PLAN_BYTES = 64 << 20

MAX_CONTROL_BYTES = 1 << 16


def send_json(channel: Channel, frame_type: int, obj: dict[str, Any]) -> None:
    channel.send_frame(frame_type, json.dumps(obj, sort_keys=True).encode())


def recv_json(channel: Channel, frame_type: int) -> dict[str, Any]:
    raw = channel.recv_frame(frame_type, MAX_CONTROL_BYTES)
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed control message: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("malformed control message: not a JSON object")
    return obj


class HandshakeError(ProtocolError):
    """The peers disagree on the protocol version or the Plan."""


def client_handshake(channel: Channel, digest: str) -> None:
    """Announce version and Plan digest; raise :class:`HandshakeError` if refused."""
    send_json(channel, HELLO, {"protocol": PROTOCOL_VERSION, "plan": digest})
    reply = recv_json(channel, WELCOME)
    if reply.get("ok") is not True:
        raise HandshakeError(f"server refused the session: {reply.get('error', 'no reason given')}")


def server_handshake(channel: Channel, digest: str) -> None:
    """Check the client's version and Plan digest; refuse (and raise) on mismatch."""
    hello = recv_json(channel, HELLO)
    error = None
    if hello.get("protocol") != PROTOCOL_VERSION:
        error = f"protocol version {hello.get('protocol')!r} is not {PROTOCOL_VERSION}"
    elif hello.get("plan") != digest:
        error = f"plan digest {str(hello.get('plan'))[:16]}... does not match the served plan {digest[:16]}..."
    send_json(channel, WELCOME, {"ok": error is None, **({"error": error} if error else {})})
    if error:
        raise HandshakeError(error)
