"""Test helpers: networks with random weights and random batch-norm statistics."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CIFAR_NORM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def randomize(net: nn.Module, seed: int = 0, size: int = 32) -> nn.Module:
    """Random weights (fresh init) and random batch-norm statistics and affine parameters.

    The running statistics are first set from a random batch (so activations keep
    a sensible scale through the network), then perturbed at random.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(torch.rand(16, 3, size, size, generator=g))
    with torch.no_grad():
        for m in bns:
            m.momentum = 0.1
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.5, 2.0, generator=g))
            m.running_mean.add_(
                0.2 * torch.randn(m.running_mean.shape, generator=g) * m.running_var.sqrt()
            )
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.normal_(0.0, 0.2, generator=g)
    return net.eval()


def random_images(n: int, size: int = 32, seed: int = 1) -> np.ndarray:
    """Random images on the 8-bit pixel grid, values in [0, 1]."""
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size)) / 255.0


def float_logits(net: nn.Module, images: np.ndarray, norm=CIFAR_NORM) -> np.ndarray:
    mean = torch.tensor(norm[0], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(norm[1], dtype=torch.float64).view(1, 3, 1, 1)
    x = (torch.from_numpy(images) - mean) / std
    with torch.no_grad():
        return net(x.float()).double().numpy()
