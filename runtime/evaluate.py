"""Accuracy of a model on a labeled ImageFolder (class folders named as the model's labels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from . import folders
from .classify import Result, classify
from .errors import DataError
from .inputs import walk_images
from .predictor import Predictor


# Accuracies every report has; `--top-k K` adds top-K.
REPORTED_K = (1, 5)
CSV_HEADER = ("scope", "label", "n", "failed")


@dataclass
class EvalReport:
    """Accuracy over the images that were classified (`n`; `failed` could not be read), overall
    and per class: `accuracy[k]` is the top-k accuracy for each k in `ks`."""

    ks: tuple[int, ...] = REPORTED_K
    n: int = 0
    failed: int = 0
    accuracy: dict[int, float] = field(default_factory=dict)
    per_class: dict[str, dict] = field(default_factory=dict)  # label -> n, failed, top<k> (None when n is 0)

    @property
    def top1(self) -> float:
        return self.accuracy[1]

    @property
    def top5(self) -> float:
        return self.accuracy[5]

    def to_dict(self) -> dict:
        """`--format json`'s object: top<k> for each k, n, failed, per_class."""
        return {**{f"top{k}": self.accuracy[k] for k in self.ks}, "n": self.n, "failed": self.failed,
                "per_class": self.per_class}

    def csv_rows(self) -> list[list]:
        """`--format csv`'s rows: the header, one "all" row, then one "class" row per label."""
        tops = [f"top{k}" for k in self.ks]
        rows = [[*CSV_HEADER, *tops], ["all", "", self.n, self.failed, *(self.accuracy[k] for k in self.ks)]]
        for label, stats in self.per_class.items():
            rows.append(["class", label, stats["n"], stats["failed"], *("" if stats[t] is None else stats[t] for t in tops)])
        return rows


def class_folders(root: Path, labels: tuple[str, ...]) -> list[str]:
    """The class folders of `root` in label order; refuses folders that are not labels."""
    names = folders.class_folders(root)
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise DataError(
            f"{root}: class folder(s) {', '.join(unknown)} are not labels of the model "
            f"(labels: {', '.join(labels)})"
        )
    if not names:
        raise DataError(f"{root}: no class folders (expected DIR/<label>/<image>)")
    return names


def labeled_images(root: Path, labels: tuple[str, ...], follow_links: bool = False) -> list[tuple[Path, int]]:
    """(path, label index) for every image of the ImageFolder `root`, in a stable order; links
    to directories inside a class folder only with `follow_links` (runtime.inputs)."""
    items = [(path, labels.index(name)) for name in class_folders(root, labels)
             for path in walk_images(root / name, follow_links=follow_links)]
    if not items:
        raise DataError(f"{root}: no images found in the class folders")
    return items


class Scorer:
    """Top-k hits and counts per class, fed one (truth, Result) at a time. `k`: a top-k accuracy
    to report besides top-1 and top-5 (the Results must rank at least that many labels)."""

    def __init__(self, labels: tuple[str, ...], k: int | None = None) -> None:
        self.labels = labels
        self.ks = tuple(sorted(set(REPORTED_K) | ({k} if k else set())))
        self.hits = {k: np.zeros(len(labels), np.int64) for k in self.ks}
        self.counts = np.zeros(len(labels), np.int64)
        self.failures = np.zeros(len(labels), np.int64)

    @property
    def failed(self) -> int:
        return int(self.failures.sum())

    def add(self, target: int, result: Result) -> None:
        if result.prediction is None:
            self.failures[target] += 1
            return
        self.counts[target] += 1
        ranked = [label for label, _ in result.prediction.top_k]
        rank = ranked.index(self.labels[target]) if self.labels[target] in ranked else len(self.labels)
        for k in self.ks:
            self.hits[k][target] += rank < k

    def report(self) -> EvalReport:
        n = int(self.counts.sum())
        report = EvalReport(ks=self.ks, n=n, failed=self.failed,
                            accuracy={k: float(self.hits[k].sum() / n) if n else 0.0 for k in self.ks})
        for i, label in enumerate(self.labels):
            count, failures = int(self.counts[i]), int(self.failures[i])
            if count or failures:
                tops = {f"top{k}": float(self.hits[k][i] / count) if count else None for k in self.ks}
                report.per_class[label] = {**tops, "n": count, "failed": failures}
        return report


def evaluate(
    predictor: Predictor,
    root: Path,
    *,
    batch_size: int,
    workers: int,
    on_error: Callable[[str], None],
    on_progress: Optional[Callable[[int], None]] = None,
    top_k: int | None = None,
    follow_links: bool = False,
) -> EvalReport:
    """Classify every image of the ImageFolder `root` and score the answers (top-1, top-5, and
    top-`top_k` when given); images that cannot be read go to `on_error` and count as failed."""
    items = labeled_images(root, predictor.labels, follow_links)
    results = classify(predictor, (p for p, _ in items), batch_size=batch_size,
                       top_k=labels_to_rank(predictor.labels, top_k), workers=workers)
    return score(((target, result) for (_, target), result in zip(items, results)), predictor.labels,
                 on_error=on_error, on_progress=on_progress, top_k=top_k)


def labels_to_rank(labels: tuple[str, ...], top_k: int | None = None) -> int:
    """How many labels each image's Result must rank for a report with `top_k`."""
    return min(max(Scorer(labels, top_k).ks), len(labels))


def score(
    scored: Iterable[tuple[int, Result]],
    labels: tuple[str, ...],
    *,
    on_error: Callable[[str], None],
    on_progress: Optional[Callable[[int], None]] = None,
    top_k: int | None = None,
) -> EvalReport:
    """The report of (label index, Result) pairs in any order: local --eval and --ray --eval alike."""
    scorer = Scorer(labels, top_k)
    for done, (target, result) in enumerate(scored, start=1):
        scorer.add(target, result)
        if result.prediction is None:
            on_error(result.error or str(result.path))
        elif on_progress:
            on_progress(done)
    return scorer.report()
