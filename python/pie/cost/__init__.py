"""The cost model: measure a machine's profile, and predict what a Plan costs on it."""

from . import measure, predict, profile
from .measure import *  # noqa: F403
from .predict import *  # noqa: F403
from .profile import *  # noqa: F403

__all__ = [*profile.__all__, *measure.__all__, *predict.__all__]
