"""The pack index (.idx version 2) as pure functions.

    0      magic b"\\xfftOc", version 2
    8      fanout: 256 big-endian uint32, fanout[b] = ids whose first byte <= b
    1032   N sorted raw ids (20 bytes each)
           N CRC-32 of the packed entries
           N uint32 offsets; the high bit set means "index into the next table"
           K uint64 offsets for entries at 2 GiB and beyond
           20-byte SHA-1 of the pack, 20-byte SHA-1 of all the above

Lookups take a `pread(offset, length)` callable so that a binary search
reads only the sectors it touches: the IDX is never loaded whole.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..errors import DamagedImage
from .layout import FANOUT_SIZE, IDX_HEADER_SIZE, IDX_SIGNATURE, IDX_VERSION, SHA1_SIZE, Pread

HEAD_SIZE = IDX_HEADER_SIZE + FANOUT_SIZE
LARGE_OFFSET_FLAG = 0x80000000


class Idx:
    """Where each table of an IDX lives, given its absolute start `base`."""

    __slots__ = ("base", "fanout")

    def __init__(self, base: int, fanout: tuple[int, ...]) -> None:
        self.base = base
        self.fanout = fanout

    @property
    def count(self) -> int:
        return self.fanout[255]

    def name_at(self, i: int) -> int:
        return self.base + HEAD_SIZE + 20 * i

    def crc_at(self, i: int) -> int:
        return self.base + HEAD_SIZE + 20 * self.count + 4 * i

    def offset_at(self, i: int) -> int:
        return self.base + HEAD_SIZE + 24 * self.count + 4 * i

    def large_at(self, k: int) -> int:
        return self.base + HEAD_SIZE + 28 * self.count + 8 * k

    def trailer_at(self, large_count: int) -> int:
        """Offset of the pack checksum copy (the IDX's own checksum follows)."""
        return self.large_at(large_count)

    def size(self, large_count: int) -> int:
        return self.trailer_at(large_count) + 2 * SHA1_SIZE - self.base

    def min_size(self) -> int:
        return self.size(0)


def parse_head(data: bytes, base: int) -> Idx:
    """Check magic, version and fanout (the first 1032 bytes)."""
    where = f"IDX at offset {base}"
    if len(data) < HEAD_SIZE:
        raise DamagedImage("truncated IDX header", where)
    if data[:4] != IDX_SIGNATURE:
        raise DamagedImage(f"bad IDX signature {bytes(data[:4])!r}", where)
    (version,) = struct.unpack_from(">I", data, 4)
    if version != IDX_VERSION:
        raise DamagedImage(f"unsupported IDX version {version}", where)
    fanout = struct.unpack_from(">256I", data, IDX_HEADER_SIZE)
    previous = 0
    for b, value in enumerate(fanout):
        if value < previous:
            raise DamagedImage(f"IDX fanout is not monotonic at entry {b}",
                               f"offset {base + IDX_HEADER_SIZE + 4 * b}")
        previous = value
    return Idx(base, fanout)


def check_fits(idx: Idx, capacity: int) -> None:
    """The tables the fanout announces must fit in the device."""
    if idx.base + idx.min_size() > capacity:
        raise DamagedImage(
            f"IDX announces {idx.count} objects, more than the image can hold",
            f"IDX at offset {idx.base}")


def offset_of(pread: Pread, idx: Idx, i: int) -> int:
    """The pack offset of the i-th object (resolving 64-bit offsets)."""
    raw = pread(idx.offset_at(i), 4)
    if len(raw) != 4:
        raise DamagedImage("truncated IDX offset table", f"offset {idx.offset_at(i)}")
    value: int
    (value,) = struct.unpack(">I", raw)
    if not value & LARGE_OFFSET_FLAG:
        return value
    k = value & ~LARGE_OFFSET_FLAG
    if k >= idx.count:
        raise DamagedImage(f"64-bit offset index {k} out of range", f"offset {idx.offset_at(i)}")
    raw = pread(idx.large_at(k), 8)
    if len(raw) != 8:
        raise DamagedImage("truncated IDX 64-bit offset table", f"offset {idx.large_at(k)}")
    large: int = struct.unpack(">Q", raw)[0]
    return large


def find(pread: Pread, idx: Idx, oid: bytes) -> int | None:
    """Binary search for `oid`; return its index in the tables, or None."""
    first = oid[0]
    lo = idx.fanout[first - 1] if first else 0
    hi = idx.fanout[first]
    while lo < hi:
        mid = (lo + hi) // 2
        name = pread(idx.name_at(mid), 20)
        if len(name) != 20:
            raise DamagedImage("truncated IDX name table", f"offset {idx.name_at(mid)}")
        if name == oid:
            return mid
        if name < oid:
            lo = mid + 1
        else:
            hi = mid
    return None


def lookup(pread: Pread, idx: Idx, oid: bytes) -> int | None:
    """The pack offset of `oid`, or None when the IDX does not list it."""
    i = find(pread, idx, oid)
    return None if i is None else offset_of(pread, idx, i)


def encode_idx_v2(entries: list[tuple[bytes, int, int]], pack_checksum: bytes) -> bytes:
    """An .idx version 2 for (raw sha, offset, crc32) entries, in any order
    (the builder's; a reader never writes one, nor imports hashlib here)."""
    import hashlib

    entries = sorted(entries)
    fanout = [0] * 256
    for sha, _, _ in entries:
        fanout[sha[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    large: list[int] = []
    offsets = []
    for _, offset, _ in entries:
        if offset < LARGE_OFFSET_FLAG:
            offsets.append(offset)
        else:
            offsets.append(LARGE_OFFSET_FLAG | len(large))
            large.append(offset)
    parts = [
        b"\xfftOc", struct.pack(">I", 2), struct.pack(">256I", *fanout),
        b"".join(sha for sha, _, _ in entries),
        struct.pack(f">{len(entries)}I", *(crc for _, _, crc in entries)),
        struct.pack(f">{len(entries)}I", *offsets),
        struct.pack(f">{len(large)}Q", *large),
        pack_checksum,
    ]
    body = b"".join(parts)
    return body + hashlib.sha1(body).digest()


def encode_idx_columns(shas: bytes | bytearray, offsets: Sequence[int], crcs: Sequence[int],
                       pack_checksum: bytes) -> bytearray:
    """`encode_idx_v2` for entries held in columns: `shas` the raw ids one
    after the other (20 bytes each), `offsets` and `crcs` sequences of ints
    in the same order (arrays, for the builder's million-object packs: a
    list of one tuple an entry costs ten times their bytes). ValueError when
    an id is there twice. The same bytes as `encode_idx_v2`.

    The ids are sorted one fan-out bucket at a time, so only a bucket's sort
    keys exist at once; the result is a bytearray (no second copy made).
    """
    import hashlib
    from array import array

    n = len(shas) // SHA1_SIZE
    if len(shas) != n * SHA1_SIZE or len(offsets) != n or len(crcs) != n:
        raise ValueError("idx columns of different lengths")
    # Counting sort on the first byte: `order` holds each bucket's entries in turn.
    counts = [0] * 256
    for i in range(n):
        counts[shas[SHA1_SIZE * i]] += 1
    fanout = []
    total = 0
    for c in counts:
        total += c
        fanout.append(total)
    place = [end - c for end, c in zip(fanout, counts)]
    order = array("I", bytes(4 * n))
    for i in range(n):
        b = shas[SHA1_SIZE * i]
        order[place[b]] = i
        place[b] += 1
    names = bytearray()
    crc_out = array("I")
    off_out = array("I")
    large = array("Q")
    start = 0
    for end in fanout:
        bucket = sorted(order[start:end],
                        key=lambda i: shas[SHA1_SIZE * i:SHA1_SIZE * i + SHA1_SIZE])
        start = end
        prev: bytes | bytearray = b""
        for i in bucket:
            sha = shas[SHA1_SIZE * i:SHA1_SIZE * i + SHA1_SIZE]
            if sha == prev:
                raise ValueError(f"object {bytes(sha).hex()} is there twice")
            prev = sha
            names += sha
            crc_out.append(crcs[i])
            offset = offsets[i]
            if offset < LARGE_OFFSET_FLAG:
                off_out.append(offset)
            else:
                off_out.append(LARGE_OFFSET_FLAG | len(large))
                large.append(offset)
    del order
    for column in (crc_out, off_out, large):
        if struct.pack("=I", 1) != struct.pack(">I", 1):
            column.byteswap()  # to big-endian
    h = hashlib.sha1()
    out = bytearray()
    for part in (b"\xfftOc", struct.pack(">I", 2), struct.pack(">256I", *fanout), names,
                 crc_out.tobytes(), off_out.tobytes(), large.tobytes(), pack_checksum):
        out += part
    del names
    h.update(out)
    out += h.digest()
    return out
