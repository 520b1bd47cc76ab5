"""Reduced-precision variants of an exported fp32 model: static int8 (QDQ) and fp16.

int8 is static and calibrated on real images through the contract's preprocessing:
`quant_pre_process` first, QDQ format, per-channel int8 weights, uint8 activations and
`reduce_range` (7-bit weights). Without VNNI, x86 CPUs multiply u8 x s8 pairs with an instruction
that saturates at int16; 7-bit weights keep those sums in range. Dynamic int8 is not offered: its
ConvInteger kernels are slower than fp32 on CPUs without VNNI (figures: docs/performance.md).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .options import CALIBRATION_METHODS

# onnxruntime's entropy calibrator defaults to as many histogram bins as quantized bins (128), which
# leaves its KL search a single candidate, the full range: the model would be byte-identical to
# minmax's. quantize_static passes no bin counts through, so `_entropy_bins` hands the calibrator
# 2048 bins (TensorRT's choice), giving it thresholds to choose from.
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}
_CALIB_BATCH = 16  # the most images per calibration batch


@contextmanager
def _entropy_bins() -> Iterator[None]:
    import importlib

    from onnxruntime.quantization import CalibrationMethod

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, not the function

    original = ort_quantize.create_calibrator

    def create_calibrator(*args, **kwargs):
        if kwargs.get("calibrate_method") == CalibrationMethod.Entropy:
            kwargs["extra_options"] = {**ENTROPY_BINS, **(kwargs.get("extra_options") or {})}
        return original(*args, **kwargs)

    ort_quantize.create_calibrator = create_calibrator
    try:
        yield
    finally:
        ort_quantize.create_calibrator = original


def quantize_int8(fp32: bytes, calibration: np.ndarray, method: str) -> bytes:
    """Static QDQ int8 model (serialized) from a serialized fp32 model and preprocessed images;
    `method`: a key of CALIBRATION_METHODS."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one image")

    # Equal batches: onnxruntime's histogram calibrators (entropy, percentile) stack every batch's
    # outputs into one array and fail on a short last batch.
    batch = max(d for d in range(1, _CALIB_BATCH + 1) if len(calibration) % d == 0)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict] = iter(
                {"input": calibration[i : i + batch]} for i in range(0, len(calibration), batch)
            )

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="alexnet-onnx-quant-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre))
        with _entropy_bins():
            quantize_static(
                str(pre),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        return out.read_bytes()


def convert_fp16(fp32: bytes) -> bytes:
    """fp16 weights and activations, float32 input/output (the runtime feeds float32 either way)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(onnx.load_from_string(fp32), keep_io_types=True)
    OnnxModel.graph_topological_sort(model.graph, is_deterministic=True)  # the converter appends input Casts last
    return model.SerializeToString()
