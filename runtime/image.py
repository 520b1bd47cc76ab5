"""The image policy: how any file or PIL image becomes the 8-bit RGB image the model sees.

Training datasets and the runtime both call `load_image` / `to_rgb`, so a photo is read the same
way in both places (the contract names this policy `IMAGE_POLICY`):

- EXIF orientation is applied (`ImageOps.exif_transpose`); multi-frame files use the first frame;
- alpha (RGBA, LA, PA, P or L/RGB with a transparency key) is composited onto white;
- 16-bit integer images are scaled to 8 bits (value/257, rounded), not clamped; 32-bit integer
  images holding 0..65535 are treated as 16-bit, wider ones are scaled from 0..2**31-1;
  float images are clipped to [0, 1];
- every other mode (L, 1, P, CMYK, YCbCr, ...) goes through Pillow's `convert("RGB")`.

Only the formats in `ALLOWED_FORMATS` are opened, and images over `MAX_PIXELS` are refused from
their header, before any pixel is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
# Register exactly the allowed formats (cheaper than Image.init(), which imports every plugin).
from PIL import (  # noqa: F401
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from .errors import ImageError, first_line

# Formats a camera, phone, browser or dataset produces (JPEG covers multi-picture MPO files);
# no PDF/EPS/FITS/PSD and friends.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# Pillow's own default bomb threshold; we refuse (rather than warn) above it.
MAX_PIXELS = 89_478_485

ImageSource = Union[str, os.PathLike, Image.Image]


def load_image(source: ImageSource) -> Image.Image:
    """Open a path (or take a PIL image) and return it as 8-bit RGB under the policy above."""
    if isinstance(source, Image.Image):
        return to_rgb(_first_frame_upright(source))
    path = Path(source)
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as im:
            _check_size(im, path)
            im = _first_frame_upright(im)
            im.load()
            return to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{path}: not an image in a supported format ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        # Truncated or garbled data surfaces from the decoders as any of these.
        raise ImageError(f"{path}: cannot decode image ({first_line(exc)})") from None


def _check_size(im: Image.Image, path: Path) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"{path}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{path}: refused as a possible decompression bomb ({w}x{h} = {w * h} pixels > {MAX_PIXELS})"
        )


_EXIF_ORIENTATION = 0x0112


def _first_frame_upright(im: Image.Image) -> Image.Image:
    # A freshly opened file is at its first frame; only transpose (which copies) when needed.
    if im.getexif().get(_EXIF_ORIENTATION, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB following the policy in this module's docstring."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in im.info and mode in ("P", "L", "RGB", "1")
    ):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if mode == "I" and (values.min(initial=0) < 0 or values.max(initial=0) > 65535):
            eight = np.clip(values, 0, 2**31 - 1) >> 23
        else:
            eight = (values + 128) // 257
        return _gray_to_rgb(eight.astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        return _gray_to_rgb(np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8))
    return im.convert("RGB")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.stack([gray] * 3, axis=-1)), "RGB")
