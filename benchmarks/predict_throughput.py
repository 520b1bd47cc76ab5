"""Folder throughput of onnx-predict, end to end (process start, decode, preprocess, inference,
output), for several model variants in one run, alternating to share machine noise.

For the ceiling, the same run also times the two halves alone: the model on ready-made batches
(onnxruntime, all cores) and decode + preprocess of the same photos (one core). With both halves
sharing the cores, end-to-end img/s cannot exceed 1 / (model s/img + preprocess s/img / cores).

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
    cores = len(os.sched_getaffinity(0))
    prep = preprocess_seconds(files, args.model[0])
    print(f"{len(files)} images from {args.dir}, batch {args.batch_size}, {cores} cores, best of {args.repeats}; "
          f"decode + preprocess alone: {1000 * prep:.2f} ms/img on one core")
    print(f"{'model':<24} {'end-to-end s':>12} {'img/s':>7} {'model-only img/s':>17} {'ceiling img/s':>14}")
    for model in args.model:
        best = min(times[model.name])
        model_only = model_seconds(model, args.batch_size)
        ceiling = 1 / (model_only + prep / cores)
        print(f"{model.name:<24} {best:12.2f} {len(files) / best:7.1f} {1 / model_only:17.1f} {ceiling:14.1f}")


def preprocess_seconds(files: list[Path], model: Path) -> float:
    """Median-of-3 seconds per image to decode and preprocess `files` on one thread."""
    from runtime.image import load_image
    from runtime.predictor import Predictor
    from runtime.preprocess import preprocess

    spec = Predictor(model, threads=1, few_images=True).contract.preprocess
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        for f in files:
            preprocess(load_image(f), spec)
        runs.append((time.perf_counter() - start) / len(files))
    return statistics.median(runs)


def model_seconds(model: Path, batch: int) -> float:
    """Median seconds per image for onnxruntime on random batches, as onnx-predict runs it."""
    import numpy as np

    from runtime.predictor import Predictor

    p = Predictor(model)
    crop = p.contract.preprocess.crop
    x = np.random.default_rng(0).standard_normal((batch, 3, crop, crop)).astype(np.float32)
    p.logits(x)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        p.logits(x)
        runs.append((time.perf_counter() - start) / batch)
    return statistics.median(runs)


if __name__ == "__main__":
    main()
