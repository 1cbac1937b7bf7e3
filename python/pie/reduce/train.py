"""Training and knowledge distillation for the DeepReDuce pipeline.

[REF] G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural
      Network", 2015: soft targets at temperature T, loss
      (1 - w) * CE(student, y) + w * T^2 * KL(softmax(teacher/T) || softmax(student/T)).
Defaults follow DeepReDuce's training: SGD with momentum 0.9, weight decay
5e-4, learning rate 0.1 with a cosine (or step) schedule, T = 4.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageDataset, Splits, batches

__all__ = ["TrainConfig", "TrainResult", "distillation_loss", "evaluate", "fit", "pick_device"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Schedule and loss settings of one training run."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" or "step" (x0.1 at 50% and 75% of the epochs)
    temperature: float = 4.0
    kd_weight: float = 0.9  # weight of the soft-target term when a teacher is given
    seed: int = 0
    max_batches: int | None = None  # cap on batches per epoch (smoke runs)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if not 0.0 <= self.kd_weight <= 1.0 or self.temperature <= 0:
            raise ValueError("kd_weight must be in [0, 1] and temperature positive")


@dataclass
class TrainResult:
    """Per-epoch metrics and the final test accuracy (in [0, 1])."""

    history: list[dict] = field(default_factory=list)

    @property
    def test_accuracy(self) -> float:
        return float(self.history[-1]["test_acc"]) if self.history else float("nan")


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    kd_weight: float,
) -> torch.Tensor:
    """Hinton et al.'s combined hard-label and soft-target loss."""
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - kd_weight) * hard + kd_weight * temperature**2 * soft


@torch.no_grad()
def evaluate(model: nn.Module, splits: Splits, dataset: ImageDataset, device: torch.device,
             batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``."""
    model.eval()
    correct = 0
    for x, y in batches(splits, dataset, batch_size, train=False):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / max(1, len(dataset))


def _fingerprint(model: nn.Module, cfg: TrainConfig, teacher: nn.Module | None) -> str:
    arch = getattr(model, "config", None)
    blob = json.dumps(
        {
            "arch": arch.to_dict() if arch is not None else type(model).__name__,
            "train": asdict(cfg),
            "kd": teacher is not None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def fit(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool = False,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place (distilling from ``teacher`` if given).

    With ``checkpoint``, the state is saved after every epoch and an existing
    checkpoint of the same run (same architecture and settings) is resumed;
    one from a different run is refused.
    """
    dev = device if isinstance(device, torch.device) else pick_device(device)
    torch.manual_seed(cfg.seed)
    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=False)
    if cfg.schedule == "cosine":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=cfg.epochs)
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[cfg.epochs // 2, cfg.epochs * 3 // 4], gamma=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult()
    fingerprint = _fingerprint(model, cfg, teacher)
    start_epoch = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt} belongs to a different run (architecture or settings differ); "
                             "delete it or choose another output folder")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        result.history = json.loads(state["history"])
        start_epoch = len(result.history)
        _log.info("%s: resuming from %s at epoch %d", desc, ckpt, start_epoch)

    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    if cfg.max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_batches)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=(cfg.epochs - start_epoch) * steps_per_epoch, desc=desc, leave=False)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        began = time.perf_counter()
        seen = correct = 0
        total_loss = 0.0
        for step, (x, y) in enumerate(batches(splits, splits.train, cfg.batch_size, train=True,
                                              generator=gen)):
            if step >= steps_per_epoch:
                break
            x, y = x.to(dev), y.to(dev)
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = distillation_loss(logits, t_logits, y, cfg.temperature, cfg.kd_weight)
            else:
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss / seen:.3f}")
        sched.step()
        record = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": total_loss / max(1, seen),
            "train_acc": correct / max(1, seen),
            "test_acc": evaluate(model, splits, splits.test, dev),
            "seconds": time.perf_counter() - began,
        }
        result.history.append(record)
        _log.info("%s: %s", desc, json.dumps(record))
        if ckpt is not None:
            tmp = ckpt.with_suffix(ckpt.suffix + ".tmp")
            torch.save({"fingerprint": fingerprint, "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "generator": gen.get_state(), "history": json.dumps(result.history)}, tmp)
            os.replace(tmp, ckpt)
    if bar is not None:
        bar.close()
    model.eval()
    return result
