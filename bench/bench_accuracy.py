"""Accuracy of the fixed point on held-out images: float model against the
exact fixed-point Plan (``plan.run_reference``, which the secure output equals
bit for bit), for models trained on the built-in dataset.

Two models, each compiled as a server compiles it (``pie.serve.load_model``:
the checkpoint's input normalisation folded, its stored calibration sample
when it has one, default tolerance):

- the bundled demo model (16x16, trained on the built-in digits);
- a DRD_C100_12K-shaped network (10 classes, 32x32) trained here by
  ``pie.reduce.train.fit`` on the built-in training split and saved as
  ``pie.reduce`` saves its models (with a calibration sample of 64 training
  images). ``PIE_BENCH_TRAIN_EPOCHS`` sets its epochs (default 2, the smoke
  run; 30 for the reported figures, about a minute on two cores).

The held-out images are the built-in dataset's test split (360 images, at
each model's size), which neither training nor calibration sees.
``extra_info`` records, per model: the images, float and fixed-point top-1
accuracy, their difference in points, the top-1 agreement, the largest logit
error relative to the largest |logit|, and the Plan's truncations. Targets:
fixed-point top-1 within 0.2 points of float and agreement at least 99.5%.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import pie
from pie import serve
from pie.reduce.data import load_builtin
from pie.reduce.pipeline import save_model
from pie.reduce.train import TrainConfig, fit

EPOCHS = int(os.environ.get("PIE_BENCH_TRAIN_EPOCHS", "2"))


def held_out(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The built-in test split at ``size`` pixels: images in [0, 1] and labels."""
    test = load_builtin(size).test
    return test.images.numpy().astype(np.float64) / 255.0, test.labels.numpy()


def accuracy_figures(loaded: serve.LoadedModel, images: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    plan = loaded.plan
    want = plan.float_logits(loaded.net, images).reshape(len(images), -1)
    got = np.asarray(plan.run_reference(images)).reshape(len(images), -1)
    float_top1 = float(np.mean(want.argmax(1) == labels))
    fixed_top1 = float(np.mean(got.argmax(1) == labels))
    return {
        "images": len(images),
        "float_top1": float_top1,
        "fixed_top1": fixed_top1,
        "top1_difference_points": 100.0 * (fixed_top1 - float_top1),
        "top1_agreement": float(np.mean(got.argmax(1) == want.argmax(1))),
        "relative_logit_error": float(np.abs(got - want).max() / np.abs(want).max()),
        "truncations": sum(1 for s in plan.steps if s.kind == "truncate"),
        "relus": plan.relu_count(),
        "calibration": loaded.calibration_source,
        "target_top1_difference_points": 0.2,
        "target_agreement": 0.995,
    }


def test_demo_accuracy(benchmark) -> None:  # type: ignore[no-untyped-def]
    with resources.as_file(resources.files("pie") / "data" / "demo_model.pt") as path:
        loaded = serve.load_model(path)
    images, labels = held_out(loaded.plan.input_shape[-1])
    info = benchmark.pedantic(accuracy_figures, args=(loaded, images, labels), rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    assert info["images"] == len(labels)


@pytest.fixture(scope="module")
def trained_12k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DRD_C100_12K-shaped network trained on the built-in digits at 32x32,
    saved as ``pie.reduce`` saves its models (metadata and calibration sample)."""
    splits = load_builtin(32)
    net = pie.models.build("DRD_C100_12K", num_classes=len(splits.train.classes))
    fit(net, splits, TrainConfig(epochs=EPOCHS, batch_size=64, lr=0.05), device="cpu")
    path = tmp_path_factory.mktemp("trained") / "model.pt"
    save_model(net.eval(), path, splits)
    return path


def test_trained_12k_accuracy(benchmark, trained_12k: Path) -> None:  # type: ignore[no-untyped-def]
    loaded = serve.load_model(trained_12k)
    images, labels = held_out(32)
    info = benchmark.pedantic(accuracy_figures, args=(loaded, images, labels), rounds=1, iterations=1)
    info["epochs"] = EPOCHS
    benchmark.extra_info.update(info)
    assert info["calibration"].endswith("stored in the checkpoint")
