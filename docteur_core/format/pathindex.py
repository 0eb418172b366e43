"""The path index region, version 2: one record per distinct tree, in compressed pages.

Fast mode used to pay at every boot what the builder already knew: read the
whole IDX and walk every tree. The path index is that walk, done once by
`docteur make` and stored after the IDX region, so that opening an image
costs one read (the super block) and a lookup a read per directory on the
path at most (the root's record is in the super block).

Version 1 stored every path again (its key, mode, id, offset and size), so
on ten releases of a project side by side the index was half the image.
Version 2 is sized like the trees it describes:
- a tree shared by many paths (the same folder in ten releases) has one
  record, and every directory entry naming it points at that record;
- a name is stored once per distinct tree, prefix-compressed against the
  name before it, and never with its parent's path;
- an object is named by its position in the IDX (which holds its id and CRC
  already), and placed by its pack offset, stored as the difference from the
  entry before it (git writes a folder's objects near each other);
- records are packed into pages of about 32 KiB, each deflated.

Placement (the OCaml docteur's layout is kept byte for byte before it):

    ... IDX, zero padding (1..block_size bytes)  <- the image as it was
    region start    zero padding (0..block_size - 1 bytes)
    pages start     page, page, ... (zlib streams, back to back)
    end - 4096      the super block (4096 bytes), ending at the image's end

The super block is the image's last 4096 bytes, so a reader finds it
without knowing the block size or the IDX's size: one read. The leading
padding makes the region a multiple of the block size, as the OCaml readers
need (they read everything from the IDX offset to the end of the device, in
blocks, and ignore what follows the IDX's own bytes).

Super block (little-endian):

     0  8  magic "DOCTPIDX"      8  2  version (2)       10  1  log2 super size (12)
    11  1  0                    12  4  flags (0)
    16 20  commit id            36 20  pack checksum    56 20  root tree id
    76  8  commit's offset      84  8  root tree's offset
    92  8  pack end (offset of the PACK's 20-byte trailer)
   100  8  region start        108  8  pages start
   116  4  pages               120  4  records (distinct trees)
   124  8  paths (the root excluded; shared subtrees counted at each place)
   132  4  root's entries      136 32  SHA-256 of the pages area then the inline page
   168  4  root record: offset in its page     172 8  its page's offset    180 4  its length
   184  4  inline page length (0: none)        188    inline page bytes
  4092  4  CRC-32 of bytes 0..4092

A page is a zlib stream (its Adler-32 catches damage) of records; a page at
offset == the pages area's length is the inline page (in the super block).
A record (varints are LEB128, at most 10 bytes):

    varint count, then per entry, in the tree's (git's) order:
      varint shared (bytes of the previous name), varint rest, rest bytes
      byte kind: 0 file, 1 executable, 2 link, 3 directory, 4 submodule
      submodule: its commit id (20 bytes; not in the pack)
      else: varint IDX position; varint zigzag(offset - the previous
            entry's offset in this record, 0 before the first)
      directory: its record: varint (inner offset << 1 | other page);
            other page: varint page offset, varint page length

Records come in post-order (a tree's after those it names), so every
reference is to a record already placed; the root's is last, alone in its
page, which is the inline page when it fits (a lookup starts with no read).

Determinism: the same trees and IDX give the same records; the pages are
zlib level 9, so the same zlib gives the same bytes (`docteur verify`
checks the records' meaning, not the compressed bytes, so an image made
with another zlib still verifies).

Everything here is pure: bytes in, values out (the reader's side is
`reader/pathindex.py`; the builder's is `make/pathindex.py`).
"""

from __future__ import annotations

import struct
import zlib
from collections import namedtuple
from collections.abc import Callable

from ..errors import DamagedImage
from .objects import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_GITLINK, MODE_LINK

MAGIC = b"DOCTPIDX"
VERSION = 2
SUPER_SHIFT = 12
SUPER_SIZE = 1 << SUPER_SHIFT
NODE_SIZE = SUPER_SIZE  # the old name, for the tools that measure regions
CRC_AT = SUPER_SIZE - 4
SUPER_HEAD = struct.Struct("<8sHBBI20s20s20sQQQQQIIQI32s")
ROOT_REF = struct.Struct("<IQII")  # inner offset, page offset, page length, inline length
INLINE_AT = SUPER_HEAD.size + ROOT_REF.size  # 188
INLINE_ROOM = CRC_AT - INLINE_AT
PAGE_RAW = 32 * 1024  # records are packed into pages of about this many bytes
MAX_PAGE_RAW = 1 << 26  # what a page may inflate to (a directory of ~a million names)
KINDS = (MODE_FILE, MODE_EXEC, MODE_LINK, MODE_DIR, MODE_GITLINK)
KIND_OF = {m: k for k, m in enumerate(KINDS)}
KIND_DIR, KIND_GITLINK = 3, 4
MODES = frozenset(KINDS)
REGION = "path index"
LEGACY = 1  # the version that stored every path

