"""What every part of the check shares: limits, the state, the reporting.

The check is one pass over the image split by concern into the modules of
this package (layout, IDX, scan, delta bases, reachability...). Each of
them adds methods to one object, so they all see the same state: what the
scan learnt about each entry is what the IDX is compared with, and what
the tree walk follows. `State` declares that state in one place, with what
each field holds, and the one way of recording a problem.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence

from ..format import idx as idxmod
from ..format import limits, objects, pack
from ..blockdev.block import BlockDevice, ByteReader
from ..errors import DamagedImage
from ..reader.commands import MAX_SHOWN_MESSAGE
from .report import MAX_PROBLEMS_PER_REGION, MAX_WARNINGS, Report
from .stream import READ_CHUNK

MAX_DELTA_DEPTH = 10_000  # git never writes chains deeper than 4095
# The reader's limits, shared (format/limits.py): a delta, a delta base or a
# tree larger than max_object_size is reported rather than loaded (git would
# not deltify it: core.bigFileThreshold is 512 MiB too).
MAX_HELD_OBJECT = limits.MAX_OBJECT_SIZE
# Base objects larger than this are hashed while they inflate, not kept.
STREAM_THRESHOLD = limits.STREAM_THRESHOLD
DEFAULT_CACHE_BYTES = 64 << 20
# What is kept of the header's commit: its header lines (as much as a reader
# reads at open) and room for the first MAX_SHOWN_MESSAGE characters of its
# message (4 bytes of UTF-8 at most each), what `info` and `verify` show.
# The rest is hashed as it passes, never held: a message can be gigabytes.
COMMIT_HEAD = limits.MAX_COMMIT_HEADER + 4 * MAX_SHOWN_MESSAGE + 4
# "<type> <size>\0", what git hashes before an object's content.
OBJ_HEADER = {k: f"{name} %d\0".encode() for k, name in pack.TYPE_NAMES.items()}
# An object's bytes: a blob rebuilt from a delta stays the bytearray it was
# built in (`pack.apply_delta(mutable=True)`: no second copy of it).
ObjectBytes = bytes | bytearray


class Stop(Exception):
    """Nothing more can be checked (e.g. not an image at all)."""


class Unresolvable(Exception):
    """An object cannot be rebuilt because something it depends on is damaged."""


class EntryError(DamagedImage):
    """A damaged entry; `region` is None when header-or-data must be found out."""

    def __init__(self, region: str | None, what: str) -> None:
        super().__init__(what)
        self.region = region


def hex_id(raw: bytes) -> str:
    """An object id as problem lines and git show it."""
    return raw.hex()


def at_offset(offset: int) -> str:
    """The `where` of a problem found at an absolute image offset."""
    return f"offset {offset}"


class State:
    """The facts the checks establish and share, grouped by who fills them in.

    Offsets are absolute image offsets (the PACK starts at 28). The mixins
    of this package (locate, scan, bases, idxcheck, reach...) read and
    write these fields; `Verifier` puts them together.
    """

    def __init__(self, device: BlockDevice, quick: bool, cache_bytes: int,
                 max_object_size: int = MAX_HELD_OBJECT, max_paths: int = limits.MAX_PATHS,
                 max_lookup_bytes: int = limits.MAX_LOOKUP_BYTES) -> None:
        self.device = device
        self.reader = ByteReader(device)
        self.capacity = device.capacity
        self.report = Report(quick=quick, capacity=self.capacity)
        self.quick = quick
        self.cache_bytes = cache_bytes
        self.max_object_size = max_object_size
        self.max_paths = max_paths
        self.max_lookup_bytes = max_lookup_bytes
        self.per_region: dict[str, int] = {}  # problems per region, listed or not
        # The header and the regions (layoutcheck.py, locate.py).
        self.commit_id: bytes | None = None
        self.header_idx_offset: int | None = None  # as the header says, even if wrong
        self.idx_offset: int | None = None  # where the IDX really is, once found
        self.idx: idxmod.Idx | None = None
        self.idx_bytes: bytes | None = None  # the whole IDX, read once
        self.idx_end: int | None = None
        self.idx_count: int | None = None
        self.pack_count: int | None = None
        self.pack_ok = False  # the PACK header looked like a PACK header
        self.trailer_at: int | None = None  # absolute offset of the pack trailer
        self.trailer_guessed = False  # found by its position, not by the IDX's copy
        self.trailer_why = ""  # why it is not where the layout puts it (layout.py's words)
        # Checksums (checksums.py, or the scan as it reads).
        self.pack_sha: bytes | None = None
        self.pack_intact = False  # the pack's bytes hash to its trailer
        # The scan (scan.py). Per pack entry: (kind, header_len, comp_len, size,
        # base) where base is an absolute offset (OFS_DELTA), a raw id
        # (REF_DELTA) or None.
        self.info: dict[int, tuple[int, int, int, int, int | bytes | None]] = {}
        self.starts: list[int] = []  # entries parsed, in pack order
        self.entry_offsets: Sequence[int] = []  # from the IDX, sorted: where to resync
        self.crc: dict[int, int] = {}
        # The fast lane (scan.py `_blob_run`): blobs that agree with their IDX
        # row (id and CRC-32) are recorded here, by entry number k (their
        # rank in `entry_offsets`), not in `info`, `crc`, `oid`, `starts`:
        # 5 bytes an object instead of ~300 (`_info` gives their record).
        self.entry_rows: array[int] | None = None  # k -> IDX row (None: no lane)
        self.idx_crcs: array[int] | None = None  # IDX row -> CRC-32
        self.lane_hlen: bytearray | None = None  # k -> header length, 0: not in the lane
        self.lane_count = 0
        self.oid: dict[int, bytes] = {}  # offset -> computed id
        self.otype: dict[int, int] = {}  # offset -> object type once rebuilt
        self.by_id: dict[bytes, int] = {}
        # offset of a rebuilt delta -> (its chain's depth, the bytes a reader
        # builds to read it cold: its base's, plus the delta and its result,
        # what max_lookup_bytes bounds). Objects stored whole are not listed.
        self.chains: dict[int, tuple[int, int]] = {}
        self.damaged: set[int] = set()  # entries already reported
        self.pending_ref: list[int] = []  # REF_DELTAs whose base was not seen yet
        self.scan_complete = False
        self.blames = 0  # damaged entries diagnosed so far (bounded work)
        # What the walk needs (reach.py).
        # Raw tree bytes by id, checked by the scan (a malformed tree is b"").
        self.trees: dict[bytes, bytes] = {}
        self.tree_counts: dict[bytes, int] = {}  # entries of each of those trees
        self.blob_sizes: dict[bytes, int] = {}
        self.commit_data: bytes | None = None  # its first COMMIT_HEAD bytes at most
        self.commit_size = 0  # the whole commit's
        # Delta bases (bases.py): the LRU, and from the header pass how many
        # deltas use each entry (by offset, by id) and, for cached bases, how
        # many uses remain.
        self.cache: OrderedDict[int, tuple[int, ObjectBytes]] = OrderedDict()
        self.cached = 0
        # One object too large for the LRU's share, kept beside it: the
        # last link of a chain of big objects, which the next delta of the
        # chain needs (without it each delta rebuilt the chain from its
        # base: quadratic in the chain's length).
        self.big_pos: int | None = None
        self.big: tuple[int, ObjectBytes] | None = None
        self.stats = {"cache_hits": 0, "cache_misses": 0, "rebuilt": 0, "peak_cached_bytes": 0}
        self.planned = False
        self.uses_at: dict[int, int] = {}
        self.uses_of: dict[bytes, int] = {}
        self.remaining: dict[int, int] = {}

    def _release_scan(self) -> None:
        """Drop what only the scan and the IDX comparison needed, once they are done.

        The walk and the path index check that follow need the ids, types,
        blob sizes and trees only; the per-entry records (offsets, lengths,
        CRCs, ids by offset) and the delta bases would otherwise stay alive
        under the path index check's own peak.
        """
        self.info = {}
        self.crc = {}
        self.entry_rows = self.idx_crcs = self.lane_hlen = None
        self.oid = {}
        self.chains = {}
        self.starts = []
        self.entry_offsets = []
        self.cache = OrderedDict()
        self.cached = 0
        self.big_pos = self.big = None
        self.uses_at, self.uses_of, self.remaining = {}, {}, {}

    def _info(self, pos: int) -> tuple[int, int, int, int, int | bytes | None] | None:
        """The scan's record of the entry at `pos` (see `info`), lane or not."""
        rec = self.info.get(pos)
        if rec is None and self.lane_hlen is not None:
            return self._lane_info(pos)
        return rec

    def _lane_info(self, pos: int) -> tuple[int, int, int, int, None] | None:
        """The record of a blob the fast lane took, rebuilt from its columns.

        None when there is no lane at all: an IDX with 64-bit offsets (or a
        32-bit one whose high bit a damage set) has no row column, so the
        scan recorded every entry in `info`.
        """
        if self.lane_hlen is None:
            return None
        offs = self.entry_offsets
        k = bisect_left(offs, pos)
        if k + 1 >= len(offs) or offs[k] != pos or not self.lane_hlen[k]:
            return None
        rows, idx_bytes = self.entry_rows, self.idx_bytes
        assert rows is not None and idx_bytes is not None  # the lane is made of them
        hlen = self.lane_hlen[k]
        r = rows[k]
        at = idxmod.HEAD_SIZE + 20 * r
        size = self.blob_sizes[idx_bytes[at:at + 20]]
        return (pack.OBJ_BLOB, hlen, offs[k + 1] - pos - hlen, size, None)

    def _tree_entries(self, tid: bytes) -> list[objects.RawTreeEntry] | None:
        """The entries of a tree of the pack, parsed again from its bytes (None: absent).

        The scan checked each tree once and kept its bytes only: parsed
        entries for every tree of a large image were most of verify's memory.
        """
        raw = self.trees.get(tid)
        if raw is None:
            return None
        return objects.parse_tree_raw(raw, f"tree {hex_id(tid)}", self.max_paths)

    # -- reporting -------------------------------------------------------

    def problem(self, region: str, where: str, what: str) -> None:
        """Record a problem; past MAX_PROBLEMS_PER_REGION in a region, only count it."""
        r = self.report
        n = self.per_region.get(region, 0)
        self.per_region[region] = n + 1
        if n >= MAX_PROBLEMS_PER_REGION:
            r.suppressed[region] = r.suppressed.get(region, 0) + 1
            return
        r.problems.append((region, where, what))

    def warning(self, region: str, where: str, what: str) -> None:
        r = self.report
        if len(r.warnings) >= MAX_WARNINGS:
            r.hidden_warnings += 1
        else:
            r.warnings.append((region, where, what))

    def check(self, name: str) -> None:
        if name not in self.report.checks:
            self.report.checks.append(name)

    def _read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length), in pieces of at most READ_CHUNK."""
        if length <= READ_CHUNK:
            return self.reader.pread(offset, length)
        parts = []
        pos, end = offset, min(offset + length, self.capacity)
        while pos < end:
            part = self.reader.pread(pos, min(READ_CHUNK, end - pos))
            if not part:
                break
            parts.append(part)
            pos += len(part)
        return b"".join(parts)
