"""How far an exported model's scores can be trusted: calibration on labeled images and "none of
these" against images of no class of the model.

    python benchmarks/calibration_ood.py -m c10.onnx --labeled ../shared/data/cifar10/test \
        --ood ../shared/data/flowers/train [--ood DIR ...] [--synthetic 300] [--limit N] [--format json]
    python benchmarks/calibration_ood.py -m fl.onnx --checkpoint fl/best.pt --split val \
        --ood ../shared/data/cifar10/test --limit 2000

Calibration, on the labeled images (an ImageFolder named as the model's labels, or a split of the
checkpoint the model came from): top-1, ECE (15 bins) and NLL at T = 1 and at the contract's T, and
at a T fitted on each half and scored on the other (2-fold), which shows what fitting on these
images' own distribution would give; and the ECE floor, the median ECE a perfectly calibrated model
with the stored-T confidences would show on this many images (sampling noise alone: on a few
hundred images it is several percent), with the share of that model's 1,000 draws whose ECE is at
least the stored T's (a small share: the miscalibration is real, not noise). "None of these": the
labeled images are the in-distribution side; against each --ood folder (its images, recursively,
resized by the model's own preprocessing), uniform-noise images and constant-colour images (seeded,
--synthetic of each), both scores (max calibrated softmax, energy = logsumexp(logits / T)) get
AUROC, the false-accept rate at the threshold that accepts 95% of the labeled images, and the
false-accept rate and in-distribution acceptance of the threshold stored in the model (which uses
one of the scores). Everything goes through runtime.Predictor, as onnx-predict does.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from alexnet_onnx.runtime import Predictor
from alexnet_onnx.runtime import calibration as cal
from alexnet_onnx.runtime.errors import ImageError
from alexnet_onnx.runtime.evaluate import labeled_images
from alexnet_onnx.runtime.inputs import walk_images
from alexnet_onnx.runtime.progress import Progress

SYNTHETIC_SIDE = 256  # generated images are this square size before the model's own resize
BATCH = 64


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it (from /proc/cpuinfo), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_logits(predictor: Predictor, loaders: list[Callable[[], object]], label: str) -> np.ndarray:
    """Logits of every image `loaders` give (an unreadable one is skipped, counted on stderr)."""
    parts, batch, bad = [], [], 0
    with Progress(label, total=len(loaders)) as progress:
        for done, load in enumerate(loaders, start=1):
            try:
                batch.append(predictor.preprocess(load()))
            except ImageError:
                bad += 1
            if len(batch) == BATCH or (done == len(loaders) and batch):
                parts.append(predictor.logits(np.stack(batch)))
                batch = []
            progress.update(done)
    if bad:
        print(f"note: {bad} unreadable image(s) skipped in {label}", file=sys.stderr)
    return np.concatenate(parts) if parts else np.zeros((0, predictor.contract.num_classes), np.float32)


def sample(items: list, limit: Optional[int], seed: int) -> list:
    if limit is None or len(items) <= limit:
        return items
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]


def labeled_set(args, predictor: Predictor) -> tuple[list[Callable], np.ndarray, str]:
    if args.labeled is not None:
        items = sample(labeled_images(args.labeled, predictor.labels), args.limit, args.seed)
        return [lambda p=p: p for p, _ in items], np.array([t for _, t in items]), str(args.labeled)
    from alexnet_onnx.train.checkpoint import load_checkpoint
    from alexnet_onnx.train.config import TrainConfig
    from alexnet_onnx.train.data import load_splits

    cfg = TrainConfig.from_dict(load_checkpoint(args.checkpoint)["config"])
    splits = load_splits(cfg.dataset, Path(cfg.data_dir), val_fraction=cfg.val_fraction, limit_train=None,
                         seed=cfg.seed, download=False)
    split = getattr(splits, args.split)
    if split is None:
        raise SystemExit(f"{args.checkpoint}: its data has no {args.split} split")
    if splits.classes != list(predictor.labels):
        raise SystemExit(f"{args.checkpoint}: its classes are not the model's labels")
    indices = sample(split.indices, args.limit, args.seed)
    name = splits.val_name if args.split == "val" else args.split
    return ([lambda i=i: split.source.image(i) for i in indices], np.array([split.source.labels[i] for i in indices]),
            f"{cfg.data_dir} ({name})")


def synthetic(kind: str, n: int, seed: int) -> list[Callable[[], Image.Image]]:
    """`n` seeded images: uniform noise (each pixel and channel uniform in 0..255) or one random colour."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        arrays = [rng.integers(0, 256, (SYNTHETIC_SIDE, SYNTHETIC_SIDE, 3), np.uint8) for _ in range(n)]
    else:
        arrays = [np.broadcast_to(rng.integers(0, 256, 3, np.uint8), (SYNTHETIC_SIDE, SYNTHETIC_SIDE, 3)).copy()
                  for _ in range(n)]
    return [lambda a=a: Image.fromarray(a, "RGB") for a in arrays]


