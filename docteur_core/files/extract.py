"""`docteur extract IMAGE [PATH] DEST`: write an image's tree into a directory.

What `unsquashfs -d DEST` and `git archive | tar -x` do, for a host. The
tree's names were checked by the reader (no empty name, `.`, `..` or `/`),
but a name is not the only way out of DEST: a symbolic link the image (or an
earlier run, with `--force`) put in DEST could be followed by a later path
through it. So nothing is written by path: every directory is opened
relative to its parent's descriptor with O_NOFOLLOW, every file created
with O_EXCL|O_NOFOLLOW (a link in its place is replaced, never followed),
and links are made with `symlinkat`, their targets as stored. A host-only
module: the guest never imports it.
"""

from __future__ import annotations

import os
import stat as st
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import DamagedImage, DocteurError
from ..format import objects as obj

if TYPE_CHECKING:
    import argparse

    from ..reader.image import Image, Node
    from ..reader.store import Store

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
# How often a terminal's progress line is redrawn, in seconds.
_PROGRESS_EVERY = 0.2


class Counts:
    """What an extraction wrote."""

    __slots__ = ("dirs", "files", "links", "bytes")

    def __init__(self) -> None:
        self.dirs = self.files = self.links = self.bytes = 0


def _open_dest(dest: str | os.PathLike[str], force: bool) -> int:
    """A descriptor on DEST, created if absent; a link, a non-directory, or
    (without `force`) a non-empty directory is refused."""
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        os.makedirs(dest, mode=0o755)
        return os.open(dest, _DIR_FLAGS)
    if st.S_ISLNK(info.st_mode):
        raise DocteurError(f"{os.fsdecode(dest)} is a symbolic link: give the directory "
                           "itself")
    if not st.S_ISDIR(info.st_mode):
        raise DocteurError(f"{os.fsdecode(dest)} exists and is not a directory")
    fd = os.open(dest, _DIR_FLAGS)
    if not force and os.listdir(fd):
        os.close(fd)
        raise DocteurError(f"{os.fsdecode(dest)} is not empty (--force to write into it)")
    return fd


def _clear(parent: int, name: bytes, want_dir: bool, shown: str) -> bool:
    """Make room for `name` in `parent` (with --force): a file or link there
    is removed (never followed); a directory is kept for a directory and
    refused for anything else. True when a directory is already there."""
    try:
        info = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return False
    if st.S_ISDIR(info.st_mode):
        if want_dir:
            return True
        raise DocteurError(f"{shown}: a directory is in the way of a file")
    os.unlink(name, dir_fd=parent)
    return False


def _link_target(store: Store, node: Node, shown: str) -> bytes:
    """The target of the link `node`, refused when no file system can hold
    it (empty, or holding a NUL byte: symlink(2) takes a C string). Read
    before anything is cleared or made for it, so a refused link leaves
    its place in DEST as it was."""
    target = store.read_object(node.raw_id, "blob", node.offset)[1]
    if not target or b"\0" in target:
        raise DamagedImage("a symbolic link's target is empty or holds a NUL byte, which no "
                           "file system can store", f"path {shown}")
    return target


def _top(image: Image, path: str) -> list[Node]:
    """What goes into DEST: a directory's entries, or a single file, link or
    submodule at PATH written under its own name (as `unsquashfs -d DEST
    IMAGE FILE` does)."""
    from ..errors import NotADirectory

    try:
        top = image.entries(path)
    except NotADirectory:
        node = image._lookup(path)  # NotADirectory again for a file mid-path
        if node.mode == obj.MODE_DIR:  # pragma: no cover - entries() would have worked
            raise
        return [node]
    image.count_paths(path)  # refuse 2^60 paths before writing any
    return top


