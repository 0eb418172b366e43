"""A local Git repository as a source: its committed objects, not its work tree."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import BuildError
from .gitrun import GitRepo, run_git


@dataclass(frozen=True)
class Resolved:
    commit: str
    tree: str


def open_repository(git_dir: str, display: str, scratch_objects: str) -> GitRepo:
    """Check that git accepts `git_dir`; return it set up for packing.

    Git's pack-objects writes its temporary file into the object directory
    and renames it to the destination, so the source repository's own
    objects are reached as alternates of a scratch object directory: the
    source is never written to and may be read-only or on another device.
    """
    git_dir = os.path.abspath(git_dir)
    try:
        found = run_git(GitRepo(git_dir), "rev-parse", "--git-path", "objects")
    except BuildError as exc:
        raise BuildError(f"{display}: not a Git repository ({exc})") from None
    objects = os.path.abspath(os.fsdecode(found.rstrip(b"\n")))
    fmt = run_git(GitRepo(git_dir), "rev-parse", "--show-object-format").decode().strip()
    if fmt != "sha1":
        raise BuildError(f"{display}: uses {fmt} object ids; images hold SHA-1 repositories only")
    if not os.path.isdir(objects):
        raise BuildError(f"{display}: not a Git repository (no object directory)")
    os.makedirs(os.path.join(scratch_objects, "pack"), exist_ok=True)
    return GitRepo(git_dir, object_dir=scratch_objects, alternates=objects)


def valid_ref(name: str) -> bool:
    """Whether `name` may be handed to `git rev-parse` as a name at all: not
    empty, no leading '-' (git would read an option: --upload-pack=...), no
    NUL or newline. Pure, so the command lines refuse it while parsing
    (`make/options.py`'s `branch`); whether it names a commit only git can say."""
    return bool(name) and not name.startswith("-") and not any(c in name for c in "\0\n")


def resolve(repo: GitRepo, ref: str | None, display: str) -> Resolved:
    """The commit named by `ref` (a branch, a tag, peeled; HEAD by default)."""
    name = "HEAD" if ref is None else ref
    if not valid_ref(name):
        raise BuildError(f"{display}: invalid branch name {ref!r}")
    try:
        commit = run_git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    except BuildError:
        if ref is None:
            raise BuildError(f"{display}: has no commit at HEAD (empty repository?)") from None
        raise BuildError(f"{display}: unknown branch or tag '{ref}'") from None
    commit_hex = commit.decode().strip()
    tree = run_git(repo, "rev-parse", "--verify", f"{commit_hex}^{{tree}}").decode().strip()
    return Resolved(commit_hex, tree)
