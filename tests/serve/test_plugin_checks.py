"""The plugin refuses bad images and bad command lines before serving:
one readable line, a non-zero exit (real nbdkit each time).

Its `verify=quick` is `docteur verify --quick`: for damage in every region
that check covers, both refuse, and the plugin says what the command says.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.format import layout
from docteur_core.make import make_image
from docteur_core.blockdev.block import MemoryDevice
from docteur_core.reader.store import Store
from docteur_core.serve import imagecheck
from tests.helpers import forge
from tests.helpers.support import PLUGIN, git_reference_image
from tests.helpers.plugin_support import delta_commit_image, make_source, run_nbdkit_once

pytestmark = [pytest.mark.nbdkit]

DATE = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A reference image (git only) and where its regions are."""
    base = tmp_path_factory.mktemp("checks")
    src = make_source(base / "src", big=200_000)
    image = base / "good.img"
    git_reference_image(src, image)
    data = image.read_bytes()
    info = imagecheck.check_image(MemoryDevice(data))
    idx_offset = layout.parse_header(data[:layout.HEADER_SIZE]).idx_offset
    pack_end = info.extents[0][1]  # first data extent, rounded to 512
    # Exact end of the pack: its checksum is the IDX's copy (40 bytes from its end).
    idx_end = next(e[1] for e in info.extents if e[0] == idx_offset)
    raw_idx_end = idx_offset + data[idx_offset:idx_end].rstrip(b"\0").__len__()
    pack_sha = data[raw_idx_end - 40:raw_idx_end - 20]
    exact_pack_end = data.rfind(pack_sha, 0, idx_offset) + 20
    assert pack_end == layout.align_up(exact_pack_end, 512)
    store = Store(lambda o, n: data[o:o + n], len(data))
    return {"image": image, "data": data, "idx": idx_offset, "pack_end": exact_pack_end,
            "idx_end": raw_idx_end, "base": base, "objects": store.object_count,
            "commit": info.commit_hex, "tree": info.tree_hex,
            "commit_at": store.offset_of(bytes.fromhex(info.commit_hex))}


def _set(data: bytearray, offset: int, value: bytes) -> None:
    data[offset:offset + len(value)] = value


def _flip(data: bytearray, offset: int) -> None:
    data[offset] ^= 0x40


