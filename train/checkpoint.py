"""Checkpoints: written atomically, read with `weights_only=True` (a checkpoint never runs code).

Keys: `model`, `optimizer`, `scheduler`, `epoch` (epochs completed), `config` (plain dict),
`contract` (the runtime contract as metadata strings), plus `history` and `best_val_top1`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from alexnet_onnx.runtime import atomic
from alexnet_onnx.runtime.atomic import atomic_write
from alexnet_onnx.runtime.contract import Contract, ContractError
from alexnet_onnx.runtime.errors import ModelError, first_line
from alexnet_onnx.runtime.modelfile import LFS_MAGIC

REQUIRED_KEYS = ("model", "config", "contract", "epoch")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # Serialize in memory first: torch's zip writer turns a failed write (full disk) into an
    # opaque RuntimeError, while a plain write raises OSError with errno ENOSPC/EFBIG.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def clean_temp_files(directory: Path) -> None:
    """Remove the temp files a killed run left in its output folder (they never replaced a real
    file); those of a writer still at work are kept."""
    atomic.clean_temp_files(Path(directory))


def load_file(path: Path, *, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True, every failure turned into one ModelError line."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            if f.read(len(LFS_MAGIC)) == LFS_MAGIC:
                raise ModelError(f"{path}: is a git-lfs pointer, not a {what}; run 'git lfs pull' first")
        return torch.load(path, map_location="cpu", weights_only=True)
    except ModelError:
        raise
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "global" in line]
        if lines:  # the pickle names a function or class: loading it would run code
            raise ModelError(f"{path}: refused to load {what}: it would execute code ({lines[0][:200]})") from None
        raise ModelError(f"{path}: not a readable {what} (truncated or corrupt pickle data)") from None
    except Exception as exc:  # random bytes make the unpickler fail in arbitrary ways
        raise ModelError(f"{path}: not a readable {what} (truncated or corrupt: {first_line(exc)})") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint with every required key and a valid contract."""
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        have = ", ".join(sorted(map(str, ckpt))) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(
            f"{path}: not an alexnet-onnx checkpoint (needs keys {', '.join(REQUIRED_KEYS)}; has {have})"
        )
    contract_of(ckpt, path)
    return ckpt


def contract_of(ckpt: dict[str, Any], path: Path) -> Contract:
    try:
        return Contract.from_metadata(ckpt["contract"])
    except (ContractError, TypeError) as exc:
        raise ModelError(f"{path}: invalid contract in checkpoint ({exc})") from None


def non_finite(model: torch.nn.Module) -> list[str]:
    """Names of the floating-point weights and buffers holding NaN or inf."""
    return [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
