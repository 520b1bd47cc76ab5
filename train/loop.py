"""The training run: data, model, optimizer, epochs, validation, checkpoints, metrics, plots.

Runs as one process, or as one of N under torchrun (DDP; only rank 0 writes files or logs).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from alexnet_onnx.runtime.contract import Contract, package_version
from alexnet_onnx.runtime.errors import DataError, DivergedError, ModelError, StorageError, first_line

from . import distributed
from .batches import Data
from .checkpoint import atomic_write, clean_temp_files, contract_of, load_checkpoint, non_finite, save_checkpoint
from .config import TrainConfig
from .data import Splits, load_splits
from .evaluation import autocast, evaluate, shipped, shipped_from_checkpoint, uses_bf16
from .models import ARCHS, build_model, first_conv, whiten_first_conv
from .optim import apply_freeze, make_optimizer, make_scheduler
from alexnet_onnx.runtime.progress import Progress
from .recipes import EMA, mix_batch

Log = Callable[[str], None]


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_out(out: Path) -> None:
    """Fail before any training when the output folder cannot be written."""
    if out.exists() and not out.is_dir():
        raise StorageError(f"{out}: exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{id(out)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"{out}: cannot write there ({exc.strerror or exc}); choose another --out") from None
    clean_temp_files(out)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA device is available (use --device auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name, local_rank) if name == "cuda" else torch.device(name)


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


@dataclass
class Run:
    """Everything one training run works with, built once (fresh or from last.pt)."""

    cfg: TrainConfig
    out: Path
    ctx: distributed.Dist
    device: torch.device
    splits: Splits
    contract: Contract
    model: nn.Module  # the weights being trained
    step_model: nn.Module  # what a step calls: model, or its DDP/compiled wrapper
    ema: Optional[EMA]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data: Data
    log: Log
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -1.0
    start: int = 0  # epochs already done

    @property
    def judged(self) -> nn.Module:
        return shipped(self.ema.model if self.ema is not None else self.model, self.cfg)


def _train(cfg: TrainConfig, out: Path, ctx: distributed.Dist, *, resume: bool, log: Log, stop_after_epoch: Optional[int]) -> dict[str, Any]:
    if ctx.main:
        prepare_out(out)
    distributed.barrier(ctx)
    ckpt = None
    if resume:
        cfg, ckpt = _resume_state(out, cfg, log)
        if int(ckpt["epoch"]) >= cfg.epochs:
            log(f"{out / 'last.pt'}: this run already finished ({cfg.epochs} epochs); nothing to do")
            try:
                return json.loads((out / "metrics.json").read_text())
            except (OSError, ValueError):
                return {}
    run = _build(cfg, out, ctx, ckpt, log)
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


def _build(cfg: TrainConfig, out: Path, ctx: distributed.Dist, ckpt: Optional[dict[str, Any]], log: Log) -> Run:
    """Data, model, optimizer, schedule and EMA; restored from `ckpt` (last.pt) when resuming."""
    device = pick_device(cfg.device, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    if not ctx.main:
        distributed.barrier(ctx)  # rank 0 finds (or downloads) the data first
    splits = load_splits(cfg.dataset, Path(cfg.data_dir), val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, seed=cfg.seed)
    if ctx.main:
        distributed.barrier(ctx)
    contract = Contract(labels=tuple(splits.classes), preprocess=ARCHS[cfg.arch].preprocess, arch=cfg.arch,
                        dataset=cfg.dataset, created_with=package_version())
    if ckpt is not None and tuple(contract_of(ckpt, out / "last.pt").labels) != contract.labels:
        raise ModelError(f"{out / 'last.pt'}: its classes differ from the data's {list(contract.labels)}; cannot resume")
    fresh = ckpt is None
    model = build_model(cfg.arch, len(splits.classes), pretrained=cfg.pretrained and fresh,
                        weights=Path(cfg.weights) if cfg.weights and fresh else None, dropout=cfg.dropout)
    apply_freeze(model, cfg.freeze)
    model = model.to(device, memory_format=torch.channels_last)  # faster on CUDA and, measured, on x86 CPUs
    data = Data(splits, cfg, device, ctx)
    if fresh and cfg.init == "whiten":
        _whiten(model, data, cfg, ctx, log)
    optimizer = make_optimizer(cfg, model, device)
    scheduler = make_scheduler(cfg, optimizer, data.steps_per_epoch())
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    run = Run(cfg, out, ctx, device, splits, contract, model, _wrap(model, cfg, device, ctx), ema, optimizer, scheduler,
              data, log)
    if ckpt is not None:
        _restore(ckpt, run)
        log(f"resuming {out / 'last.pt'} after epoch {run.start}/{cfg.epochs}")
    log(f"{cfg.arch} on {cfg.dataset}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val "
        f"({splits.val_name}) / {len(splits.test) if splits.test else 0} test images, {len(splits.classes)} classes, "
        f"{device}{f' x{ctx.world} processes' if ctx.enabled else ''}{', in-memory store' if data.memory else ''}, "
        f"{'bf16' if uses_bf16(device, cfg.precision) else 'fp32'} training")
    return run


def _whiten(model: nn.Module, data: Data, cfg: TrainConfig, ctx: distributed.Dist, log: Log) -> None:
    """--init whiten from the first non-empty batch of training crops (a generator of its own);
    under torchrun every process starts from rank 0's filters, the EMA copy included."""
    for x, *_ in data.train(torch.Generator().manual_seed(cfg.seed), 0):
        if len(x):  # a DataLoader batch of unreadable images only is empty
            n = whiten_first_conv(model, x.to(data.device))
            log(f"first conv: {n} filters whiten the 3x3 patches of {len(x)} training crops")
            break
    else:
        raise DataError(f"{cfg.data_dir}: no readable training image to compute --init whiten from")
    distributed.broadcast_from_main(first_conv(model).weight.data, ctx)


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
        result = evaluate(run.judged, val_batches, run.device, len(run.splits.classes))
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
    state = _state(run, epoch)
    save_checkpoint(out / "last.pt", state)
    if improved:
        save_checkpoint(out / "best.pt", state)
    run.log(_epoch_line(row, cfg.epochs, improved))
    return _write_metrics(run)


