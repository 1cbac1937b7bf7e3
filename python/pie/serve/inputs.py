"""Client inputs: image and ``.npy`` files (and folders of them) read, checked,
and fitted to the served network's input shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["fit_input", "input_files", "load_input", "read_input"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# More than any network here takes (a 3x1024x1024 float64 image is 24 MiB).
MAX_INPUT_ELEMENTS = 1 << 26


def input_files(paths: list[Path]) -> list[Path]:
    """The input files named by ``paths``: files as given, and each folder's
    images and ``.npy`` arrays in name order (not recursive).

    Raises:
        ValueError: a folder without inputs, or no inputs at all.
    """
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
            if not found:
                raise ValueError(f"{path}: a folder with no images or .npy files")
            out += found
        else:
            out.append(path)
    if not out:
        raise ValueError("no input given")
    return out


def read_input(path: str | Path) -> np.ndarray:
    """Read and check an input file, before its network's shape is known:
    ``.npy`` (a numeric array, e.g. (C, H, W), values in [0, 1]) or an image
    (``.png``, ``.jpg``, ...: decoded to RGB, (3, H, W) scaled to [0, 1]).

    Raises:
        ValueError: a missing, unreadable, empty or undecodable file, or
            values that are NaN, infinite or outside [0, 1] (one-line messages).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise ValueError(f"{path}: empty file")
    x = _read_npy(path) if path.suffix.lower() == ".npy" else _read_image(path)
    if x.size == 0:
        raise ValueError(f"{path}: empty array {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{path}: values must lie in [0, 1] (found {x.min():g} to {x.max():g})")
    return x


def _read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file's numeric array, as float64; the header is checked
    first (no pickles, no objects, no absurd sizes)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ValueError(f"{path}: not a NumPy array file (.npy)")
            f.seek(0)
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"{path}: not a NumPy array file (.npy version {version})")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a NumPy array file (bad header)") from None
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.names is not None:
        raise ValueError(f"{path}: holds {dtype} values, expected numbers")
    if int(np.prod(shape, dtype=np.int64)) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"{path}: array of shape {tuple(shape)} is far too large for an image")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated data and the like
        raise ValueError(f"{path}: not a readable NumPy array file ({_first_line(exc)})") from None
    return np.asarray(x, dtype=np.float64)


def _read_image(path: Path) -> np.ndarray:
    """An image file decoded to RGB, (3, H, W) float64 in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_INPUT_ELEMENTS:
                raise ValueError(f"{path}: image of {img.width}x{img.height} pixels is far too large")
            img.load()
            rgb = img.convert("RGB")
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable image ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
        raise ValueError(f"{path}: not a readable image ({_first_line(exc)})") from None
    return np.asarray(rgb, dtype=np.float64).transpose(2, 0, 1) / 255.0


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fit_input(x: np.ndarray, shape: tuple[int, ...], *, resize: bool = False,
              source: str | Path = "input") -> np.ndarray:
    """``x`` (from :func:`read_input` of ``source``) checked against the served
    network's input ``shape``. The rule is the same for images and arrays: a
    different size is refused with the size expected, unless ``resize`` is
    set; then an image file is resized to fit (an ``.npy`` array never is:
    resizing is for image files only).

    Raises:
        ValueError: the shape does not fit.
    """
    shape = tuple(shape)
    if x.shape == shape:
        return x
    is_image = Path(source).suffix.lower() in IMAGE_SUFFIXES
    if resize and is_image and len(shape) == 3 and shape[0] == x.shape[0]:
        from PIL import Image

        img = Image.fromarray(np.rint(x.transpose(1, 2, 0) * 255).astype(np.uint8))
        img = img.resize((shape[2], shape[1]))
        return np.asarray(img, dtype=np.float64).transpose(2, 0, 1) / 255.0
    if is_image and len(shape) == 3 and x.ndim == 3 and x.shape[0] == shape[0]:
        raise ValueError(f"{source} is {x.shape[2]}x{x.shape[1]} pixels, the served network expects "
                         f"{shape[2]}x{shape[1]} (shape {shape}); pass --resize to resize it")
    hint = " (--resize is for image files only)" if resize and not is_image else ""
    raise ValueError(f"{source} has shape {x.shape}, the served network expects {shape}{hint}")


def load_input(path: str | Path, shape: tuple[int, ...], *, resize: bool = False) -> np.ndarray:
    """An image for the plan: ``.npy`` (values in [0, 1], (C, H, W)) or
    ``.png``/``.jpg`` (see :func:`read_input` and :func:`fit_input`: one of
    another size is refused unless ``resize``).

    Raises:
        ValueError: unreadable file, bad values, or a shape that does not fit.
    """
    return fit_input(read_input(path), shape, resize=resize, source=path)
