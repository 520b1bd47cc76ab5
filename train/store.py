"""An in-memory uint8 image store with batched augmentation on the training device.

Each image is decoded once (runtime's image policy) into a compact uint8 tensor, kept on the
training device; every epoch then only indexes it and augments whole batches with tensor ops, so
training is no longer bound by per-image PIL work in DataLoader workers.

- train store: images resized (shorter side = `resize`) and centre-cropped to `resize` x `resize`;
  augmentation = random-resized crop to `crop` (one affine_grid/grid_sample per batch, bilinear)
  or, for 32px models, reflect-padded random crop; plus horizontal flip.
- eval store: exactly the contract geometry (Resize + CenterCrop), normalized on the device with
  the same float32 operations as runtime/preprocess.py, so validation sees what onnx-predict sees.
"""

from __future__ import annotations

import math
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from runtime.contract import Preprocess
from runtime.errors import ImageError
from runtime.session import available_cores
from runtime.preprocess import resize_and_crop

from .data import Split


class ImageStore:
    """uint8 images (N, 3, S, S) and labels (N,) on `device`; `bad` counts images that failed."""

    def __init__(self, split: Split, spec: Preprocess, *, train: bool, device: torch.device) -> None:
        size = spec.resize if train else spec.crop
        # train: the contract's geometry with a resize x resize crop, so random crops see more
        geometry = replace(spec, crop=spec.resize) if train else spec

        def load(index: int) -> Optional[np.ndarray]:
            try:
                image = split.source.image(index)
            except ImageError:
                return None
            return np.asarray(resize_and_crop(image, geometry), dtype=np.uint8)

        with ThreadPoolExecutor(max_workers=available_cores()) as pool:
            arrays = list(pool.map(load, split.indices))
        keep = [i for i, a in enumerate(arrays) if a is not None]
        self.bad = len(arrays) - len(keep)
        stacked = np.stack([arrays[i] for i in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
        self.images = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous().to(device)
        labels = [split.source.labels[split.indices[i]] for i in keep]
        self.labels = torch.tensor(labels, dtype=torch.long, device=device)
        self.spec, self.train, self.device = spec, train, device
        self.mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)[None, :, None, None]
        self.std = torch.tensor(spec.std, dtype=torch.float32, device=device)[None, :, None, None]

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32, the same operations in the same order as runtime.preprocess."""
        return (x.float() / 255.0 - self.mean) / self.std

    def batches(self, batch_size: int, generator: Optional[torch.Generator] = None,
                shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(inputs, labels, 0) batches: shuffled and augmented when training, in order for eval.
        `shard=(rank, world)` gives each process its own slice of the same permutation."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        rank, world = shard
        if world > 1:  # every process must run the same number of steps (as DistributedSampler pads)
            order = torch.cat([order, order[: (-len(order)) % world]])
        order = order[rank::world]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size].to(self.device)
            x = self.images[idx]
            if self.train:
                x = self.augment(x, generator)
            yield self.normalize(x), self.labels[idx], 0

    def augment(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Random crop + horizontal flip for a whole uint8 batch; returns uint8-valued floats."""
        b, crop = len(x), self.spec.crop
        flip = torch.rand(b, generator=generator) < 0.5
        if crop <= 64:  # small images: reflect-pad by crop/8 and take a random crop
            pad = crop // 8
            padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
            oy = torch.randint(0, 2 * pad + x.shape[-2] - crop + 1, (b,), generator=generator)
            ox = torch.randint(0, 2 * pad + x.shape[-1] - crop + 1, (b,), generator=generator)
            rows = (oy[:, None] + torch.arange(crop)).to(x.device)
            cols = (ox[:, None] + torch.arange(crop)).to(x.device)
            out = padded[torch.arange(b, device=x.device)[:, None, None, None],
                         torch.arange(3, device=x.device)[None, :, None, None],
                         rows[:, None, :, None], cols[:, None, None, :]]
            return torch.where(flip.to(x.device)[:, None, None, None], out.flip(3), out)
        theta = _random_resized_crop_theta(b, generator, flip)
        grid = F.affine_grid(theta.to(x.device), [b, 3, crop, crop], align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _random_resized_crop_theta(
    b: int, generator: Optional[torch.Generator], flip: torch.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """Affine matrices (b, 2, 3) for torchvision-style RandomResizedCrop in normalized coordinates."""
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta
