"""Sequential reads of a device region, hashed as they pass.

The full check and the quick check both read the pack once, front to
back, in large aligned reads (one NBD request per MiB rather than per
object), and compute the pack's SHA-1 over the bytes as they go by, so
no byte is read twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..blockdev.block import BlockDevice

READ_CHUNK = 1 << 20


class Stream:
    """Sequential, aligned, chunked reads of [start, end) of a device.

    `buf` holds the bytes from absolute offset `base`; `advance(pos)` drops
    what lies before `pos` and appends the next chunk. Every byte in
    [hash_from, hash_end) passes through `hasher` exactly once, in order.
    """

    def __init__(self, device: BlockDevice, start: int, end: int,
                 hash_end: int | None, chunk: int = READ_CHUNK) -> None:
        bs = device.block_size
        self.device = device
        self.end = end
        self.chunk = max(bs, chunk - chunk % bs)
        self.next = start - start % bs
        self.base = self.next
        self.buf = b""
        self.buf_end = self.base
        self.hasher = hashlib.sha1()
        self.hash_from = start
        self.hash_end = hash_end

    def advance(self, pos: int) -> bool:
        """Keep the bytes from `pos` on and read one more chunk; False at the end."""
        if self.next >= self.end:
            return False
        bs = self.device.block_size
        want = min(self.chunk, -(-(self.end - self.next) // bs) * bs)
        data = self.device.read(self.next, want)
        data = data[:self.end - self.next]
        if not data:
            self.end = self.next  # the device is shorter than it said
            return False
        start = self.next
        self.next += len(data)
        if self.hash_end is not None:
            lo = max(start, self.hash_from)
            hi = min(self.next, self.hash_end)
            if lo < hi:
                self.hasher.update(memoryview(data)[lo - start:hi - start])
                self.hash_from = hi
        if pos < self.buf_end:
            self.buf = self.buf[pos - self.base:] + data
            self.base = pos
        else:
            self.buf = data
            self.base = start
        self.buf_end = self.base + len(self.buf)
        return True

    def cover(self, pos: int, n: int) -> bool:
        """Make `buf` hold [pos, pos + n) (or up to the end); False if pos is past it."""
        while self.buf_end < pos + n:
            if not self.advance(max(pos, self.base)):
                break
        return pos < self.buf_end


def sha1_of(device: BlockDevice, start: int, end: int) -> bytes:
    """SHA-1 of the device's bytes [start, end), in one sequential pass."""
    s = Stream(device, start, end, end)
    while s.advance(s.buf_end):
        pass
    return s.hasher.digest()


def read_span(pread: Callable[[int, int], bytes], capacity: int, offset: int,
              length: int) -> bytes:
    """Bytes [offset, offset + length) through `pread`, in pieces of at most
    READ_CHUNK, not past `capacity`."""
    if length <= READ_CHUNK:
        return pread(offset, length)
    parts = []
    pos, end = offset, min(offset + length, capacity)
    while pos < end:
        part = pread(pos, min(READ_CHUNK, end - pos))
        if not part:
            break
        parts.append(part)
        pos += len(part)
    return b"".join(parts)
