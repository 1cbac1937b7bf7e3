"""Tracing a network with ``torch.fx`` and propagating shapes.

Shared by ReLU counting and the compiler so that both see the same graph.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["TracedModel", "trace", "is_relu", "node_module_path", "describe_node"]

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


@dataclass
class TracedModel:
    """A traced network: the fx graph module and the per-node output shapes.

    ``shapes`` maps a node to its output shape without the batch dimension, for
    every node whose output is a tensor.
    """

    module: fx.GraphModule
    input_shape: tuple[int, ...]
    shapes: dict[fx.Node, tuple[int, ...]]


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    return shape


def trace(model: nn.Module, input_shape: Sequence[int]) -> TracedModel:
    """Trace ``model`` symbolically and propagate a ``(2, C, H, W)`` input's shapes.

    Raises:
        ValueError: bad ``input_shape``, a model that cannot be traced by
            ``torch.fx`` (data-dependent control flow), or an input shape the
            model rejects.
    """
    shape = _check_input_shape(input_shape)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        raise ValueError(
            f"cannot trace {type(model).__name__} with torch.fx: {exc}"
        ) from exc
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(
            f"the model must take exactly one input tensor, its forward takes {len(placeholders)}"
        )
    was_training = model.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros((2, *shape)))
    except Exception as exc:
        raise ValueError(
            f"input_shape {shape} does not fit {type(model).__name__}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
    shapes: dict[fx.Node, tuple[int, ...]] = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if isinstance(meta, torch.fx.passes.shape_prop.TensorMetadata):
            shapes[node] = tuple(meta.shape)[1:]
    return TracedModel(gm, shape, shapes)


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` applies a ReLU (module, function or method form)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


def node_module_path(node: fx.Node) -> str:
    """The qualified name of the module that ``node`` belongs to ("" at top level)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(list(stack)[-1])
    return ""


def describe_node(gm: fx.GraphModule, node: fx.Node) -> str:
    """A human-readable name of the operation a node performs."""
    if node.op == "call_module":
        return f"{type(gm.get_submodule(str(node.target))).__name__} module '{node.target}'"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", repr(node.target))
        if node.target in vars(operator).values():
            return f"operator.{name}"
        return f"function {name}"
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    return f"{node.op} {node.target}"
