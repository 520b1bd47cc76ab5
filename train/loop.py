"""The epoch loop: train, validate what would ship, save last.pt/best.pt, write metrics and
plots; at the end, best.pt on the test split once.

Runs as one process, or as one of N under torchrun (DDP; only rank 0 writes files or logs).
Building the run is train/setup.py's; what last.pt holds and resuming from it, train/resume.py's.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from alexnet_onnx.runtime.errors import DataError, DivergedError
from alexnet_onnx.runtime.progress import Progress

from . import distributed
from .checkpoint import atomic_write, load_checkpoint, non_finite, save_checkpoint
from .config import TrainConfig, per_process_batch
from .evaluation import autocast, evaluate, shipped_from_checkpoint
from .recipes import mix_batch
from .resume import checkpoint_state, restore, resume_config
from .setup import Log, Run, build_run, log_stderr, pick_device, prepare_out, summary


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Every epoch's shuffling and augmentation depend only on (seed, epoch): a resumed run
    repeats exactly what an uninterrupted one would have done, so a checkpoint's `rng` entry is
    just that pair (no generator state to restore)."""
    torch.manual_seed(seed * 100_003 + epoch)
    random.seed(seed * 100_003 + epoch)
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train(cfg: TrainConfig, *, resume: bool = False, log: Log = log_stderr, stop_after_epoch: Optional[int] = None) -> dict[str, Any]:
    """Run (or resume) training; returns the metrics dict also written to OUT/metrics.json."""
    out = Path(cfg.out)
    device0 = pick_device(cfg.device)
    ctx = distributed.setup(device0.type)
    try:
        return _train(cfg, out, ctx, resume=resume, log=log if ctx.main else (lambda m: None), stop_after_epoch=stop_after_epoch)
    finally:
        distributed.teardown(ctx)


def _train(cfg: TrainConfig, out: Path, ctx: distributed.Dist, *, resume: bool, log: Log, stop_after_epoch: Optional[int]) -> dict[str, Any]:
    if not resume:  # refused before anything is written (a resumed run's saved batch is checked in set-up)
        per_process_batch(cfg.batch_size, ctx.world)
    if ctx.main:
        prepare_out(out)
    distributed.barrier(ctx)
    ckpt = None
    if resume:
        cfg, ckpt = resume_config(out, cfg, log)
        if int(ckpt["epoch"]) >= cfg.epochs:
            log(f"{out / 'last.pt'}: this run already finished ({cfg.epochs} epochs); nothing to do")
            try:
                return json.loads((out / "metrics.json").read_text())
            except (OSError, ValueError):
                return {}
    run = build_run(cfg, ctx, resuming=ckpt is not None, log=log)
    if ckpt is not None:
        restore(ckpt, run)
    log(summary(run))
    metrics: dict[str, Any] = {}
    for epoch in range(run.start, cfg.epochs):
        row = _train_epoch(run, epoch, seed_epoch(cfg.seed, epoch))
        metrics = _end_epoch(run, row)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            return metrics
    distributed.barrier(ctx)
    if ctx.main:
        metrics = _finish(run)
    return metrics


def _end_epoch(run: Run, row: dict[str, Any]) -> dict[str, Any]:
    """Refuse broken weights or too many bad images, validate what would ship, save last.pt (and
    best.pt when validation improved), log; returns the metrics written (rank 0)."""
    cfg, out, epoch = run.cfg, run.out, row["epoch"]
    row["bad_images"] += run.data.store_bad()
    bad_weights = non_finite(run.model) + (non_finite(run.ema.model) if run.ema is not None else [])
    if bad_weights:  # the loss was finite, but an epoch's last step can still break the weights
        raise DivergedError(
            f"weights became NaN/inf in epoch {epoch} ({', '.join(bad_weights[:3])}); stopped. "
            f"{out / 'last.pt'} holds the last good epoch ({epoch - 1}); lower --lr and --resume, or start over")
    if row["bad_images"] > cfg.max_bad_images:
        raise DataError(f"{cfg.data_dir}: {row['bad_images']} unreadable images in the training split (more than "
                        f"--max-bad-images {cfg.max_bad_images}); fix or remove them, or raise the limit")
    val_batches = run.data.eval("val")
    if val_batches is not None:
        result = evaluate(run.judged, val_batches, run.device, len(run.splits.classes), precision=cfg.precision)
        row["val_loss"], row["val_top1"] = result["loss"], result["top1"]
    run.history.append(row)
    score = row.get("val_top1", row["train_top1"])
    improved = val_batches is None or score > run.best
    run.best = score if improved else run.best
    # Each checkpoint's contract carries its own epoch's validation score (best.pt: the best).
    val_split = run.splits.val_name
    run.contract = run.contract.with_(metrics={"val_top1": row["val_top1"], "val_split": val_split}
                                      if "val_top1" in row else {"val_split": val_split})
    if not run.ctx.main:
        return {}
    state = checkpoint_state(run, epoch)
    save_checkpoint(out / "last.pt", state)
    if improved:
        save_checkpoint(out / "best.pt", state)
    run.log(_epoch_line(row, cfg.epochs, improved))
    return _write_metrics(run)


