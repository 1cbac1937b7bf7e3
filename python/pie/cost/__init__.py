"""The cost model: measure a machine's profile, and predict what a Plan costs on it."""

from .estimate import (
    Estimate,
    Profile,
    ProfileError,
    StepEstimate,
    estimate,
    measure_profile,
    measure_speed_index,
    traffic,
)

__all__ = ["Estimate", "Profile", "ProfileError", "StepEstimate", "estimate", "measure_profile",
           "measure_speed_index", "traffic"]
