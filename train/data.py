"""Splits (train / val / test), transforms and DataLoaders.

Model selection never looks at a test split: val is `val/` when the data has one, else a seeded,
class-stratified `val_fraction` of train. `limit_train` then takes a seeded, class-balanced subset
of what is left for training. The eval transform is the runtime's own preprocessing, so what the
model is validated on is exactly what `onnx-predict` feeds it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from alexnet_onnx.runtime.contract import Preprocess
from alexnet_onnx.runtime.errors import DataError, ImageError
from alexnet_onnx.runtime.preprocess import channel_stats, normalize, preprocess

from .augment import Augmentation
from .config import DATASETS
from .sources import Source, find_cifar10, find_folder


@dataclass
class Split:
    source: Source
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Splits:
    classes: list[str]
    train: Split
    val: Optional[Split]
    test: Optional[Split]
    val_name: str  # where val came from, for reports


def load_splits(
    dataset: str, data_dir: Path, *, val_fraction: float, limit_train: Optional[int], seed: int, download: bool = True
) -> Splits:
    """The train/val/test splits; `download=False` (export) never fetches or creates anything."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (valid: {', '.join(DATASETS)})")
    data_dir = Path(data_dir)
    if dataset == "cifar10":
        train_src, test_src = find_cifar10(data_dir, download)
        val_src = None
    else:
        train_src, val_src, test_src = find_folder(data_dir, dataset, download)
    rng = random.Random(seed)
    train_idx = list(range(len(train_src)))
    if val_src is not None:
        val: Optional[Split] = Split(val_src, list(range(len(val_src))))
        val_name = "val/"
    elif val_fraction > 0:
        held = _stratified(train_src.labels, train_idx, val_fraction, rng)
        held_set = set(held)
        train_idx = [i for i in train_idx if i not in held_set]
        val, val_name = Split(train_src, held), f"seeded {val_fraction:g} of train (seed {seed})"
    else:
        val, val_name = None, "none (last epoch kept)"
    if limit_train is not None:
        train_idx = _balanced(train_src.labels, train_idx, limit_train, rng)
    test = Split(test_src, list(range(len(test_src)))) if test_src is not None else None
    return Splits(train_src.classes, Split(train_src, train_idx), val, test, val_name)


def _by_class(labels: Sequence[int], indices: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(labels[i], []).append(i)
    return groups


def _stratified(labels: Sequence[int], indices: Sequence[int], fraction: float, rng: random.Random) -> list[int]:
    held = []
    for _, members in sorted(_by_class(labels, indices).items()):
        rng.shuffle(members)
        held += members[: max(1, round(len(members) * fraction))] if len(members) > 1 else []
    return sorted(held)


def _balanced(labels: Sequence[int], indices: Sequence[int], n: int, rng: random.Random) -> list[int]:
    groups = sorted(_by_class(labels, indices).items())
    for _, members in groups:
        rng.shuffle(members)
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(m) for _, m in groups):
        for _, members in groups:  # round-robin over classes: balanced until a class runs out
            if depth < len(members) and len(picked) < n:
                picked.append(members[depth])
        depth += 1
    return sorted(picked)


def train_transform(augment: Augmentation, epoch: int) -> Callable:
    """The DataLoader side of the training augmentation in `epoch`, normalized as the in-memory
    store does."""
    mean, std = (torch.from_numpy(v) for v in channel_stats(augment.spec))
    return lambda image, key: normalize(augment.image(image, key, epoch), mean, std)


def eval_transform(spec: Preprocess) -> Callable:
    return lambda image, key: torch.from_numpy(preprocess(image, spec))


class ImageDataset(Dataset):
    """Items are (tensor, label), or None for an image that cannot be read (counted, skipped).
    Transforms take the image and its index in the source."""

    def __init__(self, split: Split, transform: Callable) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        index = self.split.indices[i]
        try:
            image = self.split.source.image(index)
        except ImageError:
            return None
        return self.transform(image, index), self.split.source.labels[index]


def collate_skipping_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    good = [item for item in batch if item is not None]
    bad = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    xs, ys = zip(*good)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), bad


def make_loader(
    split: Split, transform: Callable, *, batch_size: int, shuffle: bool, workers: int,
    generator: Optional[torch.Generator] = None, sampler=None,
) -> DataLoader:
    return DataLoader(
        ImageDataset(split, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping_bad,
        generator=generator,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
    )
