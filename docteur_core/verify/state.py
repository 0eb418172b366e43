"""What the steps of the check share: limits, and the values they pass on.

The check is a pipeline of steps split by concern into the modules of
this package (layout, IDX, scan, delta bases, reachability...), each a
function (or a small class with one entry point) given what it needs and
returning what it found: what the scan learnt about each entry
(`Entries`) is what the IDX is compared with, what it learnt about the
objects (`Objects`) is what the tree walk follows. Problems go into the
one `Report` each step is given.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..format import idx as idxmod
from ..format import limits, objects, pack
from ..errors import DamagedImage
from ..reader.commands import MAX_SHOWN_MESSAGE

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


@dataclass(frozen=True)
class Limits:
    """The reader's limits the check applies (format/limits.py), and the
    bytes of delta bases the scan may keep (bases.py)."""

    cache_bytes: int = DEFAULT_CACHE_BYTES
    max_object_size: int = MAX_HELD_OBJECT
    max_paths: int = limits.MAX_PATHS
    max_lookup_bytes: int = limits.MAX_LOOKUP_BYTES


# The scan's record of an entry: (kind, header_len, comp_len, size, base)
# where base is an absolute offset (OFS_DELTA), a raw id (REF_DELTA) or None.
EntryRecord = tuple[int, int, int, int, int | bytes | None]


class Entries:
    """What the scan learnt about each pack entry: what the IDX is compared with.

    Offsets are absolute image offsets (the PACK starts at 28). The scan
    fills these containers in place; once it is over they are read only.
    The fast lane (scan.py `_blob_run`): blobs that agree with their IDX
    row (id and CRC-32) are recorded by entry number k (their rank in
    `offsets`) in `lane_hlen`, not in `info`, `crc`, `oid`, `starts`:
    5 bytes an object instead of ~300 (`record` gives their record).
    """

    __slots__ = ("info", "crc", "oid", "starts", "damaged", "offsets", "rows", "idx_crcs",
                 "lane_hlen", "lane_count", "idx_bytes", "blob_sizes")

    def __init__(self, offsets: Sequence[int], rows: array[int] | None,
                 idx_crcs: array[int] | None, lane_hlen: bytearray | None,
                 idx_bytes: bytes | None, blob_sizes: dict[bytes, int]) -> None:
        self.info: dict[int, EntryRecord] = {}  # entries off the lane, by offset
        self.crc: dict[int, int] = {}
        self.oid: dict[int, bytes] = {}  # offset -> computed id
        self.starts: list[int] = []  # entries parsed off the lane, in pack order
        self.damaged: set[int] = set()  # entries already reported
        self.offsets = offsets  # from the IDX, sorted: where to resync
        self.rows = rows  # k -> IDX row (None: no lane)
        self.idx_crcs = idx_crcs  # IDX row -> CRC-32
        self.lane_hlen = lane_hlen  # k -> header length, 0: not in the lane
        self.lane_count = 0
        self.idx_bytes = idx_bytes
        self.blob_sizes = blob_sizes  # the scan's (`Objects.blob_sizes`)

    def record(self, pos: int) -> EntryRecord | None:
        """The scan's record of the entry at `pos`, lane or not."""
        rec = self.info.get(pos)
        if rec is None and self.lane_hlen is not None:
            return self.lane_record(pos)
        return rec

    def lane_record(self, pos: int) -> tuple[int, int, int, int, None] | None:
        """The record of a blob the fast lane took, rebuilt from its columns.

        None when there is no lane at all: an IDX with 64-bit offsets (or a
        32-bit one whose high bit a damage set) has no row column, so the
        scan recorded every entry in `info`.
        """
        if self.lane_hlen is None:
            return None
        offs = self.offsets
        k = bisect_left(offs, pos)
        if k + 1 >= len(offs) or offs[k] != pos or not self.lane_hlen[k]:
            return None
        rows, idx_bytes = self.rows, self.idx_bytes
        assert rows is not None and idx_bytes is not None  # the lane is made of them
        hlen = self.lane_hlen[k]
        r = rows[k]
        at = idxmod.HEAD_SIZE + 20 * r
        size = self.blob_sizes[idx_bytes[at:at + 20]]
        return (pack.OBJ_BLOB, hlen, offs[k + 1] - pos - hlen, size, None)


@dataclass
class Objects:
    """What the scan learnt about the objects: what the walk and the path
    index check need, once the per-entry records are dropped."""

    by_id: dict[bytes, int] = field(default_factory=dict)  # id -> offset
    otype: dict[int, int] = field(default_factory=dict)  # offset -> type once rebuilt
    blob_sizes: dict[bytes, int] = field(default_factory=dict)
    # Raw tree bytes by id, checked by the scan (a malformed tree is b"").
    trees: dict[bytes, bytes] = field(default_factory=dict)
    tree_counts: dict[bytes, int] = field(default_factory=dict)  # entries of each tree
    damaged: set[int] = field(default_factory=set)  # entries reported damaged
    complete: bool = False  # the scan went through the whole pack

    def tree_entries(self, tid: bytes, max_paths: int) -> list[objects.RawTreeEntry] | None:
        """The entries of a tree of the pack, parsed again from its bytes (None: absent).

        The scan checked each tree once and kept its bytes only: parsed
        entries for every tree of a large image were most of verify's memory.
        """
        raw = self.trees.get(tid)
        if raw is None:
            return None
        return objects.parse_tree_raw(raw, f"tree {hex_id(tid)}", max_paths)


@dataclass(frozen=True)
class CommitHead:
    """The header's commit as read: its first COMMIT_HEAD bytes at most, and its size."""

    data: bytes
    size: int
