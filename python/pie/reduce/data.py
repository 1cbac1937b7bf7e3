"""Image datasets for the DeepReDuce pipeline, with torch-only augmentation.

Readers (nothing is ever downloaded; a missing dataset raises
:class:`DatasetNotFoundError` naming the files to put where):

- ``cifar10`` / ``cifar100``: the python-pickle layout (``cifar-10-batches-py``
  with ``data_batch_1..5`` and ``test_batch``; ``cifar-100-python`` with
  ``train``, ``test`` and ``meta``), read with a restricted unpickler;
- ``tinyimagenet``: the ``tiny-imagenet-200`` folder layout (``wnids.txt``,
  ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val/val_annotations.txt``);
- ``folder``: a class-per-folder image tree (``train/<class>/*`` and
  ``test/<class>/*`` or ``val/<class>/*``; a single tree is split 80/20);
- ``builtin``: scikit-learn's bundled handwritten digits, resized to RGB
  ``size x size``; needs no files at all.

Images are held in memory as uint8 tensors ``(N, 3, H, W)``; batches are
normalised floats.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CIFAR100_STATS",
    "CIFAR10_STATS",
    "DATASETS",
    "DatasetNotFoundError",
    "ImageDataset",
    "Splits",
    "TINY_IMAGENET_STATS",
    "batches",
    "load_builtin",
    "load_cifar",
    "load_dataset",
    "load_image_folder",
    "load_tiny_imagenet",
]

DATASETS = ("builtin", "cifar10", "cifar100", "tinyimagenet", "folder")

# Per-channel statistics on the [0, 1] scale, as commonly used for these sets.
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
TINY_IMAGENET_STATS = ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".webp"}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they were expected."""


@dataclass(frozen=True)
class ImageDataset:
    """Images (uint8, ``(N, 3, H, W)``), labels (int64) and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 tensor (N, C, H, W)")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must hold one label per image")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(
            self.classes
        ):
            raise ValueError("labels must index classes")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, n: int, seed: int = 0) -> ImageDataset:
        """A random subset of at most ``n`` images (deterministic for a seed)."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return replace(self, images=self.images[idx], labels=self.labels[idx])


@dataclass(frozen=True)
class Splits:
    """Train and test sets with the normalisation and augmentation that suit them."""

    name: str
    train: ImageDataset
    test: ImageDataset
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True  # horizontal flips are wrong for digits, right for photos
    crop_padding: int = 4

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float tensors with the dataset's mean and std."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std


