"""Hand-made packs, IDXs and images, for tests that need a precise lie.

git will not write a pack with a size lie, a delta cycle, an IDX listing
an id the object does not hash to, or a fanout that decreases; the reader
and verify tests need exactly those, one at a time. This is the one small
writer they share: entries are encoded here (with the format's own
`pack.entry_header` and `idx.encode_idx_v2`, the builder's encoders), every field can be overridden, and the
image is laid out with the real `layout` rules. Delta sizes and offset
distances come from fuzz/gitbytes.py, the fuzzer's independent encoders.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from docteur_core.format import layout
from docteur_core.format.idx import encode_idx_v2
from docteur_core.format.pack import (OBJ_BLOB, OBJ_COMMIT, OBJ_OFS_DELTA, OBJ_REF_DELTA, OBJ_TREE,
                                     entry_header, object_id)

from fuzz.gitbytes import ofs_encode as ofs_distance, varint  # noqa: E402 (see gitbytes)

TYPES = {"commit": OBJ_COMMIT, "tree": OBJ_TREE, "blob": OBJ_BLOB}


def copy_op(off: int, size: int) -> bytes:
    """A delta's copy instruction as git writes it (zero bytes left out)."""
    code, args = 0x80, bytearray()
    for i in range(4):
        if (off >> 8 * i) & 255:
            code |= 1 << i
            args.append((off >> 8 * i) & 255)
    for i in range(3):
        if (size >> 8 * i) & 255:
            code |= 0x10 << i
            args.append((size >> 8 * i) & 255)
    return bytes([code]) + args


def make_delta(base: bytes, target: bytes) -> bytes:
    """Copy the whole base if it is a prefix of target, then insert the rest."""
    out = bytearray(varint(len(base)) + varint(len(target)))
    rest = target
    if base and target.startswith(base) and len(base) < 0x10000:
        out += bytes([0x80 | 0x10 | 0x20, len(base) & 255, len(base) >> 8])
        rest = target[len(base):]
    for i in range(0, len(rest), 127):
        out.append(len(rest[i:i + 127]))
        out += rest[i:i + 127]
    return bytes(out)


def pack_entry(kind: int, payload: bytes, size: int | None = None, extra: bytes = b"") -> bytes:
    """One entry: header (declaring `size`, the payload's by default), `extra`
    (an OFS distance or a REF base id), then the payload deflated."""
    return (entry_header(kind, len(payload) if size is None else size) + extra
            + zlib.compress(payload))


def pack_file(entries: list[bytes], count: int | None = None) -> bytes:
    """A whole pack: header announcing `count` (default: the entries), entries, trailer."""
    body = b"PACK" + struct.pack(">II", 2, len(entries) if count is None else count)
    body += b"".join(entries)
    return body + hashlib.sha1(body).digest()


def wrap_image(pack_bytes: bytes, idx_bytes: bytes, commit_id: bytes, block_size: int = 512,
               idx_offset: int | None = None) -> bytearray:
    """The docteur layout around a pack and its IDX; `idx_offset` overrides the header's."""
    at, size = layout.image_layout(len(pack_bytes), len(idx_bytes), block_size)
    image = bytearray(size)
    image[:layout.HEADER_SIZE] = layout.encode_header(
        commit_id, at if idx_offset is None else idx_offset)
    image[layout.PACK_OFFSET:layout.PACK_OFFSET + len(pack_bytes)] = pack_bytes
    image[at:at + len(idx_bytes)] = idx_bytes
    return image


def edit_fanout(idx_bytes: bytes, edit) -> bytes:
    """The IDX with `edit(fanout)` applied to its fanout list, its own SHA-1 redone."""
    fanout = list(struct.unpack_from(">256I", idx_bytes, layout.IDX_HEADER_SIZE))
    edit(fanout)
    body = (idx_bytes[:layout.IDX_HEADER_SIZE] + struct.pack(">256I", *fanout)
            + idx_bytes[layout.IDX_HEADER_SIZE + 1024:-20])
    return body + hashlib.sha1(body).digest()


