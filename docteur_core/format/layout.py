"""The image layout shared with the OCaml docteur.

    offset 0    20 bytes  raw SHA-1 of the commit the image holds
    offset 20    8 bytes  little-endian offset of the IDX region
    offset 28             PACK (version 2) with its 20-byte trailer
                          zero padding
    IDX offset            the pack's .idx (version 2)
                          zero padding

The offsets stored in the IDX are relative to the start of the PACK, so an
object's position in the image is `PACK_OFFSET + idx_offset`.

The OCaml original always pads with `block_size - (n % block_size)` bytes,
which is a whole block (not zero bytes) when `n` is already aligned. We do
the same so that images stay byte-identical to the original's.

Everything here is pure: bytes in, values out.
"""

from __future__ import annotations

import struct

from ..errors import DamagedImage

COMMIT_ID_SIZE = 20
HEADER_SIZE = 28
PACK_OFFSET = HEADER_SIZE
DEFAULT_BLOCK_SIZE = 512
MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 65536

PACK_SIGNATURE = b"PACK"
PACK_VERSION = 2
PACK_HEADER_SIZE = 12  # signature, version, object count
IDX_SIGNATURE = b"\xfftOc"
IDX_VERSION = 2
IDX_HEADER_SIZE = 8  # signature, version
FANOUT_SIZE = 256 * 4
SHA1_SIZE = 20


def valid_block_size(n: int) -> bool:
    """A block size is a power of two between 512 and 65536."""
    return MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE and n & (n - 1) == 0


def padding(n: int, block_size: int) -> int:
    """Bytes of zeros the OCaml docteur writes after `n` bytes (1..block_size)."""
    return block_size - (n % block_size)


def align_down(n: int, block_size: int) -> int:
    return n - (n % block_size)


def align_up(n: int, block_size: int) -> int:
    return -(-n // block_size) * block_size


class Header:
    """The image header: which commit, and where its IDX starts."""

    __slots__ = ("commit_id", "idx_offset")

    def __init__(self, commit_id: bytes, idx_offset: int) -> None:
        self.commit_id = commit_id  # raw, 20 bytes
        self.idx_offset = idx_offset

    @property
    def commit_hex(self) -> str:
        return self.commit_id.hex()


def encode_header(commit_id: bytes, idx_offset: int) -> bytes:
    if len(commit_id) != COMMIT_ID_SIZE:
        raise ValueError("commit id must be 20 raw bytes")
    return commit_id + struct.pack("<Q", idx_offset)


def parse_header(data: bytes, capacity: int | None = None) -> Header:
    """Parse the first 28 bytes; check the IDX offset against `capacity`."""
    if len(data) < HEADER_SIZE:
        raise DamagedImage(f"image too small for a header ({len(data)} bytes)", "offset 0")
    commit_id = bytes(data[:COMMIT_ID_SIZE])
    (idx_offset,) = struct.unpack_from("<Q", data, COMMIT_ID_SIZE)
    if idx_offset < PACK_OFFSET + PACK_HEADER_SIZE + SHA1_SIZE:
        raise DamagedImage(f"IDX offset {idx_offset} is inside the header", "offset 20")
    if capacity is not None and idx_offset + IDX_HEADER_SIZE + FANOUT_SIZE > capacity:
        raise DamagedImage(
            f"IDX offset {idx_offset} points outside the image ({capacity} bytes)", "offset 20"
        )
    return Header(commit_id, idx_offset)


def pack_tail_start(idx_offset: int) -> int:
    """Where to look for the pack's 20-byte trailer when only the IDX offset is known.

    The block size is not stored, but the padding after the pack is at most
    MAX_BLOCK_SIZE bytes: the trailer lies in that window before the IDX.
    """
    return max(PACK_OFFSET + PACK_HEADER_SIZE, idx_offset - MAX_BLOCK_SIZE - SHA1_SIZE)


def fitting_block_sizes(pack_end: int, idx_offset: int, idx_end: int, size: int) -> list[int]:
    """The block sizes an image of these region ends could have been built with.

    The inverse of `image_layout`: the IDX offset and the image size are
    multiples of the block size, and both paddings are 1..block_size bytes.
    """
    sizes = []
    b = MIN_BLOCK_SIZE
    while b <= MAX_BLOCK_SIZE:
        if (idx_offset % b == 0 and size % b == 0 and 1 <= idx_offset - pack_end <= b
                and 1 <= size - idx_end <= b):
            sizes.append(b)
        b *= 2
    return sizes


def image_layout(pack_size: int, idx_size: int, block_size: int) -> tuple[int, int]:
    """Return (idx_offset, image_size) for a pack and an idx of these sizes."""
    end_of_pack = PACK_OFFSET + pack_size
    idx_offset = end_of_pack + padding(end_of_pack, block_size)
    end_of_idx = idx_offset + idx_size
    return idx_offset, end_of_idx + padding(end_of_idx, block_size)
