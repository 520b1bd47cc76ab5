"""Which weights train and how fast: freezing, discriminative learning rates, no decay on norms
and biases, the optimizer and the warmup + cosine/linear schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .config import TrainConfig


def head_of(model: nn.Module) -> nn.Module:
    """The last Linear layer (the new N-class head)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def apply_freeze(model: nn.Module, freeze: str) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze == "features":
        for p in model.features.parameters():
            p.requires_grad_(False)
    elif freeze == "all-but-head":
        head = {id(p) for p in head_of(model).parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Head at --lr, the rest at --lr x --backbone-lr-mult; no weight decay on norms and biases."""
    head = {id(p) for p in head_of(model).parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head, p.ndim > 1), []).append(p)
    out = []
    for (is_head, decays), params in sorted(groups.items()):
        out.append({"params": params, "lr": cfg.lr * (1.0 if is_head else cfg.backbone_lr_mult),
                    "weight_decay": cfg.weight_decay if decays else 0.0})
    return out


def make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, **fused)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, cfg.epochs * steps)
    warmup = int(total * cfg.warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
