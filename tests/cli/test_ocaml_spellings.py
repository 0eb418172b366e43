"""Command lines of the OCaml docteur, as its announcement shows them, mean
the same here: `docteur make -b REF -d DATE --bs N relativize://PATH IMAGE`,
`docteur verify -q IMAGE` (its options: bin/make.ml, bin/verify.ml).
Each spelling gives byte for byte what the long one gives; `verify -q` is
checked against the OCaml docteur.verify -q itself.
"""

from __future__ import annotations

import pytest
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ocaml_oracle as oc
from tests.helpers.support import git

REPO_ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-01-01T12:00:00+02:00"


def docteur(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, env=env, cwd=cwd or REPO_ROOT,
                          stdin=subprocess.DEVNULL, timeout=300)


def site(root: Path) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hello</h1>\n")
    (root / "docs" / "a.md").write_text("# a\n" * 40)
    return root


def test_make_b_and_bs_on_a_repository(tmp_path):
    repo = site(tmp_path / "repo")
    git("init", "-q", "-b", "main", str(repo))
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "one", cwd=repo)
    git("checkout", "-q", "-b", "other", cwd=repo)
    (repo / "index.html").write_text("<h1>other</h1>\n")
    git("commit", "-q", "-am", "two", cwd=repo)  # HEAD is now another branch
    short = docteur("make", "-q", "-b", "refs/heads/main", "--bs", "4096", repo,
                    tmp_path / "short.img")
    long = docteur("make", "-q", "--branch", "refs/heads/main", "--block-size", "4096", repo,
                   tmp_path / "long.img")
    assert short.returncode == long.returncode == 0, short.stderr
    assert (tmp_path / "short.img").read_bytes() == (tmp_path / "long.img").read_bytes()
    main = git("rev-parse", "refs/heads/main", cwd=repo).decode().strip()
    assert f" commit {main}, ".encode() in short.stdout
    assert (tmp_path / "short.img").stat().st_size % 4096 == 0
    eq = docteur("make", "-q", "--bs=4096", "-brefs/heads/main", repo, tmp_path / "eq.img")
    assert eq.returncode == 0
    assert (tmp_path / "eq.img").read_bytes() == (tmp_path / "long.img").read_bytes()


def test_make_d_and_relativize_on_a_directory(tmp_path):
    site(tmp_path / "work" / "site")
    cwd = tmp_path / "work"
    want = docteur("make", "-q", "--date", DATE, cwd / "site", tmp_path / "want.img")
    assert want.returncode == 0
    for source in ("relativize://site", "relativize:///site", "relativize://./site/"):
        proc = docteur("make", "-q", "-d", DATE, source, tmp_path / "got.img", cwd=cwd)
        assert proc.returncode == 0, (source, proc.stderr)
        assert (tmp_path / "got.img").read_bytes() == (tmp_path / "want.img").read_bytes()
    # A bad value is refused in the spelling typed.
    bad = docteur("make", "--bs", "1000", cwd / "site", tmp_path / "x.img")
    assert bad.returncode == 2
    assert bad.stderr.decode().splitlines()[-1].startswith(
        "docteur make: error: argument --bs: '1000' is not a block size")
    missing = docteur("make", "relativize://nope", tmp_path / "x.img", cwd=cwd)
    assert (missing.returncode, missing.stderr) == (
        1, b"docteur make: relativize://nope: no such file or directory\n")


def test_make_help_says_where_the_default_branch_differs():
    proc = docteur("make", "--help")
    text = b" ".join(proc.stdout.split()).decode()
    assert "also -b REF" in text and "also -d DATE" in text and "also --bs N" in text
    assert "default: HEAD" in text and "refs/heads/master" in text
    assert "relativize://" in text


@pytest.mark.oracle
def test_verify_q_prints_nothing_as_the_ocaml_verify_does(tmp_path):
    site(tmp_path / "site")
    image = tmp_path / "site.img"
    assert docteur("make", "-q", "-d", DATE, tmp_path / "site", image).returncode == 0
    ours = docteur("verify", "-q", image)
    theirs = subprocess.run([str(oc.Oracle(oc.built()).verify_exe), "-q", str(image)],
                            capture_output=True, timeout=300)
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, b"", b"")
    assert (theirs.returncode, theirs.stdout) == (0, b"")
    loud = docteur("verify", image)
    assert loud.returncode == 0 and loud.stdout.startswith(b"commit\t: ")
    # A damaged image: -q still says what is wrong, and the status is 1.
    data = bytearray(image.read_bytes())
    data[200] ^= 0xFF
    bad = tmp_path / "bad.img"
    bad.write_bytes(bytes(data))
    proc = docteur("verify", "-q", bad)
    assert proc.returncode == 1 and proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert lines[-1].startswith(f"docteur verify: {bad} is damaged: ") and len(lines) >= 2
