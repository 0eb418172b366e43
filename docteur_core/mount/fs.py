"""An image as a file system's answers: stat, readdir, readlink and read results.

The FUSE binding (`command.py`) only forwards the kernel's calls here; this
module knows nothing of FUSE, so its mapping is tested without a mount and
the binding could be swapped. Everything is read-only: an image is one
commit, frozen.

What a path looks like:
- a file (git 100644) is r--r--r-- (0444), an executable (100755) r-xr-xr-x
  (0555), a directory r-xr-xr-x, a symbolic link lrwxrwxrwx whose target is
  the stored bytes, never followed here;
- a submodule (gitlink) is an empty directory, as `git clone` without
  `--recurse-submodules` leaves it: its files are not in the image;
- every path's mtime, ctime and atime are the commit's date: an image holds
  one commit and git stores no other time;
- st_ino is derived from the path (BLAKE2b, 63 bits; the root is 1), so it
  is the same at every mount of the image and differs between two paths
  holding the same object (they are not hard links: st_nlink is 1);
- a directory's size is its number of entries and its st_nlink 2 + its
  subdirectories, as on ext4 (0 and 1 if its tree is damaged: it still
  stats, and listing it is EIO).

Errors are `FsError(errno, message)`: a missing path is ENOENT, a file in the
middle of a path ENOTDIR, any write EROFS, and damage found while answering
(a bad object, a limit, a lost NBD connection) EIO, with the one-line
message for the log.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as st
from collections import OrderedDict
from typing import TYPE_CHECKING

from ..errors import DamagedImage, DocteurError, NotADirectory, NotAFile, NotFound
from ..format import objects as obj
from ..format.limits import STREAM_THRESHOLD
from ..format.pack import BASE_TYPES

if TYPE_CHECKING:  # (typing is not imported at run time: `docteur mount`'s start-up)
    from collections.abc import Callable
    from typing import TypeVar

    from ..reader.image import Image, Node

    T = TypeVar("T")

# Attributes of this many paths are kept (the kernel caches them too, but
# forgets them under memory pressure; a size costs a header inflate).
ATTR_CACHE_PATHS = 65_536
PERMISSIONS = {obj.MODE_FILE: st.S_IFREG | 0o444, obj.MODE_EXEC: st.S_IFREG | 0o555,
               obj.MODE_LINK: st.S_IFLNK | 0o777, obj.MODE_DIR: st.S_IFDIR | 0o555,
               obj.MODE_GITLINK: st.S_IFDIR | 0o555}
_DIRS = (obj.MODE_DIR, obj.MODE_GITLINK)
_MAX_SECONDS = (1 << 63) // 1_000_000_000 - 1
# Opening for any of these is a write: refused before the kernel asks to write.
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class FsError(Exception):
    """An answer the kernel gets as an errno; `message` is for the log."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


def inode_of(path: str) -> int:
    """A stable inode number for a normalised path ("" is the root: 1)."""
    if not path:
        return 1
    digest = hashlib.blake2b(obj.encode_name(path), digest_size=8).digest()
    return max(int.from_bytes(digest, "little") >> 1, 2)


def normalise(path: str) -> str:
    """The kernel's `/a/b` as the reader's key `a/b` (the kernel never sends
    `.`, `..` or empty components)."""
    return path.strip("/")


