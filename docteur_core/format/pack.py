"""Git PACK entries as pure functions over bytes.

A pack entry is a varint header (type and inflated size), then for deltas a
reference to the base (a backwards distance for OFS_DELTA, an object id for
REF_DELTA), then a zlib stream. Everything here trusts nothing: sizes,
distances and delta instructions are checked, and any inconsistency raises
`DamagedImage` naming where it was found.

I/O stays outside: `inflate_from` takes a `pread(offset, length)` callable,
so the same code runs over a file, a sector cache or a byte string. The
inflate of an entry's zlib stream (bounded, exact, CRC-checked) is
`format/inflate.py`'s, re-exported here.
"""

from __future__ import annotations

import sys

import struct
from collections.abc import Callable, Iterator

from ..errors import DamagedImage, LimitExceeded
from .inflate import Inflater as Inflater, inflate_from as inflate_from
from .layout import PACK_HEADER_SIZE, PACK_SIGNATURE, PACK_VERSION
from .limits import MAX_OBJECT_SIZE

TYPE_CHECKING = False  # (`typing` costs a guest's start-up: see reader/__init__.py)
if TYPE_CHECKING:
    from typing import Protocol, TypeAlias

    # What a delta and its base may be held in.
    Buf: TypeAlias = bytes | bytearray | memoryview

    class Hash(Protocol):
        """A SHA-1 object: OpenSSL's (hashlib) or CPython's own (_sha1)."""

        def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
        def digest(self) -> bytes: ...
        def hexdigest(self) -> str: ...

OBJ_COMMIT = 1
OBJ_TREE = 2
OBJ_BLOB = 3
OBJ_TAG = 4
OBJ_OFS_DELTA = 6
OBJ_REF_DELTA = 7
TYPE_NAMES = {OBJ_COMMIT: "commit", OBJ_TREE: "tree", OBJ_BLOB: "blob", OBJ_TAG: "tag"}
BASE_TYPES = frozenset(TYPE_NAMES)

# Type+size varint (at most 10 bytes for 64 bits) plus the larger of an
# OFS_DELTA distance (at most 10 bytes) and a REF_DELTA id (20 bytes).
MAX_ENTRY_HEADER = 32
DEFAULT_MAX_OBJECT_SIZE = MAX_OBJECT_SIZE  # one limit for reader, verify, plugin


def parse_pack_header(data: bytes, where: object = "pack") -> int:
    """Check signature and version; return the object count."""
    if len(data) < PACK_HEADER_SIZE:
        raise DamagedImage("truncated PACK header", where)
    if data[:4] != PACK_SIGNATURE:
        raise DamagedImage(f"bad PACK signature {bytes(data[:4])!r}", where)
    count: int
    version, count = struct.unpack_from(">II", data, 4)
    if version != PACK_VERSION:
        raise DamagedImage(f"unsupported PACK version {version}", where)
    return count


class EntryHeader:
    """What an entry's header says (see `parse_entry_header`)."""

    __slots__ = ("type", "size", "header_len", "base_distance", "base_id")

    def __init__(self, type: int, size: int, header_len: int,
                 base_distance: int | None = None, base_id: bytes | None = None) -> None:
        self.type = type
        self.size = size  # inflated size: of the object, or of the delta data for deltas
        self.header_len = header_len  # bytes from the entry's start to its zlib stream
        self.base_distance = base_distance  # OFS_DELTA: this entry's offset - base's
        self.base_id = base_id  # REF_DELTA: raw id of the base


