"""The path index region: every path of the image, sorted, in 4 KiB nodes.

Fast mode used to pay at every boot what the builder already knew: read the
whole IDX and walk every tree. The path index is that walk, done once by
`docteur make` and stored after the IDX region, so that opening an image
costs one read (the super block) and a cold lookup a few more.

Placement (the OCaml docteur's layout is kept byte for byte before it):

    ... IDX, zero padding (1..block_size bytes)  <- the image as it was
    region start    zero padding (0..block_size - 1 bytes)
    nodes start     node 0, node 1, ... node N-1 (4096 bytes each)
    end - 4096      the super block (4096 bytes), ending at the image's end

The super block is the image's last 4096 bytes, so a reader finds it
without knowing the block size or the IDX's size: one read. The leading
padding makes the region a multiple of the block size, as the OCaml
readers need (they read everything from the IDX offset to the end of the
device, in blocks, and ignore what follows the IDX's own bytes).

Keys: a path `a/b/c` is stored under the key `a/b` NUL `c` (its parent,
a zero byte, its name), so that sorting keys as bytes puts every
directory's entries next to each other: a listing is one range.

Super block (little-endian):

     0  8  magic "DOCTPIDX"      8  2  version (1)       10  1  log2 node size (12)
    11  1  height (levels of nodes under the super's root; 0: the root is a leaf)
    12  4  flags (0)
    16 20  commit id            36 20  pack checksum    56 20  root tree id
    76  8  commit's offset      84  8  root tree's offset
    92  8  pack end (offset of the PACK's 20-byte trailer)
   100  8  region start        108  8  nodes start
   116  4  node count          120  4  leaf count (leaves are nodes 0..leaf count - 1)
   124  8  paths (the root excluded)   132  4  root's entries
   136 32  SHA-256 of the nodes (node 0 .. N-1, as stored)
   168     the root node's body (as a node's, from its count on)
  4092  4  CRC-32 of bytes 0..4092

Node: level (1 byte, 0 for a leaf), 0, count (2), its own number (4), the
entries, zeros, CRC-32 of bytes 0..4092 (4). A leaf entry: bytes shared
with the previous key (2), length of the rest (2), the rest, mode (4), object
id (20), pack offset (8, 0 for a submodule), size (8: a file's content
bytes, a directory's entry count, 0 for a submodule). An internal entry:
key length (2), key, child node number (4); child i holds the keys from
key i (included) to key i + 1 (excluded), and key 0 is the node's own
lower bound. Children are one level lower, so no chain of nodes loops.

Everything here is pure: bytes in, values out (the reader's side is
`reader/pathindex.py`; the builder's is `make/pathindex.py`).
"""

from __future__ import annotations

import struct
import zlib
from collections import namedtuple
from collections.abc import Iterable, Iterator

from ..errors import DamagedImage
from .objects import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_GITLINK, MODE_LINK

MAGIC = b"DOCTPIDX"
VERSION = 1
NODE_SHIFT = 12
NODE_SIZE = 1 << NODE_SHIFT
SUPER_SIZE = NODE_SIZE
CRC_AT = NODE_SIZE - 4
NODE_HEAD = struct.Struct("<BBHI")  # level, 0, count, number
SUPER_HEAD = struct.Struct("<8sHBBI20s20s20sQQQQQIIQI32s")
ROOT_AT = SUPER_HEAD.size  # 168
LEAF_FIXED = struct.Struct("<I20sQQ")  # mode, id, offset, size
PREFIX = struct.Struct("<HH")
CHILD = struct.Struct("<I")
KEY_LEN = struct.Struct("<H")
U16 = struct.Struct("<H")
MODES = frozenset((MODE_FILE, MODE_EXEC, MODE_LINK, MODE_DIR, MODE_GITLINK))
MAX_HEIGHT = 8
REGION = "path index"

assert ROOT_AT == 168


