"""Images of directories, checked against git (see test_build_oracle)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur_core.format import layout
from docteur_core.make import make_image
from tests.helpers.support import git
from tests.helpers.treegen import materialise, source_of
from tests.helpers.gitoracle import (SITE, check_image, git_write_tree, image_listing,
                                     source_listing)

from tests.helpers.treegen import GENERATED_DATE as DATE, git_trees as trees

def has_empty_dir(spec: dict) -> bool:
    return any(node[0] == "dir" and (not node[1] or has_empty_dir(node[1]))
               for node in spec.values())


@settings(max_examples=int(os.environ.get("DOCTEUR_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=trees)
def test_generated_trees_read_back_identically(spec):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = source_of(spec, tmp)
        result = make_image(src, tmp / "out.img", date=DATE,
                            warn=lambda w: " that others may not read " in w or pytest.fail(w))
        checked = check_image(tmp / "out.img", tmp)
        assert (checked.commit, checked.tree, checked.objects) == (
            result.commit, result.tree, result.objects)
        assert result.size == (tmp / "out.img").stat().st_size
        assert image_listing(checked.git_dir, checked.commit) == source_listing(src)
        if not has_empty_dir(spec):
            assert result.tree == git_write_tree(src, tmp)


# --- fixed cases --------------------------------------------------------------

def test_site_example_matches_git(tmp_path):
    result = make_image(SITE, tmp_path / "site.img", date=DATE)
    checked = check_image(tmp_path / "site.img", tmp_path)
    assert checked.commit == result.commit
    assert result.tree == git_write_tree(SITE, tmp_path)
    assert image_listing(checked.git_dir, checked.commit) == source_listing(SITE)


def test_commit_is_what_git_commit_tree_writes(tmp_path):
    result = make_image(SITE, tmp_path / "a.img", date="2026-03-04T05:06:07+05:30",
                        author="Ada Lovelace <ada@example.org>", message="Snapshot\n\nbody")
    gitdir = tmp_path / "g.git"
    git("init", "-q", "--bare", str(gitdir))
    env = {"GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(SITE),
           "GIT_INDEX_FILE": str(tmp_path / "index"),
           "GIT_AUTHOR_NAME": "Ada Lovelace", "GIT_AUTHOR_EMAIL": "ada@example.org",
           "GIT_COMMITTER_NAME": "Ada Lovelace", "GIT_COMMITTER_EMAIL": "ada@example.org",
           "GIT_AUTHOR_DATE": "2026-03-04T05:06:07+05:30",
           "GIT_COMMITTER_DATE": "2026-03-04T05:06:07+05:30"}
    git("add", "-A", "--force", ".", cwd=SITE, env=env)
    tree = git("write-tree", env=env).decode().strip()
    commit = git("commit-tree", tree, "-m", "Snapshot", "-m", "body", env=env).decode().strip()
    assert (result.tree, result.commit) == (tree, commit)
    raw = git("cat-file", "commit", commit, env=env)
    assert b" +0530\n" in raw


def test_same_source_and_date_give_identical_bytes(tmp_path):
    a = make_image(SITE, tmp_path / "a.img", date=DATE)
    b = make_image(SITE, tmp_path / "b.img", date=DATE)
    assert a.commit == b.commit
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
    c = make_image(SITE, tmp_path / "c.img", date="2026-01-02T00:00:00Z")
    assert c.tree == a.tree and c.commit != a.commit


def test_source_date_epoch_is_the_default_date(tmp_path):
    env = dict(os.environ, SOURCE_DATE_EPOCH="1767225600")  # 2026-01-01T00:00:00Z
    for name in ("a.img", "b.img"):
        subprocess.run([sys.executable, "-m", "docteur_core", "make", "-q", str(SITE),
                        str(tmp_path / name)], env=env, check=True)
    make_image(SITE, tmp_path / "c.img", date=DATE)
    assert ((tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
            == (tmp_path / "c.img").read_bytes())


@pytest.mark.parametrize("block_size", [512, 4096, 65536])
def test_block_sizes(tmp_path, block_size):
    result = make_image(SITE, tmp_path / "b.img", date=DATE, block_size=block_size)
    assert result.size % block_size == 0
    check_image(tmp_path / "b.img", tmp_path, block_size=block_size)


def test_aligned_pack_gets_a_whole_block_of_padding():
    # The OCaml rule, which the builder relies on through layout.image_layout.
    assert layout.image_layout(512 - 28, 1000, 512) == (1024, 2048)


def test_similar_files_are_deltified(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    base = os.urandom(20000)
    for i in range(10):
        (src / f"v{i}.bin").write_bytes(base[:i * 100] + b"changed" + base[i * 100:])
    result = make_image(src, tmp_path / "d.img", date=DATE)
    assert result.size < 3 * 20000
    checked = check_image(tmp_path / "d.img", tmp_path)
    verbose = git("verify-pack", "-v", str(checked.git_dir / "objects/pack/pack-image.idx"))
    assert b"chain length = " in verbose  # some objects are deltas
    assert image_listing(checked.git_dir, checked.commit) == source_listing(src)


def test_large_file_is_streamed(tmp_path, monkeypatch):
    from docteur_core.make import snapshot
    monkeypatch.setattr(snapshot, "WHOLE_READ_LIMIT", 1000)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(5000) * 3)
    (src / "big-copy").write_bytes((src / "big").read_bytes())  # a duplicate, dropped
    (src / "small").write_bytes(b"x")
    result = make_image(src, tmp_path / "l.img", date=DATE)
    checked = check_image(tmp_path / "l.img", tmp_path)
    assert image_listing(checked.git_dir, checked.commit) == source_listing(src)
    assert result.tree == git_write_tree(src, tmp_path)


def test_special_files_are_skipped_with_a_warning(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "regular").write_text("kept\n")
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    try:
        warnings = []
        result = make_image(src, tmp_path / "s.img", date=DATE, warn=warnings.append)
    finally:
        sock.close()
    assert sorted(w.split(": ")[-1] for w in warnings) == ["skipped (FIFO)", "skipped (socket)"]
    checked = check_image(tmp_path / "s.img", tmp_path)
    assert image_listing(checked.git_dir, checked.commit) == {b"regular": ("100644", b"kept\n")}
    # On the command line, the warning goes to stderr.
    os.unlink(src / "sock")
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", "-q", "--date", DATE,
                           str(src), str(tmp_path / "t.img")], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stderr == f"docteur make: warning: {src}/fifo: skipped (FIFO)\n"
    assert proc.stdout.startswith(f"{tmp_path / 't.img'}: ")  # -q keeps stdout's data


def test_files_only_their_owner_or_group_may_read_are_counted_in_one_warning(tmp_path):
    """The image keeps git's modes only (100644, 100755): a file others may
    not read becomes readable by everyone. One line says how many, like the
    skipped FIFOs; what others may read already is not counted."""
    src = tmp_path / "src"
    (src / "keys").mkdir(parents=True)
    modes = {"keys/id.pem": 0o600, "keys/shared.txt": 0o640, "keys/run.sh": 0o700,
             "public.txt": 0o644, "others-only.txt": 0o604, "tool.sh": 0o755}
    for rel, mode in modes.items():
        (src / rel).write_text(f"{rel}\n")
        os.chmod(src / rel, mode)
    os.symlink("keys/id.pem", src / "link")  # a link has no permissions of its own
    warnings = []
    result = make_image(src, tmp_path / "a.img", date=DATE, warn=warnings.append)
    assert warnings == [
        f"3 files that others may not read ({src}/keys/id.pem, mode 0600, ...) "
        "are readable by everyone in the image: it keeps git's modes only, 100644 and 100755 "
        "(see \"What an image keeps\" in the README)"]
    checked = check_image(tmp_path / "a.img", tmp_path)
    listing = image_listing(checked.git_dir, checked.commit)
    assert listing[b"keys/id.pem"][0] == listing[b"keys/shared.txt"][0] == "100644"
    assert listing[b"keys/run.sh"][0] == "100755"
    assert result.files == 6
    # On the command line: one warning line, also under -q (a warning, not chatter).
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", "-q", "--date", DATE,
                           str(src), str(tmp_path / "b.img")], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stderr == f"docteur make: warning: {warnings[0]}\n"
    # One such file: the singular.
    for rel in ("keys/shared.txt", "keys/run.sh"):
        os.chmod(src / rel, 0o644)
    warnings.clear()
    make_image(src, tmp_path / "c.img", date=DATE, warn=warnings.append)
    assert warnings == [
        f"1 file that others may not read ({src}/keys/id.pem, mode 0600) is "
        "readable by everyone in the image: it keeps git's modes only, 100644 and 100755 "
        "(see \"What an image keeps\" in the README)"]
    # None: no warning.
    os.chmod(src / "keys/id.pem", 0o644)
    make_image(src, tmp_path / "d.img", date=DATE, warn=pytest.fail)


def test_nested_git_entries_are_skipped(tmp_path):
    src = tmp_path / "src"
    (src / "sub" / ".GIT").mkdir(parents=True)
    (src / "sub" / ".GIT" / "config").write_text("x")
    (src / "sub" / "file").write_text("y")
    warnings = []
    result = make_image(src, tmp_path / "n.img", date=DATE, warn=warnings.append)
    assert len(warnings) == 1 and ".GIT: skipped" in warnings[0]
    checked = check_image(tmp_path / "n.img", tmp_path)
    assert image_listing(checked.git_dir, checked.commit) == {b"sub/file": ("100644", b"y")}


def test_empty_source_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    result = make_image(tmp_path / "empty", tmp_path / "e.img", date=DATE)
    assert result.tree == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    assert check_image(tmp_path / "e.img", tmp_path).objects == 2


def test_file_url_source(tmp_path):
    a = make_image(f"file://{SITE}", tmp_path / "u.img", date=DATE)
    b = make_image(os.path.relpath(SITE), tmp_path / "p.img", date=DATE)
    assert (tmp_path / "u.img").read_bytes() == (tmp_path / "p.img").read_bytes()


def test_progress_reports_hashing_deltas_and_writing(tmp_path):
    seen = []
    make_image(SITE, tmp_path / "p.img", date=DATE, progress=seen.append)
    text = "\n".join(seen)
    assert "Hashing files:" in text
    assert "Compressing objects" in text or "Enumerating objects" in text
    assert "Writing image:" in text


def test_cli_prints_a_summary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", "--date", DATE,
                           str(SITE), str(tmp_path / "c.img")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # Not a terminal: no progress, only the summary line (tests/make/test_summary.py).
    assert "\r" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"{tmp_path / 'c.img'}: ")
    assert "objects, commit " in proc.stdout
