"""Where the regions are: the IDX head and tables, the PACK header, the trailer.

Nothing about an image can be taken on trust, not even where its parts
are. The IDX is read first because its offsets and its copy of the pack
checksum locate everything else; when the object counts of the PACK
header and the IDX disagree, or the header points to the wrong place,
the layout that holds up (checksums, padding) decides which one lies.

`locate`, `locate_trailer` and (after the scan, when the header's IDX
offset was unusable) `find_lost_idx` each return what is found as a
`Located`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from dataclasses import dataclass

from ..format import idx as idxmod
from ..format import layout
from .layoutcheck import Header, Pread
from .report import R_HEADER, R_IDX_FANOUT, R_IDX_HEADER, R_IMAGE, R_PACK_HEADER, Report
from .state import at_offset
from .stream import read_span


@dataclass(frozen=True)
class Located:
    """Where the regions are, as far as they could be found.

    Offsets are absolute image offsets (the PACK starts at 28).
    """

    commit_id: bytes
    header_idx_offset: int  # as the header says, even if wrong
    idx_offset: int | None = None  # where the IDX really is, once found
    idx: idxmod.Idx | None = None
    idx_bytes: bytes | None = None  # the whole IDX, read once
    idx_end: int | None = None
    idx_count: int | None = None
    pack_count: int | None = None
    pack_ok: bool = False  # the PACK header looked like a PACK header
    trailer_at: int | None = None  # absolute offset of the pack trailer
    trailer_guessed: bool = False  # found by its position, not by the IDX's copy
    trailer_why: str = ""  # why it is not where the layout puts it (layout.py's words)


def locate(pread: Pread, capacity: int, header: Header, report: Report,
           quick: bool) -> Located:
    """The IDX and the PACK header: the counts, and the IDX's tables sized by them."""
    loc = _Locator(pread, capacity, report, quick,
                   Located(header.commit_id, header.idx_offset, idx_offset=header.idx_at))
    loc.load_idx()
    loc.check_pack_header()
    return loc.located()


def locate_trailer(pread: Pread, capacity: int, located: Located, report: Report) -> Located:
    """The pack's end: where its trailer is (or why it is not where it should be)."""
    loc = _Locator(pread, capacity, report, False, located)
    loc.locate_trailer()
    return loc.located()


def find_lost_idx(pread: Pread, capacity: int, located: Located, report: Report) -> Located:
    """If the header's IDX offset was unusable, look where the layout puts it
    (after a complete scan: the pack's end is then known)."""
    if located.idx is not None:
        return located
    loc = _Locator(pread, capacity, report, False, located)
    loc.find_lost_idx()
    return loc.located()


