"""Hostile images: the reader returns the right bytes or raises DamagedImage.

Two halves:
- hand-made images, one per guard (huge sizes, delta cycles and over-deep
  chains, illegal tree names, offsets outside the pack, a non-monotonic
  fanout, an IDX offset outside the device, SHA-1 mismatches, trees that
  contain themselves...), written with the shared writer in forge.py so
  each lie is exactly the one meant;
- a corruption fuzz: hypothesis flips, overwrites and truncates bytes of a
  valid image (with OFS and REF delta chains) and every read must give the
  original data or DamagedImage.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from docteur_core.blockdev.block import MemoryDevice
from docteur_core.errors import DamagedImage
from docteur_core.format.pack import object_id
from docteur_core.reader import Image

from tests.helpers.forge import Obj, build, commit, make_delta, simple, tree
from tests.helpers.support import git_reference_image

MODES = ("fast", "light")


def open_image(data: bytes, mode: str, **kw) -> Image:
    return Image.open(MemoryDevice(bytes(data), 512), mode, **kw)


def damaged(data: bytes, mode: str, match: str | None, path: str | None = "f", **kw) -> None:
    with pytest.raises(DamagedImage, match=match):
        image = open_image(data, mode, **kw)
        if path is not None:
            image.get(path)


# -- sanity: the writer makes images the reader accepts -------------------------


@pytest.mark.parametrize("mode", MODES)
def test_writer_makes_valid_images(mode):
    a = Obj("blob", b"hello " * 50)
    b = Obj("blob", b"hello " * 50 + b"world", ofs_base=a,
            delta=make_delta(a.data, b"hello " * 50 + b"world"))
    c_data = b"hello " * 50 + b"world!!"
    c = Obj("blob", c_data, ref_base=b.oid, delta=make_delta(b.data, c_data))
    objs, cid = simple({"a": a, "b": b, "c": c})
    image = open_image(build(objs, cid), mode, verify=True)
    assert [image.get(n) for n in "abc"] == [a.data, b.data, c_data]


@pytest.mark.parametrize("mode", MODES)
def test_size_of_a_delta_behind_a_long_zlib_header(mode):
    # A dynamic Huffman block header can take more than the first 64 bytes
    # of a zlib stream: the delta's result size comes only after it.
    rnd = random.Random(3)
    base = b"hello " * 50
    # Every byte value, with skewed frequencies: large code tables.
    target = base + bytes(min(255, int(rnd.expovariate(0.03))) for _ in range(3000))
    delta = make_delta(base, target)
    assert len(zlib.decompressobj().decompress(zlib.compress(delta)[:64], 20)) < 20
    a = Obj("blob", base)
    b = Obj("blob", target, ofs_base=a, delta=delta)
    objs, cid = simple({"a": a, "b": b})
    image = open_image(build(objs, cid), mode)
    image.store.clear_cache()
    assert image.size("b") == len(target) and image.get("b") == target


# -- one image per guard ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_huge_size_in_entry_header(mode):
    f = Obj("blob", b"x", size=1 << 40)
    objs, cid = simple({"f": f})
    damaged(build(objs, cid), mode, "over the limit")
    # Under the configured limit but beyond what the pack could inflate to.
    damaged(build(objs, cid), mode, "could hold", max_object_size=1 << 50)
    # A configurable limit: a real 1000-byte blob over a 100-byte limit.
    g = Obj("blob", b"y" * 1000)
    objs, cid = simple({"f": g})
    damaged(build(objs, cid), mode, "over the limit", max_object_size=100)
    assert open_image(build(objs, cid), mode).get("f") == b"y" * 1000


@pytest.mark.parametrize("mode", MODES)
def test_size_lie_in_entry_header(mode):
    objs, cid = simple({"f": Obj("blob", b"0123456789", size=5)})
    damaged(build(objs, cid), mode, "CRC|more than|declared")


@pytest.mark.parametrize("mode", MODES)
def test_oversized_varint_header(mode):
    objs, cid = simple({"f": Obj("blob", b"z", raw_header=b"\xb1" + b"\xff" * 12 + b"\x01")})
    damaged(build(objs, cid), mode, "varint|over the limit")


@pytest.mark.parametrize("mode", MODES)
def test_ref_delta_cycle(mode):
    # A is a delta on B, B a delta on A: ids in the IDX are whatever we say.
    ida, idb = b"\x11" * 20, b"\x22" * 20
    a = Obj("blob", b"", oid=ida, ref_base=idb, delta=make_delta(b"x", b"x"))
    b = Obj("blob", b"", oid=idb, ref_base=ida, delta=make_delta(b"x", b"x"))
    objs, cid = simple({"f": a}, [b])
    damaged(build(objs, cid), mode, "loops")


@pytest.mark.parametrize("mode", MODES)
def test_self_referencing_ref_delta(mode):
    a = Obj("blob", b"", oid=b"\x33" * 20, ref_base=b"\x33" * 20, delta=make_delta(b"", b""))
    objs, cid = simple({"f": a})
    damaged(build(objs, cid), mode, "loops")


@pytest.mark.parametrize("mode", MODES)
def test_over_deep_delta_chain(mode):
    chain = [Obj("blob", b"0")]
    for i in range(1, 60):
        data = chain[-1].data + bytes([48 + i % 10])
        chain.append(Obj("blob", data, ofs_base=chain[-1], delta=make_delta(chain[-1].data, data)))
    objs, cid = simple({"f": chain[-1]}, chain[:-1])
    # The file's entry comes last: OFS bases must precede it.
    objs = [objs[0], objs[1], *chain]
    data = build(objs, cid)
    damaged(data, mode, "deeper than 20", max_delta_depth=20)
    assert open_image(data, mode, verify=True, cache_bytes=0).get("f") == chain[-1].data


@pytest.mark.parametrize("mode", MODES)
def test_missing_ref_delta_base(mode):
    a = Obj("blob", b"ab", ref_base=b"\x44" * 20, delta=make_delta(b"a", b"ab"))
    objs, cid = simple({"f": a})
    damaged(build(objs, cid), mode, "REF_DELTA base 4444")


@pytest.mark.parametrize("mode", MODES)
def test_delta_on_wrong_sized_base(mode):
    a = Obj("blob", b"abc")
    b = Obj("blob", b"abcd", ofs_base=a, delta=make_delta(b"abcdef", b"abcd"))
    objs, cid = simple({"f": b}, [])
    objs = [objs[0], objs[1], a, b]
    damaged(build(objs, cid), mode, "base of 6 bytes")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [".", "..", "a/b", ""])
def test_bad_tree_names(mode, name):
    f = Obj("blob", b"data")
    t = Obj("tree", tree(("100644", name, f.oid)))
    c = Obj("commit", commit(t.oid))
    data = build([c, t, f], c.oid)
    # Fast mode walks every tree at open; light mode when the tree is read.
    with pytest.raises(DamagedImage, match="illegal name"):
        image = open_image(data, mode)
        image.list("")


@pytest.mark.parametrize("mode", MODES)
def test_tree_entry_of_the_wrong_type(mode):
    f = Obj("blob", b"data")
    t = Obj("tree", tree(("040000", "d", f.oid)))  # says directory, is a blob
    c = Obj("commit", commit(t.oid))
    with pytest.raises(DamagedImage, match="is a blob, a tree was expected"):
        open_image(build([c, t, f], c.oid), mode).list("d")


@pytest.mark.parametrize("mode", MODES)
def test_tree_containing_itself(mode):
    # Ids are not verified with verify=False: a tree can claim to hold itself.
    tid = b"\x55" * 20
    t = Obj("tree", tree(("040000", "loop", tid), ("100644", "f", object_id("blob", b"f"))),
            oid=tid)
    f = Obj("blob", b"f")
    c = Obj("commit", commit(tid))
    data = build([c, t, f], c.oid)
    damaged(data, mode, "SHA-1 mismatch", path="f")  # verified (the default): its id lies
    if mode == "fast":
        damaged(data, mode, "contains itself", path=None, verify=False)
    else:
        image = open_image(data, mode, verify=False)
        assert image.get("loop/loop/loop/f") == b"f"  # each lookup is finite...
        with pytest.raises(DamagedImage, match="contains itself"):
            list(image.walk())  # ...but a walk is not
    with pytest.raises(DamagedImage, match="SHA-1"):
        open_image(data, "light", verify=True).get("f")


@pytest.mark.parametrize("mode", MODES)
def test_path_explosion(mode):
    # 40 levels, each naming the level below twice: 2**40 paths from 41 trees.
    f = Obj("blob", b"leaf")
    level = Obj("tree", tree(("100644", "f", f.oid)))
    objs = [f, level]
    for _ in range(40):
        level = Obj("tree", tree(("040000", "a", level.oid), ("040000", "b", level.oid)))
        objs.append(level)
    c = Obj("commit", commit(level.oid))
    data = build([c, *objs], c.oid)
    if mode == "fast":
        damaged(data, mode, "more than 100000 paths", path=None, max_paths=100_000)
    else:
        image = open_image(data, mode, max_paths=100_000)
        assert image.get("a/b/" * 20 + "f") == b"leaf"
        with pytest.raises(DamagedImage, match="more than 100000 paths"):
            sum(1 for _ in image.walk())


@pytest.mark.parametrize("mode", MODES)
def test_idx_offset_outside_the_pack(mode):
    f = Obj("blob", b"data")
    objs, cid = simple({"f": f})
    data = build(objs, cid)
    idx_at = struct.unpack_from("<Q", data, 20)[0]
    n = len(objs)
    ordered = sorted(objs, key=lambda o: o.oid)
    slot = ordered.index(f)
    off_table = idx_at + 8 + 1024 + 24 * n
    struct.pack_into(">I", data, off_table + 4 * slot, idx_at)  # points at the IDX itself
    damaged(data, mode, "outside the pack")
    struct.pack_into(">I", data, off_table + 4 * slot, 3)  # inside the PACK header
    damaged(data, mode, "outside the pack")


@pytest.mark.parametrize("mode", MODES)
def test_ofs_delta_before_the_pack(mode):
    a = Obj("blob", b"abc")
    b = Obj("blob", b"abcd", ofs_base=a, delta=make_delta(b"abc", b"abcd"), distance=10_000)
    objs, cid = simple({"f": b})
    damaged(build([a, objs[0], objs[1], b], cid), mode, "before the start of the pack")


@pytest.mark.parametrize("mode", MODES)
def test_ofs_delta_base_not_an_entry(mode):
    # The distance lands 2 bytes into the base's entry (the CRC is right: only
    # the distance lies). Fast mode knows every entry's offset and says so;
    # light mode decodes garbage there and reports whatever breaks first.
    a = Obj("blob", b"abc" * 20)
    b = Obj("blob", b"abc" * 20 + b"d", ofs_base=a, delta=make_delta(a.data, a.data + b"d"))
    objs, cid = simple({"f": b})
    b.distance = 1  # placeholder; fixed once offsets are known
    build([objs[0], objs[1], a, b], cid)
    b.distance = b.offset - a.offset - 2
    data = build([objs[0], objs[1], a, b], cid)
    damaged(data, mode, "not an entry the IDX lists" if mode == "fast" else None)


@pytest.mark.parametrize("mode", MODES)
def test_non_monotonic_fanout(mode):
    objs, cid = simple({"f": Obj("blob", b"data")})

    def edit(fanout):
        fanout[200] = fanout[255] + 1

    damaged(build(objs, cid, fanout_edit=edit), mode, "not monotonic", path=None)


def test_fanout_disagreeing_with_ids_fast_mode():
    objs, cid = simple({"f": Obj("blob", b"data")})

    def edit(fanout):  # monotonic, but not what the ids say
        for b in range(256):
            fanout[b] = fanout[255]

    damaged(build(objs, cid, fanout_edit=edit), "fast", "fanout disagrees", path=None)
    damaged(build(objs, cid, fanout_edit=edit), "light", "not in the image", path=None)


@pytest.mark.parametrize("mode", MODES)
def test_fanout_announcing_too_many_objects(mode):
    objs, cid = simple({"f": Obj("blob", b"data")})

    def edit(fanout):
        fanout[255] = 10_000_000

    damaged(build(objs, cid, fanout_edit=edit), mode, "more than the image can hold", path=None)


@pytest.mark.parametrize("mode", MODES)
def test_idx_offset_outside_the_device(mode):
    objs, cid = simple({"f": Obj("blob", b"data")})
    data = build(objs, cid, idx_offset=1 << 40)
    damaged(data, mode, "points outside the image", path=None)
    data = build(objs, cid, idx_offset=len(build(objs, cid)) - 100)
    damaged(data, mode, "outside the image", path=None)
    data = build(objs, cid, idx_offset=5)
    damaged(data, mode, "inside the header", path=None)


@pytest.mark.parametrize("mode", MODES)
def test_sha1_mismatch(mode):
    # The IDX and the tree say "hello", the entry holds "HELLO" (CRC correct).
    lie = Obj("blob", b"HELLO", oid=object_id("blob", b"hello"))
    objs, cid = simple({"f": lie})
    data = build(objs, cid)
    assert open_image(data, mode, verify=False).get("f") == b"HELLO"  # undetectable so
    damaged(data, mode, "SHA-1 mismatch")  # verified by default


@pytest.mark.parametrize("mode", MODES)
def test_commit_missing_or_not_a_commit(mode):
    objs, cid = simple({"f": Obj("blob", b"data")})
    damaged(build(objs, b"\x66" * 20), mode, "not in the image", path=None)
    blob = objs[2]
    damaged(build(objs, blob.oid), mode, "is a blob, a commit was expected", path=None)


@pytest.mark.parametrize("mode", MODES)
def test_pack_count_disagrees_with_idx(mode):
    objs, cid = simple({"f": Obj("blob", b"data")})
    data = build(objs, cid)
    struct.pack_into(">I", data, 28 + 8, 99)
    damaged(data, mode, "99 objects", path=None)


@pytest.mark.parametrize("mode", MODES)
def test_truncated_device(mode):
    objs, cid = simple({"f": Obj("blob", b"data" * 100)})
    data = build(objs, cid)
    for cut in (0, 10, 27, 40, len(data) // 2, len(data) - 600):
        damaged(data[:cut], mode, None, path=None)


# -- the corruption fuzz --------------------------------------------------------------


@pytest.fixture(scope="module")
def victims(tmp_path_factory):
    """Valid images with OFS and REF delta chains, and what they must read as."""
    out = {}
    for kind in ("ofs", "ref"):
        src = tmp_path_factory.mktemp(f"fuzz-{kind}")
        text = b"".join(b"line %d of a text that changes a little\n" % i for i in range(60))
        expect = {}
        for v in range(4):
            d = src / f"v{v}"
            d.mkdir()
            body = text.replace(b"line 1", b"LINE %d" % v) + b"v%d\n" % v * v
            (d / "doc.txt").write_bytes(body)
            (d / "tiny").write_bytes(b"%d\n" % v)
            expect[f"v{v}/doc.txt"] = body
            expect[f"v{v}/tiny"] = b"%d\n" % v
        img = tmp_path_factory.mktemp("fuzz-img") / "v.img"
        git_reference_image(src, img, ofs_delta=kind == "ofs")
        out[kind] = (Path(img).read_bytes(), expect)
    return out


def _read_all(data: bytes, expect: dict[str, bytes], mode: str, verify: bool) -> tuple[int, int]:
    """(reads that returned the original, reads that raised DamagedImage).

    Anything else fails the test: a wrong answer, another exception, and
    also NotFound. A flipped byte in a tree name could in principle make a
    path vanish (an honest NotFound), but every tree is a zlib stream whose
    Adler-32 catches it, and each entry's CRC-32 in the IDX covers what zlib
    does not (headers, delta distances and base ids); so even without
    verify=True such damage is reported. What verify=True adds is shown by
    test_sha1_mismatch: a consistent forgery (content and CRC rewritten).
    """
    try:
        image = open_image(data, mode, verify=verify)
    except DamagedImage:
        return 0, len(expect)
    good = bad = 0
    for path, want in expect.items():
        try:
            got = image.get(path)
        except DamagedImage:
            bad += 1
            continue
        assert got == want, f"{path}: wrong data returned ({mode}, verify={verify})"
        good += 1
    try:
        listing = image.list("v1")
    except DamagedImage:
        pass
    else:
        assert listing == [("doc.txt", "file"), ("tiny", "file")]
    return good, bad


corruptions = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 32), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), st.integers(0, 1 << 32), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 32), st.just(None)),
)


def corrupt(data: bytes, how) -> bytes:
    kind, where, arg = how
    buf = bytearray(data)
    # Spread hypothesis's favourite small integers over the whole image.
    pos = (where * 2654435761) % len(buf)
    if kind == "flip":
        buf[pos] ^= 1 << arg
    elif kind == "overwrite":
        buf[pos:pos + len(arg)] = arg
        del buf[len(data):]
    else:
        del buf[pos:]
    return bytes(buf)


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("kind", ["ofs", "ref"])
@given(how=corruptions)
@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_corruption_fuzz(victims, kind, verify, how):
    data, expect = victims[kind]
    broken = corrupt(data, how)
    for mode in MODES:
        good, bad = _read_all(broken, expect, mode, verify)
        event(f"{mode}: {'all reads intact' if not bad else 'damage reported'}")


def test_fuzz_victims_are_sound(victims):
    """The fuzz starts from images that read back whole, with real delta chains."""
    for kind, (data, expect) in victims.items():
        for mode in MODES:
            assert _read_all(data, expect, mode, True) == (len(expect), 0)
        image = open_image(data, "light")
        image.store.clear_cache()
        before = image.store.objects_inflated
        image.get("v0/doc.txt")
        assert image.store.objects_inflated - before >= 2  # a delta was resolved


@pytest.mark.parametrize("kind", ["ofs", "ref"])
@pytest.mark.parametrize("verify", [False, True])
def test_every_single_byte_flip(victims, kind, verify):
    """Exhaustive, not sampled: each byte of the PACK and IDX flipped in turn."""
    data, expect = victims[kind]
    idx_at = struct.unpack_from("<Q", data, 20)[0]
    end = len(data.rstrip(b"\0"))
    reported = 0
    for pos in range(0, end):
        broken = bytearray(data)
        broken[pos] ^= 0x40
        mode = MODES[pos % 2]
        good, bad = _read_all(bytes(broken), expect, mode, verify)
        reported += bad > 0
    assert reported > (end - idx_at) // 2  # most flips are caught, not ignored


def test_a_cached_entry_is_checked_against_each_crc_it_is_asked_for(victims):
    """A damaged IDX that points a second id at an entry already read (and
    kept) must not get that entry's bytes: the cache remembers which CRC-32
    it checked, and checks again against another (found by the corruption
    fuzz: `v2/tiny` read as `v1/tiny`'s bytes, without verify)."""
    data, expect = victims["ofs"]
    with open_image(data, "light", verify=False) as image:
        ids = {p: bytes.fromhex(image.digest(p)) for p in ("v1/tiny", "v2/tiny")}
        where = {p: image.store.locate(oid)[0] for p, oid in ids.items()}
    idx = struct.unpack_from("<Q", data, 20)[0]
    count = struct.unpack_from(">I", data, idx + 8 + 1020)[0]
    names = idx + 8 + 1024
    rows = [data[names + 20 * i:names + 20 * i + 20] for i in range(count)]
    broken = bytearray(data)
    row = rows.index(ids["v2/tiny"])
    struct.pack_into(">I", broken, names + 24 * count + 4 * row, where["v1/tiny"] - 28)
    with open_image(bytes(broken), "light", verify=False) as image:
        assert image.get("v1/tiny") == expect["v1/tiny"]  # read and kept
        with pytest.raises(DamagedImage, match="CRC-32"):
            image.get("v2/tiny")
