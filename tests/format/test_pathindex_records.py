"""The path index, version 2, as a format: random trees encoded against a
fake IDX and read back (every path found, absent paths absent, listings in
the tree's order), determinism, a shared subtree stored once, the reads of
a cold lookup, and damaged or hostile regions (errors, never other
entries)."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur_core.errors import DamagedImage
from docteur_core.format import idx as idxmod
from docteur_core.format import pathindex as pix
from docteur_core.format.objects import MODE_DIR, MODE_EXEC, MODE_FILE, MODE_GITLINK, MODE_LINK
from docteur_core.reader.pathindex import PathIndex

COMMIT = b"\x11" * 20
PACK_SUM = b"\x22" * 20
IDX_BASE = 4096


class Fake:
    """Trees as git would hash them, a fake IDX holding their ids (and
    the files'), pack offsets as git writes them, and the image bytes
    (an IDX, a pack trailer, the region)."""

    def __init__(self, spec: dict, block_size: int = 4096) -> None:
        self.rows: dict[bytes, list] = {}
        self.paths: dict[bytes, tuple[int, bytes]] = {}  # path -> (mode, id)
        order: list[bytes] = []
        self.root = self._tree(spec, b"", order)
        ids = sorted(set(order))
        self.position = {oid: i for i, oid in enumerate(ids)}
        self.offset = {}
        for oid in order:  # near each other, in the order they were made
            self.offset.setdefault(oid, 40 + 50 * len(self.offset))
        fan = [0] * 256
        for oid in ids:
            fan[oid[0]] += 1
        for i in range(1, 256):
            fan[i] += fan[i - 1]
        self.idx = idxmod.Idx(IDX_BASE, tuple(fan))
        self.pack_end = 40 + 50 * len(self.offset) + 10
        idx_end = IDX_BASE + idxmod.HEAD_SIZE + 20 * len(ids)
        self.idx_base = IDX_BASE if self.pack_end + 20 < IDX_BASE else None
        if self.idx_base is None:  # a big pack: the IDX after it
            self.idx = idxmod.Idx(self.pack_end + 64, tuple(fan))
            idx_end = self.pack_end + 64 + idxmod.HEAD_SIZE + 20 * len(ids)
        self.region_start = -(-(idx_end + 1) // 512) * 512
        self.block_size = block_size
        self.region = self.encode()
        data = bytearray(self.region_start) + self.region
        data[self.pack_end:self.pack_end + 20] = PACK_SUM
        at = self.idx.name_at(0)
        data[at:at + 20 * len(ids)] = b"".join(ids)
        self.data = bytes(data)

    def _tree(self, spec: dict, path: bytes, order: list) -> bytes:
        rows = []
        for name in sorted(spec, key=lambda n: n + b"/" if isinstance(spec[n], dict) else n):
            node = spec[name]
            full = path + b"/" + name if path else name
            if isinstance(node, dict):
                oid, mode = self._tree(node, full, order), MODE_DIR
            else:
                mode, content = node
                oid = hashlib.sha1(b"%d %s" % (mode, content)).digest()
                if mode == MODE_GITLINK:
                    self.paths[full] = (mode, oid)
                    rows.append((mode, name, oid))
                    continue
                order.append(oid)
            self.paths[full] = (mode, oid)
            rows.append((mode, name, oid))
        raw = b"".join(b"%o %s\0%s" % (m, n, o) for m, n, o in rows)
        tid = hashlib.sha1(b"tree %d\0" % len(raw) + raw).digest()
        self.rows[tid] = rows
        order.append(tid)
        return tid

    def encode(self, **lies) -> bytes:
        return pix.encode(self.root, self.rows.__getitem__,
                          lambda o: lies.get("position", {}).get(o, self.position[o]),
                          lambda o: lies.get("offset", {}).get(o, self.offset[o]),
                          commit=COMMIT, pack_checksum=PACK_SUM, commit_offset=40,
                          tree_offset=self.offset[self.root], pack_end=self.pack_end,
                          region_start=self.region_start, block_size=self.block_size)

    def open(self, data: bytes | None = None, reads: list | None = None) -> PathIndex:
        data = self.data if data is None else data

        def pread(off: int, n: int) -> bytes:
            if reads is not None:
                reads.append(off)
            return data[off:off + n]

        return PathIndex.open(pread, len(data), COMMIT, pack_start=40, idx=self.idx)


names = st.binary(min_size=1, max_size=12).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
files = st.tuples(st.sampled_from([MODE_FILE, MODE_EXEC, MODE_LINK, MODE_GITLINK]),
                  st.binary(max_size=4))
specs = st.recursive(st.dictionaries(names, files, max_size=6),
                     lambda kids: st.dictionaries(names, st.one_of(files, kids), max_size=6),
                     max_leaves=60)


def _spec_ok(spec) -> bool:
    return all(v and _spec_ok(v) for v in spec.values() if isinstance(v, dict))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs.filter(_spec_ok), st.sampled_from([512, 4096, 65536]), st.data())
def test_round_trip_every_path_found_absent_paths_absent(spec, block_size, data):
    fake = Fake(spec, block_size)
    assert len(fake.region) % block_size == 0
    index = fake.open()
    assert index.sup.records == len(fake.rows)
    assert index.sup.paths == len(fake.paths)
    for path, (mode, oid) in fake.paths.items():
        e = index.find(pix.key_of(path))
        assert e is not None and (e.mode, e.id) == (mode, oid), path
        if mode != MODE_GITLINK:
            assert e.offset == fake.offset[oid]
        for absent in (path + b"\x01", path + b"/x"):
            if absent not in fake.paths:
                assert index.find(pix.key_of(absent)) is None
    for tid, rows in fake.rows.items():
        dirs = [p for p, (m, o) in fake.paths.items() if o == tid] or [b""]
        for d in dirs:
            assert [(e.mode, e.key.rpartition(b"\0")[2], e.id)
                    for e in index.listing(d)] == rows
    assert index.find(pix.key_of(data.draw(names) + b"\xff\xfe")) is None


def _wide(n_groups: int, per: int = 100, releases: int = 1) -> dict:
    release = {b"a%02d" % g: {b"b%02d" % f: {b"file%06d.txt" % (g * 10000 + f * per + i):
                                             (MODE_FILE, b"%d" % (g * 10000 + f * per + i))
                                             for i in range(per)}
                              for f in range(100)} for g in range(n_groups)}
    if releases == 1:
        return release
    return {b"release-%d" % r: release for r in range(releases)}


def test_a_subtree_shared_by_many_paths_is_stored_once():
    one = Fake(_wide(1, 10))
    ten = Fake(_wide(1, 10, releases=10))
    assert ten.open().sup.paths == 10 * one.open().sup.paths + 10
    assert ten.open().sup.records == one.open().sup.records + 1
    # The one more record (the root naming ten releases) is all it costs.
    assert len(ten.region) - len(one.region) <= 4096


def test_deterministic_encoding():
    a, b = Fake(_wide(1, 20)), Fake(_wide(1, 20))
    assert a.region == b.region


def test_cold_lookups_read_a_page_per_directory_and_the_id():
    fake = Fake(_wide(3))  # 30,000 files, three levels
    assert len(fake.region) / fake.open().sup.paths < 8  # bytes a path
    paths = [p for p, (m, _) in fake.paths.items() if m == MODE_FILE][::1009]
    for p in paths:
        reads: list[int] = []
        index = fake.open(reads=reads)
        opened = len(reads)  # the super block and the PACK trailer
        e = index.find(pix.key_of(p))
        assert e is not None
        assert index.nodes_read <= 2  # a00's and b00's records; the root's is inline
        assert len(reads) - opened <= 3  # and the id, from the IDX


def _reseal(fake: Fake, data: bytes, edit) -> bytes:
    """Apply `edit` to the super block and fix its CRC."""
    data = bytearray(data)
    sup = bytearray(data[-pix.SUPER_SIZE:])
    edit(sup)
    struct.pack_into("<I", sup, pix.CRC_AT, zlib.crc32(bytes(sup[:pix.CRC_AT])))
    data[-pix.SUPER_SIZE:] = sup
    return bytes(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_changed_bytes_are_errors_never_other_entries(data):
    """Any change to the region: a lookup gives the right entry, None only
    where the truth is None, or DamagedImage naming the path index."""
    fake = _FLIP
    good = fake.data
    bad = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(fake.region_start, len(good) - 1))
        bad[at] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):  # a super block whose CRC still holds
        bad = bytearray(_reseal(fake, bytes(bad), lambda s: None))
    keys = data.draw(st.lists(st.sampled_from(sorted(fake.paths)), min_size=1, max_size=5))
    try:
        index = fake.open(bytes(bad))
        if index is None:
            return  # not a version 2 super block any more: no index, the trees are walked
        for path in keys:
            e = index.find(pix.key_of(path))
            mode, oid = fake.paths[path]
            assert e is None or (e.mode, e.id) == (mode, oid)
    except DamagedImage as exc:
        assert "path index" in str(exc) or "IDX" in str(exc)


_FLIP = Fake(_wide(1, 5))


def test_hostile_records_with_good_checksums_are_refused():
    fake = Fake(_wide(1, 5))
    some = next(p for p, (m, _) in fake.paths.items() if m == MODE_FILE)
    oid = fake.paths[some][1]
    for lie, message in (({"offset": {oid: 10 ** 9}}, "outside the pack"),
                         ({"position": {oid: 10 ** 6}}, "IDX position")):
        region = fake.encode(**lie)
        index = fake.open(fake.data[:fake.region_start] + region)
        with pytest.raises(DamagedImage, match=message):
            for p in fake.paths:
                index.find(pix.key_of(p))
    with pytest.raises(DamagedImage, match="bound to commit"):
        fake.open(_reseal(fake, fake.data, lambda s: s.__setitem__(16, s[16] ^ 1)))
    with pytest.raises(DamagedImage, match="bound to pack"):
        fake.open(_reseal(fake, fake.data, lambda s: s.__setitem__(36, s[36] ^ 1)))
    # A root reference outside the pages: refused at open.
    with pytest.raises(DamagedImage, match="outside"):
        fake.open(_reseal(fake, fake.data, lambda s: struct.pack_into("<Q", s, 172, 1 << 40)))


def test_a_walk_reads_the_idx_name_table_once_not_an_id_at_a_time():
    from docteur_core.reader.pathindex import NAMES_AFTER

    fake = Fake(_wide(1, 20))  # 2,000 files in 100 folders
    reads: list[int] = []
    index = fake.open(reads=reads)
    seen = {}
    for path, (mode, oid) in fake.paths.items():
        if mode == MODE_DIR:
            for e in index.listing(path):
                seen[e.path] = e.id
    assert seen == {p: oid for p, (m, oid) in fake.paths.items() if p.count(b"/")}
    lo, hi = fake.idx.name_at(0), fake.idx.name_at(fake.idx.count)
    assert len([o for o in reads if lo <= o < hi]) == NAMES_AFTER + 1
