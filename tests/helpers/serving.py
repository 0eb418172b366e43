"""Servers started by the tests: which nbdkit processes are alive, what
they were told, and images to serve.

Fixtures built on these (`daemons`, `images`) live in tests/serve/conftest.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers.support import alive


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [part.decode() for part in f.read().split(b"\0") if part]


def nbdkits_of(unique: str | Path) -> list[int]:
    """Live nbdkit processes whose command line names `unique` (an image path)."""
    proc = subprocess.run(["pgrep", "-f", f"nbdkit .*{unique}"], capture_output=True, text=True)
    return [pid for pid in map(int, proc.stdout.split()) if alive(pid)]


def copy_image(images, name: str, dest: Path) -> Path:
    """A copy of the fixture image `name` at `dest` (to be replaced or damaged)."""
    shutil.copyfile(images[name]["image"], dest)
    return dest
