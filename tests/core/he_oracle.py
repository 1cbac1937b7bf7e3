"""Independent oracles for the HE tests: plain integer convolution in numpy
(uint64 wrap-around is exact mod 2^l) and the CIFAR ResNet-18 layer shapes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def conv2d_mod(
    x: npt.NDArray[np.uint64],
    w: npt.NDArray[np.int64],
    stride: int,
    padding: int,
    groups: int,
    ring_bits: int,
) -> npt.NDArray[np.uint64]:
    """conv2d(x, w) mod 2^ring_bits with zero padding, as torch.nn.Conv2d computes it."""
    c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.zeros((c, h + 2 * padding, wd + 2 * padding), dtype=np.uint64)
    xp[:, padding : padding + h, padding : padding + wd] = x
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    og = o // groups
    wu = w.astype(np.uint64)  # two's complement: exact mod 2^64
    y = np.zeros((o, ho, wo), dtype=np.uint64)
    for g in range(groups):
        xs = xp[g * cg : (g + 1) * cg]
        for dy in range(kh):
            for dx in range(kw):
                patch = xs[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
                # (og, cg) x (cg, ho*wo) in uint64: wraps mod 2^64
                y[g * og : (g + 1) * og] += np.einsum(
                    "oc,chw->ohw", wu[g * og : (g + 1) * og, :, dy, dx], patch, dtype=np.uint64
                )
    return y & np.uint64((1 << ring_bits) - 1)


def resnet18_linear_shapes(alpha: float, rho: float) -> list[dict[str, int]]:
    """Every conv/FC shape of CIFAR ResNet-18 (DeepReDuce definition): the 3x3
    stem with stride int(1 // rho), four stages of two BasicBlocks with 1x1
    stride-2 shortcuts, and the FC 512*alpha -> 100. Deduplicated."""
    widths = [int(64 * alpha), int(128 * alpha), int(256 * alpha), int(512 * alpha)]
    stem_stride = int(1 // rho)
    shapes: list[dict[str, int]] = []
    h = 32
    shapes.append(dict(c=3, h=h, o=widths[0], k=3, s=stem_stride, p=1))
    h = (h + 2 - 3) // stem_stride + 1
    cin = widths[0]
    for stage, width in enumerate(widths):
        stride = 1 if stage == 0 else 2
        shapes.append(dict(c=cin, h=h, o=width, k=3, s=stride, p=1))
        if stride != 1 or cin != width:
            shapes.append(dict(c=cin, h=h, o=width, k=1, s=stride, p=0))
        h = (h + 2 - 3) // stride + 1
        shapes.append(dict(c=width, h=h, o=width, k=3, s=1, p=1))
        cin = width
    shapes.append(dict(c=widths[3], h=1, o=100, k=1, s=1, p=0))  # FC as 1x1
    unique: list[dict[str, int]] = []
    for s in shapes:
        if s not in unique:
            unique.append(s)
    return unique
