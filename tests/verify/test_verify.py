"""`docteur verify`: judged against git's own reading of the same pack.

Valid images of every kind of source must verify and print what git says
about the commit; every region of an image, damaged one byte at a time,
must be reported under its own name; hostile files must give a clear
error, never a traceback.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.format import pack
from docteur_core.blockdev.block import FileDevice, MemoryDevice
from docteur_core.make import make_image
from docteur_core.verify import verify_image
from docteur_core.verify.command import ocaml_quoted

from tests.helpers.forge import pack_entry, pack_file, varint, wrap_image
from tests.helpers.support import REPO_ROOT, NbdkitServer, free_port, git, git_reference_image

AUTHOR_NAME = 'Zoë "Z" O\'Brien \\ Jr'
AUTHOR = f"{AUTHOR_NAME} <zoe@example.com>"
MESSAGE = "Snapshot of the tree\n\nWith a body paragraph,\nand a second line.\n"


def docteur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def _write_tree(root: Path, seed: int = 1) -> None:
    """Files similar enough for git to deltify, plus links, modes, empty files."""
    rnd = random.Random(seed)
    words = [bytes(rnd.choice(b"abcdefgh ") for _ in range(7)) for _ in range(200)]
    base = b"\n".join(rnd.choice(words) for _ in range(700))
    for v in range(4):
        d = root / f"v{v}" / "docs"
        d.mkdir(parents=True)
        text = bytearray(base)
        for _ in range(12):
            i = rnd.randrange(len(text))
            text[i:i] = rnd.choice(words)
        (d / "guide.txt").write_bytes(bytes(text))
        (root / f"v{v}" / "VERSION").write_text(f"{v}\n")
    (root / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("v0/VERSION", root / "latest")
    (root / "caf\u00e9 \u00e0 la cr\u00e8me.txt").write_text("unicode name\n")


def git_view(image: Path, tmp: Path) -> Path:
    """A bare repository holding the image's PACK and IDX, for git to judge."""
    data = image.read_bytes()
    idx_offset = struct.unpack_from("<Q", data, 20)[0]
    count = struct.unpack_from(">I", data, idx_offset + 8 + 4 * 255)[0]
    main = 1032 + 28 * count
    offsets = data[idx_offset + 1032 + 24 * count:idx_offset + main]
    large = sum(1 for b in offsets[0::4] if b & 0x80)
    idx = data[idx_offset:idx_offset + main + 8 * large + 40]
    trailer = data.rfind(idx[-40:-20], 0, idx_offset)
    gitdir = tmp / f"view-{image.stem}.git"
    git("init", "-q", "--bare", str(gitdir))
    (gitdir / "objects" / "pack" / "pack-x.pack").write_bytes(data[28:trailer + 20])
    (gitdir / "objects" / "pack" / "pack-x.idx").write_bytes(idx)
    # A snapshot holds no parents: tell git the commit is a shallow boundary.
    (gitdir / "shallow").write_text(data[:20].hex() + "\n")
    return gitdir


def expected_output(gitdir: Path, commit: str) -> str:
    """What the OCaml `docteur.verify` prints, from git's reading of the commit."""
    g = lambda *a: git(f"--git-dir={gitdir}", *a).decode("utf-8")
    name, email = g("log", "-1", "--format=%an%n%ae", commit).split("\n")[:2]
    tree = g("rev-parse", f"{commit}^{{tree}}").strip()
    raw = git(f"--git-dir={gitdir}", "cat-file", "commit", commit).decode("utf-8")
    message = raw.split("\n\n", 1)[1]
    return (f"commit\t: {commit}\nauthor\t: {ocaml_quoted(name)} <{email}>\n"
            f"root\t: {tree}\n\n{message}\n")


def expected_counts(gitdir: Path, commit: str) -> dict:
    out = git(f"--git-dir={gitdir}", "ls-tree", "-r", "-t", "-l", "-z", commit).split(b"\0")
    counts = {"files": 0, "links": 0, "gitlinks": 0, "directories": 0, "bytes": 0}
    for line in filter(None, out):
        meta, _ = line.split(b"\t", 1)
        mode, kind, _, size = meta.split()
        if kind == b"tree":
            counts["directories"] += 1
        elif kind == b"commit":
            counts["gitlinks"] += 1
        else:
            counts["links" if mode == b"120000" else "files"] += 1
            counts["bytes"] += int(size)
    return counts


