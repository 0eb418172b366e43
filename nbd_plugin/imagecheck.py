"""What the plugin checks about an image before serving it, and what it learns.

The plugin must refuse a bad image before any client connects, and must
describe a good one (commit and root tree ids, where the zero padding is),
in a few small reads whatever the image's size: nbdkit checks every image
at start-up and each replaced image on the next connection. Functions here
take a `pread(offset, length)` callable and the image size: the plugin
passes a descriptor's pread, tests a byte string's slices.

The object layer is docteur_core's: `Store` parses and checks the headers
and the IDX head, and reads the header's commit (through any delta chain,
checking its CRC-32, type and SHA-1). `docteur_core.verify` is the `full`
level; its quick mode is not used here because it hashes the whole pack.
What stays here is what the plugin needs beyond that, all of it read near
the IDX: the IDX's own checksum, the pack's trailer against the IDX's copy,
the zero padding (which also gives the NBD extents map), the block size.

Levels:
    none   the header only (the IDX offset must point inside the image)
    quick  the header, the IDX offset's alignment, PACK and IDX signatures
           and versions, the IDX's tables fit the image, the IDX's own
           checksum, the pack's trailing checksum against the IDX's copy,
           the padding is zeros, the header's commit is in the pack
    full   quick, then every object (docteur_core.verify, run by the plugin)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Callable

from docteur_core import idx as idxmod
from docteur_core import layout, objects
from docteur_core.errors import DamagedImage
from docteur_core.store import Store

Pread = Callable[[int, int], bytes]

LEVELS = ("none", "quick", "full")

# Extent types, as nbdkit numbers them (nbdkit.EXTENT_HOLE | EXTENT_ZERO).
EXTENT_DATA = 0
EXTENT_HOLE_ZERO = 3

# A commit is a few hundred bytes: do not inflate more than this at start-up.
MAX_COMMIT_SIZE = 1 << 20

Extents = tuple[tuple[int, int, int], ...]  # (start, end, type), covering [0, size)


@dataclass(frozen=True)
class ImageInfo:
    size: int
    commit_hex: str
    tree_hex: str | None  # None when the image was not looked into (level none)
    block_size: int  # largest power of two (512..1 GiB) the layout is aligned to
    extents: Extents

    @property
    def description(self) -> str:
        tree = self.tree_hex or "not checked"
        return f"docteur image: commit {self.commit_hex} tree {tree}"


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

    store = Store(pread, size, verify=True, max_object_size=MAX_COMMIT_SIZE)
    idx_end, pack_sha = check_idx_checksum(pread, store.idx, size)
    check_zeros(pread, idx_end, size, "padding after the IDX")
    pack_end = check_pack_trailer(pread, store.idx.base, pack_sha, size)
    tree = root_tree(store)
    return ImageInfo(size, header.commit_hex, tree.hex(), block_size,
                     zero_extents(size, pack_end, store.idx.base, idx_end))


def check_header(pread: Pread, size: int) -> layout.Header:
    """The header, and the alignment every docteur layout has (level none)."""
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


def inferred_block_size(idx_offset: int, size: int) -> int:
    """The layout pads both the pack and the IDX to the build's block size."""
    return layout.largest_block_size(idx_offset, size)


def check_idx_checksum(pread: Pread, index: idxmod.Idx, size: int) -> tuple[int, bytes]:
    """Read the whole IDX (it is small) and check its own SHA-1.

    Returns the IDX's end and its copy of the pack's checksum.
    """
    base = index.base
    offsets = _read(pread, index.offset_at(0), 4 * index.count, "IDX offset table")
    large = sum(1 for (o,) in struct.iter_unpack(">I", offsets) if o & idxmod.LARGE_OFFSET_FLAG)
    idx_size = index.size(large)
    if base + idx_size > size:
        raise DamagedImage(f"the IDX ({idx_size} bytes) runs past the end of the image "
                           f"({size} bytes)", f"IDX at offset {base}")
    data = _read(pread, base, idx_size, "IDX")
    if hashlib.sha1(data[:-layout.SHA1_SIZE]).digest() != data[-layout.SHA1_SIZE:]:
        raise DamagedImage("the IDX's checksum does not match its content",
                           f"IDX at offset {base}")
    return base + idx_size, data[-2 * layout.SHA1_SIZE:-layout.SHA1_SIZE]


def check_pack_trailer(pread: Pread, idx_offset: int, pack_sha: bytes, size: int) -> int:
    """Find the pack's trailing checksum (the IDX's copy) before the IDX; return the pack's end.

    The pack ends with its SHA-1, then 1..block_size zeros. The block size is
    not stored; it divides the IDX offset and the image size, which bounds
    the padding (`docteur_core.layout.locate_pack_trailer` holds the rule).
    """
    pack_end, why = layout.locate_pack_trailer(pread, idx_offset, size, pack_sha)
    if pack_end is None:
        raise DamagedImage(why, f"end of the PACK, before offset {idx_offset}")
    return pack_end


def root_tree(store: Store) -> bytes:
    """The root tree id of the header's commit, which must be in the pack, intact."""
    cid = store.commit_id
    if store.locate(cid) is None:
        raise DamagedImage(f"the header's commit {cid.hex()} is not in the IDX", "offset 0")
    _, data = store.read_object(cid, "commit")
    return objects.parse_commit(data, f"commit {cid.hex()}").tree


def zero_extents(size: int, pack_end: int, idx_offset: int, idx_end: int) -> Extents:
    """Data, zeros, data, zeros: the layout's regions as NBD extents.

    NBD wants extents in multiples of the minimum block size (512): the
    zeros that share a sector with the pack's or the IDX's end count as data.
    """
    data_end = layout.align_up(pack_end, layout.MIN_BLOCK_SIZE)
    idx_data_end = layout.align_up(idx_end, layout.MIN_BLOCK_SIZE)
    regions = [(0, data_end, EXTENT_DATA), (data_end, idx_offset, EXTENT_HOLE_ZERO),
               (idx_offset, idx_data_end, EXTENT_DATA), (idx_data_end, size, EXTENT_HOLE_ZERO)]
    return tuple(r for r in regions if r[0] < r[1])


def extents_in(extents: Extents, offset: int, count: int,
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


def check_zeros(pread: Pread, start: int, end: int, what: str) -> None:
    pos = start
    while pos < end:
        n = min(end - pos, 1 << 20)
        chunk = _read(pread, pos, n, what)
        i = _first_nonzero(chunk)
        if i >= 0:
            raise DamagedImage(f"the {what} is not zeros", f"offset {pos + i}")
        pos += n


def _read(pread: Pread, offset: int, length: int, what: str) -> bytes:
    data = pread(offset, length)
    if len(data) != length:
        raise DamagedImage(f"image ends inside the {what}", f"offset {offset}")
    return data


def _first_nonzero(data: bytes) -> int:
    stripped = data.lstrip(b"\0")
    return len(data) - len(stripped) if stripped else -1
