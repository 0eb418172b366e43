"""The IDX against what the scan saw in the pack.

Sorted ids and a fanout that counts them; then (full check) every offset
at an entry start, every CRC-32 equal to the entry's, and every id equal to
the SHA-1 of the object at its offset: the Merkle check. When the pack and
the IDX disagree, the CRC-32 tells which of the two is damaged.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from bisect import bisect_left
from itertools import repeat

from ..format import idx as idxmod
from ..format import layout, pack
from .report import (R_DELTA_DATA, R_IDX_CHECKSUMS, R_IDX_CRCS, R_IDX_FANOUT, R_IDX_HEADER,
                     R_IDX_IDS, R_IDX_OFFSETS, R_OBJ_DATA, R_OBJ_HEADER)
from .state import State, at_offset, hex_id


class IdxCheck(State):
    """The IDX's own checksum and order, then every entry against the scan."""

    def _check_idx(self) -> None:
        data = self.idx_bytes
        if data is None:
            if self.idx_offset is not None and self.idx is not None:
                return  # already reported
            if self.idx is None:
                self.problem(R_IDX_HEADER, "", "no IDX found: it was not checked")
            return
        base, count, end, idx = self.idx_offset, self.idx_count, self.idx_end, self.idx
        # _load_idx sets them all with the bytes
        assert base is not None and count is not None and end is not None and idx is not None
        self.check("idx-checksum")
        own = hashlib.sha1(memoryview(data)[:-20]).digest()
        if own != data[-20:]:
            self.problem(R_IDX_CHECKSUMS, at_offset(end - 20),
                         f"the IDX's SHA-1 is {hex_id(own)}, its trailer says {hex_id(data[-20:])}")
        names_at = idxmod.HEAD_SIZE
        names = data[names_at:names_at + 20 * count]
        # Sorted ids and a fanout that counts them.
        self.check("idx-ids-sorted")
        in_order = _sorted_ids(names, count)
        prev = b""
        for i in range(0 if not in_order else count, count):
            name = names[20 * i:20 * i + 20]
            if name <= prev:
                self.problem(R_IDX_IDS, at_offset(base + names_at + 20 * i),
                             f"IDX ids out of order at entry {i} "
                             f"({hex_id(name)} after {hex_id(prev)})")
            prev = name
        firsts = names[0::20]
        counts = [0] * 256
        for b in firsts:
            counts[b] += 1
        total = 0
        fanout = idx.fanout
        for b in range(256):
            total += counts[b]
            if fanout[b] != total and not (b == 255 and fanout[b] != count):
                self.problem(R_IDX_FANOUT, at_offset(base + layout.IDX_HEADER_SIZE + 4 * b),
                             f"IDX fanout entry {b} says {fanout[b]}, the ids say {total}")
        if self.quick:
            return
        self.check("idx-offsets")
        self.check("idx-crcs")
        self.check("idx-matches-pack")
        crcs_at = names_at + 20 * count
        offs_at = crcs_at + 4 * count
        large_at = offs_at + 4 * count
        nlarge = (len(data) - large_at - 40) // 8
        # 4 bytes an entry (a tuple of ints is 40): they are the IDX check's peak.
        crcs = _u32_column(data, crcs_at, count)
        offs = _u32_column(data, offs_at, count)
        if in_order and self._idx_matches_fast(names, crcs, offs):
            return
        seen: set[int] = set()
        info = self.info
        for i in range(count):
            v = offs[i]
            where_off = at_offset(base + offs_at + 4 * i)
            name = names[20 * i:20 * i + 20]
            if v & idxmod.LARGE_OFFSET_FLAG:
                k = v & ~idxmod.LARGE_OFFSET_FLAG
                if k >= nlarge:
                    self.problem(R_IDX_OFFSETS, where_off,
                                 f"64-bit offset index {k} of {hex_id(name)} is out of range")
                    continue
                (rel,) = struct.unpack_from(">Q", data, large_at + 8 * k)
            else:
                rel = v
            pos = rel + layout.PACK_OFFSET
            if pos not in info and self.lane_count and self._lane_info(pos) is not None:
                # The fast lane took it: its id and CRC-32 were this row's.
                if pos in seen:
                    self.problem(R_IDX_OFFSETS, where_off, f"IDX lists pack offset {rel} twice")
                seen.add(pos)
                continue
            if pos not in info and pos not in self.damaged:
                self.problem(R_IDX_OFFSETS, where_off,
                             f"IDX puts {hex_id(name)} at pack offset {rel}, which is not the "
                             "start of an object")
                continue
            if pos in seen:
                self.problem(R_IDX_OFFSETS, where_off,
                             f"IDX lists pack offset {rel} twice")
                continue
            seen.add(pos)
            if pos in self.damaged:
                continue  # its problem is already reported
            oid = self.oid.get(pos)
            crc_ok = self.crc.get(pos) == crcs[i]
            if oid is None:
                continue  # not rebuilt (reported elsewhere)
            if oid == name:
                if not crc_ok and not self.pack_intact:
                    # The pack changed, yet the entry inflates to the same object:
                    # bits zlib ignores (the last byte's padding) were flipped.
                    kind = self.info[pos][0]
                    self.problem(R_DELTA_DATA if kind >= pack.OBJ_OFS_DELTA else R_OBJ_DATA,
                                 at_offset(pos), "entry's bytes differ from the IDX CRC-32 "
                                 f"{crcs[i]:08x} (they still inflate to {hex_id(oid)})")
                elif not crc_ok:
                    self.problem(R_IDX_CRCS, at_offset(base + crcs_at + 4 * i),
                                 f"IDX CRC-32 {crcs[i]:08x} of {hex_id(name)} differs from the "
                                 f"entry's {self.crc.get(pos, 0):08x}")
            elif crc_ok:
                self.problem(R_IDX_IDS, at_offset(base + names_at + 20 * i),
                             f"IDX lists {hex_id(name)} at pack offset {rel}, where the object's "
                             f"SHA-1 is {hex_id(oid)}")
            else:
                self.problem(R_OBJ_HEADER, at_offset(pos),
                             f"object hashes to {hex_id(oid)} but the IDX lists {hex_id(name)} "
                             "and its bytes do not match the IDX CRC-32: the entry is damaged")
        for pos in self.starts:
            if pos not in seen:
                self.problem(R_IDX_OFFSETS, at_offset(pos),
                             f"object {hex_id(self.oid.get(pos, b''))} "
                             "of the pack is not listed in the IDX")

    def _idx_matches_fast(self, names: bytes, crcs: array[int], offs: array[int]) -> bool:
        """The common case in a few C-speed passes: every entry agrees with the pack.

        Every IDX entry's id and CRC must be what the scan computed at its
        offset. With the ids strictly sorted (the caller checks) the offsets
        are then distinct, and as many as the scanned objects: the same set.
        Looked up a slice of the IDX at a time rather than built into lists
        or dicts for the whole IDX (those were a peak of verify's memory).
        """
        count = len(offs)
        if self.damaged or (count and max(offs) & idxmod.LARGE_OFFSET_FLAG) \
                or count != len(self.starts) + self.lane_count \
                or count != len(self.oid) + self.lane_count:
            return False
        if self.lane_count:
            return self._rest_matches(names, crcs)
        oid_at, crc_at = self.oid.get, self.crc.get
        for lo in range(0, count, _SLICE):
            hi = min(lo + _SLICE, count)
            positions = [v + layout.PACK_OFFSET for v in offs[lo:hi]]
            if b"".join(map(oid_at, positions, repeat(b"", hi - lo))) != names[20 * lo:20 * hi]:
                return False
            if list(map(crc_at, positions)) != crcs[lo:hi].tolist():
                return False
        return True


    def _rest_matches(self, names: bytes, crcs: array[int]) -> bool:
        """`_idx_matches_fast` when the fast lane took most entries.

        Those agreed with their rows as they were scanned; the others
        (`starts`) are looked up: each at an IDX offset the lane did not
        take, with that row's id and CRC-32. With the counts equal, that
        is every row once.
        """
        offs, rows, lane = self.entry_offsets, self.entry_rows, self.lane_hlen
        assert rows is not None and lane is not None  # only called with a lane
        oid, crc = self.oid, self.crc
        for pos in self.starts:
            k = bisect_left(offs, pos)
            if k >= len(offs) or offs[k] != pos or lane[k]:
                return False
            r = rows[k]
            if oid.get(pos) != names[20 * r:20 * r + 20] or crc.get(pos) != crcs[r]:
                return False
        return True


# IDX entries compared at a time by `_idx_matches_fast`.
_SLICE = 4096


def _u32_column(data: bytes, at: int, count: int) -> array[int]:
    """`count` big-endian 32-bit numbers from `at`, as an array."""
    column = array("I", data[at:at + 4 * count])
    if sys.byteorder == "little":
        column.byteswap()
    return column


def _sorted_ids(names: bytes, count: int) -> bool:
    """Whether the IDX's ids are strictly increasing, a slice at a time."""
    prev = b""
    for lo in range(0, count, _SLICE):
        hi = min(lo + _SLICE, count)
        ids = [names[i:i + 20] for i in range(20 * lo, 20 * hi, 20)]
        if not (prev < ids[0] and all(map(bytes.__lt__, ids, ids[1:]))):
            return False
        prev = ids[-1]
    return True
