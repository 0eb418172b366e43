"""`docteur extract`: the result equals `git archive | tar -x` of the same
commit (git is the oracle), and nothing is ever written outside DEST, not
through a link already in DEST nor through a hostile image."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import tempfile
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.make import make_image
from docteur_core.reader import Image
from docteur_core.files.extract import extract

from tests.helpers.forge import Obj, hostile_image, tree
from tests.helpers.treegen import GENERATED_DATE as DATE, git_trees as trees
from tests.helpers.treegen import source_of

_DATE_SECONDS = int(datetime.fromisoformat(DATE.replace("Z", "+00:00")).timestamp())
from tests.helpers.support import REPO_ROOT, git


def _docteur(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, cwd=REPO_ROOT)


def _snapshot(root: Path, modes: bool = True) -> dict:
    """path -> what is there: ("dir"), ("link", target), ("file", exec bit,
    bytes, mtime); links never followed."""
    out = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, broot)
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(info.st_mode):
                out[rel] = ("dir",)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", bool(info.st_mode & 0o100), f.read(),
                                int(info.st_mtime))
    return out


@pytest.fixture(scope="module")
def repo_image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extract")
    repo = tmp / "repo"
    git("init", "-q", str(repo))
    root = os.fsencode(repo)
    for name in (b"plain.txt", b"caf\xc3\xa9.txt", b"new\nline", b"latin1-\xe9", b" sp "):
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"content of " + name)
    (repo / "a" / "b" / "c").mkdir(parents=True)
    (repo / "a" / "b" / "c" / "deep").write_text("deep\n")
    (repo / "a" / "big").write_bytes(os.urandom(3 << 20))  # streamed, not held
    (repo / "a" / "empty").write_bytes(b"")
    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "a" / "b" / "tool").write_text("#!/bin/sh\n")
    (repo / "a" / "b" / "tool").chmod(0o755)
    os.symlink("a/b", repo / "link")
    os.symlink("../../run.sh", repo / "a" / "b" / "up")
    os.symlink("/etc/passwd", repo / "absolute")
    os.symlink(b"/nowhere/\xe9", os.path.join(root, b"dangling"))
    git("add", "-A", cwd=repo)
    git("update-index", "--add", "--cacheinfo", "160000," + "1" * 40 + ",a/module", cwd=repo)
    git("commit", "-q", "-m", "extract me", cwd=repo)
    image = tmp / "repo.img"
    make_image(repo, image)
    return repo, image


def _git_archive(repo: Path, treeish: str, dest: Path, *paths: str) -> None:
    dest.mkdir()
    archive = git("archive", "--format=tar", treeish, *paths, cwd=repo)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


@pytest.mark.parametrize("mode", ["light", "fast"])
def test_extract_equals_git_archive(repo_image, tmp_path, mode):
    repo, image = repo_image
    proc = _docteur("extract", "--mode", mode, image, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"" and proc.stderr == b""  # no progress off a terminal
    _git_archive(repo, "HEAD", tmp_path / "ref")
    got, want = _snapshot(tmp_path / "out"), _snapshot(tmp_path / "ref")
    assert got == want
    assert got[b"a/module"] == ("dir",) and got[b"link"] == ("link", b"a/b")
    assert got[b"dangling"] == ("link", b"/nowhere/\xe9")
    # git's modes exactly, whatever the umask
    out = tmp_path / "out"
    assert stat.S_IMODE(os.lstat(out / "run.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(out / "plain.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.lstat(out / "a" / "b").st_mode) == 0o755


def test_extract_subtree_equals_git_archive_of_it(repo_image, tmp_path):
    repo, image = repo_image
    proc = _docteur("extract", image, "a/b", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    # the commit, not the tree HEAD:a/b, so that git stamps the commit's date
    _git_archive(repo, "HEAD", tmp_path / "ref", "a/b")
    assert _snapshot(tmp_path / "out") == _snapshot(tmp_path / "ref" / "a" / "b")
    assert (tmp_path / "out" / "c" / "deep").read_text() == "deep\n"


@pytest.mark.parametrize("mode", ["light", "fast"])
@pytest.mark.parametrize("path", ["run.sh", "a/b/tool", "a/big", "a/empty", "a/b/up",
                                  "dangling", "a/module"])
def test_extract_one_entry_equals_git_archive_of_it(repo_image, tmp_path, mode, path):
    """A file, link or submodule at PATH lands in DEST under its own name,
    as git archive writes it (modes, bytes, link target, mtime)."""
    repo, image = repo_image
    proc = _docteur("extract", "--mode", mode, image, path, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    _git_archive(repo, "HEAD", tmp_path / "ref", path)
    name = os.fsencode(path.rsplit("/", 1)[-1])
    want = _snapshot(tmp_path / "ref")[os.fsencode(path)]
    assert _snapshot(tmp_path / "out") == {name: want}
    if want[0] == "file":
        assert (stat.S_IMODE(os.lstat(tmp_path / "out" / name.decode()).st_mode)
                == (0o755 if want[1] else 0o644))


@pytest.mark.oracle
def test_extract_keeps_empty_directories(tmp_path):
    """git archive cannot carry empty directories; the source itself is the oracle."""
    src = tmp_path / "src"
    (src / "empty" / "nested-empty").mkdir(parents=True)
    (src / "d").mkdir()
    (src / "d" / "f").write_text("f\n")
    (src / "x").write_text("#!/bin/sh\n")
    (src / "x").chmod(0o755)
    os.symlink("d/f", src / "l")
    make_image(src, tmp_path / "src.img")
    proc = _docteur("extract", tmp_path / "src.img", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    strip = lambda snap: {k: v[:3] for k, v in snap.items()}  # noqa: E731 (mtimes differ)
    assert strip(_snapshot(tmp_path / "out")) == strip(_snapshot(src))
    assert (tmp_path / "out" / "empty" / "nested-empty").is_dir()


def _one_line_error(proc, *words: bytes) -> None:
    assert proc.returncode == 1, proc
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_extract_refuses_a_non_empty_dest_a_link_or_a_file(repo_image, tmp_path):
    _, image = repo_image
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_text("keep")
    _one_line_error(_docteur("extract", image, dest), b"not empty", b"--force")
    assert os.listdir(dest) == ["mine"]
    os.symlink(dest, tmp_path / "via-link")
    _one_line_error(_docteur("extract", image, tmp_path / "via-link"), b"symbolic link")
    _one_line_error(_docteur("extract", image, dest / "mine"), b"not a directory")
    _one_line_error(_docteur("extract", image, "run.sh/x", tmp_path / "x"), b"not a directory")
    assert not (tmp_path / "x").exists()
    assert os.listdir(dest) == ["mine"]


def test_force_never_follows_a_link_in_dest(repo_image, tmp_path):
    """Links planted in DEST where the image has a directory and a file: with
    --force they are replaced, and what they point to is untouched."""
    repo, image = repo_image
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "run.sh").write_text("outside\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "a")  # the image's a/ would go through it
    os.symlink(outside / "run.sh", dest / "run.sh")  # the image's run.sh would overwrite it
    (dest / "plain.txt").write_text("old")  # a file in the way is replaced
    (dest / "extra").write_text("kept")
    proc = _docteur("extract", "--force", image, dest)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(outside)) == ["run.sh"]
    assert (outside / "run.sh").read_text() == "outside\n"
    assert not (dest / "a").is_symlink() and (dest / "a" / "b" / "c" / "deep").is_file()
    assert not (dest / "run.sh").is_symlink()
    assert (dest / "run.sh").read_text().startswith("#!/bin/sh")
    assert (dest / "plain.txt").read_text() == "content of plain.txt"
    assert (dest / "extra").read_text() == "kept"
    # a directory where the image has a file is not removed
    dest2 = tmp_path / "dest2"
    (dest2 / "run.sh").mkdir(parents=True)
    _one_line_error(_docteur("extract", "--force", image, dest2), b"/run.sh", b"directory")


@pytest.mark.parametrize("name", ["..", "/etc", "../x", ".", ""])
def test_hostile_names_write_nothing_outside(tmp_path, name):
    blob = Obj("blob", b"pwned\n")
    inner = Obj("tree", tree(("100644", "pwned", blob.oid)))
    image = tmp_path / "hostile.img"
    hostile_image(image, [("40000", name, inner), ("100644", "ok", blob)])
    dest = tmp_path / "work" / "dest"
    dest.mkdir(parents=True)
    _one_line_error(_docteur("extract", image, dest), b"damaged image")
    assert os.listdir(tmp_path / "work") == ["dest"]
    assert not any(p.name == "pwned" for p in tmp_path.rglob("*"))


def test_a_link_and_a_directory_of_one_name_is_refused(tmp_path):
    """`a -> OUTSIDE` then `a/b`: the second `a` is a duplicate name, which
    the reader refuses; extract must stop before anything reaches OUTSIDE."""
    outside = tmp_path / "outside"
    outside.mkdir()
    link = Obj("blob", str(outside).encode())
    blob = Obj("blob", b"pwned\n")
    sub = Obj("tree", tree(("100644", "b", blob.oid)))
    image = tmp_path / "hostile.img"
    hostile_image(image, [("120000", "a", link), ("40000", "a", sub)])
    proc = _docteur("extract", image, tmp_path / "dest")
    _one_line_error(proc, b"damaged image")
    assert os.listdir(outside) == []


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("target", [b"target\0hidden", b""])
def test_a_link_no_file_system_can_hold_is_one_line(tmp_path, force, target):
    """A link whose target holds a NUL byte (symlink(2) takes a C string:
    os.symlink raised ValueError, a traceback) or is empty: one line naming
    the link, exit 1, and its place in DEST left as it was: nothing made,
    and with --force what was there is not removed."""
    blob = Obj("blob", b"kept\n")
    image = tmp_path / "links.img"
    hostile_image(image, [("100644", "a-file", blob), ("120000", "b-link", Obj("blob", target))])
    dest = tmp_path / "dest"
    dest.mkdir()
    if force:
        (dest / "b-link").write_text("mine\n")
    proc = _docteur("extract", *(["--force"] if force else []), image, dest)
    _one_line_error(proc, b"damaged image", b"/b-link", b"NUL byte")
    assert sorted(os.listdir(dest)) == ["a-file"] + (["b-link"] if force else [])
    if force:
        assert not (dest / "b-link").is_symlink() and (dest / "b-link").read_text() == "mine\n"
    assert (dest / "a-file").read_bytes() == b"kept\n"  # what came before it is whole


@settings(max_examples=int(os.environ.get("DOCTEUR_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=trees, mode=st.sampled_from(["light", "fast"]))
def test_generated_trees_extract_to_their_source(spec, mode):
    """Odd names, links anywhere (absolute, `..`, dangling), empty
    directories: extracting the image of a directory gives the directory
    back, with the modes git keeps (the owner's executable bit)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = source_of(spec, tmp)
        make_image(src, tmp / "out.img", date=DATE, warn=lambda w: None)
        with Image.open(tmp / "out.img", mode) as image:
            counts = extract(image, "", tmp / "out")
        strip = lambda snap: {k: v[:3] for k, v in snap.items()}  # noqa: E731
        got = _snapshot(tmp / "out")
        assert strip(got) == strip(_snapshot(src))
        assert counts.files + counts.links + counts.dirs == len(got)
        assert {v[3] for v in got.values() if v[0] == "file"} <= {_DATE_SECONDS}


def test_progress_on_a_terminal(repo_image, tmp_path):
    """stderr a terminal (a real pty): a progress line, redrawn with \\r,
    ending with the totals and a newline; stdout stays clean."""
    import pty

    _, image = repo_image
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "docteur_core", "extract", str(image),
                               str(tmp_path / "out")], stdout=subprocess.PIPE,
                              stderr=secondary, cwd=REPO_ROOT)
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the writer is gone
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0 and proc.stdout == b""
    assert shown.startswith(b"\r") and shown.endswith(b"\r\n"), shown  # the pty's newline
    files = sum(1 for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.is_symlink())
    assert f"{files} files, 4 links, ".encode() in shown.rsplit(b"\r", 2)[-2], shown


