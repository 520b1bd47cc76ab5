"""Where images come from: ImageFolder trees, CIFAR-10 python pickles, and the downloads that
produce them when a machine is online. A Source is a list of labels plus `image(i)` (RGB PIL)."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from alexnet_onnx.runtime.errors import DataError, StorageError
from alexnet_onnx.runtime.folders import class_folders
from alexnet_onnx.runtime.image import load_image
from alexnet_onnx.runtime.inputs import walk_images

CIFAR10_DIRNAME = "cifar-10-batches-py"
FLOWERS_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
FLOWERS_VAL_FRACTION = 0.2
FLOWERS_STAGING_PREFIX = ".flowers-download-"  # inside --data-dir while downloading and splitting


@dataclass
class Source:
    classes: list[str]
    labels: list[int]
    paths: Optional[list[Path]] = None  # files, or
    arrays: Optional[np.ndarray] = None  # (N, H, W, 3) uint8 images held in memory

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i], "RGB")
        return load_image(self.paths[i])


def image_folder(root: Path, classes: Optional[Sequence[str]] = None) -> Source:
    """root/<class>/**/<image> (runtime.folders' rules); with `classes` given, the folder must
    have exactly those."""
    found = class_folders(root)
    if classes is not None and found != list(classes):
        raise DataError(f"{root}: class folders {found} differ from the training classes {list(classes)}")
    if len(found) < 2:
        raise DataError(f"{root}: found {len(found)} class folder(s); need at least 2 (<class>/<image>)")
    paths, labels = [], []
    for index, name in enumerate(found):
        files = list(walk_images(root / name))
        paths += files
        labels += [index] * len(files)
    return Source(found, labels, paths=paths)


class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR-10 batches are pickles; allow only what numpy arrays need, never arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the CIFAR-10 folder") from None
    except Exception as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch file ({exc})") from None


def cifar10_pickles(folder: Path, train: bool) -> Source:
    try:
        meta = _unpickle(folder / "batches.meta")
        classes = [n.decode() if isinstance(n, bytes) else n for n in meta[b"label_names"]]
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        data, labels = [], []
        for name in names:
            batch = _unpickle(folder / name)
            data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += [int(x) for x in batch[b"labels"]]
        arrays = np.ascontiguousarray(np.concatenate(data))
    except DataError:
        raise
    except Exception as exc:  # missing keys, wrong shapes
        raise DataError(f"{folder}: not the CIFAR-10 python format ({type(exc).__name__}: {exc})") from None
    if len(arrays) != len(labels) or not classes or any(not 0 <= y < len(classes) for y in labels):
        raise DataError(f"{folder}: CIFAR-10 batches have inconsistent images, labels or class names")
    return Source(classes, labels, arrays=arrays)


def find_cifar10(data_dir: Path, download: bool = True) -> tuple[Source, Source]:
    """(train, test) from DIR/cifar-10-batches-py, DIR itself as that folder, an ImageFolder with
    train/ and test/, or — when none is there and `download` — torchvision's download into DIR."""
    for folder in (data_dir / CIFAR10_DIRNAME, data_dir):
        if (folder / "batches.meta").is_file():
            return cifar10_pickles(folder, True), cifar10_pickles(folder, False)
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        train = image_folder(data_dir / "train")
        return train, image_folder(data_dir / "test", train.classes)
    if not download:
        raise DataError(f"{data_dir}: no CIFAR-10 here ({CIFAR10_DIRNAME}/ or train/ and test/)")
    _download_cifar10(data_dir)
    folder = data_dir / CIFAR10_DIRNAME
    return cifar10_pickles(folder, True), cifar10_pickles(folder, False)


def _download_cifar10(data_dir: Path) -> None:
    from torchvision.datasets import CIFAR10

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(data_dir), train=True, download=True)
    except Exception as exc:  # URLError, HTTPError, timeouts, checksum failures
        raise DataError(
            f"{data_dir}: no CIFAR-10 here and the download failed ({str(exc)[:120]}); put "
            f"{CIFAR10_DIRNAME}/ (from cifar-10-python.tar.gz) or an ImageFolder with train/ and test/ there"
        ) from None


def find_folder(data_dir: Path, dataset: str, download: bool = True) -> tuple[Source, Optional[Source], Optional[Source]]:
    """(train, val or None, test or None) from an ImageFolder tree (flowers: downloaded into an
    empty DIR when `download`)."""
    if dataset == "flowers" and download and not (data_dir / "train").is_dir():
        _download_flowers(data_dir)
    if not (data_dir / "train").is_dir():
        raise DataError(f"{data_dir}: no train/ folder (expected {data_dir}/train/<class>/<image>)")
    train = image_folder(data_dir / "train")
    val = image_folder(data_dir / "val", train.classes) if (data_dir / "val").is_dir() else None
    test = image_folder(data_dir / "test", train.classes) if (data_dir / "test").is_dir() else None
    return train, val, test


def _download_flowers(data_dir: Path) -> None:
    """Fetch TensorFlow's flower_photos (3,670 photos, 5 classes) into an empty DIR and split it
    80/20, seeded. Everything happens in a staging folder inside DIR; val/ and then train/ are
    renamed into place, so a killed run never leaves a train/ to be used half-filled, and the
    staging folder it leaves behind is removed by the next run."""
    if data_dir.is_dir():
        for leftover in data_dir.glob(f"{FLOWERS_STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if any(data_dir.iterdir()):
            return  # not empty: let the caller report what is missing rather than write into it
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=FLOWERS_STAGING_PREFIX, dir=data_dir))
    except OSError as exc:
        raise StorageError(f"{data_dir}: cannot write the flowers download there ({exc.strerror or exc})") from None
    try:
        try:
            download_and_extract_archive(FLOWERS_URL, str(staging), remove_finished=True)
        except Exception as exc:
            raise DataError(
                f"{data_dir}: no flowers data and the download failed ({str(exc)[:120]}); download "
                f"flower_photos.tgz ({FLOWERS_URL}), unpack it and pass its folder of class folders "
                f"as {data_dir}/train"
            ) from None
        if not (staging / "flower_photos").is_dir():
            raise DataError(f"{FLOWERS_URL}: the archive holds no flower_photos/ folder; download and unpack it by hand")
        try:
            _split_flowers(staging / "flower_photos", staging)
            os.replace(staging / "val", data_dir / "val")
            os.replace(staging / "train", data_dir / "train")  # last: train/ is the sign of a complete split
        except OSError as exc:
            raise StorageError(f"{data_dir}: cannot write the flowers split there ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _split_flowers(photos: Path, into: Path) -> None:
    """photos/<class>/*.jpg -> into/val/<class> (a seeded FLOWERS_VAL_FRACTION) and into/train/<class>."""
    rng = random.Random(0)
    for class_dir in sorted(p for p in photos.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        rng.shuffle(files)
        n_val = round(len(files) * FLOWERS_VAL_FRACTION)
        for split, chunk in (("val", files[:n_val]), ("train", files[n_val:])):
            target = into / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for f in chunk:
                f.rename(target / f.name)
