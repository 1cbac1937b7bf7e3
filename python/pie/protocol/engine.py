"""Private inference in one process (:func:`infer`): the server's and the
client's party of :mod:`pie.protocol` on threads over an in-memory channel.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..channel import memory_pair
from ..link import Link, resolve_link
from ..plan import Plan
from .client import Client
from .report import Report
from .server import Server

__all__ = ["infer"]


@dataclass
class _Failure:
    error: BaseException | None = None


def infer(model_or_plan: nn.Module | Plan, x: np.ndarray | torch.Tensor,
          input_shape: tuple[int, int, int] | None = None, *, threads: int = 0,
          link: Link | str | None = None, **compile_kwargs: Any) -> tuple[np.ndarray, Report]:
    """Private inference with both parties in this process (threads over the
    in-memory channel). Returns the client's logits and the cost report.

    ``x`` is one image (C, H, W) with values in [0, 1]; a model is compiled
    first (``input_shape`` defaults to ``x``'s shape). ``link`` (a
    :class:`pie.Link` or a preset name: ``"loopback"``, ``"lan"``, ``"wan"``)
    runs the parties across an emulated network link, so the report shows what
    that deployment would cost; the report's ``link`` names it.

    Raises:
        ValueError: ``x`` is not one image of the Plan's input shape with finite
            values in [0, 1] (checked before either party starts); an unknown
            link name.
    """
    emulated = resolve_link(link)

    if not isinstance(model_or_plan, Plan):
        shape = input_shape or tuple(np.shape(x))[-3:]
        server = Server(model_or_plan, shape, threads=threads, **compile_kwargs)
    else:
        server = Server(model_or_plan, threads=threads)
    if server.plan.encode_input(x).shape[0] != 1:
        raise ValueError("one image per inference: x must have shape (C, H, W) or (1, C, H, W)")
    client = Client(server.public_plan(), threads=threads)
    server_end, client_end = emulated.memory_pair() if emulated is not None else memory_pair()
    failure = _Failure()

    def run_server() -> None:
        try:
            server.serve(server_end)
        except BaseException as exc:  # handed to the caller below
            failure.error = exc
            server_end.close()

    worker = threading.Thread(target=run_server, name="pie-server", daemon=True)
    worker.start()
    try:
        logits, report = client.infer(client_end, x)
    except BaseException:
        client_end.close()
        worker.join()
        if failure.error is not None:
            raise failure.error
        raise
    worker.join()
    if failure.error is not None:
        raise failure.error
    if emulated is not None:
        report.link = emulated.describe()
    return logits, report
