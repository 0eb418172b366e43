"""The OCaml docteur as an oracle, as git is one: its verify, its readers, its writer.

The OCaml programs are built by `.ci/oracle` once per machine (a failed
build fails these tests, it never skips them). Checked here, on
hypothesis-generated trees and on real repositories:
- its `docteur.verify` accepts this project's images and prints byte for
  byte what `docteur verify` prints;
- its light reader (`solo5-light`) and fast readers (`unix-fast`,
  `solo5-fast`) give the same bytes as this project's reader for every path
  they can see, and for every other path the error the model in
  tests/helpers/ocaml_oracle.py says (light: every blob, a folder is "not a file";
  fast: 100644 files only; `list`: 100644 files and folders only);
- this project reads every file of the images its writer (`ocmake`) makes, at
  block sizes 512 and 4096 (and 128 KiB, also through the plugin), and
  `docteur verify` accepts them;
- `--compat ocaml` images are read completely by every OCaml mode, and the
  OCaml test store gives the OCaml docteur's own commit id;
- a signed commit (`make --sign`, with and without `--compat ocaml`) is
  verified and read there as any other;
- the mismatches this project protects against (executables and links
  invisible to the fast reader, submodules, empty emails, large block sizes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from docteur_core.make import make_image
from docteur_core.errors import BuildError
from docteur_core.reader import Image
from tests.helpers import ocaml_oracle as oc
from tests.helpers.ocaml_oracle import BASE, DATE, SETTINGS, agree, nodes_of, same_verify, trees
from tests.helpers.treegen import materialise
from tests.helpers.support import PLUGIN, NbdkitServer, git

pytestmark = [pytest.mark.oracle]

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "requests"
def docteur(*args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "docteur_core", *map(str, args)],
                          capture_output=True, env=env, cwd=REPO_ROOT, timeout=600)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr.decode(errors="replace")
    return proc


# --- generated trees ----------------------------------------------------------

def add_inner_links(root: Path) -> None:
    """Links that stay inside `root`: to a file beside them, to a folder, through a folder."""
    for folder, dirs, files in os.walk(root):
        regular = sorted(f for f in files if not os.path.islink(os.path.join(folder, f)))
        if regular:
            os.symlink(regular[0], os.path.join(folder, "zz-link"))
        subdirs = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
        if subdirs:
            os.symlink(subdirs[0], os.path.join(folder, "zz-dirlink"))
        dirs[:] = subdirs


def no_links(spec: dict) -> dict:
    out = {}
    for name, node in spec.items():
        if node[0] == "link":
            out[name] = ("file", node[1].encode(), 0o644)
        elif node[0] == "dir":
            out[name] = ("dir", no_links(node[1]))
        else:
            out[name] = node
    return out


@SETTINGS
@given(spec=trees)
def test_generated_trees_ocaml_verify_and_readers_agree(oracle, spec, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    src = tmp / "src"
    src.mkdir()
    materialise(src, spec)
    img = tmp / "out.img"
    result = make_image(src, img, date=DATE, warn=pytest.fail)  # a note, not a warning
    same_verify(oracle, img)
    nodes = agree(oracle, img)
    hidden = sum(1 for m in nodes.values() if m in (oc.MODE_EXEC, oc.MODE_LINK))
    assert bool(result.ocaml_note) == bool(hidden), result.ocaml_note


@pytest.mark.solo5
@SETTINGS
@given(spec=trees.map(no_links))
def test_generated_trees_compat_ocaml_read_completely(oracle, spec, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compat")
    src = tmp / "src"
    src.mkdir()
    materialise(src, spec)
    add_inner_links(src)
    img = tmp / "out.img"
    # Solo5's sector may be 4096: then the image's block size must be 4096 or more.
    sector = 4096 if len(spec) % 2 else None
    make_image(src, img, date=DATE, compat="ocaml", warn=pytest.fail, block_size=sector or 512)
    same_verify(oracle, img)
    nodes = agree(oracle, img, sector=sector)
    assert set(nodes.values()) <= {oc.MODE_FILE, oc.MODE_DIR}
    with Image.open(str(img)) as image:
        for path, m in nodes.items():  # links hold their targets' content
            on_disk = src / path
            if m == oc.MODE_FILE:
                assert image.get(path) == on_disk.read_bytes(), path
            else:
                assert on_disk.is_dir() and sorted(n for n, _ in image.list(path)) == \
                    sorted(os.listdir(on_disk)), path


def commit_all(repo: Path, message: str = "snapshot", env: dict | None = None) -> str:
    git("add", "-A", "--force", ".", cwd=repo, env=env)
    git("commit", "-q", "--allow-empty", "-m", message, cwd=repo, env=env)
    return git("rev-parse", "HEAD", cwd=repo).decode().strip()


@SETTINGS
@given(spec=trees, block_size=st.sampled_from([512, 4096]))
def test_generated_repos_written_by_ocmake_are_read_here(oracle, spec, block_size,
                                                         tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ocmake")
    repo = tmp / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    materialise(repo, spec)
    commit = commit_all(repo)
    theirs = tmp / "ocaml.img"
    assert oracle.ocmake(repo / ".git", "HEAD", theirs, block_size) == commit
    ours = tmp / "ours.img"
    make_image(repo, ours, warn=lambda w: None)
    assert same_verify(oracle, theirs) == same_verify(oracle, ours)
    with Image.open(str(theirs)) as a, Image.open(str(ours)) as b:
        assert a.commit.id == b.commit.id
        walked = [(n.path, n.mode, n.id) for n in a.walk()]
        assert walked == [(n.path, n.mode, n.id) for n in b.walk()]
        for path, mode, _ in walked:
            if mode == oc.MODE_FILE or mode == oc.MODE_EXEC:
                assert a.get(path) == (repo / path).read_bytes(), path
            elif mode == oc.MODE_LINK:
                assert a.get(path) == os.fsencode(os.readlink(repo / path)), path


# --- real repositories --------------------------------------------------------

@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    """A small real repository: two commits, tags, an executable, links, deltas."""
    repo = tmp_path_factory.mktemp("history") / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text(BASE)
    (repo / "README").write_text("read me\n")
    commit_all(repo, "first")
    git("tag", "v1", cwd=repo)
    (repo / "docs" / "guide.md").write_text(BASE + "one more line\n")
    (repo / "docs" / "old.md").write_text(BASE.replace("same", "similar"))
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    (repo / "readme-link").symlink_to("README")
    (repo / "docs-link").symlink_to("docs")
    (repo / "docs" / "up").symlink_to("../run.sh")
    commit_all(repo, "second\n\nwith a body\n")
    git("tag", "-a", "-m", "release 2", "v2", cwd=repo)
    return repo


def test_real_repository_default_image(oracle, history, tmp_path):
    img = tmp_path / "repo.img"
    result = make_image(history, img, warn=pytest.fail)  # no warning: a note
    assert result.commit == git("rev-parse", "HEAD", cwd=history).decode().strip()
    assert result.ocaml_note == ("the OCaml docteur's fast reader and its list will not see 1 "
                                 "executable and 3 symbolic links (they see 100644 files "
                                 "only); --compat ocaml stores executables and links as plain "
                                 "files")
    assert b"second" in same_verify(oracle, img)
    nodes = agree(oracle, img)
    # the mismatch itself: the fast readers do not see run.sh nor the links
    got = oracle.getall("unix-fast", img, ["run.sh", "readme-link", "README"])
    assert [g.ok for g in got.values()] == [False, False, True]
    assert nodes["run.sh"] == oc.MODE_EXEC and nodes["docs/up"] == oc.MODE_LINK
    # a tag, peeled, and an older commit
    tagged = make_image(history, tmp_path / "v1.img", branch="v1")
    same_verify(oracle, tmp_path / "v1.img")
    agree(oracle, tmp_path / "v1.img")
    assert tagged.commit == git("rev-parse", "v1^{commit}", cwd=history).decode().strip()


def test_real_repository_compat_ocaml_rewrites_the_commit(oracle, history, tmp_path):
    img = tmp_path / "compat.img"
    result = make_image(history, img, branch="v2", compat="ocaml", warn=pytest.fail)
    original = git("rev-parse", "v2^{commit}", cwd=history).decode().strip()
    assert result.source_commit == original and result.commit != original
    out = same_verify(oracle, img)
    assert out.endswith(b"\nsecond\n\nwith a body\n\n") or b"second" in out
    nodes = agree(oracle, img)
    assert set(nodes.values()) == {oc.MODE_FILE, oc.MODE_DIR}
    # every mode reads everything; the links hold what they name
    for mode in oc.MODES:
        got = oracle.getall(mode, img, ["run.sh", "readme-link", "docs-link/guide.md",
                                        "docs/up", "docs-link/up"])
        assert all(g.ok for g in got.values()), (mode, got)
    with Image.open(str(img)) as image:
        assert image.get("readme-link") == b"read me\n"
        assert image.get("docs/up") == image.get("run.sh") == b"#!/bin/sh\necho run\n"
        assert image.digest("docs-link") == image.digest("docs")
        commit = image.commit
    parent = git("rev-parse", "v2^{commit}^", cwd=history).decode().strip()
    assert commit.parents == (parent,) and commit.message == "second\n\nwith a body\n"
    assert (commit.author, commit.committer) == ("Test Author <author@example.com>",
                                                 "Test Committer <committer@example.com>")
    assert commit.date.isoformat() == commit.author_date.isoformat() == "2020-01-01T00:00:00+00:00"
    # a tree that needs no rewrite keeps the repository's commit
    kept = make_image(history, tmp_path / "v1.img", branch="v1", compat="ocaml")
    assert kept.commit == kept.source_commit == git(
        "rev-parse", "v1^{commit}", cwd=history).decode().strip()


def test_real_repository_written_by_ocmake(oracle, history, tmp_path):
    for bs in (512, 4096):
        img = tmp_path / f"ocaml-{bs}.img"
        commit = oracle.ocmake(history / ".git", "v2", img, bs)
        assert img.stat().st_size % bs == 0
        out = same_verify(oracle, img)
        assert out.startswith(f"commit\t: {commit}\n".encode())
        with Image.open(str(img)) as image:
            for node in image.walk():
                blob = git("cat-file", "-p", f"{commit}:{node.path}", cwd=history)
                if node.mode != oc.MODE_DIR:
                    assert image.get(node.path) == blob, node.path


def test_requests_release(oracle, tmp_path):
    """One release of the requests corpus, unpacked: a real project's files."""
    releases = sorted(CORPUS.glob("requests-*.tar.gz"))
    assert releases, f"no corpus in {CORPUS}"
    with tarfile.open(releases[-1]) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    src = next((tmp_path / "src").iterdir())
    img = tmp_path / "requests.img"
    make_image(src, img, date=DATE, warn=lambda w: None)
    same_verify(oracle, img)
    nodes = agree(oracle, img)
    assert sum(1 for m in nodes.values() if m == oc.MODE_FILE) > 30
    # and the same files written by the OCaml writer, read here
    repo = tmp_path / "repo"
    shutil.copytree(src, repo, symlinks=True)
    git("init", "-q", cwd=repo)
    commit = commit_all(repo)
    theirs = tmp_path / "ocaml.img"
    assert oracle.ocmake(repo / ".git", "HEAD", theirs, 4096) == commit
    same_verify(oracle, theirs)
    with Image.open(str(theirs)) as image:
        for node in image.walk():
            if node.mode == oc.MODE_FILE:
                assert image.get(node.path) == (repo / node.path).read_bytes()


