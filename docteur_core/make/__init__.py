"""The image builder: a directory or a Git repository in, a docteur image out.

    make_image(source, output, MakeOptions(...), progress=None, warn=None) -> BuildResult
    make_image(source, output, date=..., compress="max", ...)   # the same, options by name

Three kinds of source end in the same place, a repository git can read and
one commit in it:
- a directory is hashed (`snapshot`) into a plain pack in a scratch bare
  repository, and given a synthetic root commit (`identity`);
- a local repository is used as it is (its objects reached read-only);
- a remote one is fetched at depth 1 with dulwich (`remote`), then used
  as a local one.
Then `git pack-objects` does the delta search, on every core in parts
fixed in advance (`parallel`), and the image is
written atomically around its PACK and IDX (`image`). `pipeline` holds
those steps, in order, each a function of the previous one's result.

This package is the only part of docteur that needs dulwich and git.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable

from .settings import MakeOptions

__all__ = ["BuildResult", "MakeOptions", "make_image"]


@dataclass(frozen=True)
class BuildResult:
    commit: str  # hex id of the commit the image holds
    tree: str  # hex id of its root tree
    size: int  # bytes of the image file
    objects: int  # objects in the PACK
    image: str = ""  # absolute path of the image written
    kind: str = ""  # "directory", "repository" or "remote"
    source_commit: str = ""  # the repository's commit (differs from `commit` when
    # --compat ocaml rewrote the tree); a directory's: `commit`
    files: int = 0  # regular files in the tree (a path each, duplicates included)
    bytes_in: int = 0  # their total size: what the image compresses
    deltas: int = 0  # PACK entries stored as deltas (of `objects`)
    signed_by: str = ""  # "ED25519 key SHA256:..." that signed a directory's commit (--sign)
    reused: int = 0  # with a base: objects of the image that the base already held
    # What the OCaml docteur's fast reader will not see ("" when it sees
    # everything, and always under --compat ocaml): `make -v` says it in
    # its summary line; no warning, since it matters only to OCaml readers.
    ocaml_note: str = ""


def make_image(source: str | os.PathLike[str], output: str | os.PathLike[str],
               options: MakeOptions | None = None, *,
               progress: Callable[[str], None] | None = None,
               warn: Callable[[str], None] | None = None, **settings: Any) -> BuildResult:
    """Build the image of `source` at `output`; raise BuildError on any user error.

    `options` (a frozen `MakeOptions`) says everything that decides the
    image's bytes besides the source; `settings` names some of its fields
    instead (`date="..."`), or changes those of `options`. Each field:
    `progress`, when given, receives one-line status texts (ours and git's).
    `warn` receives warnings (skipped special files); default: stderr.
    `date`, `author` and `message` only apply to directory sources: a
    repository's commit is used as it is.
    `compat="ocaml"`: an image the OCaml docteur reads completely (see
    `compat`): files as 100644, links as their targets' content, no
    submodules, no empty emails, a directory's commit as the OCaml builder
    makes it; `BuildResult.source_commit` is the repository's commit when
    the image's had to be rewritten; a dangling link is left out with a
    warning (the OCaml side could not read it). Without it,
    `BuildResult.ocaml_note` names what the OCaml docteur's fast reader will
    not see (no warning: that matters only to users of the OCaml readers).
    `max_object_size`: a source holding a bigger object is refused before
    the delta search (a directory's, before anything is read). The default
    is the readers' own limit, so the builder never makes an image they
    refuse; only a smaller value makes sense.
    `compress="max"`: after the delta search, every entry's zlib stream is
    re-encoded with libdeflate at level 12 where that is shorter (see
    `recompress`); needs the `max` extra. `compress="zopfli"`: libdeflate 12
    and zopfli (`zopfli_iterations`, default 15) are tried on each entry and
    the shortest stream kept; needs the `zopfli` extra.
    `excludes` (gitignore patterns, ranked as .git/info/exclude) and
    `gitignore=True` (honour the directory's .gitignore files) leave out
    what `git add` would (see `ignore`); directory sources only.
    OUTPUT, and its temporary file, are never packed when they lie inside a
    directory source.
    `jobs`: how many `git pack-objects` run at once (default: $DOCTEUR_JOBS,
    else the usable cores); it never changes the image (see `parallel`).
    `sign`: an SSH key file (private, or public with its private half in
    ssh-agent) that signs a directory's commit as `git commit -S` with
    gpg.format=ssh would (`docteur_core.sign`); checked before any work. A
    repository's commit keeps its own signature: `sign` with one is a
    BuildError. Ed25519 signatures are deterministic; ECDSA ones are not and
    RSA ones may not be (then two builds differ in the signature, hence in
    the commit id).
    `base`: a previous image whose objects, deltas and compressed bytes are
    reused as stored, after its checksums are checked (see `base`); the
    delta search is spent on the new objects only. The image is as
    complete as any other; its bytes depend on the source, the base and
    the options. `base` may be `output` itself.
    """
    from .pipeline import build

    chosen = dataclasses.replace(options or MakeOptions(), **settings)
    return build(os.fspath(source), os.fspath(output), chosen, progress, warn)
