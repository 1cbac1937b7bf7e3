"""The DeepReDuce steps: criticality, culling, thinning, reshaping, distillation.

[REF] N. K. Jha, Z. Ghodsi, S. Garg, B. Reagen, "DeepReDuce: ReLU Reduction for
      Fast Private Inference", ICML 2021.

1. Criticality: for each stage k, train (distilled from the baseline) the
   network that keeps ReLUs only in stage k; stages whose lone network is more
   accurate are more critical.
2. Culling: remove every ReLU of the least critical stages.
3. Thinning: drop alternate ReLU layers (the post-add ReLU by default).
4. Reshaping: channel multiplier alpha and resolution multiplier rho.
Among the configurations these steps produce, :func:`choose_config` takes the
one with the most ReLUs within the budget (culling in criticality order), and
the result is distilled from the baseline. A budget below every released
configuration extends the reshaping (:func:`reduce_to_budget`): alpha halves
down to a minimum stem width (:data:`MIN_WIDTH` channels), then rho halves
down to a minimum feature map after the stem (:data:`MIN_RESOLUTION` pixels).

The checkpoints written (``baseline.pt``, ``model.pt``) carry the input
normalisation and a calibration sample of 64 training images (uint8), so
``pie.serve`` compiles them on real images.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .. import models
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models import ResNetConfig
from ..models.resnet import _STAGE_STRIDES
from ..compiler.relu_count import relu_count
from .data import Splits
from .train import TrainConfig, fit, pick_device

__all__ = [
    "Candidate",
    "CriticalityResult",
    "RunReport",
    "candidates",
    "choose_config",
    "criticality",
    "reduce_to_budget",
    "run",
    "save_model",
    "stage_only",
]

_log = logging.getLogger(__name__)
STAGES = (1, 2, 3, 4)
CALIBRATION_IMAGES = 64  # training images stored in model.pt for calibrating the compiler
THINNING = {"none": (False, False), "top": (True, False), "bottom": (False, True)}
#: The narrowest stem (channels) the extended reshaping search goes down to;
#: stage widths follow it (8, 16, 32, 64 at the minimum).
MIN_WIDTH = 8
#: The smallest feature map side (pixels) after the stem that the extended
#: search allows (a CIFAR image at rho 1/8).
MIN_RESOLUTION = 4


def base_config(splits: Splits, alpha: float = 1.0) -> ResNetConfig:
    """The ResNet-18 baseline (with stem ReLU) sized for the dataset."""
    return ResNetConfig(alpha=alpha, stem_relu=True, num_classes=splits.num_classes,
                        input_size=splits.image_shape[1])


def stage_only(base: ResNetConfig, stage: int) -> ResNetConfig:
    """The network that keeps ReLUs only in ``stage`` (no stem ReLU either)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage}")
    return replace(base, stem_relu=False, culled=tuple(s != stage for s in STAGES),
                   thinned=(False, False))


@dataclass(frozen=True)
class CriticalityResult:
    """Accuracy of each stage-only network and the stages from most to least critical."""

    accuracy: dict[int, float]
    relus: dict[int, int]

    @property
    def ranking(self) -> list[int]:
        return sorted(STAGES, key=lambda s: (-self.accuracy[s], s))

    def to_dict(self) -> dict:
        return {"accuracy": {str(k): v for k, v in self.accuracy.items()},
                "relus": {str(k): v for k, v in self.relus.items()},
                "ranking": self.ranking}


def criticality(
    base: ResNetConfig,
    splits: Splits,
    teacher: nn.Module,
    train_cfg: TrainConfig,
    *,
    work_dir: Path | None = None,
    device: str | None = None,
    progress: bool = False,
) -> CriticalityResult:
    """Train the four stage-only networks (distilled from ``teacher``) and rank the stages."""
    shape = splits.image_shape
    acc: dict[int, float] = {}
    relus: dict[int, int] = {}
    for stage in STAGES:
        net = models.from_config(stage_only(base, stage))
        ckpt = work_dir / f"criticality_stage{stage}.state" if work_dir else None
        res = fit(net, splits, train_cfg, teacher=teacher, device=device, checkpoint=ckpt,
                  progress=progress, desc=f"criticality stage {stage}")
        acc[stage] = res.test_accuracy
        relus[stage] = relu_count(net.cpu(), shape)
        _log.info("criticality: stage %d alone -> %.4f (%d ReLUs)", stage, acc[stage], relus[stage])
    return CriticalityResult(acc, relus)


