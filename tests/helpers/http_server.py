"""A real `docteur http` process for the web tests (tests/web/): started on a port the
system chooses (--listen 127.0.0.1:0), its URL read from its first line on
stderr, its access log collected, stopped (and waited for) on exit."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

DOCTEUR = [sys.executable, "-m", "docteur_core"]
START_DEADLINE = 120.0


class HttpServer:
    def __init__(self, image, *options: str) -> None:
        self.cmd = DOCTEUR + ["http", str(image), "--listen", "127.0.0.1:0", *options]
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.port = 0
        self._err = b""

    def start(self) -> "HttpServer":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        line = self._line(START_DEADLINE)
        marker = " on http://"
        if marker not in line:
            self.stop()
            raise RuntimeError(f"docteur http did not start: {line!r} {self._err!r}")
        self.url = "http://" + line.rsplit(marker, 1)[1].strip()
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1])
        return self

    def _line(self, patience: float) -> str:
        """The next whole line of stderr, waiting on the pipe (not on a clock)."""
        deadline = time.monotonic() + patience
        fd = self.proc.stderr.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._err:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"no line from docteur http: {self._err!r}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    line, self._err = self._err, b""
                    return line.decode(errors="replace")
                self._err += chunk
        line, _, self._err = self._err.partition(b"\n")
        return line.decode(errors="replace")

    def log_lines(self, count: int, patience: float = 60.0) -> list[str]:
        """The next `count` lines of the access log (waits for them)."""
        return [self._line(patience) for _ in range(count)]

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rest = self.proc.stderr.read()
        self._err += rest
        self.proc.stderr.close()
        return self.proc.returncode

    @property
    def stderr_rest(self) -> str:
        return self._err.decode(errors="replace")

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
