"""The pure git-format layer (pack entries, deltas, idx, trees, commits),
judged against git's own reading of packs that git itself wrote."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.format import idx as idxmod
from docteur_core.format import layout, objects, pack
from docteur_core.errors import DamagedImage

from tests.helpers import reference_git
from tests.helpers.forge import copy_op, make_delta, varint
from tests.helpers.support import git_reference_image


def _scan(image: bytes):
    """Walk every entry of the image's pack in order, resolving deltas."""
    header = layout.parse_header(image, len(image))
    count = pack.parse_pack_header(image[28:40])
    pread = lambda off, n: image[off:off + n]
    pos = 40
    by_offset: dict[int, tuple[str, bytes]] = {}
    by_id: dict[bytes, tuple[str, bytes]] = {}
    pending = []
    for _ in range(count):
        eh = pack.parse_entry_header(image[pos:pos + pack.MAX_ENTRY_HEADER], f"offset {pos}")
        data, used = pack.inflate_from(pread, pos + eh.header_len, eh.size,
                                       header.idx_offset, f"offset {pos}")
        pending.append((pos, eh, data))
        pos += eh.header_len + used
    for off, eh, data in pending:  # git writes bases before their deltas
        if eh.type in pack.BASE_TYPES:
            obj = (pack.TYPE_NAMES[eh.type], data)
        elif eh.type == pack.OBJ_OFS_DELTA:
            btype, bdata = by_offset[off - 28 - eh.base_distance]
            obj = (btype, pack.apply_delta(bdata, data, f"offset {off}"))
        else:
            btype, bdata = by_id[eh.base_id]
            obj = (btype, pack.apply_delta(bdata, data, f"offset {off}"))
        by_offset[off - 28] = obj
        by_id[pack.object_id(*obj)] = obj
    return header, by_offset, by_id


@pytest.fixture(scope="module", params=["ofs", "ref"])
def similar_tree(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("similar")
    rnd = random.Random(1)
    words = [bytes(rnd.choice(b"abcdefghij ") for _ in range(8)) for _ in range(300)]
    base = b"\n".join(rnd.choice(words) for _ in range(3000))
    for v in range(6):
        d = root / f"v{v}"
        d.mkdir()
        text = bytearray(base)
        for _ in range(20):
            i = rnd.randrange(len(text))
            text[i:i] = rnd.choice(words)
        (d / "doc.txt").write_bytes(bytes(text))
        (d / "small").write_text(f"version {v}\n")
    image = tmp_path_factory.mktemp("img") / "similar.img"
    info = git_reference_image(root, image, ofs_delta=request.param == "ofs")
    info["delta_type"] = pack.OBJ_OFS_DELTA if request.param == "ofs" else pack.OBJ_REF_DELTA
    return root, image.read_bytes(), info


def test_scan_matches_git(similar_tree, tmp_path):
    root, image, info = similar_tree
    header, by_offset, by_id = _scan(image)
    assert header.commit_hex == info["commit"]
    kinds = [pack.parse_entry_header(image[28 + o:28 + o + 32], "").type for o in by_offset]
    assert info["delta_type"] in kinds  # the fixture really exercises that delta kind
    for v in range(6):
        blob = (root / f"v{v}" / "doc.txt").read_bytes()
        assert by_id[pack.object_id("blob", blob)] == ("blob", blob)
    commit = objects.parse_commit(by_id[bytes.fromhex(info["commit"])][1], "commit")
    assert commit.tree.hex() == info["tree"]
    assert commit.author.identity == "Test Author <author@example.com>"
    top = objects.parse_tree(by_id[commit.tree][1], "root")
    assert [e.name for e in top] == [f"v{v}" for v in range(6)]
    assert all(e.is_dir for e in top)


def test_idx_lookup_every_object(similar_tree):
    _, image, info = similar_tree
    header, by_offset, by_id = _scan(image)
    pread = lambda off, n: image[off:off + n]
    ix = idxmod.parse_head(image[header.idx_offset:header.idx_offset + idxmod.HEAD_SIZE],
                           header.idx_offset)
    idxmod.check_fits(ix, len(image))
    assert ix.count == len(by_id)
    for off, obj in by_offset.items():
        assert idxmod.lookup(pread, ix, pack.object_id(*obj)) == off
    assert idxmod.lookup(pread, ix, b"\0" * 20) is None
    assert idxmod.lookup(pread, ix, b"\xff" * 20) is None


def test_idx_rejects_non_monotonic_fanout():
    head = bytearray(layout.IDX_SIGNATURE + struct.pack(">I", 2) + struct.pack(">256I", *([5] * 256)))
    struct.pack_into(">I", head, 8 + 4 * 10, 2)
    with pytest.raises(DamagedImage, match="monotonic"):
        idxmod.parse_head(bytes(head), 512)


@given(st.binary(max_size=3000), st.binary(max_size=3000))
@settings(max_examples=60, deadline=None)
def test_apply_delta_roundtrip_with_git_deltas(tmp_path_factory, a, b):
    # A hand-rolled delta: copy the common prefix of a, insert the rest of b.
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    out = bytearray()

    def varint(v):
        while True:
            c = v & 0x7F
            v >>= 7
            out.append(c | (0x80 if v else 0))
            if not v:
                return

    varint(len(a))
    varint(len(b))
    pos = 0
    while pos < common:
        size = min(common - pos, 0x10000)
        out += bytes([0x80 | 0x0F | 0x30, pos & 255, pos >> 8 & 255, pos >> 16 & 255,
                      pos >> 24 & 255, size & 255, size >> 8 & 255])
        pos += size
    rest = b[common:]
    for i in range(0, len(rest), 127):
        out.append(len(rest[i:i + 127]))
        out += rest[i:i + 127]
    assert pack.apply_delta(a, bytes(out), "t") == b


@given(st.binary(max_size=200), st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_apply_delta_garbage_never_crashes(base, delta):
    try:
        pack.apply_delta(base, delta, "t")
    except DamagedImage:
        pass


# -- the tuned decoders against the plain ones in tests/helpers/reference_git.py -------------


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args, "t"))
    except DamagedImage as exc:
        return ("error", exc.what)


