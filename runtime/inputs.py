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


@dataclass
class Skipped:
    """Files inside folders passed over for not having an image suffix."""

    files: int = 0


def iter_inputs(args: Iterable[Union[str, Path]], skipped: Skipped | None = None) -> Iterator[InputItem]:
    """The inputs each argument names, in order; an argument that names no image at all (a
    folder or glob without image files) yields one `Missing` saying so."""
    skipped = skipped if skipped is not None else Skipped()
    for arg in args:
        path = Path(arg)
        found = False
        for item in _expand(arg, path, skipped):
            found = True
            yield item
        if not found:
            what = "folder" if _is_dir(path) else "pattern"
            yield Missing(path, f"no image files in this {what} ({', '.join(sorted(IMAGE_SUFFIXES))})")


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _expand(arg: Union[str, Path], path: Path, skipped: Skipped) -> Iterator[InputItem]:
    try:
        kind = "dir" if path.is_dir() else "file" if (path.exists() or path.is_symlink()) else None
    except OSError as exc:  # name too long, permission denied on a parent, ...
        yield Missing(path, exc.strerror or str(exc))
        return
    if kind == "dir":
        yield from walk_images(path, skipped)
    elif kind == "file":
        yield path
    elif glob.has_magic(str(arg)):
        matches = sorted(glob.glob(str(arg), recursive=True))
        if not matches:
            yield Missing(path, "no file matches this pattern")
        for match in matches:
            m = Path(match)
            yield from (walk_images(m, skipped) if _is_dir(m) else [m])
    else:
        yield Missing(path, "no such file or directory")


def walk_images(root: Path, skipped: Skipped | None = None) -> Iterator[Path]:
    """Image files below `root`, depth-first in sorted order, each real directory visited once;
    other files are counted in `skipped`."""
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
            elif skipped is not None:
                skipped.files += 1

    yield from visit(root)
