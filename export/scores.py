"""Calibrated scores for each variant, stored in its contract: the temperature T of the
softmax(logits / T) scores and the threshold of the "none of these" rule, both fitted on the
checkpoint's validation split, then checked on held-out images (before and after: ECE, NLL, top-1).
The graph is not touched: only the contract in the metadata changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from alexnet_onnx.runtime import calibration as cal
from alexnet_onnx.runtime.contract import Contract
from alexnet_onnx.runtime.session import create_session

from .onnx_export import with_contract
from .parity import onnx_logits

Log = Callable[[str], None]


@dataclass(frozen=True)
class LabeledImages:
    """Preprocessed images (N, 3, H, W), their class indices (None: unlabeled) and where they came from."""

    images: np.ndarray
    labels: Optional[np.ndarray]
    source: str

    @property
    def usable(self) -> bool:
        return self.labels is not None and len(self.images) > 0


@dataclass
class ScoreCheck:
    """One variant's stored scoring and how it fares on the check images (None where unmeasured)."""

    temperature: float
    accept_score: str
    accept_threshold: Optional[float]
    accepted_fit: Optional[float]  # share of the fit images the threshold accepts
    accepted_check: Optional[float]  # the same on the check images
    n_check: int
    ece_before: Optional[float] = None
    ece_after: Optional[float] = None
    ece_floor: Optional[float] = None  # what a perfectly calibrated model would measure on these images
    nll_before: Optional[float] = None
    nll_after: Optional[float] = None
    top1_before: Optional[float] = None
    top1_after: Optional[float] = None
    # Per check image: top probability at T = 1 and at T, and whether the top label is right.
    confidence_before: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    confidence_after: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    correct: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    def to_dict(self) -> dict:
        keys = ("temperature", "accept_score", "accept_threshold", "accepted_fit", "accepted_check", "n_check",
                "ece_before", "ece_after", "ece_floor", "nll_before", "nll_after", "top1_before", "top1_after")
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class Scores:
    """The variants with their scoring in the contract, each one's check, and the image sources."""

    variants: dict[str, bytes]
    checks: dict[str, ScoreCheck]
    fit_source: str
    check_source: str


def fit_scores(variants: dict[str, bytes], contract: Contract, fit: LabeledImages, check: LabeledImages, *,
               temperature: Optional[float], accept_score: str, log: Log) -> Scores:
    """Each variant's temperature (`temperature`, or fitted on `fit` when None) and acceptance
    threshold (ACCEPT_RATE of `fit` accepted; none without `fit`), written into its contract."""
    if not fit.usable:
        log(f"warning: no validation images ({fit.source}): " + (
            "temperature not fitted (T = 1, scores as trained)" if temperature is None else f"T = {temperature:g}")
            + " and no acceptance threshold (every image is accepted); the test split is never used for this")
    out: dict[str, bytes] = {}
    checks: dict[str, ScoreCheck] = {}
    for name, data in variants.items():
        session = create_session(data)
        fit_logits = onnx_logits(session, fit.images) if fit.usable else None
        if fit_logits is not None and not np.isfinite(fit_logits).all():
            log(f"warning: {name} gives non-finite logits on the validation images; its scores are left uncalibrated")
            fit_logits = None
        t = temperature if temperature is not None else (
            cal.fit_temperature(fit_logits, fit.labels) if fit_logits is not None else 1.0)
        if temperature is None and fit_logits is not None and not at_bound_ok(t):
            log(f"warning: {name}'s fitted temperature {t:.3g} sits at the end of the search range "
                f"{cal.FIT_RANGE}: the validation split ({len(fit.labels)} images) is too small or too easy to "
                "fit it; consider --temperature none or a VALUE")
        threshold = accepted_fit = None
        if fit_logits is not None:
            fit_scores_ = cal.score(fit_logits, t, accept_score)
            threshold = cal.threshold_for(fit_scores_)
            accepted_fit = float((fit_scores_ >= threshold).mean())
        rule = cal.Acceptance(accept_score, threshold, t)
        metrics = {**contract.metrics, "scores": {"fit_on": fit.source if fit_logits is not None else None,
                                                  "accept_rate": cal.ACCEPT_RATE if threshold is not None else None}}
        variant_contract = contract.with_(variant=name, temperature=t, accept_score=accept_score,
                                          accept_threshold=threshold, metrics=metrics)
        out[name] = with_contract(data, variant_contract)
        checks[name] = check_scores(session, check, rule, accepted_fit)
        log(summary(name, checks[name]))
    return Scores(out, checks, fit.source, check.source)


def check_scores(session, check: LabeledImages, rule: cal.Acceptance, accepted_fit: Optional[float]) -> ScoreCheck:
    """ECE, NLL and top-1 at T = 1 and at the rule's T, and the share accepted, on `check`."""
    result = ScoreCheck(rule.temperature, rule.kind, rule.threshold, accepted_fit, None, 0)
    if not check.usable:
        return result
    logits = onnx_logits(session, check.images)
    if not np.isfinite(logits).all():
        return result
    labels = check.labels
    before, after = cal.softmax(logits), cal.softmax(logits, rule.temperature)
    result.n_check = len(labels)
    result.accepted_check = float(rule.accepts(logits).mean())
    result.correct = after.argmax(1) == labels
    result.confidence_before, result.confidence_after = before.max(1), after.max(1)
    result.top1_before = float((before.argmax(1) == labels).mean())
    result.top1_after = float(result.correct.mean())
    result.ece_before = cal.ece_of(result.confidence_before, before.argmax(1) == labels)
    result.ece_after = cal.ece_of(result.confidence_after, result.correct)
    result.ece_floor = cal.ece_floor(result.confidence_after)
    result.nll_before = cal.nll(logits, labels)
    result.nll_after = cal.nll(logits, labels, rule.temperature)
    return result


def summary(name: str, check: ScoreCheck) -> str:
    """One log line: T, the threshold, and the check figures."""
    rule = ("no threshold" if check.accept_threshold is None else
            f"{check.accept_score} >= {check.accept_threshold:.4g} accepts {check.accepted_fit:.1%} of val")
    line = f"{name}: scores softmax(logits / {check.temperature:.4g}), {rule}"
    if check.ece_before is not None:
        line += (f"; on {check.n_check} check images ECE {check.ece_before:.2%} -> {check.ece_after:.2%} "
                 f"(a perfectly calibrated model: {check.ece_floor:.2%}), "
                 f"NLL {check.nll_before:.4f} -> {check.nll_after:.4f}")
    return line


def at_bound_ok(temperature: float) -> bool:
    """False for a fitted temperature within 1% of either end of calibration.FIT_RANGE."""
    low, high = cal.FIT_RANGE
    return low * 1.01 < temperature < high / 1.01