# -- images of every kind of source ------------------------------------------


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("verify-src")
    tree = root / "dir"
    tree.mkdir()
    _write_tree(tree)
    # A repository with history, a gitlink, and the odd author.
    work = root / "work"
    git("init", "-q", str(work))
    _write_tree(work, seed=2)
    env = {"GIT_AUTHOR_NAME": AUTHOR_NAME, "GIT_AUTHOR_EMAIL": "zoe@example.com"}
    git("add", "-A", ".", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work, env=env)
    (work / "v1" / "VERSION").write_text("changed\n")
    git("add", "-A", ".", cwd=work)
    git("update-index", "--add", "--cacheinfo",
        "160000,1234567890123456789012345678901234567890,vendored", cwd=work)
    git("commit", "-q", "-m", MESSAGE.rstrip("\n"), cwd=work, env=env)
    srv = root / "srv"
    git("clone", "-q", "--bare", str(work), str(srv / "project.git"))
    return {"root": root, "dir": tree, "repo": work, "srv": srv}


@pytest.fixture(scope="module")
def git_daemon(sources):
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={sources['srv']}",
         "--listen=127.0.0.1", f"--port={port}", str(sources["srv"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        import time
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("git daemon did not start")
                time.sleep(0.05)
        yield f"git://127.0.0.1:{port}/project.git"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def images(sources, tmp_path_factory) -> dict:
    """name -> (image path, commit hex)."""
    out = tmp_path_factory.mktemp("verify-img")
    found = {}
    r = make_image(sources["dir"], out / "dir.img", date="2021-02-03T04:05:06Z",
                   author=AUTHOR, message=MESSAGE)
    found["directory"] = (out / "dir.img", r.commit)
    r = make_image(sources["repo"], out / "repo.img")
    found["repository"] = (out / "repo.img", r.commit)
    r = make_image(sources["dir"], out / "dir4k.img", date="2021-02-03T04:05:06Z",
                   author=AUTHOR, message=MESSAGE, block_size=4096)
    found["directory-4k"] = (out / "dir4k.img", r.commit)
    for kind in ("ofs", "ref"):
        info = git_reference_image(sources["dir"], out / f"ref-{kind}.img",
                                   message=MESSAGE, ofs_delta=kind == "ofs")
        found[f"reference-{kind}"] = (out / f"ref-{kind}.img", info["commit"])
    return found


@pytest.mark.parametrize("kind", ["directory", "repository", "directory-4k",
                                  "reference-ofs", "reference-ref"])
def test_valid_images_print_what_git_says(images, kind, tmp_path):
    image, commit = images[kind]
    gitdir = git_view(image, tmp_path)
    result = docteur("verify", image)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_output(gitdir, commit)
    assert "Traceback" not in result.stderr


def test_remote_source_verifies(git_daemon, sources, tmp_path):
    result = make_image(git_daemon, tmp_path / "remote.img")
    head = git("rev-parse", "HEAD", cwd=sources["repo"]).decode().strip()
    assert result.commit == head
    out = docteur("verify", tmp_path / "remote.img")
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected_output(git_view(tmp_path / "remote.img", tmp_path), head)
    assert f'author\t: {ocaml_quoted(AUTHOR_NAME)} <zoe@example.com>\n' in out.stdout


def test_json_has_fields_counts_and_checks(images, tmp_path):
    image, commit = images["repository"]
    gitdir = git_view(image, tmp_path)
    result = docteur("verify", "--json", image)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["commit"] == commit
    assert report["root"] == git(f"--git-dir={gitdir}", "rev-parse",
                                 f"{commit}^{{tree}}").decode().strip()
    assert report["author"]["name"] == AUTHOR_NAME
    assert report["message"] == MESSAGE
    want = expected_counts(gitdir, commit)
    assert want["gitlinks"] == 1 and want["links"] == 1  # the fixture covers them
    assert {k: report["counts"][k] for k in want} == want
    objects = git(f"--git-dir={gitdir}", "rev-list", "--objects", commit).splitlines()
    assert report["counts"]["objects"] == len(objects)
    for check in ("header", "padding", "pack-entries", "zlib-streams", "deltas",
                  "pack-checksum", "idx-fanout", "idx-ids-sorted", "idx-offsets",
                  "idx-crcs", "idx-pack-checksum", "idx-checksum", "idx-matches-pack",
                  "object-ids", "commit", "reachability"):
        assert check in report["checks"]
    assert report["counts"]["deltas"] > 0


def test_quick_prints_the_same(images):
    image, _ = images["directory"]
    full, quick = docteur("verify", image), docteur("verify", "--quick", image)
    assert quick.returncode == 0, quick.stderr
    assert quick.stdout == full.stdout
    report = json.loads(docteur("verify", "--quick", "--json", image).stdout)
    assert report["quick"] is True and "pack-entries" not in report["checks"]
    assert "pack-checksum" in report["checks"] and "idx-checksum" in report["checks"]


def test_block_sizes_are_inferred(images):
    with FileDevice(images["directory-4k"][0]) as dev:
        assert 4096 in verify_image(dev).block_sizes
    with FileDevice(images["directory"][0]) as dev:
        report = verify_image(dev)
        assert report.ok and report.block_sizes and report.block_sizes[0] == 512


@pytest.mark.nbdkit
def test_over_nbd(images):
    image, _ = images["directory"]
    with NbdkitServer("file", f"file={image}") as server:
        over_nbd = docteur("verify", server.uri)
    assert over_nbd.returncode == 0, over_nbd.stderr
    assert over_nbd.stdout == docteur("verify", image).stdout
    damaged = bytearray(image.read_bytes())
    damaged[len(damaged) // 3] ^= 0xFF
    bad = image.parent / "nbd-damaged.img"
    bad.write_bytes(bytes(damaged))
    with NbdkitServer("file", f"file={bad}", unix=True) as server:
        result = docteur("verify", server.uri)
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr and "damaged" in result.stderr


# -- one byte at a time, across every region ---------------------------------


def region_map(data: bytes) -> list[tuple[int, int, str]]:
    """Every byte of a valid image, by region, from the IDX that git wrote."""
    idx_offset = struct.unpack_from("<Q", data, 20)[0]
    count = struct.unpack_from(">I", data, idx_offset + 8 + 4 * 255)[0]
    names = idx_offset + 1032
    crcs = names + 20 * count
    offs = crcs + 4 * count
    large_at = offs + 4 * count
    raw = struct.unpack_from(f">{count}I", data, offs)
    nlarge = sum(1 for v in raw if v & 0x80000000)
    idx_end = large_at + 8 * nlarge + 40
    rels = []
    for v in raw:
        if v & 0x80000000:
            v = struct.unpack_from(">Q", data, large_at + 8 * (v & 0x7FFFFFFF))[0]
        rels.append(v + 28)
    trailer = data.rfind(data[idx_end - 40:idx_end - 20], 0, idx_offset)
    regions = [(0, 28, "header"), (28, 40, "PACK header")]
    starts = sorted(rels) + [trailer]
    for a, b in zip(starts, starts[1:]):
        eh = pack.parse_entry_header(data[a:a + 32], "")
        regions.append((a, a + eh.header_len, "object header"))
        regions.append((a + eh.header_len, b,
                        "delta data" if eh.type >= pack.OBJ_OFS_DELTA else "object data"))
    regions += [(trailer, trailer + 20, "PACK trailer"), (trailer + 20, idx_offset, "padding"),
                (idx_offset, idx_offset + 8, "IDX header"), (idx_offset + 8, names, "IDX fanout"),
                (names, crcs, "IDX ids"), (crcs, offs, "IDX CRCs"),
                (offs, large_at + 8 * nlarge, "IDX offsets"),
                (large_at + 8 * nlarge, idx_end, "IDX checksums"),
                (idx_end, len(data), "padding")]
    if data[-4096:-4088] == b"DOCTPIDX":  # a path index region ends the image
        start = struct.unpack_from("<Q", data, len(data) - 4096 + 100)[0]
        regions[-1:] = [(idx_end, start, "padding"), (start, len(data), "path index")]
    return regions


def sampled_flips(data: bytes, per_region: int, seed: int):
    """(offset, mask, region): a sample of offsets in every region."""
    rnd = random.Random(seed)
    by_region: dict[str, list[int]] = {}
    for a, b, name in region_map(data):
        by_region.setdefault(name, []).extend(range(a, b))
    for name, offsets in sorted(by_region.items()):
        for off in rnd.sample(offsets, min(per_region, len(offsets))):
            yield off, rnd.choice([0xFF, 0x01, 0x80, 0x10, 0x04]), name


ALL_REGIONS = {"header", "PACK header", "object header", "object data", "delta data",
               "PACK trailer", "padding", "IDX header", "IDX fanout", "IDX ids", "IDX CRCs",
               "IDX offsets", "IDX checksums"}


@pytest.mark.parametrize("kind", ["directory", "repository", "reference-ofs", "reference-ref"])
def test_every_flipped_byte_is_reported_in_its_region(images, kind):
    image, _ = images[kind]
    data = image.read_bytes()
    seen = set()
    misses = []
    for off, mask, region in sampled_flips(data, per_region=25, seed=len(kind)):
        damaged = bytearray(data)
        damaged[off] ^= mask
        report = verify_image(MemoryDevice(bytes(damaged)))
        regions = {p[0] for p in report.problems}
        if report.ok or region not in regions:
            misses.append((off, mask, region, report.problem_lines()[:3]))
        assert not verify_image(MemoryDevice(bytes(damaged)), quick=True).ok, (off, region)
        seen.add(region)
    assert not misses
    # The image really has every kind of region.
    assert seen == ALL_REGIONS | ({"path index"} if data[-4096:-4088] == b"DOCTPIDX" else set())


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_cli_names_the_region_of_a_flip(images, tmp_path):
    image, _ = images["reference-ofs"]
    data = image.read_bytes()
    picked = {}
    for off, mask, region in sampled_flips(data, per_region=1, seed=7):
        picked.setdefault(region, (off, mask))
    for region, (off, mask) in sorted(picked.items()):
        damaged = bytearray(data)
        damaged[off] ^= mask
        bad = tmp_path / "bad.img"
        bad.write_bytes(bytes(damaged))
        result = docteur("verify", bad)
        assert result.returncode == 1, region
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert any(line.startswith(f"{region}: ") for line in lines), (region, lines)
        assert lines[-1].startswith("docteur verify: ") and "damaged" in lines[-1]
        assert "Traceback" not in result.stderr


@given(st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_change_is_detected_and_never_crashes(images, data):
    image, _ = images[data.draw(st.sampled_from(["reference-ofs", "reference-ref"]))]
    original = image.read_bytes()
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        off = data.draw(st.integers(0, len(damaged) - 1))
        piece = data.draw(st.binary(min_size=1, max_size=24))
        damaged[off:off + len(piece)] = piece
    if data.draw(st.booleans()):
        del damaged[data.draw(st.integers(0, len(damaged))):]
    damaged = bytes(damaged)
    for quick in (False, True):
        report = verify_image(MemoryDevice(damaged), quick=quick)
        assert report.ok == (damaged == original)


# -- hostile files ------------------------------------------------------------


def _bad_file_cases(image: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    data = image.read_bytes()
    idx_offset = struct.unpack_from("<Q", data, 20)[0]
    rnd = random.Random(3)
    cases = {
        "zero": (b"", "not a docteur image (empty file)"),
        "tiny": (data[:30], "not a docteur image (30 bytes, too small"),
        "random": (bytes(rnd.randrange(256) for _ in range(70000)), "not a docteur image"),
        "text": ((REPO_ROOT / "README.md").read_bytes(), "not a docteur image"),
        "zeros": (bytes(8192), "not a docteur image"),
        "cut-in-pack": (data[:idx_offset // 2], "truncated"),
        "cut-before-idx": (data[:idx_offset], "truncated"),
        "cut-in-idx": (data[:idx_offset + 1100], "truncated"),
        "cut-one-block": (data[:-512], "truncated"),
        "cut-one-byte": (data[:-1], "truncated"),
        "extra-block": (data + bytes(512), "image size"),
    }
    out = {}
    for name, (content, hint) in cases.items():
        path = tmp / f"{name}.img"
        path.write_bytes(content)
        out[name] = (path, hint)
    return out


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_hostile_files_give_a_clear_error(images, tmp_path):
    image, _ = images["reference-ofs"]
    for name, (path, hint) in _bad_file_cases(image, tmp_path).items():
        result = docteur("verify", path)
        assert result.returncode == 1, name
        assert result.stdout == "", name
        assert "Traceback" not in result.stderr, name
        assert hint in result.stderr, (name, result.stderr)
        if "not a docteur image" in hint:  # not damage: one line naming the file
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"docteur verify: {path}: "), lines
        else:
            assert 2 <= len(result.stderr.splitlines()) <= 6, (name, result.stderr)
    for spec, hint in [(tmp_path / "missing.img", "cannot open"), (tmp_path, "directory")]:
        result = docteur("verify", spec)
        assert result.returncode == 1 and hint in result.stderr
        assert "Traceback" not in result.stderr


# -- deltas, offsets, reachability -------------------------------------------


def _image_from_pack(tmp: Path, pack_bytes: bytes, commit: str, image: Path,
                     index_version: str = "2") -> None:
    """Index a pack with git itself and wrap it in the docteur layout."""
    p = tmp / "crafted.pack"
    p.write_bytes(pack_bytes)
    git("index-pack", f"--index-version={index_version}", "-o", str(tmp / "crafted.idx"), str(p))
    idx = (tmp / "crafted.idx").read_bytes()
    image.write_bytes(bytes(wrap_image(pack_bytes, idx, bytes.fromhex(commit))))


def _crafted_pack(extra_blob: bool = False, drop_blob: bool = False):
    """A REF_DELTA written before its base, which git allows and index-pack reads."""
    base = b"".join(b"line %d of the base\n" % i for i in range(200))
    target = base[:3000] + b"an inserted line\n" + base[3000:]
    bid = pack.object_id("blob", base)
    tid = pack.object_id("blob", target)
    delta = varint(len(base)) + varint(len(target))
    delta += bytes([0x80 | 0x10 | 0x20, 3000 & 255, 3000 >> 8])  # copy 3000 bytes at 0
    ins = b"an inserted line\n"
    delta += bytes([len(ins)]) + ins
    rest = len(base) - 3000
    delta += bytes([0x80 | 0x01 | 0x02 | 0x10 | 0x20, 3000 & 255, 3000 >> 8, rest & 255, rest >> 8])
    tree = b"100644 a\0" + bid + b"100644 b\0" + tid
    treeid = pack.object_id("tree", tree)
    commit = (b"tree " + treeid.hex().encode() + b"\nauthor A <a@b> 1 +0000\n"
              b"committer A <a@b> 1 +0000\n\ncrafted\n")
    entries = [pack_entry(pack.OBJ_COMMIT, commit),
               pack_entry(pack.OBJ_TREE, tree),
               pack_entry(pack.OBJ_REF_DELTA, delta, extra=bid)]
    if not drop_blob:
        entries.append(pack_entry(pack.OBJ_BLOB, base))
    if extra_blob:
        entries.append(pack_entry(pack.OBJ_BLOB, b"nobody points at me\n"))
    return pack_file(entries), pack.object_id("commit", commit).hex()


def test_ref_delta_before_its_base(tmp_path):
    pack_bytes, commit = _crafted_pack()
    _image_from_pack(tmp_path, pack_bytes, commit, tmp_path / "c.img")
    with FileDevice(tmp_path / "c.img") as dev:
        report = verify_image(dev)
    assert report.ok, report.problem_lines()
    assert report.counts.deltas == 1 and report.counts.files == 2
    assert report.message == "crafted\n" and not report.warnings


def test_unreachable_object_is_a_warning(tmp_path):
    pack_bytes, commit = _crafted_pack(extra_blob=True)
    _image_from_pack(tmp_path, pack_bytes, commit, tmp_path / "u.img")
    result = docteur("verify", tmp_path / "u.img")
    assert result.returncode == 0, result.stderr
    assert "warning: objects: blob" in result.stderr and "not reachable" in result.stderr


def test_header_naming_a_tree_is_a_problem(tmp_path):
    pack_bytes, commit = _crafted_pack()
    _image_from_pack(tmp_path, pack_bytes, commit, tmp_path / "m.img")
    data = bytearray((tmp_path / "m.img").read_bytes())
    report = verify_image(MemoryDevice(bytes(data)))
    assert report.ok
    data[:20] = bytes.fromhex(report.tree)
    report = verify_image(MemoryDevice(bytes(data)))
    assert not report.ok
    assert any(p[0] == "header" and "is a tree, not a commit" in p[2] for p in report.problems)


def test_missing_delta_base_is_a_problem(tmp_path):
    # git's index-pack refuses a thin pack, so take the base out of the pack after
    # indexing: the IDX then lists an object the pack lacks.
    pack_bytes, commit = _crafted_pack()
    _image_from_pack(tmp_path, pack_bytes, commit, tmp_path / "t.img")
    thin, _ = _crafted_pack(drop_blob=True)
    data = bytearray((tmp_path / "t.img").read_bytes())
    data[28:28 + len(thin)] = thin
    report = verify_image(MemoryDevice(bytes(data)))
    assert not report.ok
    assert any(p[0] == "object header" and "REF_DELTA base" in p[2] and "not in the pack" in p[2]
               for p in report.problems), report.problem_lines()


def test_missing_objects_are_named_by_path(sources, tmp_path):
    work = sources["repo"]
    objs = git("rev-list", "--objects", "--no-walk", "HEAD", cwd=work).decode().splitlines()
    victim = next(line for line in objs if line.endswith(" run.sh"))
    kept = "\n".join(line.split(" ")[0] for line in objs if line != victim) + "\n"
    base = tmp_path / "p"
    git("pack-objects", "-q", "--delta-base-offset", str(base), input=kept.encode(), cwd=work)
    pack_bytes = next(tmp_path.glob("p-*.pack")).read_bytes()
    head = git("rev-parse", "HEAD", cwd=work).decode().strip()
    _image_from_pack(tmp_path, pack_bytes, head, tmp_path / "missing.img")
    result = docteur("verify", tmp_path / "missing.img")
    assert result.returncode == 1
    assert f"objects: run.sh is not in the pack, object {victim.split()[0]}" in result.stderr


def test_64_bit_offsets_and_a_cold_cache(images, tmp_path):
    image, commit = images["reference-ofs"]
    gitdir = git_view(image, tmp_path)
    pack_bytes = next((gitdir / "objects" / "pack").glob("*.pack")).read_bytes()
    # git writes offsets from 256 on in the 64-bit table with this index version.
    _image_from_pack(tmp_path, pack_bytes, commit, tmp_path / "big.img", index_version="2,256")
    data = (tmp_path / "big.img").read_bytes()
    regions = region_map(data)
    offsets = next((a, b) for a, b, name in regions if name == "IDX offsets")
    assert offsets[1] - offsets[0] > 4 * (len([r for r in regions if r[2] == "object header"]))
    report = verify_image(MemoryDevice(data), cache_bytes=0)
    assert report.ok, report.problem_lines()
    assert report.stats["cache_misses"] > 0  # bases came back from the device, not a cache
    with FileDevice(image) as dev:
        normal = verify_image(dev)
    assert report.counts == normal.counts
    for off in range(offsets[1] - 16, offsets[1]):  # inside the 64-bit table
        damaged = bytearray(data)
        damaged[off] ^= 0x01
        r = verify_image(MemoryDevice(bytes(damaged)))
        assert any(p[0] == "IDX offsets" for p in r.problems), r.problem_lines()


def test_a_cold_cache_rebuilds_bases_the_fast_lane_kept_nothing_of(images):
    """Small blobs that agree with their IDX row are kept as a column entry
    only (scan.py `_blob_run`): a delta on one, with no cache at all, must
    rebuild it from the device through that column."""
    from docteur_core.verify.state import Entries

    image, _ = images["reference-ofs"]
    data = image.read_bytes()
    lane_bases = []
    lane_record = Entries.lane_record

    def spied(self, pos):
        rec = lane_record(self, pos)
        if rec is not None:
            lane_bases.append(pos)
        return rec

    lanes = []
    real_init = Entries.__init__

    def kept(self, *args):
        real_init(self, *args)
        lanes.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Entries, "lane_record", spied)
        mp.setattr(Entries, "__init__", kept)
        report = verify_image(MemoryDevice(data), cache_bytes=0)
    assert report.ok, report.problem_lines()
    assert lanes[0].lane_count > 0 and report.stats["cache_misses"] > 0
    assert lane_bases  # bases came back through the lane's column
    with FileDevice(image) as dev:
        assert report.counts == verify_image(dev).counts


class _RewrittenUnder(MemoryDevice):
    """A disk rewritten while it is verified: each byte of `spots` reads as
    written its first `honest[spot]` times, then changed (a lying device
    of our own, as the faults of the standards allow)."""

    def __init__(self, data: bytes, spots: list[int], honest: dict[int, int]) -> None:
        super().__init__(data)
        self.spots, self.honest, self.seen = spots, honest, dict.fromkeys(spots, 0)

    def read(self, offset, length):
        out = super().read(offset, length)
        hit = [x for x in self.spots if offset <= x < offset + len(out)]
        if not hit:
            return out
        changed = bytearray(out)
        for x in hit:
            self.seen[x] += 1
            if self.seen[x] > self.honest[x]:
                changed[x - offset] ^= 0xFF
        return bytes(changed)


def test_a_base_changed_between_the_scan_and_its_second_read_is_reported(images):
    """With no cache, every delta base is read again from the device
    (bases.py `_inflate_entry`): changed since the scan inflated it, that is
    a problem naming the change, not a traceback or a wrong object."""
    image, _ = images["reference-ofs"]
    data = image.read_bytes()
    spots = [(a + b) // 2 for a, b, name in region_map(data) if name == "object data"]
    counting = MemoryDevice(data)
    assert verify_image(counting).ok  # the cache holds every base: each byte read as often
    honest = {x: sum(1 for o, n in counting.reads if o <= x < o + n) for x in spots}
    assert verify_image(_RewrittenUnder(data, spots, honest)).ok  # the device is honest then
    report = verify_image(_RewrittenUnder(data, spots, honest), cache_bytes=0)
    assert report.stats["cache_misses"] > 0
    changed = [p for p in report.problems if "entry changed between two reads" in p[2]]
    assert changed, report.problem_lines()


def test_ocaml_quoting():
    assert ocaml_quoted("Calascibetta Romain") == '"Calascibetta Romain"'
    assert ocaml_quoted('a"b\\c\n\t') == '"a\\"b\\\\c\\n\\t"'
    assert ocaml_quoted("Zoë") == '"Zo\\195\\171"'


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_large_blob_is_streamed_and_rebuilt_as_a_base(tmp_path):
    from docteur_core.verify import STREAM_THRESHOLD

    src = tmp_path / "big"
    src.mkdir()
    rnd = random.Random(9)
    words = [rnd.randbytes(6) for _ in range(5000)]
    big = b"".join(rnd.choice(words) for _ in range((STREAM_THRESHOLD + 300_000) // 6))
    (src / "a.bin").write_bytes(big)
    (src / "b.bin").write_bytes(big[:1000] + b"changed" + big[1000:])
    info = git_reference_image(src, tmp_path / "big.img")
    data = (tmp_path / "big.img").read_bytes()
    report = verify_image(MemoryDevice(data))
    assert report.ok, report.problem_lines()
    assert report.counts.deltas == 1 and report.counts.bytes == 2 * len(big) + 7
    assert report.tree == info["tree"]
    assert report.stats["cache_misses"] == 1  # the streamed base was read again
    regions = region_map(data)
    a, b = max(((a, b) for a, b, name in regions if name == "object data"),
               key=lambda r: r[1] - r[0])
    damaged = bytearray(data)
    damaged[(a + b) // 2] ^= 0x20
    report = verify_image(MemoryDevice(bytes(damaged)))
    assert "object data" in {p[0] for p in report.problems}



@pytest.mark.parametrize("ofs_delta", [True, False])
def test_quick_accepts_a_commit_stored_as_a_delta(tmp_path, ofs_delta):
    """git may deltify the commit itself; --quick must follow the chain as full does."""
    from docteur_core.blockdev.block import FileDevice

    from tests.helpers.plugin_support import delta_commit_image

    image = tmp_path / "delta-commit.img"
    delta_commit_image(image, ofs_delta)
    for quick in (True, False):
        device = FileDevice(str(image))
        try:
            report = verify_image(device, quick=quick)
        finally:
            device.close()
        assert report.ok, report.problem_lines()
        assert report.tree is not None
