"""The DeepReDuce ResNet family (CIFAR-style ResNet-18: 3x3 stem, no max-pool).

The layout follows the publicly released DeepReDuce model definitions, so their
checkpoints load without renaming: ``conv1``/``bn1`` stem, ``layerN.B`` blocks
with ``conv1``/``bn1``/``conv2``/``bn2`` and a ``shortcut`` (``shortcut.0`` conv,
``shortcut.1`` batch norm) where the shape changes, an adaptive average pool and
a linear classifier ``fc``.

ReLU reduction knobs:

* ``culled[s]`` removes every ReLU of stage ``s`` (the block becomes linear);
* ``thinned = (top, bottom)`` removes, in every block that is not culled, the ReLU
  after ``bn1`` (top) and/or the ReLU after the residual add (bottom);
* ``alpha`` scales every channel width (``int(64 * alpha)``, ...);
* ``rho`` scales the resolution through the stem stride ``int(1 // rho)``;
* ``stem_relu`` keeps the ReLU after the stem (the ResNet-18 baseline has it, the
  DeepReDuce networks do not, so culling stage 1 removes every ReLU before
  stage 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .knobs import KnobConfig

__all__ = ["BasicBlock", "ResNet", "ResNetConfig"]

_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)


@dataclass(frozen=True)
class ResNetConfig(KnobConfig):
    """Architecture of a DeepReDuce-style ResNet.

    Attributes:
        blocks: basic blocks per stage (four stages).
        alpha: channel-width multiplier.
        rho: resolution multiplier, applied as the stem stride ``int(1 // rho)``.
        culled: per stage, whether all its ReLUs are removed.
        thinned: ``(top, bottom)``: remove the ReLU after ``bn1`` / after the add.
        stem_relu: whether the stem has a ReLU.
        num_classes: classifier outputs.
        input_size: the spatial size the network is meant for (32 for CIFAR,
            64 for TinyImageNet); informational, the network accepts any size.
    """

    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    alpha: float = 1.0
    rho: float = 1.0
    culled: tuple[bool, bool, bool, bool] = (False, False, False, False)
    thinned: tuple[bool, bool] = (False, False)
    stem_relu: bool = False
    num_classes: int = 100
    input_size: int = 32
    family: str = field(default="resnet", init=False)
    label: ClassVar[str] = "ResNet"

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if len(self.blocks) != 4 or any(b < 1 for b in self.blocks):
            raise ValueError(f"blocks must be four positive counts, got {self.blocks}")
        self._check_knobs(stages=4, stem=64)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each stage."""
        return tuple(int(w * self.alpha) for w in _STAGE_WIDTHS)

    @property
    def stem_width(self) -> int:
        return int(64 * self.alpha)

    @property
    def stem_stride(self) -> int:
        return int(1 // self.rho)


class BasicBlock(nn.Module):
    """ResNet basic block with DeepReDuce culling/thinning flags.

    ``relu1`` (after ``bn1``) exists unless the block is culled or top-thinned;
    ``relu2`` (after the residual add) exists unless culled or bottom-thinned.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        culled: bool = False,
        top_thinned: bool = False,
        bottom_thinned: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1: nn.Module | None = None if culled or top_thinned else nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2: nn.Module | None = None if culled or bottom_thinned else nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        if self.relu1 is not None:
            out = self.relu1(out)
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        if self.relu2 is not None:
            out = self.relu2(out)
        return out


class ResNet(nn.Module):
    """CIFAR-style ResNet with DeepReDuce ReLU-reduction knobs (see module doc)."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        top, bottom = config.thinned
        self.conv1 = nn.Conv2d(
            3, config.stem_width, 3, stride=config.stem_stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.relu: nn.Module | None = nn.ReLU() if config.stem_relu else None
        in_planes = config.stem_width
        for s in range(4):
            layers = []
            for b in range(config.blocks[s]):
                stride = _STAGE_STRIDES[s] if b == 0 else 1
                layers.append(
                    BasicBlock(in_planes, config.widths[s], stride, config.culled[s], top, bottom)
                )
                in_planes = config.widths[s]
            self.add_module(f"layer{s + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(x))
        if self.relu is not None:
            out = self.relu(out)
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = self.avgpool(out)
        out = torch.flatten(out, 1)
        return self.fc(out)
