"""The training run: data, model, optimizer, epochs, validation, checkpoints, metrics, plots.

Runs as one process, or as one of N under torchrun (DDP; only rank 0 writes files or logs).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from runtime.contract import Contract, package_version
from runtime.errors import DataError, DivergedError, ModelError, StorageError, first_line

from . import distributed
from .batches import Data
from .checkpoint import atomic_write, clean_temp_files, contract_of, load_checkpoint, non_finite, save_checkpoint
from .config import TrainConfig
from .data import Splits, load_splits
from .evaluation import FlipAverage, autocast, evaluate
from .models import ARCHS, build_model
from .optim import apply_freeze, make_optimizer, make_scheduler
from .progress import Progress
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


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Every epoch's shuffling and augmentation depend only on (seed, epoch): a resumed run
    repeats exactly what an uninterrupted one would have done."""
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
    if ctx.main:
        prepare_out(out)
    distributed.barrier(ctx)
    ckpt = _resume_state(out, cfg) if resume else None
    if ckpt is not None:
        asked = cfg
        cfg = TrainConfig.from_dict({**ckpt["config"], "out": cfg.out, "device": cfg.device, "workers": cfg.workers})
        if asked.epochs != cfg.epochs:
            log(f"note: --resume continues the run with its saved settings (--epochs {cfg.epochs}, not {asked.epochs})")
        if int(ckpt["epoch"]) >= cfg.epochs:
            log(f"{out / 'last.pt'}: this run already finished ({cfg.epochs} epochs); nothing to do")
            try:
                return json.loads((out / "metrics.json").read_text())
            except (OSError, ValueError):
                return {}
    device = pick_device(cfg.device, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    if not ctx.main:
        distributed.barrier(ctx)  # rank 0 finds (or downloads) the data first
    splits = load_splits(cfg.dataset, Path(cfg.data_dir), val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, seed=cfg.seed)
    if ctx.main:
        distributed.barrier(ctx)
    spec = ARCHS[cfg.arch].preprocess
    contract = Contract(labels=tuple(splits.classes), preprocess=spec, arch=cfg.arch, dataset=cfg.dataset, created_with=package_version())
    if ckpt is not None and tuple(contract_of(ckpt, out / "last.pt").labels) != contract.labels:
        raise ModelError(f"{out / 'last.pt'}: its classes differ from the data's {list(contract.labels)}; cannot resume")
    fresh = ckpt is None
    model = build_model(cfg.arch, len(splits.classes), pretrained=cfg.pretrained and fresh,
                        weights=Path(cfg.weights) if cfg.weights and fresh else None)
    apply_freeze(model, cfg.freeze)
    model = model.to(device, memory_format=torch.channels_last)  # faster on CUDA and, measured, on x86 CPUs
    data = Data(splits, cfg, device, ctx)
    optimizer = make_optimizer(cfg, model, device)
    scheduler = make_scheduler(cfg, optimizer, data.steps_per_epoch())
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    history: list[dict[str, Any]] = []
    best, start = -1.0, 0
    if ckpt is not None:
        _restore(ckpt, model, optimizer, scheduler, ema, out)
        history, best, start = list(ckpt.get("history", [])), float(ckpt.get("best_val_top1", -1.0)), int(ckpt["epoch"])
        log(f"resuming {out / 'last.pt'} after epoch {start}/{cfg.epochs}")
    step_model = _wrap(model, cfg, device, ctx)
    log(f"{cfg.arch} on {cfg.dataset}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val "
        f"({splits.val_name}) / {len(splits.test) if splits.test else 0} test images, {len(splits.classes)} classes, "
        f"{device}{f' x{ctx.world} processes' if ctx.enabled else ''}{', in-memory store' if data.memory else ''}")
    metrics: dict[str, Any] = {}
    for epoch in range(start, cfg.epochs):
        generator = seed_epoch(cfg.seed, epoch)
        row = _train_epoch(step_model, model, ema, data.train(generator), optimizer, scheduler, device, epoch, cfg, out,
                           ctx, data.steps_per_epoch(), len(splits.classes), generator)
        row["bad_images"] += data.store_bad()
        bad_weights = non_finite(model) + (non_finite(ema.model) if ema is not None else [])
        if bad_weights:  # the loss was finite, but an epoch's last step can still break the weights
            raise DivergedError(
                f"weights became NaN/inf in epoch {epoch + 1} ({', '.join(bad_weights[:3])}); stopped. "
                f"{out / 'last.pt'} holds the last good epoch ({epoch}); lower --lr and --resume, or start over")
        if row["bad_images"] > cfg.max_bad_images:
            raise DataError(f"{cfg.data_dir}: {row['bad_images']} unreadable images in the training split (more than "
                            f"--max-bad-images {cfg.max_bad_images}); fix or remove them, or raise the limit")
        judged = _judged(model, ema, cfg)
        val_batches = data.eval("val")
        if val_batches is not None:
            result = evaluate(judged, val_batches, device, len(splits.classes))
            row["val_loss"], row["val_top1"] = result["loss"], result["top1"]
        history.append(row)
        score = row.get("val_top1", row["train_top1"])
        improved = val_batches is None or score > best
        best = score if improved else best
        # Each checkpoint's contract carries its own epoch's validation score (best.pt: the best).
        contract = contract.with_(metrics={"val_top1": row["val_top1"], "val_split": splits.val_name}
                                  if "val_top1" in row else {"val_split": splits.val_name})
        if ctx.main:
            state = _state(model, ema, optimizer, scheduler, epoch + 1, cfg, contract, history, best)
            save_checkpoint(out / "last.pt", state)
            if improved:
                save_checkpoint(out / "best.pt", state)
            log(_epoch_line(row, cfg.epochs, improved))
            metrics = _write_metrics(out, cfg, history, best, splits)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            return metrics
    distributed.barrier(ctx)
    if ctx.main:
        metrics = _finish(out, cfg, splits, data, device, history, best, log)
    return metrics


def _wrap(model: nn.Module, cfg: TrainConfig, device: torch.device, ctx: distributed.Dist) -> nn.Module:
    """What the training step calls: DDP under torchrun, compiled with --compile on CUDA."""
    wrapped = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        wrapped = torch.compile(wrapped)
    return wrapped


def _judged(model: nn.Module, ema: Optional[EMA], cfg: TrainConfig) -> nn.Module:
    """The model that validation scores and export ships: EMA weights and flip averaging when on."""
    judged = ema.model if ema is not None else model
    return FlipAverage(judged) if cfg.tta else judged


def _resume_state(out: Path, cfg: TrainConfig) -> dict[str, Any]:
    ckpt = load_checkpoint(out / "last.pt")
    saved = ckpt["config"]
    try:
        TrainConfig.from_dict(saved)
    except Exception as exc:
        raise ModelError(f"{out / 'last.pt'}: its saved config is invalid ({first_line(exc)}); cannot resume") from None
    for key in ("arch", "dataset"):
        if saved.get(key) != getattr(cfg, key):
            raise ModelError(f"{out / 'last.pt'}: was trained with --{key} {saved.get(key)}, not {getattr(cfg, key)}; cannot resume")
    return ckpt


def _restore(ckpt: dict, model: nn.Module, optimizer, scheduler, ema: Optional[EMA], out: Path) -> None:
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{out / 'last.pt'}: does not match this model ({first_line(exc)})") from None
    bad = non_finite(model)
    if bad:
        raise ModelError(f"{out / 'last.pt'}: weights contain NaN/inf ({', '.join(bad[:3])}); cannot resume from it")
    rng = ckpt.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])


