"""Git objects out of an image, read through a byte-range callable.

`Store` is the object layer under the path API (`image.py`). Opening one
reads the image header, the PACK header and the IDX head (magic, version,
fanout): nothing else, so a light-mode boot touches a handful of sectors.
Objects are then found with a binary search in the IDX that reads only the
sectors it touches (`idx.find`), or, once `load_index()` has been called
(fast mode), through an in-memory table built from one sequential read of
the IDX.

Every object is decoded defensively, because the image comes from outside
the guest:
- entry offsets must fall inside the pack (which ends before the IDX);
- declared sizes are capped by `max_object_size` (a delta's result size
  too, before it is built) and by what the rest of the pack could possibly
  inflate to (deflate cannot exceed ~1032:1); the bytes built to answer
  one lookup (base, delta data and results of its chain) by
  `max_lookup_bytes`; whole blobs larger than that are not held but
  streamed (`stream_object`), and `object_size` and `read_head` read no
  more than they need (see format/limits.py);
- delta chains (OFS_DELTA and REF_DELTA, mixed, any depth up to
  `max_delta_depth`) are resolved iteratively, with cycle detection;
- the IDX stores a CRC-32 of every packed entry: whenever the store knows
  which IDX slot an entry belongs to (always for the objects it is asked
  for; for every delta base too once the index is loaded) it checks the
  entry's bytes against it, so a damaged entry header or IDX offset is
  reported rather than decoded into the wrong object;
- the object's type must be the one its referrer expects;
- with `verify=True`, the SHA-1 of every object returned is checked
  against the id it was asked for, before any of it is handed out (a large
  blob streamed whole goes through a temporary file first): this makes any
  damage, and any other image's bytes, detectable.

Delta bases are kept in a small LRU bounded in bytes, so reading many files
of one delta family resolves the shared part of the chain once.
"""

from __future__ import annotations

import operator
import struct
from bisect import bisect_right
from itertools import islice
from collections import OrderedDict
from collections.abc import Callable

from ..format import idx as idxmod
from ..format import layout
from ..errors import DamagedImage, DeviceError, LimitExceeded
from ..format.inflate import (EntryInflater, EntryStream, check_crc, first_step, inflate_entry,
                              truncated)
from ..format.layout import Pread
from ..format.limits import INFLATE_STEP, MAX_LOOKUP_BYTES, STREAM_THRESHOLD
from ..format.pack import (BASE_TYPES, DEFAULT_MAX_OBJECT_SIZE, MAX_ENTRY_HEADER, OBJ_OFS_DELTA,
                   OBJ_REF_DELTA, TYPE_NAMES, apply_delta, check_delta, delta_sizes,
                   object_id, parse_entry_header, parse_pack_header, write_delta)

TYPE_CHECKING = False  # (`typing` costs a guest's start-up: see the package docstring)
if TYPE_CHECKING:
    from typing import BinaryIO

    from ..format.pack import EntryHeader

DEFAULT_MAX_DELTA_DEPTH = 10_000
# An upper bound, filled only by what is read. Reading ten releases of a
# project file by file needs one release's worth of bases to stay in it
# (git's own delta base cache is 96 MiB); 16 MiB made django's read-all
# inflate 6.7 times as many objects.
DEFAULT_CACHE_BYTES = 64 << 20
# Deflate's best case is 258 bytes per ~2 bits: no stream inflates by more
# than about 1032:1, so a declared size beyond that is a lie.
MAX_DEFLATE_RATIO = 1032
# A deflate block header (code length tables) fits in well under 1 KiB.
MAX_DELTA_HEAD_INPUT = 4096


class _Where:
    """Where an entry is, formatted only if an error message needs it."""

    __slots__ = ("pos", "oid", "what")

    def __init__(self, pos: int, oid: bytes | None = None, what: str = "") -> None:
        self.pos, self.oid, self.what = pos, oid, what

    def __str__(self) -> str:
        if self.oid:
            return f"{self.what}object {self.oid.hex()} at offset {self.pos}"
        return f"{self.what or ''}offset {self.pos}"


_where = _Where


def _declared_result(eh: EntryHeader, buf: bytes) -> int:
    """A delta's result size, if the first bytes read with its header hold
    it (0 if not: the size is then checked once its data is inflated)."""
    try:
        return delta_sizes(EntryInflater(eh.size, "", None, buf, eh.header_len).read(20), "")[1]
    except DamagedImage:
        return 0


