"""`docteur make --gitignore` / `--exclude`: the tree git itself would record.

Git is the oracle: `git add -A` (without --force) + `git write-tree` over the
same folder, with `--exclude` patterns in the oracle's `.git/info/exclude`
(the rank docteur gives them), must give the root tree the image holds —
for fixed cases that each exercise one of git's rules, and for random trees
with random `.gitignore` files and patterns (hypothesis). The oracle never
reads the user's configuration (HOME, XDG_CONFIG_HOME point nowhere), and
neither does docteur.

Also here: the image being written is never packed into itself when it
lies inside SOURCE.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur_core.make import make_image
from docteur_core.make.ignore import gitignore_lines
from docteur_core.errors import BuildError
from tests.helpers.support import git
from tests.helpers.gitoracle import check_image, image_listing

DATE = "2026-01-01T00:00:00Z"


def git_tree(root: Path, scratch: Path, excludes: list[str] | None = None) -> str:
    """The root tree `git add -A` + `git write-tree` records for `root`.

    `excludes` go to the oracle's .git/info/exclude (one a line)."""
    gitdir = Path(tempfile.mkdtemp(dir=scratch, prefix="oracle-"))
    git("init", "-q", "--bare", str(gitdir))
    (gitdir / "info").mkdir(exist_ok=True)
    (gitdir / "info" / "exclude").write_bytes(
        b"".join(os.fsencode(p) + b"\n" for p in excludes or []))
    env = {"GIT_DIR": str(gitdir), "GIT_WORK_TREE": str(root),
           "GIT_INDEX_FILE": str(gitdir / "index"), "XDG_CONFIG_HOME": "/nonexistent"}
    git("add", "-A", ".", cwd=root, env=env)
    return git("write-tree", cwd=root, env=env).decode().strip()


def docteur(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True)


def verified_root(image: Path) -> str:
    """The root tree `docteur verify` reports for `image` (which must be intact)."""
    proc = docteur("verify", image)
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.decode().splitlines() if l.startswith("root\t: "))
    return line.split(": ", 1)[1]


