"""A one-line progress bar on stderr (redrawn in place on a terminal, silent otherwise)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, title: str, total: int, stream=None, enabled: bool = True) -> None:
        self.title, self.total = title, total
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.last = 0.0

    def update(self, done: int, status: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < self.total):
            return
        self.last = now
        width = 24
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.title} [{bar}] {done}/{self.total} {status}\033[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
