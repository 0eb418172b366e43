"""The path index of an image (version 2), read through a byte-range callable.

Opening one reads the image's last 4096 bytes (the super block, which holds
the root's record when it fits) and the PACK's 20-byte trailer it is bound
to. A lookup then reads one page per directory on the path (a tree's record:
its entries' names, kinds, IDX positions and pack offsets), and the id of
the entry it answers from the IDX's name table (one 20-byte read; after a
few hundred, as in a walk, the table is read whole, once). Decoded
records are kept in an LRU bounded by their rows, and the last directory
reached is kept, so lookups in path order cost no page read.

Every record is checked when decoded (the page's zlib stream whole, names
valid and unique, known kinds, positions inside the IDX, offsets inside the
pack, references inside the region): a damaged or hostile index is an
error, never another file. The index is derived data: only `docteur verify`
ties every record to the commit's trees; a verified `Image` uses it only
to place the trees and files on a path, whose hashes decide.

An image whose index has another version (1: every path stored again) is
opened without it: readers walk the trees, as for the OCaml docteur's
images. Standard library only (it runs in the guest).
"""

from __future__ import annotations

from collections import OrderedDict

from ..errors import DamagedImage
from ..format import pathindex as pix
from ..format.idx import Idx
from ..format.layout import Pread

DEFAULT_CACHE_ROWS = 50_000
DEFAULT_CACHE_PAGES = 8
CACHE_PAGE_BYTES = 4 << 20
NAMES_AFTER = 512  # ids read one by one before the IDX's name table is read whole


def probe(pread: Pread, capacity: int) -> bytes | None:
    """The super block's bytes when the image ends with one, else None."""
    if capacity < pix.SUPER_SIZE:
        return None
    data = pread(capacity - pix.SUPER_SIZE, pix.SUPER_SIZE)
    return data if pix.has_magic(data) else None


class Record:
    """A directory's rows, and the same by name."""

    __slots__ = ("rows", "by_name", "ref")

    def __init__(self, rows: list[pix.Row], ref: pix.Ref) -> None:
        self.rows = rows
        self.by_name = {r.name: r for r in rows}
        self.ref = ref


