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
from collections.abc import Callable

from ..errors import DamagedImage, NotAnImage

# A byte-range read, `pread(offset, length) -> bytes`: how every decoder
# below the reader reaches an image without doing I/O itself.
Pread = Callable[[int, int], bytes]

COMMIT_ID_SIZE = 20
HEADER_SIZE = 28
PACK_OFFSET = HEADER_SIZE
DEFAULT_BLOCK_SIZE = 512
MIN_BLOCK_SIZE = 512
# The OCaml docteur writes and reads any power of two (its writer pads with
# `block_size - n mod block_size` zeros, its readers only need the IDX offset
# aligned to the device's sector): measured with its writer (ocmake), its
# verify and its three readers from 512 B to 1 GiB. Above 1 GiB its writer
# needs over 3 GiB of memory per block, and a single block of padding is
# already absurd, so 1 GiB is where this project stops.
MAX_BLOCK_SIZE = 1 << 30

PACK_SIGNATURE = b"PACK"
PACK_VERSION = 2
PACK_HEADER_SIZE = 12  # signature, version, object count
IDX_SIGNATURE = b"\xfftOc"
IDX_VERSION = 2
IDX_HEADER_SIZE = 8  # signature, version
FANOUT_SIZE = 256 * 4
SHA1_SIZE = 20


def valid_block_size(n: int) -> bool:
    """A block size is a power of two from MIN_BLOCK_SIZE (512) to MAX_BLOCK_SIZE (1 GiB)."""
    return isinstance(n, int) and MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE and n & (n - 1) == 0


def block_size_rule() -> str:
    """The rule, as messages and help texts state it."""
    return f"a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} ({MAX_BLOCK_SIZE >> 30} GiB)"


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


def not_an_image(head: bytes, size: int, idx_head: bytes = b"") -> str | None:
    """Why a device is not a docteur image at all, or None if it is one
    (possibly damaged): the one rule every command applies.

    `head` is the device's first HEADER_SIZE + PACK_HEADER_SIZE bytes (or
    all of it), `size` its size, `idx_head` the IDX_HEADER_SIZE bytes at the
    offset the header names (only read, and only needed, when there is no
    PACK signature). An image is at least a header and a PACK header, and
    holds the PACK signature at offset 28 or, if that was damaged, an IDX
    (signature and version 2) where its header points: one of two intact is
    an image with damage, none is another kind of file (a text, a tar or a
    squashfs, random bytes, zeros).
    """
    if size == 0:
        return "empty file"
    if size < HEADER_SIZE + PACK_HEADER_SIZE:
        return f"{size} bytes, too small for a header and a PACK"
    if bytes(head[PACK_OFFSET:PACK_OFFSET + 4]) == PACK_SIGNATURE:
        return None
    if bytes(idx_head[:IDX_HEADER_SIZE]) == IDX_SIGNATURE + struct.pack(">I", IDX_VERSION):
        return None
    return f"no PACK signature at offset {PACK_OFFSET} and no IDX where the header points"


def check_is_image(pread: Pread, size: int) -> None:
    """Raise NotAnImage unless the device is a docteur image (see
    `not_an_image`); `pread(offset, length) -> bytes`. Reads 40 bytes, and
    8 more when the PACK signature is missing."""
    head = bytes(pread(0, min(size, HEADER_SIZE + PACK_HEADER_SIZE))) if size else b""
    idx_head = b""
    if (size >= HEADER_SIZE + PACK_HEADER_SIZE
            and head[PACK_OFFSET:PACK_OFFSET + 4] != PACK_SIGNATURE):
        (idx_offset,) = struct.unpack_from("<Q", head, COMMIT_ID_SIZE)
        if PACK_OFFSET <= idx_offset <= size - IDX_HEADER_SIZE:
            idx_head = bytes(pread(idx_offset, IDX_HEADER_SIZE))
    why = not_an_image(head, size, idx_head)
    if why is not None:
        raise NotAnImage(why)


