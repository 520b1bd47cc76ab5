"""Error translation shared by the three commands: one line on stderr and a documented exit code;
tracebacks only with --debug."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Callable, NoReturn, TypeVar

import click

from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_IO, EXIT_OK, EXIT_USAGE, AlexnetOnnxError, first_line
from .terminal import printable

T = TypeVar("T")

debug_option = click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
# What the [train] extra installs: a command that needs one of these says so in one line.
TRAIN_EXTRA = ("torch", "torchvision", "onnx", "onnxscript", "matplotlib")


class Command(click.Command):
    """A click command whose own usage errors (bad option values, unknown options) are one
    `error:` line and exit 2, like the project's own errors, instead of click's three lines."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.exceptions.Abort:
            fail("interrupted", EXIT_INTERRUPTED)
        if standalone_mode:
            sys.exit(code or EXIT_OK)
        return code


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
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in TRAIN_EXTRA:
            fail(f"this command needs the training extra ({exc.name} is not installed): "
                 "pip install 'alexnet-onnx[train]'", EXIT_USAGE)
        fail(f"unexpected {type(exc).__name__}: {first_line(exc, 300)} (a bug: rerun with --debug and report the traceback)", EXIT_INTERNAL)
    sys.exit(code)
