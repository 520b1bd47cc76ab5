"""Predictor: one onnxruntime session plus the contract read from the model itself.

    from runtime import Predictor
    p = Predictor("model.onnx")
    for pred in p.predict(["cat.jpg", "dog.png"], top_k=3):
        print(pred.label, pred.score)

A Predictor holds no mutable state after construction; `predict` may be called from several
threads at once (onnxruntime sessions support concurrent `run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image

from .contract import Contract, ContractError
from .errors import ModelError, first_line
from .image import ImageSource, load_image
from .modelfile import read_model
from .preprocess import preprocess

PredictInput = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    index: int
    top_k: tuple[tuple[str, float], ...]

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
        }


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class Predictor:
    def __init__(self, path: Union[str, os.PathLike], threads: int | None = None, *, few_images: bool = False) -> None:
        """`few_images`: tune start-up for a one-shot run on a handful of images: the weights are
        read by reference from the file (one copy, mapped; the file must not be rewritten in place
        while this Predictor lives), neither pre-packed nor re-laid out. That saves start-up time
        and memory but makes each run slower. Otherwise onnxruntime loads a private copy."""
        self.path = Path(path)
        model = read_model(self.path, reference_weights=few_images)
        import onnxruntime as ort  # heavy; imported only once a model is actually opened

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle intra-op threads must not spin: on a small CPU the decode threads need those cycles.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if few_images:
            options.add_session_config_entry("session.disable_prepacking", "1")
            # No NCHWc layout pass: reordering the fp32 conv weights costs ~30 ms at start-up and
            # saves ~5 ms per image (measured, alexnet, 2-core AVX2).
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if model.weights_folder is not None:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", model.weights_folder)
        try:
            self.session = ort.InferenceSession(model.model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types for every failure
            error = f"not a valid ONNX model ({first_line(exc, 300)})"
        else:
            error = None
        if model.changed():  # replaced mid-load: weights may have come from the new file
            raise ModelError(f"{self.path}: the file changed while it was loaded; run again once it is written")
        if error:
            raise ModelError(f"{self.path}: {error}")
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.contract = Contract.from_metadata(meta)
        except ContractError as exc:
            raise ModelError(f"{self.path}: {exc}") from None
        self._check_signature()

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"{self.path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        crop = self.contract.preprocess.crop
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[1:] != [3, crop, crop]:
            raise ModelError(
                f"{self.path}: input shape {shape} does not match the contract (batch, 3, {crop}, {crop})"
            )
        out = list(outputs[0].shape)
        if len(out) != 2 or (isinstance(out[1], int) and out[1] != self.contract.num_classes):
            raise ModelError(
                f"{self.path}: output shape {out} does not match the contract's "
                f"{self.contract.num_classes} labels"
            )
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32

    @property
    def labels(self) -> tuple[str, ...]:
        return self.contract.labels

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """A path or PIL image -> float32 array (3, crop, crop), exactly the training eval transform."""
        return preprocess(load_image(image), self.contract.preprocess)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs (float32) for a preprocessed batch (N, 3, crop, crop)."""
        out = self.session.run(None, {self.input_name: batch.astype(self.input_dtype, copy=False)})[0]
        return out.astype(np.float32, copy=False)

    def predict(self, images: Iterable[PredictInput], top_k: int = 5) -> list[Prediction]:
        """Classify paths, PIL images or already preprocessed arrays; one Prediction each, in order."""
        arrays = [x if isinstance(x, np.ndarray) else self.preprocess(x) for x in images]
        if not arrays:
            return []
        return self.predictions(self.logits(np.stack(arrays)), top_k)

    def predictions(self, logits: np.ndarray, top_k: int = 5) -> list[Prediction]:
        probs = softmax(logits)
        k = max(1, min(top_k, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [self._prediction(row, idx) for row, idx in zip(probs, order)]

    def _prediction(self, row: np.ndarray, idx: Sequence[int]) -> Prediction:
        top = tuple((self.labels[i], float(row[i])) for i in idx)
        return Prediction(label=top[0][0], score=top[0][1], index=int(idx[0]), top_k=top)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
