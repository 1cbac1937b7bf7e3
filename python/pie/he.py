"""Homomorphic encryption over Microsoft SEAL (BFV)."""

from __future__ import annotations

from ._native import core

seal_version = core.seal_version
bfv_roundtrip = core.bfv_roundtrip

__all__ = ["bfv_roundtrip", "seal_version"]
