"""Turn command-line PATH arguments into a stream of image paths, in a stable order.

Files are taken as given; directories are walked recursively in sorted order (hidden entries
skipped, only image suffixes, symlinked directories followed once: loops end); arguments that
do not exist but contain glob characters are expanded (sorted, `**` recursive). A path that
does not exist yields a `Missing` entry, so the caller can report it and carry on.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Union

from .image import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Missing:
    path: Path
    reason: str


InputItem = Union[Path, Missing]


def iter_inputs(args: Iterable[Union[str, Path]]) -> Iterator[InputItem]:
    for arg in args:
        path = Path(arg)
        try:
            kind = "dir" if path.is_dir() else "file" if (path.exists() or path.is_symlink()) else None
        except OSError as exc:  # name too long, permission denied on a parent, ...
            yield Missing(path, exc.strerror or str(exc))
            continue
        if kind == "dir":
            yield from walk_images(path)
        elif kind == "file":
            yield path
        elif glob.has_magic(str(arg)):
            matches = sorted(glob.glob(str(arg), recursive=True))
            if not matches:
                yield Missing(path, "no file matches this pattern")
            for match in matches:
                m = Path(match)
                yield from (walk_images(m) if m.is_dir() else [m])
        else:
            yield Missing(path, "no such file or directory")


def walk_images(root: Path) -> Iterator[Path]:
    """Image files below `root`, depth-first in sorted order, each real directory visited once."""
    seen: set[tuple[int, int]] = set()

    def visit(directory: Path) -> Iterator[Path]:
        try:
            st = directory.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return  # a symlink loop or a second link to a directory already walked
        seen.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            if is_dir:
                yield from visit(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                yield path

    yield from visit(root)
