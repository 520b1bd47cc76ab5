"""The inputs of an `onnx-predict --ray` run: local folders, files and globs (walked as local
onnx-predict walks them, on a filesystem every node sees at the same path) and URIs pyarrow reads
(`s3://`, `gs://`, `hdfs://`, `file://`), listed on the driver; `read_source` fetches one input's
bytes on whichever node decodes it. No Ray here; pyarrow only for URIs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import ImageError, UsageError, first_line
from .image import IMAGE_SUFFIXES, Encoded, check_file_size, read_file
from .inputs import Missing, Skipped, iter_inputs
from .rows import Result

URI_MARK = "://"


@dataclass(frozen=True, slots=True)
class Source:
    """One input: `path` as results show it (as local onnx-predict shows it), `read` where a
    worker on any node reads it (an absolute path or a URI)."""

    path: str
    read: str


def list_sources(args: Iterable[str], on_skipped: Callable[[int], None],
                 follow_links: bool = False) -> tuple[list[Source], list[Result]]:
    """Inputs to classify (first occurrence of each path) and error rows for arguments that name
    nothing (as local onnx-predict reports them); links to directories inside folders only with
    `follow_links` (runtime.inputs)."""
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
            for uri in list_uri(str(arg)):
                add(Source(uri, uri))
        else:
            local.append(arg)
    skipped = Skipped()
    for item in iter_inputs(local, skipped, follow_links=follow_links):
        if isinstance(item, Missing):
            missing.append(Result(item.path, error=f"{item.path}: {item.reason}"))
        else:
            add(Source(str(item), os.path.abspath(item)))
    if skipped.files:
        on_skipped(skipped.files)
    return sources, missing


def list_uri(uri: str) -> list[str]:
    """Image files under a URI (a file or a prefix, recursively), sorted; hidden ones left out."""
    from pyarrow import fs

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


def read_source(read: str, path: str) -> Encoded:
    """The bytes of one input: `read` is a local path or a URI, `path` names it in errors. Files
    over the image policy's size limit are refused before they are read (ImageError)."""
    if URI_MARK not in read:
        return read_file(Path(read), path)
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(read)
        check_file_size(filesystem.get_file_info(inner).size or 0, path)
        with filesystem.open_input_stream(inner) as f:
            return Encoded(path, f.read())
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{path}: cannot read ({first_line(exc)})") from None
