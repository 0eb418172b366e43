"""The block interface and its local backends.

A guest has no file system, only a block device. Solo5 and virtio-blk only
accept reads whose offset and length are multiples of the device's block
size, so every backend here enforces that rule too: a misaligned read is a
bug in the caller (ValueError), caught by the unit tests rather than by a
real device in production.

Reading past the end of a device is not an error at this level: `read`
returns the bytes that exist (possibly none). The reader treats a short
result as a damaged image, because a valid image never points outside its
device.

- `BlockDevice`: the protocol every backend implements.
- `FileDevice`: an image file or a raw device (`disk.img`, `/dev/vda`).
- `MemoryDevice`: bytes in memory, for tests.
- `SectorCache`: a bounded LRU of sectors in front of any device, so the
  many small reads of IDX and tree lookups cost one device read per sector.
- `ByteReader`: arbitrary byte ranges on top of an aligned device.

Standard library only: this runs inside a minimal guest.
"""

from __future__ import annotations

import _thread
import os
import stat
from abc import ABC, abstractmethod
from collections import OrderedDict

from ..errors import DeviceError  # noqa: F401 (re-exported: it used to live here)

DEFAULT_BLOCK_SIZE = 512
# 8 MiB of sectors by default: the IDX of a 100k-object image (≈2.8 MiB)
# and the hot trees fit, and it stays small for a guest.
DEFAULT_CACHE_BYTES = 8 << 20


TYPE_CHECKING = False  # `typing` itself costs a guest's start-up more than the reader
if TYPE_CHECKING:
    from typing import Protocol, Self

    class BlockDevice(Protocol):
        """What the reader needs from a disk (see the runtime class below).

        A `typing.Protocol` for type checkers: `FileDevice`, `SectorCache`,
        `NbdDevice`, `HttpDevice` and any user class with these members are
        block devices without inheriting. The members are read-only here
        (properties), so a device may compute them or set them as plain
        attributes.
        """

        @property
        def block_size(self) -> int: ...

        @property
        def capacity(self) -> int: ...

        def read(self, offset: int, length: int) -> bytes: ...

        def close(self) -> None: ...
else:
    class BlockDevice(ABC):
        """What the reader needs from a disk.

        `read(offset, length)` requires `offset` and `length` to be multiples of
        `block_size` and returns `min(length, capacity - offset)` bytes (an empty
        result at or past the end). `capacity` is the size in bytes; it need not
        be a multiple of `block_size` (the last block is then short).

        A protocol in spirit: any object with these members is a block device,
        and `isinstance(x, BlockDevice)` holds for any class with `read` and
        `close`, without inheriting. Type checkers see a `typing.Protocol` of
        the same name (above); at run time it is this ABC, because importing
        `typing` would cost a guest's start-up more than the whole reader (see
        the package docstring).
        """

        block_size: int
        capacity: int

        @abstractmethod
        def read(self, offset: int, length: int) -> bytes: ...

        @abstractmethod
        def close(self) -> None: ...

        @classmethod
        def __subclasshook__(cls, other: type) -> bool:
            if cls is not BlockDevice:
                return NotImplemented
            if all(callable(getattr(other, name, None)) for name in ("read", "close")):
                return True
            return NotImplemented


def check_block_size(block_size: int) -> int:
    """Block sizes are positive powers of two (tests use tiny ones)."""
    if not isinstance(block_size, int) or block_size <= 0 or block_size & (block_size - 1):
        raise ValueError(f"block size must be a positive power of two, not {block_size!r}")
    return block_size


def check_aligned(offset: int, length: int, block_size: int) -> None:
    """Raise ValueError unless (offset, length) is a legal device read."""
    if offset < 0 or length < 0 or offset % block_size or length % block_size:
        raise ValueError(
            f"misaligned device read: offset {offset}, length {length}, "
            f"block size {block_size}")


def clip(offset: int, length: int, capacity: int) -> int:
    """The number of bytes a read of (offset, length) can return."""
    return max(0, min(length, capacity - offset))


