"""`make --base OLD.img`: a rebuild that reuses OLD, checked against git and both verifies.

- the image built with a base holds the same commit and tree as a full
  build (git as the oracle: `git index-pack` rebuilds its IDX byte for
  byte, `verify-pack`, exactly the reachable objects, every path's mode
  and bytes against the source), and passes `docteur verify` and the
  OCaml docteur's verify with the same output;
- it reuses: most objects come from the base; a rebuild is deterministic
  (twice, and whatever the core count); an unchanged source on its own
  image gives that image back;
- a base of another history or of unrelated content still gives the right
  image (less reuse); a repository source too;
- a damaged base (any byte of its header, PACK, padding or IDX changed;
  truncated; not an image) is refused with one line, before anything is
  written: no IMAGE, an existing one untouched, no temporary file;
- `--base IMAGE IMAGE` rebuilds in place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.errors import BuildError
from docteur_core.format import idx as idxmod
from docteur_core.format import layout
from docteur_core.make import make_image
from tests.helpers import ocaml_oracle as oc
from tests.helpers.cli import docteur, refusal
from tests.helpers.gitoracle import check_image, image_listing, source_listing
from tests.helpers.support import GIT_ENV, git

DATE = "2026-01-02T03:04:05Z"


def _release(root: Path, n: int) -> None:
    """A release folder `rel-N` of a small project: most files as in the
    release before, a few changed, one added each time."""
    rel = root / f"rel-{n}"
    (rel / "docs").mkdir(parents=True)
    (rel / "src").mkdir()
    for i in range(12):
        lines = [f"def function_{i}_{k}(x):\n    return x * {k} + {i}\n" for k in range(60)]
        if i % 4 == n % 4:  # a quarter of the modules change between releases
            lines.insert(30, f"# changed in release {n}\n")
        (rel / "src" / f"mod{i}.py").write_text("".join(lines))
    for i in range(6):
        (rel / "docs" / f"page{i}.txt").write_text(
            "".join(f"Paragraph {k} of page {i}: docteur serves it.\n" for k in range(80))
            + (f"Release {n} notes.\n" if i == 0 else ""))
    (rel / "docs" / f"news-{n}.txt").write_text(f"What is new in {n}\n" * 40)
    (rel / "run.sh").write_text("#!/bin/sh\necho run\n")
    (rel / "run.sh").chmod(0o755)
    (rel / "latest").symlink_to("docs/page0.txt")


def _corpus(root: Path, releases: range) -> Path:
    root.mkdir()
    for n in releases:
        _release(root, n)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """OLD (releases 1-4), the source with release 5 added, its full build and its rebuild."""
    tmp = tmp_path_factory.mktemp("base")
    old_src = _corpus(tmp / "old", range(1, 5))
    new_src = _corpus(tmp / "new", range(1, 6))
    old = tmp / "old.img"
    make_image(old_src, old, date=DATE)
    full = tmp / "full.img"
    full_result = make_image(new_src, full, date=DATE)
    new = tmp / "new.img"
    result = make_image(new_src, new, date=DATE, base=old)
    return tmp, new_src, old, full, full_result, new, result


def test_the_rebuild_holds_the_full_builds_commit_and_git_agrees(built, tmp_path):
    tmp, new_src, old, full, full_result, new, result = built
    assert (result.commit, result.tree) == (full_result.commit, full_result.tree)
    checked = check_image(new, tmp_path)  # index-pack's IDX == the image's; verify-pack
    assert (checked.commit, checked.tree) == (result.commit, result.tree)
    assert image_listing(checked.git_dir, checked.commit) == source_listing(new_src)
    assert checked.objects == result.objects == full_result.objects
    # git archive of the two images' commits: the same bytes
    full_checked = check_image(full, tmp_path / "full")
    archive = git("archive", "--format=tar", result.commit,
                  env={"GIT_DIR": str(checked.git_dir)})
    assert archive == git("archive", "--format=tar", result.commit,
                          env={"GIT_DIR": str(full_checked.git_dir)})


def test_the_rebuild_reuses_the_bases_objects(built):
    _, _, old, _, full_result, new, result = built
    # Releases 1-4 are in OLD: all their objects; release 5 brings a few.
    assert result.objects - 40 < result.reused < result.objects
    # Within a few percent of the full build's size (the goal is 1 % on big corpora).
    assert new.stat().st_size <= full_result.size * 1.1


@pytest.mark.oracle
def test_both_verifies_accept_the_rebuild(built):
    _, _, _, _, _, new, _ = built
    ours = docteur("verify", new)
    assert ours.returncode == 0, ours.stderr
    theirs = oc.Oracle(oc.built()).verify(new)
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout == ours.stdout


def test_a_rebuild_is_deterministic_whatever_the_core_count(built, tmp_path):
    tmp, new_src, old, _, _, new, _ = built
    again = tmp_path / "again.img"
    make_image(new_src, again, date=DATE, base=old, jobs=1)
    assert again.read_bytes() == new.read_bytes()
    # small parts: many pack-objects, each reusing within its part
    one = tmp_path / "one.img"
    two = tmp_path / "two.img"
    from docteur_core.make import parallel

    saved = parallel.PART_BYTES, parallel.PART_OBJECTS
    parallel.PART_BYTES, parallel.PART_OBJECTS = 20_000, 20
    try:
        make_image(new_src, one, date=DATE, base=old, jobs=1)
        make_image(new_src, two, date=DATE, base=old, jobs=3)
    finally:
        parallel.PART_BYTES, parallel.PART_OBJECTS = saved
    assert one.read_bytes() == two.read_bytes()
    check_image(one, tmp_path)


def test_the_same_source_on_its_own_image_gives_that_image_again(built, tmp_path):
    tmp, new_src, _, full, full_result, _, _ = built
    same = tmp_path / "same.img"
    result = make_image(new_src, same, date=DATE, base=full)
    assert result.reused == result.objects == full_result.objects
    assert result.commit == full_result.commit
    # Every entry reused as stored, in git's order: the base's own bytes.
    assert same.read_bytes() == full.read_bytes()


def test_an_unrelated_base_gives_the_same_tree_with_no_reuse(built, tmp_path):
    tmp, new_src, _, _, full_result, _, _ = built
    other = tmp_path / "other"
    other.mkdir()
    for i in range(30):
        (other / f"x{i}.bin").write_bytes(os.urandom(3000))
    unrelated = tmp_path / "unrelated.img"
    make_image(other, unrelated, date=DATE, block_size=4096, path_index=False)
    out = tmp_path / "out.img"
    result = make_image(new_src, out, date=DATE, base=unrelated)
    assert result.reused == 0
    assert (result.commit, result.tree) == (full_result.commit, full_result.tree)
    checked = check_image(out, tmp_path)
    assert image_listing(checked.git_dir, checked.commit) == source_listing(new_src)


def _repo(path: Path, src: Path) -> str:
    git("init", "-q", str(path))
    git("-C", str(path), "add", "-A", "--force", ".", env={"GIT_WORK_TREE": str(src),
                                                           "GIT_DIR": str(path / ".git")})
    git("-C", str(path), "commit", "-q", "-m", "release", env=GIT_ENV)
    return git("-C", str(path), "rev-parse", "HEAD").decode().strip()


def test_a_repository_source_with_a_base_of_another_history(built, tmp_path):
    """OLD from a directory (its own synthetic commit), SOURCE a repository
    whose history OLD never saw: the blobs and trees OLD holds are reused."""
    tmp, new_src, old, _, _, _, _ = built
    repo = tmp_path / "repo"
    commit = _repo(repo, new_src)
    full = tmp_path / "full.img"
    full_result = make_image(repo, full)
    out = tmp_path / "out.img"
    result = make_image(repo, out, base=old)
    assert result.commit == commit == full_result.commit
    assert result.objects - 40 < result.reused < result.objects
    checked = check_image(out, tmp_path)
    assert image_listing(checked.git_dir, checked.commit) == source_listing(new_src)
    again = tmp_path / "again.img"
    make_image(repo, again, base=old)
    assert again.read_bytes() == out.read_bytes()
    # The image's bytes do not depend on how the repository packs its objects.
    git("-C", str(repo), "repack", "-q", "-adf", "--window=5", "--depth=3")
    repacked = tmp_path / "repacked.img"
    make_image(repo, repacked, base=old)
    assert repacked.read_bytes() == out.read_bytes()


def test_rebuilding_in_place_replaces_the_base(built, tmp_path):
    tmp, new_src, old, _, _, new, _ = built
    img = tmp_path / "site.img"
    shutil.copy(old, img)
    proc = docteur("make", "--date", DATE, "--base", img, new_src, img)
    assert proc.returncode == 0, proc.stderr
    assert b"objects reused from" in proc.stderr
    assert img.read_bytes() == new.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["site.img"]


# --- a damaged base -----------------------------------------------------------

def _regions(image: bytes) -> int:
    """Where the IDX ends: everything before it is checked (the commit id aside)."""
    header = layout.parse_header(image, len(image))
    head = idxmod.parse_head(image[header.idx_offset:header.idx_offset + idxmod.HEAD_SIZE],
                             header.idx_offset)
    return header.idx_offset + head.min_size()


def _refused(proc: subprocess.CompletedProcess, where: Path) -> str:
    line = refusal(proc)  # exit 1, one line, no traceback
    assert str(where) in line
    return line


def test_a_truncated_base_is_refused_and_nothing_written(built, tmp_path):
    _, new_src, old, _, _, _, _ = built
    data = old.read_bytes()
    for cut in (len(data) // 2, 100, 27):
        bad = tmp_path / "bad.img"
        bad.write_bytes(data[:cut])
        out = tmp_path / "out.img"
        line = _refused(docteur("make", "--date", DATE, "--base", bad, new_src, out), bad)
        assert "base image" in line
        assert sorted(os.listdir(tmp_path)) == ["bad.img"]


def test_a_base_that_is_no_image_or_missing_is_refused(built, tmp_path):
    _, new_src, _, _, _, _, _ = built
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all, but long enough to hold a header\n" * 10)
    out = tmp_path / "out.img"
    _refused(docteur("make", "--base", text, new_src, out), text)
    _refused(docteur("make", "--base", tmp_path / "absent.img", new_src, out),
             tmp_path / "absent.img")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_a_damaged_entry_in_place_leaves_the_image_untouched(built, tmp_path):
    """A flipped byte in one PACK entry: its CRC-32 names it; IMAGE (= the
    base) stays as it was."""
    _, new_src, old, _, _, _, _ = built
    data = bytearray(old.read_bytes())
    data[layout.PACK_OFFSET + 200] ^= 0x40
    img = tmp_path / "site.img"
    img.write_bytes(bytes(data))
    line = _refused(docteur("make", "--date", DATE, "--base", img, new_src, img), img)
    assert "CRC-32" in line and "nothing was written" in line
    assert img.read_bytes() == bytes(data)
    assert sorted(os.listdir(tmp_path)) == ["site.img"]


@settings(max_examples=int(os.environ.get("DOCTEUR_BASE_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_changed_byte_of_a_base_is_refused(built, tmp_path_factory, where, bit):
    """Any bit flipped from the IDX offset to the IDX's end (the commit id
    is not reused, the path index is not read): refused, nothing written."""
    _, new_src, old, _, _, _, _ = built
    data = bytearray(old.read_bytes())
    at = layout.COMMIT_ID_SIZE + int(where * (_regions(bytes(data)) - layout.COMMIT_ID_SIZE))
    data[at] ^= 1 << bit
    tmp = tmp_path_factory.mktemp("flip")
    bad = tmp / "bad.img"
    bad.write_bytes(bytes(data))
    with pytest.raises(BuildError) as info:
        make_image(new_src, tmp / "out.img", date=DATE, base=bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert sorted(os.listdir(tmp)) == ["bad.img"]


def test_a_base_carrying_a_version_1_path_index_is_used(built, tmp_path):
    """An image made before the compact path index (its super block says
    version 1) is still a base: only the super block's binding is read."""
    import struct
    import zlib

    from docteur_core.format import pathindex as pix

    _, new_src, old, _, _, new, _ = built
    data = bytearray(old.read_bytes())
    sup = bytearray(data[-pix.SUPER_SIZE:])
    sup[8:10] = struct.pack("<H", pix.LEGACY)
    struct.pack_into("<I", sup, pix.CRC_AT, zlib.crc32(bytes(sup[:pix.CRC_AT])))
    data[-pix.SUPER_SIZE:] = sup
    legacy = tmp_path / "legacy.img"
    legacy.write_bytes(bytes(data))
    out = tmp_path / "new.img"
    make_image(new_src, out, date=DATE, base=legacy)
    assert out.read_bytes() == new.read_bytes()  # the same rebuild as on the new base
