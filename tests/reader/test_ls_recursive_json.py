"""`docteur ls -r -l` against `git ls-tree -r -l` (git is the oracle), and
the `--json` documents of `ls`, `stat` and `info`: valid JSON whatever the
names hold, the fields the README documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from docteur_core.make import make_image

from tests.helpers.support import REPO_ROOT, git

NAMES = [b"plain.txt", b"caf\xc3\xa9.txt", b"new\nline", b'quote"d', b"back\\slash",
         b"latin1-\xe9", b" lead and trail "]


def _docteur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *args], capture_output=True,
                          cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def repo_image(tmp_path_factory):
    """A real repository: nested dirs, an executable, links, odd names, a
    large file, a submodule entry; and its image."""
    tmp = tmp_path_factory.mktemp("lsr")
    repo = tmp / "repo"
    git("init", "-q", str(repo))
    root = os.fsencode(repo)
    for name in NAMES:
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"content of " + name)
    (repo / "a" / "b" / "c").mkdir(parents=True)
    (repo / "a" / "b" / "c" / "deep").write_text("deep\n")
    (repo / "a" / "big").write_bytes(bytes(range(256)) * 4000)
    (repo / "a" / "b-").write_text("sorts after the tree a/b\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "run.sh").chmod(0o755)
    os.symlink("a/b", repo / "link")
    os.symlink(b"/nowhere/\xe9", os.path.join(root, b"dangling"))
    (repo / "sub\ndir").mkdir()
    (repo / "sub\ndir" / "x").write_text("x")
    git("add", "-A", cwd=repo)
    git("update-index", "--add", "--cacheinfo", "160000," + "1" * 40 + ",a/module", cwd=repo)
    git("commit", "-q", "-m", "listing", cwd=repo)
    image = tmp / "repo.img"
    make_image(repo, image)
    return repo, image


@pytest.mark.parametrize("options", [["--mode", "light"], ["--mode", "fast"], ["--verify"]])
def test_ls_recursive_long_matches_git(repo_image, options):
    repo, image = repo_image
    for args, spec in ((["-r", "-l"], "HEAD"), (["-r"], "HEAD"), (["-r", "-l", "a"], "HEAD:a"),
                       (["-l", "a"], "HEAD:a")):
        git_flags = [f for f in args if f.startswith("-")]
        expected = git("-c", "core.quotePath=false", "ls-tree", *git_flags, spec, cwd=repo)
        proc = _docteur("ls", *options, *args[:len(git_flags)], str(image), *args[len(git_flags):])
        assert proc.returncode == 0, proc.stderr
        got = proc.stdout
        if "-r" not in args:  # one level: ours marks directories with a trailing /
            got = b"".join(line[:-2] + b"\n" if line.startswith(b"040000") else line
                           for line in got.splitlines(keepends=True))
        assert got == expected, (args, options)


def test_ls_recursive_of_a_file_is_one_line_error(repo_image):
    _, image = repo_image
    proc = _docteur("ls", "-r", str(image), "run.sh")
    assert proc.returncode == 1
    assert proc.stdout == b"" and proc.stderr.count(b"\n") == 1


def test_ls_json(repo_image):
    repo, image = repo_image
    proc = _docteur("ls", "-r", "-l", "--json", str(image))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.decode("utf-8"))  # valid UTF-8 JSON, latin-1 name included
    assert doc["path"] == "/" and doc["recursive"] is True
    expected = git("ls-tree", "-r", "-l", "-z", "HEAD", cwd=repo).split(b"\0")[:-1]
    assert len(doc["entries"]) == len(expected)
    for entry, line in zip(doc["entries"], expected):
        head, path = line.split(b"\t", 1)
        mode, typ, oid, size = head.split()
        raw = bytes.fromhex(entry["path_hex"]) if "path_hex" in entry else \
            entry["path"].encode("utf-8")
        assert raw == path
        assert (entry["mode"], entry["type"], entry["id"]) == (int(mode, 8), typ.decode(),
                                                              oid.decode())
        assert entry["size"] == (None if size == b"-" else int(size))
        assert entry["name"] == entry["path"].rsplit("/", 1)[-1]
    assert {e["path"] for e in doc["entries"] if "path_hex" in e} == {"latin1-\\xe9"}

    top = json.loads(_docteur("ls", "--json", str(image), "a").stdout)
    assert [e["name"] for e in top["entries"]] == ["b-", "b", "big", "module"]  # git sorts the tree b as "b/"
    assert "size" not in top["entries"][0]  # sizes cost a read each: only with -l


def test_stat_and_info_json(repo_image):
    repo, image = repo_image
    st = json.loads(_docteur("stat", "--json", str(image), "dangling").stdout)
    assert st == {"path": "/dangling", "kind": "symlink", "mode": 0o120000, "size": 10,
                  "id": git("rev-parse", "HEAD:dangling", cwd=repo).decode().strip(),
                  "target": "/nowhere/\\xe9"}
    st = json.loads(_docteur("stat", "--json", str(image), "run.sh").stdout)
    assert (st["kind"], st["mode"], st["size"]) == ("executable", 0o100755, 18)
    assert "target" not in st
    info = json.loads(_docteur("info", "--json", str(image)).stdout)
    assert info["commit"] == git("rev-parse", "HEAD", cwd=repo).decode().strip()
    assert info["tree"] == git("rev-parse", "HEAD^{tree}", cwd=repo).decode().strip()
    assert info["parents"] == [] and info["message"] == "listing\n"
    assert info["message_complete"] is True and info["mode"] == "light"
    assert info["path_index"]["used"] is True and info["path_index"]["paths"] > 0
    assert set(info) == {"commit", "tree", "parents", "author", "committer", "date",
                         "author_date", "objects", "idx_offset", "capacity", "mode",
                         "path_index", "message", "message_complete"}


def test_guest_takes_the_same_flags(repo_image):
    repo, image = repo_image
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-S", "-m", "docteur_core.reader.guest", str(image),
                           "ls", "-r", "-l", "a"], capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == git("-c", "core.quotePath=false", "ls-tree", "-r", "-l", "HEAD:a",
                              cwd=repo)
    bad = subprocess.run([sys.executable, "-S", "-m", "docteur_core.reader.guest", str(image),
                          "cat", "-r", "run.sh"], capture_output=True, env=env)
    assert bad.returncode == 2 and b"cat does not take -r" in bad.stderr
