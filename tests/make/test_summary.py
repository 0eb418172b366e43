"""The line `docteur make` ends with on stderr, and that its numbers are right.

Files and bytes are checked against the source itself, the image size
against the file, objects and deltas against `git verify-pack -v` of the
PACK cut out of the image (git's own count, not ours).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from docteur_core.make.summary import human_bytes, summary_line
from tests.helpers.support import git
from tests.helpers.gitoracle import check_image

DATE = "2026-01-01T00:00:00Z"

LINE = re.compile(r"(?P<image>.+): (?P<files>[\d,]+) files?, (?P<bytes_in>[\d.]+ [KMGTP]?B) in "
                  r"-> (?P<out>[\d.]+ [KMGTP]?B) out"
                  r"(?: \((?:(?P<ratio>[\d.]+)%|larger by (?P<larger>[\d.]+ [KMGTP]?B))\))?, "
                  r"(?P<objects>[\d,]+) objects? \((?P<deltas>[\d,]+) deltas?\), "
                  r"(?P<seconds>[\d.]+) s")


def make(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", "make", *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True, cwd=cwd)


def versions_tree(root: Path) -> tuple[int, int]:
    """Releases of one growing file (so git finds deltas), a link, an executable;
    (regular files, their bytes)."""
    root.mkdir()
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(200))
    total = files = 0
    for v in range(12):
        text += f"release {v} adds this line\n"
        path = root / f"v{v:02}" / "notes.txt"
        path.parent.mkdir()
        path.write_text(text)
        total += len(text)
        files += 1
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("v00/notes.txt", root / "latest")  # a link: not a file, not counted
    return files + 1, total + len(b"#!/bin/sh\necho hi\n")


def git_pack_counts(pack: bytes, workdir: Path) -> tuple[int, int]:
    """(objects, deltas) as `git verify-pack -v` counts the pack."""
    path = workdir / "cut.pack"
    path.write_bytes(pack)
    git("index-pack", "-o", str(path.with_suffix(".idx")), str(path))
    out = git("verify-pack", "-v", str(path.with_suffix(".idx"))).decode()
    objects = deltas = 0
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and re.fullmatch(r"[0-9a-f]{40}", fields[0]):
            objects += 1
            deltas += len(fields) == 7  # depth and base: a delta entry
    assert f"non delta: {objects - deltas} object" in out
    return objects, deltas


def check_line(line: str, image: Path, files: int, bytes_in: int, workdir: Path) -> None:
    m = LINE.fullmatch(line)
    assert m, line
    size = image.stat().st_size
    objects, deltas = git_pack_counts(check_image(image, workdir).pack, workdir)
    assert int(m["files"].replace(",", "")) == files
    assert m["bytes_in"] == human_bytes(bytes_in)
    assert m["out"] == human_bytes(size)
    assert m["ratio"] == f"{100 * size / bytes_in:.1f}"
    assert int(m["objects"].replace(",", "")) == objects
    assert int(m["deltas"].replace(",", "")) == deltas
    assert deltas > 0  # the source was made for git to find some
    assert float(m["seconds"]) >= 0


def test_directory_summary(tmp_path):
    files, bytes_in = versions_tree(tmp_path / "src")
    image = tmp_path / "out.img"
    proc = make("--date", DATE, tmp_path / "src", image)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.decode().splitlines()
    # One line: no warning about what the OCaml fast reader cannot see.
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{image}: ")
    check_line(lines[0], image, files, bytes_in, tmp_path)


OCAML_NOTE = ("; the OCaml docteur's fast reader and its list will not see 1 executable and "
              "1 symbolic link (they see 100644 files only); --compat ocaml stores executables "
              "and links as plain files")


def test_verbose_says_once_what_the_ocaml_fast_reader_misses(tmp_path):
    """Not a warning on every build with an executable or a link: -v adds it
    to the summary line; -q (which wins over -v) says nothing; --compat ocaml
    has nothing to say."""
    files, bytes_in = versions_tree(tmp_path / "src")
    image = tmp_path / "out.img"
    proc = make("-v", "--date", DATE, tmp_path / "src", image)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.decode().splitlines()
    assert line.endswith(OCAML_NOTE), line
    check_line(line[:-len(OCAML_NOTE)], image, files, bytes_in, tmp_path)
    quiet = make("-q", "-v", "--date", DATE, tmp_path / "src", image)
    assert quiet.returncode == 0 and quiet.stderr == b""
    compat = make("-v", "--compat", "ocaml", "--date", DATE, tmp_path / "src", image)
    assert compat.returncode == 0
    (line,) = compat.stderr.decode().splitlines()
    assert LINE.fullmatch(line), line
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("only a plain file\n")
    proc = make("-v", "--date", DATE, plain, image)
    (line,) = proc.stderr.decode().splitlines()
    assert LINE.fullmatch(line), line


@pytest.mark.parametrize("compress", ["default", "max", "zopfli"])
def test_repository_summary(tmp_path, compress):
    repo = tmp_path / "repo"
    files, bytes_in = versions_tree(repo)
    git("init", "-q", str(repo))
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "versions", cwd=repo)
    image = tmp_path / "out.img"
    proc = make("--compress", compress, "--zopfli-iterations", "1", repo, image)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.decode().splitlines()
    check_line(lines[-1], image, files, bytes_in, tmp_path)


def test_quiet_keeps_the_commit_line(tmp_path):
    """-q quiets stderr only: stdout is data (the commit a script deploys)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_bytes(b"a\n")
    image = tmp_path / "out.img"
    loud = make("--date", DATE, tmp_path / "src", image)
    proc = make("-q", "--date", DATE, tmp_path / "src", image)
    assert proc.returncode == 0 and proc.stderr == b""
    assert proc.stdout == loud.stdout
    commit = check_image(image, tmp_path).commit
    assert re.fullmatch(rf"{re.escape(str(image))}: \d+ bytes, 3 objects, commit {commit}, "
                        r"tree [0-9a-f]{40}\n", proc.stdout.decode())


