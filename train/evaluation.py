"""Validation and test passes: loss, top-1, optional flip averaging, confusion matrix."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class FlipAverage(nn.Module):
    """Test-time augmentation: mean of the logits for the image and its mirror. Export wraps the
    model in it too, so the deployed model is the one that was validated."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(torch.flip(x, dims=[3]))) / 2


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, num_classes: int) -> dict:
    """{"loss", "top1", "n", "confusion" (num_classes x num_classes, rows = truth)} over batches."""
    model.eval()
    loss_sum, n = 0.0, 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y, _ in batches:
        if not len(y):
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        confusion += torch.bincount((y * num_classes + pred).cpu(), minlength=num_classes**2).view(num_classes, num_classes)
        n += len(y)
    correct = int(confusion.diag().sum())
    return {"loss": loss_sum / n if n else float("nan"), "top1": correct / n if n else 0.0, "n": n,
            "confusion": confusion}