def extract(image: Image, path: str, dest: str | os.PathLike[str], *, force: bool = False,
            progress: Callable[[Counts], object] | None = None) -> Counts:
    """Write the tree at `path` of `image` into `dest`; return the counts.

    Modes are git's: 0755 for an executable, 0644 for a file, 0755 for a
    directory (umask ignored: the image says what they are); a submodule is
    an empty directory, as `git archive` writes it; every mtime is the
    commit's date. Walks in git's order, bounded as a walk is
    (`max_paths`, `max_path_bytes`); holds one descriptor per level.
    """
    top = _top(image, path)
    when = image.commit.date.timestamp()
    counts = Counts()
    store = image.store
    last = time.monotonic()
    root = _open_dest(dest, force)
    stack: list[tuple[list[Node], int, int]] = [(top, 0, root)]
    seen = path_bytes = 0
    try:
        while stack:
            entries, i, fd = stack.pop()
            if i >= len(entries):
                os.utime(fd, (when, when))
                os.close(fd)
                continue
            stack.append((entries, i + 1, fd))
            node = entries[i]
            seen += 1
            path_bytes += len(node.path)
            if seen > image.max_paths or path_bytes > image.max_path_bytes:
                from ..errors import LimitExceeded

                raise LimitExceeded(f"the trees name more than {image.max_paths} paths or "
                                    f"{image.max_path_bytes} bytes of paths",
                                    f"path /{node.path}", "max_paths")
            name = obj.encode_name(node.name)
            shown = "/" + node.path
            target = _link_target(store, node, shown) if node.mode == obj.MODE_LINK else b""
            try:
                there = _clear(fd, name, node.mode in (obj.MODE_DIR, obj.MODE_GITLINK),
                               shown) if force else False
                if node.mode in (obj.MODE_DIR, obj.MODE_GITLINK):
                    children = image.entries(node) if node.mode == obj.MODE_DIR else []
                    if not there:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    stack.append((children, 0, sub))
                    if not there:
                        os.fchmod(sub, 0o755)
                    counts.dirs += 1
                elif node.mode == obj.MODE_LINK:
                    os.symlink(target, name, dir_fd=fd)
                    os.utime(name, (when, when), dir_fd=fd, follow_symlinks=False)
                    counts.links += 1
                else:
                    mode = 0o755 if node.mode == obj.MODE_EXEC else 0o644
                    out = os.open(name, _FILE_FLAGS, mode, dir_fd=fd)
                    try:
                        with os.fdopen(out, "wb", buffering=1 << 20) as f:
                            os.fchmod(out, mode)
                            counts.bytes += store.stream_object(node.raw_id, f.write, "blob",
                                                                node.offset)
                            f.flush()
                            os.utime(out, (when, when))
                    except DocteurError:  # damage: no file of wrong or missing bytes left
                        os.unlink(name, dir_fd=fd)
                        raise
                    counts.files += 1
            except OSError as exc:
                raise DocteurError(f"{shown}: cannot write it into {os.fsdecode(dest)}: "
                                   f"{exc.strerror or exc}") from None
            if progress is not None and time.monotonic() - last >= _PROGRESS_EVERY:
                last = time.monotonic()
                progress(counts)
    finally:
        for _, _, fd in stack:
            os.close(fd)
    return counts


# -- the `docteur extract` subcommand -----------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Write an image's tree (or the subtree at PATH) into a directory.

    When PATH is a file or a link, DEST receives that one entry under its
    own name.

    Files get git's modes (0755 executable, 0644 not), symbolic links are
    made as links with their targets as stored, empty directories are kept,
    every mtime is the commit's date. Nothing is written outside DEST: a
    link already in DEST, or one the image holds, is never followed. DEST
    is created if absent; an existing non-empty DEST is refused unless
    --force (then files and links in the way are replaced, directories
    reused). Progress is shown when stderr is a terminal.
    """
    from .. import options
    from ..reader.vocabulary import DEFAULT_MODE, MODE_HELP, MODES

    parser.add_argument("image", metavar="IMAGE", help="an image file, a device, an NBD URI, "
                        "or an http(s):// URL (read by range requests)")
    parser.add_argument("path", metavar="PATH", nargs="?", default="",
                        help="a directory of the image (default: the root), or a file, "
                        "link or submodule, written into DEST under its own name")
    parser.add_argument("dest", metavar="DEST", help="the directory to write into")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing, non-empty DEST")
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=MODE_HELP)
    options.add_reading_arguments(parser, ("max_paths",))


def _terminal_progress(counts: Counts) -> None:
    sys.stderr.write(f"\r{counts.files} files, {counts.links} links, {counts.dirs} "
                     f"directories, {counts.bytes} bytes")
    sys.stderr.flush()


def _refuse_a_path_as_dest(image: Image, args: argparse.Namespace) -> None:
    """`extract IMAGE README.md` has no PATH: README.md is DEST, and the
    whole tree would go silently into a new folder of that name. When DEST
    is not a folder yet but names a path in the image, PATH was surely
    meant: say what to type instead (a usage error, exit 2). An existing
    folder is taken as DEST, so `mkdir` first keeps that meaning open."""
    from ..errors import UsageError

    if args.path or os.path.isdir(args.dest):
        return
    try:
        there = image.exists(args.dest)
    except DocteurError:  # a name no image holds ("..", "a//b"): a folder's name
        return
    if there is not None:
        raise UsageError(f"{args.dest} is a path in the image, not a folder here: to extract "
                         f"it, type `docteur extract {args.image} {args.dest} DEST` (or create "
                         f"the folder {args.dest} first to write the whole tree into it)")


def run(args: argparse.Namespace) -> int:
    from ..errors import DamagedImage
    from ..trust import open_image

    tty = sys.stderr.isatty()
    try:
        with open_image(args.image, args, max_paths=args.max_paths) as image:
            _refuse_a_path_as_dest(image, args)
            counts = extract(image, args.path, args.dest, force=args.force,
                             progress=_terminal_progress if tty else None)
    except DamagedImage as exc:
        if tty:
            sys.stderr.write("\n")
        raise DocteurError(f"{args.image}: {exc}") from None
    if tty:
        _terminal_progress(counts)
        sys.stderr.write("\n")
    return 0


COMMANDS = {"extract": (add_arguments, run)}