# --- the OCaml builder's commit -----------------------------------------------

def test_ocaml_test_store_gives_the_ocaml_commit(oracle, tmp_path):
    """The OCaml docteur's test/store and its cram test test/simple.t: the same
    directory and date give its commit id, its tree, its verify output."""
    store = tmp_path / "store"
    (store / "tree" / "bar").mkdir(parents=True)
    (store / "README.md").write_bytes(b"Hello World!\n")
    for empty in ("bar", "foo", "tree/bar/foo", "tree/foo"):
        (store / empty).write_bytes(b"")
    img = tmp_path / "disk.img"
    result = make_image(store, img, date="2020-10-10T08:00:00+00:00", compat="ocaml")
    assert result.commit == "ca71a852f6c2d16bf04691f13b8a7edeadb15b80"
    assert result.tree == "7d8a9e386b602e1bd8cd8f226a461a87ccf372e3"
    assert same_verify(oracle, img) == (
        b"commit\t: ca71a852f6c2d16bf04691f13b8a7edeadb15b80\n"
        b"author\t: \"Dr. Greenthumb\" <noreply@cypress.hill>\n"
        b"root\t: 7d8a9e386b602e1bd8cd8f226a461a87ccf372e3\n\n")
    # without --compat ocaml: our own message and author, so another commit
    other = make_image(store, tmp_path / "ours.img", date="2020-10-10T08:00:00+00:00")
    assert other.tree == result.tree and other.commit != result.commit


