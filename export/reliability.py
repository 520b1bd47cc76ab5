"""Reliability diagrams (Guo et al. 2017, figure 1): accuracy against confidence in equal-width
bins, before (T = 1) and after temperature scaling, one row per variant, as one PNG."""

from __future__ import annotations

import io
from pathlib import Path

from alexnet_onnx.runtime.atomic import atomic_write
from alexnet_onnx.runtime.calibration import ECE_BINS, ece_of, reliability

from .scores import ScoreCheck

_PANEL_INCHES = 3.2


def reliability_png(checks: dict[str, ScoreCheck], path: Path, images: str) -> bool:
    """Write the diagram for every variant with check figures to `path`; False (nothing written)
    when none has them."""
    rows = {name: c for name, c in checks.items() if c.n_check}
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(rows), 2, figsize=(2 * _PANEL_INCHES, _PANEL_INCHES * len(rows)), squeeze=False)
    width = 1.0 / ECE_BINS
    centers = [(b + 0.5) * width for b in range(ECE_BINS)]
    for row, (name, check) in zip(axes, rows.items()):
        # Dividing by T never changes the top label, so `correct` holds for both panels.
        panels = (("T = 1", check.confidence_before, check.correct),
                  (f"T = {check.temperature:.3g}", check.confidence_after, check.correct))
        for ax, (title, confidence, correct) in zip(row, panels):
            bins = reliability(confidence, correct)
            acc = [0.0 if n == 0 else a for n, a, _ in bins]
            conf = [0.0 if n == 0 else c for n, _, c in bins]
            ax.bar(centers, acc, width=width, edgecolor="black", linewidth=0.5, label="accuracy")
            ax.bar(centers, [c - a for a, c in zip(acc, conf)], bottom=acc, width=width, color="red", alpha=0.3,
                   edgecolor="red", linewidth=0.5, label="gap")
            ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
                   title=f"{name}, {title}: ECE {ece_of(confidence, correct):.2%}")
            ax.title.set_fontsize(9)
        row[0].legend(loc="upper left", fontsize=7)
    fig.suptitle(f"Reliability on {images}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return True
