"""Folder throughput of onnx-predict, end to end (process start, decode, preprocess, inference,
output), for several model variants in one run, alternating to share machine noise.

    python benchmarks/predict_throughput.py --dir ../shared/data/flowers/train \
        --model m.onnx --model m.int8.onnx [--limit 1000] [--repeats 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--limit", type=int, default=1000, help="use the first N images (sorted)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    files = sorted(p for p in args.dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "imgs")  # symlinks: the same photos, a folder of exactly N
        folder.mkdir()
        for i, f in enumerate(files):
            os.symlink(f.resolve(), folder / f"{i:06d}{f.suffix}")
        exe = str(Path(sys.executable).parent / "onnx-predict")
        times: dict[str, list[float]] = {m.name: [] for m in args.model}
        for _ in range(args.repeats):
            for model in args.model:
                start = time.perf_counter()
                subprocess.run([exe, "-m", str(model), "--format", "csv", "--batch-size", str(args.batch_size), str(folder)],
                               check=True, stdout=subprocess.DEVNULL)
                times[model.name].append(time.perf_counter() - start)
    print(f"{len(files)} images from {args.dir}, batch {args.batch_size}, {len(os.sched_getaffinity(0))} cores, "
          f"best of {args.repeats}")
    for name, runs in times.items():
        best = min(runs)
        print(f"{name:<32} {best:7.2f} s  {len(files) / best:7.1f} img/s  (median {statistics.median(runs):.2f} s)")


if __name__ == "__main__":
    main()
