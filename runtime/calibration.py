"""Calibrated scores and "none of these", from the logits a model already gives. numpy only.

Temperature scaling (Guo et al. 2017): scores are softmax(logits / T), with T fitted on held-out
images by minimizing the negative log-likelihood; dividing by T > 0 never changes the argmax.
Whether an image looks like the training classes is judged by one of two scores, higher meaning
more in-distribution: `max_softmax` (the top calibrated probability) or `energy`
(logsumexp(logits / T), Liu et al. 2020). A threshold on the score is chosen so that a given share
of held-out in-distribution images is accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

SCORES = ("max_softmax", "energy")
ECE_BINS = 15  # equal-width confidence bins, as Guo et al. report ECE
ACCEPT_RATE = 0.95  # share of held-out in-distribution images the stored threshold accepts
# The temperatures a fit searches: far beyond any trained network's (typically 0.5..5), so a
# fit that ends at a bound means the held-out data are degenerate, not that the range is short.
FIT_RANGE = (0.05, 20.0)
_FIT_TOLERANCE = 1e-7  # golden-section stop, in log T
_GOLDEN = (math.sqrt(5) - 1) / 2


def _scaled(logits: np.ndarray, temperature: float) -> np.ndarray:
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return np.asarray(logits, np.float64) / temperature


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) along the last axis, in float64."""
    z = _scaled(logits, temperature)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) along the last axis, in float64; T = 1 is the plain softmax."""
    z = _scaled(logits, temperature)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """logsumexp(logits / T) per row: large where some class fits well (the negative of the
    energy of Liu et al. divided by T)."""
    z = _scaled(logits, temperature)
    top = z.max(axis=-1)
    return top + np.log(np.exp(z - top[..., None]).sum(axis=-1))


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The top calibrated probability per row."""
    return softmax(logits, temperature).max(axis=-1)


def score(logits: np.ndarray, temperature: float, kind: str) -> np.ndarray:
    """The in-distribution score `kind` (one of SCORES) per row of `logits` (N, classes)."""
    if kind == "max_softmax":
        return max_softmax(logits, temperature)
    if kind == "energy":
        return energy(logits, temperature)
    raise ValueError(f"score {kind!r} is unknown (valid: {', '.join(SCORES)})")


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T)."""
    logp = log_softmax(logits, temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = ECE_BINS) -> float:
    """Expected calibration error (0..1): over `bins` equal-width bins of the top probability,
    the share of images in a bin times |accuracy - mean confidence| there, summed."""
    probs = softmax(logits, temperature)
    return ece_of(probs.max(axis=1), probs.argmax(axis=1) == labels, bins)


def ece_of(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE from each image's top probability and whether its top label was right."""
    stats = reliability(confidence, correct, bins)
    n = max(1, len(confidence))
    return float(sum(count / n * abs(acc - conf) for count, acc, conf in stats if count))


def ece_draws(confidence: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> np.ndarray:
    """ECEs a perfectly calibrated model with these top probabilities shows on this many images,
    one per draw: each draw marks every image right with probability equal to its confidence.
    ECE sums |accuracy - confidence| over bins, so sampling noise alone keeps it above zero, more
    so on few images."""
    confidence = np.asarray(confidence, np.float64)
    if not len(confidence):
        raise ValueError("an ECE floor needs at least one confidence")
    rng = np.random.default_rng(seed)
    return np.array([ece_of(confidence, rng.random(len(confidence)) < confidence, bins) for _ in range(draws)])


def ece_floor(confidence: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> float:
    """The median of ece_draws: a measured ECE near it is as good as this many images can show."""
    return float(np.median(ece_draws(confidence, bins, draws, seed)))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[tuple[int, float, float]]:
    """Per equal-width bin (lower edge exclusive, the first bin includes 0): (count, accuracy,
    mean confidence); empty bins give (0, nan, nan)."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    # Bin b holds (b/bins, (b+1)/bins]: ceil(c * bins) - 1, with 0 in the first bin.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        member = which == b
        count = int(member.sum())
        if count:
            out.append((count, float(correct[member].mean()), float(confidence[member].mean())))
        else:
            out.append((0, math.nan, math.nan))
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = FIT_RANGE) -> float:
    """The T within `bounds` that minimizes the NLL of `labels` under softmax(logits / T).

    NLL is convex in 1/T, hence unimodal in log T: a golden-section search over log T finds the
    minimum without derivatives or scipy."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(f"fitting a temperature needs labeled logits, got {len(logits)} rows and {len(labels)} labels")
    if not np.isfinite(logits).all():
        raise ValueError("fitting a temperature needs finite logits")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    def loss(log_t: float) -> float:
        return nll(logits, labels, math.exp(log_t))

    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > _FIT_TOLERANCE:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def threshold_for(scores: np.ndarray, rate: float = ACCEPT_RATE) -> float:
    """The largest threshold t for which `score >= t` accepts at least `rate` of `scores`
    (at most one image more than the rate asks, ties aside)."""
    ordered = np.sort(np.asarray(scores, np.float64))
    if len(ordered) == 0:
        raise ValueError("choosing a threshold needs at least one score")
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate!r}")
    rejectable = int(math.floor((1 - rate) * len(ordered) + 1e-9))
    return float(ordered[rejectable])


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Area under the ROC curve of telling `inside` (in-distribution) scores from `outside`
    ones, higher meaning inside: P(inside > outside) + P(tie) / 2 (Mann-Whitney)."""
    inside = np.asarray(inside, np.float64)
    outside = np.asarray(outside, np.float64)
    if not len(inside) or not len(outside):
        raise ValueError("AUROC needs scores on both sides")
    both = np.concatenate([inside, outside])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), np.float64)
    sorted_scores = both[order]
    # Average ranks over ties (1-based).
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2
    n_in, n_out = len(inside), len(outside)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def false_accept_rate(outside: np.ndarray, threshold: float) -> float:
    """Share of `outside` scores the rule `score >= threshold` accepts."""
    outside = np.asarray(outside, np.float64)
    return float((outside >= threshold).mean()) if len(outside) else math.nan


@dataclass(frozen=True)
class Acceptance:
    """When an image counts as one of the model's classes: `score(logits, T, kind) >= threshold`;
    no threshold accepts every image."""

    kind: str = "max_softmax"
    threshold: Optional[float] = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SCORES:
            raise ValueError(f"score {self.kind!r} is unknown (valid: {', '.join(SCORES)})")

    def accepts(self, logits: np.ndarray) -> np.ndarray:
        """One bool per row of `logits` (N, classes)."""
        logits = np.asarray(logits)
        if self.threshold is None:
            return np.ones(len(logits), bool)
        return score(logits, self.temperature, self.kind) >= self.threshold