@dataclass(frozen=True)
class Candidate:
    """A reduced configuration and its ReLU count."""

    config: ResNetConfig
    relus: int
    culled_stages: tuple[int, ...]
    thinning: str


def candidates(
    base: ResNetConfig,
    ranking: Sequence[int],
    input_shape: tuple[int, int, int],
    *,
    thin: str = "bottom",
    alphas: Sequence[float] = (1.0, 0.5),
    rhos: Sequence[float] = (1.0, 0.5),
) -> list[Candidate]:
    """Every configuration DeepReDuce's steps give, in order of preference:
    fewer culled stages (least critical culled first), then thinned before
    unthinned (at equal ReLUs, thinning keeps the wider or larger network),
    then larger rho, then larger alpha. ``alphas`` multiply the base width."""
    if sorted(ranking) != list(STAGES):
        raise ValueError(f"ranking must order the stages {STAGES}, got {list(ranking)}")
    if thin not in ("top", "bottom"):
        raise ValueError("thin must be 'top' or 'bottom'")
    out = []
    least_first = list(reversed(ranking))
    for n_cull in range(len(STAGES)):  # at least one stage keeps its ReLUs
        culled = tuple(sorted(least_first[:n_cull]))
        for thinning in (thin, "none"):
            for rho in rhos:
                for alpha in alphas:
                    cfg = replace(base, stem_relu=False, alpha=base.alpha * alpha, rho=rho,
                                  culled=tuple(s in culled for s in STAGES),
                                  thinned=THINNING[thinning])
                    out.append(Candidate(cfg, _relu_count(cfg, input_shape), culled, thinning))
    return out


@functools.lru_cache(maxsize=4096)
def _relu_count(cfg: ResNetConfig, input_shape: tuple[int, int, int]) -> int:
    """The ReLUs of ``cfg`` on ``input_shape``, from its shapes alone (a search
    visits many configurations; building and tracing each would dominate).
    Equal to :func:`pie.compiler.relu_count` of the built network (tested)."""

    def down(n: int, stride: int) -> int:  # a 3x3 convolution with padding 1
        return (n - 1) // stride + 1

    h, w = down(input_shape[1], cfg.stem_stride), down(input_shape[2], cfg.stem_stride)
    total = cfg.stem_width * h * w if cfg.stem_relu else 0
    for stage, blocks in enumerate(cfg.blocks):
        for b in range(blocks):
            stride = _STAGE_STRIDES[stage] if b == 0 else 1
            h, w = down(h, stride), down(w, stride)
            if not cfg.culled[stage]:
                total += cfg.widths[stage] * h * w * ((not cfg.thinned[0]) + (not cfg.thinned[1]))
    return total


