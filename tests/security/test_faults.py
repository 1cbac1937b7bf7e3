"""Fault injection: close, stall or corrupt the stream at every turn of a
session, in both directions, between a real client and a real server over
loopback TCP.

Every case must end with a typed error (the :class:`pie.ChannelError` family)
on the side that receives the faulty turn, within its deadline (plus slack
for a busy machine); a client that does get a result must get the exact one;
and the same server must then serve a fresh client bit for bit.

The default run covers every turn for ``close`` and ``corrupt`` and half the
turns, in both directions, for ``stall`` (each stall waits out a deadline);
``PIE_FAULTS_FULL=1`` runs every turn for all three::

    PIE_FAULTS_FULL=1 python -m pytest tests/security/test_faults.py
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import pie
import pytest
from netfaults import ACTIONS, Fault, FaultProxy, exact_inference, tiny_plan
from pie import serve
from serverutil import serving

DEADLINE = 2.0  # seconds without progress: client channel timeout, server handshake and idle timeouts
SLACK = 20.0  # generous: the test machines are small and shared
FULL = os.environ.get("PIE_FAULTS_FULL", "") not in ("", "0")


@dataclass
class Outcome:
    fault: Fault
    victim: str
    client_error: str
    server_error: str
    seconds: float


@pytest.fixture(scope="module")
def plan() -> pie.Plan:
    return tiny_plan()


@pytest.fixture(scope="module")
def service(plan: pie.Plan):  # type: ignore[no-untyped-def]
    limits = serve.Limits(handshake_timeout=DEADLINE, idle_timeout=DEADLINE)
    with serving(pie.Server(plan, threads=1), limits) as (port, log):
        yield port, log


@pytest.fixture(scope="module")
def turns(plan: pie.Plan, service) -> list[str]:  # type: ignore[no-untyped-def]
    """The directions of the turns of a clean session through the proxy."""
    port, log = service
    before = sum(log.counts().values())
    proxy = FaultProxy(port)
    x = np.random.default_rng(0).random(plan.input_shape)
    with pie.tcp_connect("127.0.0.1", proxy.port) as ch:
        logits, _, _ = serve.query(ch, x, threads=1)
    proxy.join(60)
    assert np.array_equal(logits, plan.run_reference(x))
    assert log.wait_for(before + 1, 60) and log.records()[-1].outcome == "ok"
    directions = [t.direction for t in proxy.turns]
    # The plan request opens the session, FINISH closes it.
    assert directions[0] == "c2s" and directions[-1] == "c2s" and len(directions) > 10
    return directions


def _case(plan: pie.Plan, port: int, log: serve.SessionLog, fault: Fault) -> Outcome:
    before = sum(log.counts().values())
    proxy = FaultProxy(port, fault)
    x = np.random.default_rng(fault.turn).random(plan.input_shape)
    logits, client_error = None, None
    try:
        with pie.tcp_connect("127.0.0.1", proxy.port) as ch:
            ch.timeout = DEADLINE
            logits, _, _ = serve.query(ch, x, threads=1)
    except pie.ChannelError as exc:  # anything else fails the test
        client_error = exc
    client_end = time.monotonic()
    proxy.join(60)
    assert log.wait_for(before + 1, DEADLINE + SLACK + 60), "the server never ended the session"
    record = log.records()[-1]
    assert proxy.fault_time is not None, f"{fault}: the session ended before the faulty turn"
    # The side that receives the faulty turn.
    victim = "server" if proxy.turns[fault.turn].direction == "c2s" else "client"
    if logits is not None:  # a client with a result has the right one
        assert np.array_equal(logits, plan.run_reference(x)), f"{fault}: wrong result"
    if record.outcome == "failed":
        assert record.error is not None and issubclass(record.error, pie.ChannelError), (
            f"{fault}: server failed with {record.error}: {record.message}")
    else:
        assert record.outcome == "ok"
    if victim == "client":
        assert client_error is not None, f"{fault}: the client saw no error"
        took = client_end - proxy.fault_time
    else:
        assert record.outcome == "failed", f"{fault}: the server saw no error"
        took = record.ended - proxy.fault_time
    assert took < DEADLINE + SLACK, f"{fault}: the {victim}'s error came {took:.1f} s after the fault"
    # The same server serves a fresh client, bit for bit.
    exact_inference(port, plan, seed=1000 + fault.turn)
    assert log.wait_for(before + 2, 60)
    return Outcome(fault, victim, type(client_error).__name__ if client_error else "-",
                   record.error.__name__ if record.error else "-", took)


@pytest.mark.parametrize("action", ACTIONS)
def test_fault_matrix(action: str, plan: pie.Plan, service, turns: list[str]) -> None:  # type: ignore[no-untyped-def]
    port, log = service
    # Half the stalls by default, both directions: turns 0, 1, 4, 5, 8, 9, ...
    chosen = [k for k in range(len(turns)) if FULL or action != "stall" or k % 4 < 2]
    outcomes = []
    for k in chosen:
        outcomes.append(_case(plan, port, log, Fault(k, action)))
    assert {o.victim for o in outcomes} == {"client", "server"}
    assert all(o.seconds < DEADLINE + SLACK for o in outcomes)
    if action == "corrupt":
        # Payload bytes that no parser can check are caught by the transcript
        # digests, on both sides (at the end of offline, on the output share, on FINISH).
        assert any(o.server_error == "TranscriptError" for o in outcomes)
        assert any(o.client_error == "TranscriptError" for o in outcomes)
