"""The path index in real images: with and without it, the same answers as
the tree walk and git, damaged and lying regions, and the OCaml docteur
reading images that carry one (the format alone: tests/format/)."""

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
from docteur_core.errors import DamagedImage, DocteurError
from docteur_core.format import pathindex as pix
from docteur_core.format.objects import MODE_DIR
from docteur_core.reader import Image

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
    assert sup.records == 1 + 7 + 21 + 1 and sup.paths == 1500 + 7 + 21 + 3
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


def test_open_is_a_few_reads_and_a_cold_lookup_one_per_directory(built):
    img, plain, _ = built
    data = img.read_bytes()
    dev = CountingDevice(data)
    image = Image.open(dev, mode="fast", verify=False)
    opened = dev.reads
    # header and PACK header, IDX head, super block, PACK trailer, the commit
    assert opened <= 6, opened
    before = dev.reads
    assert image.get("d3/e1/f0010.txt") == b"file 10\n" + b"x" * 10
    # d3's and e1's records (the root's is in the super block), at most a page each.
    assert image.path_index.nodes_read <= 2
    # Those pages, the file's id from the IDX, then the object (one or two
    # reads: header and stream).
    assert dev.reads - before <= 2 + 1 + 2
    plain_dev = CountingDevice(plain.read_bytes())
    Image.open(plain_dev, mode="fast", verify=False)
    assert plain_dev.reads > opened  # the whole IDX and every tree


def test_a_cold_verified_lookup_reads_one_object_per_component_and_no_idx(built):
    """Verified, the index only places the trees on the path: each is read
    where the index says and hashed, the file read and hashed, and the IDX
    is never searched."""
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
    assert pix.parse_super(img.read_bytes()[-pix.SUPER_SIZE:], img.stat().st_size).records
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


def test_a_lying_index_or_another_images_is_an_error_never_other_bytes(built, tmp_path):
    from tests.helpers.forge import rebuilt_path_index

    img, _, src = built
    data = img.read_bytes()
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))

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

    # A record that places a file at another file's object, every checksum
    # of the region sealed again: unverified, the index answers (and is
    # believed: the other bytes); verified, the hash refuses them.
    truth = Image.open(MemoryDevice(data), mode="fast")
    a, b = "d3/e1/f0010.txt", "d4/e2/f0011.txt"
    a_id, b_node = bytes.fromhex(truth.digest(a)), truth._lookup(b)
    lying = MemoryDevice(rebuilt_path_index(data, {a_id: b_node.offset}))
    assert Image.open(lying, mode="fast", verify=False).get(a) == truth.get(b)
    for mode in ("fast", "light"):
        with pytest.raises(DamagedImage, match="SHA-1|hash"):
            Image.open(lying, mode=mode).get(a)
    # verify names the record that lies.
    report = verify_image(lying)
    assert not report.ok and {p[0] for p in report.problems} == {"path index"}
    assert any("offset" in line for line in report.problem_lines()), report.problem_lines()


def test_an_image_with_a_version_1_index_is_read_by_walking_the_trees(built):
    """The index of version 1 (every path stored again) is not read: the
    trees are walked, the answers are the same, and verify warns."""
    img, _, _ = built
    data = bytearray(img.read_bytes())
    sup = pix.parse_super(bytes(data[-pix.SUPER_SIZE:]), len(data))
    old = bytearray(data[-pix.SUPER_SIZE:])
    old[8:10] = b"\x01\x00"
    struct.pack_into("<I", old, pix.CRC_AT, zlib.crc32(bytes(old[:pix.CRC_AT])))
    data[-pix.SUPER_SIZE:] = old
    data[sup.nodes_start:-pix.SUPER_SIZE] = bytes(len(data) - pix.SUPER_SIZE - sup.nodes_start)
    old_image = MemoryDevice(bytes(data))
    for mode in ("fast", "light"):
        with Image.open(old_image, mode=mode) as image, \
                Image.open(MemoryDevice(img.read_bytes()), mode=mode) as truth:
            assert image.path_index is None
            assert image.get("d3/e1/f0010.txt") == truth.get("d3/e1/f0010.txt")
            assert [n.path for n in image.walk()] == [n.path for n in truth.walk()]
    report = verify_image(old_image)
    assert report.ok, report.problem_lines()
    assert any("version 1" in line for line in report.warning_lines())


def test_the_plugins_check_covers_the_region(built):
    """The plugin's quick check (verify --quick) refuses a damaged super block or node."""
    from docteur_core.serve import imagecheck

    img, _, _ = built
    data = img.read_bytes()
    sup = pix.parse_super(data[-pix.SUPER_SIZE:], len(data))
    info = imagecheck.check_image(MemoryDevice(data))
    pages = sup.region_start + (sup.nodes_start - sup.region_start) // 512 * 512
    assert info.extents[-1] == (pages, len(data), imagecheck.EXTENT_DATA)
    assert all((b - a) % 512 == 0 for a, b, _ in info.extents)
    for a, b, t in info.extents:
        if t:
            assert data[a:b] == bytes(b - a)
    for at in (len(data) - pix.SUPER_SIZE + 40, sup.nodes_start + 100):
        bad = bytearray(data)
        bad[at] ^= 0x20
        with pytest.raises(imagecheck.ImageRejected, match="path index"):
            imagecheck.check_image(MemoryDevice(bytes(bad)))


def test_a_verified_walk_proves_trees_from_the_records_once_the_names_are_read(
        built, monkeypatch):
    """Past a few trees read from the pack, a verified walk reads the IDX's
    name table once and proves each next tree from its record (re-encoded as
    git writes a tree, hashed against the id its parent names); a record
    that lies (an IDX position of another object) fails that hash, and its
    tree is read from the pack: the same bytes either way."""
    from docteur_core.reader import image as image_mod
    from tests.helpers.forge import rebuilt_path_index

    img, _, _ = built
    data = img.read_bytes()
    monkeypatch.setattr(image_mod, "_TREES_BEFORE_NAMES", 0)
    with Image.open(MemoryDevice(data), mode="light", path_index=False) as truth:
        want = {n.path: truth.get(n) for n in truth.files()}
        a_id = bytes.fromhex(truth.digest("d3/e1/f0010.txt"))
        b_id = bytes.fromhex(truth.digest("d4/e2/f0011.txt"))
    for mode in ("fast", "light"):
        with Image.open(MemoryDevice(data), mode=mode) as image:
            assert {n.path: image.get(n) for n in image.files()} == want
            assert image._trees_read == 0 and image.path_index.names_loaded
    with Image.open(MemoryDevice(data), mode="light", verify=False, path_index=False) as plain:
        idx = plain.store.idx
        names = [plain.store.pread(idx.name_at(i), 20) for i in range(idx.count)]
    lying = rebuilt_path_index(data, positions={a_id: names.index(b_id)})
    for mode in ("fast", "light"):
        with Image.open(MemoryDevice(lying), mode=mode) as image:
            assert {n.path: image.get(n) for n in image.files()} == want
            assert image._trees_read == 1  # d3/e1's, from the pack