def with_large_offsets(image: bytes | bytearray, values: dict[int, int]) -> bytearray:
    """`image` (as `build` writes it: no 64-bit table, no path index) with
    each IDX row of `values` moved to the 64-bit offset table, holding the
    value given (any 64-bit number, a lie if you like), the IDX's SHA-1
    redone and the image laid out again. git writes that table only past
    2 GiB: this is the small way to get one."""
    at = struct.unpack_from("<Q", image, layout.COMMIT_ID_SIZE)[0]
    count = struct.unpack_from(">I", image, at + layout.IDX_HEADER_SIZE + 4 * 255)[0]
    main = layout.IDX_HEADER_SIZE + 1024 + 28 * count
    pack_checksum = bytes(image[at + main:at + main + 20])
    body = bytearray(image[at:at + main])
    for k, row in enumerate(sorted(values)):
        struct.pack_into(">I", body, main - 4 * count + 4 * row, 0x80000000 | k)
    body += b"".join(struct.pack(">Q", values[row]) for row in sorted(values))
    body += pack_checksum
    body += hashlib.sha1(body).digest()
    pack_end = bytes(image).rfind(pack_checksum, 0, at) + 20
    return wrap_image(bytes(image[layout.PACK_OFFSET:pack_end]), bytes(body),
                      bytes(image[:layout.COMMIT_ID_SIZE]))


class Obj:
    """One pack entry. `oid` is what the IDX lists (a lie if you like)."""

    def __init__(self, typ: str, data: bytes, *, oid: bytes | None = None,
                 ofs_base: "Obj | None" = None, ref_base: bytes | None = None,
                 delta: bytes | None = None, size: int | None = None,
                 raw_header: bytes | None = None, distance: int | None = None) -> None:
        self.typ, self.data = typ, data
        self.oid = oid or object_id(typ, data)
        self.ofs_base, self.ref_base, self.delta = ofs_base, ref_base, delta
        self.size, self.raw_header, self.distance = size, raw_header, distance
        self.offset = 0  # relative to the PACK, set by build()

    def entry(self) -> bytes:
        if self.ofs_base is not None or self.ref_base is not None:
            payload = self.delta
            typ = OBJ_OFS_DELTA if self.ofs_base is not None else OBJ_REF_DELTA
        else:
            payload = self.data
            typ = TYPES[self.typ]
        head = self.raw_header or entry_header(typ, len(payload) if self.size is None
                                               else self.size)
        if self.ofs_base is not None:
            head += ofs_distance(self.distance or self.offset - self.ofs_base.offset)
        elif self.ref_base is not None:
            head += self.ref_base
        return head + zlib.compress(payload)


def tree(*entries: tuple[str, str, bytes]) -> bytes:
    """entries: (mode, name, raw id)."""
    return b"".join(m.encode() + b" " + n.encode() + b"\0" + i for m, n, i in entries)


def commit(tree_id: bytes, message: str = "hostile\n") -> bytes:
    return (f"tree {tree_id.hex()}\nauthor A <a@example.com> 1600000000 +0000\n"
            f"committer C <c@example.com> 1600000000 +0000\n\n{message}").encode()


def build(objs: list[Obj], commit_id: bytes, block_size: int = 512,
          fanout_edit=None, idx_offset: int | None = None) -> bytearray:
    """A whole image; entries in the order given, IDX sorted by the oids given."""
    body = bytearray(b"PACK" + struct.pack(">II", 2, len(objs)))
    index = []
    for o in objs:
        o.offset = len(body)
        e = o.entry()
        index.append((o.oid, o.offset, zlib.crc32(e)))
        body += e
    body += hashlib.sha1(body).digest()
    idx = encode_idx_v2(index, bytes(body[-20:]))
    if fanout_edit:
        idx = edit_fanout(idx, fanout_edit)
    return wrap_image(bytes(body), idx, commit_id, block_size, idx_offset)


