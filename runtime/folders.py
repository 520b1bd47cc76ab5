"""ImageFolder class discovery: which sub-folders of a root are classes, in label order.

One set of rules for training data, `onnx-predict --eval` and export's verification images:
every sub-directory is a class, a symlink to a directory included; hidden ones (".name") are
not; names sort by code point, as torchvision's ImageFolder sorts them; a class folder holds at
least one image file (`runtime.inputs.walk_images`, recursive); two class names that lead to the
same directory, or back to the root, would label the same images twice and are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError
from .image import IMAGE_SUFFIXES
from .inputs import walk_images


def class_folders(root: Path) -> list[str]:
    """The class folder names of `root`, sorted; [] when it has none. DataError when `root` is
    not a readable directory, a class folder has no images, or two names are one folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected an ImageFolder: DIR/<class>/<image>)")
    try:
        names = sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and _is_dir(e))
    except OSError as exc:
        raise DataError(f"{root}: cannot list it ({exc.strerror or exc})") from None
    seen = {_identity(root): "."}
    for name in names:
        folder = root / name
        other = seen.setdefault(_identity(folder), name)
        if other != name:
            where = "the root itself" if other == "." else f"{root / other}"
            raise DataError(f"{folder}: is the same folder as {where}; a class folder must be a folder of its own")
        if next(walk_images(folder), None) is None:
            raise DataError(f"{folder}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                            "add some or remove it")
    return names


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; a broken one is not a class
    except OSError:
        return False


def _identity(folder: Path) -> tuple[int, int]:
    st = folder.stat()
    return st.st_dev, st.st_ino