@given(st.binary(max_size=300), st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_apply_delta_equals_the_reference_on_garbage(base, delta):
    # Also behind a well-formed header, so that the instructions get exercised.
    framed = varint(len(base)) + delta
    for d in (delta, framed, framed[:1] + varint(len(delta)) + delta):
        assert _outcome(pack.apply_delta, base, d) == _outcome(reference_git.apply_delta, base, d)


@given(st.binary(max_size=3000), st.binary(max_size=3000), st.integers(0, 3000))
@settings(max_examples=200, deadline=None)
def test_apply_delta_equals_the_reference_on_valid_deltas(base, tail, keep):
    head = base[:keep]
    delta = make_delta(head, head + tail)
    out = pack.apply_delta(head, delta, "t")
    assert out == reference_git.apply_delta(head, delta, "t") == head + tail
    # With a header prefix for valid base sizes: garbage instructions after it.
    framed = varint(len(base)) + varint(len(tail)) + tail
    assert (_outcome(pack.apply_delta, base, framed)
            == _outcome(reference_git.apply_delta, base, framed))


@st.composite
def _deltas(draw):
    """Copy and insert instructions as git writes them, sometimes slightly wrong."""
    base = draw(st.binary(min_size=1, max_size=400))
    ops, out = bytearray(), 0
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            off = draw(st.integers(0, len(base) + 3))
            size = draw(st.integers(1, len(base) + 3))
            ops += copy_op(off, size)
            out += size
        else:
            text = draw(st.binary(min_size=1, max_size=127))
            ops += bytes([len(text)]) + text
            out += len(text)
    declared = out + draw(st.sampled_from([0, 0, 0, 1, -1]))
    cut = draw(st.integers(0, 3))
    body = varint(len(base)) + varint(max(declared, 0)) + bytes(ops)
    return base, body[:len(body) - cut] if cut and draw(st.booleans()) else body, declared


@given(_deltas(), st.integers(-1, 1))
@settings(max_examples=400, deadline=None)
def test_apply_delta_equals_the_reference_on_real_instructions(case, slack):
    base, delta, declared = case
    assert (_outcome(pack.apply_delta, base, delta)
            == _outcome(reference_git.apply_delta, base, delta))
    # A result-size limit just around the declared size: the same verdict too.
    limit = max(declared + slack, 0)
    assert (_outcome(lambda b, d, w: pack.apply_delta(b, d, w, limit), base, delta)
            == _outcome(lambda b, d, w: reference_git.apply_delta(b, d, w, limit), base, delta))


@st.composite
def _trees(draw):
    modes = [b"100644", b"100755", b"100664", b"120000", b"40000", b"160000", b"040000",
             b"100600", b"1006444", b"abc", b""]
    names = [b"a", b"b", b".", b"..", b"x/y", b"", b"caf\xc3\xa9", b"\xff", b"a b"]
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        out += (draw(st.sampled_from(modes)) + b" " + draw(st.sampled_from(names)) + b"\0"
                + draw(st.binary(min_size=20, max_size=20)))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(out)))
        out = out[:cut] + draw(st.binary(max_size=4)) + out[cut + 1:]
    return out


