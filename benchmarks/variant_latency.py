"""onnxruntime latency of model variants at batch 1 and 32, alternating between models in rounds
so machine noise hits all alike; prints medians and the speed-up against the first model.

    python benchmarks/variant_latency.py m.onnx m.int8.onnx m.fp16.onnx [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from alexnet_onnx.export.report import median_seconds
from alexnet_onnx.runtime.session import create_session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sessions = {m.name: create_session(str(m)) for m in args.models}
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            shape = s.get_inputs()[0].shape
            for batch in (1, 32):
                feed = {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)}
                seconds = median_seconds(lambda: s.run(None, feed), warmup=1, budget_s=0.2)
                times.setdefault((name, batch), []).append(seconds)
    first = args.models[0].name
    print(f"{'model':<28} {'b1 ms':>8} {'b32 ms':>8} {'b1 speed-up':>12} {'b32 speed-up':>13}")
    for name in sessions:
        b1, b32 = (1000 * statistics.median(times[(name, b)]) for b in (1, 32))
        r1 = statistics.median(times[(first, 1)]) / statistics.median(times[(name, 1)])
        r32 = statistics.median(times[(first, 32)]) / statistics.median(times[(name, 32)])
        print(f"{name:<28} {b1:8.2f} {b32:8.1f} {r1:11.2f}x {r32:12.2f}x")


if __name__ == "__main__":
    main()