class Super(namedtuple("Super", "version height commit pack_checksum tree commit_offset "
                               "tree_offset pack_end region_start nodes_start node_count "
                               "leaf_count paths root_count digest root")):
    """The decoded super block; `root` is the root node's body (bytes)."""

    __slots__ = ()


class Entry(namedtuple("Entry", "key mode id offset size")):
    """One path: `key` is parent NUL name (bytes)."""

    __slots__ = ()

    @property
    def path(self) -> bytes:
        parent, _, name = self.key.partition(b"\0")
        return parent + b"/" + name if parent else name


def key_of(path: bytes) -> bytes:
    """The key of a `/`-separated path without leading or trailing slashes."""
    parent, _, name = path.rpartition(b"/")
    return parent + b"\0" + name


def dir_prefix(path: bytes) -> bytes:
    """Every key of a directory's entries starts with this."""
    return path + b"\0"


# -- encoding ---------------------------------------------------------------


def _seal(node: bytearray) -> bytes:
    struct.pack_into("<I", node, CRC_AT, zlib.crc32(memoryview(node)[:CRC_AT]))
    return bytes(node)


def _separator(last: bytes, first: bytes) -> bytes:
    """The shortest prefix of `first` that sorts after `last`."""
    n = 0
    while n < len(last) and n < len(first) and last[n] == first[n]:
        n += 1
    return first[:n + 1]


def _pack_leaves(entries: Iterable[tuple], room: int
                 ) -> Iterator[tuple[bytes, bytes, int, bytes]]:
    """Greedy: (lower bound, first key, count, body) per leaf, as each fills.

    `entries` are `Entry`s or plain tuples in its field order, sorted by
    key (verify builds tuples: one less object per path). One loop, no call
    per entry: this runs once per path, in `docteur make` and in every
    verify. A key not above the previous one is a ValueError.
    """
    body = bytearray()
    count = 0
    prev = b""
    first = b""
    prev_last: bytes | None = None
    half = room // 2
    pack_prefix = PREFIX.pack
    pack_fixed = LEAF_FIXED.pack
    from_bytes = int.from_bytes
    for key, mode, oid, offset, size in entries:
        klen = len(key)
        if klen > half:
            raise ValueError(f"path of {klen} bytes is too long for the path index")
        fixed = pack_fixed(mode, oid, offset, size)
        shared = 0
        if count:
            if key <= prev:
                raise ValueError(f"duplicate path {Entry(key, 0, b'', 0, 0).path!r}"
                                 if key == prev else "paths are not sorted")
            # The shared prefix from the first differing bit of the two keys
            # as numbers: a few C calls instead of a loop over shared bytes.
            limit = len(prev) if len(prev) < klen else klen
            x = from_bytes(prev[:limit], "big") ^ from_bytes(key[:limit], "big")
            shared = limit - 1 - (x.bit_length() - 1) // 8 if x else limit
            if len(body) + klen - shared + 44 > room or count == 0xFFFF:
                yield (b"" if prev_last is None else _separator(prev_last, first),
                       first, count, bytes(body))
                prev_last = prev
                body = bytearray()
                count = 0
                shared = 0
        if not count:
            first = key
        body += pack_prefix(shared, klen - shared)
        body += key[shared:]
        body += fixed
        count += 1
        prev = key
    if count or prev_last is None:
        yield (b"" if prev_last is None else _separator(prev_last, first),
               first, count, bytes(body))


def _pack_internal(children: list[tuple[bytes, int]], room: int) -> list[list[tuple[bytes, int]]]:
    groups: list[list[tuple[bytes, int]]] = []
    cur: list[tuple[bytes, int]] = []
    used = 0
    for key, num in children:
        size = KEY_LEN.size + len(key) + CHILD.size
        if cur and (used + size > room or len(cur) == 0xFFFF):
            groups.append(cur)
            cur, used = [], 0
        cur.append((key, num))
        used += size
    groups.append(cur)
    return groups


def _internal_body(group: list[tuple[bytes, int]]) -> bytes:
    return b"".join(KEY_LEN.pack(len(k)) + k + CHILD.pack(n) for k, n in group)


