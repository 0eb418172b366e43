"""The path index of an image, read through a byte-range callable.

Opening one reads the image's last 4096 bytes (the super block, which holds
the root node) and the PACK's 20-byte trailer it is bound to; a lookup then
descends one node per level (at most 3 reads for a million paths) and a
listing reads the leaves that hold its range. Decoded nodes are kept in a
small LRU bounded by count, so memory does not grow with the file count.

Every node is checked when decoded (CRC-32, its number and level, keys
ascending within the bounds its parent gives, known modes, offsets inside
the pack): a damaged or hostile index is an error, never another file.
The index is derived data: only `docteur verify` ties every entry to the
commit's trees, so `Image.open(verify=True)` walks the trees instead.
Standard library only (it runs in the guest).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterator

from ..errors import DamagedImage
from ..format import pathindex as pix
from ..format.layout import Pread

TYPE_CHECKING = False  # (`typing` costs a guest's start-up: see the package docstring)
if TYPE_CHECKING:
    from typing import Any

    # A decoded node: its keys, and its entries: a leaf's `pix.Entry`s, an
    # internal node's (lower bound, child number) pairs (the level says which).
    _Decoded = tuple[list[bytes], list[Any]]

DEFAULT_CACHE_NODES = 256
ROOT = -1


def probe(pread: Pread, capacity: int) -> bytes | None:
    """The super block's bytes when the image ends with one, else None."""
    if capacity < pix.SUPER_SIZE:
        return None
    data = pread(capacity - pix.SUPER_SIZE, pix.SUPER_SIZE)
    return data if pix.has_magic(data) else None


