"""Checks on a model file before onnxruntime sees it: present, not a git-lfs pointer, one
self-contained file (no external data that could point anywhere on disk).

The external-data check walks the protobuf wire format of ModelProto -> graph -> initializer
through a memory map, touching only field headers, so it costs milliseconds even for 240 MB.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from .errors import ModelError

LFS_MAGIC = b"version https://git-lfs"  # the first bytes of a git-lfs pointer file
# Field numbers from onnx.proto.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1


def check_model_file(path: Path) -> None:
    """Raise ModelError with one clear line when `path` cannot be a usable single-file model."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory; pass the .onnx file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
            if head.startswith(LFS_MAGIC):
                raise ModelError(f"{path}: is a git-lfs pointer, not the model; run 'git lfs pull' first")
            if size == 0:
                raise ModelError(f"{path}: is empty, not an ONNX model")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                if _uses_external_data(buf):
                    raise ModelError(
                        f"{path}: stores weights as external data; only single-file models are loaded "
                        "(re-export with export-onnx)"
                    )
    except PermissionError:
        raise ModelError(f"{path}: permission denied") from None
    except _Malformed:
        raise ModelError(f"{path}: not a valid ONNX model (malformed protobuf)") from None


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value or (start, end) for length-delimited)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed
    if pos != end:
        raise _Malformed


def _uses_external_data(buf) -> bool:
    for number, wire, value in _fields(buf, 0, len(buf)):
        if number != _MODEL_GRAPH or wire != 2:
            continue
        for gnum, gwire, gval in _fields(buf, *value):
            if gwire != 2 or gnum != _GRAPH_INITIALIZER:
                continue
            for tnum, twire, tval in _fields(buf, *gval):
                if tnum == _TENSOR_EXTERNAL_DATA and twire == 2:
                    return True
                if tnum == _TENSOR_DATA_LOCATION and twire == 0 and tval == _EXTERNAL:
                    return True
    return False