def test_compat_date_offset_and_message(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("f\n")
    make_image(tmp_path / "src", tmp_path / "a.img", date="2020-10-10T10:00:00+02:00",
               compat="ocaml", message="hello")
    with Image.open(str(tmp_path / "a.img")) as image:
        c = image.commit
        assert (c.date.isoformat(), c.message) == ("2020-10-10T10:00:00+02:00", "hello\n")
        assert c.author == c.committer == "Dr. Greenthumb <noreply@cypress.hill>"


# --- refusals and warnings ----------------------------------------------------

def one_line_refusal(source, tmp_path, *extra) -> str:
    proc = docteur("make", *extra, source, tmp_path / "x.img", check_rc=1)
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("docteur make: "), err
    assert not (tmp_path / "x.img").exists()
    return err.strip()


@pytest.mark.parametrize("target, why", [
    ("/etc/hostname", "leads outside SOURCE"),
    ("../../outside", "leads outside SOURCE"),
    (".", "leads to a folder that contains it (a cycle)"),
    ("..", "leads to a folder that contains it (a cycle)"),
])
def test_compat_refuses_links_it_cannot_store(tmp_path, target, why):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("f\n")
    (src / "sub" / "link").symlink_to(target)
    (tmp_path / "outside").write_text("secret\n")
    err = one_line_refusal(src, tmp_path, "--compat", "ocaml")
    assert err == (f"docteur make: {src}/sub/link: symbolic link to {target} {why} "
                   "(--compat ocaml stores a link as the content of its target)")
    docteur("make", "-q", src, tmp_path / "default.img")  # stored as a link by default


def dangling_links(root: Path) -> list[str]:
    """Links to nothing, beside ordinary content; their paths, as SOURCE-relative."""
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "sub" / "f.txt").write_text("f\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "good").symlink_to("sub/f.txt")
    (root / "sub" / "missing").symlink_to("no-such-file")      # the target is missing
    (root / "sub" / "through").symlink_to("f.txt/x")           # through a file
    (root / "chain").symlink_to("sub/missing")                  # to a dangling link
    (root / "sub" / "deep" / "only").symlink_to("../../gone")   # its folder left empty
    return ["chain", "sub/deep/only", "sub/missing", "sub/through"]


def check_dangling_left_out(oracle, proc, img: Path, where: str, dangling: list[str],
                            targets: dict[str, str]) -> None:
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.decode().splitlines()[:-1]  # then the summary line
    assert sorted(warnings) == sorted(
        f"docteur make: warning: {where}{path}: skipped (symbolic link to {targets[path]}, "
        "which does not exist: --compat ocaml stores a link as the content of its target)"
        for path in dangling)
    same_verify(oracle, img)
    nodes = agree(oracle, img)  # every OCaml mode reads everything that is there
    assert not set(dangling) & set(nodes)
    assert nodes["good"] == nodes["run.sh"] == oc.MODE_FILE
    assert nodes["sub/deep"] == oc.MODE_DIR  # kept, empty, as the OCaml builder keeps folders
    for mode in oc.MODES:
        assert oracle.list(mode, img, "sub") == [("deep", "dictionary"), ("f.txt", "value")]


def test_compat_leaves_dangling_links_out_of_a_directory(oracle, tmp_path):
    """A dangling link has nothing the OCaml side could read: left out, with
    one warning each, and the rest of an ordinary tree builds."""
    src = tmp_path / "src"
    dangling = dangling_links(src)
    targets = {p: os.readlink(src / p) for p in dangling}
    img = tmp_path / "x.img"
    proc = docteur("make", "--compat", "ocaml", "--date", DATE, src, img, check_rc=None)
    check_dangling_left_out(oracle, proc, img, f"{src}/", dangling, targets)
    # By default the links are stored as links, as git stores them.
    with_links = tmp_path / "links.img"
    docteur("make", "-q", "--date", DATE, src, with_links)
    with Image.open(str(with_links)) as image:
        assert all(nodes_of(image)[p] == oc.MODE_LINK for p in dangling)


def test_compat_leaves_dangling_links_out_of_a_repository(oracle, tmp_path):
    repo = tmp_path / "repo"
    dangling = dangling_links(repo)
    targets = {p: os.readlink(repo / p) for p in dangling}
    git("init", "-q", cwd=repo)
    commit_all(repo)
    img = tmp_path / "x.img"
    proc = docteur("make", "--compat", "ocaml", repo, img, check_rc=None)
    check_dangling_left_out(oracle, proc, img, f"{repo}: ", dangling, targets)


def test_compat_refuses_links_leaving_a_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "f").write_text("f\n")
    (repo / "out").symlink_to("../../etc/passwd")
    commit_all(repo)
    err = one_line_refusal(repo, tmp_path, "--compat", "ocaml")
    assert err == (f"docteur make: {repo}: out: symbolic link to ../../etc/passwd leads outside "
                   "SOURCE (--compat ocaml stores a link as the content of its target)")


