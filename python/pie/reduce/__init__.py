"""The DeepReDuce pipeline: produce ReLU-reduced networks that pie serves.

``python -m pie.reduce run ...`` chains it all; the pieces are importable:
datasets (:mod:`pie.reduce.data`), training and distillation
(:mod:`pie.reduce.train`) and the DeepReDuce steps (:mod:`pie.reduce.pipeline`).
"""

from __future__ import annotations

from .data import DATASETS, DatasetNotFoundError, ImageDataset, Splits, load_dataset
from .pipeline import (
    Candidate,
    CriticalityResult,
    RunReport,
    candidates,
    choose_config,
    criticality,
    reduce_to_budget,
    run,
    stage_only,
)
from .train import TrainConfig, TrainResult, distillation_loss, evaluate, fit

__all__ = [
    "DATASETS",
    "Candidate",
    "CriticalityResult",
    "DatasetNotFoundError",
    "ImageDataset",
    "RunReport",
    "Splits",
    "TrainConfig",
    "TrainResult",
    "candidates",
    "choose_config",
    "criticality",
    "distillation_loss",
    "evaluate",
    "fit",
    "load_dataset",
    "reduce_to_budget",
    "run",
    "stage_only",
]
