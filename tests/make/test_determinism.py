"""Acceptance (issue 2): same source and date give a byte-identical image.

tests/make/test_directories.py checks two builds of one folder in one process. Here the
two builds share nothing but the content: the sources are separate copies
in different temporary folders (different path lengths), their files are
created in opposite orders (so that the directory's on-disk iteration
order differs), under different umasks (which must not matter beyond the
executable bit git records), with different mtimes; the builds run as
separate `docteur make` processes from different working directories
(one with a relative source path, one with a file:// URL), with a
different TMPDIR, time zone, locale, and a user git configuration that
tries to change every knob of pack-objects that could change bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers.support import REPO_ROOT
from tests.helpers.gitoracle import check_image, image_listing, source_listing

DATE = "2026-01-01T00:00:00Z"


def _content():
    """(relative path, kind, payload, executable): deltas, links, empty and hidden entries."""
    base = b"".join(b"line %d of a document that is revised a little\n" % i for i in range(120))
    items = []
    for v in range(6):  # a family of similar files: pack-objects must deltify them
        items.append((f"docs/v{v}/guide.txt", "file",
                      base.replace(b"line 1", b"LINE %d" % v) + b"rev %d\n" % v, False))
        items.append((f"docs/v{v}/.hidden", "file", b"hidden %d\n" % v, False))
    items += [
        ("bin/run.sh", "file", b"#!/bin/sh\necho hi\n", True),
        ("bin/tool", "file", bytes(range(256)) * 20, True),
        ("odd name \xe9t\xe9 #1", "file", b"odd\n", False),
        ("empty-dir", "dir", b"", False),
        ("nested/empty/deeper", "dir", b"", False),
        ("link-in", "link", b"docs/v0/guide.txt", False),
        ("link-out", "link", b"../../../etc/passwd", False),
        ("zz-last", "file", b"", False),
        ("a-first", "file", b"same content\n", False),
        ("dup-of-a-first", "file", b"same content\n", False),
    ]
    return items


def _materialise(root: Path, items, umask: int, mtime: int) -> None:
    old = os.umask(umask)
    try:
        root.mkdir(parents=True)
        for rel, kind, payload, executable in items:
            path = root / rel
            if kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "link":
                os.symlink(payload, path)
                continue
            path.write_bytes(payload)
            if executable:
                # 0o755 under one umask, 0o700 under the other: both are 100755 to git.
                os.chmod(path, 0o777 & ~umask)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in filenames + dirnames:
                os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    finally:
        os.umask(old)


def _make(source: str, image: Path, cwd: Path, env_extra: dict, umask: int) -> None:
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    env.update(env_extra)
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "docteur_core", "make", "-q", "--date", DATE, source, str(image)],
        cwd=cwd, env=env, capture_output=True, text=True,
        preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def other_fs(tmp_path):
    """A folder on tmpfs if there is one: it lists in reverse creation order, unlike
    ext4's hash order, so the two sources really iterate differently."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="docteur-det-") as d:
            yield Path(d), True
    else:
        yield tmp_path / "other-fs", False


@pytest.mark.oracle
def test_two_builds_from_different_places_are_byte_identical(tmp_path, other_fs):
    items = _content()
    a_src = tmp_path / "a" / "src"
    b_root, on_tmpfs = other_fs
    b_src = b_root / "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" / "elsewhere" / "source-copy"
    _materialise(a_src, items, umask=0o022, mtime=1_000_000_000)
    _materialise(b_src, list(reversed(items)), umask=0o077, mtime=1_700_000_000)
    assert source_listing(a_src) == source_listing(b_src)  # same content, as git sees it
    # The iteration orders really differ (else this test would prove less than it says).
    if on_tmpfs:
        assert os.listdir(a_src) != os.listdir(b_src)

    hostile_home = tmp_path / "home"
    hostile_home.mkdir()
    (hostile_home / ".gitconfig").write_text(
        "[core]\n\tcompression = 0\n\tlooseCompression = 0\n\tbigFileThreshold = 100\n"
        "[pack]\n\twindow = 1\n\tdepth = 1\n\tthreads = 2\n\tcompression = 1\n"
        "\tindexVersion = 1\n\tdeltaCacheSize = 1\n\twindowMemory = 1k\n"
        "[gc]\n\tauto = 1\n")
    a_tmp = tmp_path / "tmp-a"
    b_tmp = tmp_path / "tmp-b-other"
    a_tmp.mkdir()
    b_tmp.mkdir()
    a_cwd = tmp_path / "a"
    b_cwd = tmp_path / "cwd" / "deeper"
    b_cwd.mkdir(parents=True)

    _make("src", tmp_path / "a.img", a_cwd,
          {"TMPDIR": str(a_tmp), "TZ": "UTC", "LC_ALL": "C"}, umask=0o022)
    _make(f"file://{b_src}", tmp_path / "b.img", b_cwd,
          {"TMPDIR": str(b_tmp), "TZ": "Pacific/Kiritimati", "LC_ALL": "C.UTF-8",
           "HOME": str(hostile_home)}, umask=0o077)

    a = (tmp_path / "a.img").read_bytes()
    b = (tmp_path / "b.img").read_bytes()
    assert a == b
    # And what they hold is the source (git as the oracle), with real deltas.
    checked = check_image(tmp_path / "a.img", tmp_path)
    assert image_listing(checked.git_dir, checked.commit) == source_listing(a_src)
    from tests.helpers.support import git
    verbose = git("verify-pack", "-v", str(checked.git_dir / "objects/pack/pack-image.idx"))
    assert b"chain length = " in verbose
    # The temporary folders were cleaned up.
    assert list(a_tmp.iterdir()) == [] and list(b_tmp.iterdir()) == []


def test_two_clones_of_one_repository_give_identical_images(tmp_path):
    """Loose objects in one, an aggressively repacked pack in the other: same image."""
    from tests.helpers.support import git
    work = tmp_path / "work"
    _materialise(work, _content(), umask=0o022, mtime=1_000_000_000)
    git("init", "-q", str(work))
    git("add", "-A", ".", cwd=work)
    git("commit", "-q", "-m", "snapshot", cwd=work)
    clone = tmp_path / "other" / "clone.git"
    git("clone", "-q", "--bare", "--no-local", str(work), str(clone))
    # Stored unlike what the builder would choose: other zlib level, short delta chains.
    git("-c", "pack.compression=1", "repack", "-adf", "--window=3", "--depth=1", cwd=clone)
    _make(str(work), tmp_path / "a.img", tmp_path, {"TZ": "UTC"}, umask=0o022)
    _make(os.path.relpath(clone, tmp_path / "other"), tmp_path / "b.img", tmp_path / "other",
          {"TZ": "Asia/Kolkata"}, umask=0o077)
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
