"""Bounds on an image file's structure, read from its bytes before Pillow parses it: the costs
that neither the pixel count nor the decode budget sees.

- every file: at most MAX_FILE_BYTES;
- JPEG: at most MAX_JPEG_SCANS scans (SOS markers) in the image Pillow decodes. Each scan is one
  more pass over all of the image's coefficients, so thousands of tiny scans cost minutes of CPU;
- PNG: no chunk but image data (IDAT, fdAT) over MAX_PNG_CHUNK bytes (Pillow reads every chunk
  whole, text and private ones included), at most MAX_PNG_CHUNKS chunks in all;
- TIFF: the first directory's strip or tile count no more than its size needs, nor than
  MAX_TIFF_CHUNKS (Pillow builds a Python object per strip when it opens the file), and a tile at
  most max(the image, MAX_TILE_PIXELS) pixels (the decoder allocates a whole tile).

The checks read the file through one block-sized window, so checking a large file costs a block
of memory and one linear pass.
"""

from __future__ import annotations

import math
import re
import struct
from typing import BinaryIO

from .errors import ImageError

# A 100-Mpixel camera JPEG at the highest quality is ~60 MB and a 45-Mpixel 8-bit RGB TIFF
# uncompressed 135 MB; twice the first, and the second only compressed, keep every real photo in.
MAX_FILE_BYTES = 128 << 20
# libjpeg's progressive script writes 10 scans (6 for grey), mozjpeg's optimised ones a few more;
# ten times that is still a fraction of a second for the largest image allowed.
MAX_JPEG_SCANS = 100
# ICC profiles and XMP packets, the largest ancillary chunks real files carry, stay under a few MB.
MAX_PNG_CHUNK = 16 << 20
# 128 MiB of image data in 1 KB chunks (encoders write 8-64 KB ones).
MAX_PNG_CHUNKS = 1 << 17
# An 89-Mpixel 16-bit RGB image in the 8 KB strips libtiff writes needs ~65,000.
MAX_TIFF_CHUNKS = 1 << 17
MAX_TILE_PIXELS = 2048 * 2048  # writers use 256 or 512 square tiles
MAX_TIFF_TAGS = 1 << 16  # what a classic TIFF directory can hold at all
BLOCK = 1 << 20

_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")  # in scan data FF is stuffed (FF 00) or a restart
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DATA = (b"IDAT", b"fdAT")
_TIFF_MAGIC = {b"II*\0": ("<", False), b"MM\0*": (">", False), b"II+\0": ("<", True), b"MM\0+": (">", True)}
_WIDTH, _LENGTH, _SAMPLES, _ROWS_PER_STRIP, _PLANAR = 256, 257, 277, 278, 284
_STRIP_OFFSETS, _STRIP_COUNTS, _TILE_WIDTH, _TILE_LENGTH, _TILE_OFFSETS, _TILE_COUNTS = 273, 279, 322, 323, 324, 325
_INT_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8


