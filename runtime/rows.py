"""One result row per input, the same for every output: `--format json`'s object, {"path",
"label", "score", "top_k": [{"label", "score"}...], "accepted"} for a prediction or {"path",
"error"} for an input that failed. Scores are calibrated, softmax(logits / T); `accepted` is false
for an image that looks like none of the model's classes (`label` is then the best guess). The text and CSV formats, the JSON lines and the cluster's Parquet and JSON
lines are all written from `result_row`; `result_from_row` reads a row back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import DataError
from .predictor import Prediction
from .terminal import printable


@dataclass(frozen=True)
class Result:
    path: Path | str  # str: a URI, kept as given
    prediction: Optional[Prediction] = None
    error: Optional[str] = None


def result_row(result: Result) -> dict:
    """The row of a result. The error text is made printable here; the path is kept as it is
    (json.dumps escapes it, text and CSV escape it as they write it)."""
    path, pred = str(result.path), result.prediction
    if pred is None:
        return {"path": path, "error": printable(result.error or "")}
    return {"path": path, **pred.to_dict()}


def json_line(result: Result) -> str:
    """`--format json`'s line for a result. Lossless: os.fsencode(obj["path"]) gives back the
    file's bytes; ASCII escapes keep any name valid JSON and inert on a terminal; never NaN."""
    return json.dumps(result_row(result), allow_nan=False)


def result_from_row(row: dict, labels: tuple[str, ...]) -> Result:
    """A row back as a Result for a model with `labels`; a label the model lacks is a row some
    other model wrote (DataError)."""
    path = row["path"]
    if "error" in row:
        return Result(path, error=row["error"])
    if row["label"] not in labels:
        raise DataError(f"{path}: its row names label {row['label']!r}, which the model does not have "
                        "(the rows were written with another model)")
    top = tuple((t["label"], float(t["score"])) for t in row["top_k"])
    # A row without `accepted` comes from before models could say "none of these": all were accepted.
    prediction = Prediction(label=row["label"], score=float(row["score"]), index=labels.index(row["label"]), top_k=top,
                            accepted=bool(row.get("accepted", True)))
    return Result(path, prediction=prediction)