@given(_trees())
@settings(max_examples=400, deadline=None)
def test_parse_tree_equals_the_reference(data):
    want = _outcome(reference_git.parse_tree, data)
    assert _outcome(objects.parse_tree_raw, data) == want
    entries = _outcome(objects.parse_tree, data)
    if entries[0] == "ok":
        entries = ("ok", [(e.mode, e.id, objects.encode_name(e.name)) for e in entries[1]])
    assert entries == want


@given(st.binary(min_size=0, max_size=64))
@settings(max_examples=500, deadline=None)
def test_entry_header_garbage(buf):
    try:
        eh = pack.parse_entry_header(buf, "t")
    except DamagedImage:
        return
    assert eh.header_len <= len(buf)


def test_inflater_rejects_size_lies():
    z = zlib.compress(b"x" * 1000)
    with pytest.raises(DamagedImage, match="more than"):
        pack.inflate_from(lambda o, n: z[o:o + n], 0, 10, len(z), "t")
    with pytest.raises(DamagedImage, match="1000 bytes, 2000 declared"):
        pack.inflate_from(lambda o, n: z[o:o + n], 0, 2000, len(z), "t")
    with pytest.raises(DamagedImage, match="truncated|past the end"):
        pack.inflate_from(lambda o, n: z[o:o + n], 0, 1000, len(z) - 3, "t")
    with pytest.raises(DamagedImage, match="zlib"):
        bad = b"\x00" + z[1:]
        pack.inflate_from(lambda o, n: bad[o:o + n], 0, 1000, len(bad), "t")


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b"])
def test_tree_rejects_illegal_names(name):
    with pytest.raises(DamagedImage, match="illegal name"):
        objects.parse_tree(b"100644 " + name + b"\0" + b"\1" * 20, "t")


def test_tree_rejects_unknown_modes_and_duplicates():
    with pytest.raises(DamagedImage, match="mode"):
        objects.parse_tree(b"100600 a\0" + b"\1" * 20, "t")
    with pytest.raises(DamagedImage, match="twice"):
        objects.parse_tree((b"100644 a\0" + b"\1" * 20) * 2, "t")
    with pytest.raises(DamagedImage, match="truncated"):
        objects.parse_tree(b"100644 a\0" + b"\1" * 19, "t")


def test_tree_odd_names_roundtrip():
    raw = b"100644 caf\xc3\xa9 \xff\0" + b"\1" * 20
    (entry,) = objects.parse_tree(raw, "t")
    assert objects.encode_name(entry.name) == "café \udcff".encode("utf-8", "surrogateescape")
    assert objects.encode_name(entry.name) == b"caf\xc3\xa9 \xff"


def test_header_guards():
    with pytest.raises(DamagedImage, match="too small"):
        layout.parse_header(b"\0" * 10)
    with pytest.raises(DamagedImage, match="outside"):
        layout.parse_header(b"\0" * 20 + struct.pack("<Q", 1 << 40), 4096)
    with pytest.raises(DamagedImage, match="inside the header"):
        layout.parse_header(b"\0" * 20 + struct.pack("<Q", 3), 4096)


def test_image_layout_matches_ocaml_padding():
    # 28 + 484 = 512 is aligned: the OCaml builder still adds a whole block.
    assert layout.image_layout(484, 100, 512) == (1024, 1536)
    assert layout.image_layout(100, 512, 512) == (512, 1024 + 512)
    assert layout.image_layout(100, 511, 512) == (512, 1024)
