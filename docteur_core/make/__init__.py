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
Then `git pack-objects` does the delta search, on every core in parts
fixed in advance (`parallel`), and the image is
written atomically around its PACK and IDX (`image`).

This package is the only part of docteur that needs dulwich and git.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from ..format import layout
from ..format.limits import MAX_FILE_SIZE
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


def _stderr_warning(text: str) -> None:
    print(f"docteur make: warning: {text}", file=sys.stderr)


def make_image(source: str | os.PathLike, output: str | os.PathLike, *,
               branch: str | None = None, date: str | None = None,
               author: str | None = None, message: str | None = None,
               block_size: int = layout.DEFAULT_BLOCK_SIZE,
               progress: Callable[[str], None] | None = None,
               warn: Callable[[str], None] | None = None,
               compat: str | None = None, path_index: bool = True,
               max_object_size: int = MAX_FILE_SIZE, compress: str = "default",
               zopfli_iterations: int | None = None,
               excludes: Sequence[str | bytes] = (), gitignore: bool = False,
               jobs: int | None = None, sign: str | os.PathLike | None = None,
               base: str | os.PathLike | None = None) -> BuildResult:
    """Build the image of `source` at `output`; raise BuildError on any user error.

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
    re-encoded with zopfli (`zopfli_iterations`, default 15) where that is
    shorter (see `recompress`); needs the `max` extra.
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
    from . import compat as compat_mod
    from . import identity
    from .gitrun import GitRepo, check_object_sizes, run_git
    from .image import check_output, write_image
    from ..format.pack import OBJ_COMMIT
    from .packwriter import PlainPackWriter
    from .parallel import pack_objects_parallel
    from .remote import fetch
    from .repository import open_repository, resolve
    from .scratch import scratch_dir
    from .snapshot import Snapshot
    from .source import classify

    if not layout.valid_block_size(block_size):
        raise BuildError(f"block size {block_size}: must be {layout.block_size_rule()}")
    if compat is not None and compat not in compat_mod.COMPAT_CHOICES:
        raise BuildError(f"compat {compat!r}: the only choice is "
                         f"{', '.join(compat_mod.COMPAT_CHOICES)}")
    ocaml = compat == "ocaml"
    from .recompress import DEFAULT_ITERATIONS, check_available
    iterations = DEFAULT_ITERATIONS if zopfli_iterations is None else zopfli_iterations
    check_available(compress, iterations)
    image = check_output(os.fspath(output))
    base_path = None if base is None else os.fspath(base)
    if base_path is not None and not os.path.exists(base_path):
        raise BuildError(f"{base_path}: no such base image")  # before any work
    src = classify(os.fspath(source))
    warn = warn or _stderr_warning
    if author is not None:
        identity.parse_author(author)  # an empty email is refused whatever the source
    rules = None
    if excludes or gitignore:
        if src.kind != "directory":
            raise BuildError(f"{src.display}: {filters_refusal(excludes, gitignore)} "
                             "(a repository's commit is stored as it is)")
        from .ignore import Rules, exclude_patterns
        rules = Rules.make(exclude_patterns(excludes), gitignore)
    signed_by = ""
    if sign is not None:
        if src.kind != "directory":
            raise BuildError(f"{src.display}: {SIGN_REFUSAL}")
        from ..sign import check_key
        signed_by = _as_build_error(check_key, sign)  # a readable key, ssh-keygen: before any work
    if src.kind == "directory":
        if branch is not None:
            raise BuildError(f"{src.display}: --branch needs a Git repository, "
                             "and this is a plain directory")
        if ocaml:
            # As the OCaml builder: its author, no message, now with the local offset.
            author_b = identity.parse_author(author or compat_mod.OCAML_AUTHOR)
            if date is not None:
                when = identity.parse_date(date)
            elif (os.environ.get("SOURCE_DATE_EPOCH") or "").strip():
                when = identity.default_date(os.environ)
            else:
                when = compat_mod.local_now()
            message_b = None if message is None else identity.message_bytes(message)
        else:
            author_b = identity.parse_author(author)
            when = identity.parse_date(date) if date is not None else identity.default_date(os.environ)
            message_b = identity.message_bytes(message)
    if shutil.which("git") is None:
        raise BuildError("the git program is needed but was not found on PATH")
    if src.kind == "directory":
        # Everything is listed and checked (sizes, kinds) before any work.
        snapshot = Snapshot(src.location, warn, progress, compat=compat,
                            max_object_size=max_object_size, rules=rules, output=image)
        snapshot.scan()

    with scratch_dir() as tmp:
        old = None
        if base_path is not None:
            # Checked and copied first: OLD may be IMAGE, and a damaged one stops the build
            # before any work.
            from .base import open_base
            if progress is not None:
                progress(f"Checking the base image {base_path}")
            pack_git = os.path.join(tmp, "snapshot.git" if src.kind == "directory"
                                    else "base.git")
            run_git(None, "init", "-q", "--bare", "--object-format=sha1", pack_git)
            old = open_base(base_path, os.path.join(pack_git, "objects", "pack"))
        if src.kind == "directory":
            git_dir = os.path.join(tmp, "snapshot.git")
            snapshot_pack = os.path.join(git_dir, "objects", "pack", "pack-snapshot")
            if old is None:
                run_git(None, "init", "-q", "--bare", "--object-format=sha1", git_dir)
                writer = PlainPackWriter(snapshot_pack)
            else:
                from .base import NewObjectsWriter
                writer = NewObjectsWriter(snapshot_pack, old.ids)
            try:
                tree = snapshot.write(writer)
                if ocaml:
                    raw = compat_mod.commit_raw(tree, author_b, when, message_b)
                else:
                    raw = identity.commit_raw(tree, author_b, when, message_b)
                if sign is not None:
                    from ..sign import sign_commit
                    raw = _as_build_error(sign_commit, raw, sign)
                commit = writer.add(OBJ_COMMIT, raw).hex()
                writer.finish()
            except BaseException:
                writer.abort()
                raise
            repo = GitRepo(git_dir)
            unreadable = compat_mod.Unreadable(snapshot.executables, snapshot.links)
            source_commit = commit
        else:
            if src.kind == "remote":
                git_dir = os.path.join(tmp, "fetched.git")
                ref = fetch(src, branch, git_dir, progress)
            else:
                git_dir, ref = src.git_dir, branch
            repo = open_repository(git_dir, src.display, os.path.join(tmp, "scratch-objects"))
            resolved = resolve(repo, ref, src.display)
            commit, tree = resolved.commit, resolved.tree
            source_commit = commit
            # Before the commit is read: --compat ocaml's rewrite adds no bigger object.
            check_object_sizes(repo, commit, max_object_size, src.display)
            raw_commit = run_git(repo, "cat-file", "commit", commit)
            roles = compat_mod.empty_email_roles(raw_commit)
            if roles and ocaml:
                raise BuildError(f"{src.display}: "
                                 + compat_mod.empty_email_text(commit, roles)
                                 + "; --compat ocaml refuses it")
            if roles:
                warn(compat_mod.empty_email_text(commit, roles))
            unreadable = compat_mod.Unreadable()
            if ocaml:
                commit, tree = _rewrite_for_ocaml(repo, commit, raw_commit, src.display, tmp,
                                                  warn)
            else:
                unreadable = compat_mod.count_unreadable(repo, commit)
            if old is not None:
                # Only OLD's pack and the new objects: each object in one pack.
                from .base import export_missing
                export_missing(repo, commit, old.ids,
                               os.path.join(pack_git, "objects", "pack", "pack-new"))
                repo = GitRepo(pack_git)
        ocaml_note = "" if ocaml else (unreadable.warning() or "")
        if progress is not None and old is not None:
            progress(f"Reusing {base_path}")
        pack_path = pack_objects_parallel(repo, commit, os.path.join(tmp, "image"), progress,
                                          jobs, reuse=old is not None)
        idx_path = pack_path[:-len(".pack")] + ".idx"
        if compress == "max":
            from .recompress import recompress_pack
            recompress_pack(pack_path, idx_path, iterations, progress)
        with open(idx_path, "rb") as f:
            f.seek(layout.IDX_HEADER_SIZE + 255 * 4)
            objects = int.from_bytes(f.read(4), "big")
        from .summary import count_deltas, tree_files
        deltas = count_deltas(pack_path, idx_path)
        reused = 0 if old is None else _count_reused(idx_path, old.ids)
        if src.kind == "directory":
            files, bytes_in = snapshot.files, snapshot.bytes
        else:
            files, bytes_in = tree_files(repo, tree)
        tail = None
        if path_index:
            from .pathindex import build_region
            _, region_start = layout.image_layout(os.path.getsize(pack_path),
                                                  os.path.getsize(idx_path), block_size)
            tail = build_region(repo, commit, tree, pack_path, idx_path, block_size,
                                region_start)
        size = write_image(image, bytes.fromhex(commit), pack_path, idx_path, block_size,
                           progress, tail=tail)
    return BuildResult(commit=commit, tree=tree, size=size, objects=objects, image=image,
                       kind=src.kind, source_commit=source_commit, files=files,
                       bytes_in=bytes_in, deltas=deltas, signed_by=signed_by,
                       ocaml_note=ocaml_note, reused=reused)


def _count_reused(idx_path: str, known: frozenset) -> int:
    """How many objects of the new pack (its .idx) the base held."""
    import struct

    with open(idx_path, "rb") as f:
        data = f.read()
    n = struct.unpack_from(">I", data, layout.IDX_HEADER_SIZE + 255 * 4)[0]
    at = layout.IDX_HEADER_SIZE + layout.FANOUT_SIZE
    return sum(1 for i in range(n) if data[at + 20 * i:at + 20 * i + 20] in known)


SIGN_REFUSAL = ("--sign signs a directory's commit; a Git repository's commit is stored as it "
                "is, with its own signature if it has one")


def _as_build_error(call, *args):
    """`call(*args)`, its one-line DocteurError (the signing key, ssh-keygen) a BuildError."""
    from ..errors import DocteurError

    try:
        return call(*args)
    except BuildError:
        raise
    except DocteurError as exc:
        raise BuildError(str(exc)) from None


def filters_refusal(excludes: Sequence[str | bytes], gitignore: bool) -> str:
    """Why the filter options given cannot apply to a repository, for messages."""
    given = (["--exclude"] if excludes else []) + (["--gitignore"] if gitignore else [])
    return (f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} "
            "to a directory source only")


def _rewrite_for_ocaml(repo, commit: str, raw_commit: bytes, display: str,
                       tmp: str, warn: Callable[[str], None]) -> tuple[str, str]:
    """--compat ocaml on a repository: (commit, tree) of the image, rewritten if need be."""
    from . import compat as compat_mod
    from .gitrun import run_git
    from ..format.pack import OBJ_COMMIT
    from .packwriter import PlainPackWriter

    pack_dir = os.path.join(repo.object_dir, "pack")
    writer = PlainPackWriter(os.path.join(pack_dir, "pack-compat"))
    try:
        rewriter = compat_mod.TreeRewriter(repo, commit, display, writer.add, warn)
        if not rewriter.needed():
            writer.abort()
            tree = run_git(repo, "rev-parse", f"{commit}^{{tree}}").decode().strip()
            return commit, tree
        tree = rewriter.tree()
        new = writer.add(OBJ_COMMIT, compat_mod.replace_tree(raw_commit, tree)).hex()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return new, tree
