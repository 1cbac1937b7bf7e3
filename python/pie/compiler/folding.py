"""What the compiler folds: the ReLU-free regions at the two ends of a network.

A chain of linear layers with no ReLU in between is one affine map, exact in
real arithmetic. Quantised layer by layer it multiplies the layers' scales
(each adds its weights' fractional bits), which only a garbled truncation
could take off again. At the output (culled last stages, the pool, the
classifier) the map becomes one fully connected layer of the chain's input
(:func:`fold_linear_tail`); at the input (a culled first stage and the stem)
one dense layer of the input per tensor the rest of the network reads
(:func:`fold_linear_head`). Both rewrite a :class:`~.lowering.FloatGraph` in
place before calibration, so the precision search and the scales see the
folded layers only.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from .lowering import INPUT, FloatGraph, FloatLinear, FloatOp, FloatRelu, FloatTerm

__all__ = ["fold_linear_head", "fold_linear_tail", "fold_pointwise"]


def _tail_region(g: FloatGraph, cut: str) -> list[FloatLinear] | None:
    """The ops between ``cut`` and the output if every path into the output starts at
    ``cut`` and passes no ReLU (so the output is an affine map of ``cut``); else None."""
    producers = g.producers()
    region: dict[str, FloatLinear] = {}
    todo = [g.output]
    while todo:
        name = todo.pop()
        if name == cut or name in region:
            continue
        op = producers.get(name)
        if not isinstance(op, FloatLinear):
            return None  # a ReLU, or the graph input, lies on a path that avoids the cut
        region[name] = op
        todo.extend(t.input for t in op.terms)
    return [op for op in g.ops if isinstance(op, FloatLinear) and op.output in region]


def fold_linear_tail(g: FloatGraph, max_weights: int) -> str | None:
    """Fold the ReLU-free chain that ends at the output into one ``fc`` term.

    Culled last stages, the average pool and the classifier form a chain of linear
    layers with no ReLU in between; quantising each layer separately multiplies
    their scales. Their composition is one affine map ``y = M x + c`` of the
    chain's input ``x`` (the tensor every path into the output starts from),
    exact in real arithmetic, so it is replaced by a single fully connected layer
    quantised once. Only done when ``M`` has at most ``max_weights`` entries and
    the chain has more than one layer. Returns the cut tensor's name, or None.
    """
    best: tuple[str, list[FloatLinear]] | None = None
    out_numel = math.prod(g.output_shape)
    for op in g.ops:
        cut = op.output
        if cut == g.output or math.prod(g.shapes[cut]) * out_numel > max_weights:
            continue
        region = _tail_region(g, cut)
        if region is not None and len(region) > 1 and (best is None or len(region) > len(best[1])):
            best = (cut, region)
    if best is None:
        return None
    cut, region = best
    shape = g.shapes[cut]
    n = math.prod(shape)
    sub = FloatGraph({**g.shapes, INPUT: shape}, region, g.output, g.output_shape)
    with torch.no_grad():
        zero = _run_region(sub, cut, torch.zeros((1, *shape), dtype=torch.float64))[0]
    # The Jacobian of an affine map is its matrix: reverse mode, one pass per output.
    jac = torch.autograd.functional.jacobian(
        lambda v: _run_region(sub, cut, v.reshape(1, *shape))[0].reshape(-1),
        torch.zeros(n, dtype=torch.float64), vectorize=True)
    weight = jac.detach().numpy()
    sources = [name for op in region for name in op.source]
    for op in region:
        g.ops.remove(op)
        if op.output != g.output:
            del g.shapes[op.output]
    g.ops.append(FloatLinear(g.output, [FloatTerm("fc", cut, weight)],
                             zero.reshape(g.shapes[g.output]).numpy(), sources))
    return cut


def _product_depth(ops: list[FloatLinear]) -> dict[str, int]:
    """The most conv/fc products on a path from the input to each op's output."""
    depth = {INPUT: 0}
    for op in ops:
        depth[op.output] = max(depth[t.input] + (t.op != "scale") for t in op.terms)
    return depth


