"""Dataset readers on small synthetic files in the real on-disk layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pie.reduce import data
from pie.reduce.data import DatasetNotFoundError, load_dataset


def _cifar_batch(path: Path, n: int, label_key: str, classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    y = rng.integers(0, classes, size=n).tolist()
    # Byte-string keys and protocol 2, as in the published python-pickle files.
    with open(path, "wb") as f:
        pickle.dump({b"data": x, label_key.encode(): y, b"batch_label": b"synthetic"}, f, protocol=2)
    return x, y


def test_cifar10_layout(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    train = [_cifar_batch(root / f"data_batch_{i}", 4, "labels", 10, i) for i in range(1, 6)]
    test_x, test_y = _cifar_batch(root / "test_batch", 3, "labels", 10, 9)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    splits = load_dataset("cifar10", tmp_path)  # the parent folder works too
    assert len(splits.train) == 20 and len(splits.test) == 3
    assert splits.train.classes[3] == "c3"
    # Row-major 3072 bytes = 3 planes of 32x32, red first.
    assert torch.equal(splits.train.images[5], torch.from_numpy(train[1][0][1].reshape(3, 32, 32)))
    assert splits.test.labels.tolist() == test_y
    assert splits.image_shape == (3, 32, 32) and splits.num_classes == 10


def test_cifar100_layout(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    x, y = _cifar_batch(root / "train", 6, "fine_labels", 100, 1)
    _cifar_batch(root / "test", 2, "fine_labels", 100, 2)
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, f, protocol=2)
    splits = load_dataset("cifar100", root)
    assert splits.train.labels.tolist() == y and splits.num_classes == 100
    assert torch.equal(splits.train.images[0].flatten(), torch.from_numpy(x[0]))


def test_cifar_missing_files_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="data_batch_1.*cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="train, test"):
        load_dataset("cifar100", tmp_path)


def test_cifar_hostile_pickle_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    for name in ("train", "test"):
        with open(root / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"fine_labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_dataset("cifar100", tmp_path)


def _write_image(path: Path, size: int, colour: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).convert(mode).save(path)


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, w in enumerate(wnids):
        for i in range(3):
            _write_image(root / "train" / w / "images" / f"{w}_{i}.JPEG", 64, (200 * k, 10, 10))
    _write_image(root / "train" / wnids[0] / "images" / "gray.JPEG", 64, (90, 90, 90), mode="L")
    lines = []
    for i, w in enumerate([wnids[1], wnids[0]]):
        _write_image(root / "val" / "images" / f"val_{i}.JPEG", 64, (0, 0, 250))
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    splits = load_dataset("tinyimagenet", tmp_path)
    assert len(splits.train) == 7 and splits.image_shape == (3, 64, 64)
    assert splits.test.labels.tolist() == [1, 0]
    assert splits.train.classes == tuple(wnids)
    # A grayscale JPEG becomes three equal channels.
    gray = splits.train.images[splits.train.labels == 0][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\n")
    with pytest.raises(ValueError, match="val_annotations.txt:1"):
        load_dataset("tinyimagenet", root)


def test_tiny_imagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="wnids.txt"):
        load_dataset("tinyimagenet", tmp_path)


def test_image_folder_with_and_without_splits(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
            for i in range(2):
                _write_image(tmp_path / "a" / split / cls / f"{i}.png", 20, colour)
    splits = load_dataset("folder", tmp_path / "a", size=16)
    assert splits.train.classes == ("cat", "dog") and len(splits.test) == 4
    assert splits.image_shape == (3, 16, 16)
    red = splits.train.images[splits.train.labels == 0][0]
    assert int(red[0].min()) == 255 and int(red[1].max()) == 0

    for cls in ("x", "y"):
        for i in range(10):
            _write_image(tmp_path / "b" / cls / f"{i}.jpg", 8, (i, i, i))
    single = load_dataset("folder", tmp_path / "b", size=8)
    assert len(single.train) == 16 and len(single.test) == 4
    with pytest.raises(DatasetNotFoundError, match="class sub-folders"):
        load_dataset("folder", tmp_path / "b" / "x")


def test_builtin_needs_no_files() -> None:
    splits = load_dataset("builtin", size=16)
    assert splits.image_shape == (3, 16, 16) and splits.num_classes == 10
    assert len(splits.train) + len(splits.test) == 1797
    assert not splits.flip
    x, y = next(data.batches(splits, splits.test, 32, train=False))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert abs(float(splits.normalize(splits.train.images).mean())) < 1e-3


def test_unknown_dataset_and_missing_dir() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet22k", ".")
    with pytest.raises(ValueError, match="--data"):
        load_dataset("cifar10", None)


def test_augmentation_crops_and_flips_without_inventing_pixels() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).remainder(251).add(1).to(torch.uint8)
    images = images.view(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = data._augment(images, pad=2, flip=True, generator=gen)
    assert out.shape == images.shape
    # Every output pixel is zero padding or a pixel of the same image and channel.
    for n in range(2):
        for c in range(3):
            allowed = set(images[n, c].flatten().tolist()) | {0}
            assert set(out[n, c].flatten().tolist()) <= allowed
    same = data._augment(images, pad=0, flip=False, generator=gen)
    assert torch.equal(same, images)
