"""The path index: format round trips, images with and without it, hostile
indexes, and the OCaml docteur reading images that carry one."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.errors import DamagedImage, DocteurError, NotADirectory, NotFound
from docteur_core.format import pathindex as pix
from docteur_core.format.objects import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_LINK
from docteur_core.reader import Image
from docteur_core.reader.pathindex import PathIndex

COMMIT = b"\x11" * 20
PACK_SUM = b"\x22" * 20
PACK_END = 5000
REGION_START = 8192


def _region_image(entries, block_size=512, root_count=0):
    """A byte string holding a pack trailer and a path index region (no real pack)."""
    region = pix.encode(entries, commit=COMMIT, pack_checksum=PACK_SUM, tree=b"\x33" * 20,
                        commit_offset=100, tree_offset=200, pack_end=PACK_END,
                        region_start=REGION_START, root_count=root_count,
                        block_size=block_size)
    assert len(region) % block_size == 0
    data = bytearray(REGION_START) + region
    data[PACK_END:PACK_END + 20] = PACK_SUM
    return bytes(data)


def _open(data):
    pread = lambda off, n: data[off:off + n]  # noqa: E731
    return PathIndex.open(pread, len(data), COMMIT, pack_start=40, idx_offset=6144)


names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=30).filter(lambda s: s not in (".", ".."))


@st.composite
def path_sets(draw):
    """Distinct paths with their directories, as a tree would list them."""
    files = draw(st.lists(st.lists(names, min_size=1, max_size=4), min_size=0, max_size=300))
    kinds: dict[bytes, int] = {}
    for parts in files:
        enc = [p.encode() for p in parts]
        ok = True
        for i in range(1, len(enc)):
            d = b"/".join(enc[:i])
            if kinds.get(d, MODE_DIR) != MODE_DIR:
                ok = False
                break
        path = b"/".join(enc)
        if not ok or path in kinds:
            continue
        for i in range(1, len(enc)):
            kinds[b"/".join(enc[:i])] = MODE_DIR
        kinds[path] = draw(st.sampled_from([MODE_FILE, MODE_EXEC, MODE_LINK]))
    return kinds


def _entries(kinds):
    out = []
    for i, (path, mode) in enumerate(sorted(kinds.items())):
        oid = hashlib.sha1(path).digest()
        out.append(pix.Entry(pix.key_of(path), mode, oid, 40 + i % 4000, len(path)))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path_sets(), st.sampled_from([512, 4096, 65536]))
def test_round_trip_lookups_and_listings(kinds, block_size):
    entries = _entries(kinds)
    index = _open(_region_image(entries, block_size))
    assert index.sup.paths == len(entries)
    for e in entries:
        assert index.find(e.key) == e
        assert index.find(e.key + b"x") in (None, index.find(e.key + b"x"))
    dirs = {b""} | {p for p, m in kinds.items() if m == MODE_DIR}
    for d in dirs:
        want = sorted(e for e in entries if e.key.partition(b"\0")[0] == d)
        assert index.listing(d) == want
    assert list(index.scan(b"")) == sorted(entries)


def _many(n, depth=3):
    kinds = {}
    for i in range(n):
        parts = [f"d{(i >> (4 * k)) % 16:x}" for k in range(depth)]
        for j in range(1, depth + 1):
            kinds["/".join(parts[:j]).encode()] = MODE_DIR
        kinds[("/".join(parts) + f"/file-{i:07d}.txt").encode()] = MODE_FILE
    return kinds


def test_a_large_index_has_levels_and_cold_lookups_cost_one_read_per_level():
    kinds = _many(60_000)
    entries = _entries(kinds)
    data = _region_image(entries, 4096)
    index = _open(data)
    assert index.sup.height >= 2
    for e in entries[::997]:
        fresh = _open(data)
        assert fresh.find(e.key) == e
        assert fresh.nodes_read == fresh.sup.height
    assert len(index.listing(b"d0/d0/d0")) == len(
        [e for e in entries if e.key.startswith(b"d0/d0/d0\0")])


def test_deterministic_encoding():
    entries = _entries(_many(3000))
    assert _region_image(entries) == _region_image(list(reversed(entries)))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_flipped_bytes_are_errors_never_other_entries(data):
    """Any change to the region: a lookup gives the right entry, None only
    where the truth is None, or DamagedImage."""
    entries = _entries(_many(4000))
    good = _region_image(entries, 4096)
    start = REGION_START
    bad = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(start, len(good) - 1))
        bad[at] ^= data.draw(st.integers(1, 255))
    keys = data.draw(st.lists(st.sampled_from(entries), min_size=1, max_size=5))
    try:
        index = _open(bytes(bad))
        for e in keys:
            assert index.find(e.key) == e
        assert index.listing(b"d1/d2/d3") == sorted(
            e for e in entries if e.key.startswith(b"d1/d2/d3\0"))
    except DamagedImage as exc:
        assert "path index" in str(exc)


def _resealed(data: bytes, number: int, edit) -> bytes:
    """Apply `edit` to node `number` (or the super block, number -1) and fix its CRC."""
    data = bytearray(data)
    sup = pix.parse_super(bytes(data[-pix.SUPER_SIZE:]), len(data))
    at = len(data) - pix.SUPER_SIZE if number < 0 else sup.nodes_start + number * pix.NODE_SIZE
    node = bytearray(data[at:at + pix.NODE_SIZE])
    edit(node)
    struct.pack_into("<I", node, pix.CRC_AT, zlib.crc32(bytes(node[:pix.CRC_AT])))
    data[at:at + pix.NODE_SIZE] = node
    return bytes(data)


def test_hostile_indexes_with_good_checksums_are_refused():
    entries = _entries(_many(20000))
    good = _region_image(entries, 4096)
    index = _open(good)
    assert index.sup.height >= 2
    leaf0 = pix.NODE_HEAD.size

    def swap_first_two_keys(node):  # keys out of order: first entry's rest made larger
        node[leaf0 + 4] = 0x7F

    def offset_outside(node):
        n = struct.unpack_from("<HH", node, leaf0)
        struct.pack_into("<Q", node, leaf0 + 4 + n[1] + 24, 10 ** 9)

    cases = [(0, swap_first_two_keys, "out of order"), (0, offset_outside, "outside the pack")]
    for number, edit, message in cases:
        bad = _open(_resealed(good, number, edit))
        with pytest.raises(DamagedImage, match=message):
            for e in entries:
                bad.find(e.key)
    # Children must be one level down (no loop can form): a level-1 node
    # pointing at an internal node, itself included, is refused.
    last_internal = index.sup.node_count - 1

    def child_is_not_a_leaf(node):
        n = struct.unpack_from("<H", node, pix.NODE_HEAD.size)[0]
        struct.pack_into("<I", node, pix.NODE_HEAD.size + 2 + n, last_internal)

    bad = _open(_resealed(good, index.sup.leaf_count, child_is_not_a_leaf))
    with pytest.raises(DamagedImage):
        for e in entries:
            bad.find(e.key)

    def other_commit(node):
        node[16] ^= 1

    with pytest.raises(DamagedImage, match="bound to commit"):
        _open(_resealed(good, -1, other_commit))

    def other_pack(node):
        node[36] ^= 1

    with pytest.raises(DamagedImage, match="bound to pack"):
        _open(_resealed(good, -1, other_pack))