class _DeviceBase:
    block_size: int
    capacity: int

    def close(self) -> None:  # pragma: no cover - overridden where needed
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryDevice(_DeviceBase):
    """A device over bytes in memory; records every read for tests."""

    def __init__(self, data: bytes | bytearray | memoryview, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.data = bytes(data)
        self.block_size = check_block_size(block_size)
        self.capacity = len(self.data)
        self.reads: list[tuple[int, int]] = []
        self.closed = False

    def read(self, offset: int, length: int) -> bytes:
        check_aligned(offset, length, self.block_size)
        if self.closed:
            raise DeviceError("read from a closed memory device")
        self.reads.append((offset, length))
        return self.data[offset:offset + clip(offset, length, self.capacity)]

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"MemoryDevice({self.capacity} bytes, block size {self.block_size})"


# Linux ioctls (asm-generic/ioctl.h): _IO(0x12, 104) and _IOR(0x12, 114, u64).
_BLKSSZGET = 0x1268
_BLKGETSIZE64 = 0x80081272


def _probe_block_device(fd: int, st: os.stat_result) -> tuple[int | None, int | None]:
    """(logical block size, size) of a block device, each None if unknown."""
    block_size = size = None
    try:
        import fcntl
        import struct

        block_size = struct.unpack("i", fcntl.ioctl(fd, _BLKSSZGET, b"\0" * 4))[0]
        size = struct.unpack("Q", fcntl.ioctl(fd, _BLKGETSIZE64, b"\0" * 8))[0]
    except (ImportError, OSError):
        pass
    if not block_size:
        # A partition has no queue/ of its own: its parent's applies.
        base = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        for path in (f"{base}/queue/logical_block_size", f"{base}/../queue/logical_block_size"):
            try:
                with open(path) as f:
                    block_size = int(f.read().strip())
                break
            except (OSError, ValueError):
                continue
    return block_size or None, size


class FileDevice(_DeviceBase):
    """An image file or a raw block device, opened read-only.

    The block size is `block_size` if given, else the device's logical block
    size (BLKSSZGET or sysfs), else 512 for a regular file.
    """

    def __init__(self, path: str | os.PathLike[str], block_size: int | None = None) -> None:
        self.path = os.fspath(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise DeviceError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(self._fd)
            probed = None
            if stat.S_ISBLK(st.st_mode):
                probed, size = _probe_block_device(self._fd, st)
                if size is None:
                    size = os.lseek(self._fd, 0, os.SEEK_END)
            elif stat.S_ISREG(st.st_mode):
                size = st.st_size
            elif stat.S_ISDIR(st.st_mode):
                raise DeviceError(f"{self.path} is a directory, not an image")
            else:
                size = os.lseek(self._fd, 0, os.SEEK_END)
            self.block_size = check_block_size(
                block_size if block_size is not None else (probed or DEFAULT_BLOCK_SIZE))
            self.capacity = size
        except OSError as exc:
            os.close(self._fd)
            raise DeviceError(f"cannot use {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(self._fd)
            raise

    def read(self, offset: int, length: int) -> bytes:
        check_aligned(offset, length, self.block_size)
        n = clip(offset, length, self.capacity)
        if n == 0:
            return b""
        fd = self._fd
        if fd < 0:
            raise DeviceError(f"read from closed device {self.path}")
        try:
            data = os.pread(fd, n, offset)
            if len(data) < n:  # pread may return less; a second call settles it
                parts = [data]
                got = len(data)
                while got < n:
                    more = os.pread(fd, n - got, offset + got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
            return data
        except OSError as exc:
            raise DeviceError(
                f"I/O error reading {self.path} at offset {offset}: {exc.strerror or exc}") from None

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"FileDevice({self.path!r}, block size {self.block_size})"


class SectorCache(_DeviceBase):
    """A bounded LRU of blocks in front of `device`; itself a BlockDevice.

    A read looks up every block it covers; each run of consecutive missing
    blocks costs one device read. With `readahead` > 0, a miss that
    continues the previous fetch (a sequential stream, as when inflating a
    large object) also fetches up to `readahead` further blocks, the window
    doubling as the stream goes on. Reads longer than `bypass_blocks` blocks
    (the bulk of a large object) go to the device in one piece and only
    their first and last blocks are kept, so they do not flush the small,
    hot sectors of the IDX and the trees. `device_reads`, `hits` and
    `misses` count what happened.
    """

    def __init__(self, device: BlockDevice, max_blocks: int | None = None,
                 readahead: int = 0, bypass_blocks: int | None = None) -> None:
        self.device = device
        self.block_size = check_block_size(device.block_size)
        self.capacity = device.capacity
        if max_blocks is None:
            max_blocks = max(16, DEFAULT_CACHE_BYTES // self.block_size)
        if max_blocks < 1:
            raise ValueError("a sector cache holds at least one block")
        self.max_blocks = max_blocks
        self.readahead = max(0, min(readahead, max_blocks // 2))
        self._window = 0
        self._stream_next = -1
        if bypass_blocks is None:
            # Past 4 KiB a read is an object's compressed bytes (the reader's
            # IDX probes, entry headers and path index super block are smaller),
            # read once and kept by the store as an object: splitting it
            # into cached sectors cost reading every file of Linux ~0.3 s.
            bypass_blocks = max(1, min(max_blocks // 4, (4 << 10) // self.block_size))
        self.bypass_blocks = max(1, bypass_blocks)
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = _thread.allocate_lock()  # threading.Lock, without importing threading
        self.device_reads = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def read(self, offset: int, length: int) -> bytes:
        bs = self.block_size
        if length == bs and offset >= 0 and not offset % bs:
            # the hot path: one sector of an IDX or a tree
            first = offset // bs
            with self._lock:
                blocks = self._blocks
                block = blocks.get(first)
                if block is not None:
                    blocks.move_to_end(first)
                    self.hits += 1
                    return block
        check_aligned(offset, length, bs)
        n = clip(offset, length, self.capacity)
        if n == 0:
            return b""
        first = offset // bs
        count = -(-n // bs)
        with self._lock:
            blocks = self._blocks
            if count == 1:
                block = blocks.get(first)  # again: another thread may have fetched it
                if block is not None:
                    blocks.move_to_end(first)
                    self.hits += 1
                    return block
                return self._fetch(first, 1)[:bs]
            if count > self.bypass_blocks:
                return self._read_through(first, count)
            get = blocks.get
            found = [get(i) for i in range(first, first + count)]
            missing = found.count(None)
            if missing == count:  # a stream, or a cold region: one read, no assembly
                data = self._fetch(first, count)
                return data if len(data) <= n else data[:n]
            self.hits += count - missing
            move = blocks.move_to_end
            for k, block in enumerate(found):
                if block is not None:
                    move(first + k)
            pieces = []
            k = 0
            while k < count:
                block = found[k]
                if block is not None:
                    pieces.append(block)
                    if len(block) < bs:  # end of device (or a device that shrank)
                        break
                    k += 1
                    continue
                j = k + 1
                while j < count and found[j] is None:
                    j += 1
                want = (j - k) * bs
                data = self._fetch(first + k, j - k)
                if len(data) > want:
                    data = data[:want]
                pieces.append(data)
                if len(data) < want:
                    break
                k = j
            return b"".join(pieces)

    def _fetch(self, start: int, count: int) -> bytes:
        """Read `count` missing blocks from `start` (plus readahead) in one
        device read, cache them all, and return the bytes read."""
        bs = self.block_size
        total = count
        if self.readahead:
            # Read ahead only for a stream: a miss where the previous fetch
            # ended (or just past cached blocks there). The window doubles
            # while the stream goes on; random probes (IDX, trees) never pay.
            if 0 <= start - self._stream_next <= self._window:
                self._window = min(self.readahead, max(2 * self._window, count, 4))
            else:
                self._window = 0
            last = -(-self.capacity // bs)
            blocks = self._blocks
            while (total < count + self._window and start + total < last
                   and (start + total) not in blocks):
                total += 1
            self._stream_next = start + total
        data = self.device.read(start * bs, total * bs)
        self.device_reads += 1
        self.misses += count
        blocks = self._blocks
        if len(data) == bs:
            blocks[start] = data
        else:
            blocks.update(zip(range(start, start + total),
                              [data[k:k + bs] for k in range(0, len(data), bs)]))
        excess = len(blocks) - self.max_blocks
        if excess > 0:
            pop = blocks.popitem
            for _ in range(excess):
                pop(last=False)
        return data

    def _read_through(self, first: int, count: int) -> bytes:
        bs = self.block_size
        data = self.device.read(first * bs, count * bs)
        self.device_reads += 1
        self.misses += count
        if len(data) >= bs:
            blocks = self._blocks
            blocks[first] = data[:bs]
            last = (len(data) - 1) // bs
            blocks[first + last] = data[last * bs:(last + 1) * bs]
            while len(blocks) > self.max_blocks:
                blocks.popitem(last=False)
        return data

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()

    def close(self) -> None:
        self._blocks.clear()
        self.device.close()

    def __repr__(self) -> str:
        return f"SectorCache({self.device!r}, {len(self._blocks)}/{self.max_blocks} blocks)"


class ByteReader:
    """Arbitrary byte ranges over a device, with only aligned device reads.

    The reader's `pread(offset, length)` calls are small and local (20-byte
    IDX entries, 32-byte entry headers) or sequential (inflate input). So
    the last aligned range read is kept as a window: reads inside it cost a
    slice, no device call. A multi-block read that starts where the previous
    one ended is a stream: its window grows (doubling, from 16 KiB up to
    `max_window`) so that inflating a large object costs a few large device
    reads rather than many small ones; random reads never read ahead.
    Reads past the capacity return a short result; callers treat that as
    damage.
    """

    def __init__(self, device: BlockDevice, max_window: int = 1 << 20) -> None:
        self.device = device
        self.block_size = check_block_size(device.block_size)
        self.capacity = device.capacity
        self.max_window = max(max_window, self.block_size)
        # (aligned start, its bytes) as one tuple, so threads never see a mix
        self._window: tuple[int, bytes] = (0, b"")
        self._next = -1  # where the previous read ended

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"negative read: offset {offset}, length {length}")
        end = offset + length
        if end > self.capacity:
            end = self.capacity
        if offset >= end:
            return b""
        start, window = self._window
        if start <= offset and end <= start + len(window):
            self._next = end
            return window[offset - start:end - start]
        bs = self.block_size
        base = offset - offset % bs
        stop = -(-end // bs) * bs
        size = stop - base
        if size > bs and offset == self._next:
            # a stream: read ahead, twice as much as last time
            size = max(size, min(self.max_window, max(2 * len(window), 16384)))
            size = -(-size // bs) * bs
        window = self.device.read(base, size)
        self._window = (base, window)
        self._next = end
        return window[offset - base:end - base]

    def read_exactly(self, offset: int, length: int) -> bytes | None:
        """`pread`, or None when the device ends first."""
        data = self.pread(offset, length)
        return data if len(data) == length else None

    def close(self) -> None:
        self.device.close()


def read_bytes(device: BlockDevice, offset: int, length: int) -> bytes:
    """One-off unaligned read (prefer a long-lived ByteReader in loops)."""
    return ByteReader(device).pread(offset, length)
