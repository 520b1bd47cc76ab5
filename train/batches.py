"""Where each epoch's batches come from: the in-memory device store (decoded once, augmented on
the device) or DataLoaders that decode every epoch; sharded per process under torchrun."""

from __future__ import annotations

import math
from typing import Any

import torch

from alexnet_onnx.runtime.session import available_cores

from . import distributed
from .augment import Augmentation
from .config import TrainConfig, per_process_batch
from .data import Splits, eval_transform, make_loader, train_transform
from .models import ARCHS


def loader_workers(cfg: TrainConfig, device: torch.device) -> int:
    """On CPU the cores are busy training; decoding in the main process is cheaper than workers."""
    if cfg.workers is not None:
        return cfg.workers
    return min(8, available_cores()) if device.type == "cuda" else 0


class Data:
    """Batches for each epoch: the in-memory device store, or DataLoaders decoding every epoch."""

    def __init__(self, splits: Splits, cfg: TrainConfig, device: torch.device, ctx: distributed.Dist) -> None:
        self.cfg, self.device, self.ctx, self.splits = cfg, device, ctx, splits
        self.spec = ARCHS[cfg.arch].preprocess
        self.augment = Augmentation(ARCHS[cfg.arch].augment, self.spec, cfg.translate, cfg.cutout, cfg.flip, cfg.seed)
        self.per_rank = per_process_batch(cfg.batch_size, ctx.world)
        cache = cfg.cache if cfg.cache != "auto" else ("memory" if device.type == "cuda" else "none")
        self.memory = cache == "memory"
        self.workers = loader_workers(cfg, device)
        self.stores: dict[str, Any] = {}
        if self.memory:
            from .store import ImageStore

            for name in ("train", "val", "test"):
                split = getattr(splits, name)
                if split is not None:
                    self.stores[name] = ImageStore(split, self.spec, device=device,
                                                   augment=self.augment if name == "train" else None)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.splits.train) / self.ctx.world / self.per_rank)

    def train(self, generator: torch.Generator, epoch: int):
        if self.memory:
            return self.stores["train"].batches(self.per_rank, generator, (self.ctx.rank, self.ctx.world), epoch)
        sampler = None
        if self.ctx.enabled:
            from torch.utils.data import DistributedSampler

            sampler = DistributedSampler(range(len(self.splits.train)), self.ctx.world, self.ctx.rank, seed=generator.initial_seed())
        return make_loader(self.splits.train, train_transform(self.augment, epoch), batch_size=self.per_rank,
                           shuffle=sampler is None, workers=self.workers, generator=generator, sampler=sampler)

    def eval(self, name: str):
        if getattr(self.splits, name) is None:
            return None
        if self.memory:
            return self.stores[name].batches(self.cfg.batch_size * 2)
        return make_loader(getattr(self.splits, name), eval_transform(self.spec), batch_size=self.cfg.batch_size * 2,
                           shuffle=False, workers=self.workers)

    def store_bad(self) -> int:
        return self.stores["train"].bad if self.memory else 0
