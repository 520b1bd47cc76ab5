"""Domain errors and the exit codes they map to: `EXIT_CODES` is the one table, which every
command's --help and docs/runtime.md show."""

from __future__ import annotations

from typing import NamedTuple


class ExitCode(NamedTuple):
    code: int
    name: str
    meaning: str


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "ok", "everything worked"),
    ExitCode(1, "some-failed", "some inputs failed; the others were still processed"),
    ExitCode(2, "usage", "bad or missing options or arguments"),
    ExitCode(3, "invalid", "invalid model, checkpoint or data (a failed parity gate included)"),
    ExitCode(4, "io", "reading or writing a file failed (permissions, disk full)"),
    ExitCode(5, "diverged", "training diverged (NaN or inf loss or weights)"),
    ExitCode(70, "internal", "an internal error (a bug): rerun with --debug and report the traceback"),
    ExitCode(130, "interrupted", "interrupted (Ctrl-C, SIGTERM)"),
)
_BY_NAME = {entry.name: entry.code for entry in EXIT_CODES}

EXIT_OK = _BY_NAME["ok"]
EXIT_SOME_FAILED = _BY_NAME["some-failed"]
EXIT_USAGE = _BY_NAME["usage"]
EXIT_INVALID = _BY_NAME["invalid"]
EXIT_IO = _BY_NAME["io"]
EXIT_DIVERGED = _BY_NAME["diverged"]
EXIT_INTERNAL = _BY_NAME["internal"]
EXIT_INTERRUPTED = _BY_NAME["interrupted"]

# Codes any command can end with: the shared error translation (runtime/cliutil.py) produces them.
COMMON_EXIT_CODES = (EXIT_OK, EXIT_USAGE, EXIT_INVALID, EXIT_IO, EXIT_INTERNAL, EXIT_INTERRUPTED)


def exit_codes_help(*extra: int) -> str:
    """The "Exit codes" epilog of a command's --help: the common codes plus `extra`, from the table."""
    wanted = set(COMMON_EXIT_CODES) | set(extra)
    unknown = wanted - {entry.code for entry in EXIT_CODES}
    if unknown:
        raise ValueError(f"exit codes not in EXIT_CODES: {sorted(unknown)}")
    width = max(len(str(code)) for code in wanted)
    lines = [f"  {entry.code:<{width}}  {entry.meaning}" for entry in EXIT_CODES if entry.code in wanted]
    # "\b" keeps click from rewrapping the table into one paragraph.
    return "\b\nExit codes:\n" + "\n".join(lines)


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
