"""The fuzz properties and mutations, defined once: the quick hypothesis tests in make test and
the long runs in benchmarks/ (fuzz_decode.py, fuzz_modelfile.py) both use them."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from alexnet_onnx.runtime.contract import Preprocess
from alexnet_onnx.runtime.errors import ImageError, ModelError
from alexnet_onnx.runtime.image import decode, load_image, opened
from alexnet_onnx.runtime.modelfile import MAX_REFERENCING_COPY, open_model
from alexnet_onnx.runtime.preprocess import preprocess

SPEC = Preprocess(resize=36, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
# What the walker may allocate beyond its O(number of initializers) result, whatever the input.
WALK_MEMORY_BOUND = 4 << 20


# The fast path's reduced JPEG decode at a side that small fuzzed JPEGs still exceed twice over,
# so DCT scaling really runs on them.
FAST_MIN_SIDE = 12


def check_decodes(path: Path, data: bytes) -> None:
    """Any bytes become a finite (3, 32, 32) float32 array or one-line ImageError; nothing else:
    on the exact path (load_image) and on the fast path (reduced JPEG decode, as Predictor does)."""
    path.write_bytes(data)
    for decoded in (_exact, _fast):
        try:
            x = decoded(path)
        except ImageError as exc:
            assert "\n" not in str(exc)
            continue
        assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()


def _exact(path: Path) -> np.ndarray:
    return preprocess(load_image(path), SPEC)


def _fast(path: Path) -> np.ndarray:
    with opened(path, min_side=FAST_MIN_SIDE) as im:
        return preprocess(decode(im), SPEC)


def check_model_file(path: Path, data: bytes) -> int:
    """Any bytes as a model file are accepted or refused with one-line ModelError by the checks
    that run before onnxruntime, the walk within WALK_MEMORY_BOUND (plus, for a load by
    reference, the small copy handed to onnxruntime); returns the peak bytes allocated."""
    path.write_bytes(data)
    worst = 0
    for reference_weights in (False, True):
        tracemalloc.start()
        try:
            try:
                open_model(path, reference_weights=reference_weights).close()
            except ModelError as exc:
                assert "\n" not in str(exc), str(exc)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        copy = 2 * min(len(data), MAX_REFERENCING_COPY) if reference_weights else 0
        assert peak <= WALK_MEMORY_BOUND + copy, f"peaked at {peak} bytes (reference_weights={reference_weights})"
        worst = max(worst, peak)
    return worst


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def proto(number: int, payload, wire: int = 2) -> bytes:
    """One protobuf field: a length-delimited `payload` (bytes), or a varint (int, wire 0)."""
    if wire == 0:
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | wire) + varint(len(payload)) + payload


MUTATIONS = ("truncate", "field0", "zeros", "huge_length", "nest", "duplicate_graph", "duplicate_metadata",
             "unknown_field", "flip", "splice")


def mutate(model: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """A structured mutation of a serialized model (see MUTATIONS)."""
    n = len(model)
    at = int(rng.integers(0, n))
    if kind == "truncate":
        return model[:at]
    if kind == "field0":  # a key of field number 0, wherever
        return model[:at] + b"\x00" * int(rng.integers(1, 64)) + model[at:]
    if kind == "zeros":
        return b"\x00" * int(rng.integers(1, 1 << 20))
    if kind == "huge_length":  # a length-delimited field claiming far more bytes than there are
        return model[:at] + varint(7 << 3 | 2) + varint(int(rng.integers(1 << 20, 1 << 62))) + model[at:]
    if kind == "nest":  # subgraphs inside subgraphs: graph -> node -> attribute g -> graph ...
        depth = int(rng.integers(1, 400))
        inner = b""
        for _ in range(depth):
            inner = proto(1, proto(5, proto(6, inner)))
        return model + proto(7, inner)
    if kind == "duplicate_graph":  # protobuf merges repeated singular messages
        return model + model[: int(rng.integers(1, n))]
    if kind == "duplicate_metadata":
        entry = proto(14, proto(1, b"labels") + proto(2, b'["a"]'))
        return model + entry + entry
    if kind == "unknown_field":
        return model + proto(int(rng.integers(30, 1 << 29)), b"\x01" * int(rng.integers(0, 1 << 25)))
    if kind == "flip":
        data = bytearray(model)
        for where in rng.integers(0, n, int(rng.integers(1, 16))):
            data[where] = int(rng.integers(0, 256))
        return bytes(data)
    if kind == "splice":  # a piece of the file repeated elsewhere
        start = int(rng.integers(0, n))
        piece = model[start:start + int(rng.integers(1, 4096))]
        return model[:at] + piece + model[at:]
    raise ValueError(kind)
