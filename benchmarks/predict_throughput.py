"""Folder throughput of onnx-predict, end to end (process start, decode, preprocess, inference,
output), for several model variants in one run, alternating to share machine noise.

For the ceiling, the same run also times the two halves alone: the model on ready-made batches
(onnxruntime, all cores) and decode + preprocess of the same photos, once on one core and once
with one decoding process per core side by side. With both halves sharing the cores, end-to-end
img/s cannot exceed 1 / (model s/img + one core's decode s/img / cores): the ceiling. The
side-by-side decode rate, printed with its scaling over one core, shows how far the cores
themselves fall short of that on a virtual machine (on a noisy one, it is too noisy to serve as
the ceiling: runs have beaten it). Given both decode modes, it ends with each model's fast / exact
ratio end to end beside the ratio of the two ceilings, the most fast can gain with both halves
fully used.

    python benchmarks/predict_throughput.py --dir ../shared/data/flowers/train \
        --model m.onnx --model m.int8.onnx [--decode exact --decode fast] [--limit 1000] [--repeats 2]

Run it once on thumbnails and once on camera photos (benchmarks/camera_photos.py): the decode +
preprocess cost per photo, printed per decode mode, is what separates the two.
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
    ap.add_argument("--batch-size", type=int, default=None, help="default: onnx-predict's own")
    ap.add_argument("--decode", action="append", choices=["exact", "fast"], help="repeat for both [default: exact]")
    args = ap.parse_args()
    decodes = args.decode or ["exact"]
    files = sorted(p for p in args.dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "imgs")  # symlinks: the same photos, a folder of exactly N
        folder.mkdir()
        for i, f in enumerate(files):
            os.symlink(f.resolve(), folder / f"{i:06d}{f.suffix}")
        exe = str(Path(sys.executable).parent / "onnx-predict")
        runs = [(model, mode) for model in args.model for mode in decodes]
        times: dict[tuple, list[float]] = {run: [] for run in runs}
        batch = ["--batch-size", str(args.batch_size)] if args.batch_size else []
        for _ in range(args.repeats):
            for model, mode in runs:
                start = time.perf_counter()
                subprocess.run([exe, "-m", str(model), "--format", "csv", "--decode", mode, *batch, str(folder)],
                               check=True, stdout=subprocess.DEVNULL)
                times[model, mode].append(time.perf_counter() - start)
    cores = len(os.sched_getaffinity(0))
    prep = {mode: preprocess_seconds(files, args.model[0], mode, 1) for mode in decodes}
    prep_all = {mode: preprocess_seconds(files, args.model[0], mode, cores) for mode in decodes}
    print(f"{len(files)} images from {args.dir}, batch {args.batch_size or 'default'}, {cores} cores, "
          f"best of {args.repeats}; decode + preprocess alone, one core: "
          + ", ".join(f"{mode} {1000 * s:.1f} ms/img" for mode, s in prep.items())
          + f"; {cores} decoders side by side: "
          + ", ".join(f"{mode} {1 / s:.1f} img/s ({prep[mode] / s:.2f}x one core)" for mode, s in prep_all.items()))
    print(f"{'model':<24} {'decode':<7} {'end-to-end s':>12} {'img/s':>7} {'model-only img/s':>17} "
          f"{'ceiling img/s':>14} {'of ceiling':>11}")
    rates, ceilings = {}, {}
    model_only_s = {model: model_seconds(model, args.batch_size or 32) for model in args.model}
    for model, mode in runs:
        best = min(times[model, mode])
        model_only = model_only_s[model]
        ceilings[model, mode] = ceiling = 1 / (model_only + prep[mode] / cores)
        rates[model, mode] = rate = len(files) / best
        print(f"{model.name:<24} {mode:<7} {best:12.2f} {rate:7.1f} {1 / model_only:17.1f} {ceiling:14.1f} "
              f"{rate / ceiling:10.0%}")
    if set(decodes) == {"exact", "fast"}:  # what fast can gain end to end at most: the ratio of the two ceilings
        for model in args.model:
            print(f"{model.name}: fast / exact {rates[model, 'fast'] / rates[model, 'exact']:.2f}x end to end; "
                  f"the ceilings allow {ceilings[model, 'fast'] / ceilings[model, 'exact']:.2f}x")


def _decode_share(files: list[Path], model: Path, mode: str, barrier, out) -> None:
    from alexnet_onnx.runtime.predictor import Predictor

    p = Predictor(model, threads=1, few_images=True, decode=mode)
    p.preprocess(files[0])
    barrier.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for f in files:
        p.preprocess(f)
    out.put((start, time.perf_counter()))


def preprocess_seconds(files: list[Path], model: Path, mode: str, cores: int) -> float:
    """Median-of-3 wall seconds per image to decode and preprocess `files` on one thread in each
    of `cores` processes, each taking every cores-th file (the first start to the last finish)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    runs = []
    for _ in range(3):
        barrier, out = ctx.Barrier(cores), ctx.Queue()
        procs = [ctx.Process(target=_decode_share, args=(files[i::cores], model, mode, barrier, out))
                 for i in range(cores)]
        for proc in procs:
            proc.start()
        spans = [out.get() for _ in procs]
        for proc in procs:
            proc.join()
        runs.append((max(e for _, e in spans) - min(s for s, _ in spans)) / len(files))
    return statistics.median(runs)


def model_seconds(model: Path, batch: int) -> float:
    """Median seconds per image for onnxruntime on random batches, as onnx-predict runs it."""
    import numpy as np

    from alexnet_onnx.export.report import median_seconds
    from alexnet_onnx.runtime.predictor import Predictor

    p = Predictor(model)
    crop = p.contract.preprocess.crop
    x = np.random.default_rng(0).standard_normal((batch, 3, crop, crop)).astype(np.float32)
    return median_seconds(lambda: p.logits(x), warmup=1, runs=(5, 5)) / batch


if __name__ == "__main__":
    main()
