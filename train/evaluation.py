"""The model a run ships, and the validation and test passes that score it (loss, top-1,
confusion matrix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from alexnet_onnx.runtime.contract import Contract
from alexnet_onnx.runtime.errors import ModelError, first_line

from .checkpoint import contract_of, non_finite
from .config import TrainConfig
from .models import build_model


class FlipAverage(nn.Module):
    """Test-time augmentation: mean of the logits for the image and its mirror. Export wraps the
    model in it too, so the deployed model is the one that was validated."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) / 2


def shipped(weights: nn.Module, cfg: TrainConfig) -> nn.Module:
    """What validation scores, best.pt selection compares and export ships: the given weights
    (the EMA copy when the run keeps one), flip-averaged with --tta."""
    return FlipAverage(weights) if cfg.tta else weights


def shipped_from_checkpoint(ckpt: dict[str, Any], path: Path, device: Optional[torch.device] = None
                            ) -> tuple[nn.Module, Contract, TrainConfig]:
    """(eval-mode shipped model, contract, config) from a checkpoint: its EMA weights if it has
    them, else its model weights; refused (ModelError) when they do not fit or are not finite."""
    contract = contract_of(ckpt, path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except Exception as exc:
        raise ModelError(f"{path}: checkpoint config is invalid ({first_line(exc)})") from None
    if cfg.arch != contract.arch:
        raise ModelError(f"{path}: config arch {cfg.arch!r} differs from the contract's {contract.arch!r}")
    model = build_model(cfg.arch, contract.num_classes)
    try:
        model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path}: weights do not fit {cfg.arch} with {contract.num_classes} classes ({first_line(exc)})") from None
    bad = non_finite(model)
    if bad:
        raise ModelError(f"{path}: weights contain NaN/inf ({', '.join(bad[:3])}); use a checkpoint from before divergence")
    if device is not None:
        model = model.to(device)
    return shipped(model, cfg).eval(), contract, cfg


def uses_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether `precision` means bf16 autocast on `device`: auto picks it where bf16 arithmetic
    is native (CUDA; x86 CPUs with AMX or AVX512_BF16, where `alexnet_cifar` trains ~2x faster
    than in fp32 -- docs/training.md, precision), fp32 elsewhere."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return device.type == "cpu" and any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def validation_bf16(device: torch.device, precision: str) -> bool:
    """Whether validation and test run under bf16 autocast: on CUDA as training does (fp32 with
    --precision fp32); never on CPU, where the exported fp32 model runs, so what is scored there
    is what export ships."""
    return device.type == "cuda" and uses_bf16(device, precision)


def autocast(device: torch.device, precision: str = "auto"):
    """The training step's autocast for --precision."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, precision))


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, num_classes: int, *, precision: str) -> dict:
    """{"loss", "top1", "n", "confusion" (num_classes x num_classes, rows = truth)} over batches,
    in the arithmetic `validation_bf16` picks for the run's --precision."""
    model.eval()
    loss_sum, n = 0.0, 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y, _ in batches:
        if not len(y):
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=validation_bf16(device, precision)):
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        confusion += torch.bincount((y * num_classes + pred).cpu(), minlength=num_classes**2).view(num_classes, num_classes)
        n += len(y)
    correct = int(confusion.diag().sum())
    return {"loss": loss_sum / n if n else float("nan"), "top1": correct / n if n else 0.0, "n": n,
            "confusion": confusion}
