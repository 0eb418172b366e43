"""`docteur make --compress max|zopfli`: libdeflate (and zopfli) streams,
everything else unchanged.

Small corpora and few zopfli iterations keep this fast; what is checked is
what the layout promises, with git and the OCaml docteur as oracles: the
PACK region indexes to the IDX region, verify-pack passes, every file reads
back, each entry keeps its type, header fields and inflated bytes while its
stream never grows, zopfli's entries are never longer than max's, and the
bytes do not depend on the run, the worker count or the batching.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docteur_core.make import make_image
from docteur_core.make.pathindex import idx_offsets
from docteur_core.format.encoders import LIBDEFLATE, ZOPFLI, Encoder
from docteur_core.make import recompress
from docteur_core.make.recompress import (encode_ofs_distance, encoders_for, plan_batches,
                                          recompress_pack)
from docteur_core.format import layout
from docteur_core.format import pathindex as pix
from docteur_core.format.pack import OBJ_OFS_DELTA, parse_entry_header
from docteur_core.reader import Image
from docteur_core.verify import verify_image
from docteur_core.blockdev.block import MemoryDevice
from tests.helpers import ocaml_oracle as oc
from tests.helpers.gitoracle import check_image, image_listing, source_listing
from tests.helpers.ocaml_oracle import DATE, agree, same_verify

REPO_ROOT = Path(__file__).resolve().parents[2]
ITER = 2  # zopfli iterations: enough to beat zlib, fast on small files


@given(st.integers(min_value=1, max_value=1 << 62))
@settings(max_examples=300)
def test_ofs_distance_encoding_is_what_the_parser_reads(distance):
    raw = bytes([OBJ_OFS_DELTA << 4 | 5]) + encode_ofs_distance(distance)
    head = parse_entry_header(raw, "test")
    assert head.base_distance == distance and head.header_len == len(raw)


def _corpus(root: Path) -> None:
    """Versions of the same files (deltas, some chained), text, an incompressible blob."""
    rng = random.Random(7)
    words = [f"word{i}" for i in range(300)]
    base = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400))
    for v in range(6):
        d = root / f"v{v}"
        d.mkdir(parents=True)
        lines = base.splitlines()
        for k in range(v * 3):
            lines[rng.randrange(len(lines))] = f"changed {v} {k}"
        (d / "module.py").write_text("\n".join(lines) + "\n")
        (d / "small.txt").write_text(f"version {v}\n")
    (root / "random.bin").write_bytes(rng.randbytes(20000))
    (root / "empty").write_bytes(b"")
    (root / "tool").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "tool", 0o755)
    os.symlink("v0/module.py", root / "link")


def _pack_of(img: Path) -> tuple[bytes, bytes]:
    """(PACK, IDX) regions of an image."""
    data = img.read_bytes()
    header = layout.parse_header(data, len(data))
    from tests.helpers.gitoracle import idx_length, pack_end
    data = data[:len(data)]
    end = pack_end(data, header.idx_offset, 512)
    idx = data[header.idx_offset:header.idx_offset + idx_length(data, header.idx_offset)]
    return data[layout.PACK_OFFSET:end], idx


def _entries(pack: bytes, idx: bytes) -> dict[bytes, tuple]:
    """sha -> (type, size, base sha or id, inflated bytes, stream length)."""
    offsets = idx_offsets(idx)
    by_offset = {off: sha for sha, off in offsets.items()}
    ends = sorted(offsets.values()) + [len(pack) - 20]
    out = {}
    for i, off in enumerate(ends[:-1]):
        head = parse_entry_header(pack[off:off + 32], "t", max_size=None)
        stream = pack[off + head.header_len:ends[i + 1]]
        d = zlib.decompressobj()
        content = d.decompress(stream)
        assert d.eof and not d.unused_data
        base = (by_offset[off - head.base_distance] if head.base_distance else head.base_id)
        out[by_offset[off]] = (head.type, head.size, base, content, len(stream))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    src = tmp / "src"
    _corpus(src)
    default, best, zop = tmp / "default.img", tmp / "max.img", tmp / "zopfli.img"
    make_image(src, default, date=DATE, warn=lambda w: None)
    make_image(src, best, date=DATE, warn=lambda w: None, compress="max")
    make_image(src, zop, date=DATE, warn=lambda w: None, compress="zopfli",
               zopfli_iterations=ITER)
    return tmp, src, default, best, zop


@pytest.mark.parametrize("level", ["max", "zopfli"])
def test_max_keeps_every_entry_and_never_grows_one(built, level):
    tmp, src, default, best, zop = built
    image = best if level == "max" else zop
    a = _entries(*_pack_of(default))
    b = _entries(*_pack_of(image))
    assert a.keys() == b.keys()
    assert any(e[0] == OBJ_OFS_DELTA for e in a.values())  # the corpus has deltas
    shrunk = 0
    for sha, (typ, size, base, content, length) in a.items():
        typ2, size2, base2, content2, length2 = b[sha]
        assert (typ2, size2, base2, content2) == (typ, size, base, content)
        assert length2 <= length
        shrunk += length2 < length
    assert shrunk > 0
    assert len(_pack_of(image)[0]) < len(_pack_of(default)[0])
    assert image.stat().st_size <= default.stat().st_size


def test_zopfli_keeps_libdeflates_stream_where_it_does_not_win(built):
    """--compress zopfli tries libdeflate 12 first: no entry is longer than max's,
    and where zopfli is shorter its stream is the one kept."""
    tmp, src, default, best, zop = built
    m = _entries(*_pack_of(best))
    z = _entries(*_pack_of(zop))
    assert all(z[sha][4] <= m[sha][4] for sha in m)
    pack, idx = _pack_of(default)
    git = _entries(pack, idx)
    zopfli_alone = Encoder(ZOPFLI, ITER)
    for sha, (typ, size, base, content, length) in git.items():
        best_len = min(length, m[sha][4], len(zopfli_alone.compress(content)))
        assert z[sha][4] == best_len


def test_max_image_passes_git_and_reads_back(built):
    tmp, src, default, best, zop = built
    work = tmp / "git-max"
    work.mkdir()
    checked = check_image(best, work)  # index-pack gives the IDX region; verify-pack
    assert image_listing(checked.git_dir, checked.commit) == source_listing(src)
    data = best.read_bytes()
    assert pix.has_magic(data[-pix.SUPER_SIZE:])
    assert verify_image(MemoryDevice(data)).ok
    assert verify_image(MemoryDevice(data), quick=True).ok
    expected = source_listing(src)
    for mode in ("fast", "light"):
        for use_index in (True, False):
            with Image.open(str(best), mode=mode, path_index=use_index) as image:
                assert (image.path_index is not None) == use_index
                for path, (fmode, content) in expected.items():
                    if fmode in ("100644", "100755"):
                        assert image.get(path.decode()) == content
    # The path index's offsets are the new pack's (a fast walk takes them from the IDX).
    with Image.open(str(best), mode="fast") as image, \
            Image.open(str(best), mode="fast", path_index=False) as walked:
        for folder in ("", "v1", "v5"):
            got = image.entries(folder)
            assert got == walked.entries(folder)
            assert all(n.offset for n in got)


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
@pytest.mark.parametrize("level", ["max", "zopfli"])
def test_max_is_deterministic_and_independent_of_workers(built, tmp_path, monkeypatch, level):
    tmp, src, default, best, zop = built
    image = best if level == "max" else zop
    again = tmp_path / "again.img"
    make_image(src, again, date=DATE, warn=lambda w: None, compress=level,
               zopfli_iterations=ITER)
    assert again.read_bytes() == image.read_bytes()
    # The same pack re-encoded by one process and by two, in the usual
    # batches and in batches of one or two entries: same bytes.
    pack, idx = _pack_of(default)
    outs = []
    for workers, batch in ((1, None), (2, None), (2, 1), (1, 2)):
        if batch is not None:
            monkeypatch.setattr(recompress, "BATCH_ENTRIES", batch)
        p, i = tmp_path / f"w{workers}.pack", tmp_path / f"w{workers}.idx"
        p.write_bytes(pack)
        i.write_bytes(idx)
        old, new = recompress_pack(str(p), str(i), encoders_for(level, ITER), workers=workers)
        assert (old, new) == (len(pack), p.stat().st_size) and new < old
        outs.append((p.read_bytes(), i.read_bytes()))
    assert all(out == outs[0] for out in outs)
    assert outs[0][0] == _pack_of(image)[0]


class _E:
    """The fields of an entry `plan_batches` reads."""

    def __init__(self, size: int, stream: int) -> None:
        self.size, self.stream_at, self.end = size, 0, stream


@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(1, 700)), max_size=60),
       st.integers(1, 2000), st.integers(1, 1500), st.integers(1, 7))
def test_batches_cover_every_entry_once_in_pack_order(sizes, max_reencode, batch_bytes,
                                                      batch_entries):
    entries = [_E(size, stream) for size, stream in sizes]
    batches = plan_batches(entries, max_reencode, batch_bytes, batch_entries)
    covered: list[int] = []
    for b in batches:
        if b is None:
            covered.append(len(covered))
            assert entries[covered[-1]].size > max_reencode
            continue
        first, stop = b
        assert first == len(covered) and 0 < stop - first <= batch_entries
        assert sum(entries[k].end for k in range(first, stop - 1)) < batch_bytes
        assert all(entries[k].size <= max_reencode for k in range(first, stop))
        covered += range(first, stop)
    assert covered == list(range(len(entries)))


def test_entries_over_the_reencode_limit_keep_gits_stream(built, tmp_path):
    tmp, src, default, best, zop = built
    pack, idx = _pack_of(default)
    p, i = tmp_path / "x.pack", tmp_path / "x.idx"
    p.write_bytes(pack)
    i.write_bytes(idx)
    recompress_pack(str(p), str(i), encoders_for("max"), workers=2, max_reencode=1000)
    a = _entries(pack, idx)
    b = _entries(p.read_bytes(), i.read_bytes())
    for sha, e in a.items():
        if e[1] > 1000:
            assert b[sha][4] == e[4]  # stream length kept: git's stream
        assert b[sha][:4] == e[:4]
    git_dir = tmp_path / "g.git"
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    shutil.copy(p, git_dir / "objects" / "pack" / "pack-x.pack")
    subprocess.run(["git", "index-pack", "-o", str(tmp_path / "git.idx"),
                    str(git_dir / "objects" / "pack" / "pack-x.pack")], check=True,
                   capture_output=True)
    assert (tmp_path / "git.idx").read_bytes() == i.read_bytes()


@pytest.mark.oracle
def test_the_ocaml_docteur_verifies_and_reads_a_max_image(built, tmp_path):
    tmp, src, default, best, zop = built
    oracle = oc.Oracle(oc.built())
    plain = tmp_path / "ocaml.img"
    make_image(src, plain, date=DATE, warn=lambda w: None, compress="max",
               compat="ocaml", path_index=False)
    for img in (best, zop, plain):
        same_verify(oracle, img)
        agree(oracle, img)


def _cli(*args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`docteur ARGS` in a fresh Python where the modules `block` names cannot be imported."""
    prelude = "import sys; " + "".join(f"sys.modules[{m!r}] = None; " for m in block)
    code = prelude + "from docteur_core.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.parametrize("level,block,extra", [
    ("max", ("deflate",), "deflate"),
    ("zopfli", ("zopfli", "zopfli.zlib"), "zopfli"),
    ("zopfli", ("deflate", "zopfli", "zopfli.zlib"), "deflate and zopfli packages"),
])
def test_without_its_library_a_level_fails_with_one_line_naming_the_extra(tmp_path, level,
                                                                           block, extra):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hello\n")
    img = tmp_path / "a.img"
    proc = _cli("make", "--compress", level, str(src), str(img), block=block)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'docteur[{level}]'" in lines[0], proc.stderr
    assert extra in lines[0]
    assert not img.exists()
    # default needs neither library
    proc = _cli("make", "-q", "--compress", "default", str(src), str(img),
                block=("deflate", "zopfli", "zopfli.zlib"))
    assert proc.returncode == 0, proc.stderr
    assert img.exists()


def test_max_needs_no_zopfli(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hello hello hello hello hello hello\n" * 50)
    img = tmp_path / "a.img"
    proc = _cli("make", "-q", "--compress", "max", "--date", DATE, str(src), str(img),
                block=("zopfli", "zopfli.zlib"))
    assert proc.returncode == 0, proc.stderr
    with Image.open(str(img)) as image:
        assert image.get("f") == (src / "f").read_bytes()


def test_cli_max_and_bad_iterations(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("hello hello hello hello hello hello\n" * 50)
    img = tmp_path / "a.img"
    proc = _cli("make", "--compress", "max", "--zopfli-iterations", "0", str(src), str(img))
    assert proc.returncode == 2, proc.stderr  # a usage error, as every bad option value
    assert proc.stderr.splitlines()[-1] == ("docteur make: error: argument --zopfli-iterations: "
                                            "'0' is not a positive whole number")
    assert not img.exists()
    proc = _cli("make", "-q", "--compress", "zopfli", "--zopfli-iterations", "1",
                "--date", DATE, str(src), str(img))
    assert proc.returncode == 0, proc.stderr
    with Image.open(str(img)) as image:
        assert image.get("f") == (src / "f").read_bytes()