@pytest.fixture(scope="module")
def with_submodule(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("submodule")
    sub = base / "sub"
    sub.mkdir()
    git("init", "-q", cwd=sub)
    (sub / "inner").write_text("inner\n")
    commit_all(sub)
    repo = base / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "lib").mkdir()
    (repo / "lib" / "a.txt").write_text("a\n")
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "lib/vendored",
        cwd=repo)
    commit_all(repo, "with a submodule")
    return repo


def test_submodule_refused_under_compat_warned_by_default(oracle, with_submodule, tmp_path):
    repo = with_submodule
    gitlink = git("rev-parse", "HEAD:lib/vendored", cwd=repo).decode().strip()
    err = one_line_refusal(repo, tmp_path, "--compat", "ocaml")
    assert err == (f"docteur make: {repo}: lib/vendored is a submodule (commit {gitlink}): the "
                   "OCaml docteur's light reader fails on submodules, so --compat ocaml "
                   "refuses them")
    img = tmp_path / "default.img"
    assert docteur("make", "-q", repo, img).stderr == b""  # no warning on every build
    proc = docteur("make", "-v", repo, img)  # -v says it, once, in the summary line
    assert proc.stderr.decode().endswith(
        "; the OCaml docteur's fast reader and its list will not see 1 "
        "submodule (they see 100644 files only, and its light reader fails on a submodule); "
        "--compat ocaml stores executables and links as plain files and refuses submodules\n")
    assert proc.stderr.count(b"\n") == 1
    # What the refusal protects against: the OCaml light reader raises on it
    # (an uncaught exception, which the harness prints as EXN), the fast ones
    # do not see it; everything else reads.
    same_verify(oracle, img)
    paths = ["lib/a.txt", ".gitmodules", "lib/vendored"]
    for mode in oc.MODES:
        got = oracle.getall(mode, img, paths)
        assert got["lib/a.txt"].ok and got[".gitmodules"].ok
        if mode == oc.LIGHT:
            assert got["lib/vendored"].error == f'EXN Failure("{gitlink} does not exist")'
        else:
            assert got["lib/vendored"].error == "ERR /lib/vendored not found"
        assert oracle.list(mode, img, "lib") == [("a.txt", "value")]


