"""Atomic file writes: a temp file in the same directory, fsync, then os.replace, so a crash at
any moment leaves either the old file or the new one, never a torn one. Checkpoints, exported
models, reports and the parts of a cluster run's output are all written this way."""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

from .errors import StorageError


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