def _node(level: int, count: int, number: int, body: bytes) -> bytes:
    node = bytearray(NODE_SIZE)
    NODE_HEAD.pack_into(node, 0, level, 0, count, number)
    node[NODE_HEAD.size:NODE_HEAD.size + len(body)] = body
    return _seal(node)


class RegionEncoder:
    """The region a node at a time, for entries sorted by key.

    `nodes()` yields node 0, 1, ... as each is complete (the leaves, then
    each level above), holding only the lower bound of each child rather
    than every path: verify compares them with the stored nodes as they
    come. Once it is exhausted, `lead` (the zero bytes before the nodes),
    `super_block` and `paths` are set. `encode` is this, joined.
    """

    def __init__(self, entries: Iterable[tuple], *, commit: bytes, pack_checksum: bytes,
                 tree: bytes, commit_offset: int, tree_offset: int, pack_end: int,
                 region_start: int, root_count: int, block_size: int) -> None:
        self.entries = entries
        self.binding = (commit, pack_checksum, tree, commit_offset, tree_offset, pack_end)
        self.region_start = region_start
        self.root_count = root_count
        self.block_size = block_size
        self.lead = 0
        self.super_block = b""
        self.paths = 0

    def nodes(self) -> Iterator[bytes]:
        import hashlib  # here: the reader (a guest) never encodes, and hashlib is heavy

        node_room = CRC_AT - NODE_HEAD.size
        root_room = CRC_AT - ROOT_AT - U16.size
        digest = hashlib.sha256()
        paths = 0
        made = 0
        level: list[tuple[bytes, int]] = []
        held = None  # the first leaf, until it is known not to be the root
        for leaf in _pack_leaves(self.entries, node_room):
            paths += leaf[2]
            if not made and held is None:
                held = leaf
                continue
            for lo, _, count, body in ((held, leaf) if held is not None else (leaf,)):
                node = _node(0, count, made, body)
                level.append((lo, made))
                made += 1
                digest.update(node)
                yield node
            held = None
        height = 0
        if held is not None and len(held[3]) <= root_room:
            root = U16.pack(held[2]) + held[3]
        else:
            if held is not None:
                node = _node(0, held[2], made, held[3])
                level.append((held[0], made))
                made += 1
                digest.update(node)
                yield node
            leaf_count = made
            height = 1
            while True:
                if sum(KEY_LEN.size + len(k) + CHILD.size for k, _ in level) <= root_room \
                        and len(level) <= 0xFFFF:
                    root = U16.pack(len(level)) + _internal_body(level)
                    break
                upper = []
                for group in _pack_internal(level, node_room):
                    node = _node(height, len(group), made, _internal_body(group))
                    upper.append((group[0][0], made))
                    made += 1
                    digest.update(node)
                    yield node
                level = upper
                height += 1
                if height > MAX_HEIGHT:  # pragma: no cover - 4 KiB nodes hold far more
                    raise ValueError("path index too deep")
        self.lead = -((made + 1) * NODE_SIZE) % self.block_size
        self.paths = paths
        sup = bytearray(SUPER_SIZE)
        commit, pack_checksum, tree, commit_offset, tree_offset, pack_end = self.binding
        SUPER_HEAD.pack_into(
            sup, 0, MAGIC, VERSION, NODE_SHIFT, height, 0, commit, pack_checksum, tree,
            commit_offset, tree_offset, pack_end, self.region_start,
            self.region_start + self.lead, made, leaf_count if height else 0, paths,
            self.root_count, digest.digest())
        sup[ROOT_AT:ROOT_AT + len(root)] = root
        self.super_block = _seal(sup)


