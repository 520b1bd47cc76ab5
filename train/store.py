"""An in-memory uint8 image store with batched augmentation on the training device.

Each image is decoded once (runtime's image policy) into a compact uint8 tensor, kept on the
training device; every epoch then only indexes it and augments whole batches with tensor ops, so
per-image PIL work in DataLoader workers does not bound the training speed.

- train store: images resized (shorter side = `resize`) and centre-cropped to `resize` x `resize`,
  the source squares of train.augment, which augments whole batches (the DataLoader path applies
  the same augmentation image by image).
- eval store: exactly the contract geometry (Resize + CenterCrop), normalized on the device with
  the same float32 operations as runtime/preprocess.py, so validation sees what onnx-predict sees.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np
import torch

from alexnet_onnx.runtime.contract import Preprocess
from alexnet_onnx.runtime.errors import ImageError
from alexnet_onnx.runtime.session import available_cores
from alexnet_onnx.runtime.preprocess import channel_stats, normalize, resize_and_crop

from .augment import Augmentation
from .data import Split


class ImageStore:
    """uint8 images (N, 3, S, S) and labels (N,) on `device`; `bad` counts images that failed."""

    def __init__(self, split: Split, spec: Preprocess, *, device: torch.device, augment: Optional[Augmentation] = None) -> None:
        """`augment`: a training store (source squares, augmented batches); None: an eval store."""
        train = augment is not None
        size = spec.resize if train else spec.crop

        def load(index: int) -> Optional[np.ndarray]:
            try:
                image = split.source.image(index)
            except ImageError:
                return None
            return np.asarray(augment.source(image) if augment else resize_and_crop(image, spec), dtype=np.uint8)

        with ThreadPoolExecutor(max_workers=available_cores()) as pool:
            arrays = list(pool.map(load, split.indices))
        keep = [i for i, a in enumerate(arrays) if a is not None]
        self.bad = len(arrays) - len(keep)
        stacked = np.stack([arrays[i] for i in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
        self.images = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().to(device)
        self.keys = torch.tensor([split.indices[i] for i in keep], dtype=torch.long)  # indices in the source
        labels = [split.source.labels[split.indices[i]] for i in keep]
        self.labels = torch.tensor(labels, dtype=torch.long, device=device)
        self.spec, self.train, self.augment, self.device = spec, train, augment, device
        self.mean, self.std = (torch.from_numpy(v).to(device) for v in channel_stats(spec))

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32, by runtime.preprocess's own arithmetic."""
        return normalize(x.float(), self.mean, self.std)

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None,
                shard: tuple[int, int] = (0, 1), epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(inputs, labels, 0) batches: shuffled and augmented (as in `epoch`) when training, in
        order for eval. `shard=(rank, world)` gives each process its own slice of the same
        permutation."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        rank, world = shard
        if world > 1:  # every process must run the same number of steps (as DistributedSampler pads)
            order = torch.cat([order, order[: (-len(order)) % world]])
        order = order[rank::world]
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            idx = picked.to(self.device)
            x = self.images[idx]
            if self.train:
                x = self.augment.batch(x, generator, self.keys[picked], epoch)
            yield self.normalize(x), self.labels[idx], 0