assert SUPER_HEAD.size == 168


class Super(namedtuple("Super", "version commit pack_checksum tree commit_offset tree_offset "
                               "pack_end region_start nodes_start pages records paths "
                               "root_count digest root_ref inline")):
    """The decoded super block; `root_ref` is (page offset, length, inner
    offset) of the root's record; `inline` the inline page's bytes."""

    __slots__ = ()

    @property
    def node_count(self) -> int:  # what `info` and the benches called the nodes
        pages: int = self.pages  # (a namedtuple's fields are untyped)
        return pages


class Ref(namedtuple("Ref", "page length inner")):
    """Where a record is: its page (offset in the pages area, length) and
    its offset in the inflated page."""

    __slots__ = ()


class Row(namedtuple("Row", "name mode position offset ref gitlink")):
    """One entry of a record: `position` in the IDX (None for a submodule,
    whose id is `gitlink`), `offset` in the pack, `ref` for a directory."""

    __slots__ = ()


class Entry(namedtuple("Entry", "key mode id offset size")):
    """One path as the reader hands it out: `key` is parent NUL name
    (bytes); `size` is None (version 2 keeps no sizes: the object's header
    and hash say them)."""

    __slots__ = ()

    @property
    def path(self) -> bytes:
        key: bytes = self.key  # (a namedtuple's fields are untyped)
        parent, _, name = key.partition(b"\0")
        return parent + b"/" + name if parent else name


def key_of(path: bytes) -> bytes:
    """The key of a `/`-separated path without leading or trailing slashes."""
    parent, _, name = path.rpartition(b"/")
    return parent + b"\0" + name


def dir_prefix(path: bytes) -> bytes:
    return path + b"\0"


# -- varints ------------------------------------------------------------------


def put_varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def get_varint(data: bytes | bytearray | memoryview, pos: int, where: str) -> tuple[int, int]:
    """(value, next position); DamagedImage past the end or over 10 bytes."""
    n = shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise DamagedImage("a number runs past the end of its record", where)
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def zigzag(n: int) -> int:
    return n * 2 if n >= 0 else -n * 2 - 1


def unzigzag(z: int) -> int:
    return z >> 1 if not z & 1 else -(z >> 1) - 1


# -- encoding ---------------------------------------------------------------

# What the encoder is given of a tree: (mode, raw name, raw id) per entry,
# in the tree's order.
TreeRows = list[tuple[int, bytes, bytes]]


def encode_record(rows: TreeRows, position_of: Callable[[bytes], int],
                  offset_of: Callable[[bytes], int], ref_of: Callable[[bytes], Ref],
                  page_offset: int | None) -> bytes:
    """One tree's record. `ref_of(tree id)` is the child's Ref; one whose
    page is `page_offset` (None: not placed yet, the one being filled) is
    written as in the same page."""
    out = bytearray()
    put_varint(out, len(rows))
    prev = b""
    last = 0
    for mode, name, oid in rows:
        kind = KIND_OF.get(mode)
        if kind is None:
            raise ValueError(f"{name!r}: mode {mode:o} cannot be indexed")
        limit = min(len(prev), len(name))
        shared = 0
        while shared < limit and prev[shared] == name[shared]:
            shared += 1
        put_varint(out, shared)
        put_varint(out, len(name) - shared)
        out += name[shared:]
        out.append(kind)
        prev = name
        if kind == KIND_GITLINK:
            out += oid
            continue
        put_varint(out, position_of(oid))
        off = offset_of(oid)
        put_varint(out, zigzag(off - last))
        last = off
        if kind == KIND_DIR:
            page, length, inner = ref_of(oid)
            if page == page_offset:
                put_varint(out, inner << 1)
            else:
                put_varint(out, inner << 1 | 1)
                put_varint(out, page)
                put_varint(out, length)
    return bytes(out)


def post_order(root: bytes, entries_of: Callable[[bytes], TreeRows]) -> list[bytes]:
    """Distinct trees under `root` (included), each after those it names,
    in a deterministic order; ValueError on a tree that contains itself."""
    done: set[bytes] = set()
    on_path: set[bytes] = set()
    order: list[bytes] = []
    stack: list[tuple[bytes, bool]] = [(root, False)]
    while stack:
        tid, leaving = stack.pop()
        if leaving:
            on_path.discard(tid)
            if tid not in done:
                done.add(tid)
                order.append(tid)
            continue
        if tid in done:
            continue
        if tid in on_path:
            raise ValueError(f"tree {tid.hex()} contains itself")
        on_path.add(tid)
        stack.append((tid, True))
        for mode, _, oid in reversed(entries_of(tid)):
            if mode == MODE_DIR and oid not in done:
                stack.append((oid, False))
    return order


class Pages:
    """Records into pages as they come: `add` returns where each went."""

    def __init__(self) -> None:
        self.done: list[bytes] = []  # compressed pages
        self.at = 0  # bytes of pages done
        self.raw = bytearray()
        self.refs: dict[bytes, Ref] = {}  # tree id -> Ref; page None while open
        self.open: list[bytes] = []  # tree ids in the open page

    def flush(self) -> None:
        if not self.raw:
            return
        page = zlib.compress(bytes(self.raw), 9)
        for tid in self.open:
            inner = self.refs[tid].inner
            self.refs[tid] = Ref(self.at, len(page), inner)
        self.done.append(page)
        self.at += len(page)
        self.raw = bytearray()
        self.open = []


def encode(root: bytes, entries_of: Callable[[bytes], TreeRows],
           position_of: Callable[[bytes], int], offset_of: Callable[[bytes], int], *,
           commit: bytes, pack_checksum: bytes, commit_offset: int, tree_offset: int,
           pack_end: int, region_start: int, block_size: int) -> bytes:
    """The whole region (leading padding, pages, super block) of the commit
    whose root tree is `root`. `entries_of(tree id)` gives a tree's rows in
    its order; `position_of(id)` an object's IDX position and `offset_of(id)`
    its absolute pack offset (KeyError or ValueError when absent).
    ValueError when the trees cannot be indexed."""
    import hashlib  # here: the reader (a guest) never encodes, and hashlib is heavy

    order = post_order(root, entries_of)
    pages = Pages()
    paths: dict[bytes, int] = {}
    for tid in order:
        rows = entries_of(tid)
        n = len(rows)
        for mode, _, oid in rows:
            if mode == MODE_DIR:
                n += paths[oid]
        paths[tid] = n

        def ref_of(oid: bytes) -> Ref:
            r = pages.refs[oid]
            return r if r.page is not None else Ref(None, 0, r.inner)

        record = encode_record(rows, position_of, offset_of, ref_of, None)
        # The root's record alone in the last page, which then fits in the
        # super block: a lookup starts with no read.
        if pages.raw and (len(pages.raw) + len(record) > PAGE_RAW or tid == root):
            pages.flush()
            record = encode_record(rows, position_of, offset_of, ref_of, None)
        if len(pages.raw) + len(record) > MAX_PAGE_RAW:
            raise ValueError(f"tree {tid.hex()} is too large for the path index")
        pages.refs[tid] = Ref(None, 0, len(pages.raw))
        pages.open.append(tid)
        pages.raw += record
    # The last page (the root's) goes in the super block when it fits.
    inline = b""
    last = zlib.compress(bytes(pages.raw), 9)
    if len(last) <= INLINE_ROOM:
        inline = last
        for tid in pages.open:
            pages.refs[tid] = Ref(pages.at, len(last), pages.refs[tid].inner)
    else:
        pages.flush()
    area = b"".join(pages.done)
    root_ref = pages.refs[root]
    lead = -(len(area) + SUPER_SIZE) % block_size
    digest = hashlib.sha256(area + inline).digest()
    sup = bytearray(SUPER_SIZE)
    SUPER_HEAD.pack_into(
        sup, 0, MAGIC, VERSION, SUPER_SHIFT, 0, 0, commit, pack_checksum, root,
        commit_offset, tree_offset, pack_end, region_start, region_start + lead,
        len(pages.done), len(order), min(paths[root], (1 << 64) - 1),
        len(entries_of(root)), digest)
    ROOT_REF.pack_into(sup, SUPER_HEAD.size, root_ref.inner, root_ref.page, root_ref.length,
                       len(inline))
    sup[INLINE_AT:INLINE_AT + len(inline)] = inline
    struct.pack_into("<I", sup, CRC_AT, zlib.crc32(memoryview(sup)[:CRC_AT]))
    return bytes(lead) + area + bytes(sup)


