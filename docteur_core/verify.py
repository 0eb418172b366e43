"""Prove what an image holds and that not one byte of it is wrong.

`verify_image(device)` reads a whole image through the block interface (a
file, a raw device or an NBD export) and returns a `Report`: the commit the
image holds, counts, and every problem found, each naming the region of the
image it lies in (header, PACK entries, IDX tables, padding...) and where
(an offset or an object id). It keeps going after a problem wherever it can,
so that one run tells everything, and it never trusts a size, a distance or a
count enough to crash, hang or allocate without bound.

How the full check works, and why it is fast:

1. The header, then the IDX (read once, whole: it is small), whose offsets
   give every entry's start. They let the pack scan resynchronise after a
   damaged entry instead of giving up, and give the pack's end: the trailer is
   found by looking for the IDX's copy of the pack checksum just before the
   IDX, so a wrong object count in the PACK header cannot derail the scan.
2. One sequential pass over the pack in large aligned reads: every entry
   header is parsed, every zlib stream inflated (to exactly its declared
   size), the pack SHA-1 and each entry's CRC-32 computed over the bytes
   as they pass. Base objects are hashed as they come (big blobs are hashed
   while they inflate and never held whole); deltas are applied to their
   base, which comes from a bounded LRU of recently rebuilt objects or, on a
   miss, is rebuilt again from the device (git writes bases before their
   deltas, so the LRU nearly always hits). Trees and the commit are parsed.
3. The IDX is compared with what the scan saw: sorted ids, fanout, every
   offset at an entry start, every CRC, every id equal to the SHA-1 of the
   object at its offset (the Merkle check), the same set of objects.
4. The commit named by the header must be there and be a commit; its tree is
   walked: everything it reaches must be present (gitlinks excepted); objects
   nothing reaches are warnings.
5. The padding regions must be zero, and the layout must follow the OCaml
   builder's padding rule for some block size.

The block size is not stored in an image. An image is consistent with block
size B (a power of two from 512 to 65536) when the IDX offset and the image
size are multiples of B, and the padding after the pack and after the IDX
are each 1..B bytes (the OCaml builder always pads with `B - n % B` bytes,
a whole block when `n` is already aligned). Several B can fit the same
image (a small padding fits every B up to the alignment); `Report.block_sizes`
lists them all, and the header check fails only when none fits.

`quick=True` checks the header, the signatures, the counts, the padding and
the three checksums (pack SHA-1, the IDX's copy of it, the IDX's own SHA-1):
it reads every byte once and does no per-object work.

Standard library only: this runs beside the guest reader and inside the
nbdkit plugin.
"""

from __future__ import annotations

import bisect
import hashlib
import re
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from . import idx as idxmod
from . import layout, objects, pack
from .block import BlockDevice, ByteReader
from .errors import DamagedImage

# Regions named in problem lines; tests match on them.
R_IMAGE = "image"
R_HEADER = "header"
R_PADDING = "padding"
R_PACK_HEADER = "PACK header"
R_OBJ_HEADER = "object header"
R_OBJ_DATA = "object data"
R_DELTA_DATA = "delta data"
R_PACK_TRAILER = "PACK trailer"
R_IDX_HEADER = "IDX header"
R_IDX_FANOUT = "IDX fanout"
R_IDX_IDS = "IDX ids"
R_IDX_CRCS = "IDX CRCs"
R_IDX_OFFSETS = "IDX offsets"
R_IDX_CHECKSUMS = "IDX checksums"
R_OBJECTS = "objects"

MAX_DELTA_DEPTH = 10_000  # git never writes chains deeper than 4095
# Objects git would not deltify (core.bigFileThreshold is 512 MiB): a delta,
# a delta base or a tree larger than this is reported rather than loaded.
MAX_HELD_OBJECT = 512 << 20
# Base objects larger than this are hashed while they inflate, not kept.
STREAM_THRESHOLD = 16 << 20
DEFAULT_CACHE_BYTES = 64 << 20
READ_CHUNK = 1 << 20
MAX_PROBLEMS_PER_REGION = 50
MAX_WARNINGS = 50

Problem = tuple[str, str, str]  # (region, where, what)
# "<type> <size>\0", what git hashes before an object's content.
_OBJ_HEADER = {k: f"{name} %d\0".encode() for k, name in pack.TYPE_NAMES.items()}


@dataclass
class Counts:
    objects: int = 0  # entries in the pack
    commits: int = 0
    trees: int = 0
    blobs: int = 0
    tags: int = 0
    deltas: int = 0
    files: int = 0  # regular and executable files reachable from the root
    links: int = 0  # symbolic links
    gitlinks: int = 0  # submodule commits (not in the image by design)
    directories: int = 0  # below the root
    bytes: int = 0  # content of the files and links, as listed by the trees


@dataclass
class Report:
    """What `verify_image` found. `ok` is true only when no problem was found."""

    quick: bool = False
    capacity: int = 0
    commit: str | None = None
    tree: str | None = None
    author: objects.Signature | None = None
    committer: objects.Signature | None = None
    message: str | None = None
    block_sizes: list[int] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    checks: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    suppressed: dict[str, int] = field(default_factory=dict)
    hidden_warnings: int = 0
    # How delta bases were found: LRU hits, misses, objects rebuilt from the device.
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.suppressed

    def problem_lines(self) -> list[str]:
        lines = [format_problem(p) for p in self.problems]
        for region, n in self.suppressed.items():
            lines.append(f"{region}: {n} more problems not shown")
        return lines

    def warning_lines(self) -> list[str]:
        lines = [format_problem(p) for p in self.warnings]
        if self.hidden_warnings:
            lines.append(f"{R_OBJECTS}: {self.hidden_warnings} more warnings not shown")
        return lines

    def to_json(self) -> dict:
        def sig(s: objects.Signature | None) -> dict | None:
            if s is None:
                return None
            return {"name": s.name, "email": s.email, "time": s.time,
                    "tz_minutes": s.tz_minutes}
        return {
            "ok": self.ok,
            "quick": self.quick,
            "commit": self.commit,
            "author": sig(self.author),
            "committer": sig(self.committer),
            "root": self.tree,
            "message": self.message,
            "size": self.capacity,
            "block_sizes": self.block_sizes,
            "counts": dict(self.counts.__dict__),
            "checks": list(self.checks),
            "problems": [{"region": r, "where": w, "what": t} for r, w, t in self.problems]
            + [{"region": r, "where": "", "what": f"{n} more problems not shown"}
               for r, n in self.suppressed.items()],
            "warnings": [{"region": r, "where": w, "what": t} for r, w, t in self.warnings],
        }


def format_problem(p: Problem) -> str:
    region, where, what = p
    return f"{region}: {what}, {where}" if where else f"{region}: {what}"


def verify_image(device: BlockDevice, quick: bool = False, *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> Report:
    """Check everything about the image on `device` (see the module docstring).

    Never raises for damage, only for I/O errors of the device itself
    (`DeviceError`).
    """
    v = _Verifier(device, quick, cache_bytes)
    v.run()
    return v.report


def apply_delta(base: bytes, delta: bytes, where: str,
                max_size: int = MAX_HELD_OBJECT) -> bytes:
    """`pack.apply_delta` with the same checks, tuned for the whole-pack scan.

    The scan applies every delta of the pack, and this loop is where a
    delta-heavy pack spends its time: pieces are gathered as views and
    joined once, and a truncated instruction is caught as an IndexError
    instead of being tested byte by byte. The results and the errors are
    those of `pack.apply_delta` (a property test holds them equal).
    """
    # The two size varints, inline; anything odd goes to pack.delta_sizes,
    # which raises the precise error.
    ok = True
    try:
        c = delta[0]
        src_size = c & 0x7F
        pos, shift = 1, 7
        while c & 0x80 and shift < 64:
            c = delta[pos]
            pos += 1
            src_size |= (c & 0x7F) << shift
            shift += 7
        ok = not c & 0x80
        c = delta[pos]
        pos += 1
        dst_size = c & 0x7F
        shift = 7
        while c & 0x80 and shift < 64:
            c = delta[pos]
            pos += 1
            dst_size |= (c & 0x7F) << shift
            shift += 7
        ok = ok and not c & 0x80
    except IndexError:
        ok = False
    if not ok:
        src_size, dst_size, pos = pack.delta_sizes(delta, where)
    if src_size != len(base):
        raise DamagedImage(f"delta expects a base of {src_size} bytes, base has {len(base)}",
                           where)
    if dst_size > max_size:
        raise DamagedImage(f"delta result of {dst_size} bytes is over the limit", where)
    parts = []
    append = parts.append
    bv = memoryview(base)
    n = len(delta)
    total = 0
    try:
        while pos < n:
            op = delta[pos]
            pos += 1
            if op & 0x80:
                off = size = 0
                if op & 0x01:
                    off = delta[pos]
                    pos += 1
                if op & 0x02:
                    off |= delta[pos] << 8
                    pos += 1
                if op & 0x04:
                    off |= delta[pos] << 16
                    pos += 1
                if op & 0x08:
                    off |= delta[pos] << 24
                    pos += 1
                if op & 0x10:
                    size = delta[pos]
                    pos += 1
                if op & 0x20:
                    size |= delta[pos] << 8
                    pos += 1
                if op & 0x40:
                    size |= delta[pos] << 16
                    pos += 1
                if size == 0:
                    size = 0x10000
                if off + size > src_size:
                    raise DamagedImage(f"delta copies {size} bytes at {off}, outside a base "
                                       f"of {src_size}", where)
                append(bv[off:off + size])
                total += size
            elif op:
                if pos + op > n:
                    raise DamagedImage("truncated insert instruction in delta", where)
                append(delta[pos:pos + op])
                pos += op
                total += op
            else:
                raise DamagedImage("reserved delta instruction 0", where)
            if total > dst_size:
                raise DamagedImage("delta result larger than declared", where)
    except IndexError:
        raise DamagedImage("truncated copy instruction in delta", where) from None
    if total != dst_size:
        raise DamagedImage(f"delta result is {total} bytes, {dst_size} declared", where)
    return b"".join(parts)


# A tree entry as git writes it. Trees made only of these entries, with no
# "." or ".." and no name twice, are what `objects.parse_tree` accepts too;
# anything else goes through it for the precise verdict.
_TREE_ENTRY = re.compile(rb"(100644|100755|100664|120000|40000|160000) ([^\0/]+)\0(.{20})",
                         re.S)
_MODES = {m: int(m, 8) for m in (b"100644", b"100755", b"100664", b"120000", b"40000",
                                 b"160000")}


def parse_tree(data: bytes, where: str) -> list[tuple[int, bytes, bytes]]:
    """(mode, raw id, raw name) of each entry; the scan parses every tree."""
    out = []
    pos = 0
    modes = _MODES
    for m in _TREE_ENTRY.finditer(data):
        if m.start() != pos:
            break
        mode, name, oid = m.groups()
        out.append((modes[mode], oid, name))
        pos = m.end()
    if pos == len(data):
        names = {e[2] for e in out}
        if len(names) == len(out) and b"." not in names and b".." not in names:
            return out
    return [(e.mode, e.id, objects.encode_name(e.name)) for e in objects.parse_tree(data, where)]


class _Stop(Exception):
    """Nothing more can be checked (e.g. not an image at all)."""


class _Unresolvable(Exception):
    """An object cannot be rebuilt because something it depends on is damaged."""


def _hex(raw: bytes) -> str:
    return raw.hex()


def _at(offset: int) -> str:
    return f"offset {offset}"


class _Stream:
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


class _Verifier:
    def __init__(self, device: BlockDevice, quick: bool, cache_bytes: int) -> None:
        self.device = device
        self.reader = ByteReader(device)
        self.capacity = device.capacity
        self.report = Report(quick=quick, capacity=self.capacity)
        self.quick = quick
        self.cache_bytes = cache_bytes
        # Per pack entry (absolute offset): (kind, header_len, comp_len, size, base)
        # where base is an absolute offset (OFS_DELTA), a raw id (REF_DELTA) or None.
        self.info: dict[int, tuple[int, int, int, int, int | bytes | None]] = {}
        self.starts: list[int] = []
        self.crc: dict[int, int] = {}
        self.oid: dict[int, bytes] = {}  # offset -> computed id
        self.otype: dict[int, int] = {}  # offset -> object type once rebuilt
        self.by_id: dict[bytes, int] = {}
        self.depth: dict[int, int] = {}
        self.damaged: set[int] = set()  # entries already reported
        self.cache: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self.cached = 0
        self.trees: dict[bytes, list[tuple[int, bytes, bytes]]] = {}
        self.blob_sizes: dict[bytes, int] = {}
        self.commit_data: bytes | None = None
        self.commit_id: bytes | None = None
        self.idx_offset: int | None = None
        self.idx: idxmod.Idx | None = None
        self.idx_bytes: bytes | None = None
        self.idx_end: int | None = None
        self.idx_count: int | None = None
        self.pack_count: int | None = None
        self.pack_ok = False  # the PACK header looked like a PACK header
        self.trailer_at: int | None = None  # absolute offset of the pack trailer
        self.scan_complete = False
        self.entry_offsets: list[int] = []  # from the IDX, absolute, sorted
        self.pack_sha: bytes | None = None
        self.stats = {"cache_hits": 0, "cache_misses": 0, "rebuilt": 0, "peak_cached_bytes": 0}
        self.per_region: dict[str, int] = {}
        self.trailer_guessed = False
        self.pending_ref: list[int] = []
        self.pack_intact = False  # the pack's bytes hash to its trailer
        # From the header pass: how many deltas use each entry (by offset, by id),
        # and for cached bases how many uses remain.
        self.planned = False
        self.uses_at: dict[int, int] = {}
        self.uses_of: dict[bytes, int] = {}
        self.remaining: dict[int, int] = {}

    # -- reporting -------------------------------------------------------

    def problem(self, region: str, where: str, what: str) -> None:
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

    # -- driver ----------------------------------------------------------

    def run(self) -> None:
        try:
            self._check_header()
            self._load_idx()
            self._check_pack_header()
            if not self.pack_ok and self.idx is None:
                # Everything else said so far is noise: say the one thing that matters.
                self.report.problems.clear()
                self.problem(R_IMAGE, "", "not a docteur image (no PACK at offset 28 "
                             "and no IDX where the header points)")
                raise _Stop
            self._locate_trailer()
            if self.quick:
                self._hash_pack()
            else:
                self._scan_pack()
                self._resolve_pending()
            self._find_lost_idx()
            self._check_trailer()
            self._check_idx()
            self._check_layout()
            self._check_commit()
        except _Stop:
            pass
        if self.quick:
            self.report.counts.objects = self.idx_count or self.pack_count or 0
        self.stats["cache_hits"] = self.report.counts.deltas - self.stats["cache_misses"]
        self.report.stats = dict(self.stats)

    # -- header ----------------------------------------------------------

    def _check_header(self) -> None:
        self.check("header")
        cap = self.capacity
        if cap < layout.HEADER_SIZE + layout.PACK_HEADER_SIZE + layout.SHA1_SIZE:
            what = "empty image (0 bytes)" if cap == 0 else \
                f"image of {cap} bytes is too small to hold a header and a PACK"
            self.problem(R_IMAGE, "", what)
            raise _Stop
        if cap % layout.MIN_BLOCK_SIZE:
            self.problem(R_IMAGE, "", f"image size {cap} is not a multiple of "
                         f"{layout.MIN_BLOCK_SIZE} bytes (truncated?)")
        raw = self.reader.pread(0, layout.HEADER_SIZE)
        commit_id = raw[:layout.COMMIT_ID_SIZE]
        (idx_offset,) = struct.unpack_from("<Q", raw, layout.COMMIT_ID_SIZE)
        self.commit_id = commit_id
        self.header_idx_offset = idx_offset
        self.report.commit = _hex(commit_id)
        first = layout.PACK_OFFSET + layout.PACK_HEADER_SIZE + layout.SHA1_SIZE
        if idx_offset < first:
            self.problem(R_HEADER, _at(20), f"IDX offset {idx_offset} lies inside the PACK header")
        elif idx_offset + idxmod.HEAD_SIZE > cap:
            self.problem(R_HEADER, _at(20),
                         f"IDX offset {idx_offset} points past the end of the image "
                         f"({cap} bytes): bad offset or truncated image")
        elif idx_offset % layout.MIN_BLOCK_SIZE:
            self.problem(R_HEADER, _at(20),
                         f"IDX offset {idx_offset} is not aligned to {layout.MIN_BLOCK_SIZE} bytes")
            self.idx_offset = idx_offset  # still try to read the IDX there
        else:
            self.idx_offset = idx_offset

    # -- IDX -------------------------------------------------------------

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

    def _load_idx(self, at: int | None = None, quiet: bool = False) -> None:
        """Read the IDX head and tables at `at` (default: where the header says)."""
        base = self.idx_offset if at is None else at
        if base is None:
            return
        self.check("idx-header")
        head = self.reader.pread(base, idxmod.HEAD_SIZE)
        if len(head) < idxmod.HEAD_SIZE:
            if not quiet:
                self.problem(R_IDX_HEADER, _at(base), "IDX header is truncated")
            return
        where = _at(base)
        sig_ok = head[:4] == layout.IDX_SIGNATURE
        (version,) = struct.unpack_from(">I", head, 4)
        if quiet and not sig_ok:
            return
        if not sig_ok and version != layout.IDX_VERSION and at is None:
            # Nothing there looks like an IDX: the header's offset is what is wrong.
            self.problem(R_HEADER, _at(20), f"IDX offset {base} does not point at an IDX "
                         "(no IDX signature or version there)")
            self.idx_offset = None
            return
        if not sig_ok:
            self.problem(R_IDX_HEADER, where, f"bad IDX signature {bytes(head[:4])!r}")
        if version != layout.IDX_VERSION:
            self.problem(R_IDX_HEADER, _at(base + 4), f"unsupported IDX version {version}")
            if not sig_ok:
                return  # nothing there looks like an IDX
        fanout = struct.unpack_from(">256I", head, layout.IDX_HEADER_SIZE)
        self.check("idx-fanout")
        previous = 0
        for b, value in enumerate(fanout):
            if value < previous:
                self.problem(R_IDX_FANOUT, _at(base + layout.IDX_HEADER_SIZE + 4 * b),
                             f"IDX fanout decreases at entry {b} ({previous} then {value})")
            previous = max(previous, value)
        self.idx_offset = base
        self.idx = idxmod.Idx(base, fanout)
        self.idx_count = fanout[255]

    def _idx_tables(self, count: int) -> bool:
        """Read the IDX for `count` objects; set idx_bytes/idx_end. False if it does not fit."""
        base = self.idx_offset
        assert base is not None
        main = idxmod.HEAD_SIZE + 28 * count
        if base + main + 2 * layout.SHA1_SIZE > self.capacity:
            return False
        data = self._read(base, main)
        if len(data) < main:
            return False
        offsets = data[idxmod.HEAD_SIZE + 24 * count:main]
        large = 0
        if count and max(offsets[0::4]) & 0x80:
            large = sum(1 for b in offsets[0::4] if b & 0x80)
        total = main + 8 * large + 2 * layout.SHA1_SIZE
        if base + total > self.capacity:
            return False
        data += self._read(base + main, total - main)
        if len(data) < total:
            return False
        self.idx_bytes = data
        self.idx_end = base + total
        return True

    # -- PACK ------------------------------------------------------------

    def _check_pack_header(self) -> None:
        self.check("pack-header")
        raw = self.reader.pread(layout.PACK_OFFSET, layout.PACK_HEADER_SIZE)
        sig_ok = raw[:4] == layout.PACK_SIGNATURE
        (version, count) = struct.unpack_from(">II", raw, 4)
        if not sig_ok:
            self.problem(R_PACK_HEADER, _at(layout.PACK_OFFSET),
                         f"bad PACK signature {bytes(raw[:4])!r}")
        if version != layout.PACK_VERSION:
            self.problem(R_PACK_HEADER, _at(layout.PACK_OFFSET + 4),
                         f"unsupported PACK version {version}")
        self.pack_ok = sig_ok or version == layout.PACK_VERSION
        self.pack_count = count
        # Now that both counts are known, size the IDX.
        if self.idx is not None:
            self._size_idx()

    def _size_idx(self) -> None:
        """Pick the object count that lays the IDX out, and blame a mismatch.

        The fanout's last entry and the PACK header both give the count. When
        they differ, the right one is the one whose tables hold up: the IDX's
        own SHA-1 matches, its copy of the pack checksum sits just before the
        IDX, its end leaves a block's worth of padding at most.
        """
        n_idx, n_pack = self.idx_count, self.pack_count
        candidates = [n_idx] if n_pack in (None, n_idx) else [n_idx, n_pack]
        best = None
        for n in candidates:
            if not self._idx_tables(n):
                continue
            data = self.idx_bytes
            own_ok = hashlib.sha1(memoryview(data)[:-20]).digest() == data[-20:]
            lo = max(0, self.idx_offset - layout.MAX_BLOCK_SIZE - layout.SHA1_SIZE)
            copy_found = self._read(lo, self.idx_offset - lo).rfind(data[-40:-20]) >= 0
            fits = 1 <= self.capacity - self.idx_end <= layout.MAX_BLOCK_SIZE
            score = (own_ok, copy_found, fits, n == n_idx)
            if best is None or score > best[0]:
                best = (score, n)
        fanout_at = _at(self.idx_offset + layout.IDX_HEADER_SIZE + 4 * 255)
        if best is None:
            if n_idx == n_pack:
                need = self.idx_offset + idxmod.HEAD_SIZE + 28 * n_idx + 2 * layout.SHA1_SIZE
                self.problem(R_IMAGE, _at(self.capacity),
                             f"image is truncated: its IDX of {n_idx} objects needs at least "
                             f"{need} bytes, the image has {self.capacity}")
            else:
                self.problem(R_IDX_FANOUT, fanout_at,
                             f"IDX announces {n_idx} objects, more than the image can hold "
                             "(damaged fanout or truncated image)")
            self.idx_bytes = self.idx_end = None
            return
        n = best[1]
        self._idx_tables(n)
        if n != n_idx:
            self.problem(R_IDX_FANOUT, fanout_at,
                         f"IDX fanout announces {n_idx} objects, its tables and the PACK "
                         f"header say {n}")
            self.idx_count = n
        elif n_pack is not None and n_pack != n and self.quick:
            self.problem(R_PACK_HEADER, _at(layout.PACK_OFFSET + 8),
                         f"PACK header announces {n_pack} objects, the IDX lists {n}")

    def _locate_trailer(self) -> None:
        """Find the pack's 20-byte trailer: the IDX's copy of it, just before the IDX."""
        if self.idx_bytes is None or self.idx_offset is None:
            return
        copy = self.idx_bytes[-40:-20]
        end = self.idx_offset
        lo = max(layout.PACK_OFFSET + layout.PACK_HEADER_SIZE,
                 end - layout.MAX_BLOCK_SIZE - layout.SHA1_SIZE)
        window = self._read(lo, end - lo)
        at = window.rfind(copy)
        if at >= 0:
            self.trailer_at = lo + at
            return
        # The trailer or the copy is damaged: the trailer ends at the last
        # non-zero byte before the padding (unless its own last bytes are zero,
        # which the copy tells).
        stripped = window.rstrip(b"\0")
        if not stripped:
            return
        zeros = len(copy) - len(copy.rstrip(b"\0"))
        cand = lo + len(stripped) + zeros - layout.SHA1_SIZE
        if cand + layout.SHA1_SIZE > end:
            cand = lo + len(stripped) - layout.SHA1_SIZE
        if cand >= layout.PACK_OFFSET + layout.PACK_HEADER_SIZE:
            self.trailer_at = cand
            self.trailer_guessed = True

    def _hash_pack(self) -> None:
        """Quick mode: SHA-1 of [28, trailer) in one sequential pass."""
        if self.trailer_at is None:
            self.problem(R_PACK_TRAILER, "", "cannot find the end of the pack "
                         "(the IDX is missing or damaged), so its checksum was not checked")
            return
        s = _Stream(self.device, layout.PACK_OFFSET, self.trailer_at, self.trailer_at)
        while s.advance(s.buf_end):
            pass
        self.pack_sha = s.hasher.digest()

    # -- the full scan ---------------------------------------------------

    def _scan_pack(self) -> None:
        self.check("pack-entries")
        self.check("zlib-streams")
        self.check("deltas")
        self.check("object-ids")
        if self.idx_bytes is not None:
            self._idx_offsets_for_resync()
        start = layout.PACK_OFFSET + layout.PACK_HEADER_SIZE
        if self.trailer_at is not None and not self.trailer_guessed:
            limit = self.trailer_at
            by_count = False
        else:
            limit = self.idx_offset if self.idx is not None else self.capacity
            limit = min(limit, self.capacity) - layout.SHA1_SIZE
            by_count = True
        if self.entry_offsets:
            self._plan_bases(limit)
        s = _Stream(self.device, layout.PACK_OFFSET, limit, None if by_count else limit)
        count = self.pack_count or 0
        pos = start
        n = 0
        complete = True
        hdr_max = pack.MAX_ENTRY_HEADER
        pending = self.pending_ref
        while True:
            if by_count:
                if n >= count:
                    break
            elif pos >= limit:
                break
            if pos >= limit:
                self.problem(R_PACK_HEADER, _at(layout.PACK_OFFSET + 8),
                             f"PACK header announces {count} objects, the pack ends after {n}")
                complete = False
                break
            s.cover(pos, hdr_max)
            try:
                end = self._entry(s, pos, limit, pending)
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
            self.trailer_at = pos
        if complete and not by_count and n != count:
            self.problem(R_PACK_HEADER, _at(layout.PACK_OFFSET + 8),
                         f"PACK header announces {count} objects, the pack holds {n}")
        if not by_count and s.hash_from == limit:
            self.pack_sha = s.hasher.digest()
        self.report.counts.objects = n

    def _plan_bases(self, limit: int) -> None:
        """Count the deltas that will use each entry, from its header alone.

        The IDX gives every entry's start and an entry's first bytes name its
        delta base, so one light pass tells which objects the scan must keep
        and for how long: each is kept until its last delta is applied, then
        dropped. Memory is then what delta resolution needs at that point of
        the pack (capped by `cache_bytes`, beyond which the LRU evicts and
        misses rebuild from the device). A damaged header only spoils the plan.
        """
        s = _Stream(self.device, layout.PACK_OFFSET, limit, None)
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
        hit = self.cache.pop(base, None)
        if hit is not None:
            self.cached -= len(hit[1])

    def _keep(self, pos: int, oid: bytes | None, kind: int, data: bytes) -> None:
        """Cache an object the plan says deltas will need (any, without a plan)."""
        if len(data) > self.cache_bytes // 4:
            return
        if self.planned:
            uses = self.remaining.get(pos)
            if uses is None:
                uses = self.uses_at.get(pos, 0)
                if self.uses_of and oid is not None:
                    uses += self.uses_of.get(oid, 0)
                if not uses:
                    return
                self.remaining[pos] = uses
        self._cache_put(pos, kind, data)

    def _idx_offsets_for_resync(self) -> None:
        count = self.idx_count
        data = self.idx_bytes
        offs = []
        o0 = idxmod.HEAD_SIZE + 24 * count
        table = struct.unpack_from(f">{count}I", data, o0)
        large_base = idxmod.HEAD_SIZE + 28 * count
        nlarge = (len(data) - large_base - 40) // 8
        for v in table:
            if v & idxmod.LARGE_OFFSET_FLAG:
                k = v & ~idxmod.LARGE_OFFSET_FLAG
                if k < nlarge:
                    offs.append(struct.unpack_from(">Q", data, large_base + 8 * k)[0]
                                + layout.PACK_OFFSET)
            else:
                offs.append(v + layout.PACK_OFFSET)
        offs.sort()
        self.entry_offsets = offs

    def _next_start(self, pos: int) -> int | None:
        offs = self.entry_offsets
        i = bisect.bisect_right(offs, pos)
        return offs[i] if i < len(offs) else None

    def _entry(self, s: _Stream, pos: int, limit: int, pending: list[int]) -> int:
        """Check the entry at `pos`; return the offset just after it."""
        rel = pos - s.base
        hdr = s.buf[rel:rel + min(pack.MAX_ENTRY_HEADER, limit - pos)]
        try:
            eh = pack.parse_entry_header(hdr, "")
        except DamagedImage as exc:
            raise _EntryError(R_OBJ_HEADER, exc.what) from None
        kind = eh.type
        size = eh.size
        hlen = eh.header_len
        crc = zlib.crc32(hdr[:hlen])
        zpos = pos + hlen
        is_delta = kind >= pack.OBJ_OFS_DELTA
        if kind != pack.OBJ_BLOB and size > MAX_HELD_OBJECT:
            raise _EntryError(R_OBJ_HEADER, f"{pack.TYPE_NAMES.get(kind, 'delta')} of {size} "
                              f"bytes is over the limit of {MAX_HELD_OBJECT}")
        stream_hash = None
        if not is_delta and size > STREAM_THRESHOLD and kind == pack.OBJ_BLOB:
            stream_hash = hashlib.sha1(f"blob {size}\0".encode())
        d = zlib.decompressobj()
        parts = []
        have = 0
        guess = size + (size >> 8) + 64
        while True:
            rel = zpos - s.base
            avail = min(s.buf_end, limit) - zpos
            if avail <= 0:
                if zpos >= limit or not s.cover(zpos, 1) or min(s.buf_end, limit) <= zpos:
                    raise _EntryError(None, "zlib stream runs past the end of the pack")
                continue
            take = avail if avail < guess else guess
            chunk = memoryview(s.buf)[rel:rel + take]
            try:
                out = d.decompress(chunk, size - have + 1)
            except zlib.error as exc:
                raise _EntryError(None, f"bad zlib stream ({exc})") from None
            have += len(out)
            if have > size:
                raise _EntryError(None, f"inflates to more than the declared {size} bytes")
            if stream_hash is not None:
                stream_hash.update(out)
            else:
                parts.append(out)
            if d.eof:
                used = take - len(d.unused_data)
                crc = zlib.crc32(chunk[:used], crc)
                zpos += used
                break
            crc = zlib.crc32(chunk, crc)
            zpos += take
            guess = max(guess, 1 << 16)
        if have != size:
            raise _EntryError(None, f"inflates to {have} bytes, {size} declared")
        self.info[pos] = (kind, hlen, zpos - pos - hlen, size,
                          (pos - eh.base_distance) if kind == pack.OBJ_OFS_DELTA else eh.base_id)
        self.crc[pos] = crc
        self.starts.append(pos)
        if stream_hash is not None:
            self._finish(pos, kind, None, stream_hash.digest(), size)
            return zpos
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not is_delta:
            self._finish(pos, kind, data)
            return zpos
        self.report.counts.deltas += 1
        if kind == pack.OBJ_OFS_DELTA:
            base = pos - eh.base_distance
            if base not in self.info:
                self.damaged.add(pos)
                if base in self.damaged:
                    self._cascade(pos, base)
                else:
                    self.problem(R_OBJ_HEADER, _at(pos),
                                 f"OFS_DELTA base at offset {base} is not the start of an "
                                 "object before it")
                return zpos
        else:
            base = self.by_id.get(eh.base_id)
            if base is None:
                pending.append(pos)  # its base may come later: resolved after the scan
                return zpos
        self._apply(pos, base, data)
        return zpos

    def _apply(self, pos: int, base: int, delta: bytes) -> None:
        """Rebuild the delta at `pos` on the object at `base`, then finish it."""
        depth = self.depth.get(base, 0) + 1
        if depth > MAX_DELTA_DEPTH:
            self.damaged.add(pos)
            self.problem(R_OBJ_HEADER, _at(pos),
                         f"delta chain deeper than {MAX_DELTA_DEPTH}")
            return
        try:
            hit = self.cache.get(base)
            if hit is not None:
                self.cache.move_to_end(base)
                btype, bdata = hit
            else:
                btype, bdata = self._object_at(base)
        except _Unresolvable:
            self.damaged.add(pos)
            self._cascade(pos, base)
            return
        except DamagedImage as exc:
            self.damaged.add(pos)
            self.problem(R_OBJ_HEADER, _at(pos), f"cannot rebuild its base: {exc.what}")
            return
        if self.planned:
            self._used(base)
        try:
            data = apply_delta(bdata, delta, "")
        except DamagedImage as exc:
            # The zlib stream checked out (adler-32), so the delta is as written:
            # the header's base reference (or the base) is what is wrong.
            self.damaged.add(pos)
            self.problem(R_OBJ_HEADER, _at(pos), f"delta does not apply to its base at "
                         f"offset {base}: {exc.what}")
            return
        self.depth[pos] = depth
        self._finish(pos, btype, data)

    def _cascade(self, pos: int, base: int) -> None:
        self.problem(R_OBJECTS, _at(pos),
                     f"delta cannot be rebuilt: its base at offset {base} is damaged")

    def _finish(self, pos: int, kind: int, data: bytes | None,
                oid: bytes | None = None, size: int | None = None) -> None:
        """A whole object is known: hash it, index it, keep what later checks need."""
        counts = self.report.counts
        if oid is None:
            size = len(data)
            h = hashlib.sha1(_OBJ_HEADER[kind] % size)
            h.update(data)
            oid = h.digest()
        self.oid[pos] = oid
        self.otype[pos] = kind
        previous = self.by_id.get(oid)
        if previous is not None:
            self.warning(R_OBJECTS, _at(pos), f"object {_hex(oid)} is also at offset {previous}")
        else:
            self.by_id[oid] = pos
        if kind == pack.OBJ_BLOB:
            counts.blobs += 1
            self.blob_sizes[oid] = size
        elif kind == pack.OBJ_TREE:
            counts.trees += 1
            try:
                self.trees[oid] = parse_tree(data, f"tree {_hex(oid)}")
            except DamagedImage as exc:
                self.problem(R_OBJECTS, f"object {_hex(oid)} at {_at(pos)}",
                             f"malformed tree: {exc.what}")
                self.trees[oid] = []
        elif kind == pack.OBJ_COMMIT:
            counts.commits += 1
            if oid == self.commit_id:
                self.commit_data = data
        else:
            counts.tags += 1
        if data is not None and (not self.planned or pos in self.uses_at or self.uses_of
                                 or pos in self.remaining):
            self._keep(pos, oid, kind, data)

    def _cache_put(self, pos: int, kind: int, data: bytes) -> None:
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
        kind, hlen, clen, size, _ = self.info[pos]
        raw = self._read(pos + hlen, clen)
        try:
            data = zlib.decompressobj().decompress(raw, size + 1)
        except zlib.error as exc:
            raise DamagedImage(f"bad zlib stream on second read ({exc})", _at(pos)) from None
        if len(data) != size:
            raise DamagedImage("entry changed between two reads", _at(pos))
        return data

    def _object_at(self, pos: int) -> tuple[int, bytes]:
        """The object at `pos`: from the cache, else rebuilt from the device."""
        hit = self.cache.get(pos)
        if hit is not None:
            self.cache.move_to_end(pos)
            return hit
        self.stats["cache_misses"] += 1
        chain = []
        o = pos
        while True:
            hit = self.cache.get(o)
            if hit is not None:
                kind, data = hit
                break
            if o in self.damaged or o not in self.info:
                raise _Unresolvable(o)
            rec = self.info[o]
            if rec[3] > MAX_HELD_OBJECT:
                raise DamagedImage(f"object of {rec[3]} bytes is too large to be a delta base",
                                   _at(o))
            if rec[0] < pack.OBJ_OFS_DELTA:
                kind, data = rec[0], self._inflate_entry(o)
                break
            chain.append(o)
            if len(chain) > MAX_DELTA_DEPTH:
                raise DamagedImage(f"delta chain deeper than {MAX_DELTA_DEPTH}", _at(pos))
            base = rec[4]
            if isinstance(base, bytes):
                base = self.by_id.get(base)
                if base is None:
                    raise _Unresolvable(o)
            o = base
        for o in reversed(chain):
            self.stats["rebuilt"] += 1
            data = apply_delta(data, self._inflate_entry(o), _at(o))
            self._keep(o, self.oid.get(o), kind, data)
        return kind, data

    def _resolve_pending(self) -> None:
        """REF_DELTA entries whose base came later in the pack (or never)."""
        pending = self.pending_ref
        while pending:
            progress = []
            for pos in pending:
                base = self.by_id.get(self.info[pos][4])
                if base is not None:
                    progress.append(pos)
                    try:
                        delta = self._inflate_entry(pos)
                    except DamagedImage as exc:
                        self.damaged.add(pos)
                        self.problem(R_OBJ_HEADER, _at(pos), exc.what)
                        continue
                    self._apply(pos, base, delta)
            if not progress:
                break
            done = set(progress)
            pending = [p for p in pending if p not in done]
        for pos in pending:
            self.damaged.add(pos)
            self.problem(R_OBJ_HEADER, _at(pos),
                         f"REF_DELTA base {_hex(self.info[pos][4])} is not in the pack")

    # -- blaming a damaged entry -----------------------------------------

    def _entry_damage(self, pos: int, exc: DamagedImage) -> None:
        self.damaged.add(pos)
        region = exc.region if isinstance(exc, _EntryError) else None
        what = exc.what
        if region is None:
            region = self._blame(pos)
        self.problem(region, _at(pos), what)

    def _blame(self, pos: int) -> str:
        """Header or data? Look for a complete zlib stream filling the entry.

        The IDX tells where the next entry starts. If some zlib stream that
        starts within the first bytes of the entry inflates cleanly and ends
        exactly there, the compressed data is intact (zlib's adler-32 vouches
        for it) and the header (its length, size or type) is what is wrong.
        """
        raw_hdr = self.reader.pread(pos, pack.MAX_ENTRY_HEADER)
        is_delta = False
        hlen = None
        try:
            eh = pack.parse_entry_header(raw_hdr, _at(pos))
            is_delta = eh.type >= pack.OBJ_OFS_DELTA
            hlen = eh.header_len
        except DamagedImage:
            return R_OBJ_HEADER
        data_region = R_DELTA_DATA if is_delta else R_OBJ_DATA
        self.blames = getattr(self, "blames", 0) + 1
        if self.blames > MAX_PROBLEMS_PER_REGION:
            return data_region  # a wreck: do not spend more time on diagnosis
        end = self._next_start(pos)
        if end is None:
            end = self.trailer_at
        if end is None or end - pos > (16 << 20):
            return data_region
        raw = self._read(pos, end - pos)
        for s in range(1, min(len(raw) - 2, pack.MAX_ENTRY_HEADER + 1)):
            cmf, flg = raw[s], raw[s + 1]
            if cmf & 0x0F != 8 or ((cmf << 8) | flg) % 31:
                continue
            d = zlib.decompressobj()
            try:
                budget = 64 << 20
                chunk = memoryview(raw)[s:]
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

    # -- lost IDX --------------------------------------------------------

    def _find_lost_idx(self) -> None:
        """If the header's IDX offset was unusable, look where the layout puts it."""
        if self.idx is not None or self.quick or not self.scan_complete:
            return
        pack_end = (self.trailer_at or 0) + layout.SHA1_SIZE
        b = layout.MIN_BLOCK_SIZE
        while b <= layout.MAX_BLOCK_SIZE:
            cand = pack_end + layout.padding(pack_end, b)
            if cand + idxmod.HEAD_SIZE <= self.capacity:
                self._load_idx(cand, quiet=True)
                if self.idx is not None:
                    self.problem(R_HEADER, _at(20), f"the header puts the IDX at offset "
                                 f"{self.header_idx_offset}, it is at offset {cand}")
                    self._size_idx()
                    return
            b *= 2

    # -- trailer ---------------------------------------------------------

    def _check_trailer(self) -> None:
        self.check("pack-checksum")
        t = self.trailer_at
        if t is None:
            if not self.quick:
                self.problem(R_PACK_TRAILER, "", "cannot find the end of the pack, "
                             "so its checksum was not checked")
            return
        if self.pack_sha is None:
            s = _Stream(self.device, layout.PACK_OFFSET, t, t)
            while s.advance(s.buf_end):
                pass
            self.pack_sha = s.hasher.digest()
        stored = self.reader.pread(t, layout.SHA1_SIZE)
        self.pack_intact = stored == self.pack_sha
        copy = self.idx_bytes[-40:-20] if self.idx_bytes is not None else None
        if stored != self.pack_sha:
            if copy is not None and copy == self.pack_sha:
                self.problem(R_PACK_TRAILER, _at(t), "pack trailer differs from the pack's "
                             f"SHA-1 {_hex(self.pack_sha)} (which the IDX copy matches)")
            else:
                self.problem(R_PACK_TRAILER, _at(t), f"the pack's SHA-1 is "
                             f"{_hex(self.pack_sha)}, its trailer says {_hex(stored)}")
        if copy is not None:
            self.check("idx-pack-checksum")
            if copy != stored and stored == self.pack_sha:
                self.problem(R_IDX_CHECKSUMS, _at(self.idx_end - 40),
                             f"IDX copy of the pack checksum {_hex(copy)} differs from the "
                             f"pack's {_hex(stored)}")

    # -- IDX against the pack --------------------------------------------

    def _check_idx(self) -> None:
        data = self.idx_bytes
        if data is None:
            if self.idx_offset is not None and self.idx is not None:
                return  # already reported
            if self.idx is None:
                self.problem(R_IDX_HEADER, "", "no IDX found: it was not checked")
            return
        base = self.idx_offset
        count = self.idx_count
        self.check("idx-checksum")
        own = hashlib.sha1(memoryview(data)[:-20]).digest()
        if own != data[-20:]:
            self.problem(R_IDX_CHECKSUMS, _at(self.idx_end - 20),
                         f"the IDX's SHA-1 is {_hex(own)}, its trailer says {_hex(data[-20:])}")
        names_at = idxmod.HEAD_SIZE
        names = data[names_at:names_at + 20 * count]
        # Sorted ids and a fanout that counts them.
        self.check("idx-ids-sorted")
        ids = [names[i:i + 20] for i in range(0, 20 * count, 20)]
        in_order = all(map(bytes.__lt__, ids, ids[1:]))
        prev = b""
        for i in range(0 if not in_order else count, count):
            name = ids[i]
            if name <= prev:
                self.problem(R_IDX_IDS, _at(base + names_at + 20 * i),
                             f"IDX ids out of order at entry {i} ({_hex(name)} after {_hex(prev)})")
            prev = name
        firsts = names[0::20]
        counts = [0] * 256
        for b in firsts:
            counts[b] += 1
        total = 0
        fanout = self.idx.fanout
        for b in range(256):
            total += counts[b]
            if fanout[b] != total and not (b == 255 and fanout[b] != count):
                self.problem(R_IDX_FANOUT, _at(base + layout.IDX_HEADER_SIZE + 4 * b),
                             f"IDX fanout entry {b} says {fanout[b]}, the ids say {total}")
        if self.quick:
            return
        self.check("idx-offsets")
        self.check("idx-crcs")
        self.check("idx-matches-pack")
        crcs_at = names_at + 20 * count
        offs_at = crcs_at + 4 * count
        large_at = offs_at + 4 * count
        nlarge = (len(data) - large_at - 40) // 8
        crcs = struct.unpack_from(f">{count}I", data, crcs_at)
        offs = struct.unpack_from(f">{count}I", data, offs_at)
        if self._idx_matches_fast(names, crcs, offs):
            return
        seen: set[int] = set()
        info = self.info
        for i in range(count):
            v = offs[i]
            where_off = _at(base + offs_at + 4 * i)
            name = names[20 * i:20 * i + 20]
            if v & idxmod.LARGE_OFFSET_FLAG:
                k = v & ~idxmod.LARGE_OFFSET_FLAG
                if k >= nlarge:
                    self.problem(R_IDX_OFFSETS, where_off,
                                 f"64-bit offset index {k} of {_hex(name)} is out of range")
                    continue
                (rel,) = struct.unpack_from(">Q", data, large_at + 8 * k)
            else:
                rel = v
            pos = rel + layout.PACK_OFFSET
            if pos not in info and pos not in self.damaged:
                self.problem(R_IDX_OFFSETS, where_off,
                             f"IDX puts {_hex(name)} at pack offset {rel}, which is not the "
                             "start of an object")
                continue
            if pos in seen:
                self.problem(R_IDX_OFFSETS, where_off,
                             f"IDX lists pack offset {rel} twice")
                continue
            seen.add(pos)
            if pos in self.damaged:
                continue  # its problem is already reported
            oid = self.oid.get(pos)
            crc_ok = self.crc.get(pos) == crcs[i]
            if oid is None:
                continue  # not rebuilt (reported elsewhere)
            if oid == name:
                if not crc_ok and not self.pack_intact:
                    # The pack changed, yet the entry inflates to the same object:
                    # bits zlib ignores (the last byte's padding) were flipped.
                    kind = self.info[pos][0]
                    self.problem(R_DELTA_DATA if kind >= pack.OBJ_OFS_DELTA else R_OBJ_DATA,
                                 _at(pos), "entry's bytes differ from the IDX CRC-32 "
                                 f"{crcs[i]:08x} (they still inflate to {_hex(oid)})")
                elif not crc_ok:
                    self.problem(R_IDX_CRCS, _at(base + crcs_at + 4 * i),
                                 f"IDX CRC-32 {crcs[i]:08x} of {_hex(name)} differs from the "
                                 f"entry's {self.crc.get(pos, 0):08x}")
            elif crc_ok:
                self.problem(R_IDX_IDS, _at(base + names_at + 20 * i),
                             f"IDX lists {_hex(name)} at pack offset {rel}, where the object's "
                             f"SHA-1 is {_hex(oid)}")
            else:
                self.problem(R_OBJ_HEADER, _at(pos),
                             f"object hashes to {_hex(oid)} but the IDX lists {_hex(name)} "
                             "and its bytes do not match the IDX CRC-32: the entry is damaged")
        for pos in self.starts:
            if pos not in seen:
                self.problem(R_IDX_OFFSETS, _at(pos), f"object {_hex(self.oid.get(pos, b''))} "
                             "of the pack is not listed in the IDX")

    def _idx_matches_fast(self, names: bytes, crcs: tuple, offs: tuple) -> bool:
        """The common case in a few C-speed passes: every entry agrees with the pack."""
        count = len(offs)
        if self.damaged or (count and max(offs) & idxmod.LARGE_OFFSET_FLAG) \
                or count != len(self.starts):
            return False
        positions = [v + layout.PACK_OFFSET for v in offs]
        oid, crc = self.oid.get, self.crc.get
        return (len(set(positions)) == count
                and [oid(p) for p in positions] == [names[i:i + 20]
                                                     for i in range(0, 20 * count, 20)]
                and [crc(p) for p in positions] == list(crcs))

    # -- layout and padding ----------------------------------------------

    def _check_layout(self) -> None:
        self.check("padding")
        t = self.trailer_at
        i = self.idx_offset
        e = self.idx_end
        cap = self.capacity
        if t is not None and i is not None and t + 20 <= i:
            self._zero(t + 20, i)
        if e is not None:
            self._zero(e, min(cap, e + 2 * layout.MAX_BLOCK_SIZE))
        if t is None or i is None or e is None or self.idx is None:
            return
        self.check("block-size")
        p = t + 20
        sizes = []
        b = layout.MIN_BLOCK_SIZE
        while b <= layout.MAX_BLOCK_SIZE:
            if i % b == 0 and cap % b == 0 and 1 <= i - p <= b and 1 <= cap - e <= b:
                sizes.append(b)
            b *= 2
        self.report.block_sizes = sizes
        if sizes:
            return
        if p > i:
            self.problem(R_HEADER, _at(20), f"IDX offset {i} is inside the pack (ends at {p})")
        elif not 1 <= i - p <= layout.MAX_BLOCK_SIZE or i % layout.MIN_BLOCK_SIZE:
            self.problem(R_HEADER, _at(20), f"IDX offset {i} does not follow the pack "
                         f"(ending at {p}) by the padding of any block size")
        else:
            self.problem(R_IMAGE, _at(cap), f"image size {cap} does not end the IDX (ending at "
                         f"{e}) with the padding of a block size that also fits the IDX offset "
                         "(truncated or extended image?)")

    def _zero(self, start: int, end: int) -> None:
        pos = start
        while pos < end:
            n = min(READ_CHUNK, end - pos)
            data = self.reader.pread(pos, n)
            if not data:
                return
            if data.count(0) != len(data):
                first = pos + len(data) - len(data.lstrip(b"\0"))
                self.problem(R_PADDING, _at(first), "padding is not zero")
                return
            pos += len(data)

    # -- the commit and what it reaches ----------------------------------

    def _idx_lists(self, oid: bytes) -> bool:
        data = self.idx_bytes
        if self.idx is None or data is None:
            return True  # cannot tell: do not accuse the header
        base = self.idx_offset
        pread = lambda off, n: data[off - base:off - base + n]
        try:
            return idxmod.find(pread, self.idx, oid) is not None
        except DamagedImage:
            return True

    def _load_commit_quick(self) -> None:
        """Quick mode has no scan: look the commit up through the IDX."""
        if self.idx is None or self.idx_bytes is None or self.commit_id is None:
            return
        data = self.idx_bytes
        pread = lambda off, n: data[off - self.idx_offset:off - self.idx_offset + n]
        try:
            rel = idxmod.lookup(pread, self.idx, self.commit_id)
        except DamagedImage:
            return
        if rel is None:
            self.problem(R_HEADER, _at(0), f"commit {_hex(self.commit_id)} named by the "
                         "header is not in the IDX")
            return
        pos = rel + layout.PACK_OFFSET
        limit = self.trailer_at or self.idx_offset
        try:
            eh = pack.parse_entry_header(self.reader.pread(pos, pack.MAX_ENTRY_HEADER), _at(pos))
            if eh.type != pack.OBJ_COMMIT:
                self.problem(R_HEADER, _at(0), f"object {_hex(self.commit_id)} named by the "
                             f"header is a {pack.TYPE_NAMES.get(eh.type, 'delta')}, not a commit")
                return
            data, _ = pack.inflate_from(self.reader.pread, pos + eh.header_len, eh.size,
                                        limit, _at(pos))
        except DamagedImage as exc:
            self.problem(R_OBJ_DATA, _at(pos), exc.what)
            return
        self.commit_data = data

    def _check_commit(self) -> None:
        self.check("commit")
        cid = self.commit_id
        if cid is None:
            return
        if self.quick:
            self._load_commit_quick()
        else:
            pos = self.by_id.get(cid)
            if pos is None:
                if (self.damaged or not self.scan_complete) and self._idx_lists(cid):
                    return  # it is in the pack, among the damage already reported
                self.problem(R_HEADER, _at(0), f"commit {_hex(cid)} named by the header is "
                             "not in the pack")
                return
            if self.otype.get(pos) != pack.OBJ_COMMIT:
                self.problem(R_HEADER, _at(0), f"object {_hex(cid)} named by the header is a "
                             f"{pack.TYPE_NAMES[self.otype[pos]]}, not a commit")
                return
        if self.commit_data is None:
            return
        try:
            commit = objects.parse_commit(self.commit_data, f"commit {_hex(cid)}")
        except DamagedImage as exc:
            self.problem(R_OBJECTS, f"commit {_hex(cid)}", exc.what)
            return
        r = self.report
        r.tree = _hex(commit.tree)
        r.author = commit.author
        r.committer = commit.committer
        r.message = commit.message
        if self.quick or not self.scan_complete:
            return  # what the tree reaches cannot be judged on a pack read in part
        self._walk(cid, commit)

    def _walk(self, cid: bytes, commit: objects.Commit) -> None:
        self.check("reachability")
        reached = {cid}
        for parent in commit.parents:
            if parent in self.by_id:
                reached.add(parent)  # a snapshot has none; history is tolerated
        counts = self.report.counts
        root = commit.tree
        if root not in self.by_id:
            self.problem(R_OBJECTS, f"object {_hex(root)}",
                         "the commit's root tree is not in the pack")
            return
        if self.otype[self.by_id[root]] != pack.OBJ_TREE:
            self.problem(R_OBJECTS, f"object {_hex(root)}", "the commit's root is not a tree")
            return
        # Per tree: (files, links, gitlinks, directories, bytes), computed once.
        memo: dict[bytes, tuple[int, int, int, int, int]] = {}
        visiting: set[bytes] = set()
        stack: list[tuple[bytes, str, int]] = [(root, "", 0)]
        trees = self.trees
        while stack:
            tid, path, state = stack.pop()
            if state == 0:
                if tid in memo:
                    continue
                if tid in visiting:
                    self.problem(R_OBJECTS, f"tree {_hex(tid)}", "tree contains itself")
                    memo[tid] = (0, 0, 0, 0, 0)
                    continue
                visiting.add(tid)
                reached.add(tid)
                stack.append((tid, path, 1))
                for mode, oid, name in trees.get(tid, ()):
                    if mode == objects.MODE_DIR:
                        t = self._typed(oid)
                        if t == pack.OBJ_TREE:
                            if oid not in memo:
                                stack.append((oid, f"{path}{objects.decode_name(name)}/", 0))
                        else:
                            self._missing(oid, f"{path}{objects.decode_name(name)}/", "tree", t)
                continue
            visiting.discard(tid)
            f = ln = g = d = nbytes = 0
            for mode, oid, name in trees.get(tid, ()):
                if mode == objects.MODE_DIR:
                    sub = memo.get(oid)
                    d += 1
                    if sub is not None:
                        f += sub[0]; ln += sub[1]; g += sub[2]; d += sub[3]; nbytes += sub[4]
                elif mode == objects.MODE_GITLINK:
                    g += 1
                else:
                    t = self._typed(oid)
                    if t != pack.OBJ_BLOB:
                        self._missing(oid, f"{path}{objects.decode_name(name)}", "blob", t)
                        continue
                    reached.add(oid)
                    if mode == objects.MODE_LINK:
                        ln += 1
                    else:
                        f += 1
                    nbytes += self.blob_sizes.get(oid, 0)
            memo[tid] = (f, ln, g, d, nbytes)
        total = memo.get(root, (0, 0, 0, 0, 0))
        counts.files, counts.links, counts.gitlinks, counts.directories, counts.bytes = total
        if not self.report.problems:  # otherwise they are mere consequences
            self._warn_unreachable(reached)

    def _typed(self, oid: bytes) -> int | None:
        pos = self.by_id.get(oid)
        return None if pos is None else self.otype.get(pos)

    def _missing(self, oid: bytes, path: str, want: str, got: int | None) -> None:
        if got is None and self.damaged and self._idx_lists(oid):
            return  # its entry is in the pack, damaged, and already reported
        if got is None:
            self.problem(R_OBJECTS, f"object {_hex(oid)}",
                         f"{path or '/'} is not in the pack")
        else:
            self.problem(R_OBJECTS, f"object {_hex(oid)}",
                         f"{path} should be a {want}, the pack has a {pack.TYPE_NAMES[got]}")

    def _warn_unreachable(self, reached: set[bytes]) -> None:
        self.check("unreachable")
        for oid, pos in self.by_id.items():
            if oid not in reached:
                self.warning(R_OBJECTS, f"object {_hex(oid)}",
                             f"{pack.TYPE_NAMES[self.otype[pos]]} at offset {pos} is not "
                             "reachable from the commit")


class _EntryError(DamagedImage):
    """A damaged entry; `region` is None when header-or-data must be found out."""

    def __init__(self, region: str | None, what: str) -> None:
        super().__init__(what)
        self.region = region
