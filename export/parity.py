"""Parity between the PyTorch model and an ONNX variant of it, on random and real inputs.

Gates (explicit, in one place): fp32 needs max |logit difference| <= FP32_MAX_ABS_DIFF and 100%
top-1 agreement; reduced-precision variants need a top-1 drop against PyTorch of at most
`max_drop` percentage points on labeled images (without labels, the disagreement rate stands
in for the drop: it bounds it from above). With `max_class_drop`, a reduced-precision variant
must also keep every class's drop within it (export/per_class.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from alexnet_onnx.runtime.calibration import softmax

from .per_class import class_effects

FP32_MAX_ABS_DIFF = 1e-4
RANDOM_INPUTS = 16
_BATCH = 32


@dataclass(frozen=True)
class VerifySet:
    """Preprocessed inputs (N, 3, H, W) and, for real labeled images, their class indices."""

    random: np.ndarray
    images: np.ndarray
    labels: Optional[np.ndarray]
    source: str


@dataclass
class VariantReport:
    variant: str
    max_abs_diff: float
    top1_agreement: float
    max_softmax_diff: float
    n_random: int
    n_images: int
    top1_torch: Optional[float]
    top1_onnx: Optional[float]
    top1_drop_pp: Optional[float]
    gate: str
    passed: bool
    worst_class: Optional[str] = None
    worst_class_drop_pp: Optional[float] = None
    most_moved: list = field(default_factory=list)  # [label, predictions changed], most first
    per_class: dict = field(default_factory=dict)  # label -> n, top1_torch, top1_onnx, drop_pp, moved

    def to_dict(self) -> dict:
        return asdict(self)

    def gate_record(self) -> dict:
        """The verdict a written model carries in its contract (the per-class table stays in the report)."""
        keep = ("passed", "gate", "max_abs_diff", "top1_agreement", "top1_drop_pp", "worst_class", "worst_class_drop_pp",
                "n_images")
        return {k: v for k, v in self.to_dict().items() if k in keep}

    def line(self) -> str:
        acc = ""
        if self.top1_onnx is not None:
            acc = f" | top-1 torch {self.top1_torch:.4f} onnx {self.top1_onnx:.4f} (drop {self.top1_drop_pp:+.2f} pp)"
        if self.worst_class is not None and self.worst_class_drop_pp:
            acc += f" | worst class {self.worst_class} {self.worst_class_drop_pp:+.2f} pp"
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{self.variant}: max |logit diff| {self.max_abs_diff:.3g}, top-1 agreement {self.top1_agreement:.4f} "
                f"on {self.n_random} random + {self.n_images} real{acc} -> {verdict} ({self.gate})")


def random_inputs(crop: int, n: int = RANDOM_INPUTS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, crop, crop)).astype(np.float32)


@torch.no_grad()
def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(x[i : i + _BATCH])).float().numpy() for i in range(0, len(x), _BATCH)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def onnx_logits(session, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    outs = [session.run(None, {name: x[i : i + _BATCH].astype(dtype)})[0].astype(np.float32) for i in range(0, len(x), _BATCH)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def compare(
    variant: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], verify: VerifySet, max_drop_pp: float,
    *, max_class_drop_pp: Optional[float] = None, class_names: Sequence[str] = (),
) -> VariantReport:
    """`reference`/`candidate`: logits for the 'random' and 'images' inputs of `verify`;
    `class_names`: the labels in output order (default: the class indices)."""
    ref = np.concatenate([reference["random"], reference["images"]]) if len(verify.images) else reference["random"]
    cand = np.concatenate([candidate["random"], candidate["images"]]) if len(verify.images) else candidate["random"]
    max_abs = float(np.abs(ref - cand).max())
    agreement = float((ref.argmax(1) == cand.argmax(1)).mean())
    soft = float(np.abs(softmax(ref) - softmax(cand)).max())
    top1_ref = top1_cand = drop = None
    if verify.labels is not None and len(verify.labels):
        top1_ref = float((reference["images"].argmax(1) == verify.labels).mean())
        top1_cand = float((candidate["images"].argmax(1) == verify.labels).mean())
        drop = 100.0 * (top1_ref - top1_cand)
    if variant == "fp32":
        gate = f"max diff <= {FP32_MAX_ABS_DIFF:g} and 100% agreement"
        passed = max_abs <= FP32_MAX_ABS_DIFF and agreement == 1.0
    else:
        measured = drop if drop is not None else 100.0 * (1.0 - agreement)
        gate = f"top-1 drop <= {max_drop_pp:g} pp" + ("" if drop is not None else " (disagreement, no labels)")
        passed = measured <= max_drop_pp
    names = list(class_names) or [str(i) for i in range(ref.shape[1])]
    effects = class_effects(reference["images"], candidate["images"], verify.labels, names)
    if variant != "fp32" and max_class_drop_pp is not None:
        if effects.worst_drop_pp is None:
            gate += "; no real images, so no class checked"
        else:
            gate += f" and worst class <= {max_class_drop_pp:g} pp" + ("" if effects.labeled else " (disagreement)")
            passed = passed and effects.worst_drop_pp <= max_class_drop_pp
    return VariantReport(variant, max_abs, agreement, soft, len(verify.random), len(verify.images),
                         top1_ref, top1_cand, drop, gate, passed, effects.worst_class, effects.worst_drop_pp,
                         [list(m) for m in effects.most_moved], effects.per_class)