class Store:
    """Objects of one image. Not thread-safe (one reader per thread)."""

    def __init__(self, pread: Pread, capacity: int, *, verify: bool = False,
                 max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
                 max_delta_depth: int = DEFAULT_MAX_DELTA_DEPTH,
                 cache_bytes: int = DEFAULT_CACHE_BYTES,
                 max_lookup_bytes: int = MAX_LOOKUP_BYTES) -> None:
        self.pread = pread
        self.capacity = capacity
        self.verify = verify
        self.max_object_size = max_object_size
        self.max_delta_depth = max_delta_depth
        self.cache_bytes = cache_bytes
        self.max_lookup_bytes = max_lookup_bytes
        layout.check_is_image(pread, capacity)  # a text or a tar: not "damaged"
        self.header = layout.parse_header(self._exact(0, layout.HEADER_SIZE, "image header"),
                                          capacity)
        self.object_count = parse_pack_header(
            self._exact(layout.PACK_OFFSET, layout.PACK_HEADER_SIZE, "PACK header"),
            f"PACK header at offset {layout.PACK_OFFSET}")
        base = self.header.idx_offset
        self.idx = idxmod.parse_head(self._exact(base, idxmod.HEAD_SIZE, "IDX header"), base)
        idxmod.check_fits(self.idx, capacity)
        if self.idx.count != self.object_count:
            raise DamagedImage(f"the PACK holds {self.object_count} objects, "
                               f"its IDX lists {self.idx.count}", f"IDX at offset {base}")
        self.pack_start = layout.PACK_OFFSET + layout.PACK_HEADER_SIZE
        # The pack's 20-byte checksum (and at least one byte of padding)
        # lies between the last entry and the IDX.
        self.pack_end = base - layout.SHA1_SIZE
        # Filled by load_index(): raw id -> (absolute offset, crc); offset -> crc.
        self._by_id: dict[bytes, tuple[int, int]] | None = None
        self._crc_at: dict[int, int] | None = None
        # offset -> (type name, data, entry length, the CRC-32 its bytes were
        # checked against, or None): a later lookup that expects another CRC
        # there (a damaged IDX pointing two ids at one entry) checks again.
        self._cache: OrderedDict[int, tuple[str, bytes | bytearray, int, int | None]] = OrderedDict()
        self._cached_bytes = 0
        self.objects_inflated = 0
        # What the last `_read_at` built (bytes of work, deltas applied), for
        # `_stream_delta`'s share of the max_lookup_bytes check.
        self._last_work = 0
        self._last_depth = 0

    @property
    def commit_id(self) -> bytes:
        return self.header.commit_id

    @property
    def indexed(self) -> bool:
        return self._by_id is not None

    # -- raw bytes ---------------------------------------------------------

    def _exact(self, offset: int, length: int, what: str) -> bytes:
        data = self.pread(offset, length)
        if len(data) != length:
            raise DamagedImage(f"{what} runs past the end of the device ({self.capacity} bytes)",
                               f"offset {offset}")
        return data

    # -- the IDX -----------------------------------------------------------

    def load_index(self) -> None:
        """Read the whole IDX once into memory (fast mode).

        One sequential read of the name, CRC and offset tables replaces the
        binary searches, and gives every entry's CRC by offset, so delta
        bases reached by distance are checked too. The tables are checked
        against the fanout (sorted ids, first bytes agreeing with it) so
        that fast and light modes see the same objects.
        """
        ix = self.idx
        n = ix.count
        names_raw = self._exact(ix.name_at(0), 20 * n, "IDX name table")
        crc_raw = self._exact(ix.crc_at(0), 4 * n, "IDX CRC table")
        off_raw = self._exact(ix.offset_at(0), 4 * n, "IDX offset table")
        names = [names_raw[i:i + 20] for i in range(0, 20 * n, 20)]
        crcs = struct.unpack(f">{n}I", crc_raw)
        offsets = list(struct.unpack(f">{n}I", off_raw))
        where = f"IDX at offset {ix.base}"
        if not all(map(operator.lt, names, islice(names, 1, None))):
            raise DamagedImage("IDX ids are not sorted", where)
        first = names_raw[0::20]  # the first byte of every id, sorted
        for b in range(256):
            if bisect_right(first, b) != ix.fanout[b]:
                raise DamagedImage(f"IDX fanout disagrees with its ids at entry {b}", where)
        large = [i for i, o in enumerate(offsets) if o & idxmod.LARGE_OFFSET_FLAG]
        if large:
            ks = [offsets[i] & ~idxmod.LARGE_OFFSET_FLAG for i in large]
            if max(ks) >= n:
                raise DamagedImage("IDX 64-bit offset index out of range", where)
            table = struct.unpack(f">{max(ks) + 1}Q",
                                  self._exact(ix.large_at(0), 8 * (max(ks) + 1),
                                              "IDX 64-bit offset table"))
            for i, k in zip(large, ks):
                offsets[i] = table[k]
        positions = [layout.PACK_OFFSET + off for off in offsets]
        if n:
            low, high = min(positions), max(positions)
            if low < self.pack_start or high >= self.pack_end:
                bad = low if low < self.pack_start else high
                self._check_offset(bad, names[positions.index(bad)])
        by_id = dict(zip(names, zip(positions, crcs)))
        crc_at = dict(zip(positions, crcs))
        if len(crc_at) != n:
            raise DamagedImage("IDX gives two objects the same offset", where)
        self._by_id = by_id
        self._crc_at = crc_at

    def locate(self, oid: bytes) -> tuple[int, int] | None:
        """(absolute offset, CRC-32 of the entry) of `oid`, or None if absent."""
        if self._by_id is not None:
            return self._by_id.get(oid)
        ix = self.idx
        i = idxmod.find(self.pread, ix, oid)
        if i is None:
            return None
        pos = layout.PACK_OFFSET + idxmod.offset_of(self.pread, ix, i)
        self._check_offset(pos, oid)
        (crc,) = struct.unpack(">I", self._exact(ix.crc_at(i), 4, "IDX CRC table"))
        return pos, crc

    def __contains__(self, oid: bytes) -> bool:
        return self.locate(oid) is not None

    def offset_of(self, oid: bytes) -> int | None:
        found = self.locate(oid)
        return None if found is None else found[0]

    def _check_offset(self, pos: int, oid: bytes | None = None) -> None:
        if not self.pack_start <= pos < self.pack_end:
            raise DamagedImage(
                f"entry offset {pos} is outside the pack ({self.pack_start}..{self.pack_end})",
                _where(pos, oid))

    # -- objects -----------------------------------------------------------

    def _placed(self, oid: bytes, offset: int | None) -> tuple[int, int | None]:
        """(pack offset, IDX CRC-32 or None) of `oid`: through the IDX, or the
        offset a path index gave and the CRC fast mode holds for it."""
        if offset is None:
            found = self.locate(oid)
            if found is None:
                raise DamagedImage(f"object {oid.hex()} is not in the image",
                                   f"IDX at offset {self.idx.base}")
            return found
        return offset, None if self._crc_at is None else self._crc_at.get(offset)

    def read_object(self, oid: bytes, expect: str | None = None,
                    offset: int | None = None) -> tuple[str, bytes]:
        """The (type name, content) of `oid`; DamagedImage if it is missing.

        `expect` is the type the referrer implies (a tree entry's mode, a
        commit's `tree` line). `offset`, when known (fast mode's path
        index), skips the IDX lookup.
        """
        offset, crc = self._placed(oid, offset)
        return self._object_at(oid, expect, offset, crc)

    def _object_at(self, oid: bytes, expect: str | None, offset: int, crc: int | None,
                   first: tuple[EntryHeader, bytes] | None = None) -> tuple[str, bytes]:
        """`read_object` once the entry is placed; `first`: its header and
        first bytes, when the caller has read them already."""
        typ, found = self._read_at(offset, crc, oid, first)
        # a large object inflated in place: not handed out
        data = bytes(found) if isinstance(found, bytearray) else found
        if expect is not None and typ != expect:
            raise DamagedImage(f"object {oid.hex()} is a {typ}, a {expect} was expected",
                               _where(offset, oid))
        if self.verify and object_id(typ, data) != oid:
            raise DamagedImage(f"SHA-1 mismatch: the content of {oid.hex()} hashes to "
                               f"{object_id(typ, data).hex()}", _where(offset, oid))
        return typ, data

    def object_size(self, oid: bytes, offset: int | None = None) -> int:
        """The size of an object, from a header whose CRC-32 is checked.

        A size is an answer (`stat`): it comes from an entry whose bytes
        the IDX's CRC-32 vouches for, or it is an error. The entry is
        inflated as a stream into nothing (a delta's data keeping its first
        bytes, where the result size is), so memory stays flat whatever
        the size; without a CRC to check against, the object is read.
        """
        offset, crc = self._placed(oid, offset)
        where = _where(offset, oid)
        cached = self._cache_get(offset, crc, where)
        if cached is not None:
            return len(cached[1])
        if crc is None:
            return len(self.read_object(oid, offset=offset)[1])
        self._check_offset(offset, oid)
        eh, buf = self._entry_header(offset, where, None)
        head = bytearray()

        def keep_head(piece: bytes) -> None:
            if len(head) < 20:
                head.extend(piece[:20 - len(head)])

        if eh.type not in BASE_TYPES and eh.size > self.max_object_size:
            raise LimitExceeded(f"delta data of {eh.size} bytes is over the limit of "
                                f"{self.max_object_size}", where, "max_object_size")
        self._stream_entry(offset, eh, buf, crc, where, keep_head)
        if eh.type in BASE_TYPES:
            return eh.size
        _, size, _ = delta_sizes(bytes(head), where)
        if size > self.max_object_size:
            raise LimitExceeded(f"delta result of {size} bytes is over the limit of "
                                f"{self.max_object_size}", where, "max_object_size")
        return size

    def _entry_stream(self, pos: int, eh: EntryHeader, buf: bytes, crc: int | None,
                      where: str | _Where, step: int | None = None,
                      max_step: int = 4 * INFLATE_STEP) -> EntryStream:
        """The entry at `pos` as a stream (format/inflate.py: bounded by its
        declared size, which it must inflate to, CRC-32 checked when known),
        fed first the bytes read with its header (`buf`).

        Reads sized to the stream a small object needs (about its size), by
        default doubling up to 4 MiB for a large one: one read for most
        entries, few for big ones, never a megabyte fetched for a kilobyte.
        """
        inf = EntryInflater(eh.size, where, crc, buf, eh.header_len)
        if step is None:
            step = first_step(eh.size, 4096)
        return EntryStream(inf, self.pread, pos + len(buf), self.pack_end, step, max_step)

    def _stream_entry(self, pos: int, eh: EntryHeader, buf: bytes, crc: int | None,
                      where: str | _Where,
                      sink: Callable[[bytes], None], stop_after: int | None = None) -> int:
        """Inflate an entry's data into `sink`, INFLATE_STEP bytes at a time.

        Memory stays bounded whatever the entry declares or inflates to.
        The declared size and the CRC-32 (when known) are checked when the
        stream ends, before its last piece goes to `sink`. With
        `stop_after`, stops once that many bytes went out (a head is
        wanted), checking only what was met by then. Returns the entry's
        length in the pack (0 when stopped early).
        """
        stream = self._entry_stream(pos, eh, buf, crc, where)
        have = 0
        while True:
            out = stream.next_chunk(INFLATE_STEP)
            if not out:
                break
            sink(out)
            have += len(out)
            if stop_after is not None and have >= stop_after:
                return 0
        self.objects_inflated += 1
        return eh.header_len + stream.inflater.consumed

    def _whole_entry(self, oid: bytes, offset: int | None
                     ) -> tuple[int, int | None, _Where, EntryHeader, bytes]:
        """(offset, crc, where, entry header, first bytes) of `oid`'s entry,
        its declared size not limited: for callers that stream it."""
        offset, crc = self._placed(oid, offset)
        self._check_offset(offset, oid)
        where = _where(offset, oid)
        eh, buf = self._entry_header(offset, where, None)
        return offset, crc, where, eh, buf

    def stream_object(self, oid: bytes, write: Callable[[bytes], object],
                      expect: str | None = "blob", offset: int | None = None) -> int:
        """Write the content of `oid` through `write`; return its size.

        A blob stored whole and larger than STREAM_THRESHOLD is not held
        (memory does not grow with its size, and `max_object_size` does not
        apply): with `verify` it is hashed on its way into a temporary file
        and written from there once its SHA-1 is proven (`_spooled`), so
        nothing goes out for a damaged or forged object; without, it is
        written as it inflates and its CRC-32 is checked at the end, after
        some bytes went out. A delta whose result is larger than that is
        checked (and hashed) on its base first, then written piece by
        piece (`_stream_delta`): the result is never held whole. Anything
        else is read (and checked) first, then written: nothing goes out
        for a damaged object.
        """
        offset, crc, where, eh, buf = self._whole_entry(oid, offset)
        if (eh.type not in BASE_TYPES and offset not in self._cache
                and _declared_result(eh, buf) > STREAM_THRESHOLD):
            return self._stream_delta(oid, offset, crc, where, eh, buf, expect, write)
        if (eh.type not in BASE_TYPES or eh.size <= STREAM_THRESHOLD
                or offset in self._cache):
            # The header read here is not read again, unless its size is
            # over the limit: then `_read_at` reads it and says so.
            first = (eh, buf) if eh.size <= self.max_object_size else None
            _, data = self._object_at(oid, expect, offset, crc, first)
            write(data)
            return len(data)
        if self.verify:
            self._spooled(oid, offset, crc, where, eh, buf, expect, write)
        else:
            self._stream_checked(oid, offset, crc, where, eh, buf, expect, write)
        return eh.size

    def content(self, oid: bytes, expect: str | None = "blob", offset: int | None = None
                ) -> bytes | BinaryIO:
        """The content of `oid`, checked before it is returned: as bytes when
        it is built whole (up to STREAM_THRESHOLD, or a delta's result up to
        that), else as a temporary file positioned at its start, which the
        caller closes (a large entry stored whole: `spool_entry`'s file, the
        one copy hashed; a large delta's result: written there once proven).
        For a server that must not send a byte of a file before the whole of
        it is checked (docteur_core/web): unlike `stream_object`, no second
        copy of a spooled entry is made. Without `verify`, a spooled entry is
        checked against its CRC-32 before it is returned."""
        offset, crc, where, eh, buf = self._whole_entry(oid, offset)
        cached = offset in self._cache
        if eh.type in BASE_TYPES and eh.size > STREAM_THRESHOLD and not cached:
            return self.spool_entry(oid, offset, crc, where, eh, buf, expect)
        if (eh.type not in BASE_TYPES and not cached
                and _declared_result(eh, buf) > STREAM_THRESHOLD):
            import tempfile

            spool = tempfile.TemporaryFile(prefix="docteur-content-")
            try:
                self._stream_delta(oid, offset, crc, where, eh, buf, expect, spool.write)
                spool.seek(0)
            except BaseException:
                spool.close()
                raise
            return spool
        first = (eh, buf) if eh.size <= self.max_object_size else None
        return self._object_at(oid, expect, offset, crc, first)[1]

    def _spooled(self, oid: bytes, offset: int, crc: int | None, where: str | _Where,
                 eh: EntryHeader, buf: bytes, expect: str | None,
                 write: Callable[[bytes], object]) -> None:
        """Stream a large entry through `spool_entry`'s file: written out
        only once its id is proven."""
        with self.spool_entry(oid, offset, crc, where, eh, buf, expect) as spool:
            while True:
                piece = spool.read(INFLATE_STEP)
                if not piece:
                    break
                write(piece)

    def spool_entry(self, oid: bytes, offset: int, crc: int | None, where: str | _Where,
                    eh: EntryHeader, buf: bytes, expect: str | None) -> BinaryIO:
        """A temporary file holding a large entry's content, hashed (and its
        type and size checked) on the way in, positioned at its start: the
        one copy both the hash and every later read see (reading the device
        again could be answered with other bytes, by a lying server). The
        caller closes it. A disk that fails is one line saying what to do."""
        import tempfile

        try:
            spool = tempfile.TemporaryFile(prefix="docteur-verify-")
        except OSError as exc:
            raise DeviceError(f"cannot make a temporary file to check {oid.hex()} before "
                              f"using it ({exc.strerror or exc}); set TMPDIR, or pass "
                              "--no-verify") from None
        try:
            self._stream_checked(oid, offset, crc, where, eh, buf, expect, spool.write)
            spool.seek(0)
        except OSError as exc:
            spool.close()
            raise DeviceError(f"cannot spool {oid.hex()} ({eh.size} bytes) to check it "
                              f"before using it: {exc.strerror or exc}; free space in "
                              "TMPDIR, or pass --no-verify") from None
        except BaseException:
            spool.close()
            raise
        return spool

    def verified_size(self, oid: bytes, offset: int | None = None) -> int:
        """The size of a blob, proven by hashing its content (a header, even
        with its CRC-32, is the image's word); a large one stored whole is
        hashed as it inflates, into nothing."""
        offset, crc, where, eh, buf = self._whole_entry(oid, offset)
        if eh.type in BASE_TYPES and eh.size > STREAM_THRESHOLD and offset not in self._cache:
            self._stream_checked(oid, offset, crc, where, eh, buf, "blob", lambda piece: None)
            return eh.size
        count = 0

        def add(piece: bytes) -> None:
            nonlocal count
            count += len(piece)

        self.stream_object(oid, add, "blob", offset)  # read whole, or a large delta piece by piece
        return count

    def _stream_delta(self, oid: bytes, offset: int, crc: int | None, where: str | _Where,
                      eh: EntryHeader, buf: bytes,
                      expect: str | None, write: Callable[[bytes], object]) -> int:
        """Write a large delta's result without building it.

        Reading a 24 MB file stored as a delta used to hold its base, the
        delta, the pieces of the result and the result joined (and cache
        it); here only the base (through the usual chain resolution and
        cache) and the delta are held. Every check of `read_object` is
        made, in the same words, before anything is written: the entry's
        size limits and CRC-32, the work limit, the type, each delta
        instruction and, with `verify`, the SHA-1.
        """
        if eh.size > self.max_object_size:
            raise LimitExceeded(f"entry declares {eh.size} bytes, over the limit of "
                                f"{self.max_object_size}", where, "max_object_size")
        result = _declared_result(eh, buf)
        if result > self.max_object_size:  # before its base is built
            raise LimitExceeded(f"delta result of {result} bytes is over the limit of "
                                f"{self.max_object_size}", where, "max_object_size")
        declared = eh.size + result
        if declared > self.max_lookup_bytes:
            raise self._too_much_work(declared, 1, where)
        if eh.type == OBJ_OFS_DELTA:
            assert eh.base_distance is not None  # an OFS_DELTA's header has one
            bpos = offset - eh.base_distance
            if bpos < self.pack_start:
                raise DamagedImage(f"OFS_DELTA base {eh.base_distance} bytes back is "
                                   "before the start of the pack", where)
            bid, bwhere = None, _Where(bpos, None, "delta base at ")
            bcrc = None
            if self._crc_at is not None:
                bcrc = self._crc_at.get(bpos)
                if bcrc is None:
                    raise DamagedImage("delta base is not an entry the IDX lists", bwhere)
        else:
            assert eh.base_id is not None  # a REF_DELTA's header has one
            found = self.locate(eh.base_id)
            if found is None:
                raise DamagedImage(f"REF_DELTA base {eh.base_id.hex()} is not in the image",
                                   where)
            (bpos, bcrc), bid = found, eh.base_id
        if bpos == offset:
            raise DamagedImage("delta chain loops back to an earlier entry", where)
        typ, base = self._read_at(bpos, bcrc, bid)
        work = self._last_work + declared
        if work > self.max_lookup_bytes:
            raise self._too_much_work(work, self._last_depth + 1, where)
        if expect is not None and typ != expect:
            raise DamagedImage(f"object {oid.hex()} is a {typ}, a {expect} was expected", where)
        delta, _ = self._inflate_entry(offset, eh, buf, crc, where)
        h = None
        if self.verify:
            import hashlib

            h = hashlib.sha1(f"{typ} {delta_sizes(delta, where)[1]}\0".encode("ascii"))
        check_delta(base, delta, where, self.max_object_size, None if h is None else h.update)
        if h is not None and h.digest() != oid:
            raise DamagedImage(f"SHA-1 mismatch: the content of {oid.hex()} hashes to "
                               f"{h.hexdigest()}", where)
        return write_delta(base, delta, write, where, self.max_object_size)

    def read_head(self, oid: bytes, expect: str | None, limit: int,
                  offset: int | None = None) -> tuple[str, bytes, int]:
        """(type, at most the first `limit` bytes, whole size) of an object.

        For the commit at open: its header lines are all the reader needs,
        and a message of hundreds of megabytes must not be inflated for
        them. An object stored whole is inflated only up to `limit` (with
        `verify`, to its end as a stream, hashed, keeping the head); a delta
        is built, within the usual limits.
        """
        offset, crc, where, eh, buf = self._whole_entry(oid, offset)
        if eh.type not in BASE_TYPES or eh.size <= limit or offset in self._cache:
            typ, data = self.read_object(oid, expect, offset)
            return typ, data[:limit], len(data)
        head = bytearray()

        def keep(piece: bytes) -> None:
            if len(head) < limit:
                head.extend(piece[:limit - len(head)])

        typ = self._stream_checked(oid, offset, crc, where, eh, buf, expect, keep, limit)
        return typ, bytes(head), eh.size

    def _stream_checked(self, oid: bytes, offset: int, crc: int | None, where: str | _Where,
                        eh: EntryHeader, buf: bytes,
                        expect: str | None, consume: Callable[[bytes], object],
                        stop: int | None = None) -> str:
        """Inflate a whole entry through `consume`, checking its type and, with
        `verify`, its SHA-1 (then all of it is inflated, else it may `stop`
        after that many bytes). Returns its type name."""
        typ = TYPE_NAMES[eh.type]
        if expect is not None and typ != expect:
            raise DamagedImage(f"object {oid.hex()} is a {typ}, a {expect} was expected", where)
        h = None
        if self.verify:
            import hashlib

            h = hashlib.sha1(f"{typ} {eh.size}\0".encode("ascii"))

        def sink(piece: bytes) -> None:
            if h is not None:
                h.update(piece)
            consume(piece)

        self._stream_entry(offset, eh, buf, crc, where, sink, None if h else stop)
        if h is not None and h.digest() != oid:
            raise DamagedImage(f"SHA-1 mismatch: the content of {oid.hex()} hashes to "
                               f"{h.hexdigest()}", where)
        return typ

    def _entry_header(self, pos: int, where: str | _Where, max_size: int | None = -1
                      ) -> tuple[EntryHeader, bytes]:
        """Parse the entry header at `pos`; return it with the bytes read.

        Its declared size is limited by `max_object_size` unless `max_size`
        says otherwise (None: not limited, for entries that are streamed).

        The read runs to the end of the next 512-byte boundary past the
        header, so a small object's whole zlib stream usually comes with it.
        """
        want = min(1024 - pos % 512, self.pack_end - pos)
        buf = self.pread(pos, want)
        eh = parse_entry_header(buf[:MAX_ENTRY_HEADER], where,
                                self.max_object_size if max_size == -1 else max_size)
        room = self.pack_end - (pos + eh.header_len)
        if room <= 0:
            raise DamagedImage("entry has no data before the end of the pack", where)
        if eh.size > room * MAX_DEFLATE_RATIO + 64:
            raise DamagedImage(f"entry declares {eh.size} bytes, more than the "
                               f"{room} bytes left in the pack could hold", where)
        return eh, buf

    def _inflate_entry(self, pos: int, eh: EntryHeader, buf: bytes, crc: int | None,
                       where: str | _Where) -> tuple[bytes | bytearray, int]:
        """Inflate an entry's data to exactly its declared size; check its
        CRC-32 when known. `buf` holds the entry's first bytes (header
        included). Returns (data, entry length in the pack).

        The reader's hot path (reading every file), through the one entry
        inflater (format/inflate.py) with the reads sized for it: most
        entries' streams come whole with their header (one zlib call, no
        object: `inflate_entry`); a longer one of up to INFLATE_STEP bytes
        is read in one more read of as much as deflate can take for its
        size. Most files of a source tree are a few KiB, whose stream
        surely runs past the first read (unless it packs more than 8:1;
        source text packs 3-5:1): then that read comes first, and one zlib
        call inflates the stream from its first byte (no first piece joined
        to the rest). A longer stream goes on in reads that double.
        """
        size = eh.size
        hl = eh.header_len
        at = pos + len(buf)
        if (len(buf) - hl) * 8 < size <= INFLATE_STEP and at < self.pack_end:
            more = self.pread(at, min(first_step(size, 0), self.pack_end - at))
            at += len(more)
            buf += more
        out, length, inf = inflate_entry(buf, hl, size, where, crc)
        if inf is None:
            self.objects_inflated += 1
            return out, length
        if size <= INFLATE_STEP:
            parts = [out]
            stream = EntryStream(inf, self.pread, at, self.pack_end, first_step(size, 0),
                                 4 * INFLATE_STEP)
            while out:
                out = stream.next_chunk(size + 1)
                parts.append(out)
            self.objects_inflated += 1
            return b"".join(parts), hl + inf.consumed
        # Large results go into one buffer of the declared size: nothing is
        # kept but the result (no list of pieces joined into a second copy,
        # no compressed chunks): a 24 MB object costs 24 MB, not 59. They
        # stay the buffer, which only `read_object` copies to hand out (a
        # delta base or a streamed object is never copied).
        stream = EntryStream(inf, self.pread, at, self.pack_end, first_step(size, 4096),
                             4 * INFLATE_STEP)
        out_buf = bytearray(size)
        filled = len(out)
        out_buf[:filled] = out
        while True:
            piece = stream.next_chunk(INFLATE_STEP)
            if not piece:
                break
            out_buf[filled:filled + len(piece)] = piece
            filled += len(piece)
        self.objects_inflated += 1
        return out_buf, hl + inf.consumed

    def _check_cached_crc(self, pos: int, length: int, crc: int, where: str | _Where) -> None:
        data = self.pread(pos, length)
        if len(data) != length:
            raise truncated(where)
        check_crc(data, crc, where)

    def _cache_get(self, pos: int, crc: int | None, where: str | _Where
                   ) -> tuple[str, bytes | bytearray] | None:
        hit = self._cache.get(pos)
        if hit is None:
            return None
        self._cache.move_to_end(pos)
        typ, data, length, checked = hit
        if crc is not None and crc != checked:
            self._check_cached_crc(pos, length, crc, where)
            self._cache[pos] = (typ, data, length, crc)
        return typ, data

    def _cache_put(self, pos: int, typ: str, data: bytes | bytearray, length: int,
                   checked: int | None) -> None:
        size = len(data)
        if size > self.cache_bytes // 2:
            return
        old = self._cache.pop(pos, None)
        if old is not None:
            self._cached_bytes -= len(old[1])
        self._cache[pos] = (typ, data, length, checked)
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= len(evicted[1])

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0

    def _too_much_work(self, work: int, depth: int, where: str | _Where) -> LimitExceeded:
        return LimitExceeded(f"building this object (a chain of {depth} deltas) takes more "
                             f"than {self.max_lookup_bytes} bytes of work", where,
                             "max_lookup_bytes")

    def _read_at(self, pos: int, crc: int | None, oid: bytes | None = None,
                 first: tuple[EntryHeader, bytes] | None = None
                 ) -> tuple[str, bytes | bytearray]:
        """Decode the entry at absolute offset `pos`, resolving its delta chain.
        `first`: (header, first bytes) of the entry at `pos`, already read."""
        where = _where(pos, oid)
        hit = self._cache_get(pos, crc, where)
        if hit is not None:
            self._last_work, self._last_depth = len(hit[1]), 0
            return hit
        crc_at = self._crc_at
        # (offset, entry header, first bytes, crc, where) of the deltas, outermost first
        chain: list[tuple[int, EntryHeader, bytes, int | None, str | _Where]] = []
        seen = set()
        cur, cur_crc, cur_where = pos, crc, where
        while True:
            if cur != pos:
                hit = self._cache_get(cur, cur_crc, cur_where)
                if hit is not None:
                    base_type, base = hit
                    break
            if cur in seen:
                raise DamagedImage("delta chain loops back to an earlier entry", cur_where)
            seen.add(cur)
            self._check_offset(cur, oid if cur == pos else None)
            if crc_at is not None and cur_crc is None:
                cur_crc = crc_at.get(cur)
                if cur_crc is None:
                    raise DamagedImage("delta base is not an entry the IDX lists", cur_where)
            if first is not None and cur == pos:
                eh, buf = first
            else:
                eh, buf = self._entry_header(cur, cur_where)
            if eh.type in BASE_TYPES:
                base, length = self._inflate_entry(cur, eh, buf, cur_crc, cur_where)
                base_type = TYPE_NAMES[eh.type]
                self._cache_put(cur, base_type, base, length, cur_crc)
                if not chain and len(base) <= self.max_lookup_bytes:
                    # An object stored whole (most of them): no delta to
                    # apply, no work to add up.
                    self._last_work, self._last_depth = len(base), 0
                    return base_type, base
                break
            if len(chain) >= self.max_delta_depth:
                raise DamagedImage(f"delta chain deeper than {self.max_delta_depth}", where)
            chain.append((cur, eh, buf, cur_crc, cur_where))
            if eh.type == OBJ_OFS_DELTA:
                assert eh.base_distance is not None  # an OFS_DELTA's header has one
                nxt = cur - eh.base_distance
                if nxt < self.pack_start:
                    raise DamagedImage(f"OFS_DELTA base {eh.base_distance} bytes back is "
                                       "before the start of the pack", cur_where)
                cur, cur_crc, cur_where = nxt, None, _Where(nxt, None, "delta base at ")
            else:
                assert eh.type == OBJ_REF_DELTA and eh.base_id is not None
                found = self.locate(eh.base_id)
                if found is None:
                    raise DamagedImage(f"REF_DELTA base {eh.base_id.hex()} is not in the image",
                                       cur_where)
                cur, cur_crc = found
                cur_where = _where(cur, eh.base_id)
        # Work per lookup: the bytes built, summed, checked before each step
        # (a chain of 10,000 deltas of 16 MiB results would build 160 GB).
        # The result sizes are read first from the bytes each entry's header
        # came with, when they hold them (nearly always): a chain over the
        # limit is refused before anything of it is built.
        work = len(base)
        limit = self.max_lookup_bytes
        declared = work + sum(link[1].size for link in chain)
        # Each result is at most max_object_size (apply_delta refuses more):
        # a chain that could not pass the limit even so needs no peek at its
        # result sizes (a zlib stream started per link, on every lookup).
        if declared + len(chain) * self.max_object_size > limit:
            for p, eh, buf, c, w in chain:
                declared += _declared_result(eh, buf)
            if declared > limit:
                raise self._too_much_work(declared, len(chain), where)
        for p, eh, buf, c, w in reversed(chain):
            work += eh.size
            if work > limit:
                raise self._too_much_work(work, len(chain), where)
            delta, length = self._inflate_entry(p, eh, buf, c, w)
            _, dst, _ = delta_sizes(delta, w)
            work += dst
            if work > limit:
                raise self._too_much_work(work, len(chain), where)
            base = apply_delta(base, delta, w, self.max_object_size, mutable=True)
            self._cache_put(p, base_type, base, length, c)
        self._last_work, self._last_depth = work, len(chain)
        return base_type, base
