"""The pure git-format layer (pack entries, deltas, idx, trees, commits),
judged against git's own reading of packs that git itself wrote."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core import idx as idxmod
from docteur_core import layout, objects, pack
from docteur_core.errors import DamagedImage

from .support import git, git_reference_image


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
