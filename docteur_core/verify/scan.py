"""The full check's one sequential pass over the pack.

Every entry header is parsed, every zlib stream inflated to exactly its
declared size, each entry's CRC-32 computed over the bytes as they pass,
every object rebuilt (deltas on their base, see bases.py) and hashed, and
trees and the commit parsed for the walk (see reach.py). A damaged entry
is reported and the scan resumes at the next entry start the IDX gives,
so one run tells everything.

`scan_pack` is the step: it returns a `ScanResult` (what it learnt of
each entry, of the objects, of the commit, and the pack's SHA-1 when it
read the whole pack). `PackScan` does the work, its delta bases in
bases.py; its fields are its own working state, bound to locals in the
loops (`_blob_run` is most of a verify's time).
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import sys
import zlib
from array import array
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ..format import idx as idxmod
from ..format import layout, objects, pack
from ..format.inflate import EntryInflater, inflate_entry
from ..format.limits import INFLATE_STEP
from ..blockdev.block import BlockDevice
from ..errors import DamagedImage
from .report import R_DELTA_DATA, R_OBJ_DATA, R_OBJ_HEADER, R_OBJECTS, R_PACK_HEADER
from .report import MAX_PROBLEMS_PER_REGION, Report
from .state import (COMMIT_HEAD, MAX_DELTA_DEPTH, OBJ_HEADER,
                    STREAM_THRESHOLD, CommitHead, Entries, EntryError, Limits, ObjectBytes,
                    Objects, Unresolvable, at_offset, hex_id)
from .bases import Bases
from .layoutcheck import Pread
from .locate import Located
from .stream import Stream, read_span

# Entries up to this size (compressed) whose end the IDX gives are inflated
# in one call (`_inflate_whole`); larger ones stream through the buffer.
WHOLE_ENTRY = 1 << 20


# Base objects hashed as they inflate when over STREAM_THRESHOLD: a big blob
# is never held, and of a big commit only its head is (`_HeadHash`).
_STREAMED = (pack.OBJ_BLOB, pack.OBJ_COMMIT)


class _HeadHash:
    """The SHA-1 of an object streamed through `update`, keeping its first
    bytes when it is a commit (COMMIT_HEAD: what the report shows of it), so
    that a message of gigabytes is hashed whole and never held."""

    __slots__ = ("_sha", "_keep", "head")

    def __init__(self, kind: int, size: int) -> None:
        self._sha = hashlib.sha1(OBJ_HEADER[kind] % size)
        self._keep = COMMIT_HEAD if kind == pack.OBJ_COMMIT else 0
        self.head: bytes | None = b"" if self._keep else None

    def update(self, piece: bytes) -> None:
        self._sha.update(piece)
        head = self.head
        if head is not None and len(head) < self._keep:
            self.head = head + piece[:self._keep - len(head)]

    def digest(self) -> bytes:
        return self._sha.digest()


@dataclass(frozen=True)
class ScanResult:
    """What the full scan found (its problems are in the report)."""

    entries: Entries  # each entry: what the IDX is compared with
    objects: Objects  # each object: what the walk follows
    commit: CommitHead | None  # the header's commit, when the scan rebuilt it
    counted_trailer: int | None  # the pack's end found by counting entries (else None)
    pack_sha: bytes | None  # the pack's SHA-1, when the scan read the pack to its trailer
    stats: dict[str, int]  # how delta bases were found (`Report.stats`)


def scan_pack(device: BlockDevice, pread: Pread, capacity: int, located: Located,
              report: Report, limits: Limits) -> ScanResult:
    """Every entry inflated, rebuilt, hashed and checked (module docstring)."""
    return PackScan(device, pread, capacity, located, report, limits).run()


class PackScan(Bases):
    """The full check's pass over every entry, and the diagnosis of damaged ones."""

    def __init__(self, device: BlockDevice, pread: Pread, capacity: int, located: Located,
                 report: Report, limits: Limits) -> None:
        self.device, self.pread, self.capacity = device, pread, capacity
        self.report, self.located = report, located
        self.commit_id = located.commit_id
        self.cache_bytes = limits.cache_bytes
        self.max_object_size = limits.max_object_size
        self.max_paths = limits.max_paths
        self.max_lookup_bytes = limits.max_lookup_bytes
        # What the walk needs (reach.py).
        obj = self.objects = Objects()
        self.by_id, self.otype, self.blob_sizes = obj.by_id, obj.otype, obj.blob_sizes
        self.trees, self.tree_counts = obj.trees, obj.tree_counts
        self.commit_data: bytes | None = None  # its first COMMIT_HEAD bytes at most
        self.commit_size = 0  # the whole commit's
        # What the IDX is compared with (idxcheck.py), see `Entries`.
        if located.idx_bytes is not None:
            offsets, rows, crcs, lane = _resync_offsets(located.idx_bytes, located.idx_count,
                                                        capacity)
        else:
            offsets, rows, crcs, lane = [], None, None, None
        e = self.entries = Entries(offsets, rows, crcs, lane, located.idx_bytes,
                                   self.blob_sizes)
        self.info, self.crc, self.oid, self.starts = e.info, e.crc, e.oid, e.starts
        self.damaged = obj.damaged = e.damaged
        self.entry_offsets, self.entry_rows, self.idx_crcs = offsets, rows, crcs
        self.lane_hlen = lane
        self.lane_count = 0
        self._info, self._lane_record = e.record, e.lane_record
        # offset of a rebuilt delta -> (its chain's depth, the bytes a reader
        # builds to read it cold: its base's, plus the delta and its result,
        # what max_lookup_bytes bounds). Objects stored whole are not listed.
        self.chains: dict[int, tuple[int, int]] = {}
        self.pending_ref: list[int] = []  # REF_DELTAs whose base was not seen yet
        self.scan_complete = False
        self.blames = 0  # damaged entries diagnosed so far (bounded work)
        self.counted_trailer: int | None = None
        self.pack_sha: bytes | None = None
        # Delta bases (bases.py).
        self.cache: OrderedDict[int, tuple[int, ObjectBytes]] = OrderedDict()
        self.cached = 0
        self.big_pos: int | None = None
        self.big: tuple[int, ObjectBytes] | None = None
        self.stats = {"cache_hits": 0, "cache_misses": 0, "rebuilt": 0, "peak_cached_bytes": 0}
        self.planned = False
        self.uses_at: dict[int, int] = {}
        self.uses_of: dict[bytes, int] = {}
        self.remaining: dict[int, int] = {}

    def run(self) -> ScanResult:
        self._scan_pack()
        self._resolve_pending()
        self._count()
        self.entries.lane_count = self.lane_count
        self.objects.complete = self.scan_complete
        commit = None
        if self.commit_data is not None:
            commit = CommitHead(self.commit_data, self.commit_size)
        return ScanResult(self.entries, self.objects, commit, self.counted_trailer,
                          self.pack_sha, self.stats)

    def _read(self, offset: int, length: int) -> bytes:
        return read_span(self.pread, self.capacity, offset, length)

    def problem(self, region: str, where: str, what: str) -> None:
        self.report.problem(region, where, what)

    def warning(self, region: str, where: str, what: str) -> None:
        self.report.warning(region, where, what)

    def _scan_pack(self) -> None:
        report, located = self.report, self.located
        report.check("pack-entries")
        report.check("zlib-streams")
        report.check("deltas")
        report.check("object-ids")
        start = layout.PACK_OFFSET + layout.PACK_HEADER_SIZE
        if located.trailer_at is not None and not located.trailer_guessed:
            limit = located.trailer_at
            by_count = False
        else:
            limit = located.idx.base if located.idx is not None else self.capacity
            limit = min(limit, self.capacity) - layout.SHA1_SIZE
            by_count = True
        if self.entry_offsets:
            self._plan_bases(limit)
        s = Stream(self.device, layout.PACK_OFFSET, limit, None if by_count else limit)
        count = located.pack_count or 0
        pos = start
        n = 0
        complete = True
        hdr_max = pack.MAX_ENTRY_HEADER
        pending = self.pending_ref
        offs = self.entry_offsets
        k = 0  # offs[k] is the first entry start after pos: where this entry must end
        while True:
            if by_count:
                if n >= count:
                    break
            elif pos >= limit:
                break
            if pos >= limit:
                self.problem(R_PACK_HEADER, at_offset(layout.PACK_OFFSET + 8),
                             f"PACK header announces {count} objects, the pack ends after {n}")
                complete = False
                break
            while k < len(offs) and offs[k] <= pos:
                k += 1
            if k < len(offs) and offs[k] <= s.buf_end and offs[k] <= limit:
                # A run of small blobs already read, in the fast lane.
                ran, pos, k = self._blob_run(s, pos, k, count - n if by_count else None)
                if ran:
                    n += ran
                    continue
            nxt = offs[k] if k < len(offs) else (None if by_count else limit)
            # The whole entry when the IDX gives its end and it is not too
            # large (see `_inflate_whole`), else its header.
            if nxt is not None and hdr_max < nxt - pos <= WHOLE_ENTRY:
                s.cover(pos, nxt - pos)
            else:
                s.cover(pos, hdr_max)
            try:
                end = self._entry(s, pos, limit, pending, nxt)
            except DamagedImage as exc:
                end = None
                self._entry_damage(pos, exc)
            n += 1
            if end is None:
                nxt = self._next_start(pos)
                if nxt is None or nxt >= limit:
                    complete = False
                    break
                end = nxt
            pos = end
        self.scan_complete = complete
        if by_count and complete:
            # Hash [28, pos) and take the trailer right after the last entry.
            self.counted_trailer = pos
        if complete and not by_count and n != count:
            self.problem(R_PACK_HEADER, at_offset(layout.PACK_OFFSET + 8),
                         f"PACK header announces {count} objects, the pack holds {n}")
        if not by_count and s.hash_from == limit:
            self.pack_sha = s.hasher.digest()
        self.report.counts.objects = n

    def _blob_run(self, s: Stream, pos: int, k: int, most: int | None) -> tuple[int, int, int]:
        """The bulk of a pack in the fewest Python steps: consecutive blobs
        stored whole, each ending where the IDX says the next entry starts,
        already in the read buffer. Returns (entries done, new pos, new k).

        Each is inflated, CRC'd, hashed and recorded exactly as `_entry`
        and `_finish` would; the first entry that is anything else (a
        delta, a tree, a big blob, one whose stream does not end right at
        the next start, one past the buffer) is left to `_entry`, which
        says what is wrong with it.
        """
        offs = self.entry_offsets
        buf = s.buf
        mv = memoryview(buf)
        base = s.base
        buf_end = s.buf_end
        last = len(offs)
        if most is not None:
            last = min(last, k + most)
        crc, info, starts, oids, otype = self.crc, self.info, self.starts, self.oid, self.otype
        by_id, blob_sizes = self.by_id, self.blob_sizes
        planned = self.planned and not self.uses_of
        uses_at, remaining = self.uses_at, self.remaining
        decompressobj, crc32, sha1 = zlib.decompressobj, zlib.crc32, hashlib.sha1
        stream_limit = min(STREAM_THRESHOLD, WHOLE_ENTRY)
        lane = self.lane_hlen
        if lane is not None:  # its columns come with it (`_idx_offsets_for_resync`)
            rows, idx_crcs, idx = self.entry_rows, self.idx_crcs, self.located.idx_bytes
            assert rows is not None and idx_crcs is not None and idx is not None
        else:
            rows, idx_crcs, idx = array("I"), array("I"), b""
        names_at = idxmod.HEAD_SIZE
        in_lane = 0
        done = 0
        while k < last:
            nxt = offs[k]
            if nxt > buf_end or nxt - pos > WHOLE_ENTRY:
                break
            rel = pos - base
            c = buf[rel]
            if c & 0x70 != 0x30:  # not a blob
                break
            size = c & 15
            i = rel + 1
            shift = 4
            while c & 0x80 and shift < 60:
                c = buf[i]
                i += 1
                size |= (c & 0x7F) << shift
                shift += 7
            end = nxt - base
            if c & 0x80 or size > stream_limit or i >= end:
                break
            entry = mv[rel:end]
            # Its own zlib call, not the shared inflater's one-call form
            # (format.inflate_entry; the same outcome: anything off leaves
            # the entry to `_entry`, which says what is wrong). Measured
            # (CPU, Python 3.11, alternating in one process): on 20,000
            # blobs of 10-100 bytes inflate_entry took 0.24 us an entry more
            # (1.66 against 1.42, best of 60); with it this lane made
            # verify_image of tiny:100000 2.2-2.7% slower (16 runs each:
            # median 824 against 806 ms, best 755 against 736), the lane
            # being most of a verify of many small files. (`_inflate_whole`,
            # which takes far fewer entries, uses it.)
            d = decompressobj()
            try:
                data = d.decompress(mv[i:end], size + 1)
            except zlib.error:
                break
            if not d.eof or d.unused_data or len(data) != size:
                break
            hlen = i - rel
            entry_crc = crc32(entry)
            if size < 4096:
                oid = sha1(b"blob %d\0%s" % (size, data)).digest()
            else:
                h = sha1(b"blob %d\0" % size)
                h.update(data)
                oid = h.digest()
            if lane is not None and offs[k - 1] == pos:
                r = rows[k - 1]
                if entry_crc == idx_crcs[r] and idx.startswith(oid, names_at + 20 * r):
                    lane[k - 1] = hlen  # as the IDX says: kept in 1 byte
                    in_lane += 1
                    lane_oid = True
                else:
                    lane_oid = False
            else:
                lane_oid = False
            if not lane_oid:
                crc[pos] = entry_crc
                info[pos] = (3, hlen, nxt - pos - hlen, size, None)
                starts.append(pos)
                oids[pos] = oid
            otype[pos] = 3
            previous = by_id.setdefault(oid, pos)
            if previous != pos:
                self.warning(R_OBJECTS, at_offset(pos),
                             f"object {hex_id(oid)} is also at offset {previous}")
            blob_sizes[oid] = size
            if not planned or pos in uses_at or pos in remaining:
                self._keep(pos, oid, 3, data)
            done += 1
            pos = nxt
            k += 1
        self.lane_count += in_lane
        return done, pos, k

    def _next_start(self, pos: int) -> int | None:
        offs = self.entry_offsets
        i = bisect.bisect_right(offs, pos)
        return offs[i] if i < len(offs) else None

    def _entry(self, s: Stream, pos: int, limit: int, pending: list[int],
               nxt: int | None) -> int:
        """Check the entry at `pos`; return the offset just after it.

        `nxt` is where the IDX says the next entry starts (None if unknown).
        """
        rel = pos - s.base
        buf = s.buf
        kind = 0
        base_ref: int | bytes | None = None
        if rel + 32 <= len(buf) and pos + 32 <= limit:
            # The header read inline (an EntryHeader per object was ~5% of a
            # verify); anything unusual is left to `parse_entry_header` below,
            # which says what is wrong with it.
            c = buf[rel]
            kind = (c >> 4) & 7
            size = c & 15
            i = rel + 1
            shift = 4
            while c & 0x80:
                if shift > 60:
                    kind = 0
                    break
                c = buf[i]
                i += 1
                size |= (c & 0x7F) << shift
                shift += 7
            base_ref = None
            if kind == pack.OBJ_OFS_DELTA:
                c = buf[i]
                i += 1
                base_ref = c & 0x7F
                while c & 0x80:
                    if base_ref > (1 << 56):
                        kind = 0
                        break
                    c = buf[i]
                    i += 1
                    base_ref = ((base_ref + 1) << 7) | (c & 0x7F)
                if not base_ref:
                    kind = 0
            elif kind == pack.OBJ_REF_DELTA:
                base_ref = bytes(buf[i:i + 20])
                i += 20
            elif kind == 5:
                kind = 0
            hlen = i - rel
        if not kind:
            hdr = buf[rel:rel + min(pack.MAX_ENTRY_HEADER, limit - pos)]
            try:
                eh = pack.parse_entry_header(hdr, "", None)  # limited below, blobs aside
            except DamagedImage as exc:
                raise EntryError(R_OBJ_HEADER, exc.what) from None
            kind, size, hlen = eh.type, eh.size, eh.header_len
            base_ref = eh.base_distance if kind == pack.OBJ_OFS_DELTA else eh.base_id
        zpos = pos + hlen
        is_delta = kind >= pack.OBJ_OFS_DELTA
        if kind != pack.OBJ_BLOB and size > self.max_object_size:
            raise EntryError(R_OBJ_HEADER, f"{pack.TYPE_NAMES.get(kind, 'delta')} of {size} "
                              f"bytes is over the limit of {self.max_object_size} "
                              "(max_object_size)")
        stream_hash = None
        if not is_delta and size > STREAM_THRESHOLD and kind in _STREAMED:
            stream_hash = _HeadHash(kind, size)
        data: bytes | None = None
        if (stream_hash is None and nxt is not None and zpos < nxt <= limit
                and nxt - pos <= WHOLE_ENTRY and s.buf_end >= nxt):
            # (The bulk of a pack, small blobs, seldom gets here: `_blob_run`
            # takes them before this.)
            data = self._inflate_whole(s, pos, hlen, nxt, size)
            if data is not None:
                zpos = nxt
        if data is None:
            data, zpos = self._inflate_stream(s, bytes(buf[rel:rel + hlen]), zpos, limit, size,
                                              stream_hash)
        # An OFS_DELTA's base by its offset (the header gave the distance
        # back), a REF_DELTA's by its id, None for an object stored whole.
        base_at = pos - base_ref if isinstance(base_ref, int) else base_ref
        self.info[pos] = (kind, hlen, zpos - pos - hlen, size, base_at)
        self.starts.append(pos)
        if stream_hash is not None:
            self._finish(pos, kind, stream_hash.head, stream_hash.digest(), size)
            return zpos
        if not is_delta:
            self._finish(pos, kind, data)
            return zpos
        assert data is not None  # only what is hashed as it streams is not held: no delta
        if isinstance(base_at, int):
            base = base_at
            if base not in self.info and self._lane_record(base) is None:
                self.damaged.add(pos)
                if base in self.damaged:
                    self._cascade(pos, base)
                else:
                    self.problem(R_OBJ_HEADER, at_offset(pos),
                                 f"OFS_DELTA base at offset {base} is not the start of an "
                                 "object before it")
                return zpos
        else:
            found = self.by_id.get(base_at) if base_at is not None else None
            if found is None:
                pending.append(pos)  # its base may come later: resolved after the scan
                return zpos
            base = found
        self._apply(pos, base, data)
        return zpos

    def _inflate_whole(self, s: Stream, pos: int, hlen: int, end: int, size: int
                       ) -> bytes | None:
        """The common case in a few C calls: an entry that ends where the next begins.

        With the entry's end known from the IDX, the whole entry is in the
        buffer: one inflate, one CRC-32. None when anything is off (the
        stream is damaged, too long or too short, or does not end exactly
        at `end`): `_inflate_stream` then finds out what and says so.
        """
        rel = pos - s.base
        entry = memoryview(s.buf)[rel:rel + end - pos]
        try:
            data, used, more = inflate_entry(entry, hlen, size, pos)
        except DamagedImage:
            return None
        if more is not None or used != end - pos:
            return None
        self.crc[pos] = zlib.crc32(entry)
        return data

    def _inflate_stream(self, s: Stream, hdr: bytes, zpos: int, limit: int, size: int,
                        stream_hash: _HeadHash | None) -> tuple[bytes | None, int]:
        """Inflate the zlib stream at `zpos` as it comes, with the CRC-32 of the entry.

        Returns the data (None when hashed as it inflates into `stream_hash`)
        and the offset just after the stream. Raises EntryError with the
        precise complaint on a damaged stream.
        """
        # The shared inflater, fed from the scan's buffer: it bounds and
        # checks the stream; the CRC-32 is taken here over exactly the bytes
        # the stream used (the IDX's is compared with it later, idxcheck.py).
        pos = zpos - len(hdr)
        crc = zlib.crc32(hdr)
        inf = EntryInflater(size, None)
        # Hashed as it inflates: INFLATE_STEP bytes out at a time, so a
        # stream of zeros declaring gigabytes costs no memory.
        step = INFLATE_STEP if stream_hash is not None else size + 1
        parts = []
        fed = 0
        guess = size + (size >> 8) + 64
        try:
            while True:
                rel = zpos - s.base
                avail = min(s.buf_end, limit) - zpos
                if avail <= 0:
                    if zpos >= limit or not s.cover(zpos, 1) or min(s.buf_end, limit) <= zpos:
                        raise EntryError(None, "zlib stream runs past the end of the pack")
                    continue
                take = avail if avail < guess else guess
                chunk = memoryview(s.buf)[rel:rel + take]
                inf.feed(chunk)
                while not inf.needs_input:
                    out = inf.read(step)
                    if stream_hash is not None:
                        stream_hash.update(out)
                    else:
                        parts.append(out)
                    if inf.done:
                        break
                if inf.done:
                    used = inf.consumed - fed
                    crc = zlib.crc32(chunk[:used], crc)
                    zpos += used
                    break
                crc = zlib.crc32(chunk, crc)
                zpos += take
                fed += take
                guess = max(guess, 1 << 16)
        except EntryError:
            raise
        except DamagedImage as exc:
            raise EntryError(None, exc.what) from None
        self.crc[pos] = crc
        if stream_hash is not None:
            return None, zpos
        return (parts[0] if len(parts) == 1 else b"".join(parts)), zpos

    def _apply(self, pos: int, base: int, delta: bytes) -> None:
        """Rebuild the delta at `pos` on the object at `base`, then finish it."""
        # One dict lookup for the base's chain: (depth, work) of a delta base,
        # absent for an object stored whole (depth 0, work its size).
        known = self.chains.get(base)
        if known is None:
            depth = 1
            info = self._info(base)
            base_work = info[3] if info is not None else 0
        else:
            depth, base_work = known
            depth += 1
        if depth > MAX_DELTA_DEPTH:
            self.damaged.add(pos)
            self.problem(R_OBJ_HEADER, at_offset(pos),
                         f"delta chain deeper than {MAX_DELTA_DEPTH}")
            return
        # What a reader would build to read this object cold, from the declared
        # sizes: past the readers' work limit it is refused here as there,
        # before anything is built (a chain of 1,000 deltas of 16 MiB objects
        # would have verify build 16 GB that no reader would ever serve).
        # The result size is read inline (a call to `delta_sizes` per delta
        # was 5% of a verify); anything odd leaves it to `apply_delta`.
        try:  # two varints of at most 10 bytes, as `delta_sizes` reads them
            c = delta[0]
            i = shift = 1
            while c & 0x80:
                if shift > 9:
                    raise IndexError
                c = delta[i]
                i += 1
                shift += 1
            c = delta[i]
            result = c & 0x7F
            shift = 7
            while c & 0x80:
                if shift > 63:
                    raise IndexError
                i += 1
                c = delta[i]
                result |= (c & 0x7F) << shift
                shift += 7
        except IndexError:
            result = 0  # apply_delta says what is wrong below
        work = base_work + len(delta) + result
        if work > self.max_lookup_bytes:
            self.damaged.add(pos)
            self.problem(R_OBJECTS, at_offset(pos),
                         f"reading it takes more than {self.max_lookup_bytes} bytes of work "
                         f"(its delta chain builds {work}; max_lookup_bytes)")
            return
        try:
            hit = self.cache.get(base)
            if hit is not None:
                self.cache.move_to_end(base)
                btype, bdata = hit
            elif base == self.big_pos and self.big is not None:  # (set together)
                btype, bdata = self.big
            else:
                btype, bdata = self._object_at(base)
        except Unresolvable:
            self.damaged.add(pos)
            self._cascade(pos, base)
            return
        except DamagedImage as exc:
            self.damaged.add(pos)
            self.problem(R_OBJ_HEADER, at_offset(pos), f"cannot rebuild its base: {exc.what}")
            return
        if self.planned:
            self._used(base)
        try:
            # A blob is hashed and maybe kept as a base, never parsed: the
            # bytearray it was built in will do (no second copy of it).
            data = pack.apply_delta(bdata, delta, "", self.max_object_size,
                                    mutable=btype == pack.OBJ_BLOB)
        except DamagedImage as exc:
            # The zlib stream checked out (adler-32), so the delta is as written:
            # the header's base reference (or the base) is what is wrong.
            self.damaged.add(pos)
            self.problem(R_OBJ_HEADER, at_offset(pos), f"delta does not apply to its base at "
                         f"offset {base}: {exc.what}")
            return
        self.chains[pos] = (depth, work)
        self._finish(pos, btype, data)

    def _cascade(self, pos: int, base: int) -> None:
        self.problem(R_OBJECTS, at_offset(pos),
                     f"delta cannot be rebuilt: its base at offset {base} is damaged")

    def _finish(self, pos: int, kind: int, data: ObjectBytes | None,
                oid: bytes | None = None, size: int | None = None) -> None:
        """A whole object is known: hash it, index it, keep what later checks need.

        Called once per object, so it does the least it can: the counts of
        each type are taken from `otype` once the scan is over (`_count`).
        Given `oid` and `size`, it was hashed as it streamed: `data` is then
        None, or the first bytes of a commit (`_HeadHash`).
        """
        if oid is None:
            assert data is not None  # hashed here: given whole
            size = len(data)
            h = hashlib.sha1(OBJ_HEADER[kind] % size)
            h.update(data)
            oid = h.digest()
        else:
            assert size is not None  # hashed as it streamed: given with its size
        self.oid[pos] = oid
        self.otype[pos] = kind
        previous = self.by_id.setdefault(oid, pos)
        if previous != pos:
            self.warning(R_OBJECTS, at_offset(pos),
                         f"object {hex_id(oid)} is also at offset {previous}")
        if kind == pack.OBJ_BLOB:
            self.blob_sizes[oid] = size
        elif kind == pack.OBJ_TREE:
            # held whole, never streamed (_STREAMED) nor built mutable (`_apply`)
            assert isinstance(data, bytes)
            try:
                entries = objects.parse_tree_raw(data, f"tree {hex_id(oid)}", self.max_paths)
                # Kept raw: its parsed entries cost ~6x its bytes, and the
                # walk needs them one directory at a time (`Objects.tree_entries`).
                self.trees[oid] = data
                self.tree_counts[oid] = len(entries)
                unsorted = objects.tree_order_problem(entries)
                if unsorted:  # git fsck's treeNotSorted
                    self.problem(R_OBJECTS, f"object {hex_id(oid)} at {at_offset(pos)}",
                                 f"malformed tree: {unsorted}")
            except DamagedImage as exc:
                self.problem(R_OBJECTS, f"object {hex_id(oid)} at {at_offset(pos)}",
                             f"malformed tree: {exc.what}")
                self.trees[oid] = b""  # no entries
                self.tree_counts[oid] = 0
        elif kind == pack.OBJ_COMMIT and oid == self.commit_id:
            # a streamed commit keeps its head (_HeadHash); none is built mutable
            assert isinstance(data, bytes)
            self.commit_data = data[:COMMIT_HEAD]  # the whole message is never needed
            self.commit_size = size
        if data is None or len(data) < size:
            return  # streamed, never held: as a base (if ever) it is rebuilt from the device
        if not self.planned or pos in self.uses_at or self.uses_of or pos in self.remaining:
            self._keep(pos, oid, kind, data)

    def _count(self) -> None:
        """The report's counts of objects by type, once every object is rebuilt."""
        counts = self.report.counts
        kinds = Counter(self.otype.values())
        counts.commits = kinds[pack.OBJ_COMMIT]
        counts.trees = kinds[pack.OBJ_TREE]
        counts.blobs = kinds[pack.OBJ_BLOB]
        counts.tags = kinds[pack.OBJ_TAG]
        counts.deltas = sum(1 for rec in self.info.values() if rec[0] >= pack.OBJ_OFS_DELTA)

    def _resolve_pending(self) -> None:
        """REF_DELTA entries whose base came later in the pack (or never)."""
        pending = self.pending_ref
        while pending:
            progress = []
            for pos in pending:
                base = self.by_id.get(self._base_id(pos))
                if base is not None:
                    progress.append(pos)
                    try:
                        delta = self._inflate_entry(pos)
                    except DamagedImage as exc:
                        self.damaged.add(pos)
                        self.problem(R_OBJ_HEADER, at_offset(pos), exc.what)
                        continue
                    self._apply(pos, base, delta)
            if not progress:
                break
            done = set(progress)
            pending = [p for p in pending if p not in done]
        for pos in pending:
            self.damaged.add(pos)
            self.problem(R_OBJ_HEADER, at_offset(pos),
                         f"REF_DELTA base {hex_id(self._base_id(pos))} is not in the pack")

    def _base_id(self, pos: int) -> bytes:
        """The id of the base a pending REF_DELTA at `pos` names."""
        ref = self.info[pos][4]
        assert isinstance(ref, bytes)  # the scan records a REF_DELTA's base by its id
        return ref

    # -- blaming a damaged entry -----------------------------------------

    def _entry_damage(self, pos: int, exc: DamagedImage) -> None:
        self.damaged.add(pos)
        region = exc.region if isinstance(exc, EntryError) else None
        what = exc.what
        if region is None:
            region = self._blame(pos)
        self.problem(region, at_offset(pos), what)

    def _blame(self, pos: int) -> str:
        """Header or data? Look for a complete zlib stream filling the entry.

        The IDX tells where the next entry starts. If some zlib stream that
        starts within the first bytes of the entry inflates cleanly and ends
        exactly there, the compressed data is intact (zlib's adler-32 vouches
        for it) and the header (its length, size or type) is what is wrong.
        """
        raw_hdr = self.pread(pos, pack.MAX_ENTRY_HEADER)
        try:
            eh = pack.parse_entry_header(raw_hdr, at_offset(pos), None)
        except DamagedImage:
            return R_OBJ_HEADER
        data_region = R_DELTA_DATA if eh.type >= pack.OBJ_OFS_DELTA else R_OBJ_DATA
        self.blames += 1
        if self.blames > MAX_PROBLEMS_PER_REGION:
            return data_region  # a wreck: do not spend more time on diagnosis
        end = self._next_start(pos)
        if end is None:
            end = self.located.trailer_at
        if end is None or end - pos > (16 << 20):
            return data_region
        raw = self._read(pos, end - pos)
        for s in range(1, min(len(raw) - 2, pack.MAX_ENTRY_HEADER + 1)):
            cmf, flg = raw[s], raw[s + 1]
            if cmf & 0x0F != 8 or ((cmf << 8) | flg) % 31:
                continue
            # Its own zlib loop, not the shared inflater (format/inflate.py):
            # that holds a stream to a declared size, and here there is none
            # to trust (the header is what is in doubt); the question is only
            # whether some stream ends exactly here, within a budget.
            d = zlib.decompressobj()
            try:
                budget = 64 << 20
                chunk: bytes | memoryview = memoryview(raw)[s:]
                while True:
                    out = d.decompress(chunk, 1 << 20)
                    budget -= len(out)
                    chunk = d.unconsumed_tail
                    if d.eof or not chunk or budget < 0:
                        break
            except zlib.error:
                continue
            if d.eof and not d.unused_data:
                return R_OBJ_HEADER
        return data_region


