"""Predictor: one onnxruntime session plus the contract read from the model itself.

    from alexnet_onnx.runtime import Predictor
    p = Predictor("model.onnx")
    for pred in p.predict(["cat.jpg", "dog.png"], top_k=3):
        print(pred.label, pred.score, pred.accepted)

Scores are calibrated, softmax(logits / T) with the contract's temperature. `accepted` is False
for an image that does not look like any of the model's classes (the contract's acceptance rule,
or `min_confidence` / `accept_all`); its label is then only the best guess.

A Predictor holds no mutable state once its session exists; `predict` may be called from several
threads at once (onnxruntime sessions support concurrent `run`).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image

from .calibration import Acceptance, softmax
from .contract import Contract, ContractError, Preprocess
from .errors import ImageError, ModelError, UsageError, first_line
from .image import DECODE_MODES, DECODES, FAST_DECODE_FACTOR, ImageSource, decode, decode_cost, opened
from .modelfile import ModelFile, open_model
from .preprocess import preprocess
from .session import create_session
from .signature import CHANNELS, SignatureError, check_signature

PredictInput = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    index: int
    top_k: tuple[tuple[str, float], ...]
    accepted: bool = True  # False: the image looks like none of the classes; `label` is the best guess

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "score": self.score,
            "top_k": [{"label": label, "score": score} for label, score in self.top_k],
            "accepted": self.accepted,
        }


class OutputError(ImageError):
    """The model's output for one image cannot be turned into a prediction (NaN or infinity)."""


