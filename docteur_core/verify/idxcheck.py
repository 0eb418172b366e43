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
from .locate import Located
from .report import (R_DELTA_DATA, R_IDX_CHECKSUMS, R_IDX_CRCS, R_IDX_FANOUT, R_IDX_HEADER,
                     R_IDX_IDS, R_IDX_OFFSETS, R_OBJ_DATA, R_OBJ_HEADER, Report)
from .state import Entries, at_offset, hex_id


def check_idx(located: Located, entries: Entries | None, pack_intact: bool,
              report: Report) -> None:
    """The IDX's own checksum and order, then (full check: `entries`, the
    scan's) every entry against the pack."""
    data = located.idx_bytes
    if data is None:
        if located.idx_offset is not None and located.idx is not None:
            return  # already reported
        if located.idx is None:
            report.problem(R_IDX_HEADER, "", "no IDX found: it was not checked")
        return
    base, count, end, idx = located.idx_offset, located.idx_count, located.idx_end, located.idx
    # locate sets them all with the bytes
    assert base is not None and count is not None and end is not None and idx is not None
    problem = report.problem
    report.check("idx-checksum")
    own = hashlib.sha1(memoryview(data)[:-20]).digest()
    if own != data[-20:]:
        problem(R_IDX_CHECKSUMS, at_offset(end - 20),
                f"the IDX's SHA-1 is {hex_id(own)}, its trailer says {hex_id(data[-20:])}")
    names_at = idxmod.HEAD_SIZE
    names = data[names_at:names_at + 20 * count]
    # Sorted ids and a fanout that counts them.
    report.check("idx-ids-sorted")
    in_order = _sorted_ids(names, count)
    prev = b""
    for i in range(0 if not in_order else count, count):
        name = names[20 * i:20 * i + 20]
        if name <= prev:
            problem(R_IDX_IDS, at_offset(base + names_at + 20 * i),
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
            problem(R_IDX_FANOUT, at_offset(base + layout.IDX_HEADER_SIZE + 4 * b),
                    f"IDX fanout entry {b} says {fanout[b]}, the ids say {total}")
    if entries is not None:
        _against_scan(data, base, count, names, in_order, entries, pack_intact, report)


def _against_scan(data: bytes, base: int, count: int, names: bytes, in_order: bool,
                  entries: Entries, pack_intact: bool, report: Report) -> None:
    """Every IDX entry against the scan's: offset, CRC-32, id (the Merkle
    check); and every entry of the pack listed."""
    problem = report.problem
    report.check("idx-offsets")
    report.check("idx-crcs")
    report.check("idx-matches-pack")
    names_at = idxmod.HEAD_SIZE
    crcs_at = names_at + 20 * count
    offs_at = crcs_at + 4 * count
    large_at = offs_at + 4 * count
    nlarge = (len(data) - large_at - 40) // 8
    # 4 bytes an entry (a tuple of ints is 40): they are the IDX check's peak.
    crcs = _u32_column(data, crcs_at, count)
    offs = _u32_column(data, offs_at, count)
    if in_order and _idx_matches_fast(entries, names, crcs, offs):
        return
    seen: set[int] = set()
    info = entries.info
    for i in range(count):
        v = offs[i]
        where_off = at_offset(base + offs_at + 4 * i)
        name = names[20 * i:20 * i + 20]
        if v & idxmod.LARGE_OFFSET_FLAG:
            k = v & ~idxmod.LARGE_OFFSET_FLAG
            if k >= nlarge:
                problem(R_IDX_OFFSETS, where_off,
                        f"64-bit offset index {k} of {hex_id(name)} is out of range")
                continue
            (rel,) = struct.unpack_from(">Q", data, large_at + 8 * k)
        else:
            rel = v
        pos = rel + layout.PACK_OFFSET
        if pos not in info and entries.lane_count and entries.lane_record(pos) is not None:
            # The fast lane took it: its id and CRC-32 were this row's.
            if pos in seen:
                problem(R_IDX_OFFSETS, where_off, f"IDX lists pack offset {rel} twice")
            seen.add(pos)
            continue
        if pos not in info and pos not in entries.damaged:
            problem(R_IDX_OFFSETS, where_off,
                    f"IDX puts {hex_id(name)} at pack offset {rel}, which is not the "
                    "start of an object")
            continue
        if pos in seen:
            problem(R_IDX_OFFSETS, where_off,
                    f"IDX lists pack offset {rel} twice")
            continue
        seen.add(pos)
        if pos in entries.damaged:
            continue  # its problem is already reported
        oid = entries.oid.get(pos)
        crc_ok = entries.crc.get(pos) == crcs[i]
        if oid is None:
            continue  # not rebuilt (reported elsewhere)
        if oid == name:
            if not crc_ok and not pack_intact:
                # The pack changed, yet the entry inflates to the same object:
                # bits zlib ignores (the last byte's padding) were flipped.
                kind = entries.info[pos][0]
                problem(R_DELTA_DATA if kind >= pack.OBJ_OFS_DELTA else R_OBJ_DATA,
                        at_offset(pos), "entry's bytes differ from the IDX CRC-32 "
                        f"{crcs[i]:08x} (they still inflate to {hex_id(oid)})")
            elif not crc_ok:
                problem(R_IDX_CRCS, at_offset(base + crcs_at + 4 * i),
                        f"IDX CRC-32 {crcs[i]:08x} of {hex_id(name)} differs from the "
                        f"entry's {entries.crc.get(pos, 0):08x}")
        elif crc_ok:
            problem(R_IDX_IDS, at_offset(base + names_at + 20 * i),
                    f"IDX lists {hex_id(name)} at pack offset {rel}, where the object's "
                    f"SHA-1 is {hex_id(oid)}")
        else:
            problem(R_OBJ_HEADER, at_offset(pos),
                    f"object hashes to {hex_id(oid)} but the IDX lists {hex_id(name)} "
                    "and its bytes do not match the IDX CRC-32: the entry is damaged")
    for pos in entries.starts:
        if pos not in seen:
            problem(R_IDX_OFFSETS, at_offset(pos),
                    f"object {hex_id(entries.oid.get(pos, b''))} "
                    "of the pack is not listed in the IDX")


def _idx_matches_fast(e: Entries, names: bytes, crcs: array[int], offs: array[int]) -> bool:
    """The common case in a few C-speed passes: every entry agrees with the pack.

    Every IDX entry's id and CRC must be what the scan computed at its
    offset. With the ids strictly sorted (the caller checks) the offsets
    are then distinct, and as many as the scanned objects: the same set.
    Looked up a slice of the IDX at a time rather than built into lists
    or dicts for the whole IDX (those were a peak of verify's memory).
    """
    count = len(offs)
    if e.damaged or (count and max(offs) & idxmod.LARGE_OFFSET_FLAG) \
            or count != len(e.starts) + e.lane_count \
            or count != len(e.oid) + e.lane_count:
        return False
    if e.lane_count:
        return _rest_matches(e, names, crcs)
    oid_at, crc_at = e.oid.get, e.crc.get
    for lo in range(0, count, _SLICE):
        hi = min(lo + _SLICE, count)
        positions = [v + layout.PACK_OFFSET for v in offs[lo:hi]]
        if b"".join(map(oid_at, positions, repeat(b"", hi - lo))) != names[20 * lo:20 * hi]:
            return False
        if list(map(crc_at, positions)) != crcs[lo:hi].tolist():
            return False
    return True


def _rest_matches(e: Entries, names: bytes, crcs: array[int]) -> bool:
    """`_idx_matches_fast` when the fast lane took most entries.

    Those agreed with their rows as they were scanned; the others
    (`starts`) are looked up: each at an IDX offset the lane did not
    take, with that row's id and CRC-32. With the counts equal, that
    is every row once.
    """
    offs, rows, lane = e.offsets, e.rows, e.lane_hlen
    assert rows is not None and lane is not None  # only called with a lane
    oid, crc = e.oid, e.crc
    for pos in e.starts:
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
