"""Calibration sets: files and folders (pie.calibration), samples stored in checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pie
import pie.models as models
from pie.calibration import CalibrationError, load_calibration, random_calibration
from pie.models.checkpoint import CheckpointError, calibration_sample, checkpoint_meta, save_checkpoint

SHAPE = (3, 8, 8)


def _images(n: int = 5, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_npz_float_uint8_and_named(tmp_path: Path) -> None:
    u8 = _images()
    np.savez(tmp_path / "u8.npz", u8)
    got = load_calibration(tmp_path / "u8.npz", SHAPE)
    assert got.dtype == np.float64 and np.array_equal(got, u8 / 255.0)
    np.savez(tmp_path / "f.npz", other=np.zeros(3), images=(u8 / 255.0).astype(np.float32))
    assert np.allclose(load_calibration(tmp_path / "f.npz", SHAPE), u8 / 255.0, atol=1e-7)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.full((2, *SHAPE), np.nan)}, "NaN or inf"),
    ({"x": np.full((2, *SHAPE), np.inf)}, "NaN or inf"),
    ({"x": np.full((2, *SHAPE), 1.5)}, r"\[0, 1\]"),
    ({"x": -np.ones((2, *SHAPE))}, r"\[0, 1\]"),
    ({"x": np.zeros((0, *SHAPE))}, "no images"),
    ({"x": np.zeros((2, 3, 16, 16))}, r"expected \(N, 3, 8, 8\)"),
    ({"x": np.zeros((2, *SHAPE), dtype=np.int32)}, "float .* or uint8"),
    ({"a": np.zeros((2, *SHAPE)), "b": np.zeros((2, *SHAPE))}, "one named 'images'"),
])
def test_npz_refuses_bad_contents(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationError, match=message):
        load_calibration(path, SHAPE)


def test_refuses_pickles_and_missing_or_garbled_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "obj.npz", SHAPE)
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "missing.npz", SHAPE)
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "junk.npz", SHAPE)


def test_image_folder(tmp_path: Path) -> None:
    u8 = _images(3)
    for i, img in enumerate(u8):
        Image.fromarray(img.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    assert np.array_equal(load_calibration(tmp_path, SHAPE), u8 / 255.0)
    grey = load_calibration(tmp_path, (1, 8, 8))  # converted to L to match C = 1
    assert grey.shape == (3, 1, 8, 8)
    with pytest.raises(CalibrationError, match="expects 16x16"):
        load_calibration(tmp_path, (3, 16, 16))
    (tmp_path / "broken.jpg").write_bytes(b"no jpeg")
    with pytest.raises(CalibrationError, match="cannot read image"):
        load_calibration(tmp_path, SHAPE)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError, match="no png/jpg/jpeg images"):
        load_calibration(empty, SHAPE)


def test_random_calibration_is_on_the_pixel_grid() -> None:
    x = random_calibration(SHAPE, 4)
    assert x.shape == (4, *SHAPE) and np.array_equal(np.rint(x * 255), x * 255)
    assert np.array_equal(x, random_calibration(SHAPE, 4))


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    cfg = models.ResNetConfig(alpha=0.125, num_classes=10, input_size=8)
    return models.from_config(cfg).eval()


def test_checkpoint_sample_round_trips(tmp_path: Path, net: torch.nn.Module) -> None:
    u8 = _images(4)
    save_checkpoint(net, tmp_path / "u8.pt", meta={"a": 1}, calibration=torch.from_numpy(u8))
    assert np.array_equal(calibration_sample(tmp_path / "u8.pt"), u8 / 255.0)
    assert checkpoint_meta(tmp_path / "u8.pt") == {"a": 1}
    # weights_only loading sees a plain tensor entry.
    stored = torch.load(tmp_path / "u8.pt", weights_only=True)["calibration"]
    assert stored.dtype == torch.uint8 and tuple(stored.shape) == (4, *SHAPE)
    # Floats on the 8-bit grid are stored exactly as uint8; others as float16.
    save_checkpoint(net, tmp_path / "grid.pt", calibration=u8 / 255.0)
    assert torch.load(tmp_path / "grid.pt", weights_only=True)["calibration"].dtype == torch.uint8
    assert np.array_equal(calibration_sample(tmp_path / "grid.pt"), u8 / 255.0)
    off = np.random.default_rng(1).random((2, *SHAPE))
    save_checkpoint(net, tmp_path / "f16.pt", calibration=off)
    assert torch.load(tmp_path / "f16.pt", weights_only=True)["calibration"].dtype == torch.float16
    assert np.allclose(calibration_sample(tmp_path / "f16.pt"), off, atol=1e-3)
    save_checkpoint(net, tmp_path / "none.pt")
    assert calibration_sample(tmp_path / "none.pt") is None
    assert pie.load_checkpoint(tmp_path / "u8.pt").config == net.config


def test_checkpoint_sample_refuses_bad_images(tmp_path: Path, net: torch.nn.Module) -> None:
    with pytest.raises(CheckpointError, match=r"\[0, 1\]"):
        save_checkpoint(net, tmp_path / "x.pt", calibration=np.full((2, *SHAPE), 2.0))
    with pytest.raises(CheckpointError, match="N, C, H, W"):
        save_checkpoint(net, tmp_path / "x.pt", calibration=np.zeros(SHAPE))
    # A hand-made file whose sample is not uint8/float16 images is refused on reading.
    save_checkpoint(net, tmp_path / "ok.pt")
    obj = torch.load(tmp_path / "ok.pt", weights_only=True)
    obj["calibration"] = torch.zeros(2, *SHAPE, dtype=torch.float64)
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="uint8 or float16"):
        calibration_sample(tmp_path / "bad.pt")
