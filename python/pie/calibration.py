"""Calibration images: read them from a file or a folder, or make random ones.

:func:`pie.compile` sizes the rings and chooses the precision on a calibration
set: images ``(N, C, H, W)`` with values in [0, 1]. :func:`load_calibration`
reads one from

* an ``.npz`` file holding one array, or an array named ``images`` (or an
  ``.npy`` array): float values in [0, 1], or ``uint8`` (divided by 255);
* a folder of PNG / JPEG images, each already of the network's input size
  (converted to RGB or greyscale to match C; nothing is resized).

Files are read with ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["CalibrationError", "IMAGE_SUFFIXES", "load_calibration", "random_calibration"]

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class CalibrationError(ValueError):
    """A calibration file or folder that cannot be used for the network."""


def load_calibration(path: PathLike, shape: tuple[int, int, int]) -> np.ndarray:
    """Read calibration images for a network with input ``shape`` = (C, H, W).

    Returns:
        float64 images ``(N, C, H, W)`` with values in [0, 1].

    Raises:
        CalibrationError: missing or unreadable file, no images, wrong shape or
            dtype, NaN / inf, or values outside [0, 1].
    """
    path = Path(path)
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3:
        raise CalibrationError(f"input shape must be (C, H, W), got {shape}")
    if path.is_dir():
        images = _read_folder(path, shape)
    elif path.is_file():
        images = _read_npz(path)
    else:
        raise CalibrationError(f"calibration file {os.fspath(path)!r} does not exist")
    return check_images(images, shape, str(path))


def check_images(images: np.ndarray, shape: tuple[int, ...], what: str = "calibration") -> np.ndarray:
    """``images`` as float64 ``(N, *shape)`` in [0, 1] (``uint8`` divided by 255).

    Raises:
        CalibrationError: empty, wrong shape or dtype, NaN / inf or values outside [0, 1].
    """
    arr = np.asarray(images)
    want = f"(N, {', '.join(map(str, shape))})"
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape):
        raise CalibrationError(f"{what}: images have shape {arr.shape}, expected {want}")
    if arr.shape[0] == 0:
        raise CalibrationError(f"{what}: no images")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype.kind != "f":
        raise CalibrationError(f"{what}: images must be float (values in [0, 1]) or uint8, got {arr.dtype}")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise CalibrationError(f"{what}: images contain NaN or inf")
    if out.min() < 0 or out.max() > 1:
        raise CalibrationError(
            f"{what}: values must lie in [0, 1], found [{out.min():g}, {out.max():g}] "
            "(store uint8 for 0..255)")
    return out


def random_calibration(shape: tuple[int, ...], n: int = 64, seed: int = 0, pixel_max: int = 255) -> np.ndarray:
    """``n`` uniformly random images on the ``pixel_max`` grid, as :func:`pie.compile`
    uses when it is given no calibration set (the same images for seed 0)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, pixel_max + 1, size=(n, *shape)) / float(pixel_max)


def _read_npz(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CalibrationError(f"cannot read calibration file {os.fspath(path)!r}: {exc}") from exc
    if isinstance(data, np.ndarray):  # a bare .npy array
        return data
    with data:
        names = list(data.files)
        key = "images" if "images" in names else names[0] if len(names) == 1 else None
        if key is None:
            raise CalibrationError(
                f"{path}: holds {len(names)} arrays {names[:5]}; expected one, or one named 'images'")
        try:
            return data[key]
        except (OSError, ValueError, EOFError) as exc:
            raise CalibrationError(f"cannot read array {key!r} of {os.fspath(path)!r}: {exc}") from exc


def _read_folder(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    if c not in (1, 3):
        raise CalibrationError(f"image folders need 1 or 3 channels, the network has {c}")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{path}: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images")
    out = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                if img.size != (w, h):
                    raise CalibrationError(
                        f"{f}: image is {img.size[0]}x{img.size[1]}, the network expects {w}x{h} "
                        "(width x height); resize the images first")
                px = np.asarray(img.convert("RGB" if c == 3 else "L"), dtype=np.uint8)
        except CalibrationError:
            raise
        except (OSError, UnidentifiedImageError) as exc:
            raise CalibrationError(f"cannot read image {os.fspath(f)!r}: {exc}") from exc
        out[i] = px.transpose(2, 0, 1) if c == 3 else px[None]
    return out
