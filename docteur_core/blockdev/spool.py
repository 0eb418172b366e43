"""A device read at most once: what was fetched is kept in a temporary file.

`docteur verify URL` reads the pack twice (the plan of delta bases, then the
scan: `verify/bases.py`), which costs nothing on a local file (the page
cache) and the image's size again over HTTP. `SpooledDevice` sits between
the checks and a remote device: the first read of a span fetches it, in
aligned `SPOOL_CHUNK` pieces, into an unnamed temporary file (in $TMPDIR,
gone when closed); later reads of it come from that file. So each byte of
the image crosses the network about once, and the disk holds at most the
image (what is read of it).

Standard library only; no thread safety beyond the device's (verify reads
from one thread).
"""

from __future__ import annotations

import os
import tempfile

from .block import BlockDevice, _DeviceBase, check_aligned, clip

SPOOL_CHUNK = 1 << 20


class SpooledDevice(_DeviceBase):
    """`device`'s bytes, each fetched once and then read from a temporary file."""

    def __init__(self, device: BlockDevice, chunk: int = SPOOL_CHUNK) -> None:
        self.device = device
        self.block_size = device.block_size
        self.capacity = device.capacity
        self.chunk = max(self.block_size, chunk - chunk % self.block_size)
        self._have = bytearray(-(-self.capacity // self.chunk))
        self._file = tempfile.TemporaryFile(prefix="docteur-spool-")
        self._fd = self._file.fileno()

    def read(self, offset: int, length: int) -> bytes:
        check_aligned(offset, length, self.block_size)
        n = clip(offset, length, self.capacity)
        if n == 0:
            return b""
        chunk, have = self.chunk, self._have
        first, last = offset // chunk, (offset + n - 1) // chunk
        k = first
        while k <= last:
            if have[k]:
                k += 1
                continue
            j = k + 1
            while j <= last and not have[j]:
                j += 1
            start = k * chunk
            want = min(j * chunk, self.capacity) - start
            data = self.device.read(start, (j - k) * chunk)[:want]
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, memoryview(data)[done:], start + done)
            got = j - k if len(data) == want else len(data) // chunk
            for i in range(k, k + got):
                have[i] = 1
            if got < j - k:  # the device is shorter than it said: what it gave, no more
                n = max(0, min(n, start + len(data) - offset))
                break
            k = j
        return os.pread(self._fd, n, offset) if n else b""

    def close(self) -> None:
        try:
            self.device.close()
        finally:
            self._file.close()

    def __repr__(self) -> str:
        return f"SpooledDevice({self.device!r})"
