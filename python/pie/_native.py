"""Loads the compiled extension ``pie._core`` with an actionable error message."""

from __future__ import annotations

try:
    from . import _core as core
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "pie's native extension (pie._core) could not be loaded: "
        f"{exc}. pie must be installed from source with its C++ core built, "
        "e.g. `pip install .` in the repository (this needs a C++17 compiler, CMake, "
        "and OpenSSL's libcrypto headers). Run `python -m pie selftest` afterwards."
    ) from exc

__all__ = ["core"]
