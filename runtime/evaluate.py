"""Accuracy of a model on a labeled ImageFolder (class folders named as the model's labels)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .classify import Result, classify
from .errors import DataError
from .inputs import walk_images
from .predictor import Predictor


@dataclass
class EvalReport:
    n: int = 0
    top1: float = 0.0
    top5: float = 0.0
    per_class: dict = field(default_factory=dict)
    failed: int = 0

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "n": self.n, "failed": self.failed, "per_class": self.per_class}


def class_folders(root: Path, labels: tuple[str, ...]) -> list[str]:
    """The class folders of `root` in label order; refuses folders that are not labels."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected an ImageFolder: DIR/<label>/<image>)")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise DataError(
            f"{root}: class folder(s) {', '.join(unknown)} are not labels of the model "
            f"(labels: {', '.join(labels)})"
        )
    if not names:
        raise DataError(f"{root}: no class folders (expected DIR/<label>/<image>)")
    return names


def labeled_images(root: Path, labels: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(path, label index) for every image of the ImageFolder `root`, in a stable order."""
    items = [(path, labels.index(name)) for name in class_folders(root, labels) for path in walk_images(root / name)]
    if not items:
        raise DataError(f"{root}: no images found in the class folders")
    return items


class Scorer:
    """Top-1/top-5 and per-class counts, fed one (truth, Result) at a time."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.hits1 = np.zeros(len(labels), np.int64)
        self.hits5 = np.zeros(len(labels), np.int64)
        self.counts = np.zeros(len(labels), np.int64)
        self.failed = 0

    def add(self, target: int, result: Result) -> None:
        if result.prediction is None:
            self.failed += 1
            return
        self.counts[target] += 1
        self.hits1[target] += result.prediction.index == target
        self.hits5[target] += self.labels[target] in (label for label, _ in result.prediction.top_k)

    def report(self) -> EvalReport:
        labels, counts = self.labels, self.counts
        report = EvalReport(n=int(counts.sum()), failed=self.failed)
        if report.n:
            report.top1 = float(self.hits1.sum() / report.n)
            report.top5 = float(self.hits5.sum() / report.n)
        report.per_class = {
            labels[i]: {"top1": float(self.hits1[i] / counts[i]), "n": int(counts[i])} for i in range(len(labels)) if counts[i]
        }
        return report


def evaluate(
    predictor: Predictor,
    root: Path,
    *,
    batch_size: int,
    workers: int,
    on_error: Callable[[str], None],
    on_progress: Optional[Callable[[int], None]] = None,
) -> EvalReport:
    items = labeled_images(root, predictor.labels)
    scorer = Scorer(predictor.labels)
    k = min(5, len(predictor.labels))
    results = classify(predictor, (p for p, _ in items), batch_size=batch_size, top_k=k, workers=workers)
    for done, ((_, target), result) in enumerate(zip(items, results), start=1):
        scorer.add(target, result)
        if result.prediction is None:
            on_error(result.error or str(result.path))
        elif on_progress:
            on_progress(done)
    return scorer.report()
