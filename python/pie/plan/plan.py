"""The Plan class: a compiled network's tensors and steps (:mod:`.steps`) as one object.

The public part (:meth:`Plan.public`) is everything but weights and biases;
:meth:`Plan.digest` is the SHA-256 of its canonical JSON serialisation
(:mod:`.fileformat`). The walks over the steps live in :mod:`.graph`, the exact
interpreter in :mod:`.reference`, the comparison with the float model in
:mod:`.calibration`; the methods here hand them the plan's parts.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from . import calibration, fileformat, graph, reference
from .calibration import CalibrationReport
from .steps import OUTPUT_REVEALS, OutputStep, Step, TensorSpec
from .summary import summary

__all__ = ["Plan"]

PathLike = Union[str, "os.PathLike[str]"]


class Plan:
    """A compiled network: public structure plus (optionally) the server's weights.

    Attributes:
        input: name of the input tensor (integer pixels, ``frac_bits == 0``).
        pixel_max: the client encodes an image with values in [0, 1] as the
            integers ``round(x * pixel_max)``.
        tensors: every tensor by name.
        steps: the steps in execution (topological) order.
        policy: the public parameters the scales and rings were derived with and
            what they reveal (see :func:`pie.compile`).
        private: server-side information that is not part of the public plan
            (the input normalisation folded into the first layer).
    """

    def __init__(
        self,
        input: str,
        pixel_max: int,
        tensors: dict[str, TensorSpec],
        steps: Sequence[Step],
        policy: dict[str, Any],
        private: dict[str, Any] | None = None,
    ) -> None:
        self.input = input
        self.pixel_max = int(pixel_max)
        self.tensors = dict(tensors)
        self.steps = list(steps)
        self.policy = dict(policy)
        self.private = dict(private or {})
        self._source_model: nn.Module | None = None
        self.validate()

    # ------------------------------------------------------------------ structure
    @property
    def has_weights(self) -> bool:
        """False for a public plan (weights and biases stripped)."""
        return graph.has_weights(self.steps)

    @property
    def output(self) -> OutputStep:
        return graph.output_step(self.steps)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.tensors[self.input].shape

    def relu_count(self) -> int:
        """Number of ReLUs one inference evaluates."""
        return graph.relu_count(self.tensors, self.steps)

    def gc_cost(self) -> dict[str, int]:
        """Garbled-circuit work per inference: elements and AND gates of ReLUs and truncations."""
        return graph.gc_cost(self.tensors, self.steps)

    def rounds(self) -> dict[str, int]:
        """Online garbled-circuit round of every ReLU/truncate step (by output name);
        see :func:`pie.plan.graph.rounds`."""
        return graph.rounds(self.input, self.steps)

    def schedule(self) -> list[tuple[list[int], list[int]]]:
        """The online execution order as waves ``(local, garbled)`` of step indices;
        see :func:`pie.plan.graph.schedule`."""
        return graph.schedule(self.input, self.steps)

    def last_uses(self, order: Sequence[int] | None = None) -> dict[int, list[str]]:
        """For each step index, the tensors read for the last time there (output kept)
        when the steps run in ``order`` (default: plan order)."""
        return graph.last_uses(self.steps, order)

    def validate(self) -> None:
        """Check the structural invariants the protocol relies on.

        Raises:
            PlanFormatError: naming the step and tensor that break an invariant.
        """
        graph.validate(self.input, self.tensors, self.steps)

    def summary(self) -> str:
        """A per-step table (kind, shapes, ReLUs, rings, scales) and the totals."""
        return summary(self.input, self.tensors, self.steps, self.policy)

    # ------------------------------------------------------------- public / digest
    def public(self) -> Plan:
        """A copy without weights, biases or private information (what the client gets)."""
        return Plan(self.input, self.pixel_max, self.tensors, graph.without_weights(self.steps),
                    self.policy)

    def public_dict(self) -> dict[str, Any]:
        """The public part as JSON-compatible data (the canonical form behind :meth:`digest`)."""
        return fileformat.public_dict(self.input, self.pixel_max, self.tensors, self.steps,
                                      self.policy)

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the public part; equal for a plan and
        its public copy, stable across save/load and processes."""
        return fileformat.digest(self.public_dict())

    # ------------------------------------------------------------- serialisation
    def save(self, path: PathLike) -> None:
        """Write the plan to one ``.npz`` file: a JSON header plus int64 arrays (no pickle)."""
        with open(os.fspath(path), "wb") as f:
            fileformat.write(f, self.public_dict(), self.private, self.steps)

    def to_bytes(self) -> bytes:
        """The :meth:`save` file as bytes (e.g. to send a public plan to a client)."""
        buf = io.BytesIO()
        fileformat.write(buf, self.public_dict(), self.private, self.steps)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        """Inverse of :meth:`to_bytes`.

        Raises:
            PlanFormatError: not a plan, unsupported version, or inconsistent content.
        """
        return fileformat.read(io.BytesIO(data), "<bytes>", cls)

    @classmethod
    def load(cls, path: PathLike) -> Plan:
        """Read a plan written by :meth:`save` (public or with weights).

        Raises:
            PlanFormatError: not a plan file, unsupported version, or inconsistent content.
        """
        with open(os.fspath(path), "rb") as f:
            return fileformat.read(f, repr(os.fspath(path)), cls)

    @classmethod
    def _from_dict(cls, pub: dict[str, Any], private: dict[str, Any],
                   arrays: dict[str, np.ndarray]) -> Plan:
        return fileformat.parse(pub, private, arrays, cls)

    # ------------------------------------------------------------------ execution
    def encode_input(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Images with values in [0, 1], (C, H, W) or (N, C, H, W), to integer pixels
        ``round(x * pixel_max)`` (int64, batched).

        Raises:
            ValueError: a wrong shape, or values that are not finite numbers in
                [0, 1] (an 8-bit image must be divided by 255 first: nothing is
                clipped, which would silently change the image).
        """
        return reference.encode_pixels(x, self.input_shape, self.pixel_max)

    def run_reference_int(
        self, x_int: np.ndarray | torch.Tensor, *, return_all: bool = False
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Execute the plan exactly, as the protocol does, on integer inputs.

        Args:
            x_int: integer pixels, (C, H, W) or (N, C, H, W); reduced mod the input ring.
            return_all: return every tensor (name -> uint64 residues) instead.

        Returns:
            The output tensor's residues mod its ring (uint64, shaped like
            ``x_int``'s batch: (N, *shape) or (*shape)), or the dict of all tensors.
        """
        arr = x_int.numpy() if isinstance(x_int, torch.Tensor) else np.asarray(x_int)
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"x_int must be an integer array, got dtype {arr.dtype}")
        single = arr.ndim == len(self.input_shape)
        batch = reference.batched(arr, self.input_shape, "x_int")
        values, _ = reference.execute(self.input, self.tensors, self.steps, batch,
                                      keep_all=return_all)
        if return_all:
            return {k: v[0] for k, v in values.items()} if single else values
        out = values[self.output.input].reshape(batch.shape[0], *self.output.shape)
        return out[0] if single else out

    def decode_output(self, y: np.ndarray) -> np.ndarray:
        """Output residues to float logits (``signed / 2^frac_bits``)."""
        return reference.decode(y, self.tensors[self.output.input])

    def with_output(self, reveal: str) -> Plan:
        """This Plan with the output step revealing ``reveal`` (``"logits"`` or
        ``"label"``); a different public Plan, so a different digest."""
        if reveal not in OUTPUT_REVEALS:
            raise ValueError(f"output must be one of {OUTPUT_REVEALS}, got {reveal!r}")
        out = self.output
        steps = [dataclasses.replace(s, reveal=reveal) if s is out else s for s in self.steps]
        plan = Plan(self.input, self.pixel_max, self.tensors, steps, self.policy, self.private)
        plan._source_model = self._source_model
        return plan

    def reference_label(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """The top-1 class of the exact fixed-point plan (what a label-only
        inference returns): ``argmax`` of :meth:`run_reference`, lowest index
        among equal maxima; an int64 scalar array for one image, else (N,)."""
        logits = self.run_reference(x)
        single = np.ndim(x) == len(self.input_shape)
        labels = np.argmax(logits.reshape(1 if single else logits.shape[0], -1), axis=1).astype(np.int64)
        return np.asarray(labels[0]) if single else labels

    def run_reference(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Encode images (values in [0, 1], before normalisation; (C, H, W) or
        (N, C, H, W)), run the exact fixed-point plan, decode float logits."""
        out = self.decode_output(self.run_reference_int(self.encode_input(x)))
        return out[0] if np.ndim(x) == len(self.input_shape) else out

    def calibrate(
        self, images: np.ndarray | torch.Tensor, model: nn.Module | None = None
    ) -> CalibrationReport:
        """Compare the float model with the fixed-point plan on a batch of images.

        Args:
            images: (N, C, H, W) images with values in [0, 1] (before normalisation).
            model: the float network; defaults to the one this plan was compiled
                from (kept in memory only, not saved).

        Returns:
            Top-1 agreement, max |logit error|, max |logit| and, per garbled-circuit
            input tensor, the number of elements that overflowed their ring.
        """
        model = model if model is not None else self._source_model
        if model is None:
            raise ValueError("pass the float model: this plan was loaded, not compiled here")
        pixels = self.encode_input(images)
        return calibration.calibrate(self.input, self.tensors, self.steps, pixels, self.pixel_max,
                                     self.private, model)

    def float_logits(self, model: nn.Module, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """The float model's logits on the same quantised pixels the plan sees (float64)."""
        return calibration.float_logits(model, self.encode_input(images), self.pixel_max,
                                        self.private)
