"""The ReLU-reduction knobs every network configuration shares: their
normalisation and checks, and the plain-data dict form that checkpoints store."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar, TypeVar

__all__ = ["KnobConfig"]

_C = TypeVar("_C", bound="KnobConfig")


class KnobConfig:
    """Base of the frozen configuration dataclasses (``ResNetConfig``, ...).

    A subclass declares these fields (``family`` a non-init one whose default
    names the family) and sets ``label``, the family's name in messages.
    """

    alpha: float
    rho: float
    culled: tuple[bool, ...]
    thinned: tuple[bool, ...]
    num_classes: int
    family: str
    label: ClassVar[str]

    def _check_knobs(self, stages: int, stem: int) -> None:
        """Normalise the knob fields in place and check them.

        Args:
            stages: how many entries ``culled`` must have.
            stem: the stem's width at ``alpha == 1``.
        """
        object.__setattr__(self, "culled", tuple(bool(c) for c in self.culled))
        object.__setattr__(self, "thinned", tuple(bool(t) for t in self.thinned))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "rho", float(self.rho))
        if len(self.culled) != stages:
            raise ValueError(f"culled must have {stages} entries, got {self.culled}")
        if len(self.thinned) != 2:
            raise ValueError(f"thinned must be (top, bottom), got {self.thinned}")
        if not self.alpha > 0 or int(stem * self.alpha) < 1:
            raise ValueError(f"alpha must give at least one stem channel, got {self.alpha}")
        if not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-compatible, loadable with ``weights_only``)."""
        d = asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        """The configuration that :meth:`to_dict` wrote (``family`` must match)."""
        d = dict(d)
        family = d.pop("family", cls.family)
        if family != cls.family:
            raise ValueError(f"not a {cls.label} configuration (family {family!r})")
        return cls(**d)  # type: ignore[call-arg]
