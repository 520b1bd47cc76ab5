"""The model `onnx-serve` serves, and its hot swap.

`ModelSlot.current` is the model new requests take; a request keeps the one it took until it is
answered, so a swap never changes a batch in flight. A watcher thread polls MODEL's identity
(device, inode, size, mtime): a rename over it (as `export-onnx` writes) or SIGHUP
(`request_reload`) loads the file in that thread with every defence `onnx-predict` has (the
file checks, the contract, the signature), and only a model that passes replaces the current one.
A defective file is refused, logged and counted; the old model keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import ModelError
from .files import sha256_fd
from .predictor import Predictor
from .serve_metrics import Metrics
from .terminal import printable

log = logging.getLogger("alexnet_onnx.serve")

# How often the watcher looks at MODEL; a changed file must look the same twice in a row before
# it is loaded, so a copy still being written is not read half-way.
WATCH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Loaded:
    """One loaded model: its Predictor, the sha256 of the bytes it was loaded from, and when."""

    predictor: Predictor
    sha256: str
    generation: int
    loaded_at: float

    def describe(self) -> dict:
        """`GET /v1/model`: the contract and the model's provenance."""
        c = self.predictor.contract
        return {
            "file": self.predictor.path.name,
            "sha256": self.sha256,
            "generation": self.generation,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "labels": list(c.labels),
            "preprocess": c.preprocess.to_dict(),
            "decode": self.predictor.decode,
            "variant": c.variant,
            "arch": c.arch,
            "dataset": c.dataset,
            "metrics": dict(c.metrics),
            "temperature": c.temperature,
            "acceptance": {"score": c.accept_score, "threshold": c.accept_threshold},
            "source_checkpoint_sha256": c.source_checkpoint_sha256,
            "created_with": c.created_with,
            "contract_version": c.contract_version,
        }

    def info(self) -> dict[str, str]:
        """The `onnx_serve_model_info` labels."""
        c = self.predictor.contract
        return {"sha256": self.sha256, "variant": c.variant, "arch": c.arch, "generation": str(self.generation)}


def identity(path: Path) -> Optional[tuple[int, ...]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def load(path: Path, *, decode: str, generation: int, meanwhile: Callable[[], None] = lambda: None) -> Loaded:
    """Load and check `path` (ModelError, one line, when it cannot be served). While onnxruntime
    builds the session, `meanwhile` runs and the file is hashed; the hash is taken only if the path
    named the same file before and after the Predictor opened it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = -1  # the Predictor says why in its own words
    try:
        before = os.fstat(fd) if fd >= 0 else None
        # One-thread session: the batcher runs as many model calls side by side as there are cores.
        predictor = Predictor(path, threads=1, decode=decode, background=True)
        meanwhile()
        digest = sha256_fd(fd) if fd >= 0 else ""
    finally:
        if fd >= 0:
            os.close(fd)
    predictor.ready()
    after = identity(path)
    if before is None or after is None or after[:2] != (before.st_dev, before.st_ino):
        raise ModelError(f"{path}: the file was replaced while it was loaded; it is loaded again once it settles")
    return Loaded(predictor, digest, generation, time.time())


class ModelSlot:
    """The current model, and the watcher that swaps it."""

    def __init__(self, path: Path, *, decode: str, metrics: Metrics, meanwhile: Callable[[], None] = lambda: None) -> None:
        """Load `path` now (ModelError if it cannot be served), running `meanwhile` as its session is built."""
        self.path, self.decode, self.metrics = Path(path), decode, metrics
        self._seen = identity(self.path)
        self.current = load(self.path, decode=decode, generation=1, meanwhile=meanwhile)
        metrics.set_model(self.current.info())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._forced = False
        self._thread: Optional[threading.Thread] = None

    def watch(self) -> None:
        """Start the watcher thread."""
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._thread.start()

    def request_reload(self) -> None:
        """Load MODEL again now, changed or not (SIGHUP). Safe to call from a signal handler."""
        self._forced = True
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        pending: Optional[tuple[int, ...]] = None
        while not self._stop.is_set():
            self._wake.wait(WATCH_INTERVAL_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = identity(self.path)
            if self._forced:
                self._forced, pending = False, None
                self._reload(now, "SIGHUP")
            elif now is not None and now != self._seen:
                if now == pending:  # the same new file twice in a row: it has settled
                    pending = None
                    self._reload(now, "the file changed")
                else:
                    pending = now

    def _reload(self, seen: Optional[tuple[int, ...]], why: str) -> None:
        self._seen = seen  # a refused file is not tried again until it changes (or SIGHUP)
        name = printable(str(self.path))
        try:
            loaded = load(self.path, decode=self.decode, generation=self.current.generation + 1)
        except ModelError as exc:
            self.metrics.reload("refused")
            log.warning("model reload refused (%s), still serving sha256 %s: %s", why, self.current.sha256[:12],
                        printable(str(exc)))
            return
        except Exception as exc:  # never let the watcher die: the old model keeps serving
            self.metrics.reload("refused")
            log.error("model reload failed (%s): %s: %s", why, type(exc).__name__, printable(str(exc)[:300]))
            return
        self._seen = identity(self.path) if seen is None else seen
        self.current = loaded
        self.metrics.set_model(loaded.info())
        self.metrics.reload("ok")
        log.info("model swapped in (%s): %s sha256 %s, %s, %d labels", why, name, loaded.sha256[:12],
                 loaded.predictor.contract.variant, len(loaded.predictor.labels))
