"""``python -m pie.serve``: the server, client and demo commands of :mod:`pie.serve`."""

import sys

from .cli import main

sys.exit(main())
