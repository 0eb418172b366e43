"""A real pseudo-terminal for the tests of what docteur shows on a terminal
(status lines) and only there."""

from __future__ import annotations

import os
import pty
import subprocess
import sys


def run_on_tty(*args: str) -> tuple[int, bytes, bytes]:
    """Run docteur with stderr on a pty (stdout on a pipe); (status, stdout, terminal bytes)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "docteur_core", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    seen = bytearray()
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(), out, bytes(seen)
