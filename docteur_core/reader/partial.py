"""Bytes at an offset of a file, without inflating all of it each time.

`Image.get_partial` answers reads at any offset (a FUSE mount's `read`, a
guest's range read). Git stores an object either whole (one zlib stream) or
as a delta against another:

- A file stored whole and larger than STREAM_THRESHOLD (16 MiB; every file
  over 512 MiB is stored whole) is never held: a `Cursor` inflates its
  stream as far as the read needs and stays there, so sequential reads
  cost one inflate of the file in all. A read behind the cursor restarts
  from the nearest checkpoint: a copy of the inflate state taken every
  CHECKPOINT_EVERY bytes of output (at most MAX_CHECKPOINTS of them, each
  about 50 KiB: zlib's window and the input block it was in), so a
  random read inflates at most that much. The last CURSORS files read
  keep theirs. The stream is the store's entry stream (format/inflate.py:
  bounded by the declared size, `copy()` its checkpoint): zlib checks it
  as it goes; the size and the entry's CRC-32 (the IDX's) are checked when
  a cursor reaches the end of the stream (`docteur verify` checks every
  byte).
- Verified (the reader's default), such a file is read once, hashed on its
  way into a temporary file (`Spool`), and every read is answered from
  that file once its SHA-1 matched: a read at an offset never returns a
  byte that was not checked against the file's id, and the device is not
  asked again (a lying server could answer a second pass differently).
  The last SPOOLS files read keep theirs; disk, not memory, holds them.
- Anything else is built whole, within the reader's limits
  (`max_object_size`, `max_lookup_bytes`, format/limits.py), and sliced.
  The store's LRU keeps objects up to half its size (32 MiB by default);
  the last larger one built (a delta-encoded file up to `max_object_size`,
  512 MiB) is kept here, so reading it in 128 KiB pieces builds it once.
  Memory is then bounded by that limit.

Standard library only, like the rest of the reader.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable

from ..errors import DamagedImage
from ..format.limits import INFLATE_STEP, STREAM_THRESHOLD
from ..format.pack import BASE_TYPES, TYPE_NAMES

TYPE_CHECKING = False  # (`typing` costs a guest's start-up: see the package docstring)
if TYPE_CHECKING:
    from ..format.inflate import EntryStream
    from ..format.pack import EntryHeader
    from .store import Store, _Where

# Compressed bytes read per step by a cursor: a checkpoint holds one.
INPUT_STEP = 16 << 10
CHECKPOINT_EVERY = 4 << 20
MAX_CHECKPOINTS = 128
CURSORS = 4
SPOOLS = 2


class Spool:
    """A large blob, proven by its SHA-1, in a temporary file (verified
    reads): `Store.spool_entry`'s file, kept for reads at any offset."""

    def __init__(self, store: Store, oid: bytes, pos: int, crc: int | None,
                 where: str | _Where, eh: EntryHeader, buf: bytes) -> None:
        self.file = store.spool_entry(oid, pos, crc, where, eh, buf, "blob")

    def read(self, offset: int, length: int) -> bytes:
        import os

        return os.pread(self.file.fileno(), length, offset)

    def close(self) -> None:
        self.file.close()


class Cursor:
    """Reads at any offset of one entry stored whole (see the module doc)."""

    def __init__(self, start: EntryStream) -> None:
        self.size = start.size
        self.every = max(CHECKPOINT_EVERY, -(-self.size // MAX_CHECKPOINTS))
        self.checkpoints: list[tuple[int, EntryStream]] = [(0, start.copy())]
        self.inflater = start
        self.pos = 0          # output offset of `chunk`
        self.chunk = b""
        self.inflated = 0     # bytes of output inflated, restarts included (measures)

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        # Behind the cursor, or a checkpoint nearer than the cursor: from there.
        at, state = self.checkpoints[bisect_right(self.checkpoints, offset,
                                                  key=lambda c: c[0]) - 1]
        if offset < self.pos or at > self.pos + len(self.chunk):
            self.inflater, self.pos, self.chunk = state.copy(), at, b""
        parts = []
        while True:
            chunk_end = self.pos + len(self.chunk)
            if offset < chunk_end:
                parts.append(self.chunk[max(offset - self.pos, 0):end - self.pos])
            if end <= chunk_end:
                return b"".join(parts)
            self.pos = chunk_end
            self.chunk = self.inflater.next_chunk(INFLATE_STEP)
            if not self.chunk:  # cannot be: the size was checked at the end
                raise DamagedImage("zlib stream ends early", self.inflater.where)
            self.inflated += len(self.chunk)
            done = self.inflater.produced
            if done - self.checkpoints[-1][0] >= self.every and done < self.size:
                self.checkpoints.append((done, self.inflater.copy()))


class PartialReads:
    """Cursors of the last files stored whole that were read, and the last
    large object built; one per `Image` (not thread-safe, like it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cursors: OrderedDict[bytes, Cursor] = OrderedDict()
        self.spools: OrderedDict[bytes, Spool] = OrderedDict()
        self.big: tuple[bytes, bytes] | None = None

    def read(self, oid: bytes, offset_hint: int | None, offset: int, length: int,
             whole: Callable[[], bytes]) -> bytes:
        """`length` bytes at `offset` of blob `oid`; `whole()` builds it
        whole when it is not a large entry stored whole."""
        cursor = self.cursors.get(oid)
        if cursor is not None:
            self.cursors.move_to_end(oid)
            return cursor.read(offset, length)
        spool = self.spools.get(oid)
        if spool is not None:
            self.spools.move_to_end(oid)
            return spool.read(offset, length)
        big = self.big
        if big is not None and big[0] == oid:
            return big[1][offset:offset + length]
        store = self.store
        pos, crc, where, eh, buf = store._whole_entry(oid, offset_hint)
        if (eh.type in BASE_TYPES and eh.size > STREAM_THRESHOLD and store.verify
                and pos not in store._cache):
            spool = Spool(store, oid, pos, crc, where, eh, buf)
            self.spools[oid] = spool
            while len(self.spools) > SPOOLS:
                self.spools.popitem(last=False)[1].close()
            return spool.read(offset, length)
        if (eh.type in BASE_TYPES and eh.size > STREAM_THRESHOLD and not store.verify
                and pos not in store._cache):
            typ = TYPE_NAMES[eh.type]
            if typ != "blob":
                raise DamagedImage(f"object {oid.hex()} is a {typ}, a blob was expected", where)
            cursor = self.cursors[oid] = Cursor(
                store._entry_stream(pos, eh, buf, crc, where, INPUT_STEP, INPUT_STEP))
            while len(self.cursors) > CURSORS:
                self.cursors.popitem(last=False)
            return cursor.read(offset, length)
        data = whole()
        if len(data) > store.cache_bytes // 2:  # the store does not keep it
            self.big = (oid, data)
        return data[offset:offset + length]
