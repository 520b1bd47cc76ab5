"""The training run: data, model, optimizer, epochs, validation, checkpoints, metrics, plots."""

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
from runtime.errors import DataError, DivergedError, ModelError, StorageError
from runtime.predictor import available_cores

from .checkpoint import atomic_write, clean_temp_files, contract_of, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import Splits, eval_transform, load_splits, make_loader, train_transform
from .models import ARCHS, build_model
from .progress import Progress

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


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA device is available (use --device auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def loader_workers(cfg: TrainConfig, device: torch.device) -> int:
    """On CPU the cores are busy training; decoding in the main process is cheaper than workers."""
    if cfg.workers is not None:
        return cfg.workers
    return min(8, available_cores()) if device.type == "cuda" else 0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norm layers and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, cfg.epochs * steps)
    warmup = int(total * cfg.warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> tuple[float, float, int]:
    """(mean loss, top-1, images) over a loader."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y, _ in loader:
        if not len(y):
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return (loss_sum / n if n else float("nan")), (correct / n if n else 0.0), n


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


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
    prepare_out(out)
    ckpt = _resume_state(out, cfg) if resume else None
    if ckpt is not None:
        asked = cfg
        cfg = TrainConfig.from_dict({**ckpt["config"], "out": cfg.out, "device": cfg.device, "workers": cfg.workers})
        if asked.epochs != cfg.epochs:
            log(f"note: --resume continues the run with its saved settings (--epochs {cfg.epochs}, not {asked.epochs})")
        if int(ckpt["epoch"]) >= cfg.epochs:
            log(f"{out / 'last.pt'}: this run already finished ({cfg.epochs} epochs); nothing to do")
            metrics_file = out / "metrics.json"
            return json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg.dataset, Path(cfg.data_dir), val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, seed=cfg.seed)
    spec = ARCHS[cfg.arch].preprocess
    contract = Contract(labels=tuple(splits.classes), preprocess=spec, arch=cfg.arch, dataset=cfg.dataset, created_with=package_version())
    if ckpt is not None and tuple(contract_of(ckpt, out / "last.pt").labels) != contract.labels:
        raise ModelError(f"{out / 'last.pt'}: its classes differ from the data's {list(contract.labels)}; cannot resume")
    model = build_model(cfg.arch, len(splits.classes), pretrained=cfg.pretrained and ckpt is None,
                        weights=Path(cfg.weights) if cfg.weights and ckpt is None else None).to(device)
    workers = loader_workers(cfg, device)
    train_loader_args = dict(batch_size=cfg.batch_size, shuffle=True, workers=workers)
    steps = math.ceil(len(splits.train) / cfg.batch_size)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, steps)
    history: list[dict[str, Any]] = []
    best, start = -1.0, 0
    if ckpt is not None:
        _restore(ckpt, model, optimizer, scheduler, out)
        history, best, start = list(ckpt.get("history", [])), float(ckpt.get("best_val_top1", -1.0)), int(ckpt["epoch"])
        log(f"resuming {out / 'last.pt'} after epoch {start}/{cfg.epochs}")
    val_loader = _eval_loader(splits.val, spec, cfg.batch_size, workers)
    log(f"{cfg.arch} on {cfg.dataset}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val "
        f"({splits.val_name}) / {len(splits.test) if splits.test else 0} test images, {len(splits.classes)} classes, {device}")
    for epoch in range(start, cfg.epochs):
        generator = seed_epoch(cfg.seed, epoch)
        loader = make_loader(splits.train, train_transform(cfg.arch, spec), generator=generator, **train_loader_args)
        row = _train_epoch(model, loader, optimizer, scheduler, device, epoch, cfg, out)
        if row["bad_images"] > cfg.max_bad_images:
            raise DataError(f"{cfg.data_dir}: {row['bad_images']} unreadable images in the training split (more than "
                            f"--max-bad-images {cfg.max_bad_images}); fix or remove them, or raise the limit")
        if val_loader is not None:
            row["val_loss"], row["val_top1"], _ = evaluate(model, val_loader, device)
        history.append(row)
        score = row.get("val_top1", row["train_top1"] if val_loader is None else -1.0)
        improved = val_loader is None or score > best
        best = score if improved else best
        contract = contract.with_(metrics={"val_top1": best, "val_split": splits.val_name})
        state = _state(model, optimizer, scheduler, epoch + 1, cfg, contract, history, best)
        save_checkpoint(out / "last.pt", state)
        if improved:
            save_checkpoint(out / "best.pt", state)
        log(_epoch_line(row, cfg.epochs, improved))
        metrics = _write_metrics(out, cfg, history, best, splits)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            return metrics
    if splits.test is not None:
        metrics = _test_best(out, cfg, splits, device, history, best, log)
    return metrics


def _resume_state(out: Path, cfg: TrainConfig) -> dict[str, Any]:
    ckpt = load_checkpoint(out / "last.pt")
    saved = ckpt["config"]
    for key in ("arch", "dataset"):
        if saved.get(key) != getattr(cfg, key):
            raise ModelError(f"{out / 'last.pt'}: was trained with --{key} {saved.get(key)}, not {getattr(cfg, key)}; cannot resume")
    return ckpt


def _restore(ckpt: dict, model: nn.Module, optimizer, scheduler, out: Path) -> None:
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(f"{out / 'last.pt'}: does not match this model ({str(exc).splitlines()[0][:200]})") from None
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelError(f"{out / 'last.pt'}: weights contain NaN/inf ({', '.join(bad[:3])}); cannot resume from it")
    rng = ckpt.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])


def _eval_loader(split, spec, batch_size: int, workers: int):
    if split is None:
        return None
    return make_loader(split, eval_transform(spec), batch_size=batch_size * 2, shuffle=False, workers=workers)


def _train_epoch(model, loader, optimizer, scheduler, device, epoch: int, cfg: TrainConfig, out: Path) -> dict[str, Any]:
    model.train()
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    progress = Progress(f"epoch {epoch + 1}/{cfg.epochs}", total=len(loader))
    loss_sum, correct, n, bad = 0.0, 0, 0, 0
    start = time.perf_counter()
    for step, (x, y, n_bad) in enumerate(loader):
        bad += n_bad
        if not len(y):
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x)
            loss = criterion(logits.float(), y)
        value = loss.item()
        if not math.isfinite(value):
            raise DivergedError(
                f"loss became {value} at epoch {epoch + 1}, step {step + 1}; stopped. {out / 'last.pt'} holds the "
                f"last good epoch ({epoch}); lower --lr and --resume, or start over"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
        progress.update(step + 1, f"loss {loss_sum / n:.3f} acc {correct / n:.3f} {n / (time.perf_counter() - start):.0f} img/s")
    seconds = time.perf_counter() - start
    progress.close()
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(1, n),
        "train_top1": correct / max(1, n),
        "lr": optimizer.param_groups[0]["lr"],
        "img_per_s": n / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
        "bad_images": bad,
    }


def _state(model, optimizer, scheduler, epoch: int, cfg: TrainConfig, contract: Contract, history, best: float) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "config": cfg.to_dict(),
        "contract": contract.to_metadata(),
        "rng": rng_state(),
        "history": history,
        "best_val_top1": best,
    }


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    val = f" val loss {row['val_loss']:.3f} val top-1 {row['val_top1']:.4f}" if "val_top1" in row else ""
    bad = f" | skipped {row['bad_images']} unreadable images" if row.get("bad_images") else ""
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.3f} top-1 {row['train_top1']:.4f}{val} "
            f"| {row['img_per_s']:.0f} img/s {row['seconds']:.1f}s{bad}{' *' if improved else ''}")


def _write_metrics(out: Path, cfg: TrainConfig, history, best: float, splits: Splits, **extra) -> dict[str, Any]:
    metrics = {"best_val_top1": best, "val_split": splits.val_name, "epochs": cfg.epochs, "history": history,
               "train_images": len(splits.train), "bad_images": max((h.get("bad_images", 0) for h in history), default=0),
               "wall_seconds": sum(h["seconds"] for h in history), **extra}
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
    from .plots import plot_curves

    plot_curves(history, out / "curves.png")
    return metrics


def _test_best(out: Path, cfg: TrainConfig, splits: Splits, device, history, best: float, log: Log) -> dict[str, Any]:
    """Evaluate best.pt once on the test split; record test_top1 in metrics.json and best.pt."""
    ckpt = load_checkpoint(out / "best.pt")
    model = build_model(cfg.arch, len(splits.classes)).to(device)
    model.load_state_dict(ckpt["model"])
    loader = _eval_loader(splits.test, ARCHS[cfg.arch].preprocess, cfg.batch_size, loader_workers(cfg, device))
    _, top1, n = evaluate(model, loader, device)
    log(f"test top-1 of best.pt: {top1:.4f} on {n} images")
    contract = contract_of(ckpt, out / "best.pt")
    ckpt["contract"] = contract.with_(metrics={**contract.metrics, "test_top1": top1}).to_metadata()
    save_checkpoint(out / "best.pt", ckpt)
    return _write_metrics(out, cfg, history, best, splits, test_top1=top1, test_images=n)
