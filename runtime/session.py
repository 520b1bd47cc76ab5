"""The one place an onnxruntime session is made: CPU provider, thread counts, no spinning, and
onnxruntime's own logging off (its errors reach the user as exceptions, one line, escaped)."""

from __future__ import annotations

import os
from typing import Any


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def create_session(model: str | bytes, *, threads: int | None = None, few_images: bool = False,
                   weights_folder: str | None = None) -> Any:
    """An InferenceSession for `model` (a path or a serialized ModelProto).

    `few_images`: tuned for start-up over per-image speed (no weight pre-packing, no NCHWc layout
    pass). `weights_folder`: where the model's external-data references resolve."""
    import onnxruntime as ort  # heavy; imported only once a model is actually opened

    ort.set_default_logger_severity(4)  # fatal only: no coloured log line before our error line
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    options.add_session_config_entry("session.load_model_format", "ONNX")  # never the ORT format
    # Idle intra-op threads must not spin: on a small CPU the decode threads need those cycles.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if few_images:
        options.add_session_config_entry("session.disable_prepacking", "1")
        # No NCHWc layout pass: reordering the fp32 conv weights at start-up costs more than it
        # saves over a few images.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if weights_folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", weights_folder)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
