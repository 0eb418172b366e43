"""A directory, hashed into Git objects exactly as `git add` + `git write-tree` would.

- regular files: 100644, or 100755 when the owner may execute them (git's rule);
- symbolic links: 120000, the link's target as content, never followed;
- directories: 040000; an empty one becomes the empty tree so it still lists
  (git itself cannot record it, so this is the one place we differ);
- sockets, FIFOs and devices are skipped with a warning;
- an entry named `.git` (any case) is skipped with a warning: git refuses
  such paths, and a nested repository's working files are kept as files.

Names are bytes all the way (os.scandir on bytes paths), so names that are
not valid UTF-8 keep their exact bytes. Tree entry order is git's (dulwich's
`Tree` serialises it). The walk is iterative, so depth is bounded by
PATH_MAX, not by Python's recursion limit.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Callable

from dulwich.objects import Tree

from ..errors import BuildError
from .packwriter import OBJ_BLOB, OBJ_TREE, PlainPackWriter

# Files up to this size are read in one call; larger ones are streamed.
WHOLE_READ_LIMIT = 32 << 20


def show(path: bytes) -> str:
    """A path for a one-line message, whatever bytes it holds."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Snapshot:
    """Walk `root`, write every object into `writer`; `run()` returns the root tree id (hex)."""

    def __init__(self, root: str, writer: PlainPackWriter,
                 warn: Callable[[str], None],
                 progress: Callable[[str], None] | None = None,
                 compat: str | None = None) -> None:
        self.root = os.fsencode(root)
        # compat "ocaml": as the OCaml builder (bin/gitify.ml) stores a folder:
        # every file 100644, links followed (inside SOURCE only, no cycles).
        self.compat = compat
        self.real_root = os.path.realpath(self.root)
        self.executables = 0  # 100755 and 120000 entries written, for the
        self.links = 0  # warning about what the OCaml fast reader cannot see
        self.writer = writer
        self.warn = warn
        self.progress = progress
        self.files = 0
        self.bytes = 0
        self._last = 0.0

    def run(self) -> str:
        # Each frame: (directory path, its entries so far, its remaining children).
        stack = [(self.root, Tree(), self._children(self.root))]
        reals = [self.real_root]  # compat: the real folders on the stack, to refuse cycles
        while True:
            path, tree, children = stack[-1]
            for name, st in children:
                child = os.path.join(path, name)
                if stat.S_ISDIR(st.st_mode):
                    if self.compat:
                        real = os.path.realpath(child)
                        if real in reals:
                            raise self._refuse(child, "leads to a folder that contains it "
                                               "(a cycle)")
                        reals.append(real)
                    stack.append((child, Tree(), self._children(child)))
                    break
                entry = self._leaf(child, st)
                if entry is not None:
                    tree.add(name, entry[0], entry[1])
            else:
                stack.pop()
                if self.compat:
                    reals.pop()
                sha = self.writer.add(OBJ_TREE, tree.as_raw_string()).hex().encode()
                if not stack:
                    self._report(final=True)
                    return sha.decode()
                stack[-1][1].add(os.path.basename(path), stat.S_IFDIR, sha)

    def _children(self, path: bytes):
        try:
            with os.scandir(path) as it:
                entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        except OSError as exc:
            raise BuildError(f"{show(path)}: cannot read directory ({exc.strerror})") from None
        for name, st in sorted(entries):
            if name.lower() == b".git":
                self.warn(f"{show(os.path.join(path, name))}: skipped (git does not store .git)")
                continue
            if self.compat and stat.S_ISLNK(st.st_mode):
                st = self._follow(os.path.join(path, name))
            yield name, st

    def _refuse(self, link: bytes, why: str) -> BuildError:
        try:
            target = show(os.readlink(link))
        except OSError:
            target = "?"
        return BuildError(f"{show(link)}: symbolic link to {target} {why} "
                          "(--compat ocaml stores a link as the content of its target)")

    def _follow(self, link: bytes) -> os.stat_result:
        """compat: what a link names, as the OCaml builder's `Unix.stat` sees it."""
        try:
            st = os.stat(link)
        except FileNotFoundError:
            raise self._refuse(link, "points to nothing") from None
        except OSError as exc:
            raise self._refuse(link, f"cannot be followed ({exc.strerror})") from None
        real = os.path.realpath(link)
        if real != self.real_root and not real.startswith(self.real_root.rstrip(b"/") + b"/"):
            raise self._refuse(link, "leads outside SOURCE")
        return st

    def _leaf(self, path: bytes, st: os.stat_result) -> tuple[int, bytes] | None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            sha = self._file(path, st)
            if mode & stat.S_IXUSR and not self.compat:
                self.executables += 1
                return 0o100755, sha
            return 0o100644, sha
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                raise BuildError(f"{show(path)}: cannot read link ({exc.strerror})") from None
            self.links += 1
            return 0o120000, self.writer.add(OBJ_BLOB, target).hex().encode()
        kind = ("socket" if stat.S_ISSOCK(mode) else "FIFO" if stat.S_ISFIFO(mode)
                else "device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "special file")
        self.warn(f"{show(path)}: skipped ({kind})")
        return None

    def _file(self, path: bytes, st: os.stat_result) -> bytes:
        try:
            with open(path, "rb") as f:
                if st.st_size <= WHOLE_READ_LIMIT:
                    data = f.read()
                    sha = self.writer.add(OBJ_BLOB, data)
                    size = len(data)
                else:
                    size = os.fstat(f.fileno()).st_size
                    try:
                        sha = self.writer.add_blob_stream(f, size)
                    except ValueError as exc:
                        raise BuildError(f"{show(path)}: {exc}") from None
        except OSError as exc:
            raise BuildError(f"{show(path)}: cannot read file ({exc.strerror})") from None
        self.files += 1
        self.bytes += size
        if self.progress is not None:
            self._report()
        return sha.hex().encode()

    def _report(self, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self._last >= 0.1:
            self._last = now
            self.progress(f"Hashing files: {self.files} files, {self.bytes / 1e6:.1f} MB"
                          + (", done." if final else ""))