def test_empty_author_email(oracle, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f\n")
    # a usage error (exit 2), refused while parsing: tests/cli/test_same_errors.py
    proc = docteur("make", "--author", "Foo <>", src, tmp_path / "x.img", check_rc=2)
    assert proc.stderr.decode().splitlines()[-1] == (
        "docteur make: error: argument --author: 'Foo <>': the email is empty, and the OCaml "
        "docteur cannot read a commit with an empty email")
    assert not (tmp_path / "x.img").exists()
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "f").write_text("f\n")
    commit = commit_all(repo, env={"GIT_AUTHOR_EMAIL": "", "GIT_COMMITTER_EMAIL": ""})
    why = (f"commit {commit}: its author's and its committer's email is empty, and the OCaml "
           "docteur cannot read such a commit (\"Malformed Git commit object\")")
    assert one_line_refusal(repo, tmp_path, "--compat", "ocaml") == \
        f"docteur make: {repo}: {why}; --compat ocaml refuses it"
    img = tmp_path / "default.img"
    proc = docteur("make", "-q", repo, img)
    assert proc.stderr.decode() == f"docteur make: warning: {why}\n"
    ours = docteur("verify", img)
    assert ours.stderr.decode() == "".join(
        f"warning: objects: its {role}'s email is empty: the OCaml docteur cannot read this "
        f"commit (\"Malformed Git commit object\"), commit {commit}\n"
        for role in ("author", "committer"))
    # the mismatch itself: the OCaml verify cannot read it
    theirs = oracle.verify(img)
    assert theirs.returncode != 0


