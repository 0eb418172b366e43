"""FUSE mounts made by the tests through `docteur mount`, always undone: the
`Mounts` record unmounts (lazily, whatever state the server is in) and kills
what served them. The `mounts` fixture is in tests/conftest.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.support import alive, processes

DOCTEUR = [sys.executable, "-m", "docteur_core"]
# A deadline against hangs only: nothing is asserted about how long things take.
PATIENCE = 60.0


def docteur(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCTEUR, *map(str, args)], capture_output=True, text=True,
                          errors="surrogateescape", timeout=timeout)


def serving_pids(mountpoint: Path) -> list[int]:
    """Live `docteur mount` processes naming `mountpoint`."""
    where = os.fsencode(str(mountpoint))
    return [pid for pid, argv in processes()
            if b"mount" in argv and where in argv and alive(pid)]


class Mounts:
    """Mounts made by a test, all undone at its end."""

    def __init__(self) -> None:
        self.made: list[tuple[Path, int | None]] = []
        self.procs: list[subprocess.Popen] = []

    def mount(self, image, mountpoint: Path, *options: str) -> int:
        self.made.append((mountpoint, None))  # undone even if what follows fails
        done = docteur("mount", *options, image, mountpoint)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        pid = int(done.stderr.split("(pid ", 1)[1].split(";", 1)[0])
        self.made[-1] = (mountpoint, pid)
        assert os.path.ismount(mountpoint)
        return pid

    def foreground(self, image, mountpoint: Path, *options: str) -> subprocess.Popen:
        proc = subprocess.Popen([*DOCTEUR, "mount", "-f", *options, str(image), str(mountpoint)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        self.made.append((mountpoint, proc.pid))
        deadline = time.monotonic() + PATIENCE
        while not os.path.ismount(mountpoint):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the mount never came up"
            time.sleep(0.05)
        return proc

    def cleanup(self) -> None:
        for mountpoint, pid in self.made:
            # Whatever its state (a dead server's mount does not even stat).
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
            for p in [pid, *serving_pids(mountpoint)]:
                if p is not None and alive(p):
                    os.kill(p, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
