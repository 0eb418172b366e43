"""What the plugin checks about an image before serving it, and what it learns.

The plugin must refuse a bad image before any client connects, and must
describe a good one (commit and root tree ids, where the zero padding is).
All of that comes from a few small reads, so it is done here as functions
over a `pread(offset, length)` callable and the image size: the plugin passes
a file descriptor's pread, tests can pass a byte string's slices.

Levels:
    none   the header only (the IDX offset must point inside the image)
    quick  the header, the IDX offset's alignment, PACK and IDX signatures
           and versions, the IDX's tables fit the image, the IDX's own
           checksum, the pack's trailing checksum against the IDX's copy,
           the padding is zeros, the header's commit is in the pack
    full   quick, then every object (docteur_core.verify)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Callable

from docteur_core import idx as idxmod
from docteur_core import layout, objects, pack
from docteur_core.errors import DamagedImage

Pread = Callable[[int, int], bytes]

LEVELS = ("none", "quick", "full")

# Extent types, as nbdkit numbers them (nbdkit.EXTENT_HOLE | EXTENT_ZERO).
EXTENT_DATA = 0
EXTENT_HOLE_ZERO = 3

# A commit is a few hundred bytes; a delta chain to it is never long.
MAX_DELTA_DEPTH = 64
MAX_COMMIT_SIZE = 1 << 20


@dataclass(frozen=True)
class ImageInfo:
    size: int
    commit_hex: str
    tree_hex: str | None  # None when the image was not looked into (level none)
    block_size: int  # largest power of two (512..65536) the layout is aligned to
    extents: tuple[tuple[int, int, int], ...]  # (start, end, type), covering [0, size)

    @property
    def description(self) -> str:
        tree = self.tree_hex or "not checked"
        return f"docteur image: commit {self.commit_hex} tree {tree}"


def _read(pread: Pread, offset: int, length: int, what: str) -> bytes:
    data = pread(offset, length)
    if len(data) != length:
        raise DamagedImage(f"image ends inside the {what}", f"offset {offset}")
    return data


def _first_nonzero(data: bytes) -> int:
    stripped = data.lstrip(b"\0")
    return len(data) - len(stripped) if stripped else -1


def _check_zeros(pread: Pread, start: int, end: int, what: str) -> None:
    pos = start
    while pos < end:
        n = min(end - pos, 1 << 20)
        chunk = _read(pread, pos, n, what)
        i = _first_nonzero(chunk)
        if i >= 0:
            raise DamagedImage(f"the {what} is not zeros", f"offset {pos + i}")
        pos += n


def inferred_block_size(idx_offset: int, size: int) -> int:
    """The layout pads both the pack and the IDX to the build's block size."""
    bs = layout.MAX_BLOCK_SIZE
    while bs > layout.MIN_BLOCK_SIZE and (idx_offset % bs or size % bs):
        bs //= 2
    return bs


def check_header(pread: Pread, size: int) -> layout.Header:
    head = pread(0, layout.HEADER_SIZE)
    header = layout.parse_header(head, capacity=size)
    if header.idx_offset % layout.MIN_BLOCK_SIZE:
        raise DamagedImage(
            f"IDX offset {header.idx_offset} is not aligned to {layout.MIN_BLOCK_SIZE} bytes",
            "offset 20")
    if size % layout.MIN_BLOCK_SIZE:
        raise DamagedImage(
            f"image size {size} is not a multiple of {layout.MIN_BLOCK_SIZE} bytes "
            "(truncated copy?)", f"offset {size}")
    return header


def read_object(pread: Pread, index: idxmod.Idx, pack_end: int, offset: int,
                depth: int = 0) -> tuple[int, bytes]:
    """(type, data) of the pack entry at absolute `offset`, resolving deltas."""
    where = f"offset {offset}"
    if depth > MAX_DELTA_DEPTH:
        raise DamagedImage("delta chain too long", where)
    if not layout.PACK_OFFSET + layout.PACK_HEADER_SIZE <= offset < pack_end:
        raise DamagedImage("object offset outside the pack", where)
    head = pread(offset, min(pack.MAX_ENTRY_HEADER, pack_end - offset))
    entry = pack.parse_entry_header(head, where, max_size=MAX_COMMIT_SIZE)
    data, _ = pack.inflate_from(pread, offset + entry.header_len, entry.size, pack_end, where)
    if entry.type in pack.BASE_TYPES:
        return entry.type, data
    if entry.type == pack.OBJ_OFS_DELTA:
        base_offset = offset - entry.base_distance
    else:
        rel = idxmod.lookup(pread, index, entry.base_id)
        if rel is None:
            raise DamagedImage(f"delta base {entry.base_id.hex()} is not in the IDX", where)
        base_offset = layout.PACK_OFFSET + rel
    base_type, base = read_object(pread, index, pack_end, base_offset, depth + 1)
    return base_type, pack.apply_delta(base, data, where, max_size=MAX_COMMIT_SIZE)


