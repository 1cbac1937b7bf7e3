"""Training and distillation: the loss, learning, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pie import models
from pie.models import ResNetConfig
from pie.reduce import TrainConfig, distillation_loss, fit, load_dataset


def test_distillation_loss_formula() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    y = torch.randint(0, 7, (5,))
    T, w = 4.0, 0.7
    p_t = F.softmax(t / T, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, dim=1))).sum(1).mean()
    want = (1 - w) * F.cross_entropy(s, y) + w * T * T * kl
    assert torch.allclose(distillation_loss(s, t, y, T, w), want, atol=1e-6)
    assert torch.allclose(distillation_loss(s, t, y, T, 0.0), F.cross_entropy(s, y))
    assert float(distillation_loss(t, t, y, T, 1.0)) == pytest.approx(0.0, abs=1e-6)


def _tiny() -> tuple:
    splits = load_dataset("builtin", size=16)
    splits = type(splits)(**{**splits.__dict__, "train": splits.train.subset(128),
                             "test": splits.test.subset(64)})
    cfg = ResNetConfig(alpha=0.125, stem_relu=True, num_classes=10, input_size=16)
    return splits, cfg


def test_training_learns_something() -> None:
    splits, cfg = _tiny()
    net = models.from_config(cfg)
    res = fit(net, splits, TrainConfig(epochs=6, batch_size=32, lr=0.05))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.7 * losses[0]
    assert res.history[-1]["train_acc"] > 0.3


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    splits, cfg = _tiny()
    tc = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    torch.manual_seed(1)
    straight = models.from_config(cfg)
    fit(straight, splits, tc)

    from pie.reduce import train as train_mod

    real_evaluate = train_mod.evaluate
    calls = {"n": 0}

    def interrupt_after_first_epoch(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    ckpt = tmp_path / "run.state"
    torch.manual_seed(1)
    first = models.from_config(cfg)
    monkeypatch.setattr(train_mod, "evaluate", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(first, splits, tc, checkpoint=ckpt)
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)

    resumed = models.from_config(cfg)  # different initial weights: all comes from the checkpoint
    res = fit(resumed, splits, tc, checkpoint=ckpt)
    assert [h["epoch"] for h in res.history] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)

    other = TrainConfig(epochs=2, batch_size=32, lr=0.01)
    with pytest.raises(ValueError, match="different run"):
        fit(models.from_config(cfg), splits, other, checkpoint=ckpt)


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="kd_weight"):
        TrainConfig(kd_weight=1.5)
