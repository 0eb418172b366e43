"""Which image a new client of `docteur serve IMAGE` gets: the generations of one path.

Rules:
- A generation is one file (one inode, one size and mtime) found at the
  path, opened once and checked through that descriptor, so that what was
  checked is what is served even while the path is being replaced.
- Every new client asks for the current generation: if the path names
  another file than the last one checked (`mv new.img disk.img`, `docteur
  make site disk.img`), that file is opened and checked before the client
  is served, and becomes the current generation. The client waits for the
  check; it never gets the previous image once a replacement is in place.
- A replacement that fails its check (or holds another commit than the
  pin) is refused with a reason that says what to do; it is remembered, so
  that a damaged file is not checked again for every client, until the
  path changes again. Clients get the previous image no more: serving it
  would hide the failed rebuild.
- The first check is at the level asked for (`full` included); later ones
  are `quick` at most, so that connecting stays fast, as in the plugin.
- Clients already connected hold their own descriptor (the process serving
  them got it): a generation needs nothing from here once it is replaced,
  and its file is freed when its last client leaves.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import DocteurError
from .imagecheck import ImageInfo, check_commit, check_image

FileKey = tuple[int, int, int, int, int]


class Refused(DocteurError):
    """The path holds nothing that can be served; the message says why and what to do."""


@dataclass(frozen=True)
class Generation:
    """One checked image file, open as `fd` (owned by `Generations`)."""

    fd: int
    key: FileKey
    info: ImageInfo
    number: int


def file_key(st: os.stat_result) -> FileKey:
    """What tells two files (or a file rewritten in place) apart."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Generations:
    """The generations of `path`: `start` checks the first, `current` the next ones."""

    def __init__(self, path: str, level: str = "quick", commit: str | None = None,
                 pinned_by: str = "--commit") -> None:
        self.path = os.path.abspath(path)
        self.level = level
        self.commit = commit
        self.pinned_by = pinned_by
        self.generation: Generation | None = None
        self._refused: tuple[FileKey, str] | None = None
        self._count = 0

    def start(self) -> Generation:
        """Check the first generation at the level asked for; a refusal is
        the image's own fault, said as verify says it (raised as is)."""
        fd = self._open()
        try:
            return self._adopt(fd, self.level, first=True)
        except BaseException:
            os.close(fd)
            raise

    def current(self) -> Generation:
        """The generation a new client gets: the file now at the path,
        checked first if it was not the last time. `Refused` otherwise."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise Refused(f"{self.path}: cannot open: {exc.strerror} (the image was removed "
                          "after the server started: put one there again, e.g. `docteur "
                          f"make SOURCE {self.path}`, and connect again)") from None
        key = file_key(st)
        if self.generation is not None and key == self.generation.key:
            return self.generation
        if self._refused is not None and self._refused[0] == key:
            raise Refused(self._refused[1])
        fd = self._open()
        try:
            key = file_key(os.fstat(fd))  # what was opened, if the path changed again
            level = "quick" if self.level == "full" else self.level
            return self._adopt(fd, level, first=False)
        except Refused as exc:
            os.close(fd)
            self._refused = (key, str(exc))
            raise
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.generation is not None:
            os.close(self.generation.fd)
            self.generation = None

    # -- inside --------------------------------------------------------------------------

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise Refused(f"{self.path}: cannot open: {exc.strerror}") from None

    def _adopt(self, fd: int, level: str, *, first: bool) -> Generation:
        from ..blockdev.block import FileDevice

        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
            raise Refused(f"{self.path}: not a regular file or block device")
        try:
            device = FileDevice(f"/proc/self/fd/{fd}")
            try:
                info = check_image(device, level)
            finally:
                device.close()
            check_commit(info.commit_hex, self.commit, self.pinned_by, "it")
        except DocteurError as exc:
            if first:
                raise
            raise Refused(f"{self.path}: the image was replaced by one that cannot be served: "
                          f"{exc}; clients already connected keep reading the previous one, new "
                          f"ones are refused until a valid image is put at {self.path} (e.g. "
                          "`docteur make` again) and they connect again") from None
        self._count += 1
        generation = Generation(fd, file_key(st), info, self._count)
        if self.generation is not None:
            os.close(self.generation.fd)  # its clients hold their own descriptors
        self.generation = generation
        self._refused = None
        return generation
