"""`docteur diff`, with git as the oracle: `git diff-tree -r --name-status`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur_core.make import make_image
from docteur_core.diff import command as diffcommand
from docteur_core.diff import compare as diffmod
from docteur_core.reader.commands import _name
from docteur_core.reader.image import Image
from tests.helpers.support import REPO_ROOT, git
from tests.helpers.treegen import git_trees as trees, materialise

DATE = "2026-01-01T00:00:00Z"


def docteur(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, cwd=REPO_ROOT)


def git_diff(repo: Path, old: str, new: str) -> bytes:
    return git("-c", "core.quotePath=false", "diff-tree", "-r", "--name-status", old, new,
               cwd=repo)


# -- a real repository, commit by commit --------------------------------------

def _commit(repo: Path, tag: str) -> None:
    git("add", "-A", "--force", ".", cwd=repo)
    git("commit", "-q", "--allow-empty", "-m", tag, cwd=repo)
    git("tag", tag, cwd=repo)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A repository whose commits change every way git tells apart, and an
    image of each commit (`docteur make REPO --branch TAG`)."""
    base = tmp_path_factory.mktemp("history")
    repo = base / "repo"
    git("init", "-q", str(repo))
    w = repo

    (w / "a").write_text("a\n")
    (w / "a.b").write_text("dot\n")
    (w / "keep").write_text("same\n")
    (w / "run.sh").write_text("#!/bin/sh\n")
    (w / "sub").mkdir()
    (w / "sub" / "x").write_text("x\n")
    (w / "sub" / "deep").mkdir()
    (w / "sub" / "deep" / "y").write_text("y\n")
    (w / "link").symlink_to("a")
    (w / "été tab\there").write_text("odd\n")
    _commit(repo, "c1")

    (w / "a").unlink()  # a file becomes a directory: D a, then A a/inner
    (w / "a").mkdir()
    (w / "a" / "inner").write_text("in\n")
    (w / "a.b").write_text("dot changed\n")  # M, sorted between a and a/
    os.chmod(w / "run.sh", 0o755)  # 100644 -> 100755: M
    (w / "link").unlink()  # a link becomes a file: T
    (w / "link").write_text("now a file\n")
    shutil.rmtree(w / "sub" / "deep")  # a whole subtree deleted
    (w / "new").write_text("new\n")
    (w / "été tab\there").unlink()
    _commit(repo, "c2")

    (w / "a" / "inner").unlink()  # a directory becomes a link: D a/inner, A a
    (w / "a").rmdir()
    (w / "a").symlink_to("keep")
    (w / "sub" / "deep").mkdir()
    (w / "sub" / "deep" / "z").write_bytes(bytes(range(256)))
    _commit(repo, "c3")

    images = {}
    for tag in ("c1", "c2", "c3"):
        images[tag] = base / f"{tag}.img"
        proc = docteur("make", "-q", "--branch", tag, repo, images[tag])
        assert proc.returncode == 0, proc.stderr
    return repo, images


@pytest.mark.parametrize("old,new", [("c1", "c2"), ("c2", "c1"), ("c2", "c3"), ("c1", "c3"),
                                     ("c3", "c1")])
def test_images_of_commits_diff_as_git_does(history, old, new):
    repo, images = history
    expected = git_diff(repo, old, new)
    assert expected  # the commits do differ
    proc = docteur("diff", images[old], images[new])
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, expected, b"")


def test_fast_mode_and_verify_give_the_same_answer(history):
    repo, images = history
    expected = git_diff(repo, "c1", "c3")
    for options in (["--mode", "fast"], ["--verify"]):
        proc = docteur("diff", *options, images["c1"], images["c3"])
        assert (proc.returncode, proc.stdout) == (1, expected)


