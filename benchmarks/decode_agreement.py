"""Exact vs fast decoding, side by side, on camera-size photos and a trained model: what the
fast path costs in accuracy and what it saves in time.

    python benchmarks/decode_agreement.py --model flowers.onnx --dir artifacts/camera/12mp \
        --dir artifacts/camera/2mp [--factors 1,1.45,2]

For each folder and each factor F (JPEGs decoded at the smallest DCT scale whose shorter side is
>= F x the contract's resize, then the exact resize and crop), prints: top-1 agreement with the
exact path, max |logit difference|, mean and max |difference| at the model input in grey levels
(0..255 scale), and decode + preprocess milliseconds per photo on one thread, exact and fast.
Make the photos with benchmarks/camera_photos.py; use a model trained well enough that its
logits depend on the image (a barely trained model agrees with anything).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from alexnet_onnx.runtime import Predictor
from alexnet_onnx.runtime.image import IMAGE_SUFFIXES, decode, opened
from alexnet_onnx.runtime.preprocess import preprocess


def prepared(path: Path, spec, min_side: int | None) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    with opened(path, min_side=min_side) as im:
        x = preprocess(decode(im), spec)
    return x, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dir", type=Path, action="append", required=True)
    ap.add_argument("--factors", default="1,1.45,2")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    p = Predictor(args.model)
    spec = p.contract.preprocess
    grey = np.asarray(spec.std, np.float64)[:, None, None] * 255  # normalized units -> grey levels
    factors = [float(f) for f in args.factors.split(",")]
    print(f"model {args.model.name} (val top-1 {p.contract.metrics.get('val_top1', float('nan')):.3f}), "
          f"resize {spec.resize}, crop {spec.crop}")
    print(f"{'photos':<24}{'F':>5}{'n':>6}{'agree':>9}{'max dlogit':>12}{'mean dgrey':>12}{'max dgrey':>11}"
          f"{'exact ms':>10}{'fast ms':>9}{'speed-up':>10}")
    for folder in args.dir:
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        exact = [prepared(f, spec, None) for f in files]
        exact_logits = np.concatenate([p.logits(np.stack([x for x, _ in exact[i:i + args.batch_size]]))
                                       for i in range(0, len(exact), args.batch_size)])
        exact_ms = 1000 * np.median([s for _, s in exact])
        for factor in factors:
            fast = [prepared(f, spec, math.ceil(factor * spec.resize)) for f in files]
            fast_logits = np.concatenate([p.logits(np.stack([x for x, _ in fast[i:i + args.batch_size]]))
                                          for i in range(0, len(fast), args.batch_size)])
            diffs = [np.abs(xf - xe) * grey for (xf, _), (xe, _) in zip(fast, exact)]
            agree = float(np.mean(fast_logits.argmax(1) == exact_logits.argmax(1)))
            fast_ms = 1000 * np.median([s for _, s in fast])
            print(f"{folder.parent.name + '/' + folder.name:<24}{factor:>5g}{len(files):>6}{agree:>9.4f}"
                  f"{np.abs(fast_logits - exact_logits).max():>12.4f}{np.mean([d.mean() for d in diffs]):>12.3f}"
                  f"{max(d.max() for d in diffs):>11.1f}{exact_ms:>10.1f}{fast_ms:>9.1f}{exact_ms / fast_ms:>9.2f}x")


if __name__ == "__main__":
    main()
