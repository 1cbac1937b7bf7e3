"""The server loop: accept connections, admit sessions within the :class:`Limits`,
serve each in its own thread, and record how each ended (:class:`SessionLog`)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ..channel import Channel, ChannelError, ChannelTimeoutError, PeerClosedError
from ..protocol import Server, ServerSession, wire
from ..protocol.limits import Admission, Limits, MaterialEstimate, SessionBudget

__all__ = ["Limits", "SessionLog", "SessionRecord", "serve_forever"]

_log = logging.getLogger("pie.serve")


class Listener(Protocol):
    """What :func:`serve_forever` accepts connections from (TCP or TLS)."""

    def accept(self, timeout: float = ...) -> Channel: ...


@dataclass(frozen=True)
class SessionRecord:
    """How one connection ended.

    Attributes:
        number: the connection's number, in order of acceptance (from 1).
        outcome: ``"ok"`` (queries served: the client said goodbye, or went
            away between queries after at least one), ``"refused"`` (busy: a
            limit was reached at the handshake) or ``"failed"`` (anything else:
            the peer went away, timed out, sent something unexpected or
            malformed, or a mismatch).
        phase: the session phase it ended in (see :class:`pie.protocol.wire.Phase`).
        error: the exception's class (``None`` when ``ok``).
        message: the exception's message.
        started: ``time.monotonic()`` at acceptance.
        ended: ``time.monotonic()`` once its resources were released.
    """

    number: int
    outcome: str
    phase: str
    error: type[BaseException] | None
    message: str
    started: float
    ended: float


class SessionLog:
    """The server's record of finished connections (the most recent
    ``keep``) and counts of every outcome; thread-safe."""

    def __init__(self, keep: int = 10_000) -> None:
        self._records: deque[SessionRecord] = deque(maxlen=keep)
        self._counts: dict[str, int] = {"ok": 0, "refused": 0, "failed": 0}
        self._cond = threading.Condition()

    def add(self, record: SessionRecord) -> None:
        """Record one finished connection."""
        with self._cond:
            self._records.append(record)
            self._counts[record.outcome] += 1
            self._cond.notify_all()

    def records(self) -> list[SessionRecord]:
        """The recorded connections, oldest first."""
        with self._cond:
            return list(self._records)

    def counts(self) -> dict[str, int]:
        """Connections by outcome since the start."""
        with self._cond:
            return dict(self._counts)

    def wait_for(self, total: int, timeout: float) -> bool:
        """Wait until at least ``total`` connections have finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(self._counts.values()) >= total, timeout)


def serve_forever(server: Server, listener: Listener, limits: Limits | None = None,
                  stop: threading.Event | None = None, log: SessionLog | None = None) -> None:
    """Accept clients until ``stop`` is set, each connection in its own thread.

    A connection gets ``limits.handshake_timeout`` seconds in all to ask for
    the public Plan and say HELLO; its session is then admitted if a
    session slot and enough offline-material budget are free (else it is
    refused with a busy ``WELCOME``, :class:`ServerBusyError` on the client),
    and from then on it may go ``limits.idle_timeout`` seconds without
    progress before it is dropped. An admitted session may hold more
    prepared sets (up to ``limits.pool`` offered, or what the client asks
    for) while the memory limits allow; a request past them is refused as
    busy and the session goes on. A failing connection (closed, stalled,
    malformed, corrupted) ends its own session only: it is logged and
    recorded in ``log``, its material and socket are released, and the other
    sessions go on. Returns after ``stop`` (or raises KeyboardInterrupt) once
    every connection has ended.
    """
    limits = limits or Limits()
    stop = stop or threading.Event()
    log = log if log is not None else SessionLog()
    public = server.public_plan().to_bytes()
    estimate = MaterialEstimate.from_plan(server.plan)
    if estimate.server_bytes > limits.max_session_bytes:
        _log.warning("a session of this plan needs %.1f MiB of offline material, over the "
                     "per-session limit: every session will be refused", estimate.server_bytes / (1 << 20))
    admission = Admission(limits)
    connections = threading.BoundedSemaphore(limits.max_connections)
    workers: set[threading.Thread] = set()
    workers_lock = threading.Lock()
    numbers = itertools.count(1)

    def run(ch: Channel, number: int) -> None:
        started = time.monotonic()
        conv = wire.Conversation(ch, "server", public_plan=public)
        budget = SessionBudget(admission, estimate)

        def admit() -> None:
            budget.admit()
            conv.deadline = None
            ch.timeout = limits.idle_timeout

        outcome, error, message = "ok", None, ""
        session: ServerSession | None = None
        try:
            ch.timeout = limits.handshake_timeout
            conv.deadline = started + limits.handshake_timeout
            session = ServerSession(server, ch, conversation=conv, admit=admit, pool=limits.pool,
                                    budget=budget)
            session.serve()
        except wire.ServerBusyError as exc:
            outcome, error, message = "refused", type(exc), str(exc)
            _log.info("connection %d refused: %s", number, exc)
        except PeerClosedError as exc:
            if session is not None and session.queries and conv.phase is wire.Phase.IDLE:
                pass  # the client took its results and left between queries
            else:
                outcome, error, message = "failed", type(exc), str(exc)
                _log.warning("connection %d failed in phase %s: %s: %s", number, conv.phase.value,
                             type(exc).__name__, exc)
        except ChannelError as exc:
            outcome, error, message = "failed", type(exc), str(exc)
            _log.warning("connection %d failed in phase %s: %s: %s", number, conv.phase.value,
                         type(exc).__name__, exc)
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, the server goes on
            outcome, error, message = "failed", type(exc), str(exc)
            _log.exception("connection %d: internal error in phase %s", number, conv.phase.value)
        finally:
            if session is not None:
                session.close()  # its prepared sets go with it, never used elsewhere
            ch.close()
            budget.close()
            connections.release()
            log.add(SessionRecord(number, outcome, conv.phase.value, error, message, started,
                                  time.monotonic()))
            with workers_lock:
                workers.discard(threading.current_thread())

    try:
        while not stop.is_set():
            if not connections.acquire(timeout=0.2):
                continue
            try:
                ch = listener.accept(timeout=0.2)
            except ChannelTimeoutError:
                connections.release()
                continue
            except ChannelError as exc:  # e.g. out of file descriptors: back off, keep serving
                connections.release()
                _log.warning("accept failed: %s", exc)
                stop.wait(0.1)
                continue
            worker = threading.Thread(target=run, args=(ch, next(numbers)), name="pie-connection",
                                      daemon=True)
            with workers_lock:
                workers.add(worker)
            try:
                worker.start()
            except RuntimeError as exc:  # no thread to be had: drop this connection, keep serving
                with workers_lock:
                    workers.discard(worker)
                ch.close()
                connections.release()
                _log.warning("cannot serve a connection: %s", exc)
    finally:
        # Also on Ctrl-C: sessions under way end on their own (each read is
        # bounded by the idle deadline) before the process goes on to exit.
        with workers_lock:
            running = list(workers)
        for worker in running:
            worker.join()
