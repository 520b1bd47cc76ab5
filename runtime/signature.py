"""A model's signature checked against its contract, before any image is read.

The runtime feeds one float tensor (batch, 3, crop, crop) and reads one (batch, classes) float
tensor back; a model whose declared inputs and outputs say otherwise is refused here with one
line, instead of failing (or answering nonsense) on the first batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

# The input types the runtime can feed, and the numpy type it feeds each as.
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
OUTPUT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
CHANNELS = 3
# A fixed batch is fed whole, however few images there are: bound it, and the bytes it costs.
MAX_FIXED_BATCH = 1024
MAX_BATCH_BYTES = 1 << 30


class Port(Protocol):
    """An input or output as onnxruntime describes it (`session.get_inputs()` items)."""

    name: str
    type: str
    shape: Sequence[Any]  # ints, or a name / None for a dimension left open


class SignatureError(ValueError):
    """The model's inputs or outputs do not fit its contract; the message says how."""


@dataclass(frozen=True)
class Signature:
    """How to call a model that passed the check. `fixed_batch`: the batch size the model
    insists on (None: any); `classes_declared`: whether the output shape names the class count
    (if not, a first run must show it)."""

    input_name: str
    output_name: str
    input_dtype: type
    fixed_batch: int | None
    classes_declared: bool


def check_signature(inputs: Sequence[Port], outputs: Sequence[Port], *, crop: int, num_classes: int) -> Signature:
    """The one input must be a float (batch, 3, crop, crop) tensor and the first output a float
    (batch, num_classes) one; a fixed batch size must be at least 1, and the output's the same.
    SignatureError otherwise."""
    if len(inputs) != 1 or len(outputs) < 1:
        raise SignatureError(f"expected one input and one output, found {len(inputs)} and {len(outputs)}")
    spec, out = inputs[0], outputs[0]
    if spec.type not in INPUT_TYPES:
        raise SignatureError(f"input {spec.name!r} is {spec.type}; expected tensor(float) or tensor(float16)")
    if out.type not in OUTPUT_TYPES:
        raise SignatureError(f"output {out.name!r} is {out.type}; expected a float tensor")
    shape = list(spec.shape)
    if len(shape) != 4 or shape[1:] != [CHANNELS, crop, crop]:
        raise SignatureError(f"input shape {shape} does not match the contract (batch, {CHANNELS}, {crop}, {crop})")
    oshape = list(out.shape)
    declared = len(oshape) == 2 and isinstance(oshape[1], int)
    if len(oshape) != 2 or (declared and oshape[1] != num_classes):
        raise SignatureError(f"output shape {oshape} does not match the contract's {num_classes} labels")
    batch = shape[0] if isinstance(shape[0], int) else None
    if batch is not None and not 1 <= batch <= MAX_FIXED_BATCH:
        raise SignatureError(f"input batch dimension is {batch}; a fixed batch must be 1 to {MAX_FIXED_BATCH}")
    image_bytes = CHANNELS * crop * crop * np.dtype(INPUT_TYPES[spec.type]).itemsize
    if batch is not None and batch * image_bytes > MAX_BATCH_BYTES:
        raise SignatureError(f"a fixed batch of {batch} images of {crop}x{crop} takes {batch * image_bytes >> 20} MiB; "
                             f"at most {MAX_BATCH_BYTES >> 20} MiB is fed at once")
    if batch is not None and isinstance(oshape[0], int) and oshape[0] != batch:
        raise SignatureError(f"output batch dimension {oshape[0]} differs from the input's {batch}")
    return Signature(spec.name, out.name, INPUT_TYPES[spec.type], batch, declared)
