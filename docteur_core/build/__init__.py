"""The image builder: a directory or a Git repository in, a docteur image out.

    make_image(source, output, branch=None, date=None, author=None,
               message=None, block_size=512, progress=None) -> BuildResult

Three kinds of source end in the same place, a repository git can read and
one commit in it:
- a directory is hashed (`snapshot`) into a plain pack in a scratch bare
  repository, and given a synthetic root commit (`identity`);
- a local repository is used as it is (its objects reached read-only);
- a remote one is fetched at depth 1 with dulwich (`remote`), then used
  as a local one.
Then `git pack-objects` does the delta search (`gitrun`) and the image is
written atomically around its PACK and IDX (`image`).

This package is the only part of docteur that needs dulwich and git.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

from .. import layout
from ..errors import BuildError

__all__ = ["BuildResult", "make_image"]


@dataclass(frozen=True)
class BuildResult:
    commit: str  # hex id of the commit the image holds
    tree: str  # hex id of its root tree
    size: int  # bytes of the image file
    objects: int  # objects in the PACK
    image: str = ""  # absolute path of the image written
    kind: str = ""  # "directory", "repository" or "remote"


def _stderr_warning(text: str) -> None:
    print(f"docteur make: warning: {text}", file=sys.stderr)


def make_image(source: str | os.PathLike, output: str | os.PathLike, *,
               branch: str | None = None, date: str | None = None,
               author: str | None = None, message: str | None = None,
               block_size: int = layout.DEFAULT_BLOCK_SIZE,
               progress: Callable[[str], None] | None = None,
               warn: Callable[[str], None] | None = None) -> BuildResult:
    """Build the image of `source` at `output`; raise BuildError on any user error.

    `progress`, when given, receives one-line status texts (ours and git's).
    `warn` receives warnings (skipped special files); default: stderr.
    `date`, `author` and `message` only apply to directory sources: a
    repository's commit is used as it is.
    """
    from . import identity
    from .gitrun import GitRepo, pack_objects, run_git
    from .image import check_output, write_image
    from .packwriter import OBJ_COMMIT, PlainPackWriter
    from .remote import fetch
    from .repository import open_repository, resolve
    from .snapshot import Snapshot
    from .source import classify

    if not layout.valid_block_size(block_size):
        raise BuildError(f"block size {block_size}: must be {layout.block_size_rule()}")
    image = check_output(os.fspath(output))
    src = classify(os.fspath(source))
    warn = warn or _stderr_warning
    if src.kind == "directory":
        if branch is not None:
            raise BuildError(f"{src.display}: --branch needs a Git repository, "
                             "and this is a plain directory")
        author_b = identity.parse_author(author)
        when = identity.parse_date(date) if date is not None else identity.default_date(os.environ)
        message_b = identity.message_bytes(message)
    if shutil.which("git") is None:
        raise BuildError("the git program is needed but was not found on PATH")

    with tempfile.TemporaryDirectory(prefix="docteur-make-") as tmp:
        if src.kind == "directory":
            git_dir = os.path.join(tmp, "snapshot.git")
            run_git(None, "init", "-q", "--bare", "--object-format=sha1", git_dir)
            writer = PlainPackWriter(os.path.join(git_dir, "objects", "pack", "pack-snapshot"))
            try:
                tree = Snapshot(src.location, writer, warn, progress).run()
                raw = identity.commit_raw(tree, author_b, when, message_b)
                commit = writer.add(OBJ_COMMIT, raw).hex()
                writer.finish()
            except BaseException:
                writer.abort()
                raise
            repo = GitRepo(git_dir)
        else:
            if src.kind == "remote":
                git_dir = os.path.join(tmp, "fetched.git")
                ref = fetch(src, branch, git_dir, progress)
            else:
                git_dir, ref = src.git_dir, branch
            repo = open_repository(git_dir, src.display, os.path.join(tmp, "scratch-objects"))
            resolved = resolve(repo, ref, src.display)
            commit, tree = resolved.commit, resolved.tree
        pack_path = pack_objects(repo, commit, os.path.join(tmp, "image"), progress)
        idx_path = pack_path[:-len(".pack")] + ".idx"
        with open(idx_path, "rb") as f:
            f.seek(layout.IDX_HEADER_SIZE + 255 * 4)
            objects = int.from_bytes(f.read(4), "big")
        size = write_image(image, bytes.fromhex(commit), pack_path, idx_path, block_size, progress)
    return BuildResult(commit=commit, tree=tree, size=size, objects=objects, image=image,
                       kind=src.kind)
