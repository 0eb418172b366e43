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


_FLIP_ENTRIES = _entries(_many(4000))
_FLIP_GOOD = _region_image(_FLIP_ENTRIES, 4096)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_flipped_bytes_are_errors_never_other_entries(data):
    """Any change to the region: a lookup gives the right entry, None only
    where the truth is None, or DamagedImage."""
    entries, good = _FLIP_ENTRIES, _FLIP_GOOD
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


# --- real images ----------------------------------------------------------------

from pathlib import Path  # noqa: E402

from docteur_core.make import make_image  # noqa: E402
from docteur_core.verify import verify_image  # noqa: E402
from tests.helpers import ocaml_oracle as oc  # noqa: E402
from tests.helpers.support import git  # noqa: E402
from tests.helpers.gitoracle import check_image  # noqa: E402
from tests.helpers.ocaml_oracle import DATE, SETTINGS, agree, same_verify, trees  # noqa: E402
from tests.helpers.treegen import materialise  # noqa: E402


def _snapshot(image: Image) -> dict:
    """Everything a reader says about every path: kind, mode, id, size, bytes, listing."""
    out = {}
    for node in image.walk():
        st_ = image.stat(node.path)
        item = [st_.kind, st_.mode, st_.id, st_.size]
        if node.mode == MODE_DIR:
            item.append(image.list(node.path))
        elif node.mode != 0o160000:
            item.append(hashlib.sha1(image.get(node.path)).hexdigest())
            item.append(image.size(node.path))
        out[node.path] = item
    out[""] = image.list("")
    return out


def _git_listing(git_dir: Path, commit: str) -> dict:
    out = git("ls-tree", "-r", "-t", "-l", "-z", "--full-tree", commit,
              env={"GIT_DIR": str(git_dir)})
    listing = {}
    for rec in out.split(b"\0"):
        if rec:
            meta, path = rec.split(b"\t", 1)
            mode, _, oid, size = meta.split()
            listing[path.decode("utf-8", "surrogateescape")] = (
                int(mode, 8), oid.decode(), None if size == b"-" else int(size))
    return listing


