"""Writing the image file: header, PACK, padding, IDX, padding — atomically.

The bytes go to a temporary file beside IMAGE, are flushed to disk, and the
file is renamed over IMAGE only when complete; any failure or interrupt
removes the temporary file, so IMAGE is either absent, the old one, or the
complete new one. A SIGKILL leaves the temporary file, which the next build
sweeps (see `scratch`).

IMAGE is only ever a regular file: an existing IMAGE that is anything else
(a device node such as /dev/null, a FIFO, a socket, a folder, a symbolic
link) is refused before any work, and checked again just before the
rename, since renaming over a device node would replace the node itself.
A symbolic link is refused rather than followed or replaced: writing
through it would put the image wherever the link points, replacing it
would silently turn the link into a file; the user names the path they
mean.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO, Callable

from ..format import layout
from ..errors import BuildError
from .scratch import image_temp

CHUNK = 1 << 20


_KINDS = ((stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def check_existing(image: str) -> None:
    """Refuse an existing IMAGE that is not a regular file (one line saying what it is)."""
    try:
        st = os.lstat(image)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BuildError(f"{image}: cannot check the output ({exc.strerror})") from None
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(image)
        except OSError:
            target = "?"
        raise BuildError(f"{image}: is a symbolic link (to {target}); docteur make writes "
                         "regular files only: give the path to write, or remove the link")
    if stat.S_ISDIR(mode):
        raise BuildError(f"{image}: is a directory")
    what = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise BuildError(f"{image}: is {what}; docteur make writes (and replaces) "
                     "regular files only")


def check_output(image: str) -> str:
    """Fail early, before any work, when IMAGE cannot be written."""
    image = os.path.abspath(image)
    folder = os.path.dirname(image)
    if not os.path.isdir(folder):
        raise BuildError(f"{image}: output folder {folder} does not exist")
    check_existing(image)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BuildError(f"{image}: output folder {folder} is not writable")
    return image


def _copy(src: str, dst: BinaryIO, size: int, progress: Callable[[int], None] | None) -> None:
    with open(src, "rb") as f:
        remaining = size
        while remaining:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                raise BuildError(f"{src}: shorter than expected")
            dst.write(chunk)
            remaining -= len(chunk)
            if progress is not None:
                progress(len(chunk))


def _zeros(dst: BinaryIO, n: int) -> None:
    """n zero bytes, written in pieces: a padding block may be up to 1 GiB."""
    zeros = bytes(min(n, CHUNK))
    while n:
        dst.write(zeros[:min(n, CHUNK)])
        n -= min(n, CHUNK)


def write_image(image: str, commit: bytes, pack_path: str, idx_path: str, block_size: int,
                progress: Callable[[str], None] | None = None, tail: bytes | None = None) -> int:
    """Assemble the image at `image`; return its size.

    `tail` (the path index region) goes after the IDX's padding.
    """
    pack_size = os.path.getsize(pack_path)
    idx_size = os.path.getsize(idx_path)
    idx_offset, size = layout.image_layout(pack_size, idx_size, block_size)
    base_size = size
    size += len(tail or b"")
    folder = os.path.dirname(image)
    try:
        fd, tmp = image_temp(image)
    except OSError as exc:
        raise BuildError(f"{image}: cannot write ({exc.strerror or exc})") from None
    done = [0]

    def advance(n: int) -> None:  # (passed on only when there is a progress)
        assert progress is not None
        done[0] += n
        progress(f"Writing image: {done[0] / 1e6:.1f} MB of {size / 1e6:.1f} MB")

    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        # The file stays open (and locked, so no sweep takes it) until renamed.
        with os.fdopen(fd, "wb") as out:
            out.write(layout.encode_header(commit, idx_offset))
            _copy(pack_path, out, pack_size, advance if progress else None)
            _zeros(out, idx_offset - layout.PACK_OFFSET - pack_size)
            _copy(idx_path, out, idx_size, advance if progress else None)
            _zeros(out, base_size - idx_offset - idx_size)
            if tail:
                out.write(tail)
            out.flush()
            os.fsync(out.fileno())
            check_existing(image)  # it may have been swapped for a device meanwhile
            os.replace(tmp, image)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise BuildError(f"{image}: cannot write ({exc.strerror or exc})") from None
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return size
