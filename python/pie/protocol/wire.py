"""Session-level messages, their framing, and the state of one connection.

Every session-level message is a frame: a 4-byte type and an 8-byte payload
length (little endian, the format of :meth:`pie.Channel.send_frame`), read
with a per-type size limit. A :class:`Conversation` holds one connection end's
phase and accepts, in each phase, only the messages that phase expects:

====================  ==========================================================
phase                 messages (c: client -> server, s: server -> client)
====================  ==========================================================
``plan``              c ``GET_PLAN``, s ``PUBLIC_PLAN`` (optional)
``handshake``         c ``HELLO`` (version, Plan digest), s ``WELCOME`` (ok, or
                      a refusal: mismatch, or busy)
``offline``           set-up of the GC sub-protocols, then s ``OFFER``; after a
                      granted ``PREPARE``, per prepared set: the HE and GC
                      sub-protocols in exchanges (they frame and bound their
                      own messages), a label-only output's garbled argmax,
                      c ``OFFLINE_DONE``, s ``OFFLINE_VERDICT``; after the last
                      set s ``OFFER``
``idle``              between queries, one request of the client: c ``PREPARE``
                      (k sets), s ``PREPARED`` (granted: offline; or refused as
                      busy, then s ``OFFER``); or c ``MASKED_INPUT`` (online);
                      or c ``BYE`` (done)
``online``            c ``MASKED_INPUT`` (B images, one prepared set each,
                      read with the size limit of the sets ready), GC rounds,
                      s ``OUTPUT_SHARE`` (the share, then the next offer; under
                      a label-only Plan the garbled argmax's labels first and
                      an empty share)
``finish``            c ``FINISH``, then back to ``idle``
====================  ==========================================================

``OFFER`` tells the client how many more sets the server would prepare now
(its pool target less the sets held, within its memory limits); a client
that refills in the background accepts it one set at a time while it has no
query. The server states an offer exactly once before each request it reads
(after a query inside the sealed ``OUTPUT_SHARE``, as a 4-byte count after
the share), so the client always knows it when it is idle.

Anything else raises a :class:`ProtocolError` naming the phase, what was
expected and what arrived. Oversized length headers raise
:class:`~pie.channel.OversizeMessageError` before any payload is read.

End-to-end integrity: ``OFFLINE_DONE``, ``OFFLINE_VERDICT``, ``OUTPUT_SHARE``
and ``FINISH`` (once per query) are *sealed*: after the payload, the sender appends the
transcript checks (16-byte Poly1305 tags under a fixed public key) of everything it
has sent (this frame's header and payload included) and received on the
connection (:meth:`pie.Channel.transcript`); the receiver compares them with
its own received/sent checks. So a changed, lost or
inserted byte anywhere in the session is detected by the server at the end of
the offline phase, by the client before it decodes each output, and by the
server on the client's ``FINISH`` after each query (which the client sends
after it has its result, adding no latency). The key is public: the checks detect faults
of the transport, not an active attacker on the wire, who can recompute them;
TLS (:func:`pie.channel.tls_connect`) authenticates the stream.
"""

from __future__ import annotations

import enum
import hmac
import json
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..channel import (
    Channel,
    ChannelError,
    ChannelTimeoutError,
    OversizeMessageError,
    ProtocolError,
)
from ..plan import Plan, PlanFormatError

__all__ = [
    "BYE",
    "FINISH",
    "GET_PLAN",
    "HELLO",
    "MASKED_INPUT",
    "MAX_CONTROL_BYTES",
    "MAX_PLAN_BYTES",
    "MAX_PREPARE",
    "OFFER",
    "OFFLINE_DONE",
    "OFFLINE_VERDICT",
    "OUTPUT_SHARE",
    "PREPARE",
    "PREPARED",
    "PROTOCOL_VERSION",
    "PUBLIC_PLAN",
    "WELCOME",
    "Conversation",
    "HandshakeError",
    "MalformedMessageError",
    "MalformedPlanError",
    "Phase",
    "ProtocolError",
    "ServerBusyError",
    "TranscriptError",
    "message_name",
]