def _train_epoch(step_model, model, ema, batches, optimizer, scheduler, device, epoch: int, cfg: TrainConfig, out: Path,
                 ctx: distributed.Dist, steps: int, num_classes: int, generator: torch.Generator) -> dict[str, Any]:
    step_model.train()
    progress = Progress(f"epoch {epoch + 1}/{cfg.epochs}", total=steps, enabled=ctx.main)
    loss_sum, correct, n, bad = 0.0, 0, 0, 0
    start = time.perf_counter()
    for step, (x, y, n_bad) in enumerate(batches):
        bad += n_bad
        if not len(y):
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        x, target = mix_batch(x, y, num_classes, mixup=cfg.mixup, cutmix=cfg.cutmix, smoothing=cfg.label_smoothing,
                              generator=generator)
        with autocast(device):
            logits = step_model(x)
            loss = nn.functional.cross_entropy(logits.float(), target)
        value = distributed.all_sum([loss.item()], ctx)[0] / ctx.world
        if not math.isfinite(value):
            raise DivergedError(
                f"loss became {value} at epoch {epoch + 1}, step {step + 1}; stopped. {out / 'last.pt'} holds the "
                f"last good epoch ({epoch}); lower --lr and --resume, or start over")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model)
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
            "lr": optimizer.param_groups[-1]["lr"], "img_per_s": n / seconds if seconds > 0 else 0.0,
            "seconds": seconds, "bad_images": int(bad)}