# -- decoding ---------------------------------------------------------------


def valid_name(name: bytes) -> bool:
    return bool(name) and b"/" not in name and b"\0" not in name and name not in (b".", b"..")


def has_magic(last: bytes) -> bool:
    """Whether the image's last 4096 bytes start with a super block's magic."""
    return len(last) >= SUPER_SIZE and last[-SUPER_SIZE:-SUPER_SIZE + 8] == MAGIC


def version_of(data: bytes) -> int:
    """The version a super block says (before any other check)."""
    version: int = struct.unpack_from("<H", data, 8)[0] if len(data) >= 10 else 0
    return version


def parse_binding(data: bytes, capacity: int) -> tuple[int, bytes, int]:
    """(version, pack checksum, region start) of a super block of version 1
    or 2, its magic and CRC-32 checked: what a tool that does not read the
    index (`make --base`) needs to know the region belongs to the PACK."""
    where = f"{REGION} super block at offset {capacity - SUPER_SIZE}"
    if len(data) != SUPER_SIZE or data[:8] != MAGIC:
        raise DamagedImage("no path index super block", where)
    if zlib.crc32(memoryview(data)[:CRC_AT]) != struct.unpack_from("<I", data, CRC_AT)[0]:
        raise DamagedImage("super block CRC-32 does not match", where)
    version = version_of(data)
    if version not in (LEGACY, VERSION):
        raise DamagedImage(f"path index version {version}, this docteur knows {LEGACY} "
                           f"and {VERSION}", where)
    return version, bytes(data[36:56]), struct.unpack_from("<Q", data, 100)[0]


def parse_super(data: bytes, capacity: int) -> Super:
    """Decode and check the super block (the image's last 4096 bytes)."""
    at = capacity - SUPER_SIZE
    where = f"{REGION} super block at offset {at}"
    if len(data) != SUPER_SIZE or data[:8] != MAGIC:
        raise DamagedImage("no path index super block", where)
    crc = struct.unpack_from("<I", data, CRC_AT)[0]
    if zlib.crc32(memoryview(data)[:CRC_AT]) != crc:
        raise DamagedImage("super block CRC-32 does not match", where)
    (_, version, shift, zero, flags, commit, pack_sum, tree, c_off, t_off, pack_end,
     region_start, nodes_start, pages, records, paths, root_count,
     digest) = SUPER_HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise DamagedImage(f"path index version {version}, this reader knows {VERSION}", where)
    if shift != SUPER_SHIFT or flags != 0 or zero != 0:
        raise DamagedImage(f"super size 2^{shift} or flags {flags:#x} unknown", where)
    if not (0 < pack_end < region_start <= nodes_start <= at
            and nodes_start - region_start < max(SUPER_SIZE, 1 << 30)):
        raise DamagedImage(f"region bounds {region_start}..{nodes_start}..{at} and the pack "
                           f"ending at {pack_end} do not fit the image", where)
    for name, off in (("commit", c_off), ("root tree", t_off)):
        if not 28 + 12 <= off < pack_end:
            raise DamagedImage(f"the {name}'s offset {off} is outside the pack", where)
    inner, page, length, inline_len = ROOT_REF.unpack_from(data, SUPER_HEAD.size)
    area = at - nodes_start
    if inline_len > INLINE_ROOM or any(data[INLINE_AT + inline_len:CRC_AT]):
        raise DamagedImage(f"inline page of {inline_len} bytes, or bytes after it", where)
    if not records or not check_page(page, length, area, inline_len):
        raise DamagedImage(f"the root's record (page at {page}, {length} bytes) is outside "
                           f"the {area} bytes of pages", where)
    return Super(version, commit, pack_sum, tree, c_off, t_off, pack_end, region_start,
                 nodes_start, pages, records, paths, root_count, digest,
                 Ref(page, length, inner), bytes(data[INLINE_AT:INLINE_AT + inline_len]))


def check_page(page: int, length: int, area: int, inline_len: int) -> bool:
    """Whether a page reference fits the region (the inline page included)."""
    if page == area:
        return length == inline_len and length > 0
    return length > 0 and page + length <= area


