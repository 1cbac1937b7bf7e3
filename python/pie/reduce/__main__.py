"""``python -m pie.reduce``: the DeepReDuce pipeline from the command line.

  python -m pie.reduce criticality --dataset builtin --out runs/crit --epochs 5
  python -m pie.reduce run --arch resnet18 --dataset cifar100 --data DATA \\
      --relu-budget 50000 --out runs/c100-50k --epochs 200

``run`` trains the baseline (or takes ``--teacher``), ranks the stages by
criticality (or takes ``--ranking``), picks culling, thinning, alpha and rho to
meet the budget, distils the reduced network from the baseline and writes
``model.pt`` (pie's checkpoint format), ``report.json`` and ``pareto.png``.
Interrupted runs resume from the training state kept in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .data import DATASETS, DatasetNotFoundError, load_dataset
from .pipeline import MIN_WIDTH, base_config, criticality, run
from .train import TrainConfig


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="resnet18", choices=["resnet18"],
                   help="the baseline network family to reduce (default: resnet18)")
    p.add_argument("--dataset", default="builtin", choices=DATASETS,
                   help="builtin (no files needed), cifar10, cifar100, tinyimagenet or folder")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset folder (not needed for --dataset builtin)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize builtin/folder images to this many pixels (default 32)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--epochs", type=int, default=200, help="epochs of every training run")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch size (default 128)")
    p.add_argument("--lr", type=float, default=0.1, help="initial SGD learning rate (default 0.1)")
    p.add_argument("--schedule", choices=["cosine", "step"], default="cosine",
                   help="learning-rate schedule (default cosine)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--kd-weight", type=float, default=0.9,
                   help="weight of the soft-target loss when distilling (default 0.9)")
    p.add_argument("--max-batches", type=int, default=None,
                   help="at most this many batches per epoch (quick trials)")
    p.add_argument("--base-alpha", type=float, default=1.0,
                   help="width multiplier of the baseline itself (reshaping multiplies it)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_cfg(a: argparse.Namespace, epochs: int | None = None) -> TrainConfig:
    return TrainConfig(epochs=epochs or a.epochs, batch_size=a.batch_size, lr=a.lr,
                       schedule=a.schedule, temperature=a.temperature, kd_weight=a.kd_weight,
                       seed=a.seed, max_batches=a.max_batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pie.reduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    crit = sub.add_parser("criticality", help="train the baseline and rank the stages by criticality")
    _common(crit)
    crit.add_argument("--teacher", type=Path, default=None,
                      help="a trained baseline checkpoint to distil from instead of training one")
    r = sub.add_parser("run", help="the whole pipeline down to a ReLU budget")
    _common(r)
    r.add_argument("--relu-budget", type=int, required=True, help="maximum ReLUs of the result")
    r.add_argument("--teacher", type=Path, default=None,
                   help="a trained baseline checkpoint (skips baseline training)")
    r.add_argument("--criticality-epochs", type=int, default=None,
                   help="epochs of each criticality run (default: --epochs)")
    r.add_argument("--ranking", default=None,
                   help="stages from most to least critical, e.g. 3,2,4,1 (skips criticality)")
    r.add_argument("--thin", choices=["bottom", "top"], default="bottom",
                   help="which alternate ReLU layer thinning drops (default: bottom, post-add)")
    r.add_argument("--min-width", type=int, default=MIN_WIDTH,
                   help="narrowest stem (channels) that reshaping may reach for a small budget; "
                   f"stage widths follow (default {MIN_WIDTH})")
    r.add_argument("--compare-kd", action="store_true",
                   help="also train the reduced network without distillation, for comparison")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    try:
        splits = load_dataset(a.dataset, a.data, a.image_size)
    except (DatasetNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    a.out.mkdir(parents=True, exist_ok=True)
    if a.command == "criticality":
        from .. import models
        from ..models.checkpoint import load_checkpoint
        from .train import fit

        base = base_config(splits, a.base_alpha)
        if a.teacher:
            teacher = load_checkpoint(a.teacher)
        else:
            teacher = models.from_config(base)
            fit(teacher, splits, _train_cfg(a), device=a.device, checkpoint=a.out / "baseline.state",
                progress=not a.quiet, desc="baseline")
            teacher.cpu()
        result = criticality(base, splits, teacher, _train_cfg(a), work_dir=a.out,
                             device=a.device, progress=not a.quiet)
        (a.out / "criticality.json").write_text(json.dumps(result.to_dict(), indent=2))
        print(json.dumps(result.to_dict(), indent=2))
        return 0

    ranking = [int(s) for s in a.ranking.split(",")] if a.ranking else None
    if a.min_width < 1:
        parser.error("--min-width must be positive")
    try:
        report = run(splits, a.relu_budget, a.out, _train_cfg(a),
                     criticality_cfg=_train_cfg(a, a.criticality_epochs), base_alpha=a.base_alpha,
                     teacher_path=a.teacher, ranking=ranking, thin=a.thin, compare_kd=a.compare_kd,
                     min_width=a.min_width, device=a.device, progress=not a.quiet)
    except ValueError as exc:  # a budget no configuration reaches, a bad ranking
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"baseline: {report.baseline['relus']:,} ReLUs, accuracy {report.baseline['accuracy']:.4f}")
    if "accuracy" in report.criticality:
        print("criticality (stage: accuracy alone): " + ", ".join(
            f"{s}: {v:.4f}" for s, v in report.criticality["accuracy"].items()))
    print(f"chosen: culled stages {report.chosen['culled_stages']}, thinning "
          f"{report.chosen['thinning']}, alpha {report.chosen['config']['alpha']}, "
          f"rho {report.chosen['config']['rho']} -> {report.chosen['relus']:,} ReLUs")
    print(f"reduced (distilled): accuracy {report.reduced['accuracy']:.4f}")
    if report.reduced_without_kd:
        print(f"reduced (no distillation): accuracy {report.reduced_without_kd['accuracy']:.4f}")
    print(f"wrote {a.out / 'model.pt'}, {a.out / 'report.json'}, {a.out / 'pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
