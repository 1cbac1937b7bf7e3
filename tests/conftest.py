"""Shared test settings."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# The machines running the suite are small and noisy: no hypothesis deadlines.
settings.register_profile(
    "pie", deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("pie")
