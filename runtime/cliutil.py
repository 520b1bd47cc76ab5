"""Error translation shared by the three commands: one line on stderr and a documented exit code;
tracebacks only with --debug."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Callable, NoReturn, TypeVar

import click

from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, AlexnetOnnxError, first_line
from .terminal import printable

T = TypeVar("T")

debug_option = click.option("--debug", is_flag=True, help="Show tracebacks for errors.")


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {printable(message)}", err=True)
    sys.exit(code)


def run(fn: Callable[[], int | None], *, debug: bool) -> NoReturn:
    """Call `fn` and exit with its code, turning known failures into one line each."""
    # Pillow warns (two lines naming its own source file) about corrupt metadata, e.g. EXIF, in
    # images it still decodes; the pixels are used as decoded, so that is not a problem to report.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    try:
        code = fn() or EXIT_OK
    except AlexnetOnnxError as exc:
        if debug:
            traceback.print_exc()
        fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_OK)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}", EXIT_IO)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        fail(f"unexpected {type(exc).__name__}: {first_line(exc, 300)} (a bug: rerun with --debug and report the traceback)", EXIT_INTERNAL)
    sys.exit(code)
