"""Serving: load a checkpoint for the server, query one as a client, and the demo.

``python -m pie.serve`` runs :func:`main`.
"""

from .cli import (
    Limits,
    LoadedModel,
    SessionLog,
    SessionRecord,
    fetch_public_plan,
    fit_input,
    input_files,
    load_input,
    load_model,
    load_server,
    main,
    query,
    read_input,
    serve_forever,
)

__all__ = [
    "Limits",
    "LoadedModel",
    "SessionLog",
    "SessionRecord",
    "fetch_public_plan",
    "fit_input",
    "input_files",
    "load_input",
    "load_model",
    "load_server",
    "main",
    "query",
    "read_input",
    "serve_forever",
]
