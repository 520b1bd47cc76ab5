"""What each variant costs: latency on this machine, size, accuracy — as a table and markdown."""

from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np

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
    ("gate", "passed", "{}"),
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


def _cells(row: dict) -> list[str]:
    cells = []
    for _, key, fmt in _COLUMNS:
        value = row.get(key)
        if key == "passed":
            cells.append("pass" if value else "FAIL")
        else:
            cells.append("-" if value is None else fmt.format(value))
    return cells


def text_table(rows: dict[str, dict]) -> str:
    table = [[title for title, _, _ in _COLUMNS]] + [_cells(r) for r in rows.values()]
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in table)


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''}, {available_cores()} cores".replace(" ,", ",")


def markdown_table(rows: dict[str, dict], verify_source: str) -> str:
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
    return "\n".join(lines) + "\n"