def reduce_to_budget(
    base: ResNetConfig,
    ranking: Sequence[int],
    input_shape: tuple[int, int, int],
    relu_budget: int,
    *,
    thin: str = "bottom",
    min_width: int = MIN_WIDTH,
    min_resolution: int = MIN_RESOLUTION,
) -> Candidate:
    """The configuration :func:`choose_config` picks for ``relu_budget``,
    searching further when no released configuration fits: alpha halves
    (below 0.5) while the stem keeps at least ``min_width`` channels, then rho
    halves (below 0.5) while the feature map after the stem keeps at least
    ``min_resolution`` pixels a side; every step adds its alpha (or rho) for
    every culling and thinning, and the first step with a fitting candidate
    decides (most ReLUs within the budget among all candidates so far).

    Raises:
        ValueError: even the smallest reachable configuration is over the
            budget (its ReLU count is named), or ``min_width`` /
            ``min_resolution`` are not positive.
    """
    if min_width < 1 or min_resolution < 1:
        raise ValueError("min_width and min_resolution must be positive")
    alphas, rhos = [1.0, 0.5], [1.0, 0.5]
    pool = candidates(base, ranking, input_shape, thin=thin, alphas=alphas, rhos=rhos)
    side = input_shape[1]
    while not any(c.relus <= relu_budget for c in pool):
        if int(64 * base.alpha * alphas[-1] / 2) >= min_width:
            alphas.append(alphas[-1] / 2)
            new_alphas, new_rhos = alphas[-1:], rhos
        elif side // int(1 // (rhos[-1] / 2)) >= min_resolution:
            rhos.append(rhos[-1] / 2)
            new_alphas, new_rhos = alphas, rhos[-1:]
        else:
            smallest = min(pool, key=lambda c: c.relus)
            raise ValueError(
                f"no configuration fits a budget of {relu_budget:,} ReLUs: the smallest reachable "
                f"has {smallest.relus:,} (alpha {smallest.config.alpha:g}, rho "
                f"{smallest.config.rho:g}; reshaping stops at {min_width} stem channels and "
                f"{min_resolution}x{min_resolution} pixels after the stem)")
        pool += candidates(base, ranking, input_shape, thin=thin, alphas=new_alphas, rhos=new_rhos)
        _log.info("reshaping extended to alpha %s, rho %s", alphas, rhos)
    return choose_config(pool, relu_budget)


def choose_config(pool: Sequence[Candidate], relu_budget: int) -> Candidate:
    """The candidate with the most ReLUs within ``relu_budget``; among equals the
    first, i.e. the preferred one (see :func:`candidates`)."""
    fitting = [c for c in pool if c.relus <= relu_budget]
    if not fitting:
        smallest = min(pool, key=lambda c: c.relus)
        raise ValueError(f"no configuration fits a budget of {relu_budget:,} ReLUs; the smallest "
                         f"has {smallest.relus:,} (lower alpha or rho further: reduce_to_budget)")
    return max(fitting, key=lambda c: c.relus)  # max() keeps the first of equals


@dataclass
class RunReport:
    """What :func:`run` produced, written as ``report.json``."""

    dataset: str
    relu_budget: int
    baseline: dict
    criticality: dict
    chosen: dict
    reduced: dict
    reduced_without_kd: dict | None = None
    normalization: dict = field(default_factory=dict)


def _train_or_resume(net: nn.Module, splits: Splits, cfg: TrainConfig, out: Path, name: str,
                     teacher: nn.Module | None, device: str | None, progress: bool) -> float:
    res = fit(net, splits, cfg, teacher=teacher, device=device, checkpoint=out / f"{name}.state",
              progress=progress, desc=name)
    net.cpu()
    return res.test_accuracy