# 2: sealed OFFLINE_DONE/OFFLINE_VERDICT, OUTPUT_SHARE and FINISH (transcript digests).
# 3: the transcript checks are 16-byte GMAC tags, not SHA-256 digests.
# 4: many queries per connection: OFFER, PREPARE/PREPARED, BYE; batched MASKED_INPUT;
#    the offline phase runs in exchanges (pie.protocol.schedule.offline_exchanges);
#    garbled batch headers carry the session's random tweak prefix; label-only output.
# 5: the transcript checks are 16-byte Poly1305 tags, not GMAC tags.
PROTOCOL_VERSION = 5

# Frame types of the session layer ("PI" + a counter).
HELLO = 0x50490001  # client -> server: {"protocol", "plan"}
WELCOME = 0x50490002  # server -> client: {"ok": true} or {"ok": false, "error", "busy"}
MASKED_INPUT = 0x50490003  # client -> server: (x - r) mod 2^l, uint64 little endian
OUTPUT_SHARE = 0x50490004  # server -> client, sealed: the server's share of the logits, the offer (<u32)
GET_PLAN = 0x50490005  # client -> server: {} (asks for the public Plan)
PUBLIC_PLAN = 0x50490006  # server -> client: Plan.to_bytes() of the public Plan
OFFLINE_DONE = 0x50490007  # client -> server, sealed, empty: the client's offline transcript
OFFLINE_VERDICT = 0x50490008  # server -> client, sealed: empty if the transcripts agree, else why not
FINISH = 0x50490009  # client -> server, sealed, empty: the client's transcript after a query
OFFER = 0x5049000A  # server -> client: {"count": sets the server would prepare now}
PREPARE = 0x5049000B  # client -> server: {"count": k} (prepare k sets now)
PREPARED = 0x5049000C  # server -> client: {"ok": true} or {"ok": false, "busy": true, "error"}
BYE = 0x5049000D  # client -> server, empty: no more requests

_NAMES = {
    HELLO: "HELLO", WELCOME: "WELCOME", MASKED_INPUT: "MASKED_INPUT", OUTPUT_SHARE: "OUTPUT_SHARE",
    GET_PLAN: "GET_PLAN", PUBLIC_PLAN: "PUBLIC_PLAN", OFFLINE_DONE: "OFFLINE_DONE",
    OFFLINE_VERDICT: "OFFLINE_VERDICT", FINISH: "FINISH", OFFER: "OFFER", PREPARE: "PREPARE",
    PREPARED: "PREPARED", BYE: "BYE",
}

MAX_PLAN_BYTES = 64 << 20
# HELLO, WELCOME, GET_PLAN, OFFER, PREPARE(D) and OFFLINE_VERDICT's reason:
# small JSON objects or text.
MAX_CONTROL_BYTES = 4096
#: The most sets one PREPARE may ask for (memory limits usually bind first).
MAX_PREPARE = 1024

_HEADER = struct.Struct("<IQ")
_OFFER = struct.Struct("<I")  # the offer at the end of OUTPUT_SHARE
_CHECK = 16  # one transcript check (Channel.transcript: Poly1305 tag)
_DIGESTS = 2 * _CHECK  # the check of the bytes sent, then of the bytes received


def message_name(frame_type: int) -> str:
    """A frame type's name, or its hex value if it is not a session-level message."""
    return _NAMES.get(frame_type, f"0x{frame_type:08x}")


class HandshakeError(ProtocolError):
    """The peers disagree on the protocol version or the Plan, or the server
    refused the session."""


class ServerBusyError(HandshakeError):
    """The server is at its session or memory limit and refused the session;
    trying again later may succeed."""


class TranscriptError(ProtocolError):
    """The two ends saw different byte streams: a byte was changed, lost or
    inserted on the way."""


class MalformedMessageError(ProtocolError):
    """A message of the expected type and size whose content is invalid."""


class MalformedPlanError(MalformedMessageError, PlanFormatError):
    """The server's ``PUBLIC_PLAN`` is not a readable Plan (both a
    :class:`ProtocolError` and a :class:`~pie.plan.PlanFormatError`)."""


