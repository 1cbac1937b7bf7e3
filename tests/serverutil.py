"""``serve_forever`` in a thread for tests (importable from every test directory:
tests/ is on the path through its conftest)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pie
from pie import serve


@contextmanager
def serving_on(server: pie.Server, listener: pie.TcpListener,
               limits: serve.Limits) -> Iterator[tuple[int, serve.SessionLog]]:
    """``serve_forever`` on ``listener`` in a thread; yields (port, log), then
    stops the server, joins it and closes the listener."""
    stop = threading.Event()
    log = serve.SessionLog()
    worker = threading.Thread(target=serve.serve_forever, args=(server, listener, limits, stop, log),
                              name="test-server")
    worker.start()
    try:
        yield listener.port, log
    finally:
        stop.set()
        worker.join(120)
        listener.close()
    assert not worker.is_alive()


def serving(server: pie.Server, limits: serve.Limits) -> Iterator[tuple[int, serve.SessionLog]]:
    """:func:`serving_on` a fresh loopback port."""
    return serving_on(server, pie.TcpListener("127.0.0.1", 0), limits)