def batches(
    splits: Splits,
    dataset: ImageDataset,
    batch_size: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised ``(images, labels)`` batches.

    With ``train=True`` the order is shuffled and each image gets a random crop
    (zero padding of ``crop_padding`` pixels) and, if the dataset allows it, a
    random horizontal flip.
    """
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        images = dataset.images[idx]
        if train:
            images = _augment(images, splits.crop_padding, splits.flip, generator)
        yield splits.normalize(images), dataset.labels[idx]


def _augment(
    images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None
) -> torch.Tensor:
    n, _, h, w = images.shape
    if pad > 0:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
        batch = torch.arange(n).view(n, 1, 1, 1)
        chan = torch.arange(images.shape[1]).view(1, -1, 1, 1)
        images = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        images = torch.where(mask.view(n, 1, 1, 1), images.flip(3), images)
    return images


# ----------------------------------------------------------------- readers


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: CIFAR files are
    pickles, and an arbitrary pickle can run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_pickle(path: Path) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a CIFAR python-pickle batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path} lacks the keys 'data' and {label_key!r}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data of shape (N, 3072) and N labels")
    return data.reshape(-1, 3, 32, 32), labels


def _names(raw: object) -> tuple[str, ...]:
    return tuple(x.decode() if isinstance(x, bytes) else str(x) for x in raw)  # type: ignore[union-attr]


def load_cifar(root: str | os.PathLike[str], num_classes: int) -> Splits:
    """CIFAR-10 or CIFAR-100 in the python-pickle layout under ``root``.

    ``root`` may be the extracted folder itself or the folder that contains it.
    """
    if num_classes not in (10, 100):
        raise ValueError("num_classes must be 10 or 100")
    root = Path(root)
    sub = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    folder = root / sub if (root / sub).is_dir() else root
    if num_classes == 10:
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files, meta_file, label_key, names_key = [folder / "test_batch"], "batches.meta", "labels", "label_names"
        stats = CIFAR10_STATS
    else:
        train_files, test_files = [folder / "train"], [folder / "test"]
        meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
        stats = CIFAR100_STATS
    missing = [p.name for p in train_files + test_files if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-{num_classes} not found: expected {', '.join(missing)} in {folder} "
            f"(extract the python version of the dataset so that {root}/{sub}/ holds them)"
        )

    def read(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_cifar_arrays(p, label_key) for p in files]
        return (
            torch.from_numpy(np.concatenate([p[0] for p in parts])),
            torch.from_numpy(np.concatenate([p[1] for p in parts])),
        )

    meta_path = folder / meta_file
    classes = (
        _names(_read_pickle(meta_path)[names_key])
        if meta_path.is_file()
        else tuple(str(i) for i in range(num_classes))
    )
    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    return Splits(
        name=f"cifar{num_classes}",
        train=ImageDataset(train_x, train_y, classes),
        test=ImageDataset(test_x, test_y, classes),
        mean=stats[0],
        std=stats[1],
    )


def _load_image(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _stack(images: list[np.ndarray], labels: list[int], classes: tuple[str, ...]) -> ImageDataset:
    if not images:
        raise DatasetNotFoundError("no images found")
    return ImageDataset(
        torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), classes
    )


def load_tiny_imagenet(root: str | os.PathLike[str]) -> Splits:
    """TinyImageNet-200 (64x64, 200 classes) in its standard folder layout.

    The labelled ``val`` split serves as the test set (the official test split
    has no labels).
    """
    root = Path(root)
    folder = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    wnids_file = folder / "wnids.txt"
    annotations = folder / "val" / "val_annotations.txt"
    for needed in (wnids_file, folder / "train", annotations):
        if not needed.exists():
            raise DatasetNotFoundError(
                f"TinyImageNet not found: {needed} is missing (extract tiny-imagenet-200 so that "
                f"{folder} holds wnids.txt, train/<wnid>/images/ and val/val_annotations.txt)"
            )
    wnids = tuple(line.strip() for line in wnids_file.read_text().splitlines() if line.strip())
    index = {w: i for i, w in enumerate(wnids)}
    train_x, train_y = [], []
    for wnid in wnids:
        for path in sorted((folder / "train" / wnid / "images").glob("*")):
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                train_x.append(_load_image(path, 64))
                train_y.append(index[wnid])
    test_x, test_y = [], []
    for lineno, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(f"{annotations}:{lineno}: expected '<file>\\t<wnid>...', got {line!r}")
        test_x.append(_load_image(folder / "val" / "images" / fields[0], 64))
        test_y.append(index[fields[1]])
    return Splits(
        name="tinyimagenet",
        train=_stack(train_x, train_y, wnids),
        test=_stack(test_x, test_y, wnids),
        mean=TINY_IMAGENET_STATS[0],
        std=TINY_IMAGENET_STATS[1],
    )


def _stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    x = images.float() / 255.0
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def load_image_folder(root: str | os.PathLike[str], size: int = 32, seed: int = 0) -> Splits:
    """A class-per-folder image tree, resized to ``size x size`` RGB.

    Uses ``root/train`` and ``root/test`` (or ``root/val``) when present;
    otherwise splits ``root`` itself 80/20 per class, deterministically.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    train_dir = root / "train" if (root / "train").is_dir() and test_dir else root
    classes = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
    if not classes:
        raise DatasetNotFoundError(f"{train_dir} has no class sub-folders (expected {train_dir}/<class>/<image>)")

    def read(base: Path) -> tuple[list[np.ndarray], list[int]]:
        xs, ys = [], []
        for label, name in enumerate(classes):
            for path in sorted((base / name).glob("*")):
                if path.suffix.lower() in _IMAGE_SUFFIXES:
                    xs.append(_load_image(path, size))
                    ys.append(label)
        return xs, ys

    xs, ys = read(train_dir)
    if test_dir is not None:
        train = _stack(xs, ys, classes)
        test = _stack(*read(test_dir), classes)
    else:
        full = _stack(xs, ys, classes)
        gen = torch.Generator().manual_seed(seed)
        test_idx = []
        for label in range(len(classes)):
            members = torch.nonzero(full.labels == label).flatten()
            members = members[torch.randperm(len(members), generator=gen)]
            test_idx.append(members[: len(members) // 5])
        is_test = torch.zeros(len(full), dtype=torch.bool)
        is_test[torch.cat(test_idx)] = True
        train = replace(full, images=full.images[~is_test], labels=full.labels[~is_test])
        test = replace(full, images=full.images[is_test], labels=full.labels[is_test])
    mean, std = _stats(train.images)
    return Splits(name="folder", train=train, test=test, mean=mean, std=std)


def load_builtin(size: int = 32, seed: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) as RGB
    ``size x size`` images, split 80/20 deterministically. No files needed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    classes = tuple(str(i) for i in range(10))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = len(order) * 4 // 5
    train = ImageDataset(images[order[:cut]].contiguous(), labels[order[:cut]], classes)
    test = ImageDataset(images[order[cut:]].contiguous(), labels[order[cut:]], classes)
    mean, std = _stats(train.images)
    return Splits(
        name="builtin", train=train, test=test, mean=mean, std=std, flip=False,
        crop_padding=max(1, size // 8),
    )


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, size: int | None = None) -> Splits:
    """Load a dataset by name (see :data:`DATASETS`).

    ``size`` resizes ``builtin`` and ``folder`` images (default 32); the CIFAR
    and TinyImageNet readers keep their native 32 and 64 pixels.
    """
    if name == "builtin":
        return load_builtin(size or 32)
    if data_dir is None:
        raise ValueError(f"dataset {name!r} needs a data directory (--data DIR)")
    if name == "cifar10":
        return load_cifar(data_dir, 10)
    if name == "cifar100":
        return load_cifar(data_dir, 100)
    if name == "tinyimagenet":
        return load_tiny_imagenet(data_dir)
    if name == "folder":
        return load_image_folder(data_dir, size or 32)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
