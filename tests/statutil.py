"""Two-sample Kolmogorov-Smirnov test for the privacy and leakage tests
(importable from every test directory: tests/ is on the path through its conftest)."""

from __future__ import annotations

import math

import numpy as np


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def ks_critical(n: int, m: int, alpha: float = 1e-6) -> float:
    """Critical value of the statistic for samples of n and m at level alpha."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def same_distribution(a: np.ndarray, b: np.ndarray, alpha: float = 1e-6) -> bool:
    """Two-sample Kolmogorov-Smirnov test at level alpha."""
    return ks_statistic(a, b) < ks_critical(a.size, b.size, alpha)
