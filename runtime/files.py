"""Opening a file the runtime reads (a model, an image) without ever blocking on it.

A FIFO opened for reading waits for a writer, and a device may never stop producing bytes, so a
path is opened non-blocking and what was opened is checked to be a regular file before anything
reads it. Callers turn the exceptions into their own one-line errors.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat


class NotRegularFile(OSError):
    """The path names a pipe, socket or device (never read)."""


def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor (close-on-exec) for the regular file at `path`.

    Raises what `os.open` raises (FileNotFoundError, PermissionError, ...), IsADirectoryError
    for a directory, and NotRegularFile for anything else that is not a regular file."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore the flag.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    raise NotRegularFile(errno.EINVAL, "not a regular file (a pipe, socket or device)", os.fspath(path))


HASH_CHUNK = 1 << 20


def sha256_fd(fd: int) -> str:
    """The sha256 of the whole file behind `fd` (positional reads: the descriptor's offset is left alone)."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha256_fd(f.fileno())
