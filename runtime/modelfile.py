"""Opening a model file for onnxruntime so that it can read nothing but that file.

`open_model` opens the path once, without blocking (a FIFO or device is refused, never read),
and checks what it opened is a regular file. A strict, bounded walk of the protobuf wire format
(`runtime/protowalk.py`) then visits every place a TensorProto can live (graph initializers,
sparse initializers, Constant and other tensor attributes, If/Loop/Scan subgraphs, model-local
functions, training graphs) and refuses any external-data reference, and reads the metadata.

onnxruntime is then given the *open file descriptor* (`/proc/self/fd/N`), never the path:
it reads exactly the inode that was checked, even if the path is replaced meanwhile, and since
onnxruntime resolves external data against that link's folder, a reference the walk somehow
missed cannot resolve to a file beside the model either.

Load by reference (`reference_weights=True`, for a one-shot run on a few images): handed a
single-file model, onnxruntime parses every weight into memory and then copies it into its own
buffers (~2x the model at peak, ~0.5 s for alexnet). Instead onnxruntime gets a small copy of the
model in which each large top-level initializer's bytes are replaced by an external-data
reference to the same descriptor, at the offset where those bytes already lie; it then maps each
weight straight from the file. The file on disk stays one ordinary ONNX file. The session keeps
reading the file, so rewriting it in place while the session lives would change it (a rename over
it, as export-onnx does, is safe) — which is why long-lived Predictors load the ordinary way.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import protowalk
from .operators import Refused, check_operators
from .errors import ModelError
from .files import NotRegularFile, open_regular

LFS_MAGIC = b"version https://git-lfs"  # the first bytes of a git-lfs pointer file
# Smaller initializers stay inline: referencing them would save nothing worth a file read each.
_MIN_REFERENCED_BYTES = 4096
# A referencing copy larger than this (a model whose bulk is not in initializers' raw_data)
# would cost more than it saves: such models load the ordinary way.
MAX_REFERENCING_COPY = 64 << 20
_FD_DIR = "/proc/self/fd"
_COPY_CHUNK = 64 << 20  # bytes per sendfile call
_SHM = "/dev/shm"  # memory-backed: the private copy costs no disk write


@dataclass
class ModelFile:
    """An open, checked model file. `source` is what to hand onnxruntime (a path that names the
    open descriptor, or a serialized ModelProto); `weights_folder`, when set, is the folder its
    references resolve in (session option `session.model_external_initializers_file_folder_path`).
    Close it once the session is created."""

    path: Path
    fd: int
    metadata: dict[str, str]
    source: str | bytes
    weights_folder: str | None = None
    identity: tuple[int, ...] = field(default=())
    private_folder: str | None = None  # holds the private copy a load by reference maps

    def changed(self) -> bool:
        """True when the file was rewritten in place, or the path now names another file, since
        it was checked (a load by reference then fails or reads other bytes)."""
        try:
            renamed = os.stat(self.path).st_ino != self.identity[1]
        except OSError:
            renamed = True
        return renamed or not hasattr(os, "memfd_create") and _identity(os.fstat(self.fd)) != self.identity

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.private_folder:  # onnxruntime mapped the weights it needs when the session was built
            shutil.rmtree(self.private_folder, ignore_errors=True)
            self.private_folder = None

    def __enter__(self) -> "ModelFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_model(path: Path, *, reference_weights: bool = False) -> ModelFile:
    """Open and check `path` (ModelError, one line, when it cannot be a usable single-file
    model) and say how onnxruntime should load it."""
    fd = _open_file(path)
    folder = None
    try:
        info = os.fstat(fd)
        if reference_weights and hasattr(os, "memfd_create"):
            folder = tempfile.mkdtemp(prefix="alexnet-onnx-", dir=_SHM if os.access(_SHM, os.W_OK) else None)
            copy = os.open(os.path.join(folder, "model.onnx"), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        else:
            copy = os.memfd_create("model.onnx", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING) if hasattr(os, "memfd_create") \
                else os.dup(fd)
        _private_copy(fd, copy, info.st_size, path, sealed=folder is None)
        if hasattr(os, "memfd_create") and _identity(os.fstat(fd)) != _identity(info):
            os.close(copy)  # rewritten while copied: the copy may mix old and new bytes
            raise ModelError(f"{path}: the file changed while it was loaded; run again once it is written")
    except BaseException:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        os.close(fd)
    try:
        model = _check(path, copy, info, reference_weights)
    except BaseException:
        os.close(copy)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    model.private_folder = folder
    return model


def _private_copy(fd: int, copy: int, size: int, path: Path, *, sealed: bool) -> None:
    """Copy the file into `copy`, which the walk and onnxruntime then read: truncating or
    rewriting the file meanwhile cannot reach them (a mapped file that shrinks kills its reader
    with SIGBUS). `sealed`: `copy` is a memfd, sealed against any change. Without memfd (not
    Linux), `copy` is the file itself."""
    if not hasattr(os, "memfd_create"):
        return
    try:
        done = 0
        while done < size:
            sent = os.sendfile(copy, fd, done, min(size - done, _COPY_CHUNK))
            if sent == 0:
                break
            done += sent
        if done != size:  # a sysfs attribute, say: its size is not what it reads as
            raise ModelError(f"{path}: is not a regular model file (read {done:,} of its {size:,} bytes); "
                             "pass an .onnx file")
        if os.pread(fd, 1, size):
            raise ModelError(f"{path}: grew while it was read; run again once it is written")
        if sealed:
            fcntl.fcntl(copy, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                        | fcntl.F_SEAL_SEAL)
    except OSError as exc:
        os.close(copy)
        raise ModelError(f"{path}: cannot be read as a model file ({exc.strerror or exc}); "
                         "pass a regular .onnx file") from None
    except BaseException:
        os.close(copy)
        raise


def _open_file(path: Path) -> int:
    """`open_regular`, its failures as one ModelError line each."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory; pass the .onnx file") from None
    except PermissionError:
        raise ModelError(f"{path}: permission denied") from None
    except NotRegularFile:
        raise ModelError(f"{path}: is not a regular file (a pipe, socket or device)") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _check(path: Path, fd: int, info: os.stat_result, reference_weights: bool) -> ModelFile:
    if info.st_size == 0:
        raise ModelError(f"{path}: is empty, not an ONNX model")
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as buf:
        if buf[: len(LFS_MAGIC)] == LFS_MAGIC:
            raise ModelError(f"{path}: is a git-lfs pointer, not the model; run 'git lfs pull' first")
        try:
            scan = protowalk.scan_model(buf)
        except protowalk.ExternalData as exc:
            raise ModelError(
                f"{path}: {exc} refers to external data; only single-file models are loaded, and a "
                "model may not read other files (re-export it with export-onnx)"
            ) from None
        except protowalk.Malformed as exc:
            raise ModelError(f"{path}: not a valid ONNX model ({exc})") from None
        try:
            check_operators(buf)
        except Refused as exc:
            raise ModelError(f"{path}: {exc} (docs/security.md lists the allowed operators)") from None
        model = ModelFile(path, fd, scan.metadata, _fd_path(fd, path), identity=_identity(info))
        if reference_weights:
            _reference(model, buf, scan)
    return model


def _reference(model: ModelFile, buf, scan: protowalk.Scan) -> None:
    """Turn `model` into a load by reference, when that is possible and pays."""
    spans = [raw for raw in scan.initializer_data if raw[1] - raw[0] >= _MIN_REFERENCED_BYTES]
    if len(buf) - sum(end - start for start, end in spans) > MAX_REFERENCING_COPY:
        return
    target = os.path.realpath(model.source)  # what the descriptor names, without symlinks
    folder = os.path.dirname(target)
    try:
        folder.encode("utf-8")  # onnxruntime takes session options as text only
    except UnicodeEncodeError:
        return
    # onnxruntime accepts a reference whose canonical target lies in the folder: naming the
    # descriptor (not the file name) reads the inode that was checked.
    location = os.path.relpath(model.source, folder) if model.source.startswith(_FD_DIR) else os.path.basename(target)
    model.source = protowalk.referencing_copy(buf, set(spans), location.encode())
    model.weights_folder = folder


def _fd_path(fd: int, path: Path) -> str:
    """A path that opens the descriptor's own inode (Linux); elsewhere the file's real path."""
    return f"{_FD_DIR}/{fd}" if os.path.isdir(_FD_DIR) else os.path.realpath(path)


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns
