"""One pack entry's zlib stream, inflated within bounds and checked.

Every reader of an image inflates pack entries: the reader (whole objects,
large blobs streamed, reads at an offset of one), verify (its scan's entries,
in one call or streamed and hashed; quick mode's head of a large commit; the
commit, through `inflate_from`), the tests' image forger. They go through
`EntryInflater`, so that an entry is judged by one set of rules, in one set
of words (two measured or necessary exceptions in verify/scan.py, each said
where it is: the small-blob lane's own zlib call, and `_blame`, which looks
for a stream with no size to hold it to):

- bounded: no call yields more than it is asked for, and the whole stream
  never more than the declared size + 1 bytes (the one byte that proves the
  size a lie), whatever the stream holds: a zlib bomb costs what its
  declared size allows, which the caller has checked against its limits;
- exact: the stream must end, and inflate to exactly the declared size;
- CRC-checked: given the CRC-32 the IDX holds for the entry, the entry's
  header and its compressed bytes up to the stream's end (never a byte
  after it) are checked against it when the stream ends, before the last
  bytes of output are handed out;
- sans-IO: compressed bytes are fed in (`feed`), output is pulled out
  (`read`); `EntryStream` is the thin shell that fetches the input through
  a `pread(offset, length)` callable, never past an end (the pack's), and
  says so when the source runs out;
- `copy()` is a checkpoint (zlib's state and the input being read), for
  reads at an offset of a large blob;
- every error is a `DamagedImage` naming `where` (anything whose str() says
  where: the reader's hot path passes an object formatted only then).

`inflate_entry` is its first read as one function, for the reader's hot
path (most entries' streams come whole with their header: no object is
made for them). `Inflater` and `inflate_from` are the whole-object forms
(what `format.pack` has always offered), built on the same core.

Standard library only, and only `zlib` and `errors` imported: the guest
reader uses this.
"""

from __future__ import annotations

import zlib

from ..errors import DamagedImage
from .limits import INFLATE_STEP

TYPE_CHECKING = False  # (`typing` costs a guest's start-up: see reader/__init__.py)
if TYPE_CHECKING:
    from .layout import Pread


# The words, one place for every inflate.


def bad_zlib(exc: zlib.error, where: object) -> DamagedImage:
    return DamagedImage(f"bad zlib stream ({exc})", where)


def too_long(size: int, where: object) -> DamagedImage:
    return DamagedImage(f"inflates to more than the declared {size} bytes", where)


def wrong_size(produced: int, size: int, where: object) -> DamagedImage:
    return DamagedImage(f"inflates to {produced} bytes, {size} declared", where)


def bad_crc(running: int, crc: int, where: object) -> DamagedImage:
    """An entry whose bytes are not those the IDX's CRC-32 vouches for."""
    return DamagedImage(f"entry CRC-32 {running:08x} is not the IDX's {crc:08x}", where)


def past_end(where: object) -> DamagedImage:
    """A stream that has not ended where the pack (or what may hold it) does."""
    return DamagedImage("zlib stream runs past the end of the pack", where)


def truncated(where: object) -> DamagedImage:
    """A source that gives no more bytes before the stream has ended."""
    return DamagedImage("zlib stream is truncated", where)


def check_crc(entry: bytes | memoryview, crc: int, where: object, running: int = 0) -> None:
    """Check an entry's raw bytes (header and stream; `running`: the CRC-32
    of the bytes before them) against the IDX's CRC-32."""
    running = zlib.crc32(entry, running)
    if running != crc:
        raise bad_crc(running, crc, where)


def _ended(produced: int, size: int, where: object, crc: int | None,
           last: bytes | memoryview, running: int) -> None:
    """The checks at a stream's end: its size, then its CRC-32 (`last`: the
    entry's bytes not yet in `running`, up to the stream's end)."""
    if produced != size:
        raise wrong_size(produced, size, where)
    if crc is not None:
        running = zlib.crc32(last, running)
        if running != crc:
            raise bad_crc(running, crc, where)


def inflate_entry(entry: bytes | memoryview, start: int, size: int, where: object,
                  crc: int | None = None) -> tuple[bytes, int, EntryInflater | None]:
    """`EntryInflater`'s first read of up to `size` + 1 bytes, for an entry
    whose first bytes are `entry` (its stream from `start`).

    Returns (data, entry length, None) when the stream ends within `entry`
    (all checked); else (the output so far, 0, the `EntryInflater` to go
    on with: feed it the bytes after `entry`). The reader's hot path: most
    entries' streams come whole with their header, and an `EntryInflater`
    object for each cost 0.45 us an entry more than the reader's own
    zlib call did, 6-8% of reading every file of bench/read.py's gen:10000
    in process (CPU time, Python 3.11); this function costs 0.1 us more
    (1-2%, within that measurement's noise). The object is made only for
    the other entries. The same rules and words as `EntryInflater.read`.
    """
    z = zlib.decompressobj()
    try:
        out = z.decompress(memoryview(entry)[start:], size + 1)
    except zlib.error as exc:
        raise bad_zlib(exc, where) from None
    n = len(out)
    if n > size:
        raise too_long(size, where)
    if z.eof:  # `_ended`'s checks, inline: this is the hot path
        used = len(entry) - len(z.unused_data)
        if n != size:
            raise wrong_size(n, size, where)
        if crc is not None:
            running = zlib.crc32(memoryview(entry)[:used])
            if running != crc:
                raise bad_crc(running, crc, where)
        return out, used, None
    inf = EntryInflater.__new__(EntryInflater)
    inf.size, inf.where, inf.crc = size, where, crc
    inf.produced, inf.consumed, inf.done = n, 0, False
    inf._z, inf._data, inf._tail = z, entry, z.unconsumed_tail
    inf._fed, inf._running, inf._more = -start, 0, False
    return out, 0, inf


class EntryInflater:
    """Sans-IO inflate of one entry's zlib stream to exactly `size` bytes.

    `entry`: the entry's first bytes as read, its stream starting at
    `start` (the header's length; the CRC-32 `crc` covers the header too).
    `feed` more compressed bytes when `needs_input`; `read(limit)` returns
    the next output (at most `limit` bytes, b"" when it needs input). Once
    the stream has ended, `done` is true, `consumed` is how many bytes of
    the stream were fed (bytes after its end are ignored) and every check
    has been made, before the last output is returned.
    """

    __slots__ = ("size", "where", "crc", "produced", "consumed", "done",
                 "_z", "_data", "_tail", "_fed", "_running", "_more")

    def __init__(self, size: int, where: object, crc: int | None = None,
                 entry: bytes | memoryview = b"", start: int = 0) -> None:
        self.size = size
        self.where = where
        self.crc = crc
        self.produced = 0      # output bytes so far
        self.consumed = 0      # stream bytes, once done
        self.done = False
        self._z = zlib.decompressobj()
        # The input being read (the entry's first bytes, header included,
        # until more is fed), and its part zlib has not taken yet.
        self._data = entry
        self._tail: bytes | memoryview = memoryview(entry)[start:] if start else entry
        self._fed = -start     # bytes of the stream fed before `_data`
        self._running = 0      # CRC-32 of the entry's bytes before `_data`
        self._more = False     # the last read filled its limit: zlib may hold more

    @property
    def needs_input(self) -> bool:
        return not (self.done or self._more or len(self._tail))

    def feed(self, chunk: bytes | memoryview) -> None:
        """Add compressed bytes; ignored once the stream has ended."""
        if self.done:
            return
        data, tail = self._data, self._tail
        taken = len(data) - len(tail)  # all of it, unless fed before it was read
        if taken:
            if self.crc is not None:
                self._running = zlib.crc32(data if not len(tail) else memoryview(data)[:taken],
                                           self._running)
            self._fed += taken
        self._data = self._tail = chunk if not len(tail) else bytes(tail) + bytes(chunk)

    def read(self, limit: int = INFLATE_STEP) -> bytes:
        """Up to `limit` (> 0) bytes of output from the input fed so far."""
        if self.done:
            return b""
        want = self.size - self.produced + 1  # one byte more proves a lie
        if limit < want:
            want = limit
        z = self._z
        try:
            out = z.decompress(self._tail, want)
        except zlib.error as exc:
            raise bad_zlib(exc, self.where) from None
        n = len(out)
        self.produced += n
        if self.produced > self.size:
            raise too_long(self.size, self.where)
        if z.eof:
            data = self._data
            used = len(data) - len(z.unused_data)
            self.consumed = self._fed + used
            self._tail = b""
            self._more = False
            self.done = True
            _ended(self.produced, self.size, self.where, self.crc,
                   data if used == len(data) else memoryview(data)[:used], self._running)
        else:
            self._tail = z.unconsumed_tail
            self._more = n == want
        return out

    def copy(self) -> EntryInflater:
        """An independent inflater at the same point of the stream."""
        other = EntryInflater.__new__(EntryInflater)
        for name in EntryInflater.__slots__:
            setattr(other, name, getattr(self, name))
        other._z = self._z.copy()
        return other


