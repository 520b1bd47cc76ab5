"""Dynamic batching for `onnx-serve`: the folder pipeline's design (runtime/classify.py) fed by requests.

`workers` threads decode and preprocess images through the image policy (`Predictor.preprocess`,
inside the process-wide decode budget) while up to `workers` batches run through one-thread model
calls side by side, so neither half waits for a core the other holds. A batch takes the decoded
images of one model, up to `max_batch`; while the cores are busy anyway (images still decoding, or
another batch running) it waits for more up to `max_wait_s`, and otherwise runs at once, so a lone
request pays no batching delay.

Admission is bounded: past `max_queue` images admitted and not yet answered, `submit` refuses at
once (`QueueFull`), so memory stays bounded under any load and the caller can answer 503.
Each image ends as one `--format json` row, built by the CLI's own code (`rows.json_line`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .rows import Result, json_line
from .errors import ImageError, ModelError, first_line
from .image import ALLOWED_FORMATS, Encoded
from .serve_metrics import Metrics
from .serve_models import Loaded

# The image policy's line for bytes that are no image it reads (runtime/image.py): a 415, not a 422.
UNSUPPORTED = f"not an image in a supported format ({', '.join(ALLOWED_FORMATS)})"


class QueueFull(Exception):
    """No room for these images now; try again shortly."""


class ShuttingDown(Exception):
    """The server is draining; it takes no new images."""


@dataclass(frozen=True)
class Row:
    """One image's answer: its `--format json` line, and `kind` ("ok", "unsupported", "image" or "model")."""

    line: str
    kind: str


@dataclass(eq=False)
class Job:
    model: Loaded
    image: Encoded
    top_k: int
    future: Future = field(default_factory=Future)
    array: Optional[np.ndarray] = None


class Batcher:
    def __init__(self, *, workers: int, max_batch: int, max_wait_s: float, max_queue: int,
                 metrics: Metrics) -> None:
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.metrics = metrics
        self._cond = threading.Condition()
        self._ready: deque[Job] = deque()
        self._waiting = 0  # admitted, not yet answered
        self._decoding = 0  # admitted, not yet decoded
        self._running = 0  # model calls in progress
        self._closed = False
        self._gather = threading.Lock()  # one model thread at a time collects a batch
        self._decoders = ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode")
        self._models = [threading.Thread(target=self._model_loop, name=f"model-{i}", daemon=True)
                        for i in range(max(1, workers))]
        for thread in self._models:
            thread.start()

    @property
    def depth(self) -> int:
        return self._waiting

    def submit(self, model: Loaded, images: list[Encoded], top_k: int) -> list[Job]:
        """Admit `images` for `model`, or raise QueueFull / ShuttingDown without admitting any.
        Each Job's future gets a Row; cancel a future to drop its image (a client that left)."""
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            if self._waiting + len(images) > self.max_queue:
                raise QueueFull()
            self._waiting += len(images)
            self._decoding += len(images)
            depth = self._waiting
        self.metrics.set_queue_depth(depth)
        jobs = [Job(model, image, top_k) for image in images]
        for job in jobs:
            self._decoders.submit(self._decode, job)
        return jobs

    def close(self) -> None:
        """Finish every admitted image, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._models:
            thread.join()
        self._decoders.shutdown(wait=True)

    def _decode(self, job: Job) -> None:
        row = None
        if job.future.cancelled():
            row = Row("", "gone")
        else:
            try:
                job.array = job.model.predictor.preprocess(job.image)
            except ImageError as exc:
                message = str(exc)
                row = Row(_error_line(job, message), "unsupported" if UNSUPPORTED in message else "image")
            except Exception as exc:  # never let one odd upload stop the others (as classify does)
                row = Row(_error_line(job, f"{job.image.name}: cannot use image "
                                           f"({type(exc).__name__}: {first_line(exc)})"), "image")
        with self._cond:
            self._decoding -= 1
            if row is None:
                self._ready.append(job)
            self._cond.notify_all()
        if row is not None:
            self._answer([(job, row)])

    def _model_loop(self) -> None:
        while True:
            with self._gather:
                batch = self._collect()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

    def _collect(self) -> Optional[list[Job]]:
        """The next batch: images of the first ready image's model, up to max_batch. Waits up to
        max_wait_s for more while images are decoding or another batch runs; None once closed and
        nothing is left."""
        with self._cond:
            while not self._ready:
                if self._closed and self._decoding == 0:
                    return None
                self._cond.wait()
            model = self._ready[0].model
            deadline = time.monotonic() + self.max_wait_s
            # Waiting costs no throughput while the cores are busy decoding or running another batch.
            while (self._decoding > 0 or self._running > 0) and \
                    sum(j.model is model for j in self._ready) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, rest = [], deque()
            while self._ready:
                job = self._ready.popleft()
                (batch if job.model is model and len(batch) < self.max_batch else rest).append(job)
            self._ready = rest
            self._running += 1
            return batch

    def _run(self, batch: list[Job]) -> None:
        live = [job for job in batch if not job.future.cancelled()]
        answers = [(job, Row("", "gone")) for job in batch if job.future.cancelled()]
        if live:
            predictor = live[0].model.predictor
            self.metrics.batch(len(live))
            try:
                logits = predictor.logits(np.stack([job.array for job in live]))
            except ModelError as exc:
                answers += [(job, Row(_error_line(job, str(exc)), "model")) for job in live]
            except Exception as exc:  # an onnxruntime failure of one batch must not end the thread
                message = f"the model failed to run ({type(exc).__name__}: {first_line(exc)})"
                answers += [(job, Row(_error_line(job, message), "model")) for job in live]
            else:
                for job, row in zip(live, logits):
                    answers.append((job, _prediction_row(job, row)))
        for job in batch:
            job.array = None
        self._answer(answers)

    def _answer(self, answers: list[tuple[Job, Row]]) -> None:
        ok = sum(row.kind == "ok" for _, row in answers)
        failed = sum(row.kind not in ("ok", "gone") for _, row in answers)
        for kind in ("unsupported", "image", "model"):
            n = sum(row.kind == kind for _, row in answers)
            if n:
                self.metrics.error(kind, n)
        with self._cond:
            self._waiting -= len(answers)
            depth = self._waiting
        self.metrics.set_queue_depth(depth)
        self.metrics.images_done(ok, failed)
        for job, row in answers:
            if job.future.set_running_or_notify_cancel():
                job.future.set_result(row)


def _prediction_row(job: Job, logits: np.ndarray) -> Row:
    name = job.image.name
    try:
        prediction = job.model.predictor.prediction(logits, job.top_k)
    except ImageError as exc:  # a non-finite output: this image fails, the others stand
        return Row(json_line(Result(name, error=f"{name}: {exc}")), "image")
    return Row(json_line(Result(name, prediction=prediction)), "ok")


def _error_line(job: Job, message: str) -> str:
    return json_line(Result(job.image.name, error=message))
