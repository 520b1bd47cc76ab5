"""alexnet-onnx: train AlexNet with PyTorch, export one self-describing ONNX file, predict on CPU.

The installed import namespace. `from alexnet_onnx import Predictor` is the torch-free runtime
(it imports onnxruntime only when a Predictor is created); `alexnet_onnx.train` and
`alexnet_onnx.export` need the `[train]` extra.

This file is the package's root `__init__`: pyproject.toml maps `alexnet_onnx` to this folder and
`alexnet_onnx.runtime`, `.train`, `.export` to the repository's top-level folders of those names.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

__all__ = ["Predictor", "Prediction", "Contract", "Preprocess", "__version__"]

try:
    __version__ = version("alexnet-onnx")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from .runtime import Contract, Prediction, Predictor, Preprocess


def __getattr__(name: str) -> Any:
    if name in ("Predictor", "Prediction", "Contract", "Preprocess"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'alexnet_onnx' has no attribute {name!r}")
