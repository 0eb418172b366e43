"""The path index region (`format/pathindex.py`), when the image has one.

Before anything else, the image's last 4096 bytes are looked at: when they
are a path index super block, the checks of the original layout run on the
image up to the region's start (as if the region were not there), and the
region is checked last, every problem under its own name, "path index":

- quick and full: the super block (magic, version, CRC-32), its binding
  (the header's commit, the PACK's trailer and its position, the region's
  start at the end of the IDX padding), the padding before the nodes, every
  node's CRC-32 and the SHA-256 of all nodes;
- full: the region rebuilt from the tree walk and the IDX (every path's
  mode, id, pack offset and size) must equal the stored one byte for byte;
  the first node that differs is named.

Standard library only (it runs in the nbdkit plugin).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator
from heapq import heappop, heappush
from itertools import chain
from operator import itemgetter

from ..errors import DamagedImage
from ..format import objects
from ..format import pathindex as pix
from ..format.layout import Pread
from .report import R_PATH_INDEX
from .state import State, at_offset

CHUNK = 1 << 20


class PathIndexCheck(State):
    """Finds the region first (`_probe_path_index`), checks it last."""

    pix_super: pix.Super | None = None
    pix_full_size = 0  # the image's size with its path index, once one is found
    pix_damaged_super = False

    def _probe_path_index(self) -> None:
        cap = self.capacity
        if cap < pix.SUPER_SIZE + 512:
            return
        data = self.reader.pread(cap - pix.SUPER_SIZE, pix.SUPER_SIZE)
        if not pix.has_magic(data):
            return
        self.check("path index")
        self.pix_full_size = cap
        try:
            sup = pix.parse_super(data, cap)
        except DamagedImage as exc:
            self.problem(R_PATH_INDEX, str(exc.where or ""), exc.what)
            self.pix_damaged_super = True
            # Still keep the original layout's checks off the region: take
            # its start from the super block if it looks like one.
            start = struct.unpack_from("<Q", data, 100)[0]
            if 0 < start <= cap - pix.SUPER_SIZE and start % 512 == 0:
                self.capacity = start
            return
        self.pix_super = sup
        self.capacity = sup.region_start
        self.report.path_index = (sup.region_start, sup.nodes_start)

    def _check_path_index(self) -> None:
        sup = self.pix_super
        if sup is None:
            return
        full = self.pix_full_size
        where = at_offset(full - pix.SUPER_SIZE)
        if sup.commit != self.commit_id:
            self.problem(R_PATH_INDEX, where, f"bound to commit {sup.commit.hex()}, the header "
                         f"names {(self.commit_id or b'').hex()}")
        if self.trailer_at is not None and sup.pack_end != self.trailer_at:
            self.problem(R_PATH_INDEX, where, f"says the PACK ends at {sup.pack_end}, its "
                         f"trailer is at {self.trailer_at}")
        elif self.trailer_at is not None:
            trailer = self.reader.pread(self.trailer_at, 20)
            if trailer != sup.pack_checksum:
                self.problem(R_PATH_INDEX, where, f"bound to pack {sup.pack_checksum.hex()}, "
                             f"the PACK's trailer is {trailer.hex()}")
        sizes = self.report.block_sizes
        if sizes:
            fit = [b for b in sizes if (full - sup.region_start) % b == 0
                   and sup.nodes_start - sup.region_start < max(b, 1)]
            if not fit:
                self.problem(R_PATH_INDEX, at_offset(sup.region_start),
                             f"a region of {full - sup.region_start} bytes starting with "
                             f"{sup.nodes_start - sup.region_start} bytes of padding fits "
                             f"none of the block sizes {sizes}")
            self.report.block_sizes = fit
        self._pix_zero(sup.region_start, sup.nodes_start)
        digest = hashlib.sha256()
        bad_nodes = 0
        for n in range(sup.node_count):
            at = sup.nodes_start + n * pix.NODE_SIZE
            node = self.reader.pread(at, pix.NODE_SIZE)
            digest.update(node)
            if zlib.crc32(node[:pix.CRC_AT]) != struct.unpack_from("<I", node, pix.CRC_AT)[0]:
                bad_nodes += 1
                self.problem(R_PATH_INDEX, at_offset(at), f"node {n}: CRC-32 does not match")
        if digest.digest() != sup.digest and not bad_nodes:
            self.problem(R_PATH_INDEX, where, "the SHA-256 of the nodes does not match the "
                         "super block's")
        if not self.quick:
            self._compare_with_trees(sup, full)

    def _pix_zero(self, start: int, end: int) -> None:
        pos = start
        while pos < end:
            data = self.reader.pread(pos, min(CHUNK, end - pos))
            if not data:
                return
            if data.count(0) != len(data):
                first = pos + len(data) - len(data.lstrip(b"\0"))
                self.problem(R_PATH_INDEX, at_offset(first), "padding is not zero")
                return
            pos += len(data)

    def _expected_entries(self, root: bytes) -> Iterator[list[tuple[bytes, int, bytes, int, int]]]:
        """Every path under the commit's tree, sorted by key, a directory's
        worth at a time (chained by the caller: one resumption per directory,
        not per path), from the scan's trees and offsets.

        As tuples in `pix.Entry`'s field order, which `pix.RegionEncoder`
        takes, one directory at a time: directories come out of a heap in
        the order of their paths (a directory's path is above its parent's,
        so the smallest one left is always in the heap), which is the order
        of the keys (parent NUL name), and each directory's entries sorted
        by name. Memory is the directories waiting, not every path.
        Raises _Unchecked when the trees are not all there.
        """
        by_id, sizes, counts = self.by_id, self.blob_sizes, self.tree_counts
        entries_of = self._tree_entries
        mode_dir, mode_gitlink = objects.MODE_DIR, objects.MODE_GITLINK
        by_name = itemgetter(2)
        waiting = [(b"", root)]
        left = self.max_paths
        while waiting:
            path, tid = heappop(waiting)
            entries = entries_of(tid)
            if entries is None:
                raise _Unchecked(_INCOMPLETE)
            left -= len(entries)
            if left < 0:
                raise _Unchecked(f"the trees name more than {self.max_paths} paths "
                                 "(max_paths)")
            prefix = path + b"\0"
            entries = sorted(entries, key=by_name)
            modes, oids, names = zip(*entries) if entries else ((), (), ())
            if mode_dir not in modes and mode_gitlink not in modes:
                # Files only (the bulk): the tuples built in C-speed passes.
                offs = list(map(by_id.get, oids))
                blob_sizes = list(map(sizes.get, oids))
                if None in offs or None in blob_sizes:
                    raise _Unchecked(_INCOMPLETE)
                # (no None among them, just checked: mypy cannot narrow a list)
                yield list(zip(map(prefix.__add__, names), modes, oids,
                               offs, blob_sizes))  # type: ignore[arg-type]
                continue
            out: list[tuple[bytes, int, bytes, int, int]] = []
            append = out.append
            for mode, oid, name in entries:
                if mode == mode_gitlink:
                    append((prefix + name, mode, oid, 0, 0))
                    continue
                off = by_id.get(oid)
                if off is None:
                    raise _Unchecked(_INCOMPLETE)
                if mode == mode_dir:
                    count = counts.get(oid)
                    if count is None:
                        raise _Unchecked(_INCOMPLETE)
                    append((prefix + name, mode, oid, off, count))
                    heappush(waiting, (path + b"/" + name if path else name, oid))
                else:
                    size = sizes.get(oid)
                    if size is None:
                        raise _Unchecked(_INCOMPLETE)
                    append((prefix + name, mode, oid, off, size))
            yield out

    def _compare_with_trees(self, sup: pix.Super, full: int) -> None:
        """The region rebuilt from the walk, a node at a time, against the stored one."""
        if self.commit_data is None:
            return  # the commit's own problem is reported already
        try:
            commit = objects.parse_commit(self.commit_data, "commit")
        except DamagedImage:
            return
        trailer = self.trailer_at
        if commit.tree not in self.by_id:
            self.problem(R_PATH_INDEX, "", f"cannot be checked: {_INCOMPLETE}")
            return
        if trailer is None or self.commit_id not in self.by_id:
            return
        root_entries = self._tree_entries(commit.tree)
        if root_entries is None:
            self.problem(R_PATH_INDEX, "", f"cannot be checked: {_INCOMPLETE}")
            return
        enc = pix.RegionEncoder(
            chain.from_iterable(self._expected_entries(commit.tree)), commit=self.commit_id,
            pack_checksum=self.reader.pread(trailer, 20), tree=commit.tree,
            commit_offset=self.by_id[self.commit_id], tree_offset=self.by_id[commit.tree],
            pack_end=trailer, region_start=sup.region_start, root_count=len(root_entries),
            # The region's length as the block size: the leading padding then
            # comes out as stored when the nodes are as many.
            block_size=full - sup.region_start)
        stored = _StoredNodes(self.reader.pread, sup)
        made = 0
        # (absolute offset, node number or None: the super block) of the first difference
        differs: tuple[int, int | None] | None = None
        try:
            for node in enc.nodes():
                if differs is None and made < sup.node_count:
                    have = stored.node(made)
                    if have != node:
                        i = next(i for i in range(pix.NODE_SIZE) if have[i] != node[i])
                        differs = (sup.nodes_start + made * pix.NODE_SIZE + i, made)
                made += 1
        except _Unchecked as exc:
            self.problem(R_PATH_INDEX, "", f"cannot be checked: {exc}")
            return
        except ValueError as exc:
            self.problem(R_PATH_INDEX, "", f"cannot be rebuilt: {exc}")
            return
        start = sup.region_start
        have_len = full - start
        want_len = enc.lead + (made + 1) * pix.NODE_SIZE
        if want_len != have_len:
            self.problem(R_PATH_INDEX, at_offset(start),
                         f"holds {have_len} bytes, the tree walk gives {want_len}: "
                         f"{sup.paths} paths indexed, {enc.paths} in the trees")
            return
        if differs is None:
            have = self.reader.pread(full - pix.SUPER_SIZE, pix.SUPER_SIZE)
            want = enc.super_block
            if have != want:
                i = next(i for i in range(pix.SUPER_SIZE) if have[i] != want[i])
                differs = (full - pix.SUPER_SIZE + i, None)
        if differs is not None:
            at, number = differs
            what = "the super block" if number is None else f"node {number}"
            self.problem(R_PATH_INDEX, at_offset(at),
                         f"{what} differs from the index the tree walk and the IDX give")


_INCOMPLETE = "the commit's trees are incomplete"


class _Unchecked(Exception):
    """The region cannot be rebuilt from the trees (the message says why)."""


class _StoredNodes:
    """The stored nodes, read a CHUNK at a time as the comparison goes."""

    def __init__(self, pread: Pread, sup: pix.Super) -> None:
        self.pread = pread
        self.sup = sup
        self.first = 0
        self.data = b""

    def node(self, n: int) -> bytes:
        per = CHUNK // pix.NODE_SIZE
        if not self.first <= n < self.first + len(self.data) // pix.NODE_SIZE:
            self.first = n
            count = min(per, self.sup.node_count - n)
            self.data = self.pread(self.sup.nodes_start + n * pix.NODE_SIZE,
                                   count * pix.NODE_SIZE)
        at = (n - self.first) * pix.NODE_SIZE
        return self.data[at:at + pix.NODE_SIZE]