def test_a_tiny_input_says_how_much_larger(tmp_path):
    """27 bytes make an image of kilobytes (header, IDX, padding, path index):
    the line says by how much it is larger, not 24651.9%."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"x" * 27)
    image = tmp_path / "out.img"
    proc = make("--date", DATE, tmp_path / "src", image)
    assert proc.returncode == 0
    line = proc.stderr.decode().splitlines()[-1]
    m = LINE.fullmatch(line)
    assert m and m["bytes_in"] == "27 B" and m["ratio"] is None, line
    assert m["larger"] == human_bytes(image.stat().st_size - 27)
    assert "%" not in line


def test_empty_source_has_no_ratio(tmp_path):
    (tmp_path / "src").mkdir()
    proc = make("--date", DATE, tmp_path / "src", tmp_path / "out.img")
    assert proc.returncode == 0
    line = proc.stderr.decode().splitlines()[-1]
    m = LINE.fullmatch(line)
    assert m and m["files"] == "0" and m["bytes_in"] == "0 B" and m["ratio"] is None
    assert m["objects"] == "2" and m["deltas"] == "0"  # the empty tree and the commit


def test_the_documented_example():
    assert summary_line("disk.img", 1104, 9_200_000, 254_000, 3450, 2901, 4.1) == (
        "disk.img: 1,104 files, 9.2 MB in -> 254 KB out (2.8%), 3,450 objects "
        "(2,901 deltas), 4.1 s")
    assert summary_line("x.img", 1, 10, 512, 1, 1, 0.04) == (
        "x.img: 1 file, 10 B in -> 512 B out (larger by 502 B), 1 object (1 delta), 0.0 s")
    assert summary_line("x.img", 1, 27, 6_700, 3, 0, 0.04) == (
        "x.img: 1 file, 27 B in -> 6.7 KB out (larger by 6.7 KB), 3 objects (0 deltas), 0.0 s")
    assert summary_line("x.img", 1, 1000, 1000, 3, 0, 0.04) == (
        "x.img: 1 file, 1.0 KB in -> 1.0 KB out (100.0%), 3 objects (0 deltas), 0.0 s")


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 KB"),
                                     (9_949, "9.9 KB"), (9_950, "10 KB"), (254_000, "254 KB"),
                                     (999_499, "999 KB"), (999_500, "1.0 MB"),
                                     (9_200_000, "9.2 MB"), (2_200_000_000, "2.2 GB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


@given(st.integers(min_value=0, max_value=10**18))
def test_human_bytes_is_within_rounding(n):
    """At most 3 significant digits, and within 5% of the true value."""
    number, unit = human_bytes(n).split()
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15}[unit]
    assert len(number.replace(".", "")) <= 3 or unit == "PB"
    assert abs(float(number) * scale - n) <= 0.05 * n
