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

from ..errors import DamagedImage
from ..format import objects, pack
from ..format import pathindex as pix
from .report import R_PATH_INDEX
from .state import State, at_offset

CHUNK = 1 << 20


class PathIndexCheck(State):
    """Finds the region first (`_probe_path_index`), checks it last."""

    pix_super: pix.Super | None = None
    pix_full_size: int | None = None
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
            self.problem(R_PATH_INDEX, exc.where or "", exc.what)
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

    def _expected_entries(self, root: bytes) -> tuple[list[tuple], int] | None:
        """Every path under the commit's tree, from the scan's trees and offsets.

        As tuples in `pix.Entry`'s field order, which `pix.encode` takes:
        one object less per path than an `Entry`, on the path of every verify.
        """
        by_id, sizes = self.by_id, self.blob_sizes
        entries_of = self._tree_entries  # parsed as met, held while on the stack
        root_entries = entries_of(root)
        if root_entries is None:
            return None
        out: list[tuple] = []
        append = out.append
        stack = [(b"", root_entries)]
        seen_paths = 0
        mode_dir, mode_gitlink = objects.MODE_DIR, objects.MODE_GITLINK
        while stack:
            path, entries = stack.pop()
            seen_paths += len(entries)
            if seen_paths > 50_000_000:
                return None
            prefix = path + b"\0"
            for mode, oid, name in entries:
                if mode == mode_gitlink:
                    append((prefix + name, mode, oid, 0, 0))
                    continue
                off = by_id.get(oid)
                if off is None:
                    return None
                if mode == mode_dir:
                    sub = entries_of(oid)
                    if sub is None:
                        return None
                    append((prefix + name, mode, oid, off, len(sub)))
                    stack.append((path + b"/" + name if path else name, sub))
                else:
                    size = sizes.get(oid)
                    if size is None:
                        return None
                    append((prefix + name, mode, oid, off, size))
        return out, len(root_entries)

    def _compare_with_trees(self, sup: pix.Super, full: int) -> None:
        if self.commit_data is None:
            return  # the commit's own problem is reported already
        try:
            commit = objects.parse_commit(self.commit_data, "commit")
        except DamagedImage:
            return
        found = self._expected_entries(commit.tree)
        if found is None:
            self.problem(R_PATH_INDEX, "", "cannot be checked: the commit's trees are "
                         "incomplete")
            return
        entries, root_count = found
        trailer = self.trailer_at
        if trailer is None or commit.tree not in self.by_id or self.commit_id not in self.by_id:
            return
        try:
            want = pix.encode(entries, commit=self.commit_id, pack_checksum=self.reader.pread(
                trailer, 20), tree=commit.tree, commit_offset=self.by_id[self.commit_id],
                tree_offset=self.by_id[commit.tree], pack_end=trailer,
                region_start=sup.region_start, root_count=root_count,
                block_size=full - sup.region_start)
        except ValueError as exc:
            self.problem(R_PATH_INDEX, "", f"cannot be rebuilt: {exc}")
            return
        # `block_size` above is the region's length: the leading padding
        # then comes out as stored when the nodes are the same.
        start = sup.region_start
        have_len = full - start
        if len(want) != have_len:
            self.problem(R_PATH_INDEX, at_offset(start),
                         f"holds {have_len} bytes, the tree walk gives {len(want)}: "
                         f"{sup.paths} paths indexed, {len(entries)} in the trees")
            return
        pos = 0
        while pos < have_len:
            n = min(CHUNK, have_len - pos)
            have = self.reader.pread(start + pos, n)
            if have != want[pos:pos + n]:
                i = next(i for i in range(n) if have[i:i + 1] != want[pos + i:pos + i + 1])
                at = start + pos + i
                node = (at - sup.nodes_start) // pix.NODE_SIZE
                what = "the super block" if at >= full - pix.SUPER_SIZE else \
                    "the padding" if at < sup.nodes_start else f"node {node}"
                self.problem(R_PATH_INDEX, at_offset(at),
                             f"{what} differs from the index the tree walk and the IDX give")
                return
            pos += n
