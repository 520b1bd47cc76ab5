"""What each variant costs: latency on this machine, size, accuracy, per-class effects and
calibrated scores — as tables and markdown."""

from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np

from alexnet_onnx.runtime.calibration import ECE_BINS
from alexnet_onnx.runtime.session import available_cores, create_session

_COLUMNS = [
    ("variant", "variant", "{}"),
    ("size MB", "size_mb", "{:.1f}"),
    ("b1 ms", "latency_b1_ms", "{:.2f}"),
    ("b32 ms", "latency_b32_ms", "{:.1f}"),
    ("top-1 torch", "top1_torch", "{:.4f}"),
    ("top-1 onnx", "top1_onnx", "{:.4f}"),
    ("drop pp", "top1_drop_pp", "{:+.2f}"),
    ("agreement", "top1_agreement", "{:.4f}"),
    ("max abs dlogit", "max_abs_diff", "{:.2g}"),
    ("max abs dsoftmax", "max_softmax_diff", "{:.2g}"),
    ("worst class pp", "worst_class_drop_pp", "{:+.2f}"),
    ("gate", "passed", "{}"),
]
# The scores table: ECE and NLL before (T = 1) and after temperature scaling (with the ECE a perfectly
# calibrated model would show on as many images), and the acceptance rule.
_SCORE_COLUMNS = [
    ("variant", "variant", "{}"),
    ("T", "temperature", "{:.4g}"),
    ("ECE before", "ece_before", "{:.2%}"),
    ("ECE after", "ece_after", "{:.2%}"),
    ("ECE floor", "ece_floor", "{:.2%}"),
    ("NLL before", "nll_before", "{:.4f}"),
    ("NLL after", "nll_after", "{:.4f}"),
    ("top-1", "top1_after", "{:.4f}"),
    ("score", "accept_score", "{}"),
    ("threshold", "accept_threshold", "{:.4g}"),
    ("accepted val", "accepted_fit", "{:.1%}"),
    ("accepted check", "accepted_check", "{:.1%}"),
]


def median_seconds(call: Callable[[], object], *, warmup: int = 2, budget_s: float = 0.5, runs: tuple[int, int] = (3, 200)) -> float:
    """Median seconds of `call` after `warmup` calls: at least runs[0] runs, then more until
    `budget_s` is spent or runs[1] are done. The one timing loop of the project's benchmarks."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < runs[0] or (time.perf_counter() < deadline and len(times) < runs[1]):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def latency_ms(data: bytes, crop: int, batch: int, budget_s: float = 0.5) -> float:
    """Median milliseconds per run at `batch`, all cores, after warm-up."""
    session = create_session(data)
    feed = {session.get_inputs()[0].name: np.zeros((batch, 3, crop, crop), np.float32)}
    return 1000 * median_seconds(lambda: session.run(None, feed), budget_s=budget_s)


def _cells(row: dict, columns: list = _COLUMNS) -> list[str]:
    cells = []
    for _, key, fmt in columns:
        value = row.get(key)
        if key == "passed":
            cells.append("pass" if value else "FAIL")
        elif key == "worst_class_drop_pp" and value is not None and value > 0:
            cells.append(f"{fmt.format(value)} ({row['worst_class']})")
        else:
            cells.append("-" if value is None else fmt.format(value))
    return cells


def text_table(rows: dict[str, dict], columns: list = _COLUMNS) -> str:
    table = [[title for title, _, _ in columns]] + [_cells(r, columns) for r in rows.values()]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in table)


def scores_table(rows: dict[str, dict]) -> str:
    """The scores of each variant (its row's "scores" dict), as text."""
    return text_table({name: {"variant": name, **row["scores"]} for name, row in rows.items()}, _SCORE_COLUMNS)


def _markdown_rows(columns: list, rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(t for t, _, _ in columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''}, {available_cores()} cores".replace(" ,", ",")


def markdown_table(rows: dict[str, dict], verify_source: str, *, scores_source: str = "", fit_source: str = "",
                   diagram: str = "") -> str:
    lines = [
        "# Export report",
        "",
        f"Accuracy on {verify_source}; latency = median onnxruntime run on {machine()}.",
        "",
        "| " + " | ".join(t for t, _, _ in _COLUMNS) + " | file |",
        "|" + "---|" * (len(_COLUMNS) + 1),
    ]
    for row in rows.values():
        lines.append("| " + " | ".join(_cells(row)) + f" | {row.get('written_to') or 'not written'} |")
    lines += per_class_markdown(rows, verify_source)
    if any("scores" in row for row in rows.values()):
        lines += ["", "## Scores", "",
                  f"Scores are softmax(logits / T); T and the acceptance threshold (the \"none of these\" rule) "
                  f"were fitted on {fit_source or 'nothing'}; ECE ({ECE_BINS} bins), NLL and top-1 on {scores_source}.",
                  ""]
        lines += _markdown_rows(_SCORE_COLUMNS, [_cells({"variant": n, **r["scores"]}, _SCORE_COLUMNS)
                                                 for n, r in rows.items() if "scores" in r])
        if diagram:
            lines += ["", f"![Reliability diagrams]({diagram})"]
    return "\n".join(lines) + "\n"


def per_class_markdown(rows: dict[str, dict], verify_source: str) -> list[str]:
    """Per-class top-1 of PyTorch and each variant, the classes whose predictions moved most."""
    first = next(iter(rows.values()))
    classes = list(first.get("per_class") or {})
    if not classes:
        return []
    labeled = first["per_class"][classes[0]]["top1_torch"] is not None
    what = "top-1" if labeled else "share of predictions that changed from PyTorch's (no labels)"
    lines = ["", "## Per class", "", f"Per-class {what} on {verify_source}.", "",
             "| class | n | " + ("torch | " if labeled else "") + " | ".join(rows) + " |",
             "|" + "---|" * (2 + labeled + len(rows))]
    for name in classes:
        cells = [name, str(first["per_class"][name]["n"])]
        if labeled:
            cells.append(f"{first['per_class'][name]['top1_torch']:.4f}")
        for row in rows.values():
            entry = row["per_class"].get(name)
            value = "-" if entry is None else (f"{entry['top1_onnx']:.4f}" if labeled else f"{entry['drop_pp'] / 100:.4f}")
            cells.append(value)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for variant, row in rows.items():
        moved = ", ".join(f"{label} ({count})" for label, count in row.get("most_moved") or []) or "none"
        worst, worst_drop = row.get("worst_class"), row.get("worst_class_drop_pp")
        drop = "no class dropped; " if not worst_drop or worst_drop <= 0 else f"worst class {worst} ({worst_drop:+.2f} pp); "
        lines.append(f"- {variant}: {drop}predictions moved most: {moved}")
    return lines
