"""Serving: load a checkpoint for the server, serve it, query it as a client, and the demo.

``python -m pie.serve`` runs :func:`main`.
"""

from . import cli, client, inputs, model, server
from .cli import *
from .client import *
from .inputs import *
from .model import *
from .server import *

__all__ = [*model.__all__, *server.__all__, *client.__all__, *inputs.__all__, *cli.__all__]