# --- block sizes --------------------------------------------------------------

@pytest.mark.nbdkit
@pytest.mark.parametrize("block_size", [131072, 1 << 20])
def test_large_block_sizes_from_ocmake(oracle, history, tmp_path, block_size):
    """The OCaml writer pads to any power of two: verify, reader and plugin take them."""
    img = tmp_path / "big.img"
    commit = oracle.ocmake(history / ".git", "v2", img, block_size)
    out = same_verify(oracle, img)
    proc = docteur("verify", "--json", img)
    import json
    assert json.loads(proc.stdout)["block_sizes"] == [block_size]
    with Image.open(str(img)) as image:
        files = {n.path: image.get(n.path) for n in image.walk() if n.mode != oc.MODE_DIR}
    with NbdkitServer(PLUGIN, f"image={img}", unix=True) as server:
        with Image.open(server.uri) as image:
            assert image.commit.id == commit
            assert {p: image.get(p) for p in files} == files
        assert docteur("verify", server.uri).stdout == out


def test_large_block_size_made_here_read_by_ocaml(oracle, history, tmp_path):
    img = tmp_path / "big.img"
    make_image(history, img, block_size=131072, compat="ocaml")
    assert img.stat().st_size == 3 * 131072  # the third block: the path index region
    same_verify(oracle, img)
    agree(oracle, img, sector=4096)


# --- signed commits (make --sign) ---------------------------------------------

@pytest.mark.parametrize("compat", [None, "ocaml"])
def test_signed_images_verify_and_read_there(oracle, tmp_path, compat):
    """A gpgsig header is one more header line to the OCaml docteur: its verify
    accepts the image and prints what ours prints but the signature line, and
    every reader sees what it sees of the unsigned image."""
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "index.html").write_text("<h1>signed</h1>\n")
    (src / "docs" / "guide.md").write_text("# guide\n" * 40)
    img = tmp_path / "signed.img"
    make_image(src, img, date=DATE, sign=key, compat=compat, warn=lambda _: None)
    theirs = oracle.verify(img)
    assert theirs.returncode == 0, theirs.stderr
    ours = docteur("verify", img).stdout.decode()
    signature = [line for line in ours.split("\n") if line.startswith("signature\t: ")]
    assert len(signature) == 1 and signature[0].startswith("signature\t: unknown (ED25519 key")
    assert ours.replace(signature[0] + "\n", "").encode() == theirs.stdout
    agree(oracle, img)


def test_block_size_above_the_limit_refused(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(BuildError, match=r"must be a power of two from 512 to 1073741824"):
        make_image(tmp_path / "src", tmp_path / "x.img", block_size=1 << 31)