class PathIndex:
    """Lookups and listings of one image's path index. Not thread-safe."""

    def __init__(self, pread: Pread, capacity: int, sup: pix.Super, *, pack_start: int,
                 cache_nodes: int = DEFAULT_CACHE_NODES) -> None:
        self.pread = pread
        self.capacity = capacity
        self.sup = sup
        self.pack_start = pack_start
        self.cache_nodes = cache_nodes
        self._cache: OrderedDict[int, _Decoded] = OrderedDict()
        self.nodes_read = 0
        # The leaf of the last lookup and the bounds its descent checked:
        # lookups in path order (a walk, a directory's files) land in it.
        self._last: tuple[bytes, bytes | None, int, list[bytes], list[Any]] | None = None

    @classmethod
    def open(cls, pread: Pread, capacity: int, commit: bytes, *, pack_start: int,
             idx_offset: int, data: bytes | None = None,
             cache_nodes: int = DEFAULT_CACHE_NODES) -> "PathIndex | None":
        """The image's path index, None when it has none; DamagedImage when
        it has one that is damaged or bound to another image."""
        if data is None:
            data = probe(pread, capacity)
            if data is None:
                return None
        sup = pix.parse_super(data, capacity)
        where = f"{pix.REGION} super block at offset {capacity - pix.SUPER_SIZE}"
        if sup.commit != commit:
            raise DamagedImage(f"the path index is bound to commit {sup.commit.hex()}, "
                               f"the image holds {commit.hex()}", where)
        if not sup.pack_end + 20 < idx_offset < sup.region_start:
            raise DamagedImage(f"the path index's pack end {sup.pack_end} and region start "
                               f"{sup.region_start} do not surround the IDX at {idx_offset}",
                               where)
        trailer = pread(sup.pack_end, 20)
        if trailer != sup.pack_checksum:
            raise DamagedImage(f"the path index is bound to pack {sup.pack_checksum.hex()}, "
                               f"the image's PACK ends with {trailer.hex()}", where)
        return cls(pread, capacity, sup, pack_start=pack_start, cache_nodes=cache_nodes)

    # -- nodes ---------------------------------------------------------------

    def _decode(self, number: int, level: int, lo: bytes, hi: bytes | None) -> _Decoded:
        sup = self.sup
        if number == ROOT:
            count, body = pix.root_body(sup)
            where = f"{pix.REGION} super block's root"
        else:
            data = self.pread(sup.nodes_start + number * pix.NODE_SIZE, pix.NODE_SIZE)
            self.nodes_read += 1
            count, body = pix.check_node(data, sup, number, level)
            where = pix.node_where(sup, number)
        entries: list[pix.Entry] | list[tuple[bytes, int]]  # a leaf's, or (bound, child)
        if level == 0:
            entries = pix.decode_leaf(count, body, lo, hi, self.pack_start, sup.pack_end, where)
            if not entries and number != ROOT:
                raise DamagedImage("empty leaf", where)
        else:
            if level == 1:
                first, last = 0, sup.leaf_count
            else:
                first, last = sup.leaf_count, sup.node_count
            entries = pix.decode_internal(count, body, lo, hi, first, last, where)
        return [e[0] for e in entries], entries

    def _node(self, number: int, level: int, lo: bytes, hi: bytes | None) -> _Decoded:
        """(keys, entries) of a node, checked against the bounds [lo, hi)."""
        hit = self._cache.get(number)
        if hit is None:
            hit = self._decode(number, level, lo, hi)
            self._cache[number] = hit
            if len(self._cache) > self.cache_nodes:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(number)
            keys = hit[0]
            # Order inside the node was checked when decoding it; bounds
            # depend on the path taken, so check them again (first and last).
            bad = keys and (keys[0] < lo or (hi is not None and keys[-1] >= hi))
            if level and keys[0] != lo:
                bad = True
            if bad:
                raise DamagedImage("node is reached with bounds its keys break",
                                   pix.node_where(self.sup, number))
        return hit

    def _leaf_for(self, key: bytes) -> tuple[int, list[bytes], list[pix.Entry]]:
        """Descend from the root to the leaf whose range holds `key`."""
        last = self._last
        if last is not None and last[0] <= key and (last[1] is None or key < last[1]):
            return last[2], last[3], last[4]
        sup = self.sup
        level = sup.height
        number, lo, hi = ROOT, b"", None
        while True:
            if number == ROOT:
                keys, entries = self._root()
            else:
                keys, entries = self._node(number, level, lo, hi)
            if level == 0:
                self._last = (lo, hi, number, keys, entries)
                return number, keys, entries
            i = bisect_right(keys, key) - 1
            if i < 0:  # key sorts before every key: only below b"", impossible
                i = 0
            lo = keys[i]
            hi = keys[i + 1] if i + 1 < len(keys) else hi
            number = entries[i][1]
            level -= 1

    def _root(self) -> _Decoded:
        hit = self._cache.get(ROOT)
        if hit is None:
            hit = self._decode(ROOT, self.sup.height, b"", None)
            self._cache[ROOT] = hit  # may be evicted; re-decoding costs no read
        return hit

    # -- lookups ---------------------------------------------------------------

    def find(self, key: bytes) -> pix.Entry | None:
        """The entry of `key` (parent NUL name), or None."""
        _, keys, entries = self._leaf_for(key)
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return entries[i]
        return None

    def scan(self, prefix: bytes) -> Iterator[pix.Entry]:
        """Every entry whose key starts with `prefix`, in key order."""
        number, keys, entries = self._leaf_for(prefix)
        i = bisect_left(keys, prefix)
        last = None
        while True:
            for e in entries[i:]:
                if not e.key.startswith(prefix):
                    return
                yield e
                last = e.key
            number += 1
            if number == 0 or number >= self.sup.leaf_count:  # the root leaf, or the last
                return
            keys, entries = self._node(number, 0, b"", None)
            if last is not None and keys[0] <= last:
                raise DamagedImage("leaf does not continue its predecessor's keys",
                                   pix.node_where(self.sup, number))
            i = 0

    def listing(self, path: bytes) -> list[pix.Entry]:
        """A directory's entries (path without slashes around, b"" for the root)."""
        return list(self.scan(pix.dir_prefix(path)))