def run(
    splits: Splits,
    relu_budget: int,
    out: str | Path,
    train_cfg: TrainConfig,
    *,
    criticality_cfg: TrainConfig | None = None,
    base_alpha: float = 1.0,
    teacher_path: str | Path | None = None,
    ranking: Sequence[int] | None = None,
    thin: str = "bottom",
    compare_kd: bool = False,
    min_width: int = MIN_WIDTH,
    device: str | None = None,
    progress: bool = False,
) -> RunReport:
    """The whole pipeline; writes ``model.pt``, ``report.json`` and ``pareto.png`` into ``out``.
    The configuration is :func:`reduce_to_budget`'s (``min_width``: its
    narrowest stem); a budget it cannot reach raises ``ValueError`` (before
    any training when ``ranking`` is given).

    Intermediate training state lives in ``out`` too, so an interrupted run
    resumes where it stopped when started again with the same settings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = splits.image_shape
    dev = str(pick_device(device))
    base = base_config(splits, base_alpha)
    if ranking is not None:  # refuse an unreachable budget before any training
        reduce_to_budget(base, ranking, shape, relu_budget, thin=thin, min_width=min_width)

    if teacher_path is not None:
        teacher = load_checkpoint(teacher_path)
        base_acc = _evaluate_cpu(teacher, splits)
        base_relus = relu_count(teacher, shape)
    else:
        teacher = models.from_config(base)
        base_acc = _train_or_resume(teacher, splits, train_cfg, out, "baseline", None, dev, progress)
        base_relus = relu_count(teacher, shape)
        save_model(teacher, out / "baseline.pt", splits)
    teacher.eval()

    if ranking is None:
        crit = criticality(base, splits, teacher, criticality_cfg or train_cfg, work_dir=out,
                           device=dev, progress=progress)
        crit_info = crit.to_dict()
        ranking = crit.ranking
    else:
        crit_info = {"ranking": list(ranking), "given": True}

    chosen = reduce_to_budget(base, ranking, shape, relu_budget, thin=thin, min_width=min_width)
    reduced = models.from_config(chosen.config)
    red_acc = _train_or_resume(reduced, splits, train_cfg, out, "reduced", teacher, dev, progress)
    save_model(reduced, out / "model.pt", splits)
    no_kd = None
    if compare_kd:
        plain = models.from_config(chosen.config)
        no_kd = {"accuracy": _train_or_resume(plain, splits, train_cfg, out, "reduced_no_kd", None,
                                              dev, progress), "relus": chosen.relus}

    report = RunReport(
        dataset=splits.name,
        relu_budget=relu_budget,
        baseline={"accuracy": base_acc, "relus": base_relus, "config": base.to_dict()},
        criticality=crit_info,
        chosen={"config": chosen.config.to_dict(), "relus": chosen.relus,
                "culled_stages": list(chosen.culled_stages), "thinning": chosen.thinning,
                "min_width": min_width},
        reduced={"accuracy": red_acc, "relus": chosen.relus, "checkpoint": "model.pt"},
        reduced_without_kd=no_kd,
        normalization={"mean": list(splits.mean), "std": list(splits.std),
                       "input_shape": list(shape)},
    )
    (out / "report.json").write_text(json.dumps(report.__dict__, indent=2))
    _plot_pareto(out / "pareto.png", _record_models(out, report))
    return report


def save_model(model: nn.Module, path: Path, splits: Splits) -> None:
    """Save a network trained on ``splits`` as the pipeline does: pie's
    checkpoint with what a server needs besides weights (the input
    normalisation to fold into the stem, the input shape, the class names) and
    a few training images (uint8, exact) to compile it with
    (:func:`pie.models.checkpoint.calibration_sample`)."""
    meta = {"input_norm": {"mean": list(splits.mean), "std": list(splits.std)},
            "input_shape": list(splits.image_shape), "classes": list(splits.train.classes),
            "dataset": splits.name}
    save_checkpoint(model, path, meta=meta, calibration=splits.train.subset(CALIBRATION_IMAGES, seed=0).images)


def _evaluate_cpu(model: nn.Module, splits: Splits) -> float:
    from .train import evaluate

    return evaluate(model, splits, splits.test, torch.device("cpu"))


def _record_models(out: Path, report: RunReport) -> list[dict]:
    """Adds this run's models to ``models.json`` (all runs into ``out``) and returns them all."""
    path = out / "models.json"
    points = json.loads(path.read_text()) if path.is_file() else []
    new = [{"name": "baseline", "relus": report.baseline["relus"],
            "accuracy": report.baseline["accuracy"]}]
    acc = report.criticality.get("accuracy", {})
    rel = report.criticality.get("relus", {})
    new += [{"name": f"stage {s} only", "relus": rel[s], "accuracy": acc[s]} for s in acc]
    new.append({"name": f"reduced ({report.relu_budget:,} budget)", "relus": report.reduced["relus"],
                "accuracy": report.reduced["accuracy"]})
    if report.reduced_without_kd:
        new.append({"name": "reduced, no KD", "relus": report.reduced_without_kd["relus"],
                    "accuracy": report.reduced_without_kd["accuracy"]})
    points = [p for p in points if p not in new] + new
    path.write_text(json.dumps(points, indent=2))
    return points


def _plot_pareto(path: Path, points: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p["relus"] for p in points], [100 * p["accuracy"] for p in points])
    for p in points:
        ax.annotate(p["name"], (p["relus"], 100 * p["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_xlabel("ReLUs")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("ReLU count vs accuracy")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
