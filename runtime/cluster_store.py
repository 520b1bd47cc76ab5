"""The rows of an `onnx-predict --ray` run: OUT (.parquet or .jsonl), the settings that produced
it, and OUT.parts/, where a run's rows wait until they are merged into OUT. pyarrow only, no Ray.

    OUT.parquet          the rows; the settings in the schema metadata (SETTINGS_KEY)
    OUT.jsonl            the rows, exactly `--format json`'s lines (no header line) ...
    OUT.jsonl.settings.json   ... and the settings beside it
    OUT.parts/run.json   the unfinished run's settings, and whether it starts OUT afresh
    OUT.parts/part-*.jsonl    its rows, JSON lines, each part written atomically

Settings (runtime.cluster_settings): what decides a row's content. A run continues OUT only with the settings OUT records; with --overwrite it starts OUT afresh.
Either way OUT itself changes only at the end, in one atomic replace, and OUT.parts/run.json
stays until every file is in place, so a run killed at any moment is finished by the same
command: the journal says whether OUT's old rows count.

Memory grows with this run's paths and the unfinished parts' rows, never with OUT's size: OUT is
streamed (Parquet a batch of rows at a time)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from .atomic import atomic_write
from .cluster_settings import RunSettings
from .errors import DataError, UsageError, first_line

OUTPUT_SUFFIXES = (".parquet", ".jsonl")
SETTINGS_KEY = b"alexnet_onnx.settings"
SIDECAR_SUFFIX = ".settings.json"
JOURNAL = "run.json"
READ_BATCH = 10_000  # Parquet rows read at a time
WRITE_GROUP = 100_000  # rows per Parquet row group written from JSON lines


class RowStore:
    """OUT and OUT.parts/. `open` first, then `done`, `write_part` as rows come, `finish`."""

    def __init__(self, path: Path) -> None:
        if path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise UsageError(f"{path}: --output must end in {' or '.join(OUTPUT_SUFFIXES)}")
        if path.is_dir():
            raise UsageError(f"{path}: --output is a folder; give a file name ending in {' or '.join(OUTPUT_SUFFIXES)}")
        self.path = path
        self.parquet = path.suffix.lower() == ".parquet"
        self.parts = path.with_name(path.name + ".parts")
        self.sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        self.settings: Optional[RunSettings] = None
        self.fresh = False  # OUT's old rows do not count (--overwrite, or no OUT yet)
        self._count = len(self._part_files())

    def recorded(self) -> Optional[RunSettings]:
        """The settings OUT records (None: OUT records none)."""
        if self.parquet:
            metadata = _parquet_file(self.path).schema_arrow.metadata or {}
            text = metadata.get(SETTINGS_KEY)
            return RunSettings.parse(text, self.path) if text else None
        return RunSettings.parse(self.sidecar.read_bytes(), self.sidecar) if self.sidecar.is_file() else None

    def open(self, settings: RunSettings, *, overwrite: bool) -> None:
        """Continue OUT with `settings`, or refuse (UsageError) if OUT or an unfinished run was
        made with others. `overwrite`: start OUT afresh (unfinished parts are dropped now; OUT is
        replaced only when this run finishes)."""
        self.settings = settings
        hint = "; rerun with the settings it records to continue it, or add --overwrite to start it afresh"
        if overwrite:
            self._drop_parts()
            self.fresh = True
            return
        journal = self.parts / JOURNAL
        if journal.is_file():
            data = _parse(journal.read_text(encoding="utf-8"), journal, "settings")
            unfinished = RunSettings.parse(data["settings"], journal)
            if unfinished != settings:
                raise UsageError(f"{self.parts}: an unfinished run with other settings: "
                                 f"{settings.differences(unfinished)}{hint}")
            self.fresh = data.get("fresh") is not False
            return
        if self._part_files():
            raise UsageError(f"{self.parts}: parts without a record of their settings{hint}")
        if not self.path.exists():
            self.fresh = True
            return
        recorded = self.recorded()
        if recorded is None:
            raise UsageError(f"{self.path}: records no settings (model, top-k, decode), so its rows cannot be "
                             "trusted for this run; add --overwrite to start it afresh")
        if recorded != settings:
            raise UsageError(f"{self.path}: made with other settings: {settings.differences(recorded)}{hint}")

    def done(self, paths: Iterable[str]) -> set[str]:
        """Which of `paths` already have a row (in OUT, when its rows count, or in the parts)."""
        wanted = set(paths)
        found: set[str] = set()
        if not self.fresh and self.path.exists():
            if self.parquet:
                for batch in _parquet_batches(self.path, wanted, columns=["path"]):
                    found.update(batch.column(0).to_pylist())
            else:
                found.update(p for p in (_parse(line, self.path)["path"] for line in _lines(self.path)) if p in wanted)
        found.update(p for p in _part_paths(self._part_files()) if p in wanted)
        return found

    def write_part(self, lines: list[str]) -> None:
        """Rows (JSON lines) as one more part file, atomically; the first part records the run."""
        if not lines:
            return
        if not (self.parts / JOURNAL).is_file():
            self._write_journal()
        name = f"part-{self._count:06d}-{os.getpid()}.jsonl"
        atomic_write(self.parts / name, lambda f: f.write(("\n".join(lines) + "\n").encode("utf-8")))
        self._count += 1

    def finish(self) -> None:
        """OUT's rows (when they count) and the parts' into OUT, atomically, each path once (the
        parts' row wins); then the settings; then the parts go, the journal last."""
        parts = self._part_files()
        if not parts and not self.fresh:
            self._drop_parts()
            return
        new = set(_part_paths(parts))
        keep_old = not self.fresh and self.path.exists()
        if self.parquet:
            atomic_write(self.path, lambda f: self._write_parquet(f, keep_old, new, parts))
        else:
            def write(f: Any) -> None:
                if keep_old:
                    f.writelines((line + "\n").encode("utf-8") for line in _lines(self.path)
                                 if _parse(line, self.path)["path"] not in new)
                f.writelines((line + "\n").encode("utf-8") for line in _first_of_each(parts, new))

            atomic_write(self.path, write)
            atomic_write(self.sidecar, lambda f: f.write(self.settings.to_json().encode("utf-8")))
        if self.fresh:  # OUT now holds exactly the parts' rows: from here on they count
            self.fresh = False
            self._write_journal()
        self._drop_parts()

    def rows(self, paths: Optional[set[str]] = None) -> Iterator[dict]:
        """OUT's rows (after `finish`) with exactly `--format json`'s fields; only those of
        `paths` when given. Streamed."""
        if not self.parquet:
            for line in _lines(self.path):
                row = _parse(line, self.path)
                if paths is None or row["path"] in paths:
                    yield row
            return
        for batch in _parquet_batches(self.path, paths):
            for row in batch.to_pylist():
                yield {k: v for k, v in row.items() if v is not None}

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.jsonl")) if self.parts.is_dir() else []

    def _write_journal(self) -> None:
        record = {"settings": json.loads(self.settings.to_json()), "fresh": self.fresh}
        atomic_write(self.parts / JOURNAL, lambda f: f.write(json.dumps(record).encode("utf-8")))

    def _drop_parts(self) -> None:
        """The parts, then the journal: a run killed meanwhile still knows its settings."""
        for part in self._part_files():
            part.unlink()
        (self.parts / JOURNAL).unlink(missing_ok=True)
        if self.parts.is_dir():
            shutil.rmtree(self.parts)  # what is left: temp files of killed writers
        self._count = 0

    def _write_parquet(self, f: Any, keep_old: bool, new: set[str], parts: list[Path]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = parquet_schema().with_metadata({SETTINGS_KEY: self.settings.to_json().encode("utf-8")})
        with pq.ParquetWriter(f, schema) as writer:
            if keep_old:  # copied a batch at a time, as Arrow data
                for batch in _parquet_file(self.path).iter_batches(batch_size=READ_BATCH):
                    table = pa.Table.from_batches([batch]).cast(schema)
                    writer.write_table(table.filter(_has_path_in(batch, new, keep=False)))
            group: list[dict] = []
            for line in _first_of_each(parts, new):
                row = _parse(line, self.path)
                group.append({name: row.get(name) for name in schema.names})
                if len(group) == WRITE_GROUP:
                    writer.write_table(pa.Table.from_pylist(group, schema=schema))
                    group = []
            writer.write_table(pa.Table.from_pylist(group, schema=schema))


def parquet_schema() -> Any:
    """OUT.parquet's columns: every field a row may have (runtime.rows); a field a row lacks is
    null, and dropped again when the row is read back."""
    import pyarrow as pa

    top = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    return pa.schema([("path", pa.string()), ("label", pa.string()), ("score", pa.float64()),
                      ("top_k", top), ("accepted", pa.bool_()), ("error", pa.string())])


def unstorable_path(paths: Iterable[str]) -> Optional[str]:
    """The first path Parquet cannot hold (a file name that is not UTF-8), if any."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            return path
    return None


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except OSError:
        raise
    except Exception as exc:  # pyarrow's own error types for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None


def _parquet_batches(path: Path, paths: Optional[set[str]], columns: Optional[list[str]] = None) -> Iterator[Any]:
    """OUT.parquet's record batches, only the rows of `paths` when given."""
    for batch in _parquet_file(path).iter_batches(batch_size=READ_BATCH, columns=columns):
        yield batch if paths is None else batch.filter(_has_path_in(batch, paths))


def _has_path_in(batch: Any, paths: set[str], keep: bool = True) -> Any:
    """A mask of the rows of `batch` whose path is (keep) or is not in `paths`. One set lookup per
    row: pyarrow's is_in would hash all of `paths` again for every batch (30 s per million rows
    against a million paths)."""
    import pyarrow as pa

    return pa.array([(p in paths) == keep for p in batch.column("path").to_pylist()], pa.bool_())


def _parse(line: str, where: Path, key: str = "path") -> dict:
    """One JSON object that has `key`; DataError otherwise."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{where}: a line that is not JSON ({first_line(exc)})") from None
    if not isinstance(row, dict) or key not in row:
        raise DataError(f"{where}: a line without {key!r}: not written by onnx-predict --ray")
    return row


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\n")


def _part_paths(parts: list[Path]) -> Iterator[str]:
    for part in parts:
        for line in _lines(part):
            yield _parse(line, part)["path"]


def _first_of_each(parts: list[Path], pending: set[str]) -> Iterator[str]:
    """The parts' lines, each path's first only; `pending` (the paths still to give) is used up."""
    for part in parts:
        for line in _lines(part):
            path = _parse(line, part)["path"]
            if path in pending:
                pending.remove(path)
                yield line
