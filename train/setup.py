"""Building a training run from its config: the output folder, the device, the data, the model
(with --init whiten), the optimizer, the schedule and the EMA, wrapped for DDP and torch.compile."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from alexnet_onnx.runtime.contract import Contract, package_version
from alexnet_onnx.runtime.errors import DataError, ModelError, StorageError

from . import distributed
from .batches import Data
from .checkpoint import clean_temp_files
from .config import TrainConfig
from .data import Splits, load_splits
from .evaluation import shipped, uses_bf16
from .models import ARCHS, build_model, first_conv, whiten_first_conv
from .optim import apply_freeze, make_optimizer, make_scheduler
from .recipes import EMA

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


def build_run(cfg: TrainConfig, ctx: distributed.Dist = distributed.Dist(), *, resuming: bool = False,
              log: Log = log_stderr) -> Run:
    """Data, model, optimizer, schedule and EMA for `cfg` in this process. `resuming`: the
    weights will come from last.pt, so --pretrained, --weights and --init whiten are skipped."""
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
    fresh = not resuming
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
    return Run(cfg, Path(cfg.out), ctx, device, splits, contract, model, _wrap(model, cfg, device, ctx), ema, optimizer,
               scheduler, data, log)


def summary(run: Run) -> str:
    """The run in one line: model, data, splits, device, processes, input pipeline, precision."""
    cfg, splits, ctx = run.cfg, run.splits, run.ctx
    return (f"{cfg.arch} on {cfg.dataset}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val "
            f"({splits.val_name}) / {len(splits.test) if splits.test else 0} test images, {len(splits.classes)} classes, "
            f"{run.device}{f' x{ctx.world} processes' if ctx.enabled else ''}{', in-memory store' if run.data.memory else ''}, "
            f"{'bf16' if uses_bf16(run.device, cfg.precision) else 'fp32'} training")


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


def _wrap(model: nn.Module, cfg: TrainConfig, device: torch.device, ctx: distributed.Dist) -> nn.Module:
    """What the training step calls: DDP under torchrun, compiled with --compile on CUDA."""
    wrapped = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile and device.type == "cuda":
        wrapped = torch.compile(wrapped)
    return wrapped
