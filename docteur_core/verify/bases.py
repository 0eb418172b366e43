"""Delta bases during the scan: which to keep, for how long, and rebuilding.

git writes a delta's base before it, usually not far: the scan keeps
recently rebuilt objects in an LRU bounded in bytes. A light pass over the
entry headers first counts how many deltas will use each entry, so a base
is kept exactly until its last delta is applied. On a miss the base is
rebuilt from the device, chain and all.

`Bases` is the delta-base half of the scan (`scan.PackScan`, which sets
these fields up): the fields below are the scan's working state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..blockdev.block import BlockDevice
from ..format import layout, pack
from ..errors import DamagedImage, LimitExceeded
from .state import MAX_DELTA_DEPTH, EntryRecord, ObjectBytes, Unresolvable, at_offset
from .stream import Stream


class Bases:
    """Where the scan gets a delta's base: the planned LRU, or the device."""

    device: BlockDevice
    entry_offsets: Sequence[int]
    by_id: dict[bytes, int]
    oid: dict[int, bytes]
    damaged: set[int]
    _info: Callable[[int], EntryRecord | None]  # `Entries.record`
    _read: Callable[[int, int], bytes]
    max_object_size: int
    max_lookup_bytes: int
    # The LRU, and from the header pass how many deltas use each entry (by
    # offset, by id) and, for cached bases, how many uses remain.
    cache_bytes: int
    cache: OrderedDict[int, tuple[int, ObjectBytes]]
    cached: int
    # One object too large for the LRU's share, kept beside it: the last
    # link of a chain of big objects, which the next delta of the chain
    # needs (without it each delta rebuilt the chain from its base:
    # quadratic in the chain's length).
    big_pos: int | None
    big: tuple[int, ObjectBytes] | None
    stats: dict[str, int]
    planned: bool
    uses_at: dict[int, int]
    uses_of: dict[bytes, int]
    remaining: dict[int, int]

    def _plan_bases(self, limit: int) -> None:
        """Count the deltas that will use each entry, from its header alone.

        The IDX gives every entry's start and an entry's first bytes name its
        delta base, so one light pass tells which objects the scan must keep
        and for how long: each is kept until its last delta is applied, then
        dropped. Memory is then what delta resolution needs at that point of
        the pack (capped by `cache_bytes`, beyond which the LRU evicts and
        misses rebuild from the device). A damaged header only spoils the plan.
        """
        s = Stream(self.device, layout.PACK_OFFSET, limit, None)
        uses_at: dict[int, int] = {}
        uses_of: dict[bytes, int] = {}
        for pos in self.entry_offsets:
            if pos >= limit:
                break
            if s.buf_end < pos + 32:
                s.cover(pos, 32)
            rel = pos - s.base
            hdr = s.buf[rel:rel + 32]
            if not hdr:
                break
            c = hdr[0]
            kind = (c >> 4) & 7
            if kind < pack.OBJ_OFS_DELTA:
                continue
            i, n = 1, len(hdr)
            while c & 0x80 and i < n:
                c = hdr[i]
                i += 1
            if kind == pack.OBJ_OFS_DELTA and i < n:
                c = hdr[i]
                i += 1
                distance = c & 0x7F
                while c & 0x80 and i < n:
                    c = hdr[i]
                    i += 1
                    distance = ((distance + 1) << 7) | (c & 0x7F)
                uses_at[pos - distance] = uses_at.get(pos - distance, 0) + 1
            elif kind == pack.OBJ_REF_DELTA:
                base_id = hdr[i:i + 20]
                uses_of[base_id] = uses_of.get(base_id, 0) + 1
        self.uses_at, self.uses_of, self.planned = uses_at, uses_of, True

    def _used(self, base: int) -> None:
        """A delta on `base` was applied: drop the base once nothing else needs it."""
        left = self.remaining.get(base)
        if left is None:
            return
        if left > 1:
            self.remaining[base] = left - 1
            return
        del self.remaining[base]
        if base == self.big_pos:
            self.big_pos = self.big = None
        hit = self.cache.pop(base, None)
        if hit is not None:
            self.cached -= len(hit[1])

    def _keep(self, pos: int, oid: bytes | None, kind: int, data: ObjectBytes) -> None:
        """Cache an object the plan says deltas will need (any, without a plan)."""
        big = len(data) > self.cache_bytes // 4
        if self.planned:
            uses = self.remaining.get(pos)
            if uses is None:
                uses = self.uses_at.get(pos, 0)
                if self.uses_of and oid is not None:
                    uses += self.uses_of.get(oid, 0)
                if not uses:
                    return
                self.remaining[pos] = uses
        if big:
            if self.cache_bytes:  # 0: no cache at all (tests of the cold path)
                self.big_pos, self.big = pos, (kind, data)
            return
        self._cache_put(pos, kind, data)

    def _cache_put(self, pos: int, kind: int, data: ObjectBytes) -> None:
        cache = self.cache
        if pos in cache:
            cache.move_to_end(pos)
            return
        cache[pos] = (kind, data)
        self.cached += len(data)
        if self.cached > self.stats["peak_cached_bytes"]:
            self.stats["peak_cached_bytes"] = self.cached
        while self.cached > self.cache_bytes and cache:
            _, (_, old) = cache.popitem(last=False)
            self.cached -= len(old)

    def _inflate_entry(self, pos: int) -> bytes:
        """Inflate the (already scanned) entry at `pos` again, from the device."""
        rec = self._info(pos)
        assert rec is not None  # called for entries the scan recorded
        kind, hlen, clen, size, _ = rec
        raw = self._read(pos + hlen, clen)
        # The scan inflated these very bytes cleanly: failing now, the device
        # changed them between the two reads (the shared inflater says how).
        inflater = pack.Inflater(size, at_offset(pos))
        try:
            inflater.feed(raw)
        except DamagedImage as exc:
            raise DamagedImage(f"entry changed between two reads: {exc.what}",
                               at_offset(pos)) from None
        if not inflater.done:
            raise DamagedImage("entry changed between two reads: its zlib stream is cut short",
                               at_offset(pos))
        return inflater.data

    def _object_at(self, pos: int) -> tuple[int, ObjectBytes]:
        """The object at `pos`: from the cache, else rebuilt from the device."""
        hit = self.cache.get(pos)
        if hit is not None:
            self.cache.move_to_end(pos)
            return hit
        if pos == self.big_pos and self.big is not None:  # (set together)
            return self.big
        self.stats["cache_misses"] += 1
        chain = []
        o = pos
        while True:
            hit = self.cache.get(o) or (self.big if o == self.big_pos else None)
            if hit is not None:
                kind, data = hit
                break
            rec = None if o in self.damaged else self._info(o)
            if rec is None:
                raise Unresolvable(o)
            if rec[3] > self.max_object_size:
                raise DamagedImage(f"object of {rec[3]} bytes is too large to be a delta base",
                                   at_offset(o))
            if rec[0] < pack.OBJ_OFS_DELTA:
                kind, data = rec[0], self._inflate_entry(o)
                break
            chain.append(o)
            if len(chain) > MAX_DELTA_DEPTH:
                raise DamagedImage(f"delta chain deeper than {MAX_DELTA_DEPTH}", at_offset(pos))
            ref = rec[4]  # its base's offset (OFS_DELTA) or id (REF_DELTA)
            base = self.by_id.get(ref) if isinstance(ref, bytes) else ref
            if base is None:
                raise Unresolvable(o)
            o = base
        # A miss rebuilds a chain: bounded as a reader's lookup is.
        work = len(data)
        for o in reversed(chain):
            self.stats["rebuilt"] += 1
            delta = self._inflate_entry(o)
            work += len(delta) + pack.delta_sizes(delta, at_offset(o))[1]
            if work > self.max_lookup_bytes:
                raise LimitExceeded(f"rebuilding it takes more than {self.max_lookup_bytes} "
                                    "bytes of work", at_offset(pos), "max_lookup_bytes")
            data = pack.apply_delta(data, delta, at_offset(o), self.max_object_size,
                                    mutable=kind == pack.OBJ_BLOB)  # as in scan's `_apply`
            self._keep(o, self.oid.get(o), kind, data)
        return kind, data
