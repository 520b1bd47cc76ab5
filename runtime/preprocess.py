"""The eval transform in Pillow + numpy, equal to torchvision's
Resize(resize) -> CenterCrop(crop) -> ToTensor() -> Normalize(mean, std) on PIL images.

It follows torchvision's arithmetic to the letter: the long side becomes
`int(resize * long / short)`, an image already at that size is not resampled, the crop offset is
`int(round((side - crop) / 2))`, and the float32 operations happen in the same order.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .contract import Preprocess

# Above this many resized pixels (aspect ratios beyond ~250:1) only the window that survives the
# crop is resampled, to keep memory bounded; values there may differ from torchvision by one
# grey level. Below it the result is exactly torchvision's.
_MAX_RESIZED_PIXELS = 16_000_000


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_width, new_height) with the shorter side equal to `size`, as torchvision computes it."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def resize_and_crop(im: Image.Image, spec: Preprocess) -> Image.Image:
    """The geometric part of the transform, on an RGB PIL image."""
    w, h = im.size
    new_w, new_h = resized_size(w, h, spec.resize)
    box = crop_box(new_w, new_h, spec.crop)
    if (new_w, new_h) == (w, h):
        return im.crop(box)
    if new_w * new_h > _MAX_RESIZED_PIXELS:
        sx, sy = w / new_w, h / new_h
        source_box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        return im.resize((spec.crop, spec.crop), Image.Resampling.BILINEAR, box=source_box)
    return im.resize((new_w, new_h), Image.Resampling.BILINEAR).crop(box)


PIXEL_SCALE = 255.0  # ToTensor: 8-bit levels to [0, 1]


def channel_stats(spec: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) as float32 arrays of shape (3, 1, 1), to broadcast over (..., 3, H, W)."""
    return tuple(np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in (spec.mean, spec.std))


def normalize(levels, mean, std):
    """ToTensor + Normalize on float32 8-bit levels: (levels / 255 - mean) / std, torchvision's
    float32 operations in its order. Only `/` and `-`, so numpy arrays and torch tensors (with
    `channel_stats` moved to the tensor's device) give the same bits."""
    return (levels / PIXEL_SCALE - mean) / std


@functools.lru_cache(maxsize=8)
def _lookup_table(spec: Preprocess) -> np.ndarray:
    """(3, 256) float32: the value ToTensor + Normalize give each 8-bit level, per channel, so a
    lookup is bit-identical to normalizing the pixels."""
    levels = np.arange(256, dtype=np.float32).reshape(1, 1, 256)
    return normalize(levels, *channel_stats(spec)).reshape(3, 256)


def to_array(im: Image.Image, spec: Preprocess) -> np.ndarray:
    """RGB or L PIL image -> normalized float32 array (3, H, W); L counts as R = G = B."""
    pixels = np.asarray(im, dtype=np.uint8)
    table = _lookup_table(spec)
    out = np.empty((3, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels if pixels.ndim == 2 else pixels[:, :, channel], out=out[channel])
    return out


def preprocess(im: Image.Image, spec: Preprocess) -> np.ndarray:
    """An 8-bit RGB or grey (L) PIL image (see runtime.image) -> float32 array (3, crop, crop).
    Pillow resamples each channel alike, so an L image gives exactly what its RGB copy would."""
    if im.mode not in ("RGB", "L"):
        raise ValueError(f"preprocess expects an RGB or L image, got mode {im.mode!r} (use runtime.image.load_image)")
    return to_array(resize_and_crop(im, spec), spec)
