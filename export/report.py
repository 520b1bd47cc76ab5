"""What each variant costs: latency on this machine, size, accuracy — as a table and markdown."""

from __future__ import annotations

import platform
import time

import numpy as np

from runtime.session import available_cores

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


def latency_ms(data: bytes, crop: int, batch: int, budget_s: float = 0.5) -> float:
    """Median milliseconds per run at `batch`, all cores, after warm-up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.zeros((batch, 3, crop, crop), np.float32)}
    for _ in range(2):
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


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
