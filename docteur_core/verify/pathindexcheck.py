"""The path index region (`format/pathindex.py`), when the image has one.

Before anything else, the image's last 4096 bytes are looked at: when they
are a path index super block, the checks of the original layout run on the
image up to the region's start (as if the region were not there), and the
region is checked last, every problem under its own name, "path index":

- quick and full: the super block (magic, version, CRC-32), its binding
  (the header's commit, the PACK's trailer and its position, the region's
  start at the end of the IDX padding), the padding before the pages, and
  the SHA-256 of the pages;
- full: every record reached from the root, against the tree it stands for
  in the pack: the same names, modes and order, each entry's IDX position
  holding its id, its pack offset the IDX's, each directory's reference a
  record of the tree its entry names; the pages referenced tile the pages
  area, and the counts of the super block (trees, paths, the root's
  entries) are the trees'. The records' meaning is checked, not their
  compressed bytes, so an image made with another zlib verifies.

An index of version 1 (every path stored again; readers do not use it and
walk the trees) is a warning: the image is sound, rebuilding it gives the
compact index.

`probe_path_index` is the first step of the check (it returns a `Probe`:
where the original layout ends), `check_path_index` the last.

Standard library only (it runs in the nbdkit plugin).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ..errors import DamagedImage
from ..format import idx as idxmod
from ..format import objects
from ..format import pathindex as pix
from .layoutcheck import Pread
from .locate import Located
from .report import R_PATH_INDEX, Report
from .state import CommitHead, Objects, at_offset

CHUNK = 1 << 20


@dataclass(frozen=True)
class Probe:
    """What the image's last bytes say of a path index region."""

    capacity: int  # where the original layout's checks stop: the region's start, if any
    super: pix.Super | None = None  # a sound super block: the region is checked last
    full_size: int = 0  # the image's size, region included


def probe_path_index(pread: Pread, capacity: int, report: Report) -> Probe:
    """Whether the image ends with a path index region, and where it starts."""
    cap = capacity
    if cap < pix.SUPER_SIZE + 512:
        return Probe(cap, None, cap)
    data = pread(cap - pix.SUPER_SIZE, pix.SUPER_SIZE)
    if not pix.has_magic(data):
        return Probe(cap, None, cap)
    report.check("path index")
    version = pix.version_of(data)
    if version == pix.LEGACY:
        start = struct.unpack_from("<Q", data, 100)[0]
        if 0 < start <= cap - pix.SUPER_SIZE and start % 512 == 0:
            report.warning(R_PATH_INDEX, at_offset(cap - pix.SUPER_SIZE),
                           "version 1 (every path stored again): readers do not use it "
                           "and walk the trees; `docteur make` again gives the compact "
                           "index")
            return Probe(start, None, cap)
    try:
        sup = pix.parse_super(data, cap)
    except DamagedImage as exc:
        report.problem(R_PATH_INDEX, str(exc.where or ""), exc.what)
        # Still keep the original layout's checks off the region: take
        # its start from the super block if it looks like one.
        start = struct.unpack_from("<Q", data, 100)[0]
        if 0 < start <= cap - pix.SUPER_SIZE and start % 512 == 0:
            return Probe(start, None, cap)
        return Probe(cap, None, cap)
    report.path_index = (sup.region_start, sup.nodes_start)
    return Probe(sup.region_start, sup, cap)


def check_path_index(pread: Pread, probe: Probe, located: Located, commit: CommitHead | None,
                     objects_: Objects | None, report: Report, max_paths: int) -> None:
    """The region (module docstring); against the trees when `objects_`
    (the full check's) are given."""
    if probe.super is not None:
        _PathIndexCheck(pread, located, commit, objects_, report, max_paths).run(
            probe.super, probe.full_size)


