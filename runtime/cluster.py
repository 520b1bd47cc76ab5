"""`onnx-predict --ray`: the same classification as a Ray Data pipeline, for archives larger than
one machine. The driver:

    list the inputs (runtime.cluster_sources), leave out paths OUT already holds (runtime.cluster_store)
      -> stateless CPU tasks: read each file's bytes, the image policy, resize, crop, normalize
      -> an actor pool: one Predictor per actor (threads = the actor's CPUs), batched inference
      -> driver: each block of rows written as one part file, atomically, into OUT.parts/;
         at the end the parts (and OUT's earlier rows) are merged into OUT, atomically.

Rows are exactly `--format json`'s (runtime.rows), so a cluster run and a local run give the same
answers. A killed driver leaves whole parts only; a rerun with the same --output and settings
classifies only the paths not yet written. Ray is imported only here.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .cluster_sources import Source, read_source
from .cluster_store import RowStore
from .contract import Preprocess
from .errors import ImageError, UsageError, first_line
from .predictor import Predictor, prepare
from .rows import Result, json_line

BLOCK_ROWS = 256  # inputs per Ray block: enough to batch, small enough to spread over nodes
PART_SECONDS = 2.0  # a part file at least this often (and at the end) ...
PART_ROWS = 50_000  # ... or once this many rows are waiting
# Logical CPUs each stage asks Ray for. Actors ask for half a CPU, so single-threaded model calls
# run beside the decode tasks on the same cores, as the local pipeline does (runtime.classify).
# Decode tasks ask for a whole one: with equal requests Ray Data fuses the two stages into the
# actors, and decoding would no longer run in stateless tasks.
DECODE_CPUS = 1
ACTOR_CPUS = 0.5
PROBE_SECONDS = 5.0  # to reach a cluster's address when asking why it refused us
AUTH_HELP = ("export RAY_AUTH_MODE=token, with the head's token in ~/.ray/auth_token (or in RAY_AUTH_TOKEN, "
             "or a file named by RAY_AUTH_TOKEN_PATH; `ray get-auth-token` on the head prints it), "
             "or start the head with RAY_AUTH_MODE=disabled (see docs/cluster.md)")


# ---------------------------------------------------------------------------------------------
# The two stages that run on the cluster


def decode_batch(batch: dict[str, np.ndarray], spec: dict, decode: str) -> dict[str, np.ndarray]:
    """Ray task: read and preprocess each input; failures become an `error` text (else "")."""
    import ray

    preprocess = Preprocess(**spec)
    crop = preprocess.crop
    arrays = np.zeros((len(batch["path"]), 3, crop, crop), np.float32)
    errors = []
    for i, (path, read) in enumerate(zip(batch["path"], batch["read"])):
        try:
            arrays[i] = prepare(read_source(str(read), str(path)), preprocess, decode)
            errors.append("")
        except ImageError as exc:
            errors.append(str(exc))
        except Exception as exc:  # never let one odd file stop the others
            errors.append(f"{path}: cannot use image ({type(exc).__name__}: {first_line(exc)})")
    node = ray.get_runtime_context().get_node_id()
    return {"path": batch["path"], "x": arrays, "error": np.array(errors, dtype=object),
            "decoded_on": np.array([node] * len(errors), dtype=object)}


class Classifier:
    """Ray actor: one Predictor, loaded once, for every batch it is given. `model`: an absolute
    path that every node sees (as the inputs' paths are)."""

    def __init__(self, model: str, top_k: int, threads: int) -> None:
        import ray

        self.predictor = Predictor(model, threads=threads)
        self.top_k = top_k
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        rows = iter(self.predictor.logits(batch["x"][ok]) if ok.any() else [])
        lines, failed = [], []
        for path, error, good in zip(batch["path"], batch["error"], ok):
            path = str(path)  # as listed: a URI keeps its "//"
            result = Result(path, error=str(error)) if not good else None
            if result is None:
                try:
                    result = Result(path, prediction=self.predictor.prediction(next(rows), self.top_k))
                except ImageError as exc:  # a non-finite output: this image fails, the others stand
                    result = Result(path, error=f"{path}: {exc}")
            lines.append(json_line(result))
            failed.append(result.error is not None)
        n = len(lines)
        return {"line": np.array(lines, dtype=object), "failed": np.array(failed, dtype=bool),
                "decoded_on": batch["decoded_on"], "classified_on": np.array([self.node] * n, dtype=object)}


# ---------------------------------------------------------------------------------------------
# Connecting


def connect(address: str, num_cpus: Optional[int]) -> None:
    """ray.init for `--ray ADDRESS|auto|local`, quietly: our progress line is the only output. A
    cluster that wants a token this machine lacks is one line (UsageError) saying what to set."""
    import logging

    import ray

    options: dict[str, Any] = dict(logging_level=logging.CRITICAL, log_to_driver=False, configure_logging=True)
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except ray.exceptions.AuthenticationError as exc:
        raise UsageError(f"the Ray cluster at {address} needs a token: {first_line(exc, 120)}; {AUTH_HELP}") from None
    except ConnectionError:
        refusal = auth_refusal(address)
        if refusal:
            raise UsageError(refusal) from None
        raise
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.verbose_stats_logs = False
    for name in ("ray", "ray.data"):  # failures reach the user as our one line (--debug: traceback)
        logging.getLogger(name).setLevel(logging.CRITICAL)


def auth_refusal(address: str) -> Optional[str]:
    """Why the cluster at HOST:PORT refused this driver, when the reason is its token
    authentication (Ray says only "Failed to connect"); None for any other reason."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except OSError:
        return None  # nothing answers there: Ray's own message says so
    from ray._raylet import GcsClient  # Ray's client of the head's control service, as ray.init uses
    from ray.exceptions import AuthenticationError

    try:
        GcsClient(address=address)
    except AuthenticationError:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return (f"the Ray cluster at {address} refused this machine's token: use the head's "
                    "(`ray get-auth-token` on the head prints it) in RAY_AUTH_TOKEN or ~/.ray/auth_token")
        return f"the Ray cluster at {address} requires token authentication: {AUTH_HELP}"
    except Exception:
        return None
    return None


@contextmanager
def ray_output_silenced(enabled: bool = True) -> Iterator[None]:
    """Ray's C++ core writes warnings straight to file descriptor 2, and its error monitor prints
    worker deaths (which Ray then retries) to the driver's standard output. While a run lasts,
    fds 1 and 2 go to /dev/null, and sys.stderr (our progress and error lines) to the real stderr."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in saved:
        os.dup2(null, fd)
    os.close(null)
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    previous, sys.stderr = sys.stderr, open(saved[2], "w", buffering=1, encoding=encoding, closefd=False)
    try:
        yield
    finally:
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        sys.stderr = previous


def disconnect() -> None:
    import ray

    ray.shutdown()


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Summary:
    total: int = 0  # inputs named
    already: int = 0  # of them, already in OUT
    classified: int = 0  # rows written by this run
    failed: int = 0  # of them, error rows
    nodes: int = 0  # that did any of the work
    decode_nodes: int = 0
    classify_nodes: int = 0
    seconds: float = 0.0


def run(model: Path, predictor: Predictor, sources: list[Source], missing: list[Result], store: RowStore, *,
        top_k: int, decode: str, batch_size: int, on_progress: Callable[[Summary], None]) -> Summary:
    """Classify `sources` on the connected Ray cluster into `store` (opened); returns what happened."""
    import pyarrow as pa
    import ray

    start = time.monotonic()
    done = store.done([s.path for s in sources] + [str(r.path) for r in missing])
    summary = Summary(total=len(sources) + len(missing))
    todo = [s for s in sources if s.path not in done]
    pending = [json_line(r) for r in missing if str(r.path) not in done]
    summary.already = summary.total - len(todo) - len(pending)
    summary.classified = summary.failed = len(pending)
    decode_nodes: set[str] = set()
    classify_nodes: set[str] = set()
    if todo:
        table = pa.table({"path": [s.path for s in todo], "read": [s.read for s in todo]})
        blocks = [table.slice(i, BLOCK_ROWS) for i in range(0, table.num_rows, BLOCK_ROWS)]
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        spec = predictor.contract.preprocess
        spec_dict = dict(resize=spec.resize, crop=spec.crop, mean=spec.mean, std=spec.std)
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(decode_batch, fn_kwargs=dict(spec=spec_dict, decode=decode), batch_size=batch_size,
                            batch_format="numpy", num_cpus=DECODE_CPUS)
        ds = ds.map_batches(Classifier, fn_constructor_kwargs=dict(model=os.path.abspath(model), top_k=top_k, threads=1),
                            concurrency=(1, max(1, cpus)), batch_size=batch_size, batch_format="numpy",
                            num_cpus=ACTOR_CPUS)
        last_part = time.monotonic()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            lines = [str(line) for line in batch["line"]]
            pending.extend(lines)
            summary.classified += len(lines)
            summary.failed += int(np.count_nonzero(batch["failed"]))
            decode_nodes.update(str(n) for n in batch["decoded_on"])
            classify_nodes.update(str(n) for n in batch["classified_on"])
            if len(pending) >= PART_ROWS or time.monotonic() - last_part > PART_SECONDS:
                store.write_part(pending)
                pending, last_part = [], time.monotonic()
            summary.seconds = time.monotonic() - start
            on_progress(summary)
    store.write_part(pending)
    store.finish()
    summary.decode_nodes, summary.classify_nodes = len(decode_nodes), len(classify_nodes)
    summary.nodes = len(decode_nodes | classify_nodes)
    summary.seconds = time.monotonic() - start
    return summary