@SETTINGS
@given(spec=trees)
def test_lookups_listings_sizes_and_contents_equal_the_tree_walk_and_git(spec, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pix")
    src = tmp / "src"
    src.mkdir()
    materialise(src, spec)
    img = tmp / "out.img"
    make_image(src, img, date=DATE, warn=lambda w: None)
    data = img.read_bytes()
    assert pix.has_magic(data[-pix.SUPER_SIZE:])
    checked = check_image(img, tmp)  # git index-pack of the PACK gives the IDX region
    truth = _git_listing(checked.git_dir, checked.commit)
    with Image.open(str(img), mode="light", path_index=False) as walked:
        expected = _snapshot(walked)
    with Image.open(str(img), mode="fast", path_index=False) as walked:
        dirs = [""] + [n.path for n in walked.walk() if n.mode == MODE_DIR]
        listed = {d: walked.entries(d) for d in dirs}
    for mode in ("fast", "light"):
        with Image.open(str(img), mode=mode) as image:
            assert {d: image.entries(d) for d in dirs} == listed  # offsets included
            assert image.path_index is not None
            assert not image.store.indexed  # no IDX load, no tree walk
            assert _snapshot(image) == expected
            assert len(image) == len(truth)
            for path, (gmode, oid, size) in truth.items():
                st_ = image.stat(path)
                assert (st_.mode, st_.id) == (gmode, oid)
                if size is not None:
                    assert st_.size == size
            assert image.exists("no/such") is None
    assert verify_image(MemoryDevice(data)).ok
    assert verify_image(MemoryDevice(data), quick=True).ok


def _corpus(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"d{i % 7}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_text(f"file {i}\n" + "x" * (i % 50))
    (root / "exe").write_text("#!/bin/sh\n")
    (root / "exe").chmod(0o755)
    (root / "link").symlink_to("exe")
    (root / "empty").mkdir()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pixb")
    src = tmp / "src"
    src.mkdir()
    _corpus(src, 1500)
    img = tmp / "a.img"
    make_image(src, img, date=DATE, warn=lambda w: None)
    plain = tmp / "plain.img"
    make_image(src, plain, date=DATE, warn=lambda w: None, path_index=False)
    return img, plain, src


def test_deterministic_and_optional(built, tmp_path):
    img, plain, src = built
    again = tmp_path / "again.img"
    make_image(src, again, date=DATE, warn=lambda w: None)
    assert again.read_bytes() == img.read_bytes()
    data, without = img.read_bytes(), plain.read_bytes()
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))
    assert sup.height >= 1 and sup.paths == 1500 + 7 + 21 + 3
    assert data[:sup.region_start] == without  # the OCaml layout, untouched
    for path, expected in ((img, "yes, 1531 paths"), (plain, "no")):
        proc = subprocess.run([os.fspath(Path(os.sys.executable).with_name("docteur")),
                               "info", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert f"path index: {expected}" in proc.stdout
    proc = subprocess.run([os.fspath(Path(os.sys.executable).with_name("docteur")), "make",
                           "-q", "--no-path-index", "--date", DATE, str(src),
                           str(tmp_path / "cli.img")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli.img").read_bytes() == without


class CountingDevice:
    """A memory device that counts reads (each is one device request)."""

    block_size = 512

    def __init__(self, data: bytes) -> None:
        self.data, self.capacity, self.reads = data, len(data), 0

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.data[offset:offset + length]

    def close(self) -> None:
        pass


def test_open_is_a_few_reads_and_a_cold_lookup_one_per_level(built):
    img, plain, _ = built
    data = img.read_bytes()
    dev = CountingDevice(data)
    image = Image.open(dev, mode="fast", verify=False)
    opened = dev.reads
    # header and PACK header, IDX head, super block, PACK trailer, the commit
    assert opened <= 6, opened
    height = image.path_index.sup.height
    before = dev.reads
    assert image.get("d3/e1/f0010.txt") == b"file 10\n" + b"x" * 10
    assert image.path_index.nodes_read == height
    # The index descent, then the object (one or two reads: header and stream).
    assert dev.reads - before <= height + 2
    plain_dev = CountingDevice(plain.read_bytes())
    Image.open(plain_dev, mode="fast", verify=False)
    assert plain_dev.reads > opened  # the whole IDX and every tree


def test_a_cold_verified_lookup_reads_one_object_per_component_and_no_idx(built):
    """Verified, the index only places the trees on the path: each is proven
    once (its listing in the index re-encoded and hashed, else the tree read
    and hashed), the file read and hashed, and the IDX is never searched."""
    img, _, _ = built
    data = img.read_bytes()
    dev = CountingDevice(data)
    image = Image.open(dev, mode="light")
    store = image.store
    searched = []
    store.locate = lambda oid: searched.append(oid)  # an IDX search would land here
    inflated = store.objects_inflated
    assert image.get("d3/e1/f0010.txt") == b"file 10\n" + b"x" * 10
    # At most the root tree, d3, d3/e1 and the file (the commit was read at open).
    assert store.objects_inflated - inflated <= 4
    assert searched == []


@pytest.mark.oracle
def test_the_ocaml_docteur_reads_images_with_a_path_index(tmp_path):
    """Its verify and its three readers take everything from the IDX offset to
    the end of the device as the IDX: bytes after the IDX must not matter."""
    oracle = oc.Oracle(oc.built())
    src = tmp_path / "src"
    src.mkdir()
    _corpus(src, 300)
    img = tmp_path / "a.img"
    make_image(src, img, date=DATE, warn=lambda w: None)
    assert pix.parse_super(img.read_bytes()[-pix.SUPER_SIZE:], img.stat().st_size).height
    same_verify(oracle, img)
    agree(oracle, img)
    big = tmp_path / "b4096.img"
    make_image(src, big, date=DATE, warn=lambda w: None, block_size=4096, compat="ocaml")
    assert pix.has_magic(big.read_bytes()[-pix.SUPER_SIZE:])
    same_verify(oracle, big)
    agree(oracle, big, sector=4096)


def test_every_flipped_byte_of_the_region_is_reported_as_path_index(built):
    img, _, _ = built
    data = img.read_bytes()
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))
    import random
    rnd = random.Random(3)
    offsets = rnd.sample(range(sup.region_start, len(data)), 40)
    offsets += [sup.region_start, len(data) - 1, len(data) - pix.SUPER_SIZE + 20]
    for off in offsets:
        bad = bytearray(data)
        bad[off] ^= rnd.choice([1, 0x80, 0xFF])
        for quick in (False, True):
            report = verify_image(MemoryDevice(bytes(bad)), quick=quick)
            assert not report.ok, (off, quick)
            assert {p[0] for p in report.problems} == {"path index"}, \
                (off, quick, report.problem_lines())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_region_gives_the_tree_walks_bytes_or_an_error(built, data):
    img, _, _ = built
    good = img.read_bytes()
    sup = pix.parse_super(good[-pix.SUPER_SIZE:], len(good))
    bad = bytearray(good)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(sup.region_start, len(good) - 1))
        bad[at] = data.draw(st.integers(0, 255))
    paths = data.draw(st.lists(st.sampled_from(
        [f"d{i % 7}/e{i % 3}/f{i:04d}.txt" for i in range(0, 1500, 37)]
        + ["exe", "link", "d1/e2", "empty", "nope", "d1/nope"]), min_size=1, max_size=8))
    with Image.open(MemoryDevice(good), mode="light", path_index=False) as truth_image:
        truth = {}
        for p in paths:
            try:
                kind = truth_image.exists(p)
                truth[p] = (truth_image.get(p) if kind not in (None, "directory")
                            else truth_image.list(p) if kind else None)
            except DocteurError as exc:
                truth[p] = type(exc)
    mode = data.draw(st.sampled_from(["fast", "light"]))
    try:
        image = Image.open(MemoryDevice(bytes(bad)), mode=mode)
    except DamagedImage:
        return
    for p in paths:
        try:
            kind = image.exists(p)
            got = (image.get(p) if kind not in (None, "directory")
                   else image.list(p) if kind else None)
        except DamagedImage:
            continue
        assert got == truth[p], p


def _reseal_leaf(data: bytes, edit) -> bytes:
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))
    return _resealed(data, 0, edit) if sup.height else _resealed(data, -1, edit)


