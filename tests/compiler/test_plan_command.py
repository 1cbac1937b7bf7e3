"""``python -m pie plan``: the bundled demo model's plan, traffic and agreement."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from pie.__main__ import main
from pie.cost import Profile

DEMO = Path(str(resources.files("pie") / "data" / "demo_model.pt"))


def _profile(path: Path) -> Path:
    fields = {f.name: 1e-9 for f in dataclasses.fields(Profile) if f.name not in ("machine",)}
    fields.update(threads=1, bandwidth={"memory": 1e9, "tcp": 1e8}, rtt_s={"memory": 1e-5, "tcp": 1e-4})
    Profile(**fields).save(path)  # type: ignore[arg-type]
    return path


def test_plan_json_with_profile_and_calibration_file(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(8, 3, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "cal.npz", images=images)
    assert main(["plan", str(DEMO), "--json", "--calibration", str(tmp_path / "cal.npz"),
                 "--profile", str(_profile(tmp_path / "p.json")), "--transport", "tcp"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["relus"] == 3584 and doc["totals"]["relus"] == 3584
    gc_steps = [s for s in doc["steps"] if s["kind"] in ("relu", "truncate")]
    assert gc_steps and all(s["and_gates"] > 0 and s["round"] > 0 for s in gc_steps)
    assert sum(s["and_gates"] for s in doc["steps"]) == (
        doc["gc_cost"]["relu_and_gates"] + doc["gc_cost"]["truncate_and_gates"])
    assert doc["totals"]["offline_bytes"] > doc["totals"]["online_bytes"] > 0
    assert doc["times"]["online_seconds"] > 0 and doc["times"]["transport"] == "tcp"
    cal = doc["calibration"]
    assert cal["agreement"]["images"] == 8 and "cal.npz" in cal["source"]
    assert 0.0 <= cal["agreement"]["top1_agreement"] <= 1.0
    assert doc["policy"]["chosen_weight_bits"] and "tolerance" in doc["policy"]


def test_plan_table_without_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "layer2_0_relu1" in out and "AND gates" in out and "offline B" in out
    assert "need --profile" in out
    assert "64 uniformly random images" in out and "top-1 agreement" in out


@pytest.mark.parametrize("argv, message", [
    (["plan", "/nonexistent/model.pt"], "No such file"),
    (["plan", str(DEMO), "--arch", "no_such_net"], "unknown network"),
    (["plan", str(DEMO), "--calibration", "/nonexistent/cal.npz"], "does not exist"),
])
def test_plan_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err
