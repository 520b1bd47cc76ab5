"""TrainConfig: every knob of a training run; saved in checkpoints as a plain dict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from runtime.errors import UsageError

from .data import DATASETS
from .models import ARCHS

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    data_dir: str
    arch: str
    epochs: int
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "cosine"
    warmup_fraction: float = 0.15
    limit_train: Optional[int] = None
    val_fraction: float = 0.1
    out: str = "artifacts/run"
    pretrained: bool = False
    weights: Optional[str] = None
    device: str = "auto"
    seed: int = 0
    workers: Optional[int] = None  # None: 0 on CPU, min(8, cores) on CUDA
    max_bad_images: int = 100

    def __post_init__(self) -> None:
        choices = {"dataset": DATASETS, "arch": tuple(ARCHS), "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise UsageError(f"--{name} {getattr(self, name)!r} is not valid (choose from {', '.join(valid)})")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if self.limit_train is not None and self.limit_train < 1:
            raise UsageError(f"--limit-train must be at least 1, got {self.limit_train}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("momentum", "label_smoothing", "warmup_fraction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight-decay must be a non-negative number, got {self.weight_decay}")
        if self.pretrained and self.weights:
            raise UsageError("give --pretrained or --weights FILE, not both")
        if (self.workers or 0) < 0 or self.max_bad_images < 0:
            raise UsageError("--workers and --max-bad-images must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