def hostile_image(path, entries) -> None:
    """Write an image whose root tree names `entries`, (mode, name, Obj)
    each, as given: names and modes a builder would refuse included."""
    objs, rows = [], []
    for mode, name, value in entries:
        objs.append(value)
        rows.append((mode, name, value.oid))
    t = Obj("tree", tree(*rows))
    c = Obj("commit", commit(t.oid))
    path.write_bytes(bytes(build([c, t, *objs], c.oid)))


def simple(files: dict[str, Obj], extra: list[Obj] = ()) -> tuple[list[Obj], bytes]:
    """A root tree naming `files` (blobs), its commit, plus the blob entries."""
    t = Obj("tree", tree(*[("100644", n, o.oid) for n, o in sorted(files.items())]))
    c = Obj("commit", commit(t.oid))
    return [c, t, *files.values(), *extra], c.oid


# --- forgeries of a real image: other bytes where an id says what they are ---------

def _idx_table(image: bytes) -> tuple[int, int, int]:
    """(IDX offset, object count, offset of its id table) of an image."""
    idx_at = layout.parse_header(image, len(image)).idx_offset
    count = struct.unpack_from(">I", image, idx_at + layout.IDX_HEADER_SIZE + 1020)[0]
    return idx_at, count, idx_at + layout.IDX_HEADER_SIZE + layout.FANOUT_SIZE


def _find_entry(image: bytes, oid: bytes) -> tuple[int, int]:
    """(row of `oid` in the IDX, image offset of its pack entry)."""
    _, count, ids = _idx_table(image)
    for row in range(count):
        if image[ids + 20 * row:ids + 20 * row + 20] == oid:
            (off,) = struct.unpack_from(">I", image, ids + 24 * count + 4 * row)
            assert not off & 0x80000000, "a 64-bit IDX offset: not handled here"
            return row, layout.PACK_OFFSET + off
    raise KeyError(f"{oid.hex()} is not in the image's IDX")


def whole_object(image: bytes, oid: bytes) -> tuple[str, bytes]:
    """(type name, content) of the object `oid`, stored whole (not a delta)."""
    from docteur_core.format.pack import MAX_ENTRY_HEADER, TYPE_NAMES, inflate_from, \
        parse_entry_header

    idx_at = _idx_table(image)[0]
    _, at = _find_entry(image, oid)
    head = parse_entry_header(image[at:at + MAX_ENTRY_HEADER], f"at {at}")
    assert head.type in TYPE_NAMES, f"{oid.hex()} is stored as a delta"
    data, _ = inflate_from(lambda off, n: image[off:off + n], at + head.header_len,
                           head.size, idx_at, f"at {at}")
    return TYPE_NAMES[head.type], data


def root_tree_id(image: bytes) -> bytes:
    """The id on the `tree` line of the image's commit."""
    _, text = whole_object(image, bytes(image[:20]))
    assert text.startswith(b"tree ")
    return bytes.fromhex(text[5:45].decode())


def deflate_exactly(content: bytes, length: int) -> bytes:
    """A valid zlib stream of `content` exactly `length` bytes long: some
    level and strategy, then empty blocks (partial and sync flushes, 10
    bits and about 5 bytes each) to make up the difference."""
    for level in range(10):
        for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY,
                         zlib.Z_RLE, zlib.Z_FIXED):
            for partial in range(8):
                for sync in range(length):
                    c = zlib.compressobj(level, zlib.DEFLATED, 15, 8, strategy)
                    out = c.compress(content)
                    out += b"".join(c.flush(zlib.Z_PARTIAL_FLUSH) for _ in range(partial))
                    out += b"".join(c.flush(zlib.Z_SYNC_FLUSH) for _ in range(sync))
                    out += c.flush()
                    if len(out) == length:
                        assert zlib.decompress(out) == content
                        return out
                    if len(out) > length:
                        break
    raise ValueError(f"no zlib stream of {len(content)} bytes is {length} bytes long here")


