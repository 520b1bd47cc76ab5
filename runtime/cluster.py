"""`onnx-predict --ray`: the same classification as a Ray Data pipeline, for archives larger than
one machine.

    driver: list the inputs (local folders and globs on a filesystem every node sees, or any URI
            pyarrow reads), leave out paths OUT already holds
      -> stateless CPU tasks: read each file's bytes, the image policy, resize, crop, normalize
      -> an actor pool: one Predictor per actor (threads = the actor's CPUs), batched inference
      -> driver: each block of rows written as one part file, atomically, into OUT.parts/;
         at the end the parts (and an earlier OUT) are merged into OUT, atomically.

Rows are exactly `--format json`'s (runtime.classify.json_line), so a cluster run and a local
run give the same answers. A killed driver leaves whole parts only; a rerun with the same
--output classifies only the paths not yet written. Ray is imported only here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from .atomic import atomic_write
from .classify import Result, json_line
from .contract import Preprocess
from .errors import ImageError, UsageError, first_line
from .inputs import Missing, Skipped, iter_inputs
from .predictor import Prediction, Predictor, prepare

OUTPUT_SUFFIXES = (".parquet", ".jsonl")
BLOCK_ROWS = 256  # inputs per Ray block: enough to batch, small enough to spread over nodes
PART_SECONDS = 2.0  # a part file at least this often (and at the end) ...
PART_ROWS = 50_000  # ... or once this many rows are waiting
URI_MARK = "://"


@dataclass(frozen=True)
class Source:
    """One input: `path` as results show it (as local onnx-predict shows it), `read` where a
    worker on any node reads it (an absolute path or a URI)."""

    path: str
    read: str


# ---------------------------------------------------------------------------------------------
# Inputs


def list_sources(args: Iterable[str], on_skipped: Callable[[int], None]) -> tuple[list[Source], list[Result]]:
    """Inputs to classify (first occurrence of each path) and error rows for arguments that name
    nothing (as local onnx-predict reports them)."""
    sources: list[Source] = []
    missing: list[Result] = []
    seen: set[str] = set()
    local: list[str] = []

    def add(source: Source) -> None:
        if source.path not in seen:
            seen.add(source.path)
            sources.append(source)

    for arg in args:
        if URI_MARK in str(arg):
            for uri in _list_uri(str(arg)):
                add(Source(uri, uri))
        else:
            local.append(arg)
    skipped = Skipped()
    for item in iter_inputs(local, skipped):
        if isinstance(item, Missing):
            missing.append(Result(item.path, error=f"{item.path}: {item.reason}"))
        else:
            add(Source(str(item), os.path.abspath(item)))
    if skipped.files:
        on_skipped(skipped.files)
    return sources, missing


def _list_uri(uri: str) -> list[str]:
    """Image files under a URI (a file or a prefix, recursively), sorted."""
    from pyarrow import fs

    from .image import IMAGE_SUFFIXES

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.File:
            return [uri]
        if info.type != fs.FileType.Directory:
            raise UsageError(f"{uri}: no such file or folder")
        entries = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except UsageError:
        raise
    except Exception as exc:  # pyarrow raises its own types for every filesystem failure
        raise UsageError(f"{uri}: cannot list ({first_line(exc)})") from None
    scheme = uri[: uri.index(URI_MARK) + len(URI_MARK)]
    prefix = "/" if scheme == "file://" else ""
    return sorted(f"{scheme}{prefix}{e.path.lstrip('/')}" for e in entries
                  if e.type == fs.FileType.File and Path(e.path).suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in Path(e.path).parts))


def _read(source: str, path: str) -> Any:
    """The bytes of one input, as runtime.image.Encoded."""
    from .image import Encoded, check_file_size, read_file

    if URI_MARK not in source:
        return read_file(Path(source), path)
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(source)
        check_file_size(filesystem.get_file_info(inner).size or 0, path)
        with filesystem.open_input_stream(inner) as f:
            return Encoded(path, f.read())
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{path}: cannot read ({first_line(exc)})") from None


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
            arrays[i] = prepare(_read(str(read), str(path)), preprocess, decode)
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
        lines = []
        for path, error, good in zip(batch["path"], batch["error"], ok):
            path = str(path)  # as listed: a URI keeps its "//"
            result = Result(path, error=str(error)) if not good else None
            if result is None:
                try:
                    result = Result(path, prediction=self.predictor.prediction(next(rows), self.top_k))
                except ImageError as exc:  # a non-finite output: this image fails, the others stand
                    result = Result(path, error=f"{path}: {exc}")
            lines.append(json_line(result))
        n = len(lines)
        return {"line": np.array(lines, dtype=object), "decoded_on": batch["decoded_on"],
                "classified_on": np.array([self.node] * n, dtype=object)}


# ---------------------------------------------------------------------------------------------
# Output: parts written atomically while the run goes, merged into OUT at the end


class Output:
    """OUT (.parquet or .jsonl) and OUT.parts/, the part files of an unfinished run (JSON lines,
    each written atomically, so a part that exists is whole)."""

    def __init__(self, path: Path) -> None:
        if path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise UsageError(f"{path}: --output must end in {' or '.join(OUTPUT_SUFFIXES)}")
        if path.is_dir():
            raise UsageError(f"{path}: --output is a folder; give a file name ending in {' or '.join(OUTPUT_SUFFIXES)}")
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        self._count = len(self._part_files())

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.jsonl")) if self.parts.is_dir() else []

    def lines(self) -> Iterator[str]:
        """Every row written so far: OUT's, then the parts'."""
        if self.path.exists():
            yield from _read_output(self.path)
        for part in self._part_files():
            yield from _lines(part)

    def done(self) -> set[str]:
        return {json.loads(line)["path"] for line in self.lines()}

    def write_part(self, lines: list[str]) -> None:
        if not lines:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        name = f"part-{self._count:06d}-{os.getpid()}.jsonl"
        atomic_write(self.parts / name, lambda f: f.write(("\n".join(lines) + "\n").encode("utf-8")))
        self._count += 1

    def finish(self) -> int:
        """Merge OUT and the parts into OUT (atomically), then drop the parts; returns the rows.
        Each path once: a merge killed after replacing OUT but before dropping the parts leaves
        rows in both, and the next merge keeps the first."""
        seen: set[str] = set()

        def unique() -> Iterator[str]:
            for line in self.lines():
                path = json.loads(line)["path"]
                if path not in seen:
                    seen.add(path)
                    yield line

        if self.path.suffix.lower() == ".parquet":
            atomic_write(self.path, lambda f: _write_parquet(unique(), f))
        else:
            atomic_write(self.path, lambda f: f.writelines((line + "\n").encode("utf-8") for line in unique()))
        for part in self._part_files():
            part.unlink()
        if self.parts.is_dir():
            self.parts.rmdir()
        return len(seen)


def _schema():
    import pyarrow as pa

    top = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    return pa.schema([("path", pa.string()), ("label", pa.string()), ("score", pa.float64()),
                      ("top_k", top), ("error", pa.string())])


def _write_parquet(lines: Iterable[str], f: Any, chunk: int = 100_000) -> None:
    """Rows as Parquet, written in row groups of `chunk`: the JSON fields as columns; a field a
    row lacks is null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    with pq.ParquetWriter(f, schema) as writer:
        rows: list[dict] = []
        for line in lines:
            row = json.loads(line)
            rows.append({name: row.get(name) for name in schema.names})
            if len(rows) == chunk:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))