def fold_linear_head(g: FloatGraph, max_weights: int, chunk: int = 256) -> list[str] | None:
    """Fold the ReLU-free region that starts at the input into fully connected terms.

    A culled first stage (stage 1 of every DeepReDuce network) chains several
    convolutions before the first ReLU. Quantised one by one, each adds its
    weights' fractional bits to the residual stream, and only a garbled
    truncation could take them off again (the first ReLU's input depends on
    it, so it costs an online round of its own). What the rest of the network
    reads from this region is an affine map of the input, exact in real
    arithmetic, so each such tensor becomes one fully connected layer of the
    input, quantised once. The map is a dense matrix: zero padding at every
    layer makes the composition position-dependent, so it is no convolution.
    An op that adds terms on the region to others (the residual add whose
    shortcut reads the stage's output) keeps the others and reads the sum of
    its region terms, split off as ``<output>.head``. The matrices are read off
    the region's response to every input pixel, in float32 as the calibration
    runs the model (a tenth of float64's time), the biases in float64.

    Only done when a folded tensor sits at least two products from the input
    (one product is already a single layer) and the matrices have at most
    ``max_weights`` entries in all. Returns the folded tensors' names, or None.
    """
    head: set[str] = set()
    for op in g.ops:
        if isinstance(op, FloatLinear) and all(t.input == INPUT or t.input in head for t in op.terms):
            head.add(op.output)
    if not head or g.output in head:
        return None  # no linear head, or a network without ReLUs (the tail fold's case)
    reads = {INPUT} | head
    region = [op for op in g.ops if op.output in head]
    folded: list[str] = []
    splits: list[tuple[FloatLinear, FloatLinear]] = []  # (consumer, its region part)
    for op in g.ops:
        if op.output in head:
            continue
        if isinstance(op, FloatRelu):
            if op.input in head and op.input not in folded:
                folded.append(op.input)
        elif any(t.input in reads for t in op.terms):
            part = FloatLinear(f"{op.output}.head", [t for t in op.terms if t.input in reads], op.bias, [])
            splits.append((op, part))
            folded.append(part.output)
    depth = _product_depth(region + [part for _, part in splits])
    n_in = math.prod(g.shapes[INPUT])
    shapes = {**g.shapes, **{part.output: g.shapes[op.output] for op, part in splits}}
    if max(depth[name] for name in folded) < 2 or sum(math.prod(shapes[n]) for n in folded) * n_in > max_weights:
        return None
    ops = region + [part for _, part in splits]
    sub = FloatGraph(shapes, ops, folded[0], shapes[folded[0]])
    # The columns come from the region without its biases: subtracting the
    # response to a zero image would cancel most of a float32 column's bits.
    linear = FloatGraph(shapes, [dataclasses.replace(op, bias=np.zeros_like(op.bias)) for op in ops],
                        folded[0], shapes[folded[0]])
    shape = g.shapes[INPUT]
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in folded}
    eye = torch.eye(n_in, dtype=torch.float32).reshape(n_in, *shape)
    with torch.no_grad():
        zero = sub.run(torch.zeros((1, *shape), dtype=torch.float64))
        for start in range(0, n_in, chunk):
            basis = eye[start : start + chunk]
            values = linear.run(basis, torch.float32)
            for name in folded:
                columns[name].append(values[name].reshape(basis.shape[0], -1))
    sources = [name for op in region for name in op.source]
    new_ops: list[FloatOp] = [
        FloatLinear(name, [FloatTerm("fc", INPUT, torch.cat(columns[name]).T.double().numpy().copy())],
                    zero[name][0].numpy(), sources)
        for name in folded
    ]
    for op, part in splits:
        op.terms = [t for t in op.terms if t.input not in reads] + [FloatTerm("scale", part.output)]
        op.bias = np.zeros_like(op.bias)
    g.ops[:] = new_ops + [op for op in g.ops if op.output not in head]
    for name in head - set(folded):
        del g.shapes[name]
    g.shapes.update({part.output: shapes[part.output] for _, part in splits})
    return folded


