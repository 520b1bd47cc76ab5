"""Checkpoints: written atomically, read with `weights_only=True` (a checkpoint never runs code).

Keys: `model`, `optimizer`, `scheduler`, `epoch` (epochs completed), `config` (plain dict),
`contract` (the runtime contract as metadata strings), plus `history` and `best_val_top1`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import os
import pickle
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from runtime.contract import Contract, ContractError
from runtime.errors import ModelError, StorageError, first_line
from runtime.modelfile import LFS_MAGIC

REQUIRED_KEYS = ("model", "config", "contract", "epoch")


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write via a temp file in the same directory, fsync, then os.replace: a crash at any moment
    leaves either the old file or the new one, never a torn one. SIGINT/SIGTERM are held back
    until the write is complete, so an interrupted run still finishes the save it was in."""
    with _signals_deferred():
        _atomic_write(Path(path), write)


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM in a Python handler (Python runs handlers in the main thread, whatever
    thread the OS picked) and re-deliver them to the previous handlers afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if received:
            handler = previous[received[0]]
            if callable(handler):
                handler(received[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])


# Test hook: with this set to a file path, the first write that would replace an existing file
# stops after writing its temp file and before renaming it, creates that path and waits to be
# killed, so a test can kill a process exactly inside a save.
PAUSE_IN_WRITE_ENV = "ALEXNET_ONNX_PAUSE_IN_WRITE"


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            pause = os.environ.get(PAUSE_IN_WRITE_ENV)
            if pause and path.exists():
                Path(pause).touch()
                while True:
                    time.sleep(1)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else exc.strerror or str(exc)
        raise StorageError(f"{path}: cannot write ({reason}); the previous file, if any, is unchanged") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # Serialize in memory first: torch's zip writer turns a failed write (full disk) into an
    # opaque RuntimeError, while a plain write raises OSError with errno ENOSPC/EFBIG.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def clean_temp_files(directory: Path) -> None:
    """Remove temp files a killed process left behind (they never replaced a real file)."""
    for leftover in Path(directory).glob(".*.tmp-*"):
        leftover.unlink(missing_ok=True)


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def non_finite(model: torch.nn.Module) -> list[str]:
    """Names of the floating-point weights and buffers holding NaN or inf."""
    return [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
