"""The DeepReDuce steps: configuration choice and the whole pipeline on the built-in data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pie
from pie.models import ResNetConfig
from pie.reduce import candidates, choose_config, load_dataset, reduce_to_budget, stage_only
from pie.reduce.__main__ import main as reduce_main

# DeepReDuce's CIFAR-100 criticality order (most to least critical) makes the
# released configurations the budget's choices (counts from REFERENCE.md).
RANKING = [3, 2, 4, 1]
EXPECTED = {
    230_000: (229_376, (True, False, False, False), (False, False), 1.0, 1.0),
    120_000: (114_688, (True, False, False, False), (False, True), 1.0, 1.0),
    60_000: (57_344, (True, False, False, False), (False, True), 0.5, 1.0),
    50_000: (49_152, (True, False, False, True), (False, True), 0.5, 1.0),
    30_000: (28_672, (True, False, False, False), (False, True), 1.0, 0.5),
    13_000: (12_288, (True, False, False, True), (False, True), 0.5, 0.5),
}


def test_budgets_pick_the_released_configurations() -> None:
    base = ResNetConfig(stem_relu=True, num_classes=100)
    pool = candidates(base, RANKING, (3, 32, 32))
    for budget, (relus, culled, thinned, alpha, rho) in EXPECTED.items():
        c = choose_config(pool, budget)
        assert (c.relus, c.config.culled, c.config.thinned, c.config.alpha, c.config.rho) == (
            relus, culled, thinned, alpha, rho), budget
        assert not c.config.stem_relu
    with pytest.raises(ValueError, match="no configuration fits"):
        choose_config(pool, 1000)


def test_stage_only_keeps_one_stage() -> None:
    base = ResNetConfig(stem_relu=True)
    counts = {s: pie.relu_count(pie.models.from_config(stage_only(base, s)), (3, 32, 32)) for s in (1, 4)}
    assert counts == {1: 262_144, 4: 32_768}  # the stage totals of REFERENCE.md
    with pytest.raises(ValueError):
        stage_only(base, 5)
    with pytest.raises(ValueError, match="ranking"):
        candidates(base, [1, 2, 3], (3, 32, 32))


def test_whole_pipeline_on_builtin_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    budget = 1500
    args = ["run", "--dataset", "builtin", "--image-size", "16", "--base-alpha", "0.125",
            "--epochs", "1", "--max-batches", "3", "--batch-size", "32", "--relu-budget",
            str(budget), "--out", str(out), "--compare-kd", "--quiet"]
    assert reduce_main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["criticality"]["ranking"]) == [1, 2, 3, 4]
    assert set(report["criticality"]["accuracy"]) == {"1", "2", "3", "4"}
    model = pie.load_checkpoint(out / "model.pt")
    relus = pie.relu_count(model, (3, 16, 16))
    assert relus == report["chosen"]["relus"] == report["reduced"]["relus"] <= budget
    splits = load_dataset("builtin", size=16)
    base = ResNetConfig(alpha=0.125, stem_relu=True, num_classes=10, input_size=16)
    best = choose_config(candidates(base, report["criticality"]["ranking"], (3, 16, 16)), budget)
    assert best.config == model.config and splits.num_classes == 10
    meta = pie.checkpoint_meta(out / "model.pt")
    assert meta["input_norm"] == {"mean": list(splits.mean), "std": list(splits.std)}
    assert meta["input_shape"] == [3, 16, 16] and meta["classes"] == list(splits.train.classes)
    # model.pt carries 64 training images (uint8, exact) for the server to calibrate on.
    sample = pie.calibration_sample(out / "model.pt")
    assert sample is not None and sample.shape == (64, 3, 16, 16)
    assert np.array_equal(sample, splits.train.subset(64, seed=0).images.numpy() / 255.0)
    # The checkpoint compiles (normalisation folded into the stem) and the
    # fixed-point plan agrees with the float network on real test images.
    images = splits.test.images[:64].float() / 255.0
    norm = (meta["input_norm"]["mean"], meta["input_norm"]["std"])
    plan = pie.compile(model, (3, 16, 16), input_norm=norm, calibration=images)
    report_cal = plan.calibrate(images, model)
    assert report_cal.top1_agreement >= 0.95
    # ... and runs under the two-party engine with the secure result equal to the reference.
    x = images[0].numpy()
    logits, secure_report = pie.infer(plan, x)
    assert np.array_equal(logits, plan.run_reference(x))
    assert secure_report.relus == relus
    assert sum(s.kind == "relu" for s in plan.steps) == sum(
        1 for layer in pie.relu_report(model, (3, 16, 16)).layers)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["reduced_without_kd"]["relus"] == relus
    assert "chosen: culled stages" in capsys.readouterr().out

    # A second run into the same folder resumes every training from its saved state.
    assert reduce_main(args) == 0
    assert json.loads((out / "report.json").read_text())["reduced"] == report["reduced"]
    points = json.loads((out / "models.json").read_text())
    assert len(points) == len({json.dumps(p, sort_keys=True) for p in points})


def test_criticality_command(tmp_path: Path) -> None:
    out = tmp_path / "crit"
    assert reduce_main(["criticality", "--dataset", "builtin", "--image-size", "16", "--base-alpha",
                        "0.125", "--epochs", "1", "--max-batches", "2", "--batch-size", "32",
                        "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "criticality.json").read_text())
    assert sorted(result["ranking"]) == [1, 2, 3, 4]
    assert {int(k) for k in result["relus"]} == {1, 2, 3, 4}
    # Stage s alone at 16x16, alpha 0.125: the stage's share of ReLUs.
    assert result["relus"]["1"] == 2 * 2 * 8 * 16 * 16


def test_cli_reports_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        reduce_main(["run", "--dataset", "cifar100", "--data", str(tmp_path), "--relu-budget", "1",
                     "--out", str(tmp_path / "o")])


def test_search_counts_equal_the_traced_networks() -> None:
    """The search counts ReLUs from the configuration's shapes; the built
    networks have exactly those (odd sizes, rho down to 1/8, both thinnings)."""
    base = ResNetConfig(stem_relu=True, num_classes=10, blocks=(2, 1, 1, 2))
    for shape in ((3, 32, 32), (3, 17, 23)):
        pool = candidates(base, RANKING, shape, alphas=(0.125, 0.0625), rhos=(1.0, 0.25, 0.125))
        for c in pool[::5]:
            assert c.relus == pie.relu_count(pie.models.from_config(c.config), shape), c.config


def test_budget_below_the_released_configurations_extends_reshaping() -> None:
    base = ResNetConfig(stem_relu=True, num_classes=10)
    pool = candidates(base, RANKING, (3, 32, 32))
    assert min(c.relus for c in pool) > 3000
    c = reduce_to_budget(base, RANKING, (3, 32, 32), 3000)
    assert c.relus <= 3000 and c.config.alpha < 0.5 and c.config.stem_width >= 8
    assert pie.relu_count(pie.models.from_config(c.config), (3, 32, 32)) == c.relus
    # A budget the released configurations meet picks what choose_config picks.
    assert reduce_to_budget(base, RANKING, (3, 32, 32), 13_000) == choose_config(pool, 13_000)


def test_reshaping_stops_at_the_minimum_and_names_the_smallest() -> None:
    # A narrow 16x16 base: no alpha step is left above the minimum width, so
    # rho halves until 4x4 pixels remain after the stem.
    base = ResNetConfig(alpha=0.125, stem_relu=True, num_classes=10, input_size=16)
    c = reduce_to_budget(base, RANKING, (3, 16, 16), 100)
    assert c.relus <= 100 and c.config.rho == 0.25
    with pytest.raises(ValueError, match=r"smallest reachable has 32 \(alpha 0.0625, rho 0.25"):
        reduce_to_budget(base, RANKING, (3, 16, 16), 20)
