"""Reading a model file for onnxruntime: checks first, then either an ordinary load or a
load by reference.

Checks: present, not a git-lfs pointer, top-level initializers stored in the file itself (no
external data; onnxruntime itself refuses references that leave the model's folder).

Load by reference (`reference_weights=True`, used for a one-shot run on a few images): handed a
single-file model, onnxruntime parses every weight into memory and then copies it into its own
buffers, so a 228 MB model peaks at ~2x its size and spends ~0.5 s copying. Instead, `read_model`
walks the protobuf wire format (ModelProto -> graph -> initializer) through a memory map and
returns a small copy of the model in which each large initializer's bytes are replaced by an
external-data reference to *the same file* at the offset where those bytes already lie;
onnxruntime then maps each weight straight from the file. The file on disk stays one ordinary ONNX
file. The price: the session keeps reading the file, so rewriting it in place while the session
lives would change or break it (replacing it with a rename, as export-onnx does, is safe) —
which is why long-lived Predictors load the ordinary way, into private memory.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

LFS_MAGIC = b"version https://git-lfs"  # the first bytes of a git-lfs pointer file
# Field numbers from onnx.proto.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1
# Smaller initializers stay inline: referencing them would save nothing worth a file read each.
_MIN_REFERENCED_BYTES = 4096


@dataclass(frozen=True)
class ModelSource:
    """What to hand onnxruntime: `model` (the file's path, or a serialized ModelProto) and, when
    its weights reference the model file, the folder to resolve that reference in (session option
    `session.model_external_initializers_file_folder_path`)."""

    model: str | bytes
    weights_folder: str | None
    file: str  # the resolved path the references name
    identity: tuple[int, ...]  # (device, inode, size, mtime) of the file the offsets were read from

    def changed(self) -> bool:
        """True when the file was replaced or rewritten since it was read: the references would
        then have been resolved against other bytes."""
        try:
            return _identity(os.stat(self.file)) != self.identity
        except OSError:
            return True


def read_model(path: Path, *, reference_weights: bool = False) -> ModelSource:
    """Check `path` (ModelError with one clear line when it cannot be a usable single-file model)
    and say how onnxruntime should load it: by path, or with its large weights referencing the
    file itself."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory; pass the .onnx file")
    real = Path(os.path.realpath(path))
    try:
        with open(real, "rb") as f:
            if f.read(len(LFS_MAGIC)) == LFS_MAGIC:
                raise ModelError(f"{path}: is a git-lfs pointer, not the model; run 'git lfs pull' first")
            stat = os.fstat(f.fileno())
            if stat.st_size == 0:
                raise ModelError(f"{path}: is empty, not an ONNX model")
            identity = _identity(stat)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                proto = _reference_weights(buf, os.fsencode(real.name))  # checks the model as it goes
                if not _is_utf8(real):  # onnxruntime takes paths as text only: hand it the bytes
                    return ModelSource(bytes(buf), None, str(real), identity)
                if not reference_weights:
                    return ModelSource(str(real), None, str(real), identity)
                return ModelSource(proto, str(real.parent), str(real), identity)
    except PermissionError:
        raise ModelError(f"{path}: permission denied") from None
    except _Malformed:
        raise ModelError(f"{path}: not a valid ONNX model (malformed protobuf)") from None
    except _ExternalData:
        raise ModelError(
            f"{path}: stores weights as external data; only single-file models are loaded "
            "(re-export with export-onnx)"
        ) from None


def _identity(stat: os.stat_result) -> tuple[int, ...]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _is_utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Malformed(Exception):
    pass


class _ExternalData(Exception):
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
    """Yield (field number, wire type, field start, field end, payload) for each field;
    payload is the value of a varint, (start, end) of a length-delimited field, else None."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        payload = None
        if wire == 0:
            payload, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            payload = (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed
        if pos > end:
            raise _Malformed
        yield number, wire, field_start, pos, payload
    if pos != end:
        raise _Malformed


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _message(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _entry(key: bytes, value: bytes) -> bytes:
    return _message(_TENSOR_EXTERNAL_DATA, _message(_ENTRY_KEY, key) + _message(_ENTRY_VALUE, value))


def _reference_weights(buf, location: bytes) -> bytes:
    """The ModelProto in `buf`, each large initializer's raw_data replaced by a reference to
    `location` (the file `buf` maps): a small copy, as only the large payloads are left out.
    Raises _ExternalData if the model already uses external data."""
    parts = []
    for number, wire, start, end, payload in _fields(buf, 0, len(buf)):
        if number == _MODEL_GRAPH and wire == 2:
            graph = []
            for gnum, gwire, gstart, gend, gpayload in _fields(buf, *payload):
                if gnum == _GRAPH_INITIALIZER and gwire == 2:
                    graph.append(_message(_GRAPH_INITIALIZER, _reference_tensor(buf, gpayload, location)))
                else:
                    graph.append(buf[gstart:gend])
            parts.append(_message(_MODEL_GRAPH, b"".join(graph)))
        else:
            parts.append(buf[start:end])
    return b"".join(parts)


def _reference_tensor(buf, span: tuple[int, int], location: bytes) -> bytes:
    fields = list(_fields(buf, *span))
    for number, wire, _, _, payload in fields:
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            raise _ExternalData
        if number == _TENSOR_DATA_LOCATION and wire == 0 and payload == _EXTERNAL:
            raise _ExternalData
    raws = [payload for number, wire, _, _, payload in fields if number == _TENSOR_RAW_DATA and wire == 2]
    raw = raws[-1] if raws and raws[-1][1] - raws[-1][0] >= _MIN_REFERENCED_BYTES else None  # the last one counts
    kept = [buf[start:end] for number, wire, start, end, _ in fields
            if raw is None or not (number == _TENSOR_RAW_DATA and wire == 2)]
    if raw is not None:
        offset, length = raw[0], raw[1] - raw[0]
        kept.append(_entry(b"location", location))
        kept.append(_entry(b"offset", str(offset).encode()))
        kept.append(_entry(b"length", str(length).encode()))
        kept.append(_encode_varint(_TENSOR_DATA_LOCATION << 3) + _encode_varint(_EXTERNAL))
    return b"".join(kept)
