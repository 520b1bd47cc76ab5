"""The one place an onnxruntime session is made: CPU provider, thread counts, no spinning, and
onnxruntime's own logging off (its errors reach the user as exceptions, one line, escaped)."""

from __future__ import annotations

import os
import threading
from typing import Any

# What all of this process's sessions may allocate for weights and tensors together: a model
# whose tensors would grow past it (a broadcast to an outer product, a huge pad) fails to run
# with one line instead of taking the machine. AlexNet fp32 at batch 256 needs well under 2 GiB.
MAX_RUN_BYTES = 4 << 30
_arena_lock = threading.Lock()
_arena: list[bool] = []  # [True] once the capped allocator is registered, [False] if it cannot be


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
    if _cap_arena(ort):
        options.add_session_config_entry("session.use_env_allocators", "1")
    if weights_folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", weights_folder)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _cap_arena(ort) -> bool:
    """Register, once per process, a CPU arena capped at MAX_RUN_BYTES for sessions to share;
    True when it is in place."""
    with _arena_lock:
        if not _arena:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                # arena_extend_strategy 1: grow by what is asked, not to the next power of two
                ort.create_and_register_allocator(info, ort.OrtArenaCfg({"max_mem": MAX_RUN_BYTES,
                                                                         "arena_extend_strategy": 1}))
                _arena.append(True)
            except Exception:  # an older onnxruntime, or registered already by someone else
                _arena.append(False)
        return _arena[0]