def inflate_page(data: bytes, where: str) -> bytes:
    """A page's records; DamagedImage when it is not one whole zlib stream."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, MAX_PAGE_RAW)
    except zlib.error as exc:
        raise DamagedImage(f"page does not inflate ({exc})", where) from None
    if not d.eof or d.unconsumed_tail or d.unused_data:
        raise DamagedImage("page is not one whole zlib stream of at most "
                           f"{MAX_PAGE_RAW} bytes", where)
    return raw


def decode_record(raw: bytes, inner: int, page: Ref, area: int, inline_len: int,
                  idx_count: int, pack_start: int, pack_end: int, where: str) -> list[Row]:
    """The rows of the record at `inner` in an inflated page, checked: names
    valid and unique (their order is the tree's, which its hash proves when
    verifying), known kinds, positions inside the IDX, offsets inside the
    pack, references inside the region.

    One loop with the varints' one-byte case inline: this runs once per
    entry of every directory a walk lists.
    """
    if not 0 <= inner < len(raw):
        raise DamagedImage(f"record offset {inner} is outside its page of {len(raw)} bytes",
                           where)
    try:
        return _decode_record(raw, inner, page, area, inline_len, idx_count, pack_start,
                              pack_end, where)
    except IndexError:
        raise DamagedImage("a record runs past the end of its page", where) from None


def _decode_record(raw: bytes, pos: int, page: Ref, area: int, inline_len: int,
                   idx_count: int, pack_start: int, pack_end: int, where: str) -> list[Row]:
    count, pos = get_varint(raw, pos, where)
    end = len(raw)
    if count > end - pos:  # every row takes bytes
        raise DamagedImage(f"record of {count} entries in {end - pos} bytes", where)
    rows: list[Row] = []
    append = rows.append
    prev = b""
    held = 0  # len(prev)
    last = 0
    seen: set[bytes] = set()
    add = seen.add
    kinds = KINDS
    for i in range(count):
        shared = raw[pos]
        if shared < 0x80:
            pos += 1
        else:
            shared, pos = get_varint(raw, pos, where)
        rest = raw[pos]
        if rest < 0x80:
            pos += 1
        else:
            rest, pos = get_varint(raw, pos, where)
        if shared > held or pos + rest >= end:
            raise DamagedImage(f"entry {i} has a bad name length", where)
        name = prev[:shared] + raw[pos:pos + rest]
        pos += rest
        kind = raw[pos]
        pos += 1
        if (name in seen or not name or b"/" in name or b"\0" in name
                or name == b"." or name == b".."):
            raise DamagedImage(f"entry {i} has a malformed or repeated name {name!r}", where)
        add(name)
        prev = name
        held = shared + rest
        if kind >= KIND_GITLINK:
            if kind > KIND_GITLINK:
                raise DamagedImage(f"entry {i} ({name!r}) has an unknown kind {kind}", where)
            if pos + 20 > end:
                raise DamagedImage(f"entry {i} ({name!r}) runs past its record", where)
            append(Row(name, MODE_GITLINK, None, 0, None, raw[pos:pos + 20]))
            pos += 20
            continue
        position, pos = get_varint(raw, pos, where)
        delta = raw[pos]
        if delta < 0x80:
            pos += 1
        else:
            delta, pos = get_varint(raw, pos, where)
        last += delta >> 1 if not delta & 1 else -(delta >> 1) - 1
        if position >= idx_count:
            raise DamagedImage(f"entry {i} ({name!r}): IDX position {position} is over the "
                               f"IDX's {idx_count} objects", where)
        if not pack_start <= last < pack_end:
            raise DamagedImage(f"entry {i} ({name!r}): offset {last} is outside the pack "
                               f"({pack_start}..{pack_end})", where)
        ref = None
        if kind == KIND_DIR:
            a, pos = get_varint(raw, pos, where)
            if a & 1:
                pg, pos = get_varint(raw, pos, where)
                ln, pos = get_varint(raw, pos, where)
                if not check_page(pg, ln, area, inline_len):
                    raise DamagedImage(f"entry {i} ({name!r}): page at {pg} of {ln} bytes "
                                       "is outside the region", where)
                ref = Ref(pg, ln, a >> 1)
            else:
                ref = Ref(page.page, page.length, a >> 1)
        append(Row(name, kinds[kind], position, last, ref, None))
    return rows
