"""A directory, hashed into Git objects exactly as `git add` + `git write-tree` would.

- regular files: 100644, or 100755 when the owner may execute them (git's rule);
- symbolic links: 120000, the link's target as content, never followed;
- directories: 040000; an empty one becomes the empty tree so it still lists
  (git itself cannot record it, so this is the one place we differ);
- sockets, FIFOs and devices are skipped with a warning;
- permissions are git's: 100644 or 100755, nothing else. Files that others
  may not read (0600, 0640, 0700...) become readable by everyone in the
  image: one warning says how many (and names one), once all are read;
- with `--exclude` / `--gitignore`, what `git add` would leave out is left
  out (see `ignore`), and a folder emptied by that too; IMAGE and its
  temporary files, when they lie inside SOURCE, are never packed;
- an entry named `.git` (any case) is skipped with a warning: git refuses
  such paths, and a nested repository's working files are kept as files.

Names are bytes all the way (os.scandir on bytes paths), so names that are
not valid UTF-8 keep their exact bytes. Tree entry order is git's (dulwich's
`Tree` serialises it). The walk is iterative, so depth is bounded by
PATH_MAX, not by Python's recursion limit.

Two passes, because SOURCE may change (or be changed by someone hostile)
while it is read:
- `scan()` lists every folder and `lstat`s every entry, before anything is
  read or written: a file over `format.limits.MAX_FILE_SIZE` (the readers
  stream whole files up to any size; see there) is refused here, so a build
  never makes an image its readers refuse;
- `write()` reads the files. Each is opened `O_NOFOLLOW | O_NONBLOCK` and
  its descriptor's `fstat` must be a regular file with the scan's identity
  (st_dev, st_ino): a file swapped for a symbolic link (whose target may be
  outside SOURCE), a FIFO (`O_NONBLOCK`: no wait for a writer), a device or
  another file, through any of its parent folders too, stops the build with
  one line instead of being read. Folders are opened the same way for the
  scan. A file rewritten in place keeps its identity: its bytes are read as
  they are then, and a size change during the read is an error.
  With `--compat ocaml` links are followed (inside SOURCE, checked at the
  scan), so there the identity check alone stands guard.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from array import array
from collections.abc import Iterator
from typing import BinaryIO, Callable, Protocol

from dulwich.ignore import Pattern
from dulwich.objects import ObjectID, Tree

from ..errors import BuildError
from ..format.limits import MAX_FILE_SIZE
from ..format.objects import MODE_FILE, MODE_LINK, refused_name
from ..format.pack import OBJ_BLOB, OBJ_TREE
from .ignore import GITIGNORE, Rules, compile_patterns, gitignore_lines


class ObjectSink(Protocol):
    """Where a snapshot's objects go: a pack writer, or `docteur diff`'s
    hasher (which writes nothing). Each returns the object's raw id."""

    def add(self, type_num: int, data: bytes, sha: bytes | None = None) -> bytes: ...

    def add_blob_stream(self, f: BinaryIO, size: int) -> bytes: ...

# Files up to this size are read in one call; larger ones are streamed.
WHOLE_READ_LIMIT = 32 << 20


