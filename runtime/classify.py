"""Classify a stream of image paths in batches and write one result per input, in input order.

Two thread pools share the cores (Pillow, numpy and onnxruntime release the GIL): `workers`
threads decode and preprocess images, and up to `workers` batches run through the model at once,
each as one onnxruntime call that waits for its own images. With a single-threaded session, model
calls then never wait at an intra-op barrier for a core a decoder holds, so whichever half is the
bottleneck gets every core. At most `workers + 1` batches are in flight, so memory stays bounded
on folders of any size. Given a Predictor whose session is still being built (`background=True`),
decoding starts at once and the first model call waits for the session.
"""

from __future__ import annotations

import csv
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import IO, Iterable, Iterator, Optional

import numpy as np

from .errors import ImageError, first_line
from .inputs import InputItem, Missing
from .predictor import Predictor
from .rows import Result, json_line, result_row
from .terminal import printable

# What the text format prints for an image that looks like none of the model's classes.
UNKNOWN = "unknown"


def classify(
    predictor: Predictor, items: Iterable[InputItem], *, batch_size: int, top_k: int, workers: int
) -> Iterator[Result]:
    """Yield a Result per input item, in order; bad inputs become Results with `error` set."""
    workers = max(1, workers)
    with ThreadPoolExecutor(workers) as decoders, ThreadPoolExecutor(workers) as models:
        pending: deque[Future] = deque()
        it = iter(items)
        try:
            while True:
                chunk = list(islice(it, batch_size))
                if chunk:
                    futures = [_submit(decoders, predictor, item) for item in chunk]
                    pending.append(models.submit(_finish, predictor, chunk, futures, top_k=top_k))
                if pending and (len(pending) > workers or not chunk):
                    yield from pending.popleft().result()
                if not chunk and not pending:
                    return
        finally:  # an error (a model that cannot load) or a reader that stopped: drop queued work
            decoders.shutdown(wait=False, cancel_futures=True)
            models.shutdown(wait=False, cancel_futures=True)


def _submit(pool: ThreadPoolExecutor, predictor: Predictor, item: InputItem) -> Optional[Future]:
    return None if isinstance(item, Missing) else pool.submit(predictor.preprocess, item)


def _finish(predictor: Predictor, chunk: list, futures: list, *, top_k: int) -> list[Result]:
    """The chunk's Results once its images are decoded and the model has run on them."""
    predictor.ready()  # a model that cannot load fails the run before any image is waited for
    arrays: list[np.ndarray] = []
    outcome: list = []
    for item, future in zip(chunk, futures):
        if future is None:
            outcome.append(Result(item.path, error=f"{item.path}: {item.reason}"))
            continue
        try:
            arrays.append(future.result())
            outcome.append(None)
        except ImageError as exc:
            outcome.append(Result(item, error=str(exc)))
        except Exception as exc:  # never let one odd file stop the others
            outcome.append(Result(item, error=f"{item}: cannot use image ({type(exc).__name__}: {first_line(exc)})"))
    rows = iter(predictor.logits(np.stack(arrays)) if arrays else [])
    results = []
    for item, result in zip(chunk, outcome):
        if result is None:
            try:
                result = Result(item, prediction=predictor.prediction(next(rows), top_k))
            except ImageError as exc:  # a non-finite output: this image fails, the others stand
                result = Result(item, error=f"{item}: {exc}")
        results.append(result)
    return results


class Writer:
    """Formats results: text (one line each), json (one object per line) or csv (one row per rank)."""

    def __init__(self, fmt: str, out: IO[str], err: IO[str]) -> None:
        self.fmt, self.out, self.err = fmt, out, err
        if fmt == "csv":
            self.csv = csv.writer(out, lineterminator="\n")
        # csv: the header comes with the first result, so a run that fails first writes nothing.
        # `accepted` comes last, so the columns before it keep their places.
        self.header = ["path", "rank", "label", "score", "error", "accepted"] if fmt == "csv" else None

    def write(self, result: Result) -> None:
        if self.header:
            self.csv.writerow(self.header)
            self.header = None
        if self.fmt == "json":
            self.out.write(json_line(result) + "\n")
            return
        row = result_row(result)
        path = printable(row["path"])
        if self.fmt == "csv":
            if "error" in row:
                self.csv.writerow([path, "", "", "", row["error"], ""])
            accepted = "true" if row.get("accepted") else "false"
            for rank, top in enumerate(row.get("top_k", ()), start=1):
                self.csv.writerow([path, rank, printable(top["label"]), f"{top['score']:.6f}", "", accepted])
        elif "error" in row:
            self.out.flush()
            self.err.write(f"error: {row['error']}\n")
        else:
            ranked = " | ".join(f"{printable(top['label'])} {top['score']:.4f}" for top in row["top_k"])
            if not row["accepted"]:
                ranked = f"{UNKNOWN} (best guess: {ranked})"
            self.out.write(f"{path}\t{ranked}\n")