def encode(entries: list, *, commit: bytes, pack_checksum: bytes, tree: bytes,
           commit_offset: int, tree_offset: int, pack_end: int, region_start: int,
           root_count: int, block_size: int) -> bytes:
    """The whole region (leading padding, nodes, super block) for `entries`.

    `entries` (`Entry`s or tuples in its field order) in any order (they
    are sorted by key here); `region_start` is where the region begins in
    the image (the end of the IDX padding), and its length is a multiple
    of `block_size`.
    """
    enc = RegionEncoder(sorted(entries), commit=commit, pack_checksum=pack_checksum, tree=tree,
                        commit_offset=commit_offset, tree_offset=tree_offset, pack_end=pack_end,
                        region_start=region_start, root_count=root_count,
                        block_size=block_size)
    nodes = list(enc.nodes())
    return bytes(enc.lead) + b"".join(nodes) + enc.super_block


# -- decoding ---------------------------------------------------------------


def valid_name(name: bytes) -> bool:
    return bool(name) and b"/" not in name and b"\0" not in name and name not in (b".", b"..")


def valid_parent(parent: bytes) -> bool:
    """A normalised path: no empty, `.` or `..` component (b"" is the root)."""
    return not parent or all(valid_name(p) for p in parent.split(b"/"))


def has_magic(last: bytes) -> bool:
    """Whether the image's last 4096 bytes start with a super block's magic."""
    return len(last) >= SUPER_SIZE and last[-SUPER_SIZE:-SUPER_SIZE + 8] == MAGIC


def parse_super(data: bytes, capacity: int) -> Super:
    """Decode and check the super block (the image's last 4096 bytes)."""
    at = capacity - SUPER_SIZE
    where = f"{REGION} super block at offset {at}"
    if len(data) != SUPER_SIZE or data[:8] != MAGIC:
        raise DamagedImage("no path index super block", where)
    crc = struct.unpack_from("<I", data, CRC_AT)[0]
    if zlib.crc32(memoryview(data)[:CRC_AT]) != crc:
        raise DamagedImage("super block CRC-32 does not match", where)
    (_, version, shift, height, flags, commit, pack_sum, tree, c_off, t_off, pack_end,
     region_start, nodes_start, node_count, leaf_count, paths, root_count,
     digest) = SUPER_HEAD.unpack_from(data, 0)
    if version != VERSION:
        raise DamagedImage(f"path index version {version}, this reader knows {VERSION}", where)
    if shift != NODE_SHIFT or flags != 0:
        raise DamagedImage(f"node size 2^{shift} or flags {flags:#x} unknown", where)
    if height > MAX_HEIGHT:
        raise DamagedImage(f"height {height} is over {MAX_HEIGHT}", where)
    if not (0 < pack_end < region_start <= nodes_start <= at
            and nodes_start - region_start < max(NODE_SIZE, 1 << 30)
            and nodes_start + node_count * NODE_SIZE == at):
        raise DamagedImage(f"region bounds {region_start}..{nodes_start}..{at} with "
                           f"{node_count} nodes and the pack ending at {pack_end} "
                           "do not fit the image", where)
    if (height == 0) != (node_count == 0) or leaf_count > node_count \
            or (height and not leaf_count):
        raise DamagedImage(f"{node_count} nodes, {leaf_count} leaves at height {height}", where)
    for name, off in (("commit", c_off), ("root tree", t_off)):
        if not 28 + 12 <= off < pack_end:
            raise DamagedImage(f"the {name}'s offset {off} is outside the pack", where)
    return Super(version, height, commit, pack_sum, tree, c_off, t_off, pack_end,
                 region_start, nodes_start, node_count, leaf_count, paths, root_count,
                 digest, bytes(data[ROOT_AT:CRC_AT]))


def node_where(sup: Super, number: int) -> str:
    return f"{REGION} node {number} at offset {sup.nodes_start + number * NODE_SIZE}"


def check_node(data: bytes, sup: Super, number: int, level: int) -> tuple[int, memoryview]:
    """Check a node's CRC, number and level; return its count and entries' bytes."""
    where = node_where(sup, number)
    if len(data) != NODE_SIZE:
        raise DamagedImage("node runs past the end of the device", where)
    crc = struct.unpack_from("<I", data, CRC_AT)[0]
    if zlib.crc32(memoryview(data)[:CRC_AT]) != crc:
        raise DamagedImage("node CRC-32 does not match", where)
    lvl, zero, count, num = NODE_HEAD.unpack_from(data, 0)
    if lvl != level or zero or num != number:
        raise DamagedImage(f"node says level {lvl}, number {num}; expected level {level}, "
                           f"number {number}", where)
    return count, memoryview(data)[NODE_HEAD.size:CRC_AT]