def test_an_image_and_its_repository_or_itself_are_equal(history):
    repo, images = history
    for old, new in ((images["c3"], repo), (repo, images["c3"]), (images["c1"], images["c1"])):
        proc = docteur("diff", old, new)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    proc = docteur("diff", images["c1"], repo)  # the repository is read at HEAD (c3)
    assert (proc.returncode, proc.stdout) == (1, git_diff(repo, "c1", "c3"))


@pytest.mark.parametrize("old,new", [("c1", "c2"), ("c3", "c1"), ("c2", "c2")])
def test_two_commits_of_one_repository_diff_as_git_does(history, old, new):
    """--old-branch/--new-branch: `docteur diff REPO REPO` is `git diff A B`."""
    repo, _ = history
    proc = docteur("diff", repo, repo, "--old-branch", old, "--new-branch", new)
    expected = git_diff(repo, old, new)
    assert (proc.returncode, proc.stdout, proc.stderr) == (int(old != new), expected, b"")


def test_branches_are_named_as_make_names_them(history):
    """Every name `make --branch` takes: a tag, a full ref, a branch, a commit
    id, abbreviated or not; the image make built from it is then equal."""
    repo, images = history
    branch = git("symbolic-ref", "--short", "HEAD", cwd=repo).decode().strip()
    c1 = git("rev-parse", "c1^{commit}", cwd=repo).decode().strip()
    for name, tag in (("refs/tags/c2", "c2"), (branch, "c3"), (c1, "c1"), (c1[:10], "c1")):
        proc = docteur("diff", images[tag], repo, "--new-branch", name)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b""), name
        proc = docteur("diff", "--old-branch", name, repo, images["c2"])
        assert (proc.returncode, proc.stdout) == (int(tag != "c2"), git_diff(repo, tag, "c2"))


def test_a_bad_branch_is_trouble_in_one_line(history, tmp_path):
    repo, images = history
    plain = tmp_path / "plain"
    plain.mkdir()
    for args, line in (
            ([repo, repo, "--old-branch", "nope"], f"{repo}: unknown branch or tag 'nope'"),
            ([repo, repo, "--new-branch", "c1:a"], f"{repo}: unknown branch or tag 'c1:a'"),
            ([images["c1"], repo, "--old-branch", "c1"],
             f"--old-branch applies to a Git repository, and {images['c1']} is not one"),
            ([repo, plain, "--new-branch", "c1"],
             f"--new-branch applies to a Git repository, and {plain} is not one")):
        proc = docteur("diff", *args)
        assert (proc.returncode, proc.stdout, proc.stderr.decode()) == (
            2, b"", f"docteur diff: {line}\n")


def test_stat_and_json(history):
    repo, images = history
    proc = docteur("diff", "--json", images["c2"], images["c3"])
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["old"] == str(images["c2"]) and doc["new"] == str(images["c3"])
    assert doc["equal"] is False
    lines = git_diff(repo, "c2", "c3").decode().splitlines()
    assert [f"{c['status']}\t{c['path']}" for c in doc["changes"]] == lines
    z = [c for c in doc["changes"] if c["path"] == "sub/deep/z"][0]
    assert z == {"status": "A", "path": "sub/deep/z", "old_kind": None, "new_kind": "file",
                 "old_mode": None, "new_mode": 0o100644, "old_id": None,
                 "new_id": git("rev-parse", "c3:sub/deep/z", cwd=repo).decode().strip(),
                 "old_size": None, "new_size": 256}
    link = [c for c in doc["changes"] if c["path"] == "a"][0]
    assert (link["status"], link["new_kind"], link["new_mode"], link["new_size"]) == (
        "A", "symlink", 0o120000, 4)

    proc = docteur("diff", "--stat", images["c2"], images["c3"])
    assert proc.returncode == 1
    out = proc.stdout.decode().splitlines()
    assert out[-1] == " 3 paths changed (2 added, 1 deleted), 3 bytes -> 260 bytes"
    assert [line.split("|")[0].strip() for line in out[:-1]] == [
        line.split("\t")[1] for line in lines]
    assert out[0] == " a          | - ->   4"  # the link sorts before the folder a/
    assert out[1] == " a/inner    | 3 ->   -"
    assert out[2] == " sub/deep/z | - -> 256"


