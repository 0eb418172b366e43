"""Files out of an image: the key-value API a guest uses (Mirage_kv.RO-like).

    with Image.open("disk.img") as image:          # or a BlockDevice, or nbd://...
        image.get("/src/main.py")                   # bytes
        image.list("src")                           # [("main.py", "file"), ...]

Kinds, ids, modes and modes of reading are named as in `vocabulary.py`
(the same words as the CLI's and the JSON's).

Two modes, as in the OCaml docteur (light is the default, as everywhere):
- "light": `open` reads the header, the PACK header and the IDX head, and
  nothing else; each lookup walks the trees from the root, finding objects
  with a binary search of the IDX that touches only the sectors it needs.
- "fast": `open` also reads the IDX once and walks every tree once, building
  a path index (path -> mode, object id, pack offset); lookups then cost no
  tree walk and no IDX search.

When the image carries a path index region (`docteur make` writes one;
`format/pathindex.py`), both modes use it instead: `open` reads its super
block (one read), a lookup reads one record per directory on the path (a
tree shared by many paths has one record) and the answer's id from the IDX;
memory does not grow with the file count. Images
without one (the OCaml docteur's, older ones) are read as above.

Trust (verified by default, `verify=True`): the image's header names a
commit; `commit=` (or an http(s) URL ending in `<40 hex>.img`) pins the one
it must name, and any other is refused before a byte of it is read
(`WrongCommit`). Then every object handed out is hashed against the id that
names it: the commit against the header's id, the root tree against the
commit's `tree` line, each tree on a path against its parent's entry, the
file against its tree entry. So every byte returned is tied to the commit,
whatever the device, server or origin says. The path index is then only a
map: it says where the trees and the file on a path are (no IDX search: a
record and a tree per path component when cold), but the ids come from the
hashed trees, and an offset that points at anything else is a SHA-1
mismatch.
`verify=False` trusts the path index and the IDX's CRC-32s, as before.

Paths are `/`-separated, absolute or relative to the root; `.` and empty
components are ignored and `..` stops at the root. Symbolic links are not
followed: `get` on a link returns its target, as git stores it, and a link
in the middle of a path is not a directory.

Errors: NotFound, NotAFile, NotADirectory, DamagedImage (errors.py).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator

from ..format import objects as obj
from ..errors import (DamagedImage, LimitExceeded, NotADirectory, NotAFile, NotFound,
                      WrongCommit)
from ..format import limits
from ..format import pathindex as pix
from ..format.trail import Trail
from ..format.pack import DEFAULT_MAX_OBJECT_SIZE, object_id
from .store import DEFAULT_CACHE_BYTES, DEFAULT_MAX_DELTA_DEPTH, Store
from .vocabulary import DEFAULT_MODE, DICTIONARY, MODES, VALUE, kind_of, kv_kind  # noqa: F401

TYPE_CHECKING = False
if TYPE_CHECKING:  # for annotations only (see __init__)
    import builtins  # `list` in the class body is Image.list
    import os
    from datetime import datetime
    from typing import BinaryIO, NamedTuple

    from ..blockdev.block import BlockDevice
    from ..format.pathindex import Entry
    from .partial import PartialReads
    from .pathindex import PathIndex

DEFAULT_MAX_PATHS = limits.MAX_PATHS
DEFAULT_MAX_PATH_BYTES = limits.MAX_PATH_BYTES
# Light mode keeps recently parsed trees, bounded by their total entries.
_PARSED_ENTRIES = 50_000
# Verified, with a path index: once a walk has read this many trees from the
# pack, the IDX's name table is read whole and the next trees are proven from
# the index's records instead (`_tree_from_index`); a cold lookup never gets
# there, and reads no 20 bytes an object.
_TREES_BEFORE_NAMES = 64


def split_path(path: str | bytes) -> tuple[str, ...]:
    """Normalise a user path into components; `..` never escapes the root."""
    if isinstance(path, bytes):
        path = obj.decode_name(path)
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


def join_path(parts: tuple[str, ...] | list[str]) -> str:
    return "/".join(parts)


# Named tuples rather than dataclasses or `typing.NamedTuple`: importing
# those costs a guest's start-up more than the whole reader (see __init__).
# Type checkers see the same fields as `typing.NamedTuple`s, with their types.
if TYPE_CHECKING:
    class _NodeFields(NamedTuple):
        path: str
        mode: int
        raw_id: bytes
        offset: int | None = None

    class _StatFields(NamedTuple):
        path: str
        kind: str
        mode: int
        size: int
        id: str

    class _CommitFields(NamedTuple):
        id: str
        tree: str
        parents: tuple[str, ...]
        author: str
        committer: str
        date: datetime
        author_date: datetime
        message: str
else:
    _NodeFields = namedtuple("Node", "path mode raw_id offset", defaults=(None,))
    _StatFields = namedtuple("Stat", "path kind mode size id")
    _CommitFields = namedtuple("CommitInfo",
                               "id tree parents author committer date author_date message")


class Node(_NodeFields):
    """What the image holds at a path (the root included).

    `raw_id` is the object id's 20 bytes (what the store takes), `id` the
    same in hex, as everywhere else; `offset` the absolute pack offset,
    when known.
    """

    __slots__ = ()

    @property
    def id(self) -> str:
        return self.raw_id.hex()

    @property
    def kind(self) -> str:
        """file, executable, symlink, directory or submodule."""
        return kind_of(self.mode)

    @property
    def kv_kind(self) -> str:
        """Mirage_kv.RO's word: "dictionary" or "value"."""
        return kv_kind(kind_of(self.mode))

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class Stat(_StatFields):
    """What `Image.stat` says about a path.

    `kind` is file, executable, symlink, directory or submodule (`docteur
    stat`'s words); `mode` git's, an int; `size` the bytes of a file or
    link target, the entries of a directory; `id` the hex object id.
    """

    __slots__ = ()

    @property
    def kv_kind(self) -> str:
        """Mirage_kv.RO's word: "dictionary" or "value"."""
        return kv_kind(self.kind)

    @property
    def is_link(self) -> bool:
        return self.mode == obj.MODE_LINK


