"""The Plan: what the two parties execute, as plain data (:mod:`.steps`), its file
format, and its exact cleartext interpreter (:mod:`.reference`), which the secure
output must equal."""

from . import steps
from .calibration import CalibrationReport
from .plan import Plan
from .steps import *  # noqa: F403 (the names are steps.__all__)

__all__ = [*steps.__all__, "CalibrationReport", "Plan"]
