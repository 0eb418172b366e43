"""`docteur diff OLD NEW`: the sides `compare.py` compares, and the verb.

A side is an image (file, device, NBD URI or http(s):// URL), a directory (hashed as
`docteur make` hashes it: `make/snapshot.py`'s scan and hashing, its modes,
links and skipped entries, but no pack is written), or a local Git
repository (its HEAD commit's tree, as `make` would pack it, or the
commit `--old-branch`/`--new-branch` names, resolved as `make --branch`
resolves it). Host only: a guest never imports this.

Exit status as `diff(1)`: 0 equal, 1 different, 2 trouble (a usage
mistake, or an error such as an unreadable image, printed as one line).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import DamagedImage, DocteurError
from ..format import objects as obj
from . import compare

if TYPE_CHECKING:
    from ..reader.image import Image, Node

# diff(1)'s status for trouble; cli.py reads it (`run.error_status`).
TROUBLE = 2


class ImageSide:
    """An image's trees, by path (the reader's lookups, its limits)."""

    def __init__(self, spec: str, image: Image) -> None:
        self.spec = spec
        self.image = image
        self.root = (image.root.raw_id, "")

    def list(self, handle: str | Node) -> list[compare.Entry]:
        try:
            return [(obj.encode_name(n.name), n.mode, n.raw_id, n)
                    for n in self.image.entries(handle)]
        except DamagedImage as exc:  # name the image: a diff has two sides
            raise DocteurError(f"{self.spec}: {exc}") from None

    def size(self, node: Node) -> int | None:
        if node.mode == obj.MODE_GITLINK:
            return None
        try:
            if self.image.store.verify:  # only the content proves the size
                return self.image.size(node)
            return self.image.store.object_size(node.raw_id, node.offset)
        except DamagedImage as exc:
            raise DocteurError(f"{self.spec}: {exc}") from None

    def close(self) -> None:
        self.image.close()


class _Hasher:
    """A pack writer that writes nothing: it hashes objects as git would and
    keeps the trees (to list them) and every blob's size (for `--stat`)."""

    def __init__(self) -> None:
        self.trees: dict[bytes, bytes] = {}
        self.sizes: dict[bytes, int] = {}

    def add(self, type_num: int, data: bytes, sha: bytes | None = None) -> bytes:
        from ..format.pack import OBJ_TREE, TYPE_NAMES, object_id

        sha = sha or object_id(TYPE_NAMES[type_num], data)
        if type_num == OBJ_TREE:
            self.trees[sha] = bytes(data)
        else:
            self.sizes[sha] = len(data)
        return sha

    def add_blob_stream(self, f: BinaryIO, size: int) -> bytes:
        h = hashlib.sha1(b"blob %d\0" % size)
        remaining = size
        while True:
            chunk = f.read(min(1 << 20, remaining) if remaining else 1)
            if not chunk:
                break
            if len(chunk) > remaining:
                raise ValueError("file grew while being read")
            remaining -= len(chunk)
            h.update(chunk)
        if remaining:
            raise ValueError("file shrank while being read")
        sha = h.digest()
        self.sizes[sha] = size
        return sha


class TreeSide:
    """Trees by id: a directory hashed like `make`, or a repository's commit."""

    def __init__(self, spec: str, root: bytes,
                 read_tree: Callable[[bytes], list[obj.RawTreeEntry]],
                 size: Callable[[bytes], int | None],
                 close: Callable[[], None] | None = None) -> None:
        self.spec = spec
        self.root = (root, root)
        self._read_tree = read_tree
        self._size = size
        self._close = close

    def list(self, handle: bytes | tuple[bytes, int]) -> list[compare.Entry]:
        tree_id = handle if isinstance(handle, bytes) else handle[0]
        return [(name, mode, oid, (oid, mode)) for mode, oid, name in self._read_tree(tree_id)]

    def size(self, handle: tuple[bytes, int]) -> int | None:
        oid, mode = handle
        return None if mode == obj.MODE_GITLINK else self._size(oid)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def directory_side(spec: str, warn: Callable[[str], None]) -> TreeSide:
    from ..make.snapshot import Snapshot

    hasher = _Hasher()
    root = bytes.fromhex(Snapshot(spec, warn).run(hasher))
    return TreeSide(spec, root,
                    lambda tid: obj.parse_tree_raw(hasher.trees[tid], f"tree {tid.hex()}"),
                    lambda bid: hasher.sizes.get(bid))