def test_a_lying_size_or_another_images_index_is_an_error(built, tmp_path):
    img, _, src = built
    data = img.read_bytes()
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))
    first = Image.open(MemoryDevice(data)).path_index.listing(b"")[0]

    # Another image's region, appended to this image's layout: refused.
    other_src = tmp_path / "o"
    other_src.mkdir()
    (other_src / "x").write_text("x")
    other = tmp_path / "o.img"
    make_image(other_src, other, date=DATE)
    o = other.read_bytes()
    osup = pix.parse_super(o[-pix.SUPER_SIZE:], len(o))
    with pytest.raises(DamagedImage, match="path index"):
        Image.open(MemoryDevice(data[:sup.region_start] + o[osup.region_start:]))
    # Its super block in place of this one's (same geometry otherwise): the binding says no.
    with pytest.raises(DamagedImage, match="bound to commit"):
        Image.open(MemoryDevice(_resealed(data, -1, lambda n: n.__setitem__(
            slice(16, 36), o[-pix.SUPER_SIZE + 16:-pix.SUPER_SIZE + 36]))))

    # A leaf whose first file's size lies (CRC recomputed): get and size refuse.
    leaf = pix.NODE_HEAD.size if sup.height else pix.ROOT_AT + 2
    number = 0 if sup.height else -1
    d = bytearray(data)
    at = (sup.nodes_start if sup.height else len(d) - pix.SUPER_SIZE) + leaf
    # Find the first file entry of the first leaf and bump its size.
    node_at = at - leaf
    node = bytes(d[node_at:node_at + pix.NODE_SIZE])
    count = struct.unpack_from("<H", node, 2 if sup.height else pix.ROOT_AT)[0]
    pos, prev = leaf, b""
    for _ in range(count):
        shared, rest = struct.unpack_from("<HH", node, pos)
        key = prev[:shared] + node[pos + 4:pos + 4 + rest]
        fixed = pos + 4 + rest
        mode = struct.unpack_from("<I", node, fixed)[0]
        if mode == MODE_FILE:
            break
        pos, prev = fixed + pix.LEAF_FIXED.size, key
    else:
        raise AssertionError("no file in the first leaf")

    def lie(n):
        size = struct.unpack_from("<Q", n, fixed + 32)[0]
        struct.pack_into("<Q", n, fixed + 32, size + 1)

    lying = MemoryDevice(_resealed(data, number, lie))
    liar = Image.open(lying, mode="fast", verify=False)  # the index answers: it is checked
    path = pix.Entry(key, 0, b"", 0, 0).path.decode()
    with pytest.raises(DamagedImage, match="path index says"):
        liar.get(path)
    with pytest.raises(DamagedImage, match="path index says"):
        liar.size(path)
    # Verified, the index only places objects: the size comes from the hashed file.
    truth = Image.open(MemoryDevice(data), mode="fast")
    verified = Image.open(lying, mode="fast")
    assert verified.get(path) == truth.get(path)
    assert verified.size(path) == truth.size(path) == len(truth.get(path))
    assert first is not None


def test_the_plugins_check_covers_the_region(built):
    """The plugin's quick check (verify --quick) refuses a damaged super block or node."""
    from docteur_core.serve import imagecheck

    img, _, _ = built
    data = img.read_bytes()
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))
    info = imagecheck.check_image(MemoryDevice(data))
    assert info.extents[-1] == (sup.nodes_start, len(data), imagecheck.EXTENT_DATA)
    for a, b, t in info.extents:
        if t:
            assert data[a:b] == bytes(b - a)
    for at in (len(data) - pix.SUPER_SIZE + 40, sup.nodes_start + 100):
        bad = bytearray(data)
        bad[at] ^= 0x20
        with pytest.raises(imagecheck.ImageRejected, match="path index"):
            imagecheck.check_image(MemoryDevice(bytes(bad)))