class EntryStream:
    """An entry's output, its input fetched through `pread` from `at`, never
    at or past `end`: reads of `step` bytes, doubling up to `max_step` (sized
    to the stream a small entry needs, few reads for a large one).

    `inflater` may hold input already (the bytes read with the header).
    """

    __slots__ = ("inflater", "pread", "at", "end", "step", "max_step")

    def __init__(self, inflater: EntryInflater, pread: Pread, at: int, end: int,
                 step: int = INFLATE_STEP, max_step: int | None = None) -> None:
        self.inflater = inflater
        self.pread = pread
        self.at = at
        self.end = end
        self.step = step
        self.max_step = step if max_step is None else max_step

    @property
    def size(self) -> int:
        return self.inflater.size

    @property
    def where(self) -> object:
        return self.inflater.where

    @property
    def produced(self) -> int:
        return self.inflater.produced

    def next_chunk(self, limit: int = INFLATE_STEP) -> bytes:
        """The next output (at most `limit` bytes); b"" once the stream has
        ended, all of it checked."""
        inf = self.inflater
        while not inf.done:
            if inf.needs_input:
                self.fetch()
            out = inf.read(limit)
            if out:
                return out
        return b""

    def fetch(self) -> None:
        """Feed the inflater the next `step` bytes of input."""
        want = min(self.step, self.end - self.at)
        if want <= 0:
            raise past_end(self.inflater.where)
        more = self.pread(self.at, want)
        if not more:
            raise truncated(self.inflater.where)
        self.at += len(more)
        self.inflater.feed(more)
        if self.step < self.max_step:
            self.step = min(self.step * 2, self.max_step)

    def copy(self) -> EntryStream:
        """A checkpoint: an independent stream at the same point."""
        other = EntryStream.__new__(EntryStream)
        for name in EntryStream.__slots__:
            setattr(other, name, getattr(self, name))
        other.inflater = self.inflater.copy()
        return other


def first_step(size: int, low: int = 512, high: int = INFLATE_STEP) -> int:
    """A first read for a stream inflating to `size` bytes: deflate's output
    is at most its input plus a few bytes per 16 KiB block."""
    return min(max(size + size // 1000 + 64, low), high)


class Inflater:
    """Sans-IO inflate of one zlib stream that must yield exactly `size` bytes.

    Feed compressed chunks until `done`; then `data` is the result and
    `consumed` how many of the fed bytes belonged to the stream. Never
    holds more than `size` + 1 output bytes, whatever the input claims.
    With `crc`, the `header` and stream bytes are checked against it.
    """

    def __init__(self, size: int, where: object, crc: int | None = None,
                 header: bytes = b"") -> None:
        self._inf = EntryInflater(size, where, crc, header, len(header))
        self._parts: list[bytes] = []
        self.size = size
        self.where = where

    @property
    def done(self) -> bool:
        return self._inf.done

    @property
    def consumed(self) -> int:
        return self._inf.consumed

    def feed(self, chunk: bytes) -> None:
        inf = self._inf
        if inf.done:
            return
        inf.feed(chunk)
        while not inf.needs_input and not inf.done:
            self._parts.append(inf.read(self.size + 1))

    @property
    def data(self) -> bytes:
        return b"".join(self._parts)


def inflate_from(pread: Pread, offset: int, size: int, end: int, where: object,
                 crc: int | None = None, header: bytes = b"") -> tuple[bytes, int]:
    """Inflate the zlib stream at `offset` (not past `end`) to exactly `size` bytes.

    Returns (data, compressed length). With `crc`, the `header` (the
    entry's bytes before `offset`) and the stream are checked against it.
    """
    stream = EntryStream(EntryInflater(size, where, crc, header, len(header)), pread, offset, end,
                         first_step(size), 1 << 22)
    parts = []
    while True:
        out = stream.next_chunk(size + 1)
        if not out:
            break
        parts.append(out)
    return (parts[0] if len(parts) == 1 else b"".join(parts)), stream.inflater.consumed