def rewrite_object(image: bytes, oid: bytes, content: bytes) -> bytearray:
    """The image with the entry of `oid` (stored whole) holding `content`,
    of the same size: deflated again into a stream of the old one's length
    (deflate_exactly) and its CRC-32 in the IDX fixed. The header, the IDX's ids and
    offsets, every other entry, the pack's trailer (to which a path index
    is bound) stay as they were: the pack's checksum (`docteur verify`)
    and the object's SHA-1 against the id that names it can tell."""
    from docteur_core.format.pack import MAX_ENTRY_HEADER, inflate_from, parse_entry_header

    out = bytearray(image)
    idx_at, count, ids = _idx_table(image)
    row, at = _find_entry(image, oid)
    head = parse_entry_header(image[at:at + MAX_ENTRY_HEADER], f"at {at}")
    assert head.type in TYPES.values(), f"{oid.hex()} is stored as a delta"
    assert len(content) == head.size, "the content must keep the object's size"
    _, used = inflate_from(lambda off, n: image[off:off + n], at + head.header_len,
                           head.size, idx_at, f"at {at}")
    stream = deflate_exactly(content, used)
    start = at + head.header_len
    out[start:start + used] = stream
    crc = zlib.crc32(bytes(out[at:start + used]))
    struct.pack_into(">I", out, ids + 20 * count + 4 * row, crc)
    return out


def repointed_tree_image(path, name: str = "README.txt") -> tuple[bytes, dict[str, bytes]]:
    """Write a hand-made image whose root tree, listed in the IDX under its
    honest id (CRC-32 right), names another blob for `name` than the one
    the honest tree does: (the commit id, {file: honest content})."""
    files = {name: b"the file the commit names\n", "other.txt": b"another file\n"}
    blobs = {n: Obj("blob", data) for n, data in files.items()}
    honest = Obj("tree", tree(*[("100644", n, b.oid) for n, b in sorted(blobs.items())]))
    forged = Obj("tree", tree(*[("100644", n, blobs["other.txt"].oid)
                                for n in sorted(blobs)]), oid=honest.oid)
    c = Obj("commit", commit(honest.oid, "honest tree, forged entry\n"))
    path.write_bytes(bytes(build([c, forged, *blobs.values()], c.oid)))
    return c.oid, files


def rebuilt_path_index(image: bytes, offsets: dict[bytes, int] | None = None,
                       positions: dict[bytes, int] | None = None) -> bytes:
    """`image` with its path index region encoded again from its own trees
    and IDX (`format.pathindex.encode`), every check of the region sealed
    (page streams, SHA-256, CRC-32), except that an object id in `offsets`
    or `positions` is given that pack offset or IDX position instead: an
    index that lies with good checksums. The IDX and pack are untouched."""
    from docteur_core.blockdev.block import MemoryDevice
    from docteur_core.format import pathindex as pix
    from docteur_core.format.objects import parse_tree_raw
    from docteur_core.reader import Image

    offsets, positions = offsets or {}, positions or {}
    sup = pix.parse_super(image[-pix.SUPER_SIZE:], len(image))
    with Image.open(MemoryDevice(image), "light", verify=False, path_index=False) as img:
        store = img.store
        idx = store.idx
        names = [store.pread(idx.name_at(i), 20) for i in range(idx.count)]
        where = {oid: store.locate(oid)[0] for oid in names}

        def entries_of(tid: bytes):
            raw = store.read_object(tid, "tree", where[tid])[1]
            return [(mode, name, oid) for mode, oid, name in parse_tree_raw(raw, "tree")]

        pos = {oid: i for i, oid in enumerate(names)}
        region = pix.encode(
            sup.tree, entries_of, lambda oid: positions.get(oid, pos[oid]),
            lambda oid: offsets.get(oid, where[oid]), commit=sup.commit,
            pack_checksum=sup.pack_checksum, commit_offset=sup.commit_offset,
            tree_offset=sup.tree_offset, pack_end=sup.pack_end,
            region_start=sup.region_start,
            block_size=len(image) - sup.region_start)
    # The region's old length as the block size: the same length when the
    # pages fit in it (the image keeps its size), a multiple otherwise.
    return image[:sup.region_start] + region
