"""The two architectures as torch modules (their input geometry and defaults: config.ARCHS)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from alexnet_onnx.runtime.errors import ModelError, first_line

from .config import ARCHS, IMAGENET_WEIGHTS_FILE  # noqa: F401  (re-exported)


class AlexNetCifar(nn.Module):
    """AlexNet scaled to 32x32: five 3x3 conv layers (64-192-384-256-256) with BatchNorm,
    three max-pools to 4x4, then three fully connected layers."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(3, 64), nn.MaxPool2d(2),
            *conv(64, 192), nn.MaxPool2d(2),
            *conv(192, 384), *conv(384, 256), *conv(256, 256), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(256 * 4 * 4, 1024), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(1024, 1024), nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def whiten_first_conv(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> int:
    """Patch-whitening initialization (as in Jordan, 2024, "94% on CIFAR-10 in 3.29 seconds"): the
    first conv's filters become the eigenvectors of the covariance of its input patches in
    `images` (normalized training crops), largest first, each scaled by 1 / sqrt(eigenvalue + eps)
    and followed by its negative (ReLU keeps one side of each); filters beyond twice the patch
    size keep their initialization. Returns how many filters were set."""
    conv = first_conv(model)
    patches = F.unfold(images.float(), conv.kernel_size)  # (n, c*k*k, positions), no padding
    patches = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
    eigval, eigvec = torch.linalg.eigh(torch.cov(patches.T))
    order = eigval.argsort(descending=True)
    filters = eigvec[:, order].T / torch.sqrt(eigval[order].clamp(min=0) + eps)[:, None]
    filters = torch.stack([filters, -filters], 1).flatten(0, 1)  # v1, -v1, v2, -v2, ...
    n = min(conv.out_channels, len(filters))
    with torch.no_grad():
        conv.weight[:n] = filters[:n].reshape(n, *conv.weight.shape[1:]).to(conv.weight)
    return n


def build_model(
    arch: str, num_classes: int, *, pretrained: bool = False, weights: Optional[Path] = None,
    dropout: Optional[float] = None,
) -> nn.Module:
    """A fresh model; `pretrained` loads torchvision's ImageNet weights (its cache first, then a
    download), `weights` a local state dict with the same keys. The head is always new. `dropout`
    (training only; None: the arch's) does not change the weights' shapes."""
    if arch not in ARCHS:
        raise ModelError(f"unknown arch {arch!r} (valid: {', '.join(ARCHS)})")
    dropout = ARCHS[arch].dropout if dropout is None else dropout
    if arch == "alexnet_cifar":
        if pretrained or weights:
            raise ModelError("alexnet_cifar has no pretrained weights; use --arch alexnet for transfer learning")
        return AlexNetCifar(num_classes, dropout)
    from torchvision.models import alexnet

    model = alexnet(weights=None, dropout=dropout)
    if pretrained or weights:
        state = _load_imagenet_state(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            source = weights or IMAGENET_WEIGHTS_FILE
            raise ModelError(f"{source}: not torchvision AlexNet weights ({first_line(exc)})") from None
    model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    return model


def _load_imagenet_state(weights: Optional[Path]) -> dict:
    if weights is not None:
        from .checkpoint import load_file

        state = load_file(Path(weights), what="weights file")
        state = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ModelError(f"{weights}: expected a state dict of torchvision AlexNet weights")
        return state
    from torchvision.models import AlexNet_Weights

    try:
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except OSError as exc:  # URLError is an OSError: offline and not in the cache
        cache = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS_FILE
        raise ModelError(
            f"cannot download the ImageNet AlexNet weights ({exc}); place {IMAGENET_WEIGHTS_FILE} "
            f"at {cache} or pass --weights FILE"
        ) from None
    except Exception as exc:  # a corrupt or tampered file in the cache (never executed: weights_only)
        cache = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS_FILE
        raise ModelError(f"{cache}: not loadable as ImageNet AlexNet weights ({first_line(exc)}); delete it") from None