class _Locator:
    """The search itself: `Located`'s fields, filled in as they are found."""

    def __init__(self, pread: Pread, capacity: int, report: Report, quick: bool,
                 start: Located) -> None:
        self.pread, self.capacity, self.report, self.quick = pread, capacity, report, quick
        self.commit_id = start.commit_id
        self.header_idx_offset = start.header_idx_offset
        self.idx_offset = start.idx_offset
        self.idx = start.idx
        self.idx_bytes = start.idx_bytes
        self.idx_end = start.idx_end
        self.idx_count = start.idx_count
        self.pack_count = start.pack_count
        self.pack_ok = start.pack_ok
        self.trailer_at = start.trailer_at
        self.trailer_guessed = start.trailer_guessed
        self.trailer_why = start.trailer_why

    def located(self) -> Located:
        return Located(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Located)})

    def _read(self, offset: int, length: int) -> bytes:
        return read_span(self.pread, self.capacity, offset, length)

    def problem(self, region: str, where: str, what: str) -> None:
        self.report.problem(region, where, what)

    def check(self, name: str) -> None:
        self.report.check(name)

    def load_idx(self, at: int | None = None, quiet: bool = False) -> None:
        """Read the IDX head and tables at `at` (default: where the header says)."""
        base = self.idx_offset if at is None else at
        if base is None:
            return
        self.check("idx-header")
        head = self.pread(base, idxmod.HEAD_SIZE)
        if len(head) < idxmod.HEAD_SIZE:
            if not quiet:
                self.problem(R_IDX_HEADER, at_offset(base), "IDX header is truncated")
            return
        where = at_offset(base)
        sig_ok = head[:4] == layout.IDX_SIGNATURE
        (version,) = struct.unpack_from(">I", head, 4)
        if quiet and not sig_ok:
            return
        if not sig_ok and version != layout.IDX_VERSION and at is None:
            # Nothing there looks like an IDX: the header's offset is what is wrong.
            self.problem(R_HEADER, at_offset(20), f"IDX offset {base} does not point at an IDX "
                         "(no IDX signature or version there)")
            self.idx_offset = None
            return
        if not sig_ok:
            self.problem(R_IDX_HEADER, where, f"bad IDX signature {bytes(head[:4])!r}")
        if version != layout.IDX_VERSION:
            self.problem(R_IDX_HEADER, at_offset(base + 4), f"unsupported IDX version {version}")
            if not sig_ok:
                return  # nothing there looks like an IDX
        fanout = struct.unpack_from(">256I", head, layout.IDX_HEADER_SIZE)
        self.check("idx-fanout")
        # Compare each entry with the one before it only: one damaged entry
        # then makes one or two reports, not one for every entry after it.
        previous = 0
        for b, value in enumerate(fanout):
            if value < previous:
                self.problem(R_IDX_FANOUT, at_offset(base + layout.IDX_HEADER_SIZE + 4 * b),
                             f"IDX fanout decreases at entry {b} ({previous} then {value})")
            previous = value
        self.idx_offset = base
        self.idx = idxmod.Idx(base, fanout)
        self.idx_count = fanout[255]

    def _idx_tables(self, count: int) -> bool:
        """Read the IDX for `count` objects; set idx_bytes/idx_end. False if it does not fit."""
        base = self.idx_offset
        assert base is not None
        main = idxmod.HEAD_SIZE + 28 * count
        if base + main + 2 * layout.SHA1_SIZE > self.capacity:
            return False
        data = self._read(base, main)
        if len(data) < main:
            return False
        offsets = data[idxmod.HEAD_SIZE + 24 * count:main]
        large = 0
        if count and max(offsets[0::4]) & 0x80:
            large = sum(1 for b in offsets[0::4] if b & 0x80)
        total = main + 8 * large + 2 * layout.SHA1_SIZE
        if base + total > self.capacity:
            return False
        data += self._read(base + main, total - main)
        if len(data) < total:
            return False
        self.idx_bytes = data
        self.idx_end = base + total
        return True

    def check_pack_header(self) -> None:
        self.check("pack-header")
        raw = self.pread(layout.PACK_OFFSET, layout.PACK_HEADER_SIZE)
        sig_ok = raw[:4] == layout.PACK_SIGNATURE
        (version, count) = struct.unpack_from(">II", raw, 4)
        if not sig_ok:
            self.problem(R_PACK_HEADER, at_offset(layout.PACK_OFFSET),
                         f"bad PACK signature {bytes(raw[:4])!r}")
        if version != layout.PACK_VERSION:
            self.problem(R_PACK_HEADER, at_offset(layout.PACK_OFFSET + 4),
                         f"unsupported PACK version {version}")
        self.pack_ok = sig_ok or version == layout.PACK_VERSION
        self.pack_count = count
        # Now that both counts are known, size the IDX.
        if self.idx is not None:
            self._size_idx()

    def _size_idx(self) -> None:
        """Pick the object count that lays the IDX out, and blame a mismatch.

        The fanout's last entry and the PACK header both give the count. When
        they differ, the right one is the one whose tables hold up: the IDX's
        own SHA-1 matches, its copy of the pack checksum sits just before the
        IDX, its end leaves a block's worth of padding at most.
        """
        n_idx, n_pack, base = self.idx_count, self.pack_count, self.idx_offset
        assert n_idx is not None and base is not None  # called once the IDX is loaded
        candidates = [n_idx] if n_pack is None or n_pack == n_idx else [n_idx, n_pack]
        best = None
        for n in candidates:
            if not self._idx_tables(n):
                continue
            data, end = self.idx_bytes, self.idx_end
            assert data is not None and end is not None  # what _idx_tables sets
            own_ok = hashlib.sha1(memoryview(data)[:-20]).digest() == data[-20:]
            copy_found = layout.locate_pack_trailer(
                self._read, base, self.capacity, data[-40:-20])[0] is not None
            largest = layout.largest_block_size(base, self.capacity)
            fits = 1 <= self.capacity - end <= largest
            score = (own_ok, copy_found, fits, n == n_idx)
            if best is None or score > best[0]:
                best = (score, n)
        fanout_at = at_offset(base + layout.IDX_HEADER_SIZE + 4 * 255)
        if best is None:
            if n_idx == n_pack:
                need = base + idxmod.HEAD_SIZE + 28 * n_idx + 2 * layout.SHA1_SIZE
                self.problem(R_IMAGE, at_offset(self.capacity),
                             f"image is truncated: its IDX of {n_idx} objects needs at least "
                             f"{need} bytes, the image has {self.capacity}")
            else:
                self.problem(R_IDX_FANOUT, fanout_at,
                             f"IDX announces {n_idx} objects, more than the image can hold "
                             "(damaged fanout or truncated image)")
            self.idx_bytes = self.idx_end = None
            return
        n = best[1]
        self._idx_tables(n)
        if n != n_idx:
            self.problem(R_IDX_FANOUT, fanout_at,
                         f"IDX fanout announces {n_idx} objects, its tables and the PACK "
                         f"header say {n}")
            self.idx_count = n
        elif n_pack is not None and n_pack != n and self.quick:
            self.problem(R_PACK_HEADER, at_offset(layout.PACK_OFFSET + 8),
                         f"PACK header announces {n_pack} objects, the IDX lists {n}")

    def locate_trailer(self) -> None:
        """Find the pack's 20-byte trailer: the IDX's copy of it, just before the IDX."""
        if self.idx_bytes is None or self.idx_offset is None:
            return
        copy = self.idx_bytes[-40:-20]
        end = self.idx_offset
        pack_end, why = layout.locate_pack_trailer(self._read, end, self.capacity, copy)
        if pack_end is not None:
            self.trailer_at = pack_end - layout.SHA1_SIZE
            return
        self.trailer_why = why
        # Not right before the padding. Bounded by the block size: the pack
        # ends at most one block before the IDX.
        lo = layout.pack_tail_start(end, self.capacity)
        last = layout.last_nonzero(self._read, lo, end)
        if last is None:
            return
        start = max(lo, last + 1 - (8 << 20))
        at = self._read(start, last + 1 - start).rfind(copy)
        if at >= 0:  # the trailer is intact, the padding after it is not zeros
            self.trailer_at = start + at
            return
        # The trailer or the copy is damaged: the trailer ends at the last
        # non-zero byte before the padding (unless its own last bytes are zero,
        # which the copy tells).
        zeros = len(copy) - len(copy.rstrip(b"\0"))
        cand = last + 1 + zeros - layout.SHA1_SIZE
        if cand + layout.SHA1_SIZE > end:
            cand = last + 1 - layout.SHA1_SIZE
        if cand >= layout.PACK_OFFSET + layout.PACK_HEADER_SIZE:
            self.trailer_at = cand
            self.trailer_guessed = True

    def find_lost_idx(self) -> None:
        """If the header's IDX offset was unusable, look where the layout puts it."""
        pack_end = (self.trailer_at or 0) + layout.SHA1_SIZE
        b = layout.MIN_BLOCK_SIZE
        while b <= layout.MAX_BLOCK_SIZE:
            cand = pack_end + layout.padding(pack_end, b)
            if cand + idxmod.HEAD_SIZE > self.capacity:
                break
            if cand + idxmod.HEAD_SIZE <= self.capacity:
                self.load_idx(cand, quiet=True)
                if self.idx is not None:
                    self.problem(R_HEADER, at_offset(20), f"the header puts the IDX at offset "
                                 f"{self.header_idx_offset}, it is at offset {cand}")
                    self._size_idx()
                    return
            b *= 2
