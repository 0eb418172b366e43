"""nbdkit's private folders in $TMPDIR, and the sweep of those left behind.

A foreground server (`docteur serve -f`, `docteur boot`) keeps nbdkit's
pidfile and log in a folder, removed when it stops. A server killed with
SIGKILL cannot remove it, so the next server does, by the rule `docteur
make` sweeps its scratch folders with (make/scratch.py): the name carries
the pid of the docteur that made it (`docteur-nbdkit-PID-XXXXXXXX`), which
holds an exclusive flock on the folder for as long as it serves; nbdkit
inherits that descriptor, so the lock lasts while either of them lives.
A folder is removed only when its pid is not running and its lock can be
taken (then held during the removal), owned by this user, never through
a link. Folders of older versions (`docteur-nbdkit-XXXXXXXX`, no pid)
are left alone: nothing tells whether their server is alive.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import weakref

from ..make import scratch

PREFIX = "docteur-nbdkit-"
_FOLDER = re.compile(r"docteur-nbdkit-(\d+)-[A-Za-z0-9_]+")


class WorkFolder:
    """A new locked folder; `name` and `cleanup()` as TemporaryDirectory's.

    `lock_fd` holds the lock: give it to the server's processes (Popen's
    `pass_fds`) so that the folder counts as live while any of them does.
    """

    def __init__(self, parent: str | None = None) -> None:
        self.name = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
        self.lock_fd = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)  # a new folder: nobody else has it
        self._finalizer = weakref.finalize(self, _remove, self.name, self.lock_fd)

    def cleanup(self) -> None:
        """Remove the folder, then let go of its lock (in that order: no
        sweeper takes the lock of a folder still being removed)."""
        self._finalizer()


def _remove(name: str, fd: int) -> None:
    shutil.rmtree(name, ignore_errors=True)
    os.close(fd)


def sweep(parent: str | None = None) -> list[str]:
    """Remove the folders in `parent` ($TMPDIR by default) of servers that
    are gone (see the module docstring); return their paths. Never raises."""
    return scratch.sweep(parent or tempfile.gettempdir(), _FOLDER)
