"""The IDX's 64-bit offset table, end to end, on a small image.

An .idx v2 keeps offsets below 2^31 in its 32-bit table; an object at 2^31
or beyond gets the high bit set there and its offset in a table of uint64
after it. Images larger than 2 GiB depend on the whole chain reading that
table. git can be told to use it for any object above a threshold
(`--index-version=2,<threshold>`), which gives images of a few kilobytes
with the same structure as a 3 GiB one; they are assembled here from
git's pack and idx with `docteur_core.format.layout`, as
`tests.helpers.support.git_reference_image` does. The same image must then read
back file for file with `docteur_core.reader.Image` (fast and light, from
the file and through the nbdkit plugin) and pass `docteur verify`.

A real build of more than 2 GiB is in bench/large.py (it needs ~9 GiB of
disk and minutes, too much for CI).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.format import layout
from docteur_core.blockdev.block import FileDevice
from docteur_core.errors import DocteurError
from docteur_core.reader import MODES, Image
from docteur_core.verify import verify_image
from tests.helpers.support import PLUGIN, REPO_ROOT, NbdkitServer, git, git_reference_pack
from tests.helpers.gitoracle import source_listing


def make_source(root: Path) -> Path:
    """Files in versions of one another (so the pack has OFS_DELTA chains), in folders."""
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(300))
    for v in range(6):
        d = root / f"v{v}" / "docs"
        d.mkdir(parents=True)
        (d / "guide.txt").write_text(text.replace("line 1", f"line 1 (v{v})")
                                     + f"version {v}\n" * v)
        (d / "notes.md").write_text(f"# notes {v}\n" + text[: 2000 + 500 * v])
        (root / f"v{v}" / "run.sh").write_text(f"#!/bin/sh\necho {v}\n")
        os.chmod(root / f"v{v}" / "run.sh", 0o755)
        os.symlink("docs/guide.txt", root / f"v{v}" / "guide")
    (root / "random.bin").write_bytes(os.urandom(20000))
    (root / ".hidden").write_text("hidden\n")
    return root


def pack_with_threshold(source: Path, threshold: int | None) -> tuple[str, bytes, bytes]:
    """(commit, pack, idx) of `source`, objects above `threshold` in the 64-bit table."""
    version = "2" if threshold is None else f"2,{threshold}"
    commit, _, pack, idx = git_reference_pack(source, "large offsets", index_version=version)
    return commit, pack, idx


def idx_offsets(idx: bytes) -> tuple[list[int], int]:
    """(every object's pack offset, how many come from the 64-bit table)."""
    count = struct.unpack_from(">I", idx, 8 + 255 * 4)[0]
    small_at = 8 + 1024 + 24 * count
    large_at = small_at + 4 * count
    offsets, n_large = [], 0
    for i in range(count):
        o = struct.unpack_from(">I", idx, small_at + 4 * i)[0]
        if o & 0x80000000:
            n_large += 1
            o = struct.unpack_from(">Q", idx, large_at + 8 * (o & 0x7FFFFFFF))[0]
        offsets.append(o)
    return offsets, n_large


def assemble(path: Path, commit: str, pack: bytes, idx: bytes, block_size: int = 512) -> Path:
    idx_offset, size = layout.image_layout(len(pack), len(idx), block_size)
    data = bytearray(size)
    data[:layout.HEADER_SIZE] = layout.encode_header(bytes.fromhex(commit), idx_offset)
    data[layout.PACK_OFFSET:layout.PACK_OFFSET + len(pack)] = pack
    data[idx_offset:idx_offset + len(idx)] = idx
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_source(tmp_path_factory.mktemp("large-src"))


@pytest.fixture(scope="module")
def plain(source) -> tuple[str, bytes, bytes]:
    return pack_with_threshold(source, None)


@pytest.fixture(scope="module", params=["all", "upper-half"])
def large_image(request, source, plain, tmp_path_factory) -> dict:
    """An image whose IDX puts all objects (or those past the middle) in the 64-bit table."""
    offsets, n_large = idx_offsets(plain[2])
    assert n_large == 0  # git's default: nothing there below 2^31
    # git keeps at most count - 1 entries in the 64-bit table (the first
    # object, at offset 12, is always below 2^31): "all" is all but that one.
    threshold = min(offsets) if request.param == "all" else sorted(offsets)[len(offsets) // 2]
    commit, pack, idx = pack_with_threshold(source, threshold)
    assert commit == plain[0] and pack == plain[1]  # only the idx differs
    offsets64, n_large = idx_offsets(idx)
    assert offsets64 == offsets
    assert n_large == sum(1 for o in offsets if o > threshold) > 0
    assert n_large == len(offsets) - 1 if request.param == "all" else n_large < len(offsets)
    path = assemble(tmp_path_factory.mktemp("large-img") / "large.img", commit, pack, idx)
    return {"path": path, "commit": commit, "pack": pack, "idx": idx, "threshold": threshold,
            "large": n_large}


def test_git_agrees_with_the_idx(large_image, tmp_path):
    """git index-pack, told the same threshold, writes the same idx; verify-pack accepts it."""
    pack = tmp_path / "p.pack"
    pack.write_bytes(large_image["pack"])
    git("index-pack", f"--index-version=2,{large_image['threshold']}", "-o",
        str(tmp_path / "p.idx"), str(pack))
    assert (tmp_path / "p.idx").read_bytes() == large_image["idx"]
    git("verify-pack", str(tmp_path / "p.idx"))


def expected_files(source: Path) -> dict[str, bytes]:
    return {os.fsdecode(p): content for p, (mode, content) in source_listing(source).items()
            if mode != "040000"}


def read_all(img: Image) -> dict[str, bytes]:
    """Every file's content and every link's target, by path."""
    return {node.path: img.readlink(node.path).encode() if node.mode == 0o120000
            else img.get(node.path) for node in img.files()}


@pytest.mark.parametrize("mode", MODES)
def test_reader_reads_every_file(large_image, source, mode):
    files = expected_files(source)
    with Image.open(str(large_image["path"]), mode) as img:
        assert img.commit.id == large_image["commit"]
        assert read_all(img) == files


@pytest.mark.parametrize("mode", MODES)
def test_reader_stats_every_file(large_image, source, mode):
    """Sizes come from object headers (delta headers for deltas), before any content is read."""
    files = expected_files(source)
    with Image.open(str(large_image["path"]), mode) as img:
        assert {path: img.stat(path).size for path in files} == {
            path: len(content) for path, content in files.items()}


@pytest.mark.parametrize("quick", [False, True])
def test_verify_passes(large_image, quick):
    with FileDevice(large_image["path"]) as dev:
        report = verify_image(dev, quick=quick)
    assert report.ok, report.problem_lines()
    assert report.commit == large_image["commit"]


def test_verify_command(large_image):
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "verify",
                           str(large_image["path"])], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"commit\t: {large_image['commit']}\n")