def test_equal_json_and_stat(history):
    _, images = history
    proc = docteur("diff", "--json", images["c1"], images["c1"])
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"old": str(images["c1"]), "new": str(images["c1"]),
                                       "equal": True, "changes": []}
    proc = docteur("diff", "--stat", images["c1"], images["c1"])
    assert (proc.returncode, proc.stdout) == (0, b"")


def test_trouble_is_exit_2_in_one_line(history, tmp_path):
    _, images = history
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    for old, new, words in ((images["c1"], text, f"{text}: not a docteur image"),
                            (tmp_path / "missing.img", images["c1"], "missing.img"),
                            ("nbd+unix:///?socket=" + str(tmp_path / "no.sock"), images["c1"],
                             "no.sock")):
        proc = docteur("diff", old, new)
        assert proc.returncode == 2 and proc.stdout == b""
        err = proc.stderr.decode()
        assert len(err.splitlines()) == 1 and err.startswith("docteur diff: ") and words in err
    proc = docteur("diff", images["c1"])  # usage
    assert proc.returncode == 2 and b"usage: docteur diff" in proc.stderr
    proc = docteur("diff", "--stat", "--json", images["c1"], images["c2"])
    assert proc.returncode == 2 and b"not allowed with argument" in proc.stderr


def test_a_damaged_side_is_named(history, tmp_path):
    """A changed file's blob damaged in the new image, which --stat reads for
    its size: the message names that image. (A damaged tree object would
    not be read: the path index's listing of its directory, re-encoded and
    hashed, proves the same tree.)"""
    repo, images = history
    data = bytearray(images["c2"].read_bytes())
    with Image.open(images["c2"], "fast") as image:
        offset = [n for n in image.entries("") if n.name == "run.sh"][0].offset
    data[offset + 4] ^= 0xFF
    bad = tmp_path / "bad.img"
    bad.write_bytes(bytes(data))
    proc = docteur("diff", "--stat", images["c1"], bad)
    assert proc.returncode == 2 and proc.stdout == b""
    err = proc.stderr.decode()
    assert len(err.splitlines()) == 1 and err.startswith(f"docteur diff: {bad}: damaged image")


# -- generated pairs of trees ---------------------------------------------------