def root_body(sup: Super) -> tuple[int, memoryview]:
    """The super block's root node: its count and entries' bytes."""
    return U16.unpack_from(sup.root, 0)[0], memoryview(sup.root)[2:]


def decode_leaf(count: int, body: memoryview | bytes, lo: bytes, hi: bytes | None, pack_start: int,
                pack_end: int, where: str) -> list[Entry]:
    """A leaf's entries, checked: keys ascending within [lo, hi), known
    modes, offsets inside the pack."""
    pos = 0
    end = len(body)
    out = []
    prev = b""
    unpack_prefix = PREFIX.unpack_from
    unpack_fixed = LEAF_FIXED.unpack_from
    fixed = LEAF_FIXED.size
    last_parent = None
    for i in range(count):
        if pos + 4 > end:
            raise DamagedImage(f"entry {i} runs past the end of the node", where)
        shared, rest = unpack_prefix(body, pos)
        pos += 4
        if shared > len(prev) or pos + rest + fixed > end:
            raise DamagedImage(f"entry {i} has a bad key length", where)
        key = prev[:shared] + bytes(body[pos:pos + rest])
        pos += rest
        mode, oid, off, size = unpack_fixed(body, pos)
        pos += fixed
        if key <= prev and i or key < lo or (hi is not None and key >= hi):
            raise DamagedImage(f"entry {i} ({key!r}) is out of order", where)
        parent, nul, name = key.partition(b"\0")
        if not (nul and valid_name(name)
                and (parent == last_parent or valid_parent(parent))):
            raise DamagedImage(f"entry {i} has a malformed key {key!r}", where)
        last_parent = parent
        if mode not in MODES:
            raise DamagedImage(f"entry {i} ({key!r}) has an unknown mode {mode:o}", where)
        if mode == MODE_GITLINK:
            if off or size:
                raise DamagedImage(f"submodule entry {i} ({key!r}) has an offset", where)
        elif not pack_start <= off < pack_end:
            raise DamagedImage(f"entry {i} ({key!r}): offset {off} is outside the pack "
                               f"({pack_start}..{pack_end})", where)
        out.append(Entry(key, mode, oid, off, size))
        prev = key
    if any(body[pos:]):
        raise DamagedImage("bytes after the last entry are not zeros", where)
    return out


def decode_internal(count: int, body: memoryview | bytes, lo: bytes, hi: bytes | None, first: int,
                    last: int, where: str) -> list[tuple[bytes, int]]:
    """An internal node's (lower bound, child number); checked: key 0 is
    `lo`, keys ascending below `hi`, children in [first, last)."""
    if not count:
        raise DamagedImage("internal node without children", where)
    pos = 0
    end = len(body)
    out: list[tuple[bytes, int]] = []
    for i in range(count):
        if pos + 2 > end:
            raise DamagedImage(f"child {i} runs past the end of the node", where)
        n = KEY_LEN.unpack_from(body, pos)[0]
        pos += 2
        if pos + n + 4 > end:
            raise DamagedImage(f"child {i} has a bad key length", where)
        key = bytes(body[pos:pos + n])
        pos += n
        child = CHILD.unpack_from(body, pos)[0]
        pos += 4
        if (i == 0 and key != lo) or (i and key <= out[-1][0]) \
                or (hi is not None and key >= hi):
            raise DamagedImage(f"child {i} ({key!r}) is out of order", where)
        if not first <= child < last:
            raise DamagedImage(f"child {i} is node {child}, not one of {first}..{last - 1}",
                               where)
        out.append((key, child))
    if any(body[pos:]):
        raise DamagedImage("bytes after the last child are not zeros", where)
    return out
