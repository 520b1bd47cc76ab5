"""The image policy: how any file or PIL image becomes the 8-bit RGB image the model sees.

Training datasets and the runtime both call `load_image` (or `opened` + `decode`), so a photo is read the same
way in both places (the contract names this policy `IMAGE_POLICY`):

- EXIF orientation is applied (`ImageOps.exif_transpose`); multi-frame files use the first frame;
- alpha (RGBA, LA, PA, P or L/RGB with a transparency key) is composited onto white;
- 16-bit integer images are scaled to 8 bits (value/257, rounded), not clamped; 32-bit integer
  images holding 0..65535 are treated as 16-bit, wider ones are scaled from 0..2**31-1;
  float images are clipped to [0, 1]; a transparency key of such an image is applied after the
  scaling (its pixels become white);
- every other mode (L, 1, P, CMYK, YCbCr, ...) goes through Pillow's `convert("RGB")`.

Only regular files are opened (a FIFO or device is refused without blocking), only in the
formats in `ALLOWED_FORMATS`; files over `MAX_FILE_BYTES`, or past the structure bounds of
`image_structure` (JPEG scans, PNG chunks, TIFF strips and tiles), images over `MAX_PIXELS`, or whose decoding would need more than
`DECODE_BUDGET` bytes (estimated from the header: bytes per pixel of the decoded mode, the
conversion and the EXIF rotation), are refused before any pixel is decoded. Conversions work in
bands of rows, so a deep image costs its decoded size plus its 8-bit result, and grey images stay
one byte per pixel (`decode` returns "L" or "RGB"; `load_image` always RGB).
"""

from __future__ import annotations

import io
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
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
from .files import NotRegularFile, open_regular
from .image_structure import check_structure
from .image_structure import check_size as check_file_size

# Formats a camera, phone, browser or dataset produces (JPEG covers multi-picture MPO files);
# no PDF/EPS/FITS/PSD and friends.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# Pillow's own default bomb threshold; we refuse (rather than warn) above it.
MAX_PIXELS = 89_478_485
# Bytes that all images being decoded at once may hold; one image needing more is refused.
DECODE_BUDGET = 1 << 30
# Bytes per pixel Pillow holds for a decoded image of each mode (RGB and friends use 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}
_DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# `decode="fast"`: JPEGs decode at a DCT scale keeping the shorter side >= this x the contract's
# resize, then take the exact resize and crop. Chosen by benchmarks/decode_agreement.py: the error
# at the model input grows as the decoded side nears the resize (1.05x: 0.73 grey levels mean,
# 1.48x: 0.45, 2.1x: 0.27), and 1.45 admits the 1/8 scale of 12-Mpixel photos (4000x3000 and
# 4032x3024 give 1.46x-1.48x for a 256 resize) but not the 1.05x of a 2-Mpixel one at 1/4.
FAST_DECODE_FACTOR = 1.45
DECODE_MODES = ("exact", "fast")
BAND_PIXELS = 1 << 20  # pixels converted at a time: temporaries stay a few MB



@dataclass(frozen=True)
class Encoded:
    """An image file's bytes already read (e.g. from object storage), under the name errors show."""

    name: str
    data: bytes


ImageSource = Union[str, os.PathLike, Image.Image, Encoded]


def load_image(source: ImageSource) -> Image.Image:
    """Open a path (or take a PIL image) and return it as 8-bit RGB under the policy above."""
    with opened(source) as im:
        out = decode(im)
        return out if out.mode == "RGB" else out.convert("RGB")


@contextmanager
def opened(source: ImageSource, *, min_side: int | None = None) -> Iterator[Image.Image]:
    """The image at `source`, its header read and checked, not yet decoded (a PIL image passes
    through). Failures inside the block, decoding included, become one-line ImageErrors.

    `min_side` (the fast decode path): a JPEG is set to decode at the smallest DCT scale (1/2,
    1/4 or 1/8) whose shorter side is still at least `min_side` pixels."""
    if isinstance(source, Image.Image):
        yield source
        return
    path = Path(source.name) if isinstance(source, Encoded) else Path(source)
    with _image_errors(path), \
            (io.BytesIO(source.data) if isinstance(source, Encoded) else os.fdopen(open_regular(path), "rb")) as f:
        check_file_size(f.seek(0, os.SEEK_END), str(path))
        check_structure(f, str(path))
        with Image.open(f, formats=ALLOWED_FORMATS) as im:
            _check_pixels(im, path)
            if min_side is not None:
                _draft(im, min_side)
            _check_budget(im, path)
            yield im


def read_file(path: Path, name: str) -> Encoded:
    """The bytes of the image file at `path`, refused as `opened` refuses it (not a regular file,
    missing, unreadable, or larger than MAX_FILE_BYTES), under the name errors show."""
    with _image_errors(Path(name)), os.fdopen(open_regular(path), "rb") as f:
        check_file_size(os.fstat(f.fileno()).st_size, name)
        return Encoded(name, f.read())


@contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """Every failure to open, read or decode `path` as one ImageError line."""
    try:
        yield
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except NotRegularFile:
        raise ImageError(f"{path}: not a regular file (a pipe, socket or device); skipped") from None
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


def _check_pixels(im: Image.Image, path: Path) -> None:
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"{path}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{path}: refused as a possible decompression bomb ({w}x{h} = {w * h} pixels > {MAX_PIXELS})"
        )


def _draft(im: Image.Image, min_side: int) -> None:
    w, h = im.size
    if im.format != "JPEG" or min(w, h) < 2 * min_side:
        return  # not a JPEG, or already too small for even a 1/2 scale
    scale = min_side / min(w, h)
    # Pillow picks the largest DCT reduction whose result is at least the size asked for.
    im.draft(im.mode, (math.ceil(w * scale), math.ceil(h * scale)))


def _check_budget(im: Image.Image, path: Path) -> None:
    w, h = im.size
    cost = decode_cost(im)
    if cost > DECODE_BUDGET:
        raise ImageError(
            f"{path}: decoding this {w}x{h} {im.mode} image needs ~{cost >> 20} MiB, "
            f"more than the {DECODE_BUDGET >> 20} MiB budget"
        )


_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> int:
    return im.getexif().get(_EXIF_ORIENTATION, 1)


def _converts(im: Image.Image) -> bool:
    return not (im.mode in ("RGB", "L") and "transparency" not in im.info)


def decode_cost(im: Image.Image) -> int:
    """Peak bytes `decode` holds for `im` (from its header): the decoded image, its 8-bit
    conversion and its rotated copy."""
    pixels = im.size[0] * im.size[1]
    decoded = _MODE_BYTES.get(im.mode, 4)
    out = (1 if im.mode in _DEEP_GREY + ("1",) else 4) if _converts(im) else 0
    rotated = (out or decoded) if _orientation(im) in _TRANSPOSE else 0
    return pixels * (decoded + out + rotated)


def decode(im: Image.Image) -> Image.Image:
    """Decode (a fresh file is at its first frame) and apply the policy: 8-bit "RGB", or "L"
    for grey images, upright. Per-pixel conversion first, then the rotation: the same pixels as
    rotating first, with one full-size copy less."""
    orientation = _orientation(im)
    im.load()
    out = _to_8bit(im)
    if orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[orientation])
    return out


def _to_8bit(im: Image.Image) -> Image.Image:
    mode = im.mode
    if not _converts(im):
        return im
    if mode in _DEEP_GREY:  # before the alpha branch: Pillow's own conversion would clamp
        low, high = im.getextrema()
        wide = mode == "I" and (low < 0 or high > 65535)
        key = im.info.get("transparency")
        key = key if isinstance(key, (int, float)) else None
        return _banded(im, "L", lambda band: _grey_to_8bit(band, wide, key))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        return _banded(im, "RGB", _onto_white)
    return im.convert("L" if mode == "1" else "RGB")


def _banded(im: Image.Image, mode: str, convert) -> Image.Image:
    """`convert` applied to bands of rows of `im`, pasted into one new `mode` image."""
    w, h = im.size
    out = Image.new(mode, im.size)
    rows = max(1, BAND_PIXELS // w)
    for top in range(0, h, rows):
        out.paste(convert(im.crop((0, top, w, min(h, top + rows)))), (0, top))
    return out


def _onto_white(band: Image.Image) -> Image.Image:
    rgba = band.convert("RGBA")
    white = Image.new("RGBA", band.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _grey_to_8bit(band: Image.Image, wide: bool, key: int | float | None) -> Image.Image:
    """Deep grey -> 8 bits; pixels equal to the transparency `key` (fully transparent) become
    white, as compositing onto white makes them."""
    raw = np.asarray(band)
    if band.mode == "F":
        values = np.nan_to_num(raw.astype(np.float64), nan=0.0)
        eight = np.rint(np.clip(values, 0.0, 1.0) * 255.0)
    elif wide:  # 32-bit values beyond 16 bits: scale from 0..2**31-1
        eight = np.clip(raw.astype(np.int64), 0, 2**31 - 1) >> 23
    else:  # 16 bits of range: value/257, rounded
        eight = (raw.astype(np.int64) + 128) // 257
    if key is not None:
        eight = np.where(raw == key, 255, eight)
    return Image.fromarray(np.ascontiguousarray(eight.astype(np.uint8)), "L")


class MemoryBudget:
    """A byte semaphore: `hold(n)` waits until n more bytes fit under the limit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + amount <= self.limit)
            self.used += amount
        try:
            yield
        finally:
            with self._cond:
                self.used -= amount
                self._cond.notify_all()


# Shared by every decode in this process, so any number of decode threads stays within it.
DECODES = MemoryBudget(DECODE_BUDGET)