def _train_epoch(run: Run, epoch: int, generator: torch.Generator) -> dict[str, Any]:
    """One pass over the training split; returns the epoch's row for the history."""
    cfg, ctx, device = run.cfg, run.ctx, run.device
    steps, num_classes = run.data.steps_per_epoch(), len(run.splits.classes)
    run.step_model.train()
    progress = Progress(f"epoch {epoch + 1}/{cfg.epochs}", total=steps, enabled=ctx.main)
    loss_sum, correct, n, bad = 0.0, 0, 0, 0
    start = time.perf_counter()
    for step, (x, y, n_bad) in enumerate(run.data.train(generator, epoch)):
        bad += n_bad
        if not len(y):
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        x, target = mix_batch(x, y, num_classes, mixup=cfg.mixup, cutmix=cfg.cutmix, smoothing=cfg.label_smoothing,
                              generator=generator)
        with autocast(device, cfg.precision):
            logits = run.step_model(x)
            loss = nn.functional.cross_entropy(logits.float(), target)
        value = distributed.all_sum([loss.item()], ctx)[0] / ctx.world
        if not math.isfinite(value):
            raise DivergedError(
                f"loss became {value} at epoch {epoch + 1}, step {step + 1}; stopped. {run.out / 'last.pt'} holds the "
                f"last good epoch ({epoch}); lower --lr and --resume, or start over")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update(run.model)
        loss_sum += value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
        progress.update(step + 1, f"loss {loss_sum / n:.3f} acc {correct / n:.3f} {n * ctx.world / (time.perf_counter() - start):.0f} img/s")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    progress.close()
    loss_sum, correct, n, bad = distributed.all_sum([loss_sum, correct, n, bad], ctx)
    return {"epoch": epoch + 1, "train_loss": loss_sum / max(1, n), "train_top1": correct / max(1, n),
            "lr": run.optimizer.param_groups[-1]["lr"], "img_per_s": n / seconds if seconds > 0 else 0.0,
            "seconds": seconds, "bad_images": int(bad)}


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    val = f" val loss {row['val_loss']:.3f} val top-1 {row['val_top1']:.4f}" if "val_top1" in row else ""
    bad = f" | skipped {row['bad_images']} unreadable images" if row.get("bad_images") else ""
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.3f} top-1 {row['train_top1']:.4f}{val} "
            f"| {row['img_per_s']:.0f} img/s {row['seconds']:.1f}s{bad}{' *' if improved else ''}")


def _write_metrics(run: Run, **extra) -> dict[str, Any]:
    history, splits = run.history, run.splits
    metrics = {"best_val_top1": run.best if splits.val is not None else None, "val_split": splits.val_name,
               "epochs": run.cfg.epochs, "history": history, "train_images": len(splits.train),
               "bad_images": max((h.get("bad_images", 0) for h in history), default=0),
               "wall_seconds": sum(h["seconds"] for h in history), **extra}
    atomic_write(run.out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    from .plots import plot_curves

    plot_curves(history, run.out / "curves.png")
    return metrics


def _finish(run: Run) -> dict[str, Any]:
    """With best.pt: confusion.png on val, then the test split once; test_top1 goes into
    metrics.json and best.pt's contract."""
    from .plots import plot_confusion

    best = run.out / "best.pt"
    ckpt = load_checkpoint(best)
    judged, contract, _ = shipped_from_checkpoint(ckpt, best, run.device)
    classes = run.splits.classes
    extra: dict[str, Any] = {}
    for name in ("val", "test"):
        batches = run.data.eval(name)
        if batches is None:
            continue
        result = evaluate(judged, batches, run.device, len(classes), precision=run.cfg.precision)
        target = run.out / ("confusion.png" if name == "val" else "confusion_test.png")
        plot_confusion(result["confusion"], classes, target, f"best.pt on the {name} split")
        if name == "test":
            extra = {"test_top1": result["top1"], "test_images": result["n"]}
            run.log(f"test top-1 of best.pt: {result['top1']:.4f} on {result['n']} images")
            ckpt["contract"] = contract.with_(metrics={**contract.metrics, "test_top1": result["top1"]}).to_metadata()
            save_checkpoint(best, ckpt)
    return _write_metrics(run, **extra)
