"""Temporary data of a build: named so that a killed build's is swept by the next one.

A build needs named files (git works on paths): a scratch folder in the
temporary directory (`$TMPDIR/docteur-make-PID-XXXXXXXX/`: the directory's
snapshot pack, a fetched repository, git's output pack) and the image being
written beside IMAGE (`.IMAGE.docteur-PID-XXXXXXXX.tmp`). A build removes
both when it ends, fails or is interrupted; SIGKILL (or a power cut) leaves
them. So every build first sweeps what dead builds left:

- a name carries its builder's pid; an entry whose pid is alive (in this
  pid namespace) is never touched, which also covers the instant between
  its creation and its lock;
- the builder holds an exclusive `flock` on the entry for as long as it
  uses it; the kernel drops the lock when the process dies, however it
  dies. An entry is removed only while the sweeper holds that lock, so a
  live build in another pid namespace (a container sharing /tmp) keeps its
  data, and a reused pid cannot fool the check;
- only entries owned by this user, and never through a symbolic link.

Entries of older docteur versions (`docteur-make-XXXXXXXX`, no pid) are
left alone: nothing tells whether their builder is alive.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from typing import Iterator

SCRATCH_PREFIX = "docteur-make-"
_SCRATCH = re.compile(r"docteur-make-(\d+)-[A-Za-z0-9_]+")
_IMAGE_TMP = re.compile(r"\..*\.docteur-(\d+)-[A-Za-z0-9_]+\.tmp", re.DOTALL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _lock(fd: int) -> bool:
    """Take the exclusive lock on `fd` without waiting; False when held elsewhere."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def sweep(folder: str, pattern: re.Pattern[str] = _SCRATCH) -> list[str]:
    """Remove what dead builds left in `folder` (names matching `pattern`); return their paths.

    Never raises: a leftover that cannot be removed is left for later.
    """
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # a symbolic link, gone, unreadable
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or not _lock(fd):
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path, ignore_errors=True)
            elif stat.S_ISREG(st.st_mode):
                os.unlink(path)
            else:
                continue
            removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


@contextmanager
def scratch_dir() -> Iterator[str]:
    """A locked scratch folder in the temporary directory, removed on exit.

    Sweeps dead builds' scratch folders first.
    """
    base = tempfile.gettempdir()
    sweep(base, _SCRATCH)
    path = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=base)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def image_temp(image: str) -> tuple[int, str]:
    """A new locked file beside `image` for writing it: (fd, path).

    Sweeps dead builds' image files in that folder first. The lock lasts as
    long as `fd` is open: close it only after the rename (or unlink).
    """
    folder = os.path.dirname(image)
    sweep(folder, _IMAGE_TMP)
    fd, path = tempfile.mkstemp(prefix=f".{os.path.basename(image)}.docteur-{os.getpid()}-",
                                suffix=".tmp", dir=folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd, path
