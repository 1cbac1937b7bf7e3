"""Benchmark settings: run with ``pytest bench --benchmark-enable``.

Without ``--benchmark-enable`` (the default in pyproject.toml) every benchmark
body runs once as a smoke test, which is how CI keeps the suites from rotting.
Figures go to ``benchmark.extra_info`` so ``--benchmark-json`` carries them.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("pie-bench", deadline=None)
settings.load_profile("pie-bench")