def write_tree(root: Path, files: dict[str, bytes | str]) -> None:
    """`files`: {relative path: content}; a str content "->target" makes a symbolic link."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            assert content.startswith("->")
            os.symlink(content[2:], path)
        else:
            path.write_bytes(content)


# Every rule of gitignore(5) that decides something, in one tree.
RULES_TREE = {
    ".gitignore": b"# a comment\n\n*.o\n!keep.o\nbuild/\n/top-only\nlogs/*\n!logs/keep.log\n"
                  b"trail\\ \nspaces   \n**/deep/x\nlink-dir/\n",
    "a.o": b"object\n", "keep.o": b"kept despite *.o\n", "a.c": b"int main;\n",
    "top-only": b"anchored: only here\n", "sub/top-only": b"not anchored here\n",
    "build/out": b"in an ignored folder\n", "sub/build/out": b"ignored at any depth\n",
    "build-not-a-dir": b"a file\n",
    "logs/a.log": b"a\n", "logs/keep.log": b"re-included: logs itself is not excluded\n",
    "trail ": b"ignored: its escaped trailing space is kept\n", "spaces": b"unescaped trailing spaces trimmed\n",
    "one/two/deep/x": b"double star\n", "one/two/deep/y": b"kept\n",
    # A nested .gitignore: relative to its folder, and overriding the top one.
    "sub/.gitignore": b"!*.o\nlocal\n/anchored-in-sub\n",
    "sub/b.o": b"re-included by sub/.gitignore\n", "sub/local": b"ignored by sub\n",
    "sub/anchored-in-sub": b"ignored\n", "sub/x/anchored-in-sub": b"kept\n",
    # No re-including below an excluded folder, even from its own .gitignore.
    "build/.gitignore": b"!*\n", "build/keep": b"still ignored\n",
    # A folder emptied by the rules is not recorded (git has no empty trees).
    "objs/a.o": b"1\n", "objs/b.o": b"2\n",
    # A dir/ pattern does not match a symbolic link to a folder.
    "real-dir/f": b"file\n", "link-dir": "->real-dir",
    # A .gitignore that is a symbolic link is stored, not read.
    "linked/.gitignore": "->../sub/.gitignore", "linked/local": b"not ignored\n",
    # CRLF lines and a BOM.
    "crlf/.gitignore": b"\xef\xbb\xbfbom-first\r\ncr\r\n", "crlf/bom-first": b"x\n",
    "crlf/cr": b"y\n", "crlf/other": b"z\n",
    "run.sh": b"#!/bin/sh\n",
}


def test_gitignore_rules_give_gits_tree(tmp_path):
    src = tmp_path / "src"
    write_tree(src, RULES_TREE)
    (src / "run.sh").chmod(0o755)
    image = tmp_path / "out.img"
    proc = docteur("make", "-q", "--gitignore", "--date", DATE, src, image)
    assert proc.returncode == 0, proc.stderr
    assert b"linked/.gitignore: not read, it is a symbolic link" in proc.stderr
    expected = git_tree(src, tmp_path)
    assert verified_root(image) == expected
    listing = image_listing(check_image(image, tmp_path).git_dir,
                            verified_commit(image))
    # Spot checks, so a failure says which rule broke.
    for kept in (b"keep.o", b"sub/b.o", b"logs/keep.log", b"sub/top-only",
                 b"one/two/deep/y", b"sub/x/anchored-in-sub", b"link-dir", b"linked/local",
                 b"crlf/other", b".gitignore", b"sub/.gitignore", b"build-not-a-dir"):
        assert kept in listing, kept
    for gone in (b"a.o", b"trail ", b"top-only", b"build/out", b"sub/build/out", b"build/keep",
                 b"logs/a.log", b"spaces", b"one/two/deep/x", b"sub/local",
                 b"sub/anchored-in-sub", b"objs", b"crlf/bom-first", b"crlf/cr"):
        assert not any(p == gone or p.startswith(gone + b"/") for p in listing), gone


def verified_commit(image: Path) -> str:
    proc = docteur("verify", image)
    return proc.stdout.decode().split("\n", 1)[0].split(": ", 1)[1]


def test_without_gitignore_everything_is_stored(tmp_path):
    """The default is unchanged: git add -A --force, .gitignore files or not."""
    src = tmp_path / "src"
    write_tree(src, {".gitignore": b"*\n", "a": b"a\n", "d/b": b"b\n"})
    result = make_image(src, tmp_path / "out.img", date=DATE)
    listing = image_listing(check_image(tmp_path / "out.img", tmp_path).git_dir, result.commit)
    assert set(listing) == {b".gitignore", b"a", b"d/b"}


def test_exclude_is_info_exclude(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a.tmp": b"1\n", "d/b.tmp": b"2\n", "d/c": b"3\n", "cache/x": b"4\n",
                     "keep.tmp": b"5\n", ".gitignore": b"*.log\n", "x.log": b"6\n",
                     "e/.gitignore": b"!*.tmp\n", "e/f.tmp": b"7\n"})
    excludes = ["*.tmp", "/cache/"]
    image = tmp_path / "out.img"
    proc = docteur("make", "-q", "--date", DATE, "--exclude", excludes[0], "--exclude",
                   excludes[1], src, image)
    assert proc.returncode == 0, proc.stderr
    # Without --gitignore, .gitignore files are stored but not read: x.log stays.
    listing = image_listing(check_image(image, tmp_path).git_dir, verified_commit(image))
    assert set(listing) == {b".gitignore", b"x.log", b"d/c", b"e/.gitignore"}
    # With --gitignore too: git's ranking (e/.gitignore's !*.tmp wins over info/exclude).
    both = tmp_path / "both.img"
    proc = docteur("make", "-q", "--date", DATE, "--gitignore", "--exclude", excludes[0],
                   "--exclude", excludes[1], src, both)
    assert proc.returncode == 0, proc.stderr
    assert verified_root(both) == git_tree(src, tmp_path, excludes)
    listing = image_listing(check_image(both, tmp_path).git_dir, verified_commit(both))
    assert b"e/f.tmp" in listing and b"x.log" not in listing and b"a.tmp" not in listing


@pytest.mark.parametrize("options", [["--gitignore"], ["--exclude", "*.o"],
                                     ["--exclude", "a", "--gitignore"]])
def test_repository_source_is_a_usage_error(tmp_path, options):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f").write_bytes(b"f\n")
    git("init", "-q", str(repo))
    git("add", "f", cwd=repo)
    git("commit", "-q", "-m", "one", cwd=repo)
    for source in (repo, repo / ".git", "https://example.invalid/repo.git"):
        proc = docteur("make", *options, source, tmp_path / "out.img")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1 and "to a directory source only" in lines[0], lines
        assert not (tmp_path / "out.img").exists()
    with pytest.raises(BuildError, match="applies to a directory source only"):
        make_image(repo, tmp_path / "out.img", gitignore=True)


def test_malformed_exclude_is_a_usage_error(tmp_path):
    (tmp_path / "src").mkdir()
    proc = docteur("make", "--exclude", "[abc", tmp_path / "src", tmp_path / "out.img")
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        "docteur make: --exclude '[abc': not a valid gitignore pattern "
        "(an unclosed '[' matches nothing)"]


def test_malformed_gitignore_line_matches_nothing(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {".gitignore": b"[abc\n*.o\n", "[abc": b"kept\n", "a.o": b"gone\n"})
    warnings = []
    result = make_image(src, tmp_path / "out.img", date=DATE, gitignore=True,
                        warn=warnings.append)
    assert result.tree == git_tree(src, tmp_path)
    assert len(warnings) == 1 and "'[abc' matches nothing" in warnings[0]


def test_gitignore_lines_as_git_cuts_them():
    assert gitignore_lines(b"\xef\xbb\xbfa\r\n#c\n\n b \nc\\ \nd\\  \n e\\\\  \nf\r\r\n") == [
        b"a", b" b", b"c\\ ", b"d\\ ", b" e\\\\", b"f\r"]


# --- IMAGE inside SOURCE ------------------------------------------------------

@pytest.mark.parametrize("subdir", ["", "out/"])
def test_image_inside_source_is_never_packed(tmp_path, subdir):
    src = tmp_path / "site"
    write_tree(src, {"index.html": b"<h1>hi</h1>\n", "out/.keep": b""})
    # A dead build's temporary file for this image: not packed either.
    (src / f"{subdir}.site.img.docteur-999999-abcd1234.tmp").write_bytes(b"half an image")
    outputs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", "-q",
                               "--date", DATE, ".", f"{subdir}site.img"], cwd=src,
                              stdin=subprocess.DEVNULL, capture_output=True)
        assert proc.returncode == 0, proc.stderr
        outputs.append((src / f"{subdir}site.img").read_bytes())
    assert outputs[0] == outputs[1]
    listing = docteur("ls", "-r", src / f"{subdir}site.img").stdout
    assert b"site.img" not in listing
    paths = {line.split(b"\t", 1)[1] for line in listing.splitlines()}
    assert paths == {b"index.html", b"out/.keep"}


def test_another_image_in_source_is_ordinary_content(tmp_path):
    src = tmp_path / "site"
    write_tree(src, {"index.html": b"<h1>hi</h1>\n", "old.img": b"an older image\n"})
    make_image(src, src / "site.img", date=DATE)
    listing = docteur("ls", "-r", src / "site.img").stdout
    assert b"\told.img\n" in listing and b"\tsite.img\n" not in listing


def test_image_reached_through_another_spelling_is_skipped(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a": b"a\n"})
    os.symlink(src, tmp_path / "alias")
    make_image(src, tmp_path / "alias" / "x.img", date=DATE)
    first = (src / "x.img").read_bytes()
    make_image(src, tmp_path / "alias" / "x.img", date=DATE)
    assert (src / "x.img").read_bytes() == first


# --- random trees, random patterns --------------------------------------------

# Few names, so that patterns hit: names and patterns are drawn from the same words.
NAMES = ["a", "b", "ab", "a.o", "b.txt", "deep", "x y", ".h", "build"]
SEGMENTS = NAMES[:4] + ["deep", "build", "x\\ y", "*", "*.o", "a*", "?", "**", "[ab]", "b*"]


@st.composite
def patterns(draw) -> str:
    segs = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=2))
    text = "/".join(segs)
    if draw(st.integers(0, 2)) == 0:
        text = "/" + text
    if draw(st.integers(0, 2)) == 0:
        text += "/"
    if draw(st.integers(0, 2)) == 0:
        text = "!" + text
    return text


files = st.tuples(st.just("file"), st.sampled_from([b"", b"1\n", b"2\n", b"same\n"]),
                  st.sampled_from([0o644, 0o755]))
links = st.tuples(st.just("link"), st.sampled_from([b"a", b"../b", b"deep"]))
gitignores = st.tuples(st.just("gitignore"), st.lists(patterns(), max_size=4))
leaves = st.one_of(files, files, links, gitignores, gitignores)
tree_specs = st.recursive(
    st.dictionaries(st.sampled_from(NAMES), leaves, min_size=1, max_size=4),
    lambda children: st.dictionaries(
        st.sampled_from(NAMES), st.one_of(leaves, children.map(lambda d: ("dir", d)),
                                          children.map(lambda d: ("dir", d))),
        min_size=1, max_size=5),
    max_leaves=24)


def materialise(root: Path, spec: dict) -> None:
    """Build `spec`; a ("gitignore", patterns) leaf is this folder's .gitignore."""
    root.mkdir(exist_ok=True)
    for name, node in spec.items():
        if node[0] == "gitignore":
            (root / ".gitignore").write_text("".join(p + "\n" for p in node[1]))
            continue
        path = root / name
        if node[0] == "file":
            path.write_bytes(node[1])
            path.chmod(node[2])
        elif node[0] == "link":
            os.symlink(node[1], path)
        else:
            materialise(path, node[1])


@settings(max_examples=int(os.environ.get("DOCTEUR_EXAMPLES", "30")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=tree_specs, top=gitignores, excludes=st.lists(patterns(), max_size=3),
       use_gitignore=st.sampled_from([True, True, False]))
def test_random_trees_and_patterns_give_gits_tree(spec, top, excludes, use_gitignore):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        # A .gitignore at the top, so that deeper ones have something to override.
        materialise(src, {".gitignore": top, **spec})
        if not use_gitignore:
            # docteur then stores them as plain files, which git would read: renamed,
            # they are plain files to both.
            for path in list(src.rglob(".gitignore")):
                path.rename(path.with_name("gitignore-renamed"))
        result = make_image(src, tmp / "out.img", date=DATE, excludes=excludes,
                            gitignore=use_gitignore, warn=lambda w: None)
        assert result.tree == git_tree(src, tmp, excludes)
