"""Network definitions: the DeepReDuce ResNet family, the ResNet-18 baseline and
a CIFAR MobileNetV1, all with DeepReDuce's ReLU-reduction knobs.

``names()`` lists every named configuration; ``build(name)`` makes one with
freshly initialised weights; ``from_config`` rebuilds a network from the
plain-data configuration that every network built here carries as ``.config``.
"""

from __future__ import annotations

from typing import Any, Union

from torch import nn

from .mobilenet import DepthwiseSeparable, MobileNetConfig, MobileNetV1
from .resnet import BasicBlock, ResNet, ResNetConfig

__all__ = [
    "BasicBlock",
    "DepthwiseSeparable",
    "MobileNetConfig",
    "MobileNetV1",
    "ModelConfig",
    "ResNet",
    "ResNetConfig",
    "build",
    "config",
    "from_config",
    "names",
]

ModelConfig = Union[ResNetConfig, MobileNetConfig]

_BOTTOM = (False, True)
_NONE = (False, False)


def _c1(*stages: int) -> tuple[bool, bool, bool, bool]:
    c = [False] * 4
    for s in stages:
        c[s - 1] = True
    return (c[0], c[1], c[2], c[3])


def _drd(culled, thinned, alpha, rho, blocks=(2, 2, 2, 2), tiny=False) -> ResNetConfig:
    return ResNetConfig(
        blocks=blocks,
        alpha=alpha,
        rho=rho,
        culled=culled,
        thinned=thinned,
        stem_relu=False,
        num_classes=200 if tiny else 100,
        input_size=64 if tiny else 32,
    )


# The released DeepReDuce configurations (CIFAR-100, 32x32, and TinyImageNet, 64x64).
_NAMED: dict[str, ModelConfig] = {
    "resnet18": ResNetConfig(stem_relu=True),
    "mobilenetv1": MobileNetConfig(),
    "DRD_C100_230K": _drd(_c1(1), _NONE, 1.0, 1.0),
    "DRD_C100_115K": _drd(_c1(1), _BOTTOM, 1.0, 1.0),
    "DRD_C100_57K": _drd(_c1(1), _BOTTOM, 0.5, 1.0),
    "DRD_C100_49K": _drd(_c1(1, 4), _BOTTOM, 0.5, 1.0),
    "DRD_C100_29K": _drd(_c1(1), _BOTTOM, 1.0, 0.5),
    "DRD_C100_14K": _drd(_c1(1), _BOTTOM, 0.5, 0.5),
    "DRD_C100_12K": _drd(_c1(1, 4), _BOTTOM, 0.5, 0.5),
    "DRD_C100_7K": _drd(_c1(1), _BOTTOM, 0.5, 0.5, blocks=(2, 1, 1, 1)),
    "DRD_TINY_918K": _drd(_c1(1), _NONE, 1.0, 1.0, tiny=True),
    "DRD_TINY_459K": _drd(_c1(1), _BOTTOM, 1.0, 1.0, tiny=True),
    "DRD_TINY_393K": _drd(_c1(1, 2), _NONE, 1.0, 1.0, tiny=True),
    "DRD_TINY_229K": _drd(_c1(1), _BOTTOM, 0.5, 1.0, tiny=True),
    "DRD_TINY_197K": _drd(_c1(1, 2), _BOTTOM, 1.0, 1.0, tiny=True),
    "DRD_TINY_115K": _drd(_c1(1), _BOTTOM, 1.0, 0.5, tiny=True),
    "DRD_TINY_98K": _drd(_c1(1, 2), _BOTTOM, 0.5, 1.0, tiny=True),
    "DRD_TINY_57K": _drd(_c1(1), _BOTTOM, 0.5, 0.5, tiny=True),
    "DRD_TINY_49K": _drd(_c1(1, 2), _BOTTOM, 1.0, 0.5, tiny=True),
}


def names() -> list[str]:
    """Every named configuration that :func:`build` accepts."""
    return list(_NAMED)


def config(name: str, num_classes: int | None = None) -> ModelConfig:
    """The configuration of a named network (optionally with another class count)."""
    try:
        cfg = _NAMED[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(_NAMED)}") from None
    if num_classes is not None:
        d = cfg.to_dict()
        d["num_classes"] = int(num_classes)
        cfg = type(cfg).from_dict(d)
    return cfg


def from_config(cfg: ModelConfig | dict[str, Any]) -> nn.Module:
    """Build a network (fresh weights) from a configuration object or its dict form."""
    if isinstance(cfg, dict):
        family = cfg.get("family", "resnet")
        if family == "resnet":
            cfg = ResNetConfig.from_dict(cfg)
        elif family == "mobilenetv1":
            cfg = MobileNetConfig.from_dict(cfg)
        else:
            raise ValueError(f"unknown network family {family!r} (known: resnet, mobilenetv1)")
    if isinstance(cfg, ResNetConfig):
        return ResNet(cfg)
    if isinstance(cfg, MobileNetConfig):
        return MobileNetV1(cfg)
    raise TypeError(f"expected a ResNetConfig, MobileNetConfig or dict, got {type(cfg).__name__}")


def build(name: str, num_classes: int | None = None) -> nn.Module:
    """Build a named network with freshly initialised weights.

    Args:
        name: one of :func:`names` (``DRD_C100_*``, ``DRD_TINY_*``, ``resnet18``,
            ``mobilenetv1``).
        num_classes: classifier outputs; defaults to 100 for CIFAR networks and
            200 for TinyImageNet ones.
    """
    return from_config(config(name, num_classes))