def test_verify_catches_wrong_large_offsets(large_image, tmp_path):
    """The 64-bit table is really checked: offsets one byte off are found."""
    bad = corrupt_large_offsets(large_image["path"], tmp_path / "bad.img")
    with FileDevice(bad) as dev:
        assert not verify_image(dev).ok


@pytest.mark.nbdkit
@pytest.mark.parametrize("mode", MODES)
def test_plugin_serves_it(large_image, source, mode):
    files = expected_files(source)
    with NbdkitServer(PLUGIN, f"image={large_image['path']}", unix=True) as server:
        with Image.open(server.uri, mode) as img:
            assert img.commit.id == large_image["commit"]
            assert read_all(img) == files


def corrupt_large_offsets(image: Path, out: Path) -> Path:
    """A copy of `image` whose 64-bit offsets all point one byte too far."""
    data = bytearray(image.read_bytes())
    header = layout.parse_header(bytes(data), len(data))
    count = struct.unpack_from(">I", data, header.idx_offset + 8 + 255 * 4)[0]
    small_at = header.idx_offset + 8 + 1024 + 24 * count
    n_large = sum(1 for i in range(count)
                  if struct.unpack_from(">I", data, small_at + 4 * i)[0] & 0x80000000)
    for k in range(n_large):
        at = small_at + 4 * count + 8 * k
        struct.pack_into(">Q", data, at, struct.unpack_from(">Q", data, at)[0] + 1)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_reader_uses_the_large_table(large_image, source, tmp_path, mode):
    """Wrong 64-bit offsets make reading fail cleanly: the table is really used."""
    bad = corrupt_large_offsets(large_image["path"], tmp_path / "bad.img")
    with pytest.raises(DocteurError):
        with Image.open(str(bad), mode, verify=True) as img:
            read_all(img)
