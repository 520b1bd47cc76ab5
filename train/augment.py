"""The training augmentation, defined once. Both input pipelines apply it: the DataLoader to one
PIL image at a time (`Augmentation.image`), the in-memory store to whole uint8 batches on the
training device (`Augmentation.batch`); both draw their crops from `Augmentation.sample`, so the
choice of `--cache` changes the speed, not the recipe.

The source of every crop is the contract's geometry with a `resize` x `resize` crop (shorter side
resized to `resize`, centre square), what the store keeps in memory. Then, by the arch's kind:

- "pad-crop" (32-px models): reflect-pad by `translate` pixels (default crop // 8) and take a
  crop x crop window at a uniform integer offset;
- "resized-crop": torchvision's RandomResizedCrop over that square: area U(0.08, 1) of it, log
  aspect U(log 3/4, log 4/3), the first of 10 draws that fits, else the whole square; a uniform
  integer offset; resized to crop x crop (bilinear);

and a horizontal flip: with probability 1/2 ("random"), or "alternate" (Jordan, 2024, "94% on
CIFAR-10 in 3.29 seconds"): in even epochs an image is mirrored when a hash of (seed, its index in
the source) says so, in odd epochs when it does not, so every two epochs show each image once each
way; then, with `cutout` > 0, Cutout (DeVries & Taylor, 2017): a cutout x cutout square centred at
a uniform pixel of the crop, clipped at its edges, is set to the dataset mean (0 after
normalization). The alternating flip replaces the random one after it is drawn, and Cutout is
drawn last, so a run without either draws exactly what it always drew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from alexnet_onnx.runtime.contract import Preprocess
from alexnet_onnx.runtime.preprocess import PIXEL_SCALE, resize_and_crop

from .config import FLIPS

KINDS = ("pad-crop", "resized-crop")
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10


@dataclass(frozen=True)
class Crops:
    """Crop windows in the source square's pixels (in the padded square for pad-crop)."""

    top: torch.Tensor  # int64 (n,)
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor  # bool (n,)
    cut: Optional[torch.Tensor] = None  # int64 (n, 2): Cutout's centre (row, column) in the crop