class Phase(enum.Enum):
    """Where a connection is in the session (see the module's table)."""

    PLAN = "plan"
    HANDSHAKE = "handshake"
    OFFLINE = "offline"
    IDLE = "idle"
    ONLINE = "online"
    FINISH = "finish"
    DONE = "done"


class _Framing:
    """One connection end's frames: reads bounded per message type and by the
    ``deadline``, the sealed frames' transcript checks, and the phase and
    ``failed`` state every step checks (a step that raises sets ``failed``)."""

    def __init__(self, channel: Channel, role: str) -> None:
        self.channel = channel
        self.role = role
        self.phase = Phase.PLAN
        self.failed = False
        # time.monotonic() by which every read of this conversation must be
        # done (None: only the channel's per-read timeout applies).
        self.deadline: float | None = None

    def _step(self, role: str, *phases: Phase) -> _Step:
        if self.role != role:
            raise RuntimeError(f"a {role} method called on the {self.role}'s conversation")
        if self.failed:
            raise ProtocolError("the session failed earlier on this connection")
        if self.phase not in phases:
            raise RuntimeError(f"called in phase {self.phase.value}, needs "
                               + " or ".join(p.value for p in phases))
        return _Step(self)

    def _recv(self, allowed: Mapping[int, int]) -> tuple[int, bytes]:
        """One frame whose type is in ``allowed`` (type -> payload limit)."""
        kind, length = self._recv_header(allowed)
        return kind, self._read(length)

    def _recv_header(self, allowed: Mapping[int, int]) -> tuple[int, int]:
        kind, length = _HEADER.unpack(self._read(_HEADER.size))
        if kind not in allowed:
            expected = " or ".join(message_name(k) for k in allowed)
            raise ProtocolError(f"{self.role}, phase {self.phase.value}: expected {expected}, "
                                f"got message type {message_name(kind)}")
        if length > allowed[kind]:
            raise OversizeMessageError(f"{self.role}, phase {self.phase.value}: {message_name(kind)} "
                                       f"announces {length} bytes, limit is {allowed[kind]}")
        return kind, length

    def _read(self, n: int) -> bytes:
        """``n`` bytes; with a ``deadline``, one byte per read with the channel's
        timeout cut to the time left, so a peer that trickles bytes cannot
        stretch the wait past it (used for the small pre-admission messages)."""
        if self.deadline is None or n == 0:
            return self.channel.recv(n) if n else b""
        ch = self.channel
        saved = ch.timeout
        out = bytearray()
        try:
            while len(out) < n:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise ChannelTimeoutError(f"{self.role}, phase {self.phase.value}: the "
                                              f"connection's deadline passed")
                ch.timeout = max(min(saved, left), 0.001)
                out += ch.recv(1)
        finally:
            ch.timeout = saved
        return bytes(out)

    def _send_sealed(self, kind: int, body: bytes) -> None:
        ch = self.channel
        ch.send(_HEADER.pack(kind, len(body) + _DIGESTS))
        ch.send(body)
        sent, received = ch.transcript()  # covers this frame's header and body
        ch.send(sent + received)
        ch.flush()

    def _recv_sealed(self, kind: int, max_body: int) -> tuple[bytes, str]:
        """A sealed frame's body and, if the peer's digests differ from ours,
        what differs (empty if they agree)."""
        ch = self.channel
        _, length = self._recv_header({kind: max_body + _DIGESTS})
        if length < _DIGESTS:
            raise MalformedMessageError(f"{message_name(kind)} has {length} bytes, "
                                        f"too few for its {_DIGESTS} bytes of digests")
        body = ch.recv(length - _DIGESTS) if length > _DIGESTS else b""
        sent, received = ch.transcript()
        peer = ch.recv(_DIGESTS)
        problems = []
        if not hmac.compare_digest(peer[:_CHECK], received):
            problems.append(f"the bytes the {self.role} received differ from those its peer sent")
        if not hmac.compare_digest(peer[_CHECK:], sent):
            problems.append(f"the bytes the {self.role} sent differ from those its peer received")
        return body, "; ".join(problems)