def _state(model, ema, optimizer, scheduler, epoch: int, cfg: TrainConfig, contract: Contract, history, best: float) -> dict[str, Any]:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "epoch": epoch, "config": cfg.to_dict(), "contract": contract.to_metadata(), "rng": rng_state(),
             "history": history, "best_val_top1": best}
    if ema is not None:
        state["ema"] = ema.model.state_dict()
    return state


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    val = f" val loss {row['val_loss']:.3f} val top-1 {row['val_top1']:.4f}" if "val_top1" in row else ""
    bad = f" | skipped {row['bad_images']} unreadable images" if row.get("bad_images") else ""
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.3f} top-1 {row['train_top1']:.4f}{val} "
            f"| {row['img_per_s']:.0f} img/s {row['seconds']:.1f}s{bad}{' *' if improved else ''}")


def _write_metrics(out: Path, cfg: TrainConfig, history, best: float, splits: Splits, **extra) -> dict[str, Any]:
    metrics = {"best_val_top1": best if splits.val is not None else None, "val_split": splits.val_name, "epochs": cfg.epochs, "history": history,
               "train_images": len(splits.train), "bad_images": max((h.get("bad_images", 0) for h in history), default=0),
               "wall_seconds": sum(h["seconds"] for h in history), **extra}
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    from .plots import plot_curves

    plot_curves(history, out / "curves.png")
    return metrics


def _finish(out: Path, cfg: TrainConfig, splits: Splits, data: Data, device, history, best: float, log: Log) -> dict[str, Any]:
    """With best.pt: confusion.png on val, then the test split once; test_top1 goes into
    metrics.json and best.pt's contract."""
    from .plots import plot_confusion

    ckpt = load_checkpoint(out / "best.pt")
    model = build_model(cfg.arch, len(splits.classes)).to(device)
    model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    judged = FlipAverage(model) if cfg.tta else model
    extra: dict[str, Any] = {}
    for name in ("val", "test"):
        batches = data.eval(name)
        if batches is None:
            continue
        result = evaluate(judged, batches, device, len(splits.classes))
        target = out / ("confusion.png" if name == "val" else "confusion_test.png")
        plot_confusion(result["confusion"], splits.classes, target, f"best.pt on the {name} split")
        if name == "test":
            extra = {"test_top1": result["top1"], "test_images": result["n"]}
            log(f"test top-1 of best.pt: {result['top1']:.4f} on {result['n']} images")
            contract = contract_of(ckpt, out / "best.pt")
            ckpt["contract"] = contract.with_(metrics={**contract.metrics, "test_top1": result["top1"]}).to_metadata()
            save_checkpoint(out / "best.pt", ckpt)
    return _write_metrics(out, cfg, history, best, splits, **extra)