class _PathIndexCheck:
    """One check of the region found by `probe_path_index`."""

    def __init__(self, pread: Pread, located: Located, commit: CommitHead | None,
                 objects_: Objects | None, report: Report, max_paths: int) -> None:
        self.pread, self.located, self.commit = pread, located, commit
        self.objects, self.report, self.max_paths = objects_, report, max_paths
        self.commit_id, self.trailer_at = located.commit_id, located.trailer_at
        self.by_id: dict[bytes, int] = objects_.by_id if objects_ is not None else {}

    def problem(self, region: str, where: str, what: str) -> None:
        self.report.problem(region, where, what)

    def run(self, sup: pix.Super, full: int) -> None:
        where = at_offset(full - pix.SUPER_SIZE)
        if sup.commit != self.commit_id:
            self.problem(R_PATH_INDEX, where, f"bound to commit {sup.commit.hex()}, the header "
                         f"names {(self.commit_id or b'').hex()}")
        if self.trailer_at is not None and sup.pack_end != self.trailer_at:
            self.problem(R_PATH_INDEX, where, f"says the PACK ends at {sup.pack_end}, its "
                         f"trailer is at {self.trailer_at}")
        elif self.trailer_at is not None:
            trailer = self.pread(self.trailer_at, 20)
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
        pos, end = sup.nodes_start, full - pix.SUPER_SIZE
        while pos < end:
            data = self.pread(pos, min(CHUNK, end - pos))
            if not data:
                break
            digest.update(data)
            pos += len(data)
        digest.update(sup.inline)
        if digest.digest() != sup.digest:
            self.problem(R_PATH_INDEX, where, "the SHA-256 of the pages does not match the "
                         "super block's")
            return
        if self.objects is not None:
            self._compare_with_trees(sup, full, self.objects)

    def _pix_zero(self, start: int, end: int) -> None:
        pos = start
        while pos < end:
            data = self.pread(pos, min(CHUNK, end - pos))
            if not data:
                return
            if data.count(0) != len(data):
                first = pos + len(data) - len(data.lstrip(b"\0"))
                self.problem(R_PATH_INDEX, at_offset(first), "padding is not zero")
                return
            pos += len(data)

    def _compare_with_trees(self, sup: pix.Super, full: int, objects_: Objects) -> None:
        """Every record reached from the root against its tree (module docstring)."""
        if self.commit is None:
            return  # the commit's own problem is reported already
        try:
            commit = objects.parse_commit(self.commit.data, "commit")
        except DamagedImage:
            return
        if self.located.idx_bytes is None or self.trailer_at is None \
                or self.commit_id not in self.by_id:
            return  # the IDX's or the pack's own problems are reported already
        where = at_offset(full - pix.SUPER_SIZE)
        for name, oid, off in (("commit", self.commit_id, sup.commit_offset),
                               ("root tree", commit.tree, sup.tree_offset)):
            if self.by_id.get(oid) != off:
                self.problem(R_PATH_INDEX, where, f"says the {name} is at {off}, the IDX "
                             f"says {self.by_id.get(oid)}")
        if sup.tree != commit.tree:
            self.problem(R_PATH_INDEX, where, f"bound to tree {sup.tree.hex()}, the commit "
                         f"names {commit.tree.hex()}")
            return
        try:
            self._check_records(sup, full, commit.tree, objects_)
        except _Unchecked as exc:
            self.problem(R_PATH_INDEX, "", f"cannot be checked: {exc}")
        except _Differs as exc:
            self.problem(R_PATH_INDEX, exc.where, exc.what)

    def _check_records(self, sup: pix.Super, full: int, root: bytes,
                       objects_: Objects) -> None:
        area = full - pix.SUPER_SIZE - sup.nodes_start
        pack_start = 28 + 12
        names = self.located.idx_bytes
        assert names is not None  # the records are compared once the IDX is read
        count = self.located.idx_count or 0
        by_id = self.by_id
        pages: dict[tuple[int, int], bytes] = {}

        def page_of(ref: pix.Ref) -> bytes:
            key = (ref.page, ref.length)
            raw = pages.get(key)
            if raw is None:
                if len(pages) > 64 or sum(map(len, pages.values())) > 64 << 20:
                    held.update(pages)  # the tiling is checked from the keys
                    pages.clear()
                data = (sup.inline if ref.page == area
                        else self.pread(sup.nodes_start + ref.page, ref.length))
                raw = pix.inflate_page(data, page_where(ref))
                pages[key] = raw
            return raw

        def page_where(ref: pix.Ref) -> str:
            if ref.page == area:
                return "the super block's inline page"
            return at_offset(sup.nodes_start + ref.page)

        held: set[tuple[int, int]] = set()
        checked: dict[pix.Ref, bytes] = {}  # record -> the tree it was checked against
        paths: dict[bytes, int] = {}
        counts: dict[bytes, tuple[int, list[bytes]]] = {}  # trees being checked
        stack: list[tuple[bytes, pix.Ref, bool]] = [(root, sup.root_ref, False)]
        on_path: set[bytes] = set()
        root_count = None
        while stack:
            tid, ref, leaving = stack.pop()
            if leaving:
                on_path.discard(tid)
                if tid not in paths:
                    n, subdirs = counts.pop(tid)
                    paths[tid] = n + sum(paths[oid] for oid in subdirs)
                continue
            seen = checked.get(ref)
            if seen is not None:
                if seen != tid:
                    raise _Differs(page_where(ref), f"the record at {ref.inner} of this page "
                                   f"stands for tree {seen.hex()} and {tid.hex()}")
                continue
            if tid in on_path:
                raise _Unchecked(f"tree {tid.hex()} contains itself")
            entries = objects_.tree_entries(tid, self.max_paths)
            if entries is None:
                raise _Unchecked("the commit's trees are incomplete")
            try:
                rows = pix.decode_record(page_of(ref), ref.inner, ref, area, len(sup.inline),
                                         count, pack_start, sup.pack_end, page_where(ref))
            except DamagedImage as exc:
                raise _Differs(str(exc.where or ""), exc.what) from None
            checked[ref] = tid
            if root_count is None:
                root_count = len(entries)
            here = page_where(ref)
            if len(rows) != len(entries):
                raise _Differs(here, f"the record of tree {tid.hex()} has {len(rows)} "
                               f"entries, the tree {len(entries)}")
            stack.append((tid, ref, True))
            on_path.add(tid)
            counts[tid] = (len(entries), [oid for mode, oid, _ in entries
                                          if mode == objects.MODE_DIR])
            for row, (mode, oid, name) in zip(rows, entries):
                what = None
                if row.name != name or row.mode != mode:
                    what = f"names {row.name!r} ({row.mode:o}), the tree {name!r} ({mode:o})"
                elif mode == objects.MODE_GITLINK:
                    if row.gitlink != oid:
                        shown = (row.gitlink or b"").hex()
                        what = f"{name!r}: submodule {shown}, the tree {oid.hex()}"
                else:
                    at = idxmod.HEAD_SIZE + 20 * row.position
                    if names[at:at + 20] != oid:
                        what = f"{name!r}: IDX position {row.position} is not {oid.hex()}"
                    elif by_id.get(oid) != row.offset:
                        what = (f"{name!r}: offset {row.offset}, the IDX says "
                                f"{by_id.get(oid)}")
                if what is not None:
                    raise _Differs(here, f"the record of tree {tid.hex()} {what}")
                if mode == objects.MODE_DIR and oid not in paths:
                    stack.append((oid, row.ref, False))
                elif mode == objects.MODE_DIR:
                    # Its tree is checked; its record must be the one checked.
                    if checked.get(row.ref) != oid:
                        stack.append((oid, row.ref, False))
        held.update(pages)
        _check_tiling(sup, area, held)
        where = at_offset(full - pix.SUPER_SIZE)
        for counted, have, want in (("trees", sup.records, len(checked)),
                                 ("paths", sup.paths, min(paths[root], (1 << 64) - 1)),
                                 ("root's entries", sup.root_count, root_count)):
            if have != want:
                raise _Differs(where, f"says {have} {counted}, the trees give {want}")


def _check_tiling(sup: pix.Super, area: int, held: set[tuple[int, int]]) -> None:
    """The pages the records referenced, (offset, length) each, tile the pages area."""
    pos = 0
    for page, length in sorted(held):
        if page == area:
            continue  # the super block's inline page
        if page != pos:
            raise _Differs(at_offset(sup.nodes_start + min(page, pos)),
                           "the pages referenced do not tile the pages area")
        pos = page + length
    if pos != area:
        raise _Differs(at_offset(sup.nodes_start + pos),
                       "bytes after the last page referenced")


class _Unchecked(Exception):
    """The region cannot be checked against the trees (the message says why)."""


class _Differs(Exception):
    """The region says something the trees and the IDX do not."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(what)
        self.where, self.what = where, what
