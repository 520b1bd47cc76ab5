"""What OUT/last.pt holds, and how a run comes back from it: the saved config (with this
invocation's --out/--device/--workers), the checks that it belongs to this data and model, and
the weights, optimizer, schedule, EMA and history restored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet_onnx.runtime.errors import ModelError, first_line

from .checkpoint import contract_of, load_checkpoint, non_finite
from .config import TrainConfig
from .setup import Log, Run


def checkpoint_state(run: Run, epoch: int) -> dict[str, Any]:
    """The checkpoint after `epoch` epochs: the keys DESIGN.md lists, plus history and EMA."""
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "epoch": epoch, "config": run.cfg.to_dict(), "contract": run.contract.to_metadata(),
             "history": run.history, "best_val_top1": run.best,
             "rng": {"seed": run.cfg.seed, "next_epoch": epoch}}  # all a resume needs: see loop.seed_epoch
    if run.ema is not None:
        state["ema"] = run.ema.model.state_dict()
    return state


def resume_config(out: Path, asked: TrainConfig, log: Log) -> tuple[TrainConfig, dict[str, Any]]:
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


def restore(ckpt: dict[str, Any], run: Run) -> None:
    """Load last.pt into a run built with `resuming=True`; refused (ModelError) when its classes,
    shapes or values do not fit."""
    last = run.out / "last.pt"
    if tuple(contract_of(ckpt, last).labels) != run.contract.labels:
        raise ModelError(f"{last}: its classes differ from the data's {list(run.contract.labels)}; cannot resume")
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
    run.log(f"resuming {last} after epoch {run.start}/{run.cfg.epochs}")