@dataclass(frozen=True)
class Augmentation:
    kind: str
    spec: Preprocess
    translate: Optional[int] = None  # pad-crop's padding; None: crop // 8
    cutout: int = 0  # side of the Cutout square in crop pixels; 0 = off
    flip: str = "random"  # one of FLIPS
    seed: int = 0  # the alternating flip's hash key

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"augmentation {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.flip not in FLIPS:
            raise ValueError(f"flip {self.flip!r} is not one of {', '.join(FLIPS)}")

    @property
    def pad(self) -> int:
        if self.kind != "pad-crop":
            return 0
        return self.spec.crop // 8 if self.translate is None else self.translate

    def source(self, image: Image.Image) -> Image.Image:
        """The square every crop is cut from (what the in-memory store keeps)."""
        return resize_and_crop(image, replace(self.spec, crop=self.spec.resize))

    def sample(self, n: int, generator: Optional[torch.Generator] = None, keys: Optional[torch.Tensor] = None,
               epoch: int = 0) -> Crops:
        """n crops; `keys` (n,) are the images' indices in their source, which the alternating flip
        needs (with the epoch)."""
        crops = self._crops(n, generator)
        if self.flip == "alternate":
            if keys is None or len(keys) != n:
                raise ValueError("the alternating flip needs each image's key")
            crops = replace(crops, flip=alternating_flips(keys, self.seed, epoch))
        if self.cutout:  # drawn last, so a run without Cutout draws exactly what it always drew
            crops = replace(crops, cut=torch.randint(0, self.spec.crop, (n, 2), generator=generator))
        return crops

    def _crops(self, n: int, generator: Optional[torch.Generator]) -> Crops:
        size, crop = self.spec.resize, self.spec.crop
        flip = torch.rand(n, generator=generator) < 0.5
        if self.kind == "pad-crop":
            span = size + 2 * self.pad - crop + 1
            top = torch.randint(0, span, (n,), generator=generator)
            left = torch.randint(0, span, (n,), generator=generator)
            side = torch.full((n,), crop, dtype=torch.long)
            return Crops(top, left, side, side.clone(), flip)
        area = size * size * torch.empty(n, TRIES).uniform_(*SCALE, generator=generator)
        aspect = torch.exp(torch.empty(n, TRIES).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator))
        w = torch.round(torch.sqrt(area * aspect)).long()
        h = torch.round(torch.sqrt(area / aspect)).long()
        fits = (w > 0) & (h > 0) & (w <= size) & (h <= size)
        first = fits.long().argmax(dim=1)  # the first draw that fits, as torchvision's loop takes
        rows = torch.arange(n)
        any_fit = fits.any(dim=1)
        w = torch.where(any_fit, w[rows, first], torch.full_like(first, size))
        h = torch.where(any_fit, h[rows, first], torch.full_like(first, size))
        top = (torch.rand(n, generator=generator) * (size - h + 1)).long()
        left = (torch.rand(n, generator=generator) * (size - w + 1)).long()
        return Crops(top, left, h, w, flip)

    def image(self, image: Image.Image, key: Optional[int] = None, epoch: int = 0) -> torch.Tensor:
        """One PIL image (index `key` in its source) -> augmented float32 (3, crop, crop) on the
        0..255 scale (DataLoader path); draws from torch's global generator, which DataLoader seeds
        per worker."""
        square, crop = self.source(image), self.spec.crop
        c = self.sample(1, keys=None if key is None else torch.tensor([key]), epoch=epoch)
        top, left, h, w = (int(v[0]) for v in (c.top, c.left, c.height, c.width))
        if self.kind == "pad-crop":
            pad = self.pad
            array = np.pad(np.asarray(square), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")[top : top + h, left : left + w]
        else:
            array = np.asarray(square.resize((crop, crop), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)))
        x = torch.from_numpy(np.array(array)).permute(2, 0, 1).float()  # a writable copy
        return self._cut((x.flip(2) if bool(c.flip[0]) else x)[None], c)[0]

    def batch(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, keys: Optional[torch.Tensor] = None,
              epoch: int = 0) -> torch.Tensor:
        """uint8 source squares (b, 3, resize, resize), the images `keys` of the source ->
        augmented float32 (b, 3, crop, crop), 0..255."""
        b, crop, device = len(x), self.spec.crop, x.device
        c = self.sample(b, generator, keys, epoch)
        flip = c.flip.to(device)[:, None, None, None]
        if self.kind == "pad-crop":
            pad = self.pad
            padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
            rows = (c.top[:, None] + torch.arange(crop)).to(device)
            cols = (c.left[:, None] + torch.arange(crop)).to(device)
            out = padded[torch.arange(b, device=device)[:, None, None, None], torch.arange(3, device=device)[None, :, None, None],
                         rows[:, None, :, None], cols[:, None, None, :]]
            return self._cut(torch.where(flip, out.flip(3), out), c)
        size = self.spec.resize
        theta = torch.zeros(b, 2, 3)  # output [-1, 1] -> the crop window in the source's [-1, 1]
        theta[:, 0, 0] = c.width / size
        theta[:, 0, 2] = (2 * c.left + c.width) / size - 1
        theta[:, 1, 1] = c.height / size
        theta[:, 1, 2] = (2 * c.top + c.height) / size - 1
        grid = F.affine_grid(theta.to(device), [b, 3, crop, crop], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return self._cut(torch.where(flip, out.flip(3), out), c)

    def _cut(self, x: torch.Tensor, c: Crops) -> torch.Tensor:
        """Cutout on crops x (b, 3, crop, crop), 0..255: the mean inside each square."""
        if c.cut is None:
            return x
        lo = (c.cut - self.cutout // 2).to(x.device)  # (b, 2): first row / column of the square
        pixels = torch.arange(self.spec.crop, device=x.device)
        inside = [(pixels >= lo[:, k, None]) & (pixels < lo[:, k, None] + self.cutout) for k in (0, 1)]
        mask = (inside[0][:, :, None] & inside[1][:, None, :])[:, None]  # (b, 1, crop, crop)
        mean = torch.tensor(self.spec.mean, dtype=x.dtype, device=x.device)[:, None, None] * PIXEL_SCALE  # 0 once normalized
        return torch.where(mask, mean, x)


def alternating_flips(keys: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """bool (n,): whether each image (by its index in the source) is mirrored in `epoch`. Even
    epochs take a bit of a 32-bit integer hash of (seed, key), odd epochs its opposite; the same
    in every process and pipeline, with no state to save for --resume."""
    mask = 0xFFFFFFFF
    x = (keys.long() & mask) ^ ((seed * 0x9E3779B1) & mask)
    for _ in range(3):  # multiply-xorshift rounds: products stay below 2**59, no int64 overflow
        x = (((x >> 16) ^ x) * 0x45D9F3B) & mask
    x = (x >> 16) ^ x
    return ((x & 1) == 1) ^ bool(epoch % 2)