class _ClientSteps(_Framing):
    """The client's messages, in protocol order."""

    #: The server's latest offer: sets it would prepare now.
    offer: int

    def request_plan(self) -> Plan:
        """Client, phase ``plan``: ask for the server's public Plan.

        Raises :class:`MalformedPlanError` if the reply is not a Plan."""
        with self._step("client", Phase.PLAN):
            _send_json(self.channel, GET_PLAN, {})
            _, payload = self._recv({PUBLIC_PLAN: MAX_PLAN_BYTES})
            try:
                plan = Plan.from_bytes(payload)
            except PlanFormatError as exc:
                raise MalformedPlanError(f"PUBLIC_PLAN: {exc}") from exc
            self.phase = Phase.HANDSHAKE
            return plan

    def client_handshake(self, digest: str) -> None:
        """Client: announce the protocol version and the Plan's digest; raise
        :class:`HandshakeError` or :class:`ServerBusyError` if refused."""
        with self._step("client", Phase.PLAN, Phase.HANDSHAKE):
            _send_json(self.channel, HELLO, {"protocol": PROTOCOL_VERSION, "plan": digest})
            _, payload = self._recv({WELCOME: MAX_CONTROL_BYTES})
            reply = _parse_json(payload, "WELCOME")
            if reply.get("ok") is not True:
                _raise_refusal(reply)
            self.phase = Phase.OFFLINE

    def client_offer(self) -> int:
        """Client, end of the set-up or of a ``PREPARE``'s last set: read the
        server's ``OFFER`` (also kept in ``offer``) and go idle."""
        with self._step("client", Phase.OFFLINE):
            self.offer = self._recv_offer()
            self.phase = Phase.IDLE
            return self.offer

    def client_prepare(self, count: int) -> None:
        """Client, idle: ask for ``count`` prepared sets. Granted, the phase is
        ``offline`` (run the sets, then :meth:`client_offer`); refused, raise
        :class:`ServerBusyError` and stay idle (the session goes on)."""
        if not isinstance(count, int) or not 1 <= count <= MAX_PREPARE:
            raise ValueError(f"count must be an integer in [1, {MAX_PREPARE}], got {count!r}")
        with self._step("client", Phase.IDLE):
            _send_json(self.channel, PREPARE, {"count": count})
            _, payload = self._recv({PREPARED: MAX_CONTROL_BYTES})
            reply = _parse_json(payload, "PREPARED")
            if reply.get("ok") is not True:
                self.offer = self._recv_offer()
                reason = str(reply.get("error", "no reason given"))
                if reply.get("busy") is True:
                    raise _Refused(ServerBusyError(f"server busy: {reason}"))
                raise MalformedMessageError(f"malformed PREPARED: {reason}")
            self.phase = Phase.OFFLINE

    def client_offline_check(self) -> None:
        """Client, end of one prepared set: send the transcript, get the
        server's verdict; :class:`TranscriptError` if the streams differ."""
        with self._step("client", Phase.OFFLINE):
            self._send_sealed(OFFLINE_DONE, b"")
            verdict, mismatch = self._recv_sealed(OFFLINE_VERDICT, MAX_CONTROL_BYTES)
            if mismatch:
                raise TranscriptError(f"offline phase: {mismatch}")
            if verdict:
                reason = verdict.decode("utf-8", "replace")
                raise TranscriptError(f"offline phase: the server reports: {reason}")

    def client_query(self, masked: bytes) -> None:
        """Client, idle: send the masked input of a query (B images)."""
        with self._step("client", Phase.IDLE):
            self.channel.send_frame(MASKED_INPUT, masked)
            self.phase = Phase.ONLINE

    def client_output(self, nbytes: int) -> bytes:
        """Client, online: receive the server's output share (exactly ``nbytes``)
        and its next offer, check the transcript before either is used, then
        send ``FINISH`` and go idle."""
        with self._step("client", Phase.ONLINE):
            body, mismatch = self._recv_sealed(OUTPUT_SHARE, nbytes + _OFFER.size)
            if len(body) != nbytes + _OFFER.size:
                raise MalformedMessageError(f"OUTPUT_SHARE has {len(body)} bytes, expected "
                                            f"{nbytes + _OFFER.size}")
            if mismatch:
                raise TranscriptError(f"online phase: {mismatch}")
            share, (self.offer,) = body[:nbytes], _OFFER.unpack(body[nbytes:])
            self.phase = Phase.FINISH
            try:
                self._send_sealed(FINISH, b"")
            except ChannelError:
                # The share is verified and counts; the connection takes no more queries.
                self.phase = Phase.DONE
                return share
            self.phase = Phase.IDLE
            return share

    def client_bye(self) -> None:
        """Client, idle: tell the server there are no more requests."""
        with self._step("client", Phase.IDLE):
            self.channel.send_frame(BYE, b"")
            self.channel.flush()
            self.phase = Phase.DONE

    def _recv_offer(self) -> int:
        _, payload = self._recv({OFFER: MAX_CONTROL_BYTES})
        count = _parse_json(payload, "OFFER").get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise MalformedMessageError(f"malformed OFFER: count {count!r}")
        return count