# Each damage: (name, function(bytearray, info) -> bytearray, what verify's
# first problem line must say: its region, and a word of the reason).
DAMAGES = [
    ("tiny", lambda d, g: d[:45], "image: image of 45 bytes is too small"),
    ("idx-in-header", lambda d, g: (_set(d, 20, struct.pack("<Q", 4)), d)[1],
     "header: IDX offset 4"),
    ("idx-outside", lambda d, g: (_set(d, 20, struct.pack("<Q", len(d) + 512)), d)[1],
     "header: IDX offset"),
    ("idx-unaligned", lambda d, g: (_set(d, 20, struct.pack("<Q", g["idx"] + 8)), d)[1],
     "header: IDX offset"),
    ("size-unaligned", lambda d, g: d[:-100], "image"),
    ("truncated", lambda d, g: d[:layout.align_down(g["idx_end"] - 1, 512)], "IDX"),
    ("idx-count", lambda d, g: (_set(d, g["idx"] + 8 + 255 * 4, struct.pack(">I", 10**6)), d)[1],
     "IDX"),
    ("pack-signature", lambda d, g: (_set(d, 28, b"PACX"), d)[1], "PACK header"),
    ("pack-version", lambda d, g: (_set(d, 32, struct.pack(">I", 3)), d)[1], "PACK header"),
    ("pack-count", lambda d, g: (_set(d, 36, struct.pack(">I", g["objects"] + 1)), d)[1],
     "PACK header"),
    ("idx-signature", lambda d, g: (_set(d, g["idx"], b"\xfftOd"), d)[1], "IDX header"),
    ("idx-version", lambda d, g: (_set(d, g["idx"] + 4, struct.pack(">I", 1)), d)[1],
     "IDX header"),
    ("idx-fanout", lambda d, g: (_set(d, g["idx"] + 8, struct.pack(">I", 0xFFFF)), d)[1],
     "IDX fanout"),
    ("idx-checksum", lambda d, g: (_flip(d, g["idx"] + 8 + 1024 + 5), d)[1], "IDX"),
    ("pack-trailer", lambda d, g: (_flip(d, g["pack_end"] - 1), d)[1], "PACK trailer"),
    ("pack-object", lambda d, g: (_flip(d, (g["commit_at"] + g["pack_end"]) // 2), d)[1],
     "PACK trailer"),
    ("pack-padding", lambda d, g: (_set(d, g["idx"] - 1, b"\x01"), d)[1], "padding"),
    ("idx-padding", lambda d, g: (_set(d, len(d) - 1, b"\x01"), d)[1], "padding"),
    ("commit-missing", lambda d, g: (_set(d, 0, b"\x00" * 20), d)[1], "commit"),
    ("commit-is-a-tree", lambda d, g: (_set(d, 0, bytes.fromhex(g["tree"])), d)[1], "commit"),
    ("commit-damaged", lambda d, g: (_flip(d, g["commit_at"] + 10), d)[1], ""),
]


def _assert_refused(proc: subprocess.CompletedProcess, expected: str) -> str:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _verify_quick(image) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", "verify", "--quick", str(image)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name,damage,expected", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_plugin_quick_refuses_what_verify_quick_refuses(good, name, damage, expected):
    bad = good["base"] / f"{name}.img"
    bad.write_bytes(bytes(damage(bytearray(good["data"]), good)))
    cli = _verify_quick(bad)
    assert cli.returncode == 1 and cli.stdout == "", cli
    problems = [line for line in cli.stderr.splitlines() if not line.startswith("docteur ")]
    assert expected in problems[0], cli.stderr
    line = _assert_refused(run_nbdkit_once(f"image={bad}"), problems[0])
    assert str(bad) in line
    more = len(problems) - 1
    assert line.endswith(f"{problems[0]} (and {more} more problems)" if more else problems[0])


def test_plugin_refuses_what_is_no_image(good):
    """10 bytes are no image at all (format/layout.py's rule): verify and
    the plugin say so in the same words."""
    bad = good["base"] / "ten.img"
    bad.write_bytes(good["data"][:10])
    cli = _verify_quick(bad)
    assert cli.returncode == 1 and cli.stderr == (
        f"docteur verify: {bad}: not a docteur image (10 bytes, too small for a header "
        "and a PACK)\n")
    line = _assert_refused(run_nbdkit_once(f"image={bad}"),
                           "image: not a docteur image (10 bytes, too small")
    assert str(bad) in line


def test_good_image_starts(good):
    proc = run_nbdkit_once(f"image={good['image']}")
    assert proc.returncode == 0, proc.stderr


def test_verify_none_checks_the_header_only(good):
    bad = good["base"] / "none.img"
    data = bytearray(good["data"])
    _set(data, 28, b"PACX")
    bad.write_bytes(bytes(data))
    assert run_nbdkit_once(f"image={bad}", "verify=none").returncode == 0
    # Both signatures gone would be no image at all (format/layout.py): keep the PACK's.
    _set(data, 28, b"PACK")
    _set(data, 20, struct.pack("<Q", 4))
    bad.write_bytes(bytes(data))
    _assert_refused(run_nbdkit_once(f"image={bad}", "verify=none"), "inside the header")


def test_verify_full_finds_what_quick_does_not(tmp_path):
    """A blob whose IDX id is a lie, with every checksum recomputed to match:
    quick sees a consistent image, full does the Merkle check."""
    liar = forge.Obj("blob", b"not what the id says\n", oid=bytes.fromhex("ab" * 20))
    objs, commit_id = forge.simple({"file.txt": liar})
    image = tmp_path / "liar.img"
    image.write_bytes(bytes(forge.build(objs, commit_id)))
    assert _verify_quick(image).returncode == 0
    assert run_nbdkit_once(f"image={image}").returncode == 0
    _assert_refused(run_nbdkit_once(f"image={image}", "verify=full"), "IDX ids: IDX lists " + "ab" * 20)


def test_a_bad_image_in_dir_stops_nbdkit(good, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "ok.img").write_bytes(good["data"])
    data = bytearray(good["data"])
    _set(data, 28, b"PACX")
    (folder / "zz.img").write_bytes(bytes(data))
    _assert_refused(run_nbdkit_once(f"dir={folder}"), "zz.img: PACK header: bad PACK signature")


@pytest.mark.parametrize("args,expected", [
    ((), "give exactly one of image=PATH, dir=FOLDER or url=URL"),
    (("url=http://127.0.0.1:9/x.img",), "url= needs commit=ID"),
    (("url=ftp://example/x.img", "commit=" + "a" * 40), "url='ftp://example/x.img': an http"),
    (("url=http://127.0.0.1:9/x.img", "commit=" + "a" * 40),
     "127.0.0.1:9/x.img: cannot reach 127.0.0.1 port 9"),
    (("image=/nonexistent/disk.img",), "/nonexistent/disk.img: cannot open: No such file"),
    (("frobnicate=1",), "unknown key 'frobnicate'"),
    (("verify=sometimes",), "verify='sometimes': must be one of none, quick, full"),
    (("thread_model=wild",), "thread_model='wild': must be one of"),
    (("dir=/nonexistent",), "dir=/nonexistent: not a directory"),
    (("image=a", "image=b"), "image= given twice"),
])
def test_bad_command_lines(args, expected):
    _assert_refused(run_nbdkit_once(*args), expected)


def test_bad_command_lines_with_images(good, tmp_path):
    image = f"image={good['image']}"
    _assert_refused(run_nbdkit_once(image, f"dir={tmp_path}"), "give exactly one of")
    _assert_refused(run_nbdkit_once(image, "default=x"), "default= only makes sense with dir=")
    _assert_refused(run_nbdkit_once(f"dir={tmp_path}"), "no *.img file to serve")
    (tmp_path / "a.img").write_bytes(good["data"])
    _assert_refused(run_nbdkit_once(f"dir={tmp_path}", "default=b"), "default=b: no b.img in")


def test_help_documents_every_key():
    proc = subprocess.run(["nbdkit", "python", str(PLUGIN), "help=1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    standalone = subprocess.run([sys.executable, str(PLUGIN), "--help"],
                                capture_output=True, text=True)
    assert standalone.returncode == 0
    for text in (proc.stdout, standalone.stdout):
        for key in ("image=", "dir=", "default=", "verify=quick", "verify=full",
                    "verify=none", "thread_model=", "pin=true", "help="):
            assert key in text


# -- pure parts ------------------------------------------------------------------------

EXTENTS = ((0, 4096, 0), (4096, 8192, 3), (8192, 9728, 0), (9728, 12288, 3))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 12287), st.integers(1, 20000), st.booleans())
def test_extents_in_covers_the_request(offset, count, first_only):
    count = min(count, 12288 - offset)
    got = imagecheck.extents_in(EXTENTS, offset, count, first_only)
    assert got and got[0][0] == offset
    pos = offset
    for start, length, typ in got:
        assert start == pos and length > 0
        assert any(s <= start and start + length <= e and t == typ for s, e, t in EXTENTS)
        pos += length
    if not first_only:
        assert pos == offset + count


@given(st.integers(1, 1 << 20).map(lambda n: n * 512), st.integers(1, 1 << 20))
def test_inferred_block_size_divides_offset_and_size(idx_offset, blocks):
    size = idx_offset + blocks * 512
    bs = imagecheck.inferred_block_size(idx_offset, size)
    assert 512 <= bs <= layout.MAX_BLOCK_SIZE and idx_offset % bs == 0 and size % bs == 0
    if bs < layout.MAX_BLOCK_SIZE:
        assert idx_offset % (2 * bs) or size % (2 * bs)


def test_plugin_found_through_a_symlink_from_elsewhere(good, tmp_path):
    """nbdkit's Python is not ours: the plugin finds docteur_core from its own
    real location, whatever the current directory or link used."""
    link = tmp_path / "bin" / "docteur.py"
    link.parent.mkdir()
    link.symlink_to(PLUGIN)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        ["nbdkit", "-U", str(tmp_path / "s.sock"), "--run", "nbdinfo --size \"$uri\"",
         "python", str(link), f"image={good['image']}"],
        capture_output=True, text=True, timeout=60, cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) == len(good["data"])


@pytest.mark.parametrize("ofs_delta", [True, False], ids=["ofs-delta", "ref-delta"])
def test_a_commit_stored_as_a_delta_is_described(tmp_path, ofs_delta):
    """git deltifies commits too: the description follows the header's
    commit through its delta chain to its tree (real nbdkit, nbdinfo)."""
    from docteur_core.format import pack

    image = tmp_path / "delta.img"
    made = delta_commit_image(image, ofs_delta)
    data = image.read_bytes()
    at = Store(lambda o, n: data[o:o + n], len(data)).offset_of(bytes.fromhex(made["commit"]))
    assert data[at] >> 4 & 7 == (pack.OBJ_OFS_DELTA if ofs_delta else pack.OBJ_REF_DELTA)
    proc = subprocess.run(
        ["nbdkit", "-U", str(tmp_path / "s.sock"), "--run", 'nbdinfo --json "$uri"',
         "python", str(PLUGIN), f"image={image}"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (export,) = json.loads(proc.stdout)["exports"]
    assert export["description"] == f"docteur image: commit {made['commit']} tree {made['tree']}"