def show(path: bytes) -> str:
    """A path for a one-line message, whatever bytes it holds."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Snapshot:
    """Walk `root`: `scan()`, then `write(writer)` every object; the root tree id (hex)."""

    def __init__(self, root: str, warn: Callable[[str], None],
                 progress: Callable[[str], None] | None = None,
                 compat: str | None = None,
                 max_object_size: int = MAX_FILE_SIZE,
                 rules: Rules | None = None, output: str | None = None) -> None:
        self.root = os.fsencode(root)
        # --exclude / --gitignore (see `ignore`): what git add would leave out.
        self.rules = rules or Rules()
        # IMAGE and its temporary files, when they lie inside SOURCE: never
        # packed into the image (see `_output_names`).
        self._output = _output_names(output)
        # compat "ocaml": as the OCaml builder (bin/gitify.ml) stores a folder:
        # every file 100644, links followed (inside SOURCE only, no cycles).
        self.compat = compat
        self.max_object_size = max_object_size
        self.real_root = os.path.realpath(self.root)
        self.executables = 0  # 100755 and 120000 entries written, for the
        self.links = 0  # warning about what the OCaml fast reader cannot see
        self.warn = warn
        self.progress = progress
        self.files = 0
        self.bytes = 0
        # (path, mode) of the files others may not read (see `_private_warning`),
        # said only when an image is written (`docteur diff` hashes a folder too)
        self.private: list[tuple[bytes, int]] = []
        self.for_image = output is not None
        self._last = 0.0
        # folder path -> its entries (`_Listing`: names, and mode, size,
        # device and inode of each lstat, or stat through a link in compat)
        self._listing: dict[bytes, _Listing] | None = None
        self._folders: dict[bytes, _Folder] = {}  # the scan's folders, until listed

    def run(self, writer: ObjectSink) -> str:
        self.scan()
        return self.write(writer)

    # --- pass 1: the scan ----------------------------------------------------

    def scan(self) -> None:
        """List every folder and stat every entry; refuse what cannot be stored.

        Nothing is read or written. Special files are skipped here (with
        their warnings), so the listing holds folders, files and links.
        """
        listing: dict[bytes, _Listing] = {}
        try:
            root_st = Stat.of(os.stat(self.root))
        except OSError as exc:
            raise BuildError(f"{show(self.root)}: cannot read directory ({exc.strerror})") from None
        top = self._folders[self.root] = _Folder(self.root, b"", self.rules)
        stack = [(top, self._children(self.root, root_st, follow=True))]
        reals = [self.real_root]  # compat: the real folders on the stack, to refuse cycles
        entries = 0
        while stack:
            folder, children = stack[-1]
            path, kept = folder.path, folder.kept
            for name, st in children:
                mode = st.st_mode
                child = os.path.join(path, name)
                if stat.S_ISDIR(mode):
                    kept.append((name, st))
                    if self.compat:
                        real = os.path.realpath(child)
                        if real in reals:
                            raise self._refuse(child, "leads to a folder that contains it "
                                               "(a cycle)")
                        reals.append(real)
                    sub = self._folders[child] = _Folder(
                        child, folder.rel + b"/" + name if folder.rel else name, folder.rules)
                    stack.append((sub, self._children(child, st, follow=False)))
                    break
                if stat.S_ISREG(mode):
                    self._check_size(child, st.st_size)
                    if not mode & stat.S_IROTH:
                        self.private.append((child, stat.S_IMODE(mode)))
                elif not stat.S_ISLNK(mode):
                    kind = ("socket" if stat.S_ISSOCK(mode) else "FIFO" if stat.S_ISFIFO(mode)
                            else "device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                            else "special file")
                    self.warn(f"{show(child)}: skipped ({kind})")
                    continue
                kept.append((name, st))
            else:
                stack.pop()
                if self.compat:
                    reals.pop()
                if stack and not kept and folder.filtered:
                    # Emptied by the filters: git add would not record it either.
                    # (A folder that was empty to begin with stays an empty tree.)
                    parent = stack[-1][0]
                    parent.kept.pop()
                    parent.filtered = True
                    continue
                listing[path] = _Listing.of(kept)
                entries += len(kept)
                if self.progress is not None:
                    now = time.monotonic()
                    if now - self._last >= 0.1:
                        self._last = now
                        self.progress(f"Scanning files: {entries} entries")
        self._listing = listing
        self._last = 0.0

    def _private_warning(self) -> str:
        """One line for the files others may not read (once every file is read)."""
        n = len(self.private)
        first, mode = min(self.private)
        example = f"{show(first)}, mode {mode:04o}"
        return (f"{n} file{'s' if n != 1 else ''} that others may not read "
                f"({example}{', ...' if n > 1 else ''}) {'is' if n == 1 else 'are'} "
                "readable by everyone in the image: it keeps git's modes only, 100644 and "
                "100755 (see \"What an image keeps\" in the README)")

    def _check_size(self, path: bytes, size: int) -> None:
        if size > self.max_object_size:
            raise BuildError(f"{show(path)}: {size} bytes, over the object size limit of "
                             f"{self.max_object_size} bytes (the largest file docteur stores)")

    def _children(self, path: bytes, st: Stat, follow: bool
                  ) -> Iterator[tuple[bytes, Stat]]:
        """The entries of folder `path`, which the scan saw as `st`, sorted by
        name, without those the filters leave out (its `_Folder`, in
        `_folders`, gets the folder's .gitignore rules)."""
        folder = self._folders.pop(path)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
        if not (follow or self.compat):
            flags |= os.O_NOFOLLOW
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._changed(path, "is no longer a folder") from None
            raise BuildError(f"{show(path)}: cannot read directory ({exc.strerror})") from None
        try:
            here = os.fstat(fd)
            if not _same(here, st):
                raise self._changed(path, "was replaced by another folder")
            with os.scandir(fd) as it:
                entries = [(os.fsencode(e.name), Stat.of(e.stat(follow_symlinks=False)))
                           for e in it]
            if folder.rules.gitignore and any(n == GITIGNORE for n, _ in entries):
                folder.rules = folder.rules.enter(folder.rel, self._gitignore(fd, path))
        except OSError as exc:
            raise BuildError(f"{show(path)}: cannot read directory ({exc.strerror})") from None
        finally:
            os.close(fd)
        output = self._output if self._output is not None and _same(here, self._output[0]) else None
        rules = folder.rules if folder.rules.active else None
        for name, child_st in sorted(entries):
            if name.lower() == b".git":
                self.warn(f"{show(os.path.join(path, name))}: skipped (git does not store .git)")
                continue
            if refused_name(name, MODE_LINK if stat.S_ISLNK(child_st.st_mode) else MODE_FILE):
                self.warn(f"{show(os.path.join(path, name))}: skipped (a name git refuses: "
                          "it stands for .git on some file systems)")
                continue
            if output is not None and (name == output[1] or output[2].fullmatch(name)):
                continue  # the image being written, or its temporary file
            if rules is not None and rules.excluded(folder.rel + b"/" + name if folder.rel
                                                    else name, stat.S_ISDIR(child_st.st_mode)):
                folder.filtered = True
                continue
            if self.compat and stat.S_ISLNK(child_st.st_mode):
                followed = self._follow(os.path.join(path, name))
                if followed is None:  # dangling: nothing to store, warned
                    continue
                child_st = followed
            yield name, child_st

    def _gitignore(self, dir_fd: int, folder: bytes) -> list[Pattern]:
        """The patterns of the `.gitignore` in the folder open as `dir_fd`, read
        as git reads it: never through a symbolic link."""
        where = show(os.path.join(folder, GITIGNORE))
        try:
            fd = os.open(GITIGNORE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.warn(f"{where}: not read, it is a symbolic link (as git, which stores it "
                          "but does not follow it)")
                return []
            raise BuildError(f"{where}: cannot read file ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_object_size:
                return []  # a folder named .gitignore; an oversized one is refused by the scan
            with open(fd, "rb", closefd=False) as f:
                data = f.read(self.max_object_size + 1)
        finally:
            os.close(fd)
        patterns, malformed = compile_patterns(gitignore_lines(data))
        for line in malformed:
            self.warn(f"{where}: pattern {line.decode('utf-8', 'backslashreplace')!r} "
                      "matches nothing (not a valid pattern; git skips it too)")
        return patterns

    def _changed(self, path: bytes, what: str) -> BuildError:
        return BuildError(f"{show(path)}: changed while the build read SOURCE ({what}); "
                          "nothing was written")

    def _refuse(self, link: bytes, why: str) -> BuildError:
        try:
            target = show(os.readlink(link))
        except OSError:
            target = "?"
        return BuildError(f"{show(link)}: symbolic link to {target} {why} "
                          "(--compat ocaml stores a link as the content of its target)")

    def _follow(self, link: bytes) -> Stat | None:
        """compat: what a link names, as the OCaml builder's `Unix.stat` sees it;
        None for a dangling link (left out with a warning)."""
        try:
            st = os.stat(link)
        except (FileNotFoundError, NotADirectoryError):
            from .compat import dangling_text
            try:
                target = show(os.readlink(link))
            except OSError:
                target = "?"
            self.warn(dangling_text(show(link), target))
            return None
        except OSError as exc:
            raise self._refuse(link, f"cannot be followed ({exc.strerror})") from None
        real = os.path.realpath(link)
        if real != self.real_root and not real.startswith(self.real_root.rstrip(b"/") + b"/"):
            raise self._refuse(link, "leads outside SOURCE")
        return Stat.of(st)

    # --- pass 2: reading and hashing -----------------------------------------

    def write(self, writer: ObjectSink) -> str:
        """Write every object of the scanned tree into `writer`; the root tree id (hex)."""
        if self._listing is None:
            self.scan()
        listing = self._listing
        assert listing is not None  # what scan() made
        self.writer = writer
        # Each frame: (directory path, its entries so far, its remaining children).
        stack = [(self.root, Tree(), listing.pop(self.root).entries())]
        while True:
            path, tree, children = stack[-1]
            for name, st in children:
                child = os.path.join(path, name)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((child, Tree(), listing.pop(child).entries()))
                    break
                mode, sha = self._leaf(child, st)
                tree.add(name, mode, ObjectID(sha))
            else:
                stack.pop()
                raw = tree.as_raw_string()
                self._check_size(path + b"/", len(raw))
                sha = writer.add(OBJ_TREE, raw).hex().encode()
                if not stack:
                    self._report(final=True)
                    if self.private and self.for_image:  # once no read can fail the build
                        self.warn(self._private_warning())
                    self._listing = None  # its memory is not needed by the delta search
                    return sha.decode()
                stack[-1][1].add(os.path.basename(path), stat.S_IFDIR, ObjectID(sha))

    def _leaf(self, path: bytes, st: Stat) -> tuple[int, bytes]:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            sha = self._file(path, st)
            if mode & stat.S_IXUSR and not self.compat:
                self.executables += 1
                return 0o100755, sha
            return 0o100644, sha
        try:  # a link (the scan kept nothing else)
            target = os.readlink(path)
        except OSError as exc:
            raise BuildError(f"{show(path)}: cannot read link ({exc.strerror})") from None
        self.links += 1
        return 0o120000, self.writer.add(OBJ_BLOB, target).hex().encode()

    def _open(self, path: bytes, st: Stat) -> int:
        """Open the file the scan saw as `st`, or fail: never a link, a FIFO or another file."""
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        if not self.compat:
            flags |= os.O_NOFOLLOW
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._changed(path, "it is now a symbolic link") from None
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise self._changed(path, "it is gone") from None
            raise BuildError(f"{show(path)}: cannot read file ({exc.strerror})") from None
        try:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode):
                kind = ("a FIFO" if stat.S_ISFIFO(now.st_mode)
                        else "a folder" if stat.S_ISDIR(now.st_mode)
                        else "a socket" if stat.S_ISSOCK(now.st_mode)
                        else "a device" if stat.S_ISCHR(now.st_mode) or stat.S_ISBLK(now.st_mode)
                        else "not a regular file")
                raise self._changed(path, f"it is now {kind}")
            if not _same(now, st):
                raise self._changed(path, "it was replaced by another file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _file(self, path: bytes, st: Stat) -> bytes:
        fd = self._open(path, st)
        try:
            with open(fd, "rb") as f:
                size = os.fstat(fd).st_size
                self._check_size(path, size)
                if size <= WHOLE_READ_LIMIT:
                    data = f.read(size + 1)
                    if len(data) != size:
                        raise BuildError(f"{show(path)}: file "
                                         f"{'grew' if len(data) > size else 'shrank'} "
                                         "while being read")
                    sha = self.writer.add(OBJ_BLOB, data)
                else:
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


class Stat:
    """What the build keeps of an entry's lstat between the scan and the read:
    its type and permission bits, size and identity.

    Why not `os.stat_result`: it holds about twenty Python objects (times in
    three spellings), some 600 bytes an entry, which the scan keeps for every
    entry until the files are read: 600 MB for a million files. This is
    about a quarter of that. Same attribute names, so code reads either.
    """

    __slots__ = ("st_mode", "st_size", "st_dev", "st_ino")

    def __init__(self, st_mode: int, st_size: int, st_dev: int, st_ino: int) -> None:
        self.st_mode, self.st_size, self.st_dev, self.st_ino = st_mode, st_size, st_dev, st_ino

    @classmethod
    def of(cls, st: os.stat_result) -> "Stat":
        return cls(st.st_mode, st.st_size, st.st_dev, st.st_ino)


class _Listing:
    """A scanned folder's entries, kept compact until the write pass reads them.

    Even a slim `Stat` costs some 0.2 KB of Python objects with its tuple
    and name; a million-file tree would hold that for every entry between
    the two passes. Here a folder costs its names (one bytes, NUL-separated:
    a name never holds a NUL) and four 64-bit numbers an entry; the `Stat`s
    are made again, one folder at a time, as the write pass reads it.
    """

    __slots__ = ("names", "meta")

    def __init__(self, names: bytes, meta: array[int]) -> None:
        self.names = names
        self.meta = meta  # st_mode, st_size, st_dev, st_ino of each entry, in turn

    @classmethod
    def of(cls, kept: list[tuple[bytes, Stat]]) -> _Listing:
        meta = array("Q")
        for _, st in kept:
            meta.extend((st.st_mode, st.st_size, st.st_dev, st.st_ino))
        return cls(b"\0".join(name for name, _ in kept), meta)

    def entries(self) -> Iterator[tuple[bytes, Stat]]:
        """(name, Stat) of each entry, in the scan's order."""
        if not self.meta:
            return iter(())
        meta = self.meta
        return ((name, Stat(*meta[4 * i:4 * i + 4]))
                for i, name in enumerate(self.names.split(b"\0")))


def _same(a: os.stat_result | Stat, b: os.stat_result | Stat) -> bool:
    """The same file: device and inode (what a swap, a link or a rename changes)."""
    return a.st_dev == b.st_dev and a.st_ino == b.st_ino


class _Folder:
    """A folder on the scan's stack: what it keeps, and the ignore rules in force there."""

    __slots__ = ("path", "rel", "rules", "kept", "filtered")

    def __init__(self, path: bytes, rel: bytes, rules: Rules) -> None:
        self.path = path  # as opened
        self.rel = rel  # relative to SOURCE, b"" for SOURCE itself
        self.rules = rules  # updated with the folder's .gitignore when it is read
        self.kept: list[tuple[bytes, Stat]] = []
        self.filtered = False  # something in it was left out by the filters


def _output_names(output: str | None) -> tuple[os.stat_result, bytes, re.Pattern[bytes]] | None:
    """(IMAGE's folder's stat, IMAGE's name, its temporary files' names), to
    skip them wherever the scan meets that folder (by identity, so a path
    spelled differently or reached through a link is still recognised).

    Skipping them is silent and does not count as filtering: `make . x.img`
    run twice gives the same image, whether x.img existed or not.
    """
    if output is None:
        return None
    folder, name = os.path.split(os.path.abspath(output))
    try:
        st = os.stat(folder)
    except OSError:
        return None
    name_b = os.fsencode(name)
    # scratch.image_temp's names: .IMAGE.docteur-PID-XXXXXXXX.tmp
    temp = re.compile(re.escape(b"." + name_b + b".docteur-") + rb"\d+-[A-Za-z0-9_]+\.tmp",
                      re.DOTALL)
    return st, name_b, temp