def _read_output(path: Path) -> Iterator[str]:
    """OUT's rows as `--format json` lines (nulls dropped again for Parquet), streamed: a JSON
    lines file line by line, Parquet a batch of rows at a time, so OUT may outgrow memory."""
    if path.suffix.lower() == ".jsonl":
        yield from _lines(path)
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            yield json.dumps({k: v for k, v in row.items() if v is not None}, allow_nan=False)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\n")


def iter_rows(path: Path) -> Iterator[dict]:
    """A finished OUT's rows as dicts with exactly `--format json`'s fields, one at a time."""
    return (json.loads(line) for line in _read_output(path))


# ---------------------------------------------------------------------------------------------
# The driver


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


def connect(address: str, num_cpus: Optional[int]) -> None:
    """ray.init for `--ray ADDRESS|auto|local`, quietly: our progress line is the only output."""
    import logging

    import ray

    options: dict[str, Any] = dict(logging_level=logging.CRITICAL, log_to_driver=False, configure_logging=True)
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
    else:
        ray.init(address=address, **options)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.verbose_stats_logs = False
    for name in ("ray", "ray.data"):  # failures reach the user as our one line (--debug: traceback)
        logging.getLogger(name).setLevel(logging.CRITICAL)


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


def run(model: Path, predictor: Predictor, sources: list[Source], missing: list[Result], output: Output, *,
        top_k: int, decode: str, batch_size: int, on_progress: Callable[[Summary], None]) -> Summary:
    """Classify `sources` on the connected Ray cluster into `output`; returns what happened."""
    import pyarrow as pa
    import ray

    start = time.monotonic()
    done = output.done()
    summary = Summary(total=len(sources) + len(missing))
    todo = [s for s in sources if s.path not in done]
    pending = [json_line(r) for r in missing if str(r.path) not in done]
    summary.already = summary.total - len(todo) - len(pending)
    summary.classified = summary.failed = len(pending)
    decode_nodes: set[str] = set()
    classify_nodes: set[str] = set()
    if todo:
        table = pa.table({"path": [s.path for s in todo], "read": [s.read for s in todo]})
        blocks = [table.slice(i, BLOCK_ROWS) for i in range(0, len(todo), BLOCK_ROWS)]
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
            summary.failed += sum("error" in json.loads(line) for line in lines)
            decode_nodes.update(str(n) for n in batch["decoded_on"])
            classify_nodes.update(str(n) for n in batch["classified_on"])
            if len(pending) >= PART_ROWS or time.monotonic() - last_part > PART_SECONDS:
                output.write_part(pending)
                pending, last_part = [], time.monotonic()
            summary.seconds = time.monotonic() - start
            on_progress(summary)
    output.write_part(pending)
    output.finish()
    summary.decode_nodes, summary.classify_nodes = len(decode_nodes), len(classify_nodes)
    summary.nodes = len(decode_nodes | classify_nodes)
    summary.seconds = time.monotonic() - start
    return summary


# Logical CPUs each stage asks Ray for. Actors ask for half a CPU, so single-threaded model calls
# run beside the decode tasks on the same cores, as the local pipeline does (runtime.classify).
# Decode tasks ask for a whole one: with equal requests Ray Data fuses the two stages into the
# actors, and decoding would no longer run in stateless tasks.
DECODE_CPUS = 1
ACTOR_CPUS = 0.5


def prediction_from_row(row: dict, labels: tuple[str, ...]) -> Optional[Prediction]:
    """A `--format json` row back as a Prediction (None for an error row)."""
    if "error" in row:
        return None
    top = tuple((t["label"], float(t["score"])) for t in row["top_k"])
    return Prediction(label=row["label"], score=float(row["score"]), index=labels.index(row["label"]), top_k=top)