class Predictor:
    def __init__(self, path: Union[str, os.PathLike], threads: int | None = None, *, few_images: bool = False,
                 decode: str = "exact", background: bool = False, min_confidence: float | None = None,
                 accept_all: bool = False) -> None:
        """`few_images`: tune start-up for a one-shot run on a handful of images: the weights are
        read by reference from the file (one copy, mapped; the file must not be rewritten in place
        while this Predictor lives), neither pre-packed nor re-laid out. That saves start-up time
        and memory but makes each run slower. Otherwise onnxruntime loads a private copy.

        `decode`: "exact" (the training eval transform, bit for bit) or "fast" (JPEG files decoded
        at a reduced DCT scale first; see runtime.image.FAST_DECODE_FACTOR).

        Every defect of the file, its contract or its signature raises ModelError (one line): here,
        or with `background=True` from the first call that needs the session (`ready`, `logits`,
        `predict`). `background`: only the file check and the contract happen here (milliseconds);
        onnxruntime builds the session in a thread meanwhile, so images can be decoded while it
        does (`preprocess` needs the contract alone).

        Acceptance: by default the contract's rule; `min_confidence` P (0..1) accepts an image
        when its calibrated top score is at least P instead; `accept_all` accepts every image."""
        if decode not in DECODE_MODES:
            raise UsageError(f"decode {decode!r} is not valid (choose from {', '.join(DECODE_MODES)})")
        if min_confidence is not None and not 0 <= min_confidence <= 1:  # `not`: NaN is refused too
            raise UsageError(f"min_confidence must be a probability from 0 to 1, got {min_confidence!r}")
        if min_confidence is not None and accept_all:
            raise UsageError("give either min_confidence or accept_all, not both")
        self.path = Path(path)
        self.decode = decode
        self._session: Future = Future()
        model = open_model(self.path, reference_weights=few_images)
        try:  # until _load owns the file, any failure closes it here
            self.contract = Contract.from_metadata(model.metadata)
            self.acceptance = acceptance(self.contract, min_confidence=min_confidence, accept_all=accept_all)
            if background:
                threading.Thread(target=self._load, args=(model, threads, few_images), daemon=True,
                                 name="onnxruntime-session").start()
        except BaseException as exc:
            model.close()
            if isinstance(exc, ContractError):
                raise ModelError(f"{self.path}: {exc}") from None
            raise
        if not background:
            self._load(model, threads, few_images)
            self.ready()

    def _load(self, model: ModelFile, threads: int | None, few_images: bool) -> None:
        """Create the session from the checked `model` (then closed) and check its signature;
        the outcome, a session or a ModelError, settles `self._session`."""
        error = None
        try:
            with model:
                try:
                    session = create_session(model.source, threads=threads, few_images=few_images,
                                             weights_folder=model.weights_folder)
                except Exception as exc:  # onnxruntime raises its own pybind types for every failure
                    session, error = None, f"not a valid ONNX model ({first_line(exc, 300)})"
                if model.changed():  # rewritten mid-load: weights may have come from other bytes
                    error = "the file changed while it was loaded; run again once it is written"
            if error:
                raise ModelError(f"{self.path}: {error}")
            self._check_signature(session)
        except BaseException as exc:
            self._session.set_exception(exc)
        else:
            self._session.set_result(session)

    @property
    def session(self):
        """The onnxruntime session, once it exists (ModelError if it cannot)."""
        self.ready()
        return self._session.result()

    def ready(self) -> None:
        """Wait until the session exists (and `input_name`, `fixed_batch` and the rest of the
        signature are set); raise its ModelError if it cannot."""
        try:
            self._session.result()
        except ModelError as exc:  # a fresh one each time: re-raising one object piles up tracebacks
            raise ModelError(str(exc)) from None

    def _check_signature(self, session) -> None:
        """Keep what `check_signature` finds (a fixed batch size is honoured); a class count that
        shape inference leaves open is settled by a tiny run."""
        crop = self.contract.preprocess.crop
        try:
            signature = check_signature(session.get_inputs(), session.get_outputs(), crop=crop,
                                        num_classes=self.contract.num_classes)
        except SignatureError as exc:
            raise ModelError(f"{self.path}: {exc}") from None
        self.input_name, self.output_name = signature.input_name, signature.output_name
        self.input_dtype = signature.input_dtype
        self.fixed_batch = signature.fixed_batch
        if not signature.classes_declared:
            self._logits(session, np.zeros((self.fixed_batch or 1, CHANNELS, crop, crop), np.float32))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.contract.labels

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """A path or PIL image -> float32 array (3, crop, crop), exactly the training eval transform.
        Decoding waits for room in the process-wide decode budget (runtime.image.DECODES)."""
        return prepare(image, self.contract.preprocess, self.decode)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs (float32, (N, classes)) for a preprocessed batch (N, 3, crop, crop),
        run in pieces of the model's fixed batch size if it has one."""
        return self._logits(self.session, batch)

    def _logits(self, session, batch: np.ndarray) -> np.ndarray:
        step = self.fixed_batch or max(1, len(batch))
        parts = [self._run(session, batch[i:i + step]) for i in range(0, len(batch), step)]
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def _run(self, session, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if self.fixed_batch and n < self.fixed_batch:  # pad a short last piece
            batch = np.concatenate([batch, np.zeros((self.fixed_batch - n, *batch.shape[1:]), batch.dtype)])
        try:
            out = session.run([self.output_name], {self.input_name: batch.astype(self.input_dtype, copy=False)})[0]
        except Exception as exc:  # onnxruntime's pybind errors: the model cannot run
            raise ModelError(f"{self.path}: the model failed to run ({first_line(exc, 300)})") from None
        if not isinstance(out, np.ndarray) or out.shape != (len(batch), self.contract.num_classes):
            shape = getattr(out, "shape", type(out).__name__)
            raise ModelError(
                f"{self.path}: the model output {shape} for a batch of {len(batch)}, "
                f"not (batch, {self.contract.num_classes}) as its labels say"
            )
        return out[:n].astype(np.float32, copy=False)

    def predict(self, images: Iterable[PredictInput], top_k: int = 5) -> list[Prediction]:
        """Classify paths, PIL images or already preprocessed arrays; one Prediction each, in order.
        An image whose output is not finite raises OutputError."""
        arrays = [x if isinstance(x, np.ndarray) else self.preprocess(x) for x in images]
        if not arrays:
            return []
        return [self.prediction(row, top_k) for row in self.logits(np.stack(arrays))]

    def prediction(self, logits: np.ndarray, top_k: int = 5) -> Prediction:
        """The Prediction for one image's logits (classes,); OutputError if any is NaN or infinite."""
        if not np.isfinite(logits).all():
            raise OutputError("the model's output is not finite (NaN or infinity); the model is broken")
        probs = softmax(logits[None], self.contract.temperature)[0]
        # Ranked by logit, which is the order of the probabilities (T > 0) and stays exact where a
        # small T makes several of them underflow to 0.
        order = np.argsort(-logits, kind="stable")[: max(1, min(top_k, len(probs)))]
        top = tuple((self.labels[i], float(probs[i])) for i in order)
        accepted = bool(self.acceptance.accepts(logits[None])[0])
        return Prediction(label=top[0][0], score=top[0][1], index=int(order[0]), top_k=top, accepted=accepted)


def acceptance(contract: Contract, *, min_confidence: float | None = None, accept_all: bool = False) -> Acceptance:
    """The rule that decides `Prediction.accepted`: the contract's own, or the override."""
    if accept_all:
        return Acceptance(temperature=contract.temperature)
    if min_confidence is not None:
        return Acceptance("max_softmax", float(min_confidence), contract.temperature)
    return Acceptance(contract.accept_score, contract.accept_threshold, contract.temperature)


def prepare(image: ImageSource, spec: Preprocess, decode_mode: str = "exact") -> np.ndarray:
    """What `Predictor.preprocess` does, without a model: the image policy, then `spec`'s resize,
    crop and normalization. `decode_mode` "fast" first reduces JPEGs in the DCT domain to the
    smallest scale whose shorter side stays >= FAST_DECODE_FACTOR x resize."""
    min_side = math.ceil(FAST_DECODE_FACTOR * spec.resize) if decode_mode == "fast" else None
    with opened(image, min_side=min_side) as im, DECODES.hold(decode_cost(im)):
        return preprocess(decode(im), spec)

