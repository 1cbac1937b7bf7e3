"""Counting a network's ReLUs (the unit of cost of private inference)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from .tracing import is_relu, node_module_path, trace

__all__ = ["ReluLayer", "ReluReport", "relu_count", "relu_report"]

_STAGE = re.compile(r"^layer(\d+)$")


@dataclass(frozen=True)
class ReluLayer:
    """One ReLU site: where it is, its output shape (no batch) and its ReLU count."""

    name: str
    part: str
    shape: tuple[int, ...]
    count: int


@dataclass(frozen=True)
class ReluReport:
    """Per-layer and per-part ReLU counts of a network for one input shape.

    ``parts`` groups layers by network part: ``stem`` (before the first stage),
    ``stage1`` ... (modules named ``layerN``) and ``head`` (after the stages).
    """

    input_shape: tuple[int, int, int]
    layers: tuple[ReluLayer, ...]
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(layer.count for layer in self.layers)

    def table(self) -> str:
        """A plain-text table of the layers and the per-part totals."""
        width = max([len(layer.name) for layer in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'part':<7} {'shape':<16} {'ReLUs':>10}"]
        for layer in self.layers:
            lines.append(
                f"{layer.name:<{width}}  {layer.part:<7} {str(layer.shape):<16} {layer.count:>10,}"
            )
        for part, count in self.parts.items():
            lines.append(f"{'total ' + part:<{width + 25}} {count:>10,}")
        lines.append(f"{'total':<{width + 25}} {self.total:>10,}")
        return "\n".join(lines)


def relu_report(model: nn.Module, input_shape: Sequence[int]) -> ReluReport:
    """Trace ``model`` and list every ReLU with its element count.

    Args:
        model: the network (traced with ``torch.fx``; ReLU modules, ``F.relu``,
            ``torch.relu`` and ``Tensor.relu`` are all recognised).
        input_shape: one input's shape ``(C, H, W)``.
    """
    traced = trace(model, input_shape)
    layers: list[ReluLayer] = []
    parts: dict[str, int] = {}
    seen_stage = False
    for node in traced.module.graph.nodes:
        if not is_relu(traced.module, node):
            continue
        path = node_module_path(node)
        top = path.split(".")[0] if path else ""
        match = _STAGE.match(top)
        if match:
            part = f"stage{int(match.group(1))}"
            seen_stage = True
        else:
            part = "head" if seen_stage else "stem"
        shape = traced.shapes[node]
        name = path if node.op == "call_module" else f"{path}:{node.name}" if path else node.name
        layers.append(ReluLayer(name, part, shape, math.prod(shape)))
        parts[part] = parts.get(part, 0) + math.prod(shape)
    c, h, w = traced.input_shape
    return ReluReport((c, h, w), tuple(layers), parts)


def relu_count(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Number of ReLUs one inference of ``model`` on a ``(C, H, W)`` input evaluates."""
    return relu_report(model, input_shape).total