class ImageFS:
    """The answers for one open `Image` (reader/image.py); not thread-safe,
    like the image: the binding serves one request at a time."""

    def __init__(self, image: Image, uid: int = 0, gid: int = 0) -> None:
        self.image = image
        self.uid, self.gid = uid, gid
        # The committer's time as parsed (any integer git wrote: kept within
        # what a timespec holds), in nanoseconds for the binding's `use_ns`.
        seconds = image._commit.committer.time
        seconds = max(-_MAX_SECONDS, min(_MAX_SECONDS, seconds))
        self.time_ns = seconds * 1_000_000_000
        self._attrs: OrderedDict[str, dict[str, int]] = OrderedDict()

    # -- lookups -----------------------------------------------------------

    def _guard(self, path: str, call: Callable[[], T]) -> T:
        """Run `call`, turning the reader's errors into errnos."""
        try:
            return call()
        except NotFound as exc:
            raise FsError(errno.ENOENT, str(exc)) from None
        except NotADirectory as exc:
            raise FsError(errno.ENOTDIR, str(exc)) from None
        except NotAFile as exc:
            raise FsError(errno.EISDIR, str(exc)) from None
        except DocteurError as exc:  # DamagedImage, LimitExceeded, DeviceError...
            raise FsError(errno.EIO, f"/{path}: {exc}") from None
        except OSError as exc:  # the device under the image
            raise FsError(errno.EIO, f"/{path}: {exc}") from None

    def getattr(self, path: str) -> dict[str, int]:
        """stat(2) fields of a path (os.stat_result names)."""
        key = normalise(path)
        found = self._attrs.get(key)
        if found is not None:
            self._attrs.move_to_end(key)
            return found
        attrs = self._guard(key, lambda: self._stat(key))
        self._attrs[key] = attrs
        if len(self._attrs) > ATTR_CACHE_PATHS:
            self._attrs.popitem(last=False)
        return attrs

    def _stat(self, key: str) -> dict[str, int]:
        image = self.image
        node = image._lookup(key)
        nlink = 1
        if node.mode == obj.MODE_DIR:
            try:
                entries = image.entries(key)
            except DamagedImage:
                # Still a directory (the root must stat for the mount to
                # be usable at all); listing it reads as EIO.
                size = 0
            else:
                size = len(entries)
                nlink = 2 + sum(1 for n in entries if n.mode in _DIRS)
        elif node.mode == obj.MODE_GITLINK:
            nlink, size = 2, 0
        else:
            size = self._size(node)
        perm = PERMISSIONS.get(node.mode)
        if perm is None:  # the parser knows no other mode; kept safe anyway
            raise DamagedImage(f"unknown mode {node.mode:o}", f"path /{key}")
        t = self.time_ns
        return {"st_mode": perm, "st_ino": inode_of(key), "st_nlink": nlink,
                "st_size": size, "st_uid": self.uid, "st_gid": self.gid,
                "st_atime": t, "st_mtime": t, "st_ctime": t,
                "st_blocks": (size + 511) // 512 if perm & st.S_IFREG else 0,
                "st_blksize": 4096}

    def _size(self, node: Node) -> int:
        """A file's size. A large file stored whole (over STREAM_THRESHOLD)
        has the size its entry header declares, without inflating it to
        check the entry's CRC-32 (a `stat` of a 4 GiB file would inflate
        4 GiB): the size is checked when a read reaches the end of the
        stream, which reads as EIO if it lied. Anything else is sized
        through the IDX, whose CRC-32 vouches for the entry."""
        store = self.image.store
        _, _, _, eh, _ = store._whole_entry(node.raw_id, node.offset)
        if eh.type in BASE_TYPES and eh.size > STREAM_THRESHOLD:
            # Verified, the first read hashes the whole file (`Spool`): a
            # size that lies is an EIO there, before any byte is returned.
            return eh.size
        if store.verify:  # the content, hashed, is the size
            return store.verified_size(node.raw_id, node.offset)
        if eh.type in BASE_TYPES:
            # Small and stored whole: reading it (found through the IDX,
            # so its CRC-32 is checked) costs what checking the CRC alone
            # would, and leaves it in the store's cache for `read`.
            return len(store.read_object(node.raw_id, "blob")[1])
        return store.object_size(node.raw_id)

    def readdir(self, path: str) -> list[tuple[str, int, int]]:
        """(name, st_mode, st_ino) of a directory's entries (a submodule's:
        none), `.` and `..` first. Inode numbers are given here too: with
        the image's own numbers (`use_ino`), an entry without one reads as
        0, which directory readers skip as a deleted entry."""
        key = normalise(path)
        attrs = self.getattr(path)
        if not st.S_ISDIR(attrs["st_mode"]):
            raise FsError(errno.ENOTDIR)
        nodes: list[Node] = self._guard(
            key, lambda: [] if self._is_gitlink(key) else self.image.entries(key))
        parent = key.rpartition("/")[0]
        out = [(".", attrs["st_mode"], attrs["st_ino"]),
               ("..", st.S_IFDIR | 0o555, inode_of(parent) if key else 1)]
        for n in nodes:
            perm = PERMISSIONS.get(n.mode)
            if perm is not None:
                out.append((n.name, perm, inode_of(n.path)))
        return out

    def _is_gitlink(self, key: str) -> bool:
        return bool(key) and self.image.stat(key).mode == obj.MODE_GITLINK

    def readlink(self, path: str) -> str:
        """A link's target exactly as stored (EINVAL for anything else)."""
        key = normalise(path)
        if not st.S_ISLNK(self.getattr(path)["st_mode"]):
            raise FsError(errno.EINVAL)
        target = self._guard(key, lambda: self.image.readlink(key))
        if not target or "\0" in target:  # no kernel can hold such a link
            raise FsError(errno.EIO, f"/{key}: damaged image: a symbolic link's target "
                                     f"is empty or holds a NUL byte")
        return target

    # -- contents ----------------------------------------------------------

    def open(self, path: str, flags: int) -> None:
        """Checks an open: writes are EROFS, directories EISDIR."""
        if flags & WRITE_FLAGS:
            raise FsError(errno.EROFS)
        mode = self.getattr(path)["st_mode"]
        if st.S_ISDIR(mode):
            raise FsError(errno.EISDIR)

    def read(self, path: str, size: int, offset: int) -> bytes:
        """`size` bytes at `offset` (fewer at the end), through
        `Image.get_partial`: a file stored whole is inflated as far as the
        read needs, never held (see reader/partial.py)."""
        key = normalise(path)
        attrs = self.getattr(path)
        if st.S_ISDIR(attrs["st_mode"]):
            raise FsError(errno.EISDIR)
        if offset >= attrs["st_size"] or size <= 0:
            return b""
        return self._guard(key, lambda: self.image.get_partial(key, offset, size))

    def statfs(self) -> dict[str, int]:
        """statvfs(3) fields: a full, read-only file system of the image's paths."""
        capacity = self.image.store.capacity
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": (capacity + 4095) // 4096,
                "f_bfree": 0, "f_bavail": 0, "f_files": 0, "f_ffree": 0, "f_favail": 0,
                "f_namemax": 255, "f_flag": os.ST_RDONLY}
