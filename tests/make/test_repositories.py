"""Images of local Git repositories: the committed snapshot, one commit, no history."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from docteur_core.make import make_image
from docteur_core.errors import BuildError
from tests.helpers.support import git
from tests.helpers.gitoracle import check_image, image_listing


def commit_all(work: Path, message: str, date: str, *extra_index: str) -> str:
    git("add", "-A", ".", cwd=work)
    if extra_index:
        git("update-index", *extra_index, cwd=work)
    git("commit", "-q", "-m", message, cwd=work,
        env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})
    return git("rev-parse", "HEAD", cwd=work).decode().strip()


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict:
    """A work tree with three commits, a branch, tags, a gitlink, and uncommitted changes."""
    work = tmp_path_factory.mktemp("repo") / "work"
    work.mkdir()
    git("init", "-q", str(work))
    (work / "README").write_text("first\n")
    (work / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(work / "run.sh", 0o755)
    first = commit_all(work, "first", "2021-01-01T00:00:00+00:00")
    git("tag", "-a", "-m", "version one", "v1", cwd=work)
    git("tag", "light", cwd=work)
    (work / "docs").mkdir()
    (work / "docs" / "guide.md").write_text("# Guide\n" * 50)
    os.symlink("../README", work / "docs" / "readme-link")
    second = commit_all(work, "second", "2021-02-01T00:00:00+00:00")
    git("checkout", "-q", "-b", "feature", cwd=work)
    (work / "feature.txt").write_text("feature\n")
    feature = commit_all(work, "feature", "2021-03-01T00:00:00+00:00")
    git("checkout", "-q", "main", cwd=work)
    (work / "README").write_text("third\n" * 100)
    # A submodule-like gitlink: part of the tree, but not an object in the pack.
    third = commit_all(work, "third", "2021-04-01T00:00:00+00:00",
                       "--add", "--cacheinfo", f"160000,{first},vendor/lib")
    (work / "README").write_text("uncommitted\n")  # must not be in the image
    (work / "untracked").write_text("untracked\n")
    bare = work.parent / "bare.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    return {"work": work, "bare": bare, "first": first, "second": second,
            "feature": feature, "third": third}


def check_repo_image(image: Path, tmp: Path, repo_git_dir: Path, commit: str):
    checked = check_image(image, tmp)
    assert checked.commit == commit
    assert image_listing(checked.git_dir, commit) == image_listing(repo_git_dir, commit)
    return checked


def test_work_tree_head_is_the_image_commit(history, tmp_path):
    result = make_image(history["work"], tmp_path / "w.img")
    assert result.commit == history["third"] and result.kind == "repository"
    checked = check_repo_image(tmp_path / "w.img", tmp_path, history["work"] / ".git",
                               history["third"])
    listing = image_listing(checked.git_dir, checked.commit)
    assert listing[b"README"] == ("100644", b"third\n" * 100)
    assert b"untracked" not in listing and b"vendor/lib" not in listing
    ls = git("ls-tree", "-r", checked.commit, env={"GIT_DIR": str(checked.git_dir)})
    assert b"160000 commit " + history["first"].encode() + b"\tvendor/lib" in ls


@pytest.mark.parametrize("ref, key", [
    ("feature", "feature"), ("refs/heads/feature", "feature"), ("main", "third"),
    ("v1", "first"), ("refs/tags/v1", "first"), ("light", "first"),
])
def test_branches_and_tags(history, tmp_path, ref, key):
    result = make_image(history["bare"], tmp_path / "r.img", branch=ref)
    assert result.commit == history[key]
    check_repo_image(tmp_path / "r.img", tmp_path, history["bare"], history[key])


def test_bare_work_tree_and_file_url_give_the_same_image(history, tmp_path):
    make_image(history["work"], tmp_path / "a.img")
    make_image(history["bare"], tmp_path / "b.img")
    make_image(f"file://{history['bare']}", tmp_path / "c.img")
    a = (tmp_path / "a.img").read_bytes()
    assert a == (tmp_path / "b.img").read_bytes() == (tmp_path / "c.img").read_bytes()


def test_image_of_a_repository_equals_image_of_its_checkout(history, tmp_path):
    """Same snapshot, same commit: a directory build differs only by its commit."""
    result = make_image(history["work"], tmp_path / "r.img", branch="v1")
    checkout = tmp_path / "checkout"
    git("worktree", "add", "-q", "--detach", str(checkout), "v1", cwd=history["work"])
    try:
        # A linked work tree has a .git *file*: still read as a repository.
        assert (checkout / ".git").is_file()
        again = make_image(checkout, tmp_path / "wt.img")
        assert again.commit == result.commit
        assert (tmp_path / "wt.img").read_bytes() == (tmp_path / "r.img").read_bytes()
    finally:
        git("worktree", "remove", "--force", str(checkout), cwd=history["work"])


def test_packed_repository_with_deltas(history, tmp_path):
    """Objects already deltified in the source are re-packed, not reused."""
    clone = tmp_path / "packed.git"
    git("clone", "-q", "--bare", str(history["work"]), str(clone))
    git("repack", "-qadf", "--window=10", "--depth=2", env={"GIT_DIR": str(clone)})
    make_image(clone, tmp_path / "p.img")
    make_image(history["bare"], tmp_path / "b.img")
    assert (tmp_path / "p.img").read_bytes() == (tmp_path / "b.img").read_bytes()


def test_repository_options_that_only_apply_to_directories_are_ignored(history, tmp_path):
    a = make_image(history["bare"], tmp_path / "a.img", date="2030-01-01T00:00:00Z",
                   author="X <x@y>", message="ignored")
    assert a.commit == history["third"]


def test_source_repository_is_not_written_to(history, tmp_path):
    before = sorted(p for p in history["bare"].rglob("*"))
    make_image(history["bare"], tmp_path / "x.img")
    assert sorted(p for p in history["bare"].rglob("*")) == before


def test_unknown_branch(history, tmp_path):
    with pytest.raises(BuildError, match=r"unknown branch or tag 'nope'"):
        make_image(history["work"], tmp_path / "x.img", branch="nope")
    assert not (tmp_path / "x.img").exists()


def test_empty_repository(tmp_path):
    git("init", "-q", str(tmp_path / "empty"))
    with pytest.raises(BuildError, match=r"has no commit at HEAD"):
        make_image(tmp_path / "empty", tmp_path / "x.img")


def test_broken_dot_git_is_not_a_repository(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / ".git").write_text("gitdir: /nonexistent/elsewhere\n")
    with pytest.raises(BuildError, match=r"not a Git repository"):
        make_image(src, tmp_path / "x.img")


def test_sha256_repository_is_refused(tmp_path):
    repo = tmp_path / "r256"
    git("init", "-q", "--object-format=sha256", str(repo))
    (repo / "a").write_text("a")
    git("add", "a", cwd=repo)
    git("commit", "-q", "-m", "a", cwd=repo)
    with pytest.raises(BuildError, match=r"uses sha256 object ids; images hold SHA-1 "):
        make_image(repo, tmp_path / "x.img")
    assert not (tmp_path / "x.img").exists()
