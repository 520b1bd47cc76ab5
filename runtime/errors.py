"""Domain errors and the exit codes they map to (documented in the README)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_IO = 4
EXIT_DIVERGED = 5
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70  # a bug: please report it with the --debug traceback


class AlexnetOnnxError(Exception):
    """Base class; `exit_code` is what the command-line tools exit with."""

    exit_code = EXIT_INVALID


class UsageError(AlexnetOnnxError):
    exit_code = EXIT_USAGE


class ImageError(AlexnetOnnxError):
    """One input image cannot be used (the others still are)."""

    exit_code = EXIT_SOME_FAILED


class ModelError(AlexnetOnnxError):
    """Model, checkpoint or contract that cannot be used."""

    exit_code = EXIT_INVALID


class DataError(AlexnetOnnxError):
    """A dataset that cannot be used."""

    exit_code = EXIT_INVALID


class StorageError(AlexnetOnnxError):
    """Reading or writing files failed (permissions, full disk)."""

    exit_code = EXIT_IO


class DivergedError(AlexnetOnnxError):
    exit_code = EXIT_DIVERGED


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