class CommitInfo(_CommitFields):
    """The commit an image holds (`Image.commit`).

    Ids in hex; `author` and `committer` as `Name <email>`; `date` (the
    committer's) and `author_date` as aware datetimes in their own zones.
    """

    __slots__ = ()


def zone_in_range(sig: obj.Signature) -> bool:
    """git writes any 4 digits after the sign (`+9999`); a zone is within a
    day of UTC, and `datetime` can hold no other."""
    return -24 * 60 < sig.tz_minutes < 24 * 60


def _datetime(sig: obj.Signature) -> datetime:
    """The signature's time in its zone; in UTC when the zone is out of
    range (see `zone_in_range`: the instant stays right, the zone cannot be
    shown as a datetime's)."""
    import datetime as _dt  # here: only `info` and `last_modified` need it

    minutes = sig.tz_minutes if zone_in_range(sig) else 0
    tz = _dt.timezone(_dt.timedelta(minutes=minutes))
    try:
        return _dt.datetime.fromtimestamp(sig.time, tz)
    except (OverflowError, OSError, ValueError):
        raise DamagedImage(f"commit date {sig.time} is out of range", "commit") from None


def pin_bytes(commit: str | bytes | None) -> bytes | None:
    """A pinned commit as 20 raw bytes (given as 40 hex digits or raw)."""
    if commit is None:
        return None
    if isinstance(commit, bytes) and len(commit) == 20:
        return commit
    text = commit.decode("ascii", "replace") if isinstance(commit, bytes) else commit
    if len(text) != 40 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"a pinned commit is 40 hexadecimal digits, not {text!r}")
    return bytes.fromhex(text)