class _ServerSteps(_Framing):
    """The server's messages, in protocol order."""

    _public_plan: bytes | None

    def server_handshake(self, digest: str, admit: Callable[[], None] | None = None) -> None:
        """Server: answer a plan request if one comes, then check the client's
        version and Plan digest and call ``admit`` (which raises
        :class:`ServerBusyError` to refuse the session). Every refusal is sent
        to the client in ``WELCOME`` and raised here too."""
        with self._step("server", Phase.PLAN):
            allowed = {HELLO: MAX_CONTROL_BYTES}
            if self._public_plan is not None:
                allowed[GET_PLAN] = MAX_CONTROL_BYTES
            kind, payload = self._recv(allowed)
            if kind == GET_PLAN:
                _parse_json(payload, "GET_PLAN")
                self.channel.send_frame(PUBLIC_PLAN, self._public_plan)
                self.phase = Phase.HANDSHAKE
                _, payload = self._recv({HELLO: MAX_CONTROL_BYTES})
            self.phase = Phase.HANDSHAKE
            hello = _parse_json(payload, "HELLO")
            error = None
            if hello.get("protocol") != PROTOCOL_VERSION:
                error = f"protocol version {hello.get('protocol')!r} is not {PROTOCOL_VERSION}"
            elif hello.get("plan") != digest:
                error = (f"plan digest {str(hello.get('plan'))[:16]}... does not match the served "
                         f"plan {digest[:16]}...")
            if error is not None:
                _send_json(self.channel, WELCOME, {"ok": False, "busy": False, "error": error})
                raise HandshakeError(error)
            if admit is not None:
                try:
                    admit()
                except ServerBusyError as exc:
                    _send_json(self.channel, WELCOME, {"ok": False, "busy": True, "error": str(exc)})
                    raise
            _send_json(self.channel, WELCOME, {"ok": True})
            self.phase = Phase.OFFLINE

    def server_offer(self, count: int) -> None:
        """Server, after the set-up, a request or a query's output: tell the
        client how many sets it would prepare now, and go idle."""
        with self._step("server", Phase.OFFLINE, Phase.IDLE):
            _send_json(self.channel, OFFER, {"count": max(0, int(count))})
            self.channel.flush()
            self.phase = Phase.IDLE

    def server_request(self, max_input_bytes: int) -> tuple[int, Any]:
        """Server, idle: the client's next request, as ``(PREPARE, count)``,
        ``(MASKED_INPUT, payload)`` (at most ``max_input_bytes``: the sets
        ready) or ``(BYE, None)``. A query moves to phase ``online``, ``BYE``
        ends the conversation; for ``PREPARE`` answer with :meth:`server_prepared`."""
        with self._step("server", Phase.IDLE):
            kind, payload = self._recv({PREPARE: MAX_CONTROL_BYTES, BYE: 0,
                                        MASKED_INPUT: max_input_bytes})
            if kind == BYE:
                self.phase = Phase.DONE
                return kind, None
            if kind == MASKED_INPUT:
                self.phase = Phase.ONLINE
                return kind, payload
            count = _parse_json(payload, "PREPARE").get("count")
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_PREPARE:
                raise MalformedMessageError(f"malformed PREPARE: count must be an integer in "
                                            f"[1, {MAX_PREPARE}], got {count!r}")
            return kind, count

    def server_prepared(self, refusal: str | None = None) -> None:
        """Server, idle, answering ``PREPARE``: grant it (phase ``offline``:
        run the sets, then :meth:`server_offer`) or refuse it as busy with
        the reason ``refusal`` (then send an :meth:`server_offer`)."""
        with self._step("server", Phase.IDLE):
            if refusal is None:
                _send_json(self.channel, PREPARED, {"ok": True})
                self.phase = Phase.OFFLINE
            else:
                _send_json(self.channel, PREPARED, {"ok": False, "busy": True, "error": refusal})

    def server_offline_check(self) -> None:
        """Server, end of one prepared set: compare the client's transcript
        with ours and tell the client; :class:`TranscriptError` if they differ."""
        with self._step("server", Phase.OFFLINE):
            _, mismatch = self._recv_sealed(OFFLINE_DONE, 0)
            self._send_sealed(OFFLINE_VERDICT, mismatch.encode()[:MAX_CONTROL_BYTES])
            if mismatch:
                raise TranscriptError(f"offline phase: {mismatch}")

    def server_output(self, share: bytes, offer: int) -> None:
        """Server, online: send the output share and the next offer (sealed),
        then check the client's transcript in ``FINISH`` and go idle."""
        with self._step("server", Phase.ONLINE):
            self._send_sealed(OUTPUT_SHARE, share + _OFFER.pack(max(0, int(offer))))
            self.phase = Phase.FINISH
            _, mismatch = self._recv_sealed(FINISH, 0)
            if mismatch:
                raise TranscriptError(f"finish: {mismatch}")
            self.phase = Phase.IDLE


