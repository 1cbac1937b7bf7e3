"""The machine profile: a :class:`Profile` of one machine's micro-benchmark figures and its JSON file.

:func:`pie.cost.measure_profile` measures one; :func:`pie.cost.estimate` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = ["Profile", "ProfileError"]

PathLike = Union[str, "os.PathLike[str]"]

PROFILE_FORMAT = "pie-profile"
PROFILE_VERSION = 5


class ProfileError(ValueError):
    """A malformed, incomplete or incompatible profile file."""


@dataclass(frozen=True)
class Profile:
    """Micro-benchmark figures of one machine, the input of :func:`estimate`.

    Seconds are wall-clock with ``threads`` worker threads (the engine's
    default: all cores). Coefficients come from non-negative least-squares
    fits of the engine's own protocol classes (see :func:`pie.cost.measure_profile`).

    Attributes:
        threads: garbling / evaluation / HE threads the figures were taken with.
        gc_offline_per_and_s, gc_offline_per_ot_s, gc_offline_per_step_s:
            offline garbled step: garbling plus table transfer per AND gate,
            IKNP correlated OT per client input bit, fixed cost per step.
        gc_online_per_and_s, gc_online_per_gate_s, gc_online_per_label_s, gc_online_per_step_s:
            online garbled step: evaluation per AND gate and per other
            (XOR, INV) gate, selection + transfer per server input label,
            fixed cost per step.
        base_ot_s: base-OT set-up of one circuit shape (first use of its IKNP).
        he_per_input_s, he_per_product_s, he_per_fc_product_s, he_per_reply_s,
        he_per_reply_limb_s, he_per_term_s: offline HE term: per input
            ciphertext (encrypt, send, load), per ciphertext-plaintext product
            of a conv and of a fully connected term (weight encoding, product:
            an fc encodes a full plaintext of weights for every product, a
            conv reuses its kernel's), per reply (re-randomise, flood, switch),
            per reply and final RNS limb (send, decrypt), fixed cost per term.
        he_session_s: one HE key set-up on the client (key generation, sending
            the public key; the server loads it in parallel).
        linear_per_limb_mac_s, linear_per_limb_element_s, linear_per_limb_weight_s, linear_per_term_s:
            server online ring arithmetic of one conv/fc term: per limb
            multiply-accumulate, per limb element in and out, per limb weight
            (wide layers on small images stream their weights once per limb
            and run below the large layers' MAC rate), fixed cost -- for the
            float64-limb path (large products on a CPU without AVX-512, see
            :func:`pie.plan.reference.native_threads`).
        linear_native_per_mac_s, linear_native_per_element_s, linear_native_per_weight_s, linear_native_per_term_s:
            the same for a product in the native uint64 kernel, per thread of
            its team: per multiply-accumulate in whole 8-channel vectors
            (:func:`pie.plan.reference.native_work`), per output element, per
            weight (layers on small images stream their taps from memory),
            fixed cost.
        linear_native_team_s: what a product on every core pays on top
            (waking the sleeping workers of the server thread's OpenMP team).
        bandwidth: bytes per second of each transport (``"memory"``, ``"tcp"``).
        rtt_s: round-trip time of a small message on each transport.
        speed_index_s: seconds of :func:`measure_speed_index`'s reference
            workload while the profile was measured (0: unknown).
        machine: description of the machine and software (informational).
    """

    threads: int
    gc_offline_per_and_s: float
    gc_offline_per_ot_s: float
    gc_offline_per_step_s: float
    gc_online_per_and_s: float
    gc_online_per_gate_s: float
    gc_online_per_label_s: float
    gc_online_per_step_s: float
    base_ot_s: float
    he_per_input_s: float
    he_per_product_s: float
    he_per_fc_product_s: float
    he_per_reply_s: float
    he_per_reply_limb_s: float
    he_per_term_s: float
    he_session_s: float
    linear_per_limb_mac_s: float
    linear_per_limb_element_s: float
    linear_per_limb_weight_s: float
    linear_per_term_s: float
    linear_native_per_mac_s: float
    linear_native_per_element_s: float
    linear_native_per_weight_s: float
    linear_native_per_term_s: float
    linear_native_team_s: float
    bandwidth: dict[str, float]
    rtt_s: dict[str, float]
    speed_index_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)

    def scaled(self, factor: float) -> Profile:
        """This profile on a machine ``factor`` times slower (every time
        coefficient multiplied, every bandwidth divided by it): e.g.
        ``measure_speed_index() / profile.speed_index_s`` rescales a profile to
        the load a shared machine is under right now."""
        if not factor > 0 or not math.isfinite(factor):
            raise ValueError(f"factor must be a positive number, got {factor!r}")
        times = {f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)
                 if f.name.endswith("_s") and f.name != "rtt_s"}
        return dataclasses.replace(
            self, **times, rtt_s={k: v * factor for k, v in self.rtt_s.items()},
            bandwidth={k: v / factor for k, v in self.bandwidth.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, tagged with the profile format and version."""
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Inverse of :meth:`to_dict`.

        Raises:
            ProfileError: wrong format or version, missing or non-numeric fields.
        """
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"not a {PROFILE_FORMAT} document")
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(f"profile version {data.get('version')!r} is not {PROFILE_VERSION}")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "machine":
                kwargs["machine"] = dict(data.get("machine", {}))
                continue
            if f.name == "speed_index_s" and f.name not in data:
                continue
            if f.name not in data:
                raise ProfileError(f"profile field {f.name!r} is missing")
            value = data[f.name]
            if f.name in ("bandwidth", "rtt_s"):
                if not isinstance(value, dict) or not {"memory", "tcp"} <= set(value):
                    raise ProfileError(f"profile field {f.name!r} needs 'memory' and 'tcp' entries")
                kwargs[f.name] = {str(k): _nonneg(v, f"{f.name}.{k}") for k, v in value.items()}
            elif f.name == "threads":
                if not isinstance(value, int) or value < 1:
                    raise ProfileError("profile field 'threads' must be a positive integer")
                kwargs[f.name] = value
            else:
                kwargs[f.name] = _nonneg(value, f.name)
        if min(kwargs["bandwidth"].values()) <= 0:
            raise ProfileError("profile bandwidths must be positive")
        return cls(**kwargs)

    def save(self, path: PathLike) -> None:
        """Write the profile as JSON."""
        with open(os.fspath(path), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, path: PathLike) -> Profile:
        """Read a profile written by :meth:`save`.

        Raises:
            ProfileError: not a profile, or malformed (see :meth:`from_dict`).
        """
        try:
            with open(os.fspath(path), encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as exc:
            raise ProfileError(f"{os.fspath(path)!r} is not JSON: {exc}") from exc
        return cls.from_dict(data)


def _nonneg(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ProfileError(f"profile field {name!r} must be a non-negative number, got {value!r}")
    return float(value)