def two_fold_ece(logits: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float]:
    """ECE and NLL with T fitted on one seeded half and scored on the other, both ways (pooled)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = order[: len(order) // 2], order[len(order) // 2:]
    confidence, correct, nlls = [], [], []
    for fit, held in (halves, halves[::-1]):
        t = cal.fit_temperature(logits[fit], labels[fit])
        probs = cal.softmax(logits[held], t)
        confidence.append(probs.max(1))
        correct.append(probs.argmax(1) == labels[held])
        nlls.append(cal.nll(logits[held], labels[held], t) * len(held))
    return cal.ece_of(np.concatenate(confidence), np.concatenate(correct)), float(sum(nlls) / len(labels))


def measure(args) -> dict:
    predictor = Predictor(args.model)
    contract = predictor.contract
    t = contract.temperature
    loaders, labels, source = labeled_set(args, predictor)
    inside_logits = run_logits(predictor, loaders, "labeled")
    if len(inside_logits) != len(labels):
        raise SystemExit("some labeled images could not be read; remove them and run again")
    ece_after = cal.ece(inside_logits, labels, t)
    floor_draws = cal.ece_draws(cal.max_softmax(inside_logits, t), draws=1000, seed=args.seed)
    cross_ece, cross_nll = two_fold_ece(inside_logits, labels, args.seed) if len(labels) >= 2 else (None, None)
    figures: dict = {
        "model": str(args.model), "variant": contract.variant, "temperature": t,
        "rule": {"score": contract.accept_score, "threshold": contract.accept_threshold},
        "machine": f"{cpu_model()}, {platform.machine()}",
        "labeled": {"images": source, "n": len(labels),
                    "top1": float((inside_logits.argmax(1) == labels).mean()),
                    "ece_before": cal.ece(inside_logits, labels), "ece_after": ece_after,
                    "nll_before": cal.nll(inside_logits, labels), "nll_after": cal.nll(inside_logits, labels, t),
                    "ece_two_fold": cross_ece, "nll_two_fold": cross_nll,
                    "ece_floor": float(np.median(floor_draws)),
                    "ece_draws_at_least": float((floor_draws >= ece_after).mean()),
                    "accepted_by_model": float(predictor.acceptance.accepts(inside_logits).mean())},
        "ood": {},
    }
    inside = {kind: cal.score(inside_logits, t, kind) for kind in cal.SCORES}
    sets: dict[str, list[Callable]] = {}
    for folder in args.ood:
        paths = sample(list(walk_images(folder)), args.limit, args.seed)
        sets[str(folder)] = [lambda p=p: p for p in paths]
    if args.synthetic:
        sets["uniform noise"] = synthetic("noise", args.synthetic, args.seed)
        sets["constant colour"] = synthetic("constant", args.synthetic, args.seed + 1)
    for name, set_loaders in sets.items():
        logits = run_logits(predictor, set_loaders, name)
        row: dict = {"n": len(logits), "accepted_by_model": float(predictor.acceptance.accepts(logits).mean())}
        for kind in cal.SCORES:
            outside = cal.score(logits, t, kind)
            threshold = cal.threshold_for(inside[kind])
            row[kind] = {"auroc": cal.auroc(inside[kind], outside),
                         "false_accept_at_95": cal.false_accept_rate(outside, threshold)}
        figures["ood"][name] = row
    return figures


def markdown(f: dict) -> str:
    lab = f["labeled"]
    threshold = f["rule"]["threshold"]
    rule = "none (every image accepted)" if threshold is None else f"{f['rule']['score']} >= {threshold:.4g}"
    lines = [f"`{f['model']}` ({f['variant']}), T = {f['temperature']:.4g}, stored rule: {rule}; {f['machine']}",
             "", f"Calibration on {lab['images']} ({lab['n']} images, top-1 {lab['top1']:.4f}):", "",
             "| ECE T=1 | ECE stored T | ECE 2-fold T | ECE floor | calibrated draws >= stored T's | NLL T=1 | NLL stored T "
             "| NLL 2-fold T | accepted by stored rule |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {pct(lab['ece_before'])} | {pct(lab['ece_after'])} | {pct(lab['ece_two_fold'])} | {pct(lab['ece_floor'])} | "
             f"{pct(lab['ece_draws_at_least'])} | "
             f"{lab['nll_before']:.4f} | {lab['nll_after']:.4f} | "
             f"{'-' if lab['nll_two_fold'] is None else format(lab['nll_two_fold'], '.4f')} | {pct(lab['accepted_by_model'])} |",
             "", "None of these (in-distribution: the labeled images; false accepts at the threshold accepting 95% of them):", "",
             "| out-of-distribution images | n | AUROC max softmax | false accepts max softmax | AUROC energy | "
             "false accepts energy | false accepts, stored rule |", "|---|---|---|---|---|---|---|"]
    for name, row in f["ood"].items():
        ms, en = row["max_softmax"], row["energy"]
        lines.append(f"| {name} | {row['n']} | {ms['auroc']:.4f} | {pct(ms['false_accept_at_95'])} | {en['auroc']:.4f} | "
                     f"{pct(en['false_accept_at_95'])} | {pct(row['accepted_by_model'])} |")
    return "\n".join(lines)


def pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, required=True)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--labeled", type=Path, help="in-distribution ImageFolder named as the model's labels")
    source.add_argument("--checkpoint", type=Path, help="use a split of this checkpoint's data instead (needs torch)")
    ap.add_argument("--split", choices=["val", "test"], default="test", help="with --checkpoint: which split")
    ap.add_argument("--ood", type=Path, action="append", default=[], help="a folder of images of none of the classes")
    ap.add_argument("--synthetic", type=int, default=300, help="uniform-noise and constant-colour images, each (0: none)")
    ap.add_argument("--limit", type=int, help="at most this many images per folder or split (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=["markdown", "json"], default="markdown")
    args = ap.parse_args()
    figures = measure(args)
    print(json.dumps(figures, indent=2) if args.format == "json" else markdown(figures))


if __name__ == "__main__":
    main()