class Conversation(_ClientSteps, _ServerSteps):
    """The session-level state of one end of a connection.

    Both ends call its methods in protocol order; a method called in the wrong
    phase raises :class:`RuntimeError` (a bug in the caller), a message that
    the phase does not expect raises :class:`ProtocolError`. After any error
    ``failed`` is set (``phase`` stays where it happened) and the
    conversation refuses further use. Its methods are the client's
    (``request_plan``, ``client_*``) and the server's (``server_*``) messages,
    over the framing the two share.

    ``deadline`` (a ``time.monotonic()`` value, default ``None``) bounds the
    total time of every later read of the conversation, however slowly the
    peer trickles its bytes; the server sets it until a session is admitted.

    Args:
        channel: the connection.
        role: ``"server"`` or ``"client"``.
        public_plan: server only: the public Plan's bytes, sent to a client
            that asks for them (``GET_PLAN``) before its ``HELLO``; without it
            such a request is refused as unexpected.
    """

    def __init__(self, channel: Channel, role: str, *, public_plan: bytes | None = None) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        if public_plan is not None and role != "server":
            raise ValueError("only the server sends a public plan")
        super().__init__(channel, role)
        self.offer = 0
        self._public_plan = public_plan


class _Step:
    """Marks the conversation failed when the step raises."""

    def __init__(self, conversation: _Framing) -> None:
        self.conversation = conversation

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> None:
        if isinstance(exc, _Refused):  # a refusal leaves the conversation usable
            raise exc.error from None
        if exc_type is not None:
            self.conversation.failed = True


class _Refused(Exception):
    """Carries an error that does not fail the conversation (a busy PREPARED)."""

    def __init__(self, error: ProtocolError) -> None:
        super().__init__(str(error))
        self.error = error


def _send_json(channel: Channel, frame_type: int, obj: dict[str, Any]) -> None:
    channel.send_frame(frame_type, json.dumps(obj, sort_keys=True).encode())


def _parse_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedMessageError(f"malformed {what}: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedMessageError(f"malformed {what}: not a JSON object")
    return obj


def _raise_refusal(reply: dict[str, Any]) -> None:
    reason = str(reply.get("error", "no reason given"))
    if reply.get("busy") is True:
        raise ServerBusyError(f"server busy: {reason}")
    raise HandshakeError(f"server refused the session: {reason}")
