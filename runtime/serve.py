"""`onnx-serve`: the model behind a long-running HTTP service (uvicorn running the Starlette app of
runtime/serve_app.py).

Start-up order: the model is opened and checked first (a defect is one line and exit 3, as with
`onnx-predict`, before the port is opened); the web stack is imported while onnxruntime builds
the session; then the port is bound (exit 4 if it cannot be) and the server takes requests.
SIGTERM or SIGINT stops accepting, lets the requests in flight finish (within DRAIN_TIMEOUT_S)
and exits 0; SIGHUP reloads the model (runtime/serve_models.py).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import EXIT_OK, StorageError, UsageError
from .serve_metrics import Metrics
from .terminal import printable

log = logging.getLogger("alexnet_onnx.serve")

DRAIN_TIMEOUT_S = 30  # SIGTERM: requests in flight get this long to finish
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
# Open connections at most; past it uvicorn answers 503 at once. Far above --max-queue, so the
# queue's own 503 (with Retry-After) is what clients normally see.
MAX_CONNECTIONS = 2048
BACKLOG = 2048
MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True)
class ServeConfig:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    threads: Optional[int] = None  # decode threads and side-by-side model calls; default: usable cores
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_mb: float = 25.0
    decode: str = "exact"
    token_file: Optional[Path] = None
    cors: Optional[str] = None
    access_log: bool = True
    debug: bool = False


def read_token(path: Path) -> str:
    """The bearer token in `path`: its first line, without surrounding whitespace."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise StorageError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
    lines = data.splitlines()
    token = lines[0].strip() if lines else b""
    if len(data) > MAX_TOKEN_BYTES or not token or not all(0x21 <= b <= 0x7E for b in token):
        raise UsageError(f"{path}: the token file must hold one token of printable ASCII characters "
                         f"(at most {MAX_TOKEN_BYTES} bytes), e.g. from: openssl rand -hex 32 > {path}")
    return token.decode()


def serve(config: ServeConfig) -> int:
    """Run the service until SIGTERM/SIGINT; the exit code (0 after a clean drain)."""
    from .session import available_cores
    from .serve_models import ModelSlot

    _setup_logging(config)
    token = read_token(config.token_file) if config.token_file else None
    metrics = Metrics(config.max_batch)
    # The web stack is imported while onnxruntime builds the session (which lets go of the GIL).
    slot = ModelSlot(config.model, decode=config.decode, metrics=metrics, meanwhile=_import_web_stack)
    import uvicorn

    from .contract import package_version
    from .serve_app import Service, build_app
    from .serve_batcher import Batcher

    sock = _bind(config.host, config.port)
    workers = config.threads or available_cores()
    batcher = Batcher(workers=workers, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000,
                      max_queue=config.max_queue, metrics=metrics)
    service = Service(slot, batcher, metrics, max_body=int(config.max_body_mb * (1 << 20)),
                      version=package_version(), debug=config.debug)
    app = build_app(service, token=token, cors=config.cors)
    server = _server_class()(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", ws="none", timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS, backlog=BACKLOG, server_header=False,
    ), service)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    previous = signal.signal(signal.SIGHUP, lambda *_: slot.request_reload())
    slot.watch()
    c = slot.current
    log.info("serving %s (%s %s, sha256 %s) on %s with %d worker(s), batches of up to %d", printable(str(config.model)),
             printable(c.predictor.contract.arch), c.predictor.contract.variant, c.sha256[:12], url, workers,
             config.max_batch)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGHUP, previous)
        slot.stop()
        batcher.close()
        sock.close()
    log.info("stopped")
    return EXIT_OK


def _import_web_stack() -> None:
    try:
        for name in ("uvicorn", "uvicorn.protocols.http.httptools_impl", "uvicorn.loops.uvloop",
                     f"{__package__}.serve_app"):
            importlib.import_module(name)
    except ImportError:  # reported where the import happens for real (httptools and uvloop are optional)
        pass


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise StorageError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def _setup_logging(config: ServeConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s onnx-serve %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    ours = logging.getLogger("alexnet_onnx.serve")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    logging.getLogger("alexnet_onnx.serve.access").setLevel(logging.INFO if config.access_log else logging.WARNING)
    # uvicorn's own messages (bad HTTP from a client, a forced shutdown): warnings and worse only.
    uv = logging.getLogger("uvicorn.error")
    uv.addHandler(handler)
    uv.setLevel(logging.WARNING)
    uv.propagate = False


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose SIGTERM/SIGINT handling marks the service as draining (/readyz
        says 503) and ends in a normal return rather than re-raising the signal afterwards."""

        def __init__(self, config, service) -> None:
            super().__init__(config)
            self.service = service

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

        def handle_exit(self, sig, frame) -> None:
            if not self.service.draining:
                self.service.draining = True
                log.info("%s: draining (no new connections; requests in flight finish)", signal.Signals(sig).name)
            super().handle_exit(sig, frame)

    return Server