def _run_region(sub: FloatGraph, cut: str, x: torch.Tensor) -> torch.Tensor:
    """Evaluate a region of ops that reads only ``cut`` (float64); its output."""
    renamed = [FloatLinear(op.output, [FloatTerm(t.op, INPUT if t.input == cut else t.input,
                                                 t.weight, t.stride, t.padding, t.groups)
                                       for t in op.terms], op.bias) for op in sub.ops]
    graph = FloatGraph(sub.shapes, renamed, sub.output, sub.output_shape)
    return graph.run(x)[sub.output]


def _dense_groups(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv weight ``(O, C/g, kh, kw)`` as the equal ungrouped one ``(O, C, kh, kw)``."""
    if groups == 1:
        return weight
    o, cg, kh, kw = weight.shape
    og = o // groups
    full = np.zeros((o, cg * groups, kh, kw))
    for gi in range(groups):
        full[gi * og : (gi + 1) * og, gi * cg : (gi + 1) * cg] = weight[gi * og : (gi + 1) * og]
    return full


def _pointwise(t: FloatTerm) -> bool:
    """A 1x1 convolution without padding or groups (a projection shortcut)."""
    return (t.op == "conv2d" and t.weight is not None and t.weight.shape[2:] == (1, 1)
            and t.padding == (0, 0) and t.groups == 1)


def _apply(t: FloatTerm, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A pointwise or fc term applied to one value of its input's ``shape`` (float64)."""
    assert t.weight is not None
    if t.op == "fc":
        return t.weight @ value.reshape(-1)
    x = torch.from_numpy(value.reshape(1, *shape))
    return F.conv2d(x, torch.from_numpy(t.weight), None, t.stride)[0].numpy()


def _compose(t: FloatTerm, u: FloatTerm, shapes: dict[str, tuple[int, ...]]) -> FloatTerm:
    """``t(u(x))`` as one term of ``x``, for ``t`` pointwise or fc: exact (a 1x1
    convolution reads one position of ``u``'s output, so it commutes with ``u``'s
    padding; a dense layer composes with anything)."""
    assert t.weight is not None
    if u.op == "scale":
        return dataclasses.replace(t, input=u.input)
    assert u.weight is not None
    if t.op == "conv2d":
        if u.op == "conv2d":
            w = np.einsum("oc,cikl->oikl", t.weight[:, :, 0, 0], _dense_groups(u.weight, u.groups))
            stride = (u.stride[0] * t.stride[0], u.stride[1] * t.stride[1])
            return FloatTerm("conv2d", u.input, w, stride, u.padding, 1)
        cols = torch.from_numpy(np.ascontiguousarray(u.weight.T).reshape(-1, *shapes[t.input]))
        out = F.conv2d(cols, torch.from_numpy(t.weight), None, t.stride)
        return FloatTerm("fc", u.input, out.reshape(out.shape[0], -1).T.numpy().copy())
    if u.op == "fc":
        return FloatTerm("fc", u.input, t.weight @ u.weight)
    # A dense layer after a convolution: its rows through the convolution's adjoint.
    (_, hi, wi), (_, h, w), (kh, kw) = shapes[u.input], shapes[t.input], u.weight.shape[2:]
    extra = (hi + 2 * u.padding[0] - kh - (h - 1) * u.stride[0],
             wi + 2 * u.padding[1] - kw - (w - 1) * u.stride[1])
    rows = torch.from_numpy(t.weight.reshape(-1, *shapes[t.input]))
    out = F.conv_transpose2d(rows, torch.from_numpy(u.weight), None, u.stride, u.padding,
                             extra, u.groups)
    return FloatTerm("fc", u.input, out.reshape(out.shape[0], -1).numpy())


def _term_key(t: FloatTerm) -> tuple:
    shape = None if t.weight is None else t.weight.shape
    return (t.op, t.input, t.stride, t.padding, t.groups, shape)


def _merge(terms: list[FloatTerm]) -> list[FloatTerm]:
    """Weighted terms of one input and geometry summed into one (their weights add)."""
    out: dict[tuple, FloatTerm] = {}
    kept: list[FloatTerm] = []
    for t in terms:
        if t.weight is None:
            kept.append(t)
            continue
        key = _term_key(t)
        prev = out.get(key)
        out[key] = t if prev is None else dataclasses.replace(prev, weight=prev.weight + t.weight)
    return kept + list(out.values())


def _expand(t: FloatTerm, rows: int, producers: dict[str, FloatOp],
            shapes: dict[str, tuple[int, ...]], max_weights: int
            ) -> tuple[list[FloatTerm], np.ndarray | None]:
    """``t`` (pointwise or fc, a term of an op with ``rows`` output elements)
    composed into the terms of the linear op it reads, recursively while the
    composites stay pointwise or fc: the terms, and what the ops' biases add to
    the reader's (None: ``t`` is kept as it is)."""
    op = producers.get(t.input)
    if not isinstance(op, FloatLinear) or not (_pointwise(t) or t.op == "fc"):
        return [t], None
    if any(rows * math.prod(shapes[u.input]) > max_weights
           for u in op.terms if t.op == "fc" or u.op == "fc"):
        return [t], None
    terms: list[FloatTerm] = []
    bias = _apply(t, op.bias, shapes[t.input])
    for u in op.terms:
        sub, sub_bias = _expand(_compose(t, u, shapes), rows, producers, shapes, max_weights)
        terms += sub
        if sub_bias is not None:
            bias = bias + sub_bias
    return terms, bias


def fold_pointwise(g: FloatGraph, max_weights: int) -> list[str]:
    """Compose every projection shortcut (1x1 convolution) and dense layer into the
    terms of the linear op it reads, through sums and identity shortcuts.

    In a bottom-thinned network the residual stream never passes a ReLU, so each
    projection shortcut multiplies the stream's scale by its weights' (it adds
    their fractional bits), and the stream carries them to every later ReLU
    input and to the classifier. A 1x1 convolution reads a single position of
    its input, so composed with a padded convolution it is again one
    convolution (strides multiply), exactly; a dense layer composes with
    anything. Rewritten, each stream term is one product of a ReLU output (or
    of the input) quantised once, and the stream's scale no longer grows stage
    by stage. A dense composite is only made while it has at most
    ``max_weights`` entries. Ops no longer read are removed. Returns the names
    of the ops whose terms changed.
    """
    changed: list[str] = []
    producers = g.producers()  # ops are rewritten in place: later ones see the composed terms
    for op in g.ops:
        if not isinstance(op, FloatLinear):
            continue
        terms: list[FloatTerm] = []
        bias = op.bias
        touched = False
        rows = math.prod(g.shapes[op.output])
        for t in op.terms:
            sub, sub_bias = _expand(t, rows, producers, g.shapes, max_weights)
            terms += sub
            if sub_bias is not None:
                touched = True
                bias = bias + sub_bias.reshape(bias.shape)
        if touched:
            op.terms, op.bias = _merge(terms), bias
            changed.append(op.output)
    _drop_unread(g)
    return changed


def _drop_unread(g: FloatGraph) -> None:
    """Remove linear ops nothing reads any more (the output excepted)."""
    while True:
        consumers = g.consumers()
        dead = [op for op in g.ops if isinstance(op, FloatLinear) and op.output != g.output
                and not consumers.get(op.output)]
        if not dead:
            return
        for op in dead:
            g.ops.remove(op)
            del g.shapes[op.output]