class Image:
    """A read-only view of one image. Open with `Image.open`; not thread-safe."""

    def __init__(self, store: Store, mode: str, *, device: BlockDevice | None = None,
                 max_paths: int = DEFAULT_MAX_PATHS,
                 max_path_bytes: int = DEFAULT_MAX_PATH_BYTES,
                 path_index: PathIndex | None = None,
                 pin: bytes | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.store = store
        self.mode = mode
        self.max_paths = max_paths
        self.max_path_bytes = max_path_bytes
        self._device = device
        self._trees: dict[bytes, tuple[list[obj.TreeEntry], dict[str, obj.TreeEntry]]] = {}
        self._trees_limit = _PARSED_ENTRIES
        self._trees_entries = 0
        self.path_index = path_index  # a reader.pathindex.PathIndex, or None
        # Without verification the path index answers lookups itself; with
        # it, it only places objects (see the module's "Trust").
        self._index_answers = path_index is not None and not store.verify
        self._partial: PartialReads | None = None  # made by get_partial
        self._last_listed: tuple[str, dict[bytes, pix.Row] | None] | None = None
        self._last_dir: Node | None = None  # where the last tree walk of `_lookup` got to
        # tree id -> its entries' offsets, as the path index placed them, for
        # the trees `_trees` keeps (evicted with them).
        self._offsets_of: dict[bytes, list[int | None]] = {}
        self._trees_read = 0  # trees read from the pack (see _TREES_BEFORE_NAMES)
        sup = None if path_index is None else path_index.sup
        cid = store.commit_id
        if pin is not None and pin != cid:
            raise WrongCommit(f"the image holds commit {cid.hex()}, not the pinned "
                              f"{pin.hex()}", "image header")
        if mode == "fast" and sup is None:
            store.load_index()
        # Only the commit's header lines: its message is read when asked for
        # (with `verify`, the whole object is hashed against the header's id).
        _, head, self.commit_size = store.read_head(
            cid, "commit", limits.MAX_COMMIT_HEADER, None if sup is None else sup.commit_offset)
        if self.commit_size > len(head) and b"\n\n" not in head:
            raise LimitExceeded(f"the commit's header lines are longer than "
                                f"{limits.MAX_COMMIT_HEADER} bytes", f"commit {cid.hex()}")
        self._commit = obj.parse_commit(head, f"commit {cid.hex()}")
        self._commit_whole = self.commit_size == len(head)
        if sup is not None and sup.tree != self._commit.tree:
            raise DamagedImage(f"the path index is bound to tree {sup.tree.hex()}, the commit "
                               f"names {self._commit.tree.hex()}", "path index super block")
        self.root = Node("", obj.MODE_DIR, self._commit.tree,
                         None if sup is None else sup.tree_offset)
        self._nodes: dict[str, Node] | None = None
        self._children: dict[str, list[obj.TreeEntry]] | None = None
        if mode == "fast" and sup is None:
            self._build_index()

    @classmethod
    def open(cls, source: str | os.PathLike[str] | BlockDevice, mode: str = DEFAULT_MODE, *,
             verify: bool = True,
             commit: str | bytes | None = None,
             block_size: int | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES,
             max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
             max_delta_depth: int = DEFAULT_MAX_DELTA_DEPTH,
             max_paths: int = DEFAULT_MAX_PATHS,
             max_path_bytes: int = DEFAULT_MAX_PATH_BYTES,
             max_lookup_bytes: int = limits.MAX_LOOKUP_BYTES,
             path_index: bool = True) -> "Image":
        """Open `source`: a path, an NBD URI, or a BlockDevice.

        The limits (format/limits.py) bound what a hostile image can cost:
        `max_object_size` the bytes held for one object, `max_lookup_bytes`
        the bytes built for one lookup, `max_paths` and `max_path_bytes`
        what one walk (fast mode's index included) may name.

        `verify` (the default) hashes every object handed out back to the
        commit; `commit` (hex or raw) pins the commit the image must hold,
        and an http(s) URL whose last segment is `<40 hex>.img` pins that
        one when `commit` is None (module docstring, "Trust").

        A device given by the caller stays the caller's to close; one this
        opens from a path or URI is closed by `close()`. `path_index=False`
        ignores the image's path index.
        """
        import os

        from ..blockdev.block import ByteReader, SectorCache

        owned = isinstance(source, (str, bytes, os.PathLike))
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        pin = pin_bytes(commit)
        if isinstance(source, (str, bytes, os.PathLike)):  # (owned)
            from ..blockdev.device import open_device
            name = os.fsdecode(source)
            if pin is None:
                from ..format.pin import pin_of_url

                url_pin = pin_of_url(name)
                pin = None if url_pin is None else bytes.fromhex(url_pin)
            device = open_device(name, block_size, pinned=pin is not None)
        else:
            device = source if isinstance(source, SectorCache) else SectorCache(source)
        try:
            reader = ByteReader(device)
            store = Store(reader.pread, reader.capacity, verify=verify,
                          max_object_size=max_object_size, max_delta_depth=max_delta_depth,
                          cache_bytes=cache_bytes, max_lookup_bytes=max_lookup_bytes)
            if pin is not None and pin != store.commit_id:  # before the index is read
                raise WrongCommit(f"the image holds commit {store.commit_id.hex()}, not the "
                                  f"pinned {pin.hex()}", "image header")
            index = None
            if path_index:
                from .pathindex import PathIndex
                index = PathIndex.open(reader.pread, reader.capacity, store.commit_id,
                                       pack_start=store.pack_start, idx=store.idx)
            return cls(store, mode, device=device if owned else None, max_paths=max_paths,
                       max_path_bytes=max_path_bytes, path_index=index, pin=pin)
        except BaseException:
            if owned:
                device.close()
            raise

    def close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            device.close()

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the commit --------------------------------------------------------

    @property
    def commit(self) -> CommitInfo:
        """The commit, its whole message (read now if it was not at open)."""
        return self.commit_info()

    def commit_info(self, max_message: int | None = None) -> CommitInfo:
        """The commit; with `max_message`, no more of the object than its
        header lines and that many characters of message are read (`info`)."""
        c = self._commit
        return CommitInfo(
            id=self.store.commit_id.hex(), tree=c.tree.hex(),
            parents=tuple(p.hex() for p in c.parents),
            author=c.author.identity, committer=c.committer.identity,
            date=_datetime(c.committer), author_date=_datetime(c.author),
            message=self.commit_message(max_message)[0])

    def commit_message(self, limit: int | None = None) -> tuple[str, bool]:
        """(the commit message, or its first `limit` characters; whether that
        is all of it). Open read only the header lines of a large commit:
        its message is read now, bounded by `limit` or `max_object_size`."""
        message = self._commit.message
        if not self._commit_whole:
            cid = self.store.commit_id
            if limit is None:
                _, raw = self.store.read_object(cid, "commit")
                whole = True
            else:
                # A character is at most 4 bytes of UTF-8.
                _, raw, size = self.store.read_head(
                    cid, "commit", limits.MAX_COMMIT_HEADER + 4 * limit + 4)
                whole = len(raw) == size
            message = obj.parse_commit(raw, f"commit {cid.hex()}").message
            if not whole:
                message = message[:limit]
                return message, False
        if limit is not None and len(message) > limit:
            return message[:limit], False
        return message, True

    # -- trees -------------------------------------------------------------

    def _tree(self, tree_id: bytes, offset: int | None = None, path: str | None = None
              ) -> tuple[list[obj.TreeEntry], dict[str, obj.TreeEntry]]:
        """The entries of a tree (and by name), parsed once while kept. The
        tree is read where `offset` says (the path index's word, when there
        is one) and hashed against `tree_id` when verifying; in a verified
        walk, it is proven from the index's record instead once the IDX's
        names are at hand (`_tree_from_index`)."""
        parsed = self._trees.pop(tree_id, None)
        if parsed is not None:
            self._trees[tree_id] = parsed  # most recently used last
            return parsed
        entries = None
        if path is not None and self.path_index is not None and self.store.verify:
            entries = self._tree_from_index(tree_id, path)
        if entries is None:
            _, raw = self.store.read_object(tree_id, "tree", offset)
            self._trees_read += 1
            # No tree may name more than a whole walk may: counted as parsed.
            entries = obj.parse_tree(raw, f"tree {tree_id.hex()}", self.max_paths)
        parsed = (entries, {e.name: e for e in entries})
        if self._nodes is None:  # light mode, or fast mode's index build
            self._trees_entries += len(entries)
            while self._trees and self._trees_entries > self._trees_limit:
                oldest = next(iter(self._trees))
                self._offsets_of.pop(oldest, None)
                self._trees_entries -= len(self._trees.pop(oldest)[0])
            self._trees[tree_id] = parsed
        return parsed

    def _walk_trees(self, top: Node) -> Iterator[tuple[Node, list[obj.TreeEntry],
                                                     list[int | None]]]:
        """Every directory under `top` (included), depth first, each with its
        entries and where they are, when known (`_placed`).

        Iterative; a tree that contains itself (only a damaged image can say
        so) is reported as damage, more than `max_paths` paths or
        `max_path_bytes` bytes of them (a small image can name a subtree
        millions of times, under long names) as over a limit, each before
        the paths are made.
        """
        on_path: set[bytes] = set()
        stack: builtins.list[Node | bytes] = [top]  # bytes: leaving that tree
        paths = 0
        path_bytes = 0
        while stack:
            item = stack.pop()
            if isinstance(item, bytes):  # leaving that tree
                on_path.discard(item)
                continue
            if item.raw_id in on_path:
                raise DamagedImage(f"tree {item.raw_id.hex()} contains itself",
                                   f"path /{item.path}")
            entries, _ = self._tree(item.raw_id, item.offset, item.path)
            paths += len(entries)
            if paths > self.max_paths:
                raise LimitExceeded(f"the trees name more than {self.max_paths} paths",
                                    f"path /{item.path}", "max_paths")
            path_bytes += (len(item.path) + 1) * len(entries) + sum(len(e.name)
                                                                    for e in entries)
            if path_bytes > self.max_path_bytes:
                raise LimitExceeded(f"the trees' paths add up to more than "
                                    f"{self.max_path_bytes} bytes", f"path /{item.path}",
                                    "max_path_bytes")
            offsets = self._placed(item.raw_id, item.path, entries)
            yield item, entries, offsets
            on_path.add(item.raw_id)
            stack.append(item.raw_id)
            prefix = item.path + "/" if item.path else ""
            for e, offset in zip(reversed(entries), reversed(offsets)):
                if e.mode == obj.MODE_DIR:
                    stack.append(Node(prefix + e.name, e.mode, e.id, offset))

    def count_paths(self, path: str | bytes = "") -> tuple[int, int]:
        """(paths, bytes of those paths) under a directory, refused past the limits.

        Counted over the distinct trees, each parsed once, before a single
        path is made: 61 trees each naming the one below twice name 2^60
        paths, and are refused here in milliseconds rather than by a walk
        that has already spent the memory (fast mode's index) or the time
        (`tree`). Paths are counted relative to `path`.
        """
        top = self._lookup(path)
        if top.mode != obj.MODE_DIR:
            raise NotADirectory(f"/{top.path} is not a directory")
        memo: dict[bytes, tuple[int, int]] = {}
        on_path: set[bytes] = set()
        trail = Trail(top.path)  # paths are spelled only for an error
        stack: list[tuple[bytes, int | None, int, bool]] = [(top.raw_id, top.offset, 0, False)]
        while stack:
            tid, offset, at, done = stack.pop()
            if done:
                on_path.discard(tid)
                entries, _ = self._tree(tid, offset)
                n = len(entries)
                b = 0
                for e in entries:
                    b += len(e.name)
                    if e.is_dir:
                        sn, sb = memo[e.id]
                        n += sn
                        b += sb + sn * (len(e.name) + 1)
                if n > self.max_paths:
                    raise LimitExceeded(f"the trees name more than {self.max_paths} paths",
                                        f"path /{trail.path(at)}", "max_paths")
                if b > self.max_path_bytes:
                    raise LimitExceeded(f"the trees' paths add up to more than "
                                        f"{self.max_path_bytes} bytes", f"path /{trail.path(at)}",
                                        "max_path_bytes")
                memo[tid] = (n, b)
                continue
            if tid in memo:
                continue
            if tid in on_path:
                raise DamagedImage(f"tree {tid.hex()} contains itself",
                                   f"path /{trail.path(at)}")
            on_path.add(tid)
            stack.append((tid, offset, at, True))
            entries, _ = self._tree(tid, offset)
            for e in entries:
                if e.is_dir and e.id not in memo:
                    child = trail.child(at, e.name)
                    hint = self._offset(e.id, trail.path(child)
                                        if self.path_index is not None else None)
                    stack.append((e.id, hint, child, False))
        return memo[top.raw_id]

    def _listed(self, path: str) -> dict[bytes, pix.Row] | None:
        """The path index's rows of the directory at `path`, by raw name
        (None when the index has no such directory or is damaged there); the
        last one is kept, for the placement of a directory's entries."""
        last = self._last_listed
        if last is not None and last[0] == path:
            return last[1]
        assert self.path_index is not None  # called only with a path index
        try:
            rows = self.path_index.rows(obj.encode_name(path))
        except DamagedImage:  # a damaged map: the trees and the IDX still know
            rows = None
        listed = None if rows is None else {r.name: r for r in rows}
        self._last_listed = (path, listed)
        return listed

    def _tree_from_index(self, tree_id: bytes, path: str) -> list[obj.TreeEntry] | None:
        """The tree `tree_id` at `path`, rebuilt from the path index's record
        of that directory and the IDX's names at the positions it gives, if
        that encodes (as git writes a tree) to bytes whose id is `tree_id`;
        else None (the tree is then read from the pack).

        The record is then exactly the tree the parent names, proven by its
        hash as a tree read from the pack would be, without reading, maybe
        resolving deltas for, and inflating it. Only once a walk has read
        `_TREES_BEFORE_NAMES` trees: the IDX's whole name table is read then.
        """
        index = self.path_index
        assert index is not None  # called only with a path index
        if not index.names_loaded and self._trees_read < _TREES_BEFORE_NAMES:
            return None
        listed = self._listed(path)
        if listed is None:
            return None
        rows = list(listed.values())  # in the record's order, which must be the tree's
        try:
            index.load_names()
            ids = [r.gitlink if r.position is None else index.id_at(r.position) for r in rows]
        except DamagedImage:  # a damaged map: the tree is read from the pack
            return None
        data = b"".join([b"%o %s\0%s" % (r.mode, r.name, oid) for r, oid in zip(rows, ids)])
        if object_id("tree", data) != tree_id:
            return None
        if len(rows) > self.max_paths or obj.may_be_refused(b"/".join(listed)):
            # The parse's guards say it in their words (limits, .git names).
            return obj.parse_tree(data, f"tree {tree_id.hex()}", self.max_paths)
        self._offsets_of[tree_id] = [None if r.position is None else r.offset for r in rows]
        decode = obj.decode_name
        return [obj.TreeEntry(decode(r.name), r.mode, oid) for r, oid in zip(rows, ids)]

    def _placed(self, tree_id: bytes, path: str, entries: list[obj.TreeEntry]
                ) -> list[int | None]:
        """Where each of a directory's `entries` is in the pack, when known
        without an IDX search: fast mode's table, or the path index (one
        listing of the directory places all of them; a hint, as in
        `_offset`): a walk costs a listing per directory, not a lookup per
        path."""
        by_id = self.store._by_id
        if by_id is not None:
            return [None if (f := by_id.get(e.id)) is None else f[0] for e in entries]
        if self.path_index is None:
            return [None] * len(entries)
        known = self._offsets_of.get(tree_id)
        if known is not None:  # placed once: where the tree is (another
            return known  # release's folder), its entries are the same
        where = self._listed(path) or {}
        encode = obj.encode_name
        out: list[int | None] = []
        for e in entries:
            hint = where.get(encode(e.name))
            out.append(hint.offset or None if hint is not None and hint.mode == e.mode
                       else None)
        if where:
            self._offsets_of[tree_id] = out
        return out

    def _offset(self, oid: bytes, path: str | None = None) -> int | None:
        """Where `oid` is in the pack, when known without an IDX search:
        fast mode's table, or the path index's entry for `path` when it
        names the same id (a hint only: the object read there is hashed
        against `oid` all the same)."""
        by_id = self.store._by_id
        if by_id is not None:
            found = by_id.get(oid)
            return None if found is None else found[0]
        if self.path_index is None or path is None:
            return None
        parent, _, name = path.rpartition("/")
        where = self._listed(parent)
        row = None if where is None else where.get(obj.encode_name(name))
        return None if row is None or row.position is None else row.offset

    def _build_index(self) -> None:
        # Hundreds of thousands of small objects, none in a cycle: the
        # cyclic GC's passes over them would cost a third of the build.
        import gc

        enabled = gc.isenabled()
        gc.disable()
        try:
            self._build_index_now()
        finally:
            if enabled:
                gc.enable()

    def _build_index_now(self) -> None:
        # Releases side by side share most subtrees: parse each tree once.
        self._trees_limit = 1 << 62
        self._nodes = None
        self.count_paths()  # refused before a path is made, if over the limits
        nodes: dict[str, Node] = {"": self.root}
        children: dict[str, list[obj.TreeEntry]] = {}
        by_id = self.store._by_id or {}  # (an offset not known here is looked up later)
        for d, entries, _ in self._walk_trees(self.root):
            children[d.path] = entries
            prefix = d.path + "/" if d.path else ""
            for e in entries:
                found = by_id.get(e.id)
                path = prefix + e.name
                nodes[path] = Node(path, e.mode, e.id, None if found is None else found[0])
        self._nodes = nodes
        self._children = children
        self._trees.clear()
        self._offsets_of.clear()
        self._trees_entries = 0
        self._trees_limit = _PARSED_ENTRIES

    def _indexed(self, path: str | bytes) -> tuple[Node, Entry | None]:
        """(Node, its path index entry) of `path`; the root has no entry."""
        if isinstance(path, str):
            joined = path.strip("/")
            wrapped = "/" + joined + "/"
            if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
                joined = join_path(split_path(joined))
        else:
            joined = join_path(split_path(path))
        if not joined:
            return self.root, None
        assert self.path_index is not None  # called only when it answers
        find = self.path_index.find
        e = find(pix.key_of(obj.encode_name(joined)))
        if e is None:
            # Name the first missing component, or the file in the middle.
            parts = joined.split("/")
            for i in range(1, len(parts)):
                above = find(pix.key_of(obj.encode_name(join_path(parts[:i]))))
                if above is None:
                    raise NotFound(f"/{joined} does not exist "
                                   f"(/{join_path(parts[:i])} does not exist)")
                if above.mode != obj.MODE_DIR:
                    raise NotADirectory(f"/{join_path(parts[:i])} is not a directory")
            raise NotFound(f"/{joined} does not exist")
        return Node(joined, e.mode, e.id, e.offset or None), e

    def _listing(self, node: Node) -> builtins.list[tuple[str, Entry]]:
        """(name, path index entry) of a directory's entries, in git's order."""
        assert self.path_index is not None  # called only when it answers
        found = self.path_index.listing(obj.encode_name(node.path))
        cut = len(node.path.encode("utf-8", "surrogateescape")) + 1 if node.path else 1
        return [(obj.decode_name(e.key[cut:]), e) for e in found]

    def _lookup(self, path: str | bytes | Node) -> Node:
        if isinstance(path, Node):  # a node this image handed out: its own answer
            return path
        if self._index_answers:
            return self._indexed(path)[0]
        if self._nodes is not None and isinstance(path, str):
            # A key of the index is a normalised path: a string equal to one
            # (slashes aside) needs no normalising.
            node = self._nodes.get(path.strip("/"))
            if node is not None:
                return node
        parts = split_path(path)
        if self._nodes is not None:
            node = self._nodes.get(join_path(parts))
            if node is not None:
                return node
            # Name the first missing component, as a tree walk would, or
            # the file found in the middle of the path.
            for i in range(1, len(parts) + 1):
                above = self._nodes.get(join_path(parts[:i]))
                if above is None:
                    where = join_path(parts[:i])
                    raise NotFound(f"/{join_path(parts)} does not exist"
                                   + (f" (/{where} does not exist)" if i < len(parts) else ""))
                if above.mode != obj.MODE_DIR:
                    raise NotADirectory(f"/{above.path} is not a directory")
            raise NotFound(f"/{join_path(parts)} does not exist")  # pragma: no cover
        # Down the trees from the root, each hashed against the id its parent
        # names when verifying (the path index, if any, says where they are);
        # from the last directory reached instead, when the path is in it (a
        # mount's lookups come a directory at a time: at 3,000 levels, a walk
        # from the root per lookup made `find` quadratic).
        node = self.root
        steps = parts
        last = self._last_dir
        if last is not None and parts:
            joined = join_path(parts)
            if joined == last.path:
                return last
            if joined.rpartition("/")[0] == last.path:
                node, steps = last, parts[-1:]
        for name in steps:
            if node.mode != obj.MODE_DIR:
                raise NotADirectory(f"/{node.path} is not a directory")
            _, by_name = self._tree(node.raw_id, node.offset, node.path)
            e = by_name.get(name)
            path = node.path + "/" + name if node.path else name
            if e is None:
                asked = join_path(parts)
                raise NotFound(f"/{asked} does not exist"
                               + (f" (/{path} does not exist)" if path != asked else ""))
            if node.mode == obj.MODE_DIR:
                self._last_dir = node
            node = Node(path, e.mode, e.id, self._offset(e.id, path))
        if node.mode == obj.MODE_DIR:
            self._last_dir = node
        return node

    def _entries(self, node: Node) -> list[obj.TreeEntry]:
        if node.mode != obj.MODE_DIR:
            raise NotADirectory(f"/{node.path} is not a directory")
        if self._index_answers:
            return [obj.TreeEntry(name, e.mode, e.id) for name, e in self._listing(node)]
        if self._children is not None:
            return self._children[node.path]
        return self._tree(node.raw_id, node.offset, node.path)[0]

    def _content(self, node: Node) -> bytes:
        if node.mode == obj.MODE_DIR:
            raise NotAFile(f"/{node.path} is a directory")
        if node.mode == obj.MODE_GITLINK:
            raise NotAFile(f"/{node.path} is a submodule: its files are not in the image")
        return self.store.read_object(node.raw_id, "blob", node.offset)[1]

    # -- the key-value API -------------------------------------------------

    def exists(self, path: str | bytes) -> str | None:
        """None, or the path's kind (file, executable, symlink, directory,
        submodule); `kv_kind` of it gives Mirage_kv.RO's value/dictionary."""
        try:
            return self._lookup(path).kind
        except (NotFound, NotADirectory):
            return None

    def get(self, path: str | bytes | Node) -> bytes:
        if self._index_answers and not isinstance(path, Node):
            return self._content(self._indexed(path)[0])
        return self._content(self._lookup(path))

    def stream(self, path: str | bytes | Node, write: Callable[[bytes], object]) -> int:
        """Write a file's bytes through `write`; return how many.

        Unlike `get`, a large file stored whole is not held: memory does not
        grow with its size and `max_object_size` does not apply (see
        `Store.stream_object`). Verified, it is hashed on its way to a
        temporary file and written from there once its id is proven, so no
        byte goes out before; unverified, it is written as it inflates and
        its damage is reported after some of it went out.
        """
        node = self._lookup(path)
        if node.mode == obj.MODE_DIR:
            raise NotAFile(f"/{node.path} is a directory")
        if node.mode == obj.MODE_GITLINK:
            raise NotAFile(f"/{node.path} is a submodule: its files are not in the image")
        return self.store.stream_object(node.raw_id, write, "blob", node.offset)

    def node(self, path: str | bytes | Node) -> Node:
        """What the image holds at `path` (NotFound, NotADirectory): its
        mode, id and, when known, offset; a Node handed to `get`, `content`
        or `entries` needs no second lookup."""
        return self._lookup(path)

    def content(self, path: str | bytes | Node) -> bytes | BinaryIO:
        """A file's bytes, checked before they are returned: bytes for a
        file built whole, a temporary file (positioned at its start, the
        caller's to close) for a large one (`Store.content`). Nothing is
        returned for a damaged or forged object: DamagedImage instead."""
        node = self._lookup(path)
        if node.mode == obj.MODE_DIR:
            raise NotAFile(f"/{node.path} is a directory")
        if node.mode == obj.MODE_GITLINK:
            raise NotAFile(f"/{node.path} is a submodule: its files are not in the image")
        return self.store.content(node.raw_id, "blob", node.offset)

    def get_partial(self, path: str | bytes, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` (fewer at the end). A large file stored
        whole is inflated only as far as needed, from where the last read
        of it stopped, never held (at any size); see reader/partial.py."""
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset or length ({offset}, {length})")
        node = self._lookup(path)
        if node.mode == obj.MODE_DIR:
            raise NotAFile(f"/{node.path} is a directory")
        if node.mode == obj.MODE_GITLINK:
            raise NotAFile(f"/{node.path} is a submodule: its files are not in the image")
        if self._partial is None:
            from .partial import PartialReads  # only readers at offsets pay for it

            self._partial = PartialReads(self.store)
        return self._partial.read(node.raw_id, node.offset, offset, length, lambda: self.get(path))

    def list(self, path: str | bytes | Node = "") -> list[tuple[str, str]]:
        """(name, kind) of a directory's entries, in git's order; kinds as
        `Node.kind` (`kv_kind` of one gives Mirage_kv.RO's word)."""
        return [(e.name, kind_of(e.mode)) for e in self._entries(self._lookup(path))]

    def entries(self, path: str | bytes | Node = "") -> builtins.list[Node]:
        """A directory's entries with their modes and ids. Given a Node this
        image handed out (a walk's), no lookup from the root is made."""
        node = self._lookup(path)
        prefix = node.path + "/" if node.path else ""
        if self._index_answers:
            if node.mode != obj.MODE_DIR:
                raise NotADirectory(f"/{node.path} is not a directory")
            return [Node(prefix + name, e.mode, e.id, e.offset or None)
                    for name, e in self._listing(node)]
        entries = self._entries(node)
        return [Node(prefix + e.name, e.mode, e.id, offset)
                for e, offset in zip(entries, self._placed(node.raw_id, node.path, entries))]

    def digest(self, path: str | bytes) -> str:
        """The git object id (hex) of a file or directory."""
        return self._lookup(path).id

    def size(self, path: str | bytes | Node) -> int:
        node = self._lookup(path)
        if node.mode == obj.MODE_DIR:
            raise NotAFile(f"/{node.path} is a directory")
        if node.mode == obj.MODE_GITLINK:
            raise NotAFile(f"/{node.path} is a submodule: its files are not in the image")
        if self.store.verify:  # only the content, hashed, proves the size
            return self.store.verified_size(node.raw_id, node.offset)
        return self.store.object_size(node.raw_id, node.offset)

    def last_modified(self, path: str | bytes) -> datetime:
        """The commit's date: an image holds one commit, every path shares it."""
        self._lookup(path)
        return _datetime(self._commit.committer)

    def stat(self, path: str | bytes) -> Stat:
        node = self._lookup(path)
        if node.mode == obj.MODE_DIR:
            size = len(self._entries(node))
        elif node.mode == obj.MODE_GITLINK:
            size = 0
        else:
            size = self.size(path)
        return Stat("/" + node.path, node.kind, node.mode, size, node.id)

    def readlink(self, path: str | bytes | Node) -> str:
        node = self._lookup(path)
        if node.mode != obj.MODE_LINK:
            raise NotAFile(f"/{node.path} is not a symbolic link")
        return obj.decode_name(self._content(node))

    def walk(self, path: str | bytes | Node = "") -> Iterator[Node]:
        """Every path under `path` (not itself), depth first, in git's order."""
        top = self._lookup(path)
        if top.mode != obj.MODE_DIR:
            raise NotADirectory(f"/{top.path} is not a directory")
        if self._index_answers:
            stack = [top]
            while stack:
                d = stack.pop()
                prefix = d.path + "/" if d.path else ""
                subdirs = []
                for name, e in self._listing(d):
                    node = Node(prefix + name, e.mode, e.id, e.offset or None)
                    yield node
                    if e.mode == obj.MODE_DIR:
                        subdirs.append(node)
                stack.extend(reversed(subdirs))
            return
        children, nodes = self._children, self._nodes
        if children is not None and nodes is not None:  # (built together)
            paths = [top.path]
            while paths:
                p = paths.pop()
                prefix = p + "/" if p else ""
                subpaths = []
                for t in children[p]:
                    node = nodes[prefix + t.name]
                    yield node
                    if t.is_dir:
                        subpaths.append(node.path)
                # Depth first, but list a directory's own entries first:
                # simple and stable; `tree` re-orders as it needs.
                paths.extend(reversed(subpaths))
            return
        for d, entries, offsets in self._walk_trees(top):
            prefix = d.path + "/" if d.path else ""
            for t, offset in zip(entries, offsets):
                yield Node(prefix + t.name, t.mode, t.id, offset)

    def files(self, path: str | bytes | Node = "") -> Iterator[Node]:
        """Every file and link under `path`."""
        for node in self.walk(path):
            if node.mode != obj.MODE_DIR and node.mode != obj.MODE_GITLINK:
                yield node

    def __len__(self) -> int:
        """Paths in the image (fast mode; light mode walks the trees)."""
        if self._nodes is not None:
            return len(self._nodes) - 1
        if self.path_index is not None:
            paths: int = self.path_index.sup.paths  # (the super block's fields are untyped)
            return paths
        return sum(1 for _ in self.walk())