def _resync_offsets(data: bytes, count: int | None, capacity: int
                    ) -> tuple[Sequence[int], array[int] | None, array[int] | None,
                               bytearray | None]:
    """Every entry start the IDX gives, sorted (where to resync), and, when
    every offset is in 31 bits and distinct, the fast lane's columns:
    (offsets, entry rows, IDX CRC-32s by row, lane header lengths)."""
    assert count is not None  # given with the IDX's bytes
    o0 = idxmod.HEAD_SIZE + 24 * count
    table = struct.unpack_from(f">{count}I", data, o0)
    large_base = idxmod.HEAD_SIZE + 28 * count
    nlarge = (len(data) - large_base - 40) // 8
    if table and max(table) & idxmod.LARGE_OFFSET_FLAG:
        offs: list[int] = []
        for v in table:
            if v & idxmod.LARGE_OFFSET_FLAG:
                k = v & ~idxmod.LARGE_OFFSET_FLAG
                if k < nlarge:
                    offs.append(struct.unpack_from(">Q", data, large_base + 8 * k)[0]
                                + layout.PACK_OFFSET)
            else:
                offs.append(v + layout.PACK_OFFSET)
        # A 64-bit offset past the image starts no entry (the IDX check
        # says so): useless to resync, and one near 2**64 would not even
        # fit the array once the PACK's 28 bytes are added.
        offs = sorted(o for o in offs if o < capacity)
        return array("Q", offs), None, None, None  # 8 bytes an entry, not a 36-byte int
    # The common case (every offset in 31 bits): the IDX row of each
    # entry too, so that the fast lane checks an entry against its row
    # as it goes and keeps nothing of it (`_blob_run`).
    rows = sorted(range(count), key=table.__getitem__)
    starts = array("Q", [table[r] + layout.PACK_OFFSET for r in rows])
    if not all(map(int.__lt__, starts, starts[1:])):  # not distinct: no lane
        return starts, None, None, None
    idx_crcs = array("I", data[idxmod.HEAD_SIZE + 20 * count:o0])
    if sys.byteorder == "little":
        idx_crcs.byteswap()
    return starts, array("I", rows), idx_crcs, bytearray(count)
