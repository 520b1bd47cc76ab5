"""Classify a stream of image paths in batches and write one result per input, in input order.

Decoding and preprocessing run in a thread pool (Pillow and numpy release the GIL) while the
previous batch runs through onnxruntime; at most two batches are in flight, so memory stays
bounded on folders of any size.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional

import numpy as np

from .errors import ImageError, first_line
from .inputs import InputItem, Missing
from .predictor import Prediction, Predictor
from .terminal import printable

FORMATS = ("text", "json", "csv")


@dataclass(frozen=True)
class Result:
    path: Path
    prediction: Optional[Prediction] = None
    error: Optional[str] = None


def classify(
    predictor: Predictor, items: Iterable[InputItem], *, batch_size: int, top_k: int, workers: int
) -> Iterator[Result]:
    """Yield a Result per input item, in order; bad inputs become Results with `error` set."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque = deque()
        it = iter(items)
        while True:
            chunk = list(islice(it, batch_size))
            if chunk:
                pending.append((chunk, [_submit(pool, predictor, item) for item in chunk]))
            if pending and (len(pending) > 1 or not chunk):
                yield from _finish(predictor, *pending.popleft(), top_k=top_k)
            if not chunk and not pending:
                return


def _submit(pool: ThreadPoolExecutor, predictor: Predictor, item: InputItem) -> Optional[Future]:
    return None if isinstance(item, Missing) else pool.submit(predictor.preprocess, item)


def _finish(predictor: Predictor, chunk: list, futures: list, *, top_k: int) -> Iterator[Result]:
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
    for item, result in zip(chunk, outcome):
        if result is None:
            try:
                result = Result(item, prediction=predictor.prediction(next(rows), top_k))
            except ImageError as exc:  # a non-finite output: this image fails, the others stand
                result = Result(item, error=f"{item}: {exc}")
        yield result


class Writer:
    """Formats results: text (one line each), json (one object per line) or csv (one row per rank)."""

    def __init__(self, fmt: str, out: IO[str], err: IO[str]) -> None:
        self.fmt, self.out, self.err = fmt, out, err
        if fmt == "csv":
            self.csv = csv.writer(out, lineterminator="\n")
            self.csv.writerow(["path", "rank", "label", "score", "error"])

    def write(self, result: Result) -> None:
        pred = result.prediction
        if self.fmt == "json":  # lossless: os.fsencode(obj["path"]) gives back the file's bytes
            path = str(result.path)
            obj = {"path": path, **pred.to_dict()} if pred else {"path": path, "error": printable(result.error or "")}
            # ASCII escapes keep any name valid JSON and inert on a terminal; no NaN ever.
            self.out.write(json.dumps(obj, allow_nan=False) + "\n")
            return
        path = printable(str(result.path))
        top_k = [(printable(label), score) for label, score in pred.top_k] if pred else []
        if self.fmt == "csv":
            if pred is None:
                self.csv.writerow([path, "", "", "", printable(result.error or "")])
            for rank, (label, score) in enumerate(top_k, start=1):
                self.csv.writerow([path, rank, label, f"{score:.6f}", ""])
        elif pred is None:
            self.out.flush()
            self.err.write(f"error: {printable(result.error or '')}\n")
        else:
            ranked = " | ".join(f"{label} {score:.4f}" for label, score in top_k)
            self.out.write(f"{path}\t{ranked}\n")