class Window:
    """Random access to a file's bytes through one block-sized buffer."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.start, self.buf, self.to_end = f, 0, b"", False

    def get(self, pos: int, n: int) -> bytes:
        """The n bytes at `pos` (fewer at the end of the file)."""
        end = self.start + len(self.buf)
        if not (self.start <= pos and (pos + n <= end or (self.to_end and pos <= end))):
            self.f.seek(pos)
            want = max(n, BLOCK)
            self.buf, self.start = self.f.read(want), pos
            self.to_end = len(self.buf) < want
        return self.buf[pos - self.start:pos - self.start + n]

    def search(self, pattern: re.Pattern, pos: int, width: int) -> int | None:
        """Where `pattern` (matching `width` bytes) first matches at or after `pos`."""
        while True:
            chunk = self.get(pos, BLOCK)
            found = pattern.search(chunk)
            if found:
                return pos + found.start()
            if len(chunk) < BLOCK:
                return None
            pos += len(chunk) - (width - 1)  # a match may straddle two blocks


def check_size(size: int, name: str) -> None:
    """Refuse, before reading it, an image file larger than MAX_FILE_BYTES."""
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{name}: the file is {size >> 20} MiB, more than the {MAX_FILE_BYTES >> 20} MiB "
                         "an image may be")


def check_structure(f: BinaryIO, name: str) -> None:
    """Refuse a JPEG, PNG or TIFF whose structure is past the bounds above; other files pass.
    Leaves `f` at its start."""
    window = Window(f)
    head = window.get(0, 8)
    if head.startswith(b"\xff\xd8"):
        scans = jpeg_scans(window, MAX_JPEG_SCANS + 1)
        if scans > MAX_JPEG_SCANS:
            raise ImageError(f"{name}: a JPEG of more than {MAX_JPEG_SCANS} scans (real encoders write about 10); "
                             "refused as a decoding-time bomb")
    elif head == _PNG_SIGNATURE:
        _check_png(window, name)
    elif head[:4] in _TIFF_MAGIC:
        _check_tiff(window, name, *_TIFF_MAGIC[head[:4]])
    f.seek(0)


def jpeg_scans(window: Window, stop: int) -> int:
    """The number of scans of the JPEG in `window` up to its first EOI (what libjpeg decodes),
    counting no further than `stop`."""
    pos, scans = 2, 0
    while scans < stop:
        marker = window.get(pos, 4)
        if len(marker) < 2:
            return scans
        if marker[0] != 0xFF or marker[1] in (0x00, 0xFF):  # fill bytes or garbage: to the next marker
            found = window.search(_JPEG_MARKER, pos, 2)
            if found is None:
                return scans
            pos = found
            continue
        kind = marker[1]
        if kind == _EOI:
            return scans
        if kind in _STANDALONE:
            pos += 2
            continue
        if len(marker) < 4:
            return scans
        pos += 2 + struct.unpack(">H", marker[2:])[0]
        if kind == _SOS:
            scans += 1
            found = window.search(_JPEG_MARKER, pos, 2)  # past the scan's entropy-coded data
            if found is None:
                return scans
            pos = found
    return scans


def _check_png(window: Window, name: str) -> None:
    pos, chunks = len(_PNG_SIGNATURE), 0
    while True:
        head = window.get(pos, 8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I", head[:4])[0], head[4:]
        if kind == b"IEND":
            return
        chunks += 1
        if kind not in _PNG_DATA and length > MAX_PNG_CHUNK:
            raise ImageError(f"{name}: a PNG {kind.decode('latin-1')!r} chunk of {length >> 20} MiB, more than the "
                             f"{MAX_PNG_CHUNK >> 20} MiB any chunk but image data may be")
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(f"{name}: a PNG of more than {MAX_PNG_CHUNKS} chunks; refused as a decoding-time bomb")
        pos += 12 + length


def _check_tiff(window: Window, name: str, order: str, big: bool) -> None:
    """The first directory (the image Pillow decodes): strip and tile counts and tile size."""
    word, count_fmt, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    offset_at = 8 if big else 4
    head = window.get(offset_at, 8 if big else 4)
    if len(head) < struct.calcsize(order + word):
        return
    ifd = struct.unpack(order + word, head)[0]
    raw = window.get(ifd, struct.calcsize(count_fmt))
    if len(raw) < struct.calcsize(count_fmt):
        return
    entries = struct.unpack(order + count_fmt, raw)[0]
    if entries > MAX_TIFF_TAGS:
        raise ImageError(f"{name}: a TIFF directory of {entries} tags; refused as a decoding-time bomb")
    tags = _tiff_tags(window, order, big, ifd + len(raw), min(entries, MAX_TIFF_TAGS), entry_size)
    width, height = tags.get(_WIDTH, (0, 0))[1], tags.get(_LENGTH, (0, 0))[1]
    if width < 1 or height < 1:
        return  # Pillow refuses it itself
    planes = tags.get(_SAMPLES, (1, 1))[1] if tags.get(_PLANAR, (1, 1))[1] == 2 else 1
    if _TILE_OFFSETS in tags or _TILE_COUNTS in tags:
        tile_w, tile_h = tags.get(_TILE_WIDTH, (0, 0))[1], tags.get(_TILE_LENGTH, (0, 0))[1]
        if tile_w < 1 or tile_h < 1:
            return
        if tile_w * tile_h > max(width * height, MAX_TILE_PIXELS):
            raise ImageError(f"{name}: a {width}x{height} TIFF with {tile_w}x{tile_h} tiles, larger than the image "
                             f"and than {MAX_TILE_PIXELS} pixels; refused as a decoding-time bomb")
        needed = math.ceil(width / tile_w) * math.ceil(height / tile_h) * planes
        counts = (tags.get(_TILE_OFFSETS, (0, 0))[0], tags.get(_TILE_COUNTS, (0, 0))[0])
        what = "tiles"
    else:
        rows = tags.get(_ROWS_PER_STRIP, (1, height))[1] or height
        needed = math.ceil(height / min(rows, height)) * planes
        counts = (tags.get(_STRIP_OFFSETS, (0, 0))[0], tags.get(_STRIP_COUNTS, (0, 0))[0])
        what = "strips"
    claimed = max(counts)
    if claimed > needed or claimed > MAX_TIFF_CHUNKS:
        raise ImageError(f"{name}: a {width}x{height} TIFF claiming {claimed} {what} (its size needs {needed}, at most "
                         f"{MAX_TIFF_CHUNKS} are allowed); refused as a decoding-time bomb")


def _tiff_tags(window: Window, order: str, big: bool, start: int, entries: int,
               entry_size: int) -> dict[int, tuple[int, int]]:
    """{tag: (count, first value)} of the directory's integer tags (value 0 where it is not inline)."""
    layout = order + ("HHQ8s" if big else "HHI4s")
    inline = 8 if big else 4
    tags: dict[int, tuple[int, int]] = {}
    for i in range(entries):
        raw = window.get(start + i * entry_size, entry_size)
        if len(raw) < entry_size:
            break
        tag, kind, count, value = struct.unpack(layout, raw)
        fmt = _INT_TYPES.get(kind)
        if fmt is None:
            continue
        size = struct.calcsize(fmt)
        first = struct.unpack(order + fmt, value[:size])[0] if count >= 1 and count * size <= inline else 0
        tags[tag] = (count, first)
    return tags