def entry_header(type_num: int, size: int) -> bytes:
    """The variable-length type+size header of a pack entry."""
    byte = (type_num << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


def parse_entry_header(buf: bytes, where: object, max_size: int | None = DEFAULT_MAX_OBJECT_SIZE
                       ) -> EntryHeader:
    """Parse an entry header at the start of `buf` (pass MAX_ENTRY_HEADER bytes).

    `max_size` None: no limit on the declared size (for entries that are
    streamed, never held).
    """
    n = len(buf)
    if n == 0:
        raise DamagedImage("entry header past the end of the pack", where)
    c = buf[0]
    typ = (c >> 4) & 7
    size = c & 15
    shift = 4
    pos = 1
    while c & 0x80:
        if pos >= n or shift > 60:
            raise DamagedImage("entry size varint is truncated or too long", where)
        c = buf[pos]
        pos += 1
        size |= (c & 0x7F) << shift
        shift += 7
    if typ not in BASE_TYPES and typ not in (OBJ_OFS_DELTA, OBJ_REF_DELTA):
        raise DamagedImage(f"invalid entry type {typ}", where)
    if max_size is not None and size > max_size:
        raise LimitExceeded(f"entry declares {size} bytes, over the limit of {max_size}", where,
                            "max_object_size")
    if typ == OBJ_OFS_DELTA:
        if pos >= n:
            raise DamagedImage("truncated OFS_DELTA distance", where)
        c = buf[pos]
        pos += 1
        distance = c & 0x7F
        while c & 0x80:
            if pos >= n or distance > (1 << 56):
                raise DamagedImage("OFS_DELTA distance is truncated or too long", where)
            c = buf[pos]
            pos += 1
            distance = ((distance + 1) << 7) | (c & 0x7F)
        if distance == 0:
            raise DamagedImage("OFS_DELTA refers to itself", where)
        return EntryHeader(typ, size, pos, base_distance=distance)
    if typ == OBJ_REF_DELTA:
        if pos + 20 > n:
            raise DamagedImage("truncated REF_DELTA base id", where)
        return EntryHeader(typ, size, pos + 20, base_id=bytes(buf[pos:pos + 20]))
    return EntryHeader(typ, size, pos)


def _varint(data: Buf, pos: int, where: object) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DamagedImage("truncated size in delta header", where)
        c = data[pos]
        pos += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return value, pos


def delta_sizes(delta: Buf, where: object) -> tuple[int, int, int]:
    """Return (base size, result size, position of the first instruction)."""
    src, pos = _varint(delta, 0, where)
    dst, pos = _varint(delta, pos, where)
    return src, dst, pos


def apply_delta(base: bytes | bytearray, delta: bytes | bytearray, where: object,
                max_size: int = DEFAULT_MAX_OBJECT_SIZE, mutable: bool = False) -> bytes | bytearray:
    """Rebuild an object from its base and a git delta, checking every step.

    This is the one delta decoder of docteur, and reading every file of an
    image or verifying a whole pack spends most of its time here, so it is
    tuned: the two size varints are read inline (anything odd goes to
    `delta_sizes`, which raises the precise error), then every delta goes
    through `_apply_fast`, which builds valid deltas in the fewest steps
    and gives up (None) on anything else; only then does the checked walk
    (`_delta_ops`) run, from the start, to raise the exact error (or build
    the rare valid form the fast loop leaves out). tests/helpers/reference_git.py
    holds the plain loop this must agree with, on valid and on garbage
    deltas. With `mutable` the result is the bytearray it was built in (no
    second copy), for callers that never hand it out as is.
    """
    # The two sizes, written out twice on purpose: a loop or a call to
    # `delta_sizes` costs ~12% on small deltas, the bulk of a pack.
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
        src_size, dst_size, pos = delta_sizes(delta, where)
    if src_size != len(base):
        raise DamagedImage(f"delta expects a base of {src_size} bytes, base has {len(base)}",
                           where)
    if dst_size > max_size:  # before a single byte of it is built
        raise LimitExceeded(f"delta result of {dst_size} bytes is over the limit of {max_size}",
                            where, "max_object_size")
    out = _apply_fast(base, delta, pos, dst_size)
    if out is None:
        # Damage, or a rare valid form the fast loop leaves out: the checked
        # walk decides, with the exact error.
        out = bytearray()
        for from_base, start, length in _delta_ops(delta, pos, src_size, dst_size, where):
            out += (base if from_base else delta)[start:start + length]
    return out if mutable else bytes(out)


# A copy instruction with three offset bytes and one size byte: 72% of the
# instructions of Linux's generated amdgpu headers (5 bytes: op, offset, size).
_COPY_97 = 0x97
_unpack_97 = struct.Struct("<IB").unpack_from
# Two offset bytes and one size byte: half the instructions of small deltas.
_COPY_93 = 0x93
_unpack_93 = struct.Struct("<xHB").unpack_from
_struct_error = struct.error


def _apply_fast(base: Buf, delta: Buf, pos: int, dst_size: int) -> bytearray | None:
    """`apply_delta`'s optimistic loop: the result, or None for anything odd.

    Reading every file of an image applies millions of delta instructions
    (7.5 million for Linux 6.1), at a few hundred nanoseconds of Python
    each: this loop does as few steps per instruction as it can and leaves
    every error to the checked walk (`_delta_ops`), which then runs from
    the start and decides (with the exact words), so the checks are not
    repeated here:
    - a copy outside the base is not tested: its slice comes out short, so
      the bytes built (`len(out)`) fall behind the bytes declared (`t`),
      which is checked once at the end;
    - the end of the delta is the IndexError (or struct.error) of reading
      past it: at exactly `len(delta)` it is the end, anywhere else a
      truncated instruction (None);
    - the two common copies (ops 0x97 and 0x93) are one struct call each,
      not four or three indexings;
    - the result grows by `+=` into one bytearray (a list of pieces joined
      costs twice as much: an object per piece, then a pass over them);
      `t > dst_size` is still checked on every copy so a hostile delta
      cannot build more than it declares (inserts are bounded by the delta).
    tests/format/test_delta_fast.py holds it to tests/helpers/reference_git.py.
    """
    out = bytearray()
    t = 0
    unpack_97, unpack_93 = _unpack_97, _unpack_93
    try:
        while True:
            op = delta[pos]
            if op == _COPY_97:
                v, size = unpack_97(delta, pos)
                pos += 5
                t += size
                if t > dst_size or not size:  # a size byte 0 means 0x10000: rare
                    return None
                v >>= 8
                out += base[v:v + size]
            elif op < 0x80:
                if not op:
                    return None
                pos += 1
                t += op
                out += delta[pos:pos + op]
                pos += op
            elif op == _COPY_93:
                off, size = unpack_93(delta, pos)
                pos += 4
                t += size
                if t > dst_size or not size:
                    return None
                out += base[off:off + size]
            else:
                # pos stays at the instruction if it is truncated
                off, size, pos = _copy_operands(delta, pos + 1, op)
                t += size
                if t > dst_size:
                    return None
                out += base[off:off + size]
    except (IndexError, _struct_error):
        if pos != len(delta):
            return None
    if t != dst_size or len(out) != t:
        return None
    return out


def _copy_operands(delta: Buf, p: int, op: int) -> tuple[int, int, int]:
    """(offset, size, position after them) of the copy instruction `op`
    whose optional bytes start at `p`; a size of 0 is 0x10000. IndexError
    when the delta ends among them. The fast loops decode the two common
    copies themselves and call this for the others."""
    off = size = 0
    if op & 0x01:
        off = delta[p]
        p += 1
    if op & 0x02:
        off |= delta[p] << 8
        p += 1
    if op & 0x04:
        off |= delta[p] << 16
        p += 1
    if op & 0x08:
        off |= delta[p] << 24
        p += 1
    if op & 0x10:
        size = delta[p]
        p += 1
    if op & 0x20:
        size |= delta[p] << 8
        p += 1
    if op & 0x40:
        size |= delta[p] << 16
        p += 1
    return off, size or 0x10000, p


def _delta_ops(delta: Buf, pos: int, src_size: int, dst_size: int, where: object
               ) -> Iterator[tuple[bool, int, int]]:
    """Yield (from_base, start, length) for each instruction of `delta` from `pos`.

    The checked walk: every check git's own loop makes, in its order, with
    docteur's words (tests/helpers/reference_git.py is the plain loop it must agree
    with). The fast loops leave every damaged delta to it: `apply_delta`
    builds from it when `_apply_fast` gives up, `check_delta` and
    `write_delta` walk with it when their fast passes do. A piece is
    yielded only once it is known to fit the declared result.
    """
    n = len(delta)
    total = 0
    try:
        while pos < n:
            op = delta[pos]
            pos += 1
            if op & 0x80:
                off, size, pos = _copy_operands(delta, pos, op)
                if off + size > src_size:
                    raise DamagedImage(f"delta copies {size} bytes at {off}, outside a base "
                                       f"of {src_size}", where)
                total += size
                if total > dst_size:
                    raise DamagedImage("delta result larger than declared", where)
                yield True, off, size
            elif op:
                if pos + op > n:
                    raise DamagedImage("truncated insert instruction in delta", where)
                total += op
                if total > dst_size:
                    raise DamagedImage("delta result larger than declared", where)
                yield False, pos, op
                pos += op
            else:
                raise DamagedImage("reserved delta instruction 0", where)
    except IndexError:
        raise DamagedImage("truncated copy instruction in delta", where) from None
    if total != dst_size:
        raise DamagedImage(f"delta result is {total} bytes, {dst_size} declared", where)


def _check_fast(base: Buf, delta: Buf, pos: int, dst_size: int) -> bool:
    """`check_delta`'s optimistic pass: True if the delta is sound; False
    for anything else, and the checked walk (`_delta_ops`) then says what.

    The 24 MB file of Linux stored as a delta (842,000 instructions) is
    checked, then written, when streamed: through `_delta_ops`, a generator,
    that was two passes of ~700 ns an instruction. This is `_apply_fast`'s
    loop without the building, so each copy's bounds are tested here.
    """
    src_size = len(base)
    t = 0
    unpack_97, unpack_93 = _unpack_97, _unpack_93
    try:
        while True:
            op = delta[pos]
            if op == _COPY_97:
                v, size = unpack_97(delta, pos)
                pos += 5
                size = size or 0x10000
                t += size
                if (v >> 8) + size > src_size or t > dst_size:
                    return False
            elif op < 0x80:
                if not op:
                    return False
                pos += 1 + op  # past the end if cut short: caught below
                t += op
            elif op == _COPY_93:
                off, size = unpack_93(delta, pos)
                pos += 4
                size = size or 0x10000
                t += size
                if off + size > src_size or t > dst_size:
                    return False
            else:
                off, size, pos = _copy_operands(delta, pos + 1, op)
                t += size
                if off + size > src_size or t > dst_size:
                    return False
    except (IndexError, _struct_error):
        if pos != len(delta):
            return False
    return t == dst_size


def _write_fast(base: Buf, delta: Buf, pos: int, dst_size: int, write: Callable[[bytes], object],
                chunk: int) -> bool:
    """`write_delta`'s loop as `_apply_fast`'s, writing the result in
    pieces of about `chunk` bytes: True when all of it went out; False on
    damage, found before the piece it is in was written (each piece's
    length is checked against what its instructions declared).

    Unlike `_apply_fast` it builds every valid form (a size byte 0 is
    0x10000 here), so False means damage and never comes after a valid
    delta was partly written.
    """
    out = bytearray()
    t = done = 0
    flush_at = chunk
    unpack_97, unpack_93 = _unpack_97, _unpack_93
    try:
        while True:
            if t >= flush_at:
                if len(out) != t - done:
                    return False
                write(bytes(out))
                out = bytearray()
                done = t
                flush_at = t + chunk
            op = delta[pos]
            if op == _COPY_97:
                v, size = unpack_97(delta, pos)
                pos += 5
                size = size or 0x10000
                t += size
                if t > dst_size:
                    return False
                v >>= 8
                out += base[v:v + size]
            elif op < 0x80:
                if not op:
                    return False
                pos += 1
                t += op
                out += delta[pos:pos + op]
                pos += op
            elif op == _COPY_93:
                off, size = unpack_93(delta, pos)
                pos += 4
                size = size or 0x10000
                t += size
                if t > dst_size:
                    return False
                out += base[off:off + size]
            else:
                off, size, pos = _copy_operands(delta, pos + 1, op)
                t += size
                if t > dst_size:
                    return False
                out += base[off:off + size]
    except (IndexError, _struct_error):
        if pos != len(delta):
            return False
    if t != dst_size or len(out) != t - done:
        return False
    if out:
        write(bytes(out))
    return True


def _delta_start(base: Buf, delta: Buf, where: object, max_size: int) -> tuple[int, int]:
    """(result size, position of the first instruction), header checked as in
    `apply_delta`."""
    src_size, dst_size, pos = delta_sizes(delta, where)
    if src_size != len(base):
        raise DamagedImage(f"delta expects a base of {src_size} bytes, base has {len(base)}",
                           where)
    if dst_size > max_size:
        raise LimitExceeded(f"delta result of {dst_size} bytes is over the limit of {max_size}",
                            where, "max_object_size")
    return dst_size, pos


def check_delta(base: Buf, delta: Buf, where: object, max_size: int = DEFAULT_MAX_OBJECT_SIZE,
                update: Callable[[memoryview], object] | None = None) -> int:
    """Check a delta against its base without building the result; return its size.

    The first half of streaming a large delta result (`write_delta` is the
    second): every instruction is checked (DamagedImage naming `where`, the
    words of `apply_delta`) and, with `update` (a hash's), the result's
    pieces are fed to it as views of base and delta, so an object can be
    hashed, and refused, before a byte of it goes out, with no more memory
    than its base and its delta.
    """
    dst_size, pos = _delta_start(base, delta, where, max_size)
    if update is None:
        if _check_fast(base, delta, pos, dst_size):
            return dst_size
        for _ in _delta_ops(delta, pos, len(base), dst_size, where):  # says what is wrong
            pass
        return dst_size
    bv, dv = memoryview(base), memoryview(delta)
    for from_base, start, length in _delta_ops(delta, pos, len(base), dst_size, where):
        update((bv if from_base else dv)[start:start + length])
    return dst_size


def write_delta(base: Buf, delta: Buf, write: Callable[[bytes], object], where: object = "",
                max_size: int = DEFAULT_MAX_OBJECT_SIZE, chunk: int = 1 << 20) -> int:
    """Write a delta's result through `write` in bytes of about `chunk`; return its size.

    Call `check_delta` first: a damaged delta is then refused before
    anything is written (here it would be found part way). Only `chunk`
    bytes (or one copy instruction, at most 16 MiB) are built at a time.
    """
    dst_size, pos = _delta_start(base, delta, where, max_size)
    if _write_fast(base, delta, pos, dst_size, write, chunk):
        return dst_size
    # Damage, found before the piece it is in went out: the checked walk
    # names it (without writing again what went out). `_write_fast` gives
    # up on damage only, so what follows is this function's old loop, kept
    # as the reference of what is written.
    for _ in _delta_ops(delta, pos, len(base), dst_size, where):
        pass
    bv, dv = memoryview(base), memoryview(delta)
    parts: list[memoryview] = []
    have = 0
    for from_base, start, length in _delta_ops(delta, pos, len(base), dst_size, where):
        parts.append((bv if from_base else dv)[start:start + length])
        have += length
        if have >= chunk:
            write(b"".join(parts))
            parts = []
            have = 0
    if parts:
        write(b"".join(parts))
    return dst_size


# SHA-1 for verified reads. OpenSSL's (hashlib) runs about 7 times as fast
# as CPython's own `_sha1`, but loading it costs a start-up ~2 ms on a host
# (30-50 times that in an emulated guest), more than a guest's `cat` of a
# small file hashes in all: so `_sha1` hashes until SLOW_SHA1_BYTES have
# gone through it (or hashlib is loaded anyway), then OpenSSL takes over.
SLOW_SHA1_BYTES = 1 << 20
_slow_hashed = 0
_sha1_of: Callable[[bytes], Hash] | None = None  # the constructor in use, once chosen


def sha1(head: bytes = b"") -> Hash:
    """A SHA-1 object started with `head` (see SLOW_SHA1_BYTES)."""
    global _sha1_of
    if _sha1_of is not None:
        return _sha1_of(head)
    if _slow_hashed <= SLOW_SHA1_BYTES and "hashlib" not in sys.modules:
        try:
            from _sha1 import sha1 as slow
        except ImportError:  # a Python built without its own hashes
            pass
        else:
            h: Hash = slow(head)
            return h
    import hashlib

    _sha1_of = hashlib.sha1  # for good: nothing is gained by going back
    return _sha1_of(head)


def object_id(type_name: str, data: bytes) -> bytes:
    """The raw SHA-1 git gives an object of this type and content."""
    global _slow_hashed

    if _sha1_of is not None:
        h = _sha1_of(b"%s %d\0" % (type_name.encode("ascii"), len(data)))
    else:
        _slow_hashed += len(data)
        h = sha1(b"%s %d\0" % (type_name.encode("ascii"), len(data)))
    h.update(data)
    return h.digest()
