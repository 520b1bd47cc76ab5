"""Training-recipe pieces that act on batches and weights: mixup/cutmix and an EMA of weights."""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, *, mixup: float, cutmix: float, smoothing: float,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, soft targets). With both enabled, each batch picks one of them at random.
    Without either, targets are the smoothed one-hot labels."""
    off = smoothing / num_classes
    target = torch.full((len(y), num_classes), off, device=y.device)
    target.scatter_(1, y[:, None], 1.0 - smoothing + off)
    choices = [m for m, a in (("mixup", mixup), ("cutmix", cutmix)) if a > 0]
    if not choices or len(y) < 2:
        return x, target
    pick = choices[int(torch.randint(len(choices), (1,), generator=generator))]
    alpha = mixup if pick == "mixup" else cutmix
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(y), generator=generator).to(y.device)
    if pick == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    else:
        h, w = x.shape[-2:]
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, (1,), generator=generator)), int(torch.randint(w, (1,), generator=generator))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
    return x, lam * target + (1 - lam) * target[perm]


class EMA:
    """Exponential moving average of a model's state, for evaluation: parameters and float buffers
    (BatchNorm's running mean and variance) are averaged, so the averaged weights are judged with
    statistics of the same horizon; integer buffers (BatchNorm's batch counter) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_v, v in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_v.is_floating_point():
                ema_v.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                ema_v.copy_(v)