def _wrap(model: nn.Module, cfg: TrainConfig, device: torch.device, ctx: distributed.Dist) -> nn.Module:
    """What the training step calls: DDP under torchrun, compiled with --compile on CUDA."""
    wrapped = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        wrapped = torch.compile(wrapped)
    return wrapped


def _resume_state(out: Path, asked: TrainConfig, log: Log) -> tuple[TrainConfig, dict[str, Any]]:
    """(the saved config, with this invocation's --out/--device/--workers; last.pt)."""
    ckpt = load_checkpoint(out / "last.pt")
    saved = ckpt["config"]
    try:
        cfg = TrainConfig.from_dict({**saved, "out": asked.out, "device": asked.device, "workers": asked.workers})
    except Exception as exc:
        raise ModelError(f"{out / 'last.pt'}: its saved config is invalid ({first_line(exc)}); cannot resume") from None
    for key in ("arch", "dataset"):
        if saved.get(key) != getattr(asked, key):
            raise ModelError(f"{out / 'last.pt'}: was trained with --{key} {saved.get(key)}, not {getattr(asked, key)}; cannot resume")
    if asked.epochs != cfg.epochs:
        log(f"note: --resume continues the run with its saved settings (--epochs {cfg.epochs}, not {asked.epochs})")
    return cfg, ckpt


def _restore(ckpt: dict, run: Run) -> None:
    last = run.out / "last.pt"
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        if run.ema is not None:
            run.ema.model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{last}: does not match this model ({first_line(exc)})") from None
    bad = non_finite(run.model)
    if bad:
        raise ModelError(f"{last}: weights contain NaN/inf ({', '.join(bad[:3])}); cannot resume from it")
    run.history, run.best, run.start = list(ckpt.get("history", [])), float(ckpt.get("best_val_top1", -1.0)), int(ckpt["epoch"])


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


def _state(run: Run, epoch: int) -> dict[str, Any]:
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "epoch": epoch, "config": run.cfg.to_dict(), "contract": run.contract.to_metadata(),
             "history": run.history, "best_val_top1": run.best,
             "rng": {"seed": run.cfg.seed, "next_epoch": epoch}}  # all a resume needs: see seed_epoch
    if run.ema is not None:
        state["ema"] = run.ema.model.state_dict()
    return state


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
        result = evaluate(judged, batches, run.device, len(classes))
        target = run.out / ("confusion.png" if name == "val" else "confusion_test.png")
        plot_confusion(result["confusion"], classes, target, f"best.pt on the {name} split")
        if name == "test":
            extra = {"test_top1": result["top1"], "test_images": result["n"]}
            run.log(f"test top-1 of best.pt: {result['top1']:.4f} on {result['n']} images")
            ckpt["contract"] = contract.with_(metrics={**contract.metrics, "test_top1": result["top1"]}).to_metadata()
            save_checkpoint(best, ckpt)
    return _write_metrics(run, **extra)