def _git_tree(gitdir: Path, root: Path, index: Path) -> str:
    env = {"GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(root), "GIT_INDEX_FILE": str(index)}
    git("add", "-A", "--force", ".", cwd=root, env=env)
    return git("write-tree", cwd=root, env=env).decode().strip()


def _docteur_diff(old, new) -> tuple[bytes, list]:
    """The verb's own path, in this process: sides opened as the command
    opens them, the same walk and the same printing."""
    sides = [diffcommand.directory_side(os.fsdecode(s), pytest.fail)
             if os.path.isdir(s) else diffcommand.ImageSide(os.fsdecode(s), Image.open(s))
             for s in (old, new)]
    a, b = sides
    try:
        changes = list(diffmod.diff_trees(a.list, a.root, b.list, b.root))
    finally:
        for side in sides:
            side.close()
    return diffmod.name_status(changes, _name), changes


@settings(max_examples=int(os.environ.get("DOCTEUR_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(old=trees, new=trees, image_side=st.sampled_from(["none", "old", "new"]))
def test_generated_pairs_diff_as_git_does(old, new, image_side):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roots = []
        for name, spec in (("old", old), ("new", new)):
            root = tmp / name
            root.mkdir()
            materialise(os.fsencode(root), spec)
            roots.append(root)
        gitdir = tmp / "g.git"
        git("init", "-q", "--bare", str(gitdir))
        ta = _git_tree(gitdir, roots[0], tmp / "a.index")
        tb = _git_tree(gitdir, roots[1], tmp / "b.index")
        expected = git("-c", "core.quotePath=false", "diff-tree", "-r", "--name-status", ta, tb,
                       env={"GIT_DIR": str(gitdir)})
        sides = list(roots)
        if image_side != "none":
            i = 0 if image_side == "old" else 1
            sides[i] = tmp / "side.img"
            make_image(roots[i], sides[i], date=DATE, warn=lambda w: None)
        out, changes = _docteur_diff(*sides)
        assert out == expected
        assert {c.status for c in changes} <= set("ADMT")


def test_directory_against_image_through_the_cli(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one\n")
    (src / "d").mkdir()
    (src / "d" / "g").write_text("two\n")
    image = tmp_path / "src.img"
    assert docteur("make", "-q", "--date", DATE, src, image).returncode == 0
    proc = docteur("diff", image, src)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    (src / "f").write_text("changed\n")
    os.chmod(src / "d" / "g", 0o755)
    (src / "d" / "h").symlink_to("g")
    proc = docteur("diff", image, src)
    assert (proc.returncode, proc.stdout) == (1, b"M\td/g\nA\td/h\nM\tf\n")
    proc = docteur("diff", "--stat", image, src)
    assert proc.stdout.decode().splitlines() == [
        " d/g | 4 -> 4", " d/h | - -> 1", " f   | 4 -> 8",
        " 3 paths changed (1 added, 2 modified), 8 bytes -> 13 bytes"]


# -- the pure walk --------------------------------------------------------------

def _lister(trees_by_id):
    return lambda tid: trees_by_id[tid]


def test_identical_subtrees_are_never_listed():
    """Two trees that share a subtree id: the walk does not open it."""
    shared = b"S" * 20
    listed = []
    trees_a = {b"A" * 20: [(b"big", 0o40000, shared, shared), (b"f", 0o100644, b"1" * 20, None)]}
    trees_b = {b"B" * 20: [(b"big", 0o40000, shared, shared), (b"f", 0o100644, b"2" * 20, None)]}

    def lister(trees_by_id):
        def list_(tid):
            listed.append(tid)
            return trees_by_id[tid]
        return list_

    changes = list(diffmod.diff_trees(lister(trees_a), (b"A" * 20, b"A" * 20),
                                      lister(trees_b), (b"B" * 20, b"B" * 20)))
    assert [(c.status, c.path) for c in changes] == [("M", b"f")]
    assert shared not in listed


def test_a_tree_that_contains_itself_is_refused():
    """A forged tree naming its own id: the walk stops at max_paths."""
    from docteur_core.errors import LimitExceeded

    loop = b"L" * 20
    trees_a = {loop: [(b"d", 0o40000, loop, loop)]}
    trees_b = {b"E" * 20: []}
    with pytest.raises(LimitExceeded, match="more than 1000 paths"):
        list(diffmod.diff_trees(_lister(trees_a), (loop, loop), _lister(trees_b),
                                (b"E" * 20, b"E" * 20), max_paths=1000))


def test_stat_text_pads_like_git():
    changes = [diffmod.Change("A", b"a", None, 0o100644, None, b"1" * 20),
               diffmod.Change("M", b"longer/name", 0o100644, 0o100755, b"1" * 20, b"1" * 20)]
    out = diffmod.stat_text(changes, [(None, 5), (12345, 12345)], _name).decode()
    assert out == (" a           |     - ->     5\n"
                   " longer/name | 12345 -> 12345\n"
                   " 2 paths changed (1 added, 1 modified), 12345 bytes -> 12350 bytes\n")
    assert diffmod.stat_text([], [], _name) == b""


def test_a_repository_without_commits_is_trouble(history, tmp_path):
    _, images = history
    empty = tmp_path / "empty-repo"
    git("init", "-q", str(empty))
    proc = docteur("diff", images["c1"], empty)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert proc.stderr.decode() == f"docteur diff: {empty}: the repository has no commit at HEAD\n"