def repository_side(spec: str, branch: str | None = None,
                    git_dir: str | None = None) -> TreeSide:
    """HEAD's tree (tags peeled), read with dulwich as `make` reads it; with
    `branch`, the commit `docteur make --branch BRANCH` would pack: the same
    `make.repository.resolve` (git's rev-parse), so both verbs take the
    same names (a branch, a tag, a commit id) and refuse them in the same
    words."""
    from dulwich.errors import NotGitRepository
    from dulwich.objects import Commit, ObjectID, Tag
    from dulwich.repo import Repo

    try:
        repo = Repo(spec)
        if branch is not None:
            from ..make.gitrun import GitRepo
            from ..make.repository import resolve

            named = resolve(GitRepo(os.path.abspath(git_dir or repo.controldir())), branch, spec)
            target = repo[named.commit.encode()]
        else:
            target = repo[b"HEAD"]
        while isinstance(target, Tag):
            target = repo[target.object[1]]
    except KeyError:
        raise DocteurError(f"{spec}: the repository has no commit at HEAD") from None
    except (NotGitRepository, OSError) as exc:
        raise DocteurError(f"{spec}: cannot read the repository's HEAD ({exc})") from None
    if not isinstance(target, Commit):
        raise DocteurError(f"{spec}: HEAD is not a commit")
    store = repo.object_store

    def read_tree(tid: bytes) -> list[obj.RawTreeEntry]:
        try:
            raw = store[ObjectID(tid.hex().encode())].as_raw_string()
        except KeyError:  # a shallow or broken repository
            raise DocteurError(f"{spec}: tree {tid.hex()} is missing from the "
                               "repository") from None
        return obj.parse_tree_raw(raw, f"tree {tid.hex()}")

    def size(bid: bytes) -> int | None:
        try:
            return len(store.get_raw(ObjectID(bid.hex().encode()))[1])
        except KeyError:
            return None

    return TreeSide(spec, bytes.fromhex(target.tree.decode()), read_tree, size, repo.close)


def open_side(spec: str, args: argparse.Namespace, warn: Callable[[str], None],
              branch: str | None = None, which: str = "OLD") -> Any:
    """What SPEC names: an NBD URI or a file is an image, a directory is
    read as `docteur make` reads it (a Git repository's HEAD or `branch`,
    else files). A branch for anything but a repository is trouble: it
    would otherwise be ignored and the answer be about another tree."""
    if "://" not in spec and os.path.isdir(spec):
        from ..make.source import classify

        src = classify(spec)
        if src.kind == "repository":
            return repository_side(spec, branch, src.git_dir)
        if branch is None:
            return directory_side(spec, warn)
    if branch is not None:
        raise DocteurError(f"--{which.lower()}-branch applies to a Git repository, "
                           f"and {spec} is not one")
    from ..trust import open_image

    image = open_image(spec, args, max_object_size=args.max_object_size,
                       max_lookup_bytes=args.max_lookup_bytes, max_paths=args.max_paths)
    return ImageSide(spec, image)


# -- the verb -------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Show which paths differ between two images, or an image and a directory.

OLD and NEW are each an image (a file, a device, an NBD URI or an
http(s):// URL), a directory (hashed as `docteur make` would hash it,
without building an image: same modes, links stored as links, .git, sockets, FIFOs and devices
skipped), or a local Git repository (its HEAD commit's tree, as make would
pack it; --old-branch/--new-branch name another commit as make's --branch
does, so `docteur diff REPO REPO --old-branch v1.0 --new-branch main` is
`git diff --name-status v1.0 main`). The output is `git diff-tree -r
--name-status`'s: A (added), D (deleted), M (content or 100644/100755 mode
changed), T (type changed: file or executable, symlink, submodule), a tab, the path; a file
replaced by a directory is its D and the directory's A lines. Objects are compared by id, so two
images that share subtrees cost what differs.

Exit status as diff(1): 0 when equal, 1 when different, 2 on trouble (a
usage mistake, an unreadable or damaged side: one line on stderr).
"""
    from .. import options
    from ..make.options import branch

    for name in ("old", "new"):
        parser.add_argument(name, metavar=name.upper(),
                            help="an image file, a device, an NBD URI, an http(s):// URL, a "
                                 "directory or a Git repository")
    for name in ("old", "new"):
        parser.add_argument(f"--{name}-branch", metavar="REF", type=branch,
                            help=f"branch, tag or commit of {name.upper()} when it is a local Git "
                                 "repository, as make's --branch names it (main, "
                                 "refs/heads/main, v1.0, a commit id); default: HEAD")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--stat", action="store_true",
                     help="PATH | OLD -> NEW sizes in bytes (- where a side has no blob), "
                          "then a summary line")
    out.add_argument("--json", action="store_true",
                     help="one JSON document on stdout (fields in docs/reading.md)")
    from ..reader.vocabulary import DEFAULT_MODE, MODE_HELP, MODES

    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE, help=MODE_HELP)
    options.add_reading_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..reader.commands import _name

    def warn(text: str) -> None:
        print(f"docteur diff: warning: {text}", file=sys.stderr)

    sides = []
    try:
        for spec, branch, which in ((args.old, args.old_branch, "OLD"),
                                    (args.new, args.new_branch, "NEW")):
            sides.append(open_side(spec, args, warn, branch, which))
        a, b = sides
        changes = list(compare.diff_trees(a.list, a.root, b.list, b.root,
                                          max_paths=args.max_paths))
        sizes = []
        if args.stat or args.json:
            sizes = [(None if c.old_handle is None else a.size(c.old_handle),
                      None if c.new_handle is None else b.size(c.new_handle))
                     for c in changes]
    finally:
        for side in sides:
            side.close()
    out = sys.stdout.buffer
    if args.json:
        import json

        doc = compare.json_doc(args.old, args.new, changes, sizes)
        out.write(json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
    elif args.stat:
        out.write(compare.stat_text(changes, sizes, _name))
    else:
        out.write(compare.name_status(changes, _name))
    out.flush()
    return 1 if changes else 0


run.error_status = TROUBLE  # type: ignore[attr-defined]

COMMANDS = {"diff": (add_arguments, run)}
