"""Small image files that cost far more to decode than their size says, defined once: the tests in
make test write them small, benchmarks/fuzz_decode.py at the sizes an attacker would use."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_scans(path: Path, scans: int, side: int = 64) -> Path:
    """A progressive JPEG of `side` x `side` pixels with `scans` scans."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([ramp[None, :] + 0 * ramp[:, None]] * 3, axis=-1).astype(np.uint8)  # smooth: tiny scans
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", progressive=True, quality=75)
    data = buffer.getvalue()[:-2]  # without the EOI
    starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xda"]  # no FF DA elsewhere in Pillow's output
    # The smallest scan (a high-frequency band: one end-of-band run for the whole image) is
    # repeated: a few bytes each, a pass over every block of the image each.
    cut = [*starts, len(data)]
    scan = min((data[a:b] for a, b in zip(cut, cut[1:])), key=len)
    path.write_bytes(data + scan * max(1, scans - len(starts)) + b"\xff\xd9")
    return path


def _tiff(entries: list[tuple[int, int, int, bytes]], data: bytes) -> bytes:
    """A little-endian classic TIFF: header, `data` at offset 8, then one directory whose
    entries are (tag, type, count, value field: 4 bytes, or the value's offset)."""
    ifd = 8 + len(data)
    out = b"II*\0" + struct.pack("<I", ifd) + data + struct.pack("<H", len(entries))
    for tag, kind, count, value in sorted(entries):
        out += struct.pack("<HHI", tag, kind, count) + value
    return out + struct.pack("<I", 0)


def _short(v: int) -> bytes:
    return struct.pack("<HH", v, 0)


def _long(v: int) -> bytes:
    return struct.pack("<I", v)


def tiff_strips(path: Path, strips: int, width: int = 1, height: int = 1) -> Path:
    """An 8-bit grey TIFF whose directory lists `strips` strips (SHORT offsets and counts, all
    the same one-byte strip), for an image of width x height with one row per strip."""
    pixel = 8
    offsets = struct.pack("<H", pixel) * strips
    counts = struct.pack("<H", 1) * strips
    data = b"\x80\0" + offsets + counts
    entries = [(256, 4, 1, _long(width)), (257, 4, 1, _long(height)), (258, 3, 1, _short(8)), (259, 3, 1, _short(1)),
               (262, 3, 1, _short(1)), (277, 3, 1, _short(1)), (278, 4, 1, _long(1)),
               (273, 3, strips, _long(10)), (279, 3, strips, _long(10 + len(offsets)))]
    path.write_bytes(_tiff(entries, data))
    return path


def tiff_tile(path: Path, tile: int = 32768) -> Path:
    """A 1x1 deflated RGB TIFF stored as one `tile` x `tile` tile (libtiff allocates the whole
    tile before it inflates a byte)."""
    entries = [(256, 4, 1, _long(1)), (257, 4, 1, _long(1)), (258, 3, 1, _short(8)), (259, 3, 1, _short(8)),
               (262, 3, 1, _short(2)), (277, 3, 1, _short(3)), (322, 4, 1, _long(tile)), (323, 4, 1, _long(tile)),
               (324, 4, 1, _long(8)), (325, 4, 1, _long(3))]
    path.write_bytes(_tiff(entries, b"\x80\x80\x80\0"))
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunk(path: Path, kind: bytes, length: int) -> Path:
    """A 4x4 PNG with one `length`-byte chunk of `kind` (b"tEXt", or a private one like b"prIv")
    before its image data. The chunk is a hole in a sparse file: no disk, and zeros when read."""
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    tail = _chunk(b"IDAT", zlib.compress((b"\0" + b"\x80" * 12) * 4))  # 4 rows: filter byte, 4 RGB pixels
    tail += _chunk(b"IEND", b"")
    text = b"k\0" if kind == b"tEXt" else b""  # a tEXt chunk: keyword, NUL, then the (zero) text
    crc = b"\0\0\0\0"  # not checked by the time the cost is paid
    with open(path, "wb") as f:
        f.write(head + struct.pack(">I", length) + kind + text)
        f.seek(len(head) + 8 + length)
        f.write(crc + tail)
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A valid small PNG padded with a hole to `size` bytes (no disk used)."""
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path, format="PNG")
    with open(path, "r+b") as f:
        f.truncate(size)
    return path