# -- a PATH taken for DEST ------------------------------------------------------

def _docteur_in(cwd: Path, *args) -> subprocess.CompletedProcess:
    """`docteur` run from `cwd` (relative DESTs), this checkout's package."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.parametrize("dest", ["plain.txt", "run.sh", "a", "a/b/", "link"])
def test_a_dest_that_is_a_path_of_the_image_is_refused(repo_image, tmp_path, dest):
    """`extract IMAGE plain.txt` wrote the whole tree into a new folder
    `plain.txt/` and exited 0: PATH was meant. One line with the command
    that was probably meant, exit 2 (a usage mistake), nothing written."""
    _, image = repo_image
    proc = _docteur_in(tmp_path, "extract", image, dest)
    assert proc.returncode == 2, proc
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"docteur extract: {dest} is a path in the image")
    assert f"`docteur extract {image} {dest} DEST`" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_an_existing_folder_or_another_name_is_still_dest(repo_image, tmp_path):
    """The refusal is only for a DEST that is not a folder yet: an existing
    folder of that name (made on purpose) and a name the image does not
    hold are written into as before."""
    _, image = repo_image
    (tmp_path / "a").mkdir()
    assert _docteur_in(tmp_path, "extract", image, "a").returncode == 0
    assert (tmp_path / "a" / "plain.txt").read_bytes() == b"content of plain.txt"
    assert _docteur_in(tmp_path, "extract", image, "out").returncode == 0
    assert (tmp_path / "out" / "run.sh").is_file()
    assert _docteur_in(tmp_path, "extract", image, "plain.txt", "one").returncode == 0
    assert os.listdir(tmp_path / "one") == ["plain.txt"]


def test_a_missing_dest_is_a_usage_error(repo_image, tmp_path):
    _, image = repo_image
    proc = _docteur_in(tmp_path, "extract", image)
    assert proc.returncode == 2 and "the following arguments are required: DEST" in proc.stderr
    assert proc.stderr.startswith("usage: docteur extract ")
    assert os.listdir(tmp_path) == []
