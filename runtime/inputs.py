"""Turn command-line PATH arguments into a stream of image paths, in a stable order.

Files are taken as given; directories are walked in sorted order (hidden entries skipped, only
image suffixes); arguments that do not exist but contain glob characters are expanded (sorted,
`**` any depth). A path that does not exist yields a `Missing` entry, so the caller can report
it and carry on.

Walks never leave a given folder through a link to a directory unless `follow_links` is set
(a link to `/` would walk the whole filesystem); either way each real directory (st_dev, st_ino)
is visited once, so link loops end, and walks are iterative, so depth costs no recursion. Links
to files are files. A glob's `**` obeys the same rules; a link named by a literal or wildcard
part of the pattern is followed (the pattern's own length bounds those).
"""

from __future__ import annotations

import fnmatch
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
    """Files inside folders passed over for not having an image suffix, and links to
    directories not followed."""

    files: int = 0
    links: int = 0


def iter_inputs(args: Iterable[Union[str, Path]], skipped: Skipped | None = None, *,
                follow_links: bool = False) -> Iterator[InputItem]:
    """The inputs each argument names, in order; an argument that names no image at all (a
    folder or glob without image files) yields one `Missing` saying so."""
    skipped = skipped if skipped is not None else Skipped()
    for arg in args:
        path = Path(arg)
        found = False
        for item in _expand(arg, path, skipped, follow_links):
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


def _expand(arg: Union[str, Path], path: Path, skipped: Skipped, follow_links: bool) -> Iterator[InputItem]:
    try:
        kind = "dir" if path.is_dir() else "file" if (path.exists() or path.is_symlink()) else None
    except OSError as exc:  # name too long, permission denied on a parent, ...
        yield Missing(path, exc.strerror or str(exc))
        return
    if kind == "dir":
        yield from walk_images(path, skipped, follow_links=follow_links)
    elif kind == "file":
        yield path
    elif glob.has_magic(str(arg)):
        matches = expand_glob(str(arg), follow_links=follow_links)
        if not matches:
            yield Missing(path, "no file matches this pattern")
        given: set[Path] = set()  # `a/**` matches a/ and everything below it: each file once
        for match in matches:
            m = Path(match)
            for found in (walk_images(m, skipped, follow_links=follow_links) if _is_dir(m) else [m]):
                if found not in given:
                    given.add(found)
                    yield found
    else:
        yield Missing(path, "no such file or directory")


def _entries(directory: str, seen: set[tuple[int, int]]) -> list[os.DirEntry] | None:
    """`directory`'s entries by name, or None where it was seen already or cannot be read."""
    try:
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in seen:
            return None  # a link loop, or a second way into a directory already walked
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return None


def _is_dir_entry(entry: os.DirEntry, follow_links: bool, skipped: Skipped | None) -> bool:
    """Whether to descend into `entry`: a directory, and not through a link unless asked."""
    try:
        if not entry.is_dir():
            return False
        if entry.is_symlink() and not follow_links:
            if skipped is not None:
                skipped.links += 1
            return False
        return True
    except OSError:
        return False


def _walk(root: str, follow_links: bool, skipped: Skipped | None,
          seen: set[tuple[int, int]] | None = None) -> Iterator[tuple[os.DirEntry, bool]]:
    """(entry, whether it is a directory walked now: not a link unless asked, not seen before)
    below `root`, depth-first in sorted order, hidden ones left out; an explicit stack, so any
    depth walks."""
    seen = set() if seen is None else seen
    first = _entries(root, seen)
    stack = [iter(first)] if first is not None else []
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        below = _entries(entry.path, seen) if _is_dir_entry(entry, follow_links, skipped) else None
        yield entry, below is not None
        if below is not None:
            stack.append(iter(below))


def walk_images(root: Path, skipped: Skipped | None = None, *, follow_links: bool = False) -> Iterator[Path]:
    """Image files below `root`, depth-first in sorted order, each real directory visited once;
    other files are counted in `skipped`."""
    for entry, is_dir in _walk(str(root), follow_links, skipped):
        if is_dir:
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir():
                continue  # a link to a directory, not followed
        except OSError:
            pass
        if path.suffix.lower() in IMAGE_SUFFIXES:
            yield path
        elif skipped is not None:
            skipped.files += 1


def expand_glob(pattern: str, *, follow_links: bool = False) -> list[str]:
    """The paths `pattern` matches, sorted, as glob.glob(pattern, recursive=True) matches them,
    but a `**` walks as `walk_images` does: each real directory once, links to directories only
    with `follow_links`, iteratively."""
    anchor = os.sep if os.path.isabs(pattern) else ""
    parts = [part for part in pattern.split(os.sep) if part]
    current = [anchor]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        found: list[str] = []
        if part == "**":
            seen: set[tuple[int, int]] = set()
            for base in current:
                if os.path.isdir(base or "."):
                    found.append(base)
                    found.extend(os.path.join(base, os.path.relpath(e.path, base or ".")) if not base else e.path
                                 for e, is_dir in _walk(base or ".", follow_links, None, seen) if last or is_dir)
        elif not glob.has_magic(part):
            for base in current:
                joined = os.path.join(base, part)
                if os.path.isdir(joined) or (last and os.path.lexists(joined)):
                    found.append(joined)
        else:
            for base in current:
                try:
                    with os.scandir(base or ".") as it:
                        names = [e for e in it if fnmatch.fnmatch(e.name, part)
                                 and (part.startswith(".") or not e.name.startswith("."))]
                except OSError:
                    continue
                found.extend(os.path.join(base, e.name) for e in names if last or _is_dir(Path(e.path)))
        current = list(dict.fromkeys(found))
    return sorted(path for path in current if path)