def check_image(pread: Pread, size: int, level: str = "quick") -> ImageInfo:
    """Check an image as `level` says; raise DamagedImage on the first problem.

    `full` is checked here like `quick`: the per-object verification is the
    caller's (it needs a block device, not a pread).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown check level {level!r}")
    header = check_header(pread, size)
    block_size = inferred_block_size(header.idx_offset, size)
    if level == "none":
        return ImageInfo(size, header.commit_hex, None, block_size, ((0, size, EXTENT_DATA),))

    count = pack.parse_pack_header(
        _read(pread, layout.PACK_OFFSET, layout.PACK_HEADER_SIZE, "PACK header"),
        f"PACK at offset {layout.PACK_OFFSET}")
    base = header.idx_offset
    index = idxmod.parse_head(_read(pread, base, idxmod.HEAD_SIZE, "IDX header"), base)
    idxmod.check_fits(index, size)
    if index.count != count:
        raise DamagedImage(f"the IDX lists {index.count} objects, the PACK holds {count}",
                           f"IDX at offset {base}")

    offsets = _read(pread, index.offset_at(0), 4 * index.count, "IDX offset table")
    large = sum(1 for (o,) in struct.iter_unpack(">I", offsets) if o & idxmod.LARGE_OFFSET_FLAG)
    idx_size = index.size(large)
    idx_end = base + idx_size
    if idx_end > size:
        raise DamagedImage(f"the IDX ({idx_size} bytes) runs past the end of the image "
                           f"({size} bytes)", f"IDX at offset {base}")
    idx_bytes = _read(pread, base, idx_size, "IDX")
    if hashlib.sha1(idx_bytes[:-layout.SHA1_SIZE]).digest() != idx_bytes[-layout.SHA1_SIZE:]:
        raise DamagedImage("the IDX's checksum does not match its content",
                           f"IDX at offset {base}")
    pack_sha = idx_bytes[-2 * layout.SHA1_SIZE:-layout.SHA1_SIZE]
    _check_zeros(pread, idx_end, size, "padding after the IDX")

    # The pack ends with its SHA-1, followed by 1..block_size zeros; the
    # block size is not stored, so look for the checksum in the last block.
    lo = max(layout.PACK_OFFSET + layout.PACK_HEADER_SIZE,
             base - layout.MAX_BLOCK_SIZE - layout.SHA1_SIZE)
    tail = _read(pread, lo, base - lo, "end of the PACK")
    at = tail.rfind(pack_sha)
    if at < 0:
        raise DamagedImage("the PACK's trailing checksum does not match the IDX's copy "
                           f"({pack_sha.hex()})", f"end of the PACK, before offset {base}")
    pack_end = lo + at + layout.SHA1_SIZE
    nz = _first_nonzero(tail[at + layout.SHA1_SIZE:])
    if nz >= 0:
        raise DamagedImage("the padding after the PACK is not zeros", f"offset {pack_end + nz}")

    rel = idxmod.lookup(pread, index, header.commit_id)
    if rel is None:
        raise DamagedImage(f"the header's commit {header.commit_hex} is not in the IDX",
                           "offset 0")
    where = f"commit {header.commit_hex}"
    typ, data = read_object(pread, index, pack_end - layout.SHA1_SIZE, layout.PACK_OFFSET + rel)
    if typ != pack.OBJ_COMMIT:
        raise DamagedImage(f"the header's object is a {pack.TYPE_NAMES[typ]}, not a commit",
                           where)
    if pack.object_id("commit", data) != header.commit_id:
        raise DamagedImage("the commit's content does not hash to its id", where)
    commit = objects.parse_commit(data, where)

    # NBD wants extents in multiples of the minimum block size (512): the
    # zeros that share a sector with the pack's or the IDX's end count as data.
    data_end = layout.align_up(pack_end, layout.MIN_BLOCK_SIZE)
    idx_data_end = layout.align_up(idx_end, layout.MIN_BLOCK_SIZE)
    regions = [(0, data_end, EXTENT_DATA), (data_end, base, EXTENT_HOLE_ZERO),
               (base, idx_data_end, EXTENT_DATA), (idx_data_end, size, EXTENT_HOLE_ZERO)]
    extents = tuple(r for r in regions if r[0] < r[1])
    return ImageInfo(size, header.commit_hex, commit.tree.hex(), block_size, extents)


def extents_in(extents: tuple[tuple[int, int, int], ...], offset: int, count: int,
               first_only: bool = False) -> list[tuple[int, int, int]]:
    """The (offset, length, type) pieces of `extents` that meet [offset, offset+count)."""
    end = offset + count
    out = []
    for start, stop, typ in extents:
        if stop <= offset or start >= end:
            continue
        lo = max(start, offset)
        out.append((lo, min(stop, end) - lo, typ))
        if first_only:
            break
    return out