def largest_block_size(idx_offset: int, size: int) -> int:
    """The largest block size an image with this IDX offset and size can have been built with.

    The block size is not stored, but the IDX offset and the image size are
    both multiples of it: it is at most the largest power of two (up to
    MAX_BLOCK_SIZE) that divides both. MIN_BLOCK_SIZE when none does.
    """
    bs = MIN_BLOCK_SIZE
    while bs < MAX_BLOCK_SIZE and idx_offset % (2 * bs) == 0 and size % (2 * bs) == 0:
        bs *= 2
    return bs


def pack_tail_start(idx_offset: int, size: int) -> int:
    """Where the pack's 20-byte trailer can start at the earliest, given the IDX offset.

    The padding after the pack is 1..block_size zeros, and the block size is
    at most `largest_block_size(idx_offset, size)`: the trailer lies in that
    window before the IDX (never before the PACK header's end).
    """
    return max(PACK_OFFSET + PACK_HEADER_SIZE,
               idx_offset - largest_block_size(idx_offset, size) - SHA1_SIZE)


def last_nonzero(pread: Pread, lo: int, hi: int) -> int | None:
    """The offset of the last non-zero byte in [lo, hi), or None: reads backwards.

    `pread(offset, length) -> bytes`. Reads grow from 4 KiB to 1 MiB, so a
    pack trailer a few bytes before the IDX costs one small read and a block
    of padding of any size costs memory for 1 MiB only.
    """
    end = hi
    step = 4096
    while end > lo:
        start = max(lo, end - step)
        chunk = bytes(pread(start, end - start))
        stripped = chunk.rstrip(b"\0")
        if stripped:
            return start + len(stripped) - 1
        if len(chunk) < end - start:  # short read: the device ends here
            return None
        end = start
        step = min(step * 2, 1 << 20)
    return None


def locate_pack_trailer(pread: Pread, idx_offset: int, size: int, pack_sha: bytes) -> tuple[int | None, str]:
    """Find the pack's trailer (`pack_sha`, the IDX's copy) before the IDX.

    Returns (pack_end, "") when the trailer ends right before the zero
    padding, else (None, why): the one reason that names what is wrong
    (a padding longer than any block size that fits, padding that is not
    zeros, or a trailer that does not match). Reads only the padding and a
    few bytes before it, whatever the block size.
    """
    lo = pack_tail_start(idx_offset, size)
    largest = largest_block_size(idx_offset, size)
    z = last_nonzero(pread, lo, idx_offset)
    if z is None:
        return None, (f"no PACK trailer before the IDX at offset {idx_offset}: the "
                      f"{idx_offset - lo} bytes before it are zeros, more than the padding of "
                      f"the largest block size this IDX offset and image size allow ({largest}); "
                      f"block sizes above {MAX_BLOCK_SIZE} are not supported")
    trailing = len(pack_sha) - len(pack_sha.rstrip(b"\0"))
    pack_end = z + 1 + trailing
    if pack_end < idx_offset and bytes(pread(pack_end - SHA1_SIZE, SHA1_SIZE)) == pack_sha:
        return pack_end, ""
    # The bytes just before the padding are not the trailer: is the trailer
    # further back, followed by non-zero bytes in the padding?
    window = bytes(pread(lo, z + 1 - lo)) if z + 1 - lo <= (8 << 20) else b""
    at = window.rfind(pack_sha)
    if at >= 0:
        return None, f"the padding after the PACK is not zeros (offset {lo + at + SHA1_SIZE})"
    return None, (f"the PACK's trailing checksum does not match the IDX's copy "
                  f"({pack_sha.hex()})")


def fitting_block_sizes(pack_end: int, idx_offset: int, idx_end: int, size: int) -> list[int]:
    """The block sizes an image of these region ends could have been built with.

    The inverse of `image_layout`: the IDX offset and the image size are
    multiples of the block size, and both paddings are 1..block_size bytes.
    """
    sizes = []
    b = MIN_BLOCK_SIZE
    while b <= largest_block_size(idx_offset, size):
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

