"""Torch-free runtime: the contract, the image policy, the exact preprocessing and the Predictor.

`from alexnet_onnx.runtime import Predictor` imports onnxruntime only when a Predictor is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Predictor", "Prediction", "Contract", "Preprocess"]

if TYPE_CHECKING:
    from .contract import Contract, Preprocess
    from .predictor import Prediction, Predictor


def __getattr__(name: str) -> Any:
    if name in ("Predictor", "Prediction"):
        from . import predictor

        return getattr(predictor, name)
    if name in ("Contract", "Preprocess"):
        from . import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'alexnet_onnx.runtime' has no attribute {name!r}")
