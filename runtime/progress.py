"""The one progress line of every command: click's progress bar on stderr where a person watches.

Silent when stderr is not a terminal (logs and pipes get the results and errors only), and erased
when done, so the line never lingers above what follows.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Optional

import click


class _Unsized:
    """An iterable of unknown length: click draws a moving bar and the position without a total."""

    def __iter__(self):
        return iter(())


class Progress:
    def __init__(self, label: str, total: Optional[int] = None, *, enabled: bool = True,
                 stream: Optional[IO[str]] = None) -> None:
        self.stream = stream or sys.stderr
        self._bar = None
        self._drawn = 0.0
        if enabled and self.stream.isatty():
            source = {"length": total} if total is not None else {"iterable": _Unsized()}
            self._bar = click.progressbar(**source, label=label, file=self.stream, show_pos=True,
                                          show_eta=total is not None, width=24,
                                          item_show_func=lambda status: status)

    def update(self, done: int, status: str = "") -> None:
        """Move to `done` items, with `status` (rates, failures) after the bar."""
        if self._bar is None:
            return
        self._bar.make_step(done - self._bar.pos)
        self._bar.current_item = status
        now = time.monotonic()
        if now - self._drawn >= 0.1 or done == self._bar.length:  # a redraw per item would cost more than the item
            self._drawn = now
            self._bar.render_progress()

    def close(self) -> None:
        if self._bar is not None:
            self._bar = None
            self.stream.write("\r\033[K\033[?25h")  # erase the line; show the cursor click hid
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
