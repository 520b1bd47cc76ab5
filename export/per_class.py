"""Per-class effects of a variant: an int8 or fp16 model can keep its average top-1 and still lose
one class. Each class's top-1 for PyTorch and the variant, the worst class's drop, and the classes
whose predictions moved most (changed from PyTorch's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

MOST_MOVED = 3  # classes named as "moved most" in reports


@dataclass(frozen=True)
class ClassEffects:
    """`per_class`: label -> {"n", "top1_torch", "top1_onnx", "drop_pp", "moved"}. Labeled images
    are grouped by their true class; unlabeled ones by PyTorch's prediction, where the share of
    moved predictions stands in for the drop (it bounds it from above) and top-1 is None."""

    per_class: dict[str, dict] = field(default_factory=dict)
    worst_class: Optional[str] = None
    worst_drop_pp: Optional[float] = None
    most_moved: tuple[tuple[str, int], ...] = ()
    labeled: bool = False


def class_effects(reference: np.ndarray, candidate: np.ndarray, labels: Optional[np.ndarray],
                  names: Sequence[str]) -> ClassEffects:
    """Effects of `candidate` logits against `reference` ones (N, classes) on the same images."""
    if len(reference) == 0:
        return ClassEffects()
    ref, cand = reference.argmax(1), candidate.argmax(1)
    labeled = labels is not None and len(labels) == len(reference)
    group = labels if labeled else ref
    per_class: dict[str, dict] = {}
    for index, name in enumerate(names):
        member = group == index
        n = int(member.sum())
        if not n:
            continue
        moved = int((ref[member] != cand[member]).sum())
        if labeled:
            top1_torch = float((ref[member] == index).mean())
            top1_onnx = float((cand[member] == index).mean())
            drop = 100.0 * (top1_torch - top1_onnx)
        else:
            top1_torch = top1_onnx = None
            drop = 100.0 * moved / n
        per_class[name] = {"n": n, "top1_torch": top1_torch, "top1_onnx": top1_onnx, "drop_pp": drop, "moved": moved}
    worst = max(per_class, key=lambda name: per_class[name]["drop_pp"])  # first of equals: label order
    moved = sorted(((name, row["moved"]) for name, row in per_class.items() if row["moved"]), key=lambda x: -x[1])
    return ClassEffects(per_class, worst, per_class[worst]["drop_pp"], tuple(moved[:MOST_MOVED]), labeled)
