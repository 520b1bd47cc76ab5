"""Atomic file writes: a temp file in the same directory, fsync, then os.replace, so a crash at
any moment leaves either the old file or the new one, never a torn one. Checkpoints, exported
models, reports, plots, demo images and the parts of a cluster run's output are all written this
way.

Each write has its own temp file (`temp_path`), locked by its writer until the rename, so any
number of processes and threads may write one path at once: each succeeds, and the file ends as
one writer's whole content. A temp file left by a killed writer is removed by the next write of
the same path (or by `clean_temp_files`), once its lock shows that writer is gone."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import secrets
import signal
import threading
from pathlib import Path
from typing import Callable, Iterator

from .errors import StorageError
from .files import open_regular


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


def temp_path(path: Path) -> Path:
    """A fresh temp file name for a write of `path`: hidden, in the same directory (so the final
    os.replace is a rename within one file system), and unique to this write (process id and a
    random token), so concurrent writers of one path never share a temp file."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(_TOKEN_BYTES)}")


def clean_temp_files(directory: Path, target: str | None = None) -> int:
    """Remove the temp files in `directory` (only those for the file named `target`, when given)
    whose writer is gone; returns how many. A writer holds an exclusive lock on its temp file until
    the rename, and the lock dies with its process, so a temp file that can be locked was
    abandoned by a killed writer. Best effort: what cannot be examined is left."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match and (target is None or match["target"] == target):
            removed += _remove_if_abandoned(Path(entry.path))
    return removed


_TOKEN_BYTES = 6
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.tmp-[0-9]+-[0-9a-f]{%d}" % (2 * _TOKEN_BYTES))
# Creating a temp file is retried when another process's cleaner removed it between its creation
# and its lock (it looked abandoned then).
_CREATE_TRIES = 8
# This process's temp files while they are written. Their locks keep other processes' cleaners
# off; this keeps this process's own off where a file system (NFS) locks per process, not per file.
_WRITING: set[str] = set()
_WRITING_LOCK = threading.Lock()


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_temp_files(path.parent, path.name)
        with _temp_file(path) as (f, tmp):
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else exc.strerror or str(exc)
        raise StorageError(f"{path}: cannot write ({reason}); the previous file, if any, is unchanged") from None


@contextlib.contextmanager
def _temp_file(path: Path) -> Iterator[tuple[io.BufferedWriter, Path]]:
    """A new, locked temp file for `path`, open for writing until the block ends (so its lock
    outlives the rename), then removed if it is still there."""
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
    finally:
        _discard(tmp)


def _create_temp(path: Path) -> tuple[int, Path]:
    for _ in range(_CREATE_TRIES):
        tmp = temp_path(path)
        with _WRITING_LOCK:
            _WRITING.add(str(tmp))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except BaseException:
            _discard(tmp)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_named(tmp, fd):
                return fd, tmp
        except BaseException:
            os.close(fd)
            _discard(tmp)
            raise
        os.close(fd)
        _discard(tmp)
    raise OSError(errno.EAGAIN, f"temp files beside it were removed {_CREATE_TRIES} times as it made them")


def _discard(tmp: Path) -> None:
    tmp.unlink(missing_ok=True)
    with _WRITING_LOCK:
        _WRITING.discard(str(tmp))


def _remove_if_abandoned(tmp: Path) -> int:
    with _WRITING_LOCK:
        if str(tmp) in _WRITING:
            return 0
    try:
        fd = open_regular(tmp)
    except OSError:
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while its writer lives
        if not _still_named(tmp, fd):
            return 0
        tmp.unlink()
        return 1
    except OSError:
        return 0
    finally:
        os.close(fd)


def _still_named(tmp: Path, fd: int) -> bool:
    """Whether `tmp` still names the file open as `fd`."""
    try:
        named = os.stat(tmp)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


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