class PathIndex:
    """Lookups and listings of one image's path index. Not thread-safe."""

    def __init__(self, pread: Pread, capacity: int, sup: pix.Super, *, pack_start: int,
                 idx: Idx, cache_rows: int = DEFAULT_CACHE_ROWS) -> None:
        self.pread = pread
        self.capacity = capacity
        self.sup = sup
        self.pack_start = pack_start
        self.idx = idx
        self.area = capacity - pix.SUPER_SIZE - sup.nodes_start
        self.cache_rows = cache_rows
        self._records: OrderedDict[pix.Ref, Record] = OrderedDict()
        self._record_rows = 0
        self._pages: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._page_bytes = 0
        self.nodes_read = 0  # pages read from the device (the name the benches use)
        self._last: tuple[bytes, Record] | None = None  # the last directory reached
        self._names: bytes | None = None  # the IDX's name table, once many ids were read
        self._ids_read = 0

    @classmethod
    def open(cls, pread: Pread, capacity: int, commit: bytes, *, pack_start: int,
             idx: Idx, data: bytes | None = None,
             cache_rows: int = DEFAULT_CACHE_ROWS) -> "PathIndex | None":
        """The image's path index, None when it has none (or one of another
        version); DamagedImage when it has one that is damaged or bound to
        another image."""
        if data is None:
            data = probe(pread, capacity)
            if data is None:
                return None
        if pix.version_of(data) != pix.VERSION:
            return None
        sup = pix.parse_super(data, capacity)
        where = f"{pix.REGION} super block at offset {capacity - pix.SUPER_SIZE}"
        if sup.commit != commit:
            raise DamagedImage(f"the path index is bound to commit {sup.commit.hex()}, "
                               f"the image holds {commit.hex()}", where)
        if not sup.pack_end + 20 < idx.base < sup.region_start:
            raise DamagedImage(f"the path index's pack end {sup.pack_end} and region start "
                               f"{sup.region_start} do not surround the IDX at {idx.base}",
                               where)
        trailer = pread(sup.pack_end, 20)
        if trailer != sup.pack_checksum:
            raise DamagedImage(f"the path index is bound to pack {sup.pack_checksum.hex()}, "
                               f"the image's PACK ends with {trailer.hex()}", where)
        return cls(pread, capacity, sup, pack_start=pack_start, idx=idx,
                   cache_rows=cache_rows)

    # -- records ---------------------------------------------------------------

    def _where(self, ref: pix.Ref) -> str:
        if ref.page == self.area:
            return f"{pix.REGION} super block's inline page"
        return f"{pix.REGION} page at offset {self.sup.nodes_start + ref.page}"

    def _page(self, ref: pix.Ref) -> bytes:
        key = (ref.page, ref.length)
        raw = self._pages.get(key)
        if raw is not None:
            self._pages.move_to_end(key)
            return raw
        where = self._where(ref)
        if ref.page == self.area:
            data = self.sup.inline
        else:
            data = self.pread(self.sup.nodes_start + ref.page, ref.length)
            self.nodes_read += 1
            if len(data) != ref.length:
                raise DamagedImage("page runs past the end of the device", where)
        raw = pix.inflate_page(data, where)
        self._pages[key] = raw
        self._page_bytes += len(raw)
        # Bounded in count and in bytes (a hostile page may inflate to
        # MAX_PAGE_RAW): the newest is always kept.
        while len(self._pages) > 1 and (len(self._pages) > DEFAULT_CACHE_PAGES
                                        or self._page_bytes > CACHE_PAGE_BYTES):
            self._page_bytes -= len(self._pages.popitem(last=False)[1])
        return raw

    def record(self, ref: pix.Ref) -> Record:
        """The record at `ref`, decoded and checked once while kept."""
        hit = self._records.get(ref)
        if hit is not None:
            self._records.move_to_end(ref)
            return hit
        raw = self._page(ref)
        sup = self.sup
        rows = pix.decode_record(raw, ref.inner, ref, self.area, len(sup.inline),
                                 self.idx.count, self.pack_start, sup.pack_end,
                                 self._where(ref))
        hit = Record(rows, ref)
        self._records[ref] = hit
        self._record_rows += len(rows)
        # Bounded by rows, as light mode's parsed trees are: a walk of ten
        # releases lists each shared folder ten times, so thousands of
        # small records must stay; the newest is always kept.
        while len(self._records) > 1 and self._record_rows > self.cache_rows:
            self._record_rows -= len(self._records.popitem(last=False)[1].rows)
        return hit

    def directory(self, path: bytes) -> Record | None:
        """The record of the directory at `path` (b"" for the root), None
        when a component is missing or not a directory."""
        last = self._last
        if last is not None and last[0] == path:
            return last[1]
        rec = self.record(self.sup.root_ref)
        if path:
            start = 0
            if last is not None and path.startswith(last[0] + b"/") and last[0]:
                rec, start = last[1], len(last[0]) + 1
            for name in path[start:].split(b"/"):
                row = rec.by_name.get(name)
                if row is None or row.ref is None:
                    return None
                rec = self.record(row.ref)
        self._last = (path, rec)
        return rec

    @property
    def names_loaded(self) -> bool:
        return self._names is not None

    def load_names(self) -> None:
        """Read the IDX's whole name table once (20 bytes an object)."""
        if self._names is None:
            at, size = self.idx.name_at(0), 20 * self.idx.count
            names = self.pread(at, size)
            if len(names) != size:
                raise DamagedImage("truncated IDX name table", f"offset {at}")
            self._names = names

    def id_at(self, position: int) -> bytes:
        """The object id at an IDX position: one 20-byte read, until
        `NAMES_AFTER` of them have been made; then the IDX's whole name
        table is read once and kept, so that a walk of every path costs one
        sequential read, not one per path."""
        names = self._names
        if names is None:
            self._ids_read += 1
            if self._ids_read <= NAMES_AFTER:
                at = self.idx.name_at(position)
                data = self.pread(at, 20)
                if len(data) != 20:
                    raise DamagedImage("truncated IDX name table", f"offset {at}")
                return data
            self.load_names()
            names = self._names
            assert names is not None  # load_names sets it or raises
        return names[20 * position:20 * position + 20]

    def _entry(self, key: bytes, row: pix.Row) -> pix.Entry:
        oid = row.gitlink if row.position is None else self.id_at(row.position)
        return pix.Entry(key, row.mode, oid, row.offset, None)

    # -- lookups ---------------------------------------------------------------

    def find(self, key: bytes) -> pix.Entry | None:
        """The entry of `key` (parent NUL name), or None."""
        parent, _, name = key.partition(b"\0")
        rec = self.directory(parent)
        if rec is None:
            return None
        row = rec.by_name.get(name)
        return None if row is None else self._entry(key, row)

    def rows(self, path: bytes) -> list[pix.Row] | None:
        """A directory's rows (no ids: no IDX read), None when not one."""
        rec = self.directory(path)
        return None if rec is None else rec.rows

    def listing(self, path: bytes) -> list[pix.Entry]:
        """A directory's entries, in the tree's order (path without slashes
        around, b"" for the root); [] when it is not a directory."""
        rec = self.directory(path)
        if rec is None:
            return []
        prefix = pix.dir_prefix(path)
        return [self._entry(prefix + r.name, r) for r in rec.rows]
