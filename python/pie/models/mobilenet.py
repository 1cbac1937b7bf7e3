"""MobileNetV1, CIFAR variant, with the DeepReDuce ReLU-reduction knobs.

The CIFAR variant (as in the widely used pytorch-cifar code) has a 3x3 stride-1
stem with 32 channels and thirteen depthwise-separable blocks; the last feature
map is average pooled and fed to a linear classifier. Blocks are grouped into
five stages by resolution so that DeepReDuce's knobs apply as for ResNets:

* ``culled[s]`` removes every ReLU of stage ``s`` (stages: 64@1x, 128@1/2,
  256@1/4, 512@1/8 (six blocks), 1024@1/16);
* ``thinned = (top, bottom)`` removes, in every block that is not culled, the
  ReLU after the depthwise conv (top) and/or after the pointwise conv (bottom);
* ``alpha`` scales channel widths, ``rho`` the resolution (stem stride
  ``int(1 // rho)``); ``stem_relu`` keeps the stem's ReLU (standard: yes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .knobs import KnobConfig

__all__ = ["DepthwiseSeparable", "MobileNetV1", "MobileNetConfig"]

# (output width, stride of the first block) and number of blocks, per stage.
_STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 2, 6), (1024, 2, 2))


@dataclass(frozen=True)
class MobileNetConfig(KnobConfig):
    """Architecture of a CIFAR MobileNetV1 with ReLU-reduction knobs."""

    alpha: float = 1.0
    rho: float = 1.0
    culled: tuple[bool, bool, bool, bool, bool] = (False, False, False, False, False)
    thinned: tuple[bool, bool] = (False, False)
    stem_relu: bool = True
    num_classes: int = 100
    input_size: int = 32
    family: str = field(default="mobilenetv1", init=False)
    label: ClassVar[str] = "MobileNetV1"

    def __post_init__(self) -> None:
        self._check_knobs(stages=len(_STAGES), stem=32)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv + BN (+ ReLU), pointwise 1x1 conv + BN (+ ReLU)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, relu1: bool, relu2: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, in_planes, 3, stride=stride, padding=1, groups=in_planes, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1: nn.Module | None = nn.ReLU() if relu1 else None
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2: nn.Module | None = nn.ReLU() if relu2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        if self.relu1 is not None:
            out = self.relu1(out)
        out = self.bn2(self.conv2(out))
        if self.relu2 is not None:
            out = self.relu2(out)
        return out


class MobileNetV1(nn.Module):
    """CIFAR MobileNetV1 (see module doc); stages are ``layer1`` ... ``layer5``."""

    def __init__(self, config: MobileNetConfig) -> None:
        super().__init__()
        self.config = config
        top, bottom = config.thinned
        stem = int(32 * config.alpha)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=int(1 // config.rho), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu: nn.Module | None = nn.ReLU() if config.stem_relu else None
        in_planes = stem
        for s, (width, stride, count) in enumerate(_STAGES):
            out_planes = int(width * config.alpha)
            blocks = []
            for b in range(count):
                keep = not config.culled[s]
                blocks.append(
                    DepthwiseSeparable(
                        in_planes,
                        out_planes,
                        stride if b == 0 else 1,
                        relu1=keep and not top,
                        relu2=keep and not bottom,
                    )
                )
                in_planes = out_planes
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(in_planes, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        if self.relu is not None:
            out = self.relu(out)
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = self.layer5(out)
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)
