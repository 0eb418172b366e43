"""One status line on a terminal, rewritten in place (`docteur make`, `docteur verify`).

Commands create one only when stderr is a terminal (and not --quiet): a
redirected stderr, a pipe or a log file never gets carriage returns. Callers
decide how often to call it; `Throttle` helps those whose events come fast.
"""

from __future__ import annotations

import time
from typing import Callable, TextIO


class TerminalProgress:
    """Write `text` over the previous status line; `close()` erases it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.width = 0

    def __call__(self, text: str) -> None:
        text = text[:200]
        self.stream.write("\r" + text + " " * max(0, self.width - len(text)))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        """Erase the status line (a later call writes a new one)."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def for_stderr(stream: TextIO, quiet: bool = False) -> TerminalProgress | None:
    """A status line on `stream` when it is a terminal and not `quiet`, else None."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        tty = False
    return TerminalProgress(stream) if tty and not quiet else None


class Throttle:
    """Pass at most one text per `interval` seconds on to `sink` (the last one on `flush`)."""

    def __init__(self, sink: Callable[[str], None], interval: float = 0.1) -> None:
        self.sink = sink
        self.interval = interval
        self._last = float("-inf")

    def __call__(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self.sink(text)
