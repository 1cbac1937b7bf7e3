"""Lowering a traced network to a float graph of linear steps and ReLUs.

The result (:class:`FloatGraph`) is the compiler's intermediate form: batch norm
is folded into the preceding conv / linear layer, a convolution or linear layer
feeding only a residual add is merged into the add, a global average pool feeding
a linear layer is folded into it, and the input normalisation ``(p / pixel_max -
mean) / std`` is folded into the first layers so that the graph's input is
integer pixels ``p``. Every value is float64 and exact to the float model up to
rounding.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .tracing import TracedModel, describe_node, is_relu

__all__ = [
    "CompileError",
    "FloatGraph",
    "FloatLinear",
    "FloatRelu",
    "FloatTerm",
    "UnsupportedOpError",
    "lower",
]

INPUT = "input"

_SUPPORTED = (
    "Conv2d (zero padding, no dilation), BatchNorm1d/2d (eval), Linear, ReLU, residual add, "
    "AvgPool2d / AdaptiveAvgPool2d, flatten/view, Identity, Dropout"
)


class CompileError(ValueError):
    """The network cannot be compiled into a Plan."""


class UnsupportedOpError(CompileError):
    """The network uses an operation the compiler does not support."""


@dataclass
class FloatTerm:
    """One primitive of a linear step: ``conv2d``, ``fc`` or ``scale`` (identity)."""

    op: str
    input: str
    weight: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1


@dataclass
class FloatLinear:
    """``output = sum(terms) + bias`` (bias: float64, the output's full shape)."""

    output: str
    terms: list[FloatTerm]
    bias: np.ndarray
    source: list[str] = field(default_factory=list)
    global_pool: bool = False


@dataclass
class FloatRelu:
    input: str
    output: str
    source: list[str] = field(default_factory=list)


FloatOp = FloatLinear | FloatRelu


@dataclass
class FloatGraph:
    """Topologically ordered float ops over named values (shapes without batch)."""

    shapes: dict[str, tuple[int, ...]]
    ops: list[FloatOp]
    output: str
    output_shape: tuple[int, ...]

    def producers(self) -> dict[str, FloatOp]:
        return {op.output: op for op in self.ops}

    def consumers(self) -> dict[str, list[FloatOp]]:
        out: dict[str, list[FloatOp]] = {}
        for op in self.ops:
            ins = [t.input for t in op.terms] if isinstance(op, FloatLinear) else [op.input]
            for name in ins:
                out.setdefault(name, []).append(op)
        return out

    def run(self, pixels: torch.Tensor,
            dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """Evaluate on integer-valued pixels (N, C, H, W); every value by name."""
        values = {INPUT: pixels.to(dtype)}
        for op in self.ops:
            if isinstance(op, FloatRelu):
                values[op.output] = torch.relu(values[op.input])
                continue
            acc = torch.from_numpy(op.bias).to(dtype).unsqueeze(0).expand(
                pixels.shape[0], *op.bias.shape
            ).clone()
            for t in op.terms:
                x = values[t.input]
                if t.op == "scale":
                    acc = acc + x
                elif t.op == "conv2d":
                    w = torch.from_numpy(t.weight).to(dtype)
                    acc = acc + F.conv2d(x, w, None, t.stride, t.padding, 1, t.groups)
                else:
                    flat = x.reshape(x.shape[0], -1) @ torch.from_numpy(t.weight).to(dtype).T
                    acc = acc + flat.reshape(acc.shape)
            values[op.output] = acc
        return values


@dataclass
class _Ref:
    """A tensor value seen through a view: ``flat`` means flattened after the batch dim."""

    name: str
    flat: bool = False


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


class _Lowering:
    """One walk over the fx graph that emits the float ops, node by node.

    Kept whole: the dispatch and the per-op handlers share the value environment
    and fuse nodes into ops emitted before them.
    """

    def __init__(self, traced: TracedModel) -> None:
        self.gm = traced.module
        self.node_shapes = traced.shapes
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.ops: list[FloatOp] = []
        self.env: dict[fx.Node, _Ref | None] = {}

    # -------------------------------------------------------------- helpers
    def fail(self, node: fx.Node, why: str = "") -> UnsupportedOpError:
        extra = f" ({why})" if why else ""
        return UnsupportedOpError(
            f"unsupported op {describe_node(self.gm, node)} at graph node '{node.name}'{extra}; "
            f"supported: {_SUPPORTED}"
        )

    def ref(self, node: fx.Node, arg: object) -> _Ref:
        if not isinstance(arg, fx.Node) or self.env.get(arg) is None:
            raise self.fail(node, f"argument {arg!r} is not a tensor")
        ref = self.env[arg]
        assert ref is not None
        return ref

    def producer(self, name: str) -> FloatLinear | None:
        for op in reversed(self.ops):
            if op.output == name:
                return op if isinstance(op, FloatLinear) else None
        return None

    def sole_use(self, node: fx.Node, arg: object) -> FloatLinear | None:
        """The linear op producing ``arg`` if ``node`` is its only user (so it can be fused)."""
        if not isinstance(arg, fx.Node) or len(arg.users) != 1:
            return None
        ref = self.env.get(arg)
        if ref is None or ref.flat:
            return None
        return self.producer(ref.name)

    def emit_linear(self, node: fx.Node, terms: list[FloatTerm], bias: np.ndarray,
                    global_pool: bool = False) -> None:
        shape = self.node_shapes[node]
        self.shapes[node.name] = shape
        self.ops.append(FloatLinear(node.name, terms, np.broadcast_to(bias, shape).copy(),
                                    [node.name], global_pool))
        self.env[node] = _Ref(node.name, flat=False)

    def rename(self, op: FloatLinear, node: fx.Node) -> None:
        """Fuse ``node`` into ``op`` (whose output only ``node`` uses): ``op`` now produces it."""
        shape = self.shapes.pop(op.output)
        op.output = node.name
        op.source.append(node.name)
        self.shapes[node.name] = shape
        self.env[node] = _Ref(node.name)

    # -------------------------------------------------------------- ops
    def conv(self, node: fx.Node, m: nn.Conv2d, x: _Ref) -> None:
        if x.flat:
            raise self.fail(node, "convolution of a flattened tensor")
        if m.padding_mode != "zeros" or _pair(m.dilation) != (1, 1):
            raise self.fail(node, "only zero padding and dilation 1 are supported")
        if isinstance(m.padding, str):
            if m.padding == "valid":
                padding = (0, 0)
            elif all(k % 2 for k in m.kernel_size):
                padding = (m.kernel_size[0] // 2, m.kernel_size[1] // 2)
            else:
                raise self.fail(node, "padding='same' with an even kernel")
        else:
            padding = _pair(m.padding)
        w = m.weight.detach().double().numpy().copy()
        b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(w.shape[0])
        term = FloatTerm("conv2d", x.name, w, _pair(m.stride), padding, m.groups)
        self.emit_linear(node, [term], b[:, None, None])

    def linear(self, node: fx.Node, m: nn.Linear, x: _Ref) -> None:
        shape = self.shapes[x.name]
        if not x.flat and len(shape) != 1:
            raise self.fail(node, f"linear layer on a tensor of shape {shape}; flatten it first")
        w = m.weight.detach().double().numpy().copy()
        if w.shape[1] != math.prod(shape):
            raise self.fail(node, "input size mismatch")
        b = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(w.shape[0])
        self.emit_linear(node, [FloatTerm("fc", x.name, w)], b)

    def batchnorm(self, node: fx.Node, m: nn.modules.batchnorm._BatchNorm, arg: object) -> None:
        x = self.ref(node, arg)
        if m.running_mean is None or m.running_var is None:
            raise self.fail(node, "batch norm without running statistics")
        var = m.running_var.detach().double().numpy()
        scale = 1.0 / np.sqrt(var + m.eps)
        shift = -m.running_mean.detach().double().numpy() * scale
        if m.weight is not None:
            g = m.weight.detach().double().numpy()
            scale, shift = scale * g, shift * g
        if m.bias is not None:
            shift = shift + m.bias.detach().double().numpy()
        shape = self.shapes[x.name]
        if x.flat or shape[0] != scale.shape[0]:
            raise self.fail(node, f"batch norm over channels of a tensor shaped {shape}")
        expand = (slice(None),) + (None,) * (len(shape) - 1)
        op = self.sole_use(node, arg)
        if op is not None and all(t.op != "scale" for t in op.terms):
            for t in op.terms:
                assert t.weight is not None
                t.weight = t.weight * scale.reshape((-1,) + (1,) * (t.weight.ndim - 1))
            op.bias = op.bias * scale[expand] + shift[expand]
            self.rename(op, node)
            return
        if len(shape) != 3:
            raise self.fail(node, "batch norm that does not follow a linear layer")
        c = shape[0]
        term = FloatTerm("conv2d", x.name, scale.reshape(c, 1, 1, 1), groups=c)
        self.emit_linear(node, [term], shift[:, None, None])

    def avgpool(self, node: fx.Node, x: _Ref, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> None:
        if x.flat:
            raise self.fail(node, "pooling a flattened tensor")
        c, h, w = self.shapes[x.name]
        weight = np.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]))
        term = FloatTerm("conv2d", x.name, weight, stride, padding, c)
        is_global = kernel == (h, w) and padding == (0, 0)
        self.emit_linear(node, [term], np.zeros((c, 1, 1)), global_pool=is_global)

    def add(self, node: fx.Node, a: object, b: object) -> None:
        ra, rb = self.ref(node, a), self.ref(node, b)
        shape = self.shapes[ra.name]
        if ra.flat != rb.flat or shape != self.shapes[rb.name]:
            raise self.fail(node, "add of tensors with different shapes (no broadcasting)")
        terms: list[FloatTerm] = []
        bias = np.zeros(shape)
        fused: list[str] = []
        for arg, r in ((a, ra), (b, rb)):
            op = self.sole_use(node, arg) if a is not b else None
            if op is not None:
                terms.extend(op.terms)
                bias = bias + op.bias
                fused.extend(op.source)
                self.ops.remove(op)
                del self.shapes[op.output]
            else:
                terms.append(FloatTerm("scale", r.name))
        self.shapes[node.name] = shape
        self.ops.append(FloatLinear(node.name, terms, bias, fused + [node.name]))
        self.env[node] = _Ref(node.name, ra.flat)

    def relu(self, node: fx.Node, x: _Ref) -> None:
        self.shapes[node.name] = self.shapes[x.name]
        self.ops.append(FloatRelu(x.name, node.name, [node.name]))
        self.env[node] = _Ref(node.name, x.flat)

    def view(self, node: fx.Node, x: _Ref) -> None:
        out = self.node_shapes[node]
        shape = self.shapes[x.name]
        if out == (math.prod(shape),):
            self.env[node] = _Ref(x.name, flat=True)
        elif out == shape:
            self.env[node] = x
        else:
            raise self.fail(node, f"reshape {shape} -> {out}; only flattening is supported")

    # -------------------------------------------------------------- dispatch
    def visit(self, node: fx.Node) -> None:
        gm = self.gm
        if node.op == "placeholder":
            self.shapes[INPUT] = self.node_shapes[node]
            self.env[node] = _Ref(INPUT)
            return
        if node.op == "output":
            return
        if is_relu(gm, node):
            self.relu(node, self.ref(node, node.args[0]))
            return
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if isinstance(m, (nn.Identity, nn.Dropout)):
                self.env[node] = self.ref(node, node.args[0])
            elif isinstance(m, nn.Conv2d):
                self.conv(node, m, self.ref(node, node.args[0]))
            elif isinstance(m, nn.Linear):
                self.linear(node, m, self.ref(node, node.args[0]))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                self.batchnorm(node, m, node.args[0])
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                self.adaptive_pool(node, self.ref(node, node.args[0]), m.output_size)
            elif isinstance(m, nn.AvgPool2d):
                self.fixed_pool(node, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                m.count_include_pad, m.divisor_override)
            elif isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1:
                    raise self.fail(node, "only flattening from dim 1 is supported")
                self.view(node, self.ref(node, node.args[0]))
            else:
                raise self.fail(node)
            return
        if node.op == "call_function":
            t = node.target
            if t in (operator.add, operator.iadd, torch.add):
                if len(node.args) != 2 or node.kwargs:
                    raise self.fail(node, "only a plain two-tensor add is supported")
                self.add(node, node.args[0], node.args[1])
                return
            if t is torch.flatten:
                self.view(node, self.ref(node, node.args[0]))
                return
            if t is F.adaptive_avg_pool2d:
                self.adaptive_pool(node, self.ref(node, node.args[0]),
                                   node.args[1] if len(node.args) > 1 else node.kwargs["output_size"])
                return
            if t is F.avg_pool2d:
                sig = ("input", "kernel_size", "stride", "padding", "ceil_mode",
                       "count_include_pad", "divisor_override")
                kw = dict(zip(sig, node.args))
                kw.update(node.kwargs)
                self.fixed_pool(node, kw["kernel_size"], kw.get("stride") or kw["kernel_size"],
                                kw.get("padding", 0), kw.get("ceil_mode", False),
                                kw.get("count_include_pad", True), kw.get("divisor_override"))
                return
            if t is F.dropout:
                self.env[node] = self.ref(node, node.args[0])
                return
        if node.op == "call_method":
            if node.target in ("add", "add_") and len(node.args) == 2 and not node.kwargs:
                self.add(node, node.args[0], node.args[1])
                return
            if node.target in ("view", "reshape", "flatten"):
                self.view(node, self.ref(node, node.args[0]))
                return
            if node.target == "contiguous":
                self.env[node] = self.ref(node, node.args[0])
                return
        if node not in self.node_shapes:
            # Not a tensor (x.size(0), shape arithmetic): only feeds view arguments.
            self.env[node] = None
            return
        raise self.fail(node)

    def adaptive_pool(self, node: fx.Node, x: _Ref, size: object) -> None:
        c, h, w = self.shapes[x.name]
        out = _pair(size if size is not None else (h, w))  # type: ignore[arg-type]
        if out == (h, w):
            self.env[node] = x
        elif out == (1, 1):
            self.avgpool(node, x, (h, w), (h, w), (0, 0))
        else:
            raise self.fail(node, "adaptive average pool to a size other than 1x1")

    def fixed_pool(self, node: fx.Node, kernel: object, stride: object, padding: object,
                   ceil_mode: bool, include_pad: bool, divisor: object) -> None:
        x = self.ref(node, node.args[0])
        k, s, p = _pair(kernel), _pair(stride or kernel), _pair(padding)  # type: ignore[arg-type]
        if ceil_mode or divisor is not None or (p != (0, 0) and not include_pad):
            raise self.fail(node, "ceil_mode, divisor_override and count_include_pad=False")
        self.avgpool(node, x, k, s, p)

    def result(self, output_node: fx.Node) -> FloatGraph:
        arg = output_node.args[0]
        if not isinstance(arg, fx.Node):
            raise CompileError("the model must return a single tensor")
        ref = self.ref(output_node, arg)
        if ref.name == INPUT:
            raise CompileError("the model returns its input unchanged")
        return FloatGraph(self.shapes, self.ops, ref.name, self.node_shapes[arg])


def _fold_pools(g: FloatGraph) -> None:
    """Fold a global average pool whose only consumer is an ``fc`` term into that term."""
    consumers = g.consumers()
    for op in list(g.ops):
        if not (isinstance(op, FloatLinear) and op.global_pool) or op.output == g.output:
            continue
        users = consumers.get(op.output, [])
        if len(users) != 1 or not isinstance(users[0], FloatLinear):
            continue
        fc_terms = [t for t in users[0].terms if t.input == op.output]
        if len(fc_terms) != 1 or fc_terms[0].op != "fc":
            continue
        (src,) = op.terms
        c, h, w = g.shapes[src.input]
        t = fc_terms[0]
        assert t.weight is not None
        t.weight = np.repeat(t.weight / (h * w), h * w, axis=1)
        t.input = src.input
        g.ops.remove(op)
        del g.shapes[op.output]


def _fold_input_norm(g: FloatGraph, pixel_max: int, mean: np.ndarray, std: np.ndarray) -> None:
    """Make the graph take integer pixels p: x = (p / pixel_max - mean) / std, folded in."""
    c = g.shapes[INPUT][0]
    scale = 1.0 / (pixel_max * std)
    offset = -mean / std
    for op in g.ops:
        if isinstance(op, FloatRelu):
            if op.input == INPUT:
                raise CompileError("a ReLU applied directly to the input cannot take the "
                                   "folded input normalisation; the first layer must be linear")
            continue
        for i, t in enumerate(op.terms):
            if t.input != INPUT:
                continue
            shape = g.shapes[INPUT]
            const = torch.from_numpy(np.broadcast_to(offset[:, None, None], shape).copy())[None]
            if t.op == "scale":
                op.terms[i] = t = FloatTerm("conv2d", INPUT, scale.reshape(c, 1, 1, 1), groups=c)
            assert t.weight is not None
            if t.op == "conv2d":
                before = F.conv2d(const, torch.from_numpy(t.weight), None, t.stride, t.padding,
                                  1, t.groups)[0].numpy()
                cg = t.weight.shape[1]
                per_in = np.stack([scale[g_ * cg : (g_ + 1) * cg] for g_ in range(t.groups)])
                per_out = np.repeat(per_in, t.weight.shape[0] // t.groups, axis=0)
                t.weight = t.weight * per_out[:, :, None, None]
            else:
                before = t.weight @ const.numpy().reshape(-1)
                t.weight = t.weight * np.repeat(scale, math.prod(shape[1:]))[None, :]
            op.bias = op.bias + before


def lower(
    traced: TracedModel,
    pixel_max: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> FloatGraph:
    """Lower a traced network to a :class:`FloatGraph` taking integer pixels.

    Raises:
        UnsupportedOpError: naming the op and the graph node.
        CompileError: other structural problems.
    """
    low = _Lowering(traced)
    output_node = None
    for node in traced.module.graph.nodes:
        low.visit(node)
        if node.op == "output":
            output_node = node
    assert output_node is not None
    g = low.result(output_node)
    _fold_pools(g)
    c = g.shapes[INPUT][0]
    m = np.zeros(c) if mean is None else np.asarray(mean, dtype=np.float64)
    s = np.ones(c) if std is None else np.asarray(std, dtype=np.float64)
    if m.shape != (c,) or s.shape != (c,) or not np.all(s > 0):
        raise ValueError(f"input_norm must be (mean, std) with {c} values each and std > 0")
    _fold_input_norm(g, pixel_max, m, s)
    return g
