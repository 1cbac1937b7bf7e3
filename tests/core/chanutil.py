"""Channel test helpers: connected pairs over every transport (the ``pair`` fixture
of conftest.py), and a peer thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pie

Pair = tuple[pie.Channel, pie.Channel]


def tcp_pair() -> Pair:
    with pie.TcpListener("127.0.0.1", 0) as listener:
        client = pie.tcp_connect("127.0.0.1", listener.port, timeout=5.0)
        server = listener.accept(timeout=5.0)
    return client, server


MAKERS: dict[str, Callable[[], Pair]] = {"memory": pie.memory_pair, "tcp": tcp_pair}


class Runner:
    """Runs a function in a thread and re-raises its exception on join."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None

        def body() -> None:
            try:
                self.result = fn()
            except BaseException as exc:  # handed back to the test thread
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 120.0) -> object:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "peer thread hung"
        if self.error is not None:
            raise self.error
        return self.result
