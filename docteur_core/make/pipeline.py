"""The steps of a build, in the order `build` runs them:

1. `plan`: every check that needs no work (options, output, source, key,
   the directory's listing): a mistake costs nothing;
2. `open_base`: with `--base`, the earlier image checked and handed to git;
3. `commit_directory` / `commit_repository`: the source as one commit in a
   repository git can read (`Made`);
4. `delta_search`: `git pack-objects` on every core, then `--compress max|zopfli`;
5. `tally`: what the summary line reports;
6. `write`: the path index region, and the image written atomically.

Each step takes what the previous ones returned; nothing is shared through
mutable state. The steps' own modules (`snapshot`, `repository`, `parallel`,
`recompress`, `pathindex`, `image`) do the work; this module only orders it.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

from ..errors import BuildError
from ..format import layout
from . import BuildResult
from .settings import MakeOptions

if TYPE_CHECKING:
    from .base import Base
    from .compat import Unreadable
    from .gitrun import GitRepo
    from .identity import When
    from .ignore import Rules
    from .snapshot import Snapshot
    from .source import Source

Progress = Callable[[str], None] | None
Warn = Callable[[str], None]
_T = TypeVar("_T")

SIGN_REFUSAL = ("--sign signs a directory's commit; a Git repository's commit is stored as it "
                "is, with its own signature if it has one")


@dataclass(frozen=True)
class Identity:
    """A directory's commit: author, date and message, as bytes and seconds."""
    author: bytes
    when: When
    message: bytes | None


@dataclass(frozen=True)
class Plan:
    """What the checks found: the build may start."""
    src: Source
    image: str  # the output's absolute path
    base: str | None  # the base image's path
    iterations: int  # zopfli's, for --compress zopfli
    signed_by: str  # the signing key's description, or ""
    identity: Identity | None  # a directory's commit; None for a repository
    snapshot: Snapshot | None  # a directory's checked listing


@dataclass(frozen=True)
class Made:
    """The source as one commit in a repository git can read."""
    repo: GitRepo
    commit: str
    tree: str
    source_commit: str  # the repository's own commit (differs under --compat ocaml)
    unreadable: Unreadable  # what the OCaml docteur's fast reader will not see


def build(source: str, output: str, options: MakeOptions, progress: Progress,
          warn: Warn | None) -> BuildResult:
    """`make_image`'s work: the steps above, in order."""
    from .scratch import scratch_dir

    warn = warn or _stderr_warning
    plan = make_plan(source, output, options, warn, progress)
    with scratch_dir() as tmp:
        old, base_git = open_base(plan, tmp, progress)
        if plan.snapshot is not None:
            made = commit_directory(plan, options, tmp, old)
        else:
            made = commit_repository(plan, options, tmp, old, base_git, warn, progress)
        if progress is not None and old is not None:
            progress(f"Reusing {plan.base}")
        pack_path, idx_path = delta_search(made, options, plan, tmp, progress, old is not None)
        tally = count(made, plan, pack_path, idx_path, old)
        size = write(made, options, plan, pack_path, idx_path, progress)
    return BuildResult(commit=made.commit, tree=made.tree, size=size, objects=tally.objects,
                       image=plan.image, kind=plan.src.kind, source_commit=made.source_commit,
                       files=tally.files, bytes_in=tally.bytes_in, deltas=tally.deltas,
                       signed_by=plan.signed_by, reused=tally.reused,
                       ocaml_note="" if options.compat == "ocaml"
                       else (made.unreadable.warning() or ""))


# -- 1. the checks ---------------------------------------------------------------------

def make_plan(source: str, output: str, options: MakeOptions, warn: Warn,
              progress: Progress) -> Plan:
    """Every check that costs no work, in the order a user's mistake is most
    likely; raises BuildError with one line."""
    from . import compat as compat_mod
    from .image import check_output
    from .recompress import DEFAULT_ITERATIONS, check_available
    from .snapshot import Snapshot
    from .source import classify

    if not layout.valid_block_size(options.block_size):
        raise BuildError(f"block size {options.block_size}: must be {layout.block_size_rule()}")
    if options.compat is not None and options.compat not in compat_mod.COMPAT_CHOICES:
        raise BuildError(f"compat {options.compat!r}: the only choice is "
                         f"{', '.join(compat_mod.COMPAT_CHOICES)}")
    iterations = (DEFAULT_ITERATIONS if options.zopfli_iterations is None
                  else options.zopfli_iterations)
    check_available(options.compress, iterations)
    image = check_output(output)
    base = None if options.base is None else os.fspath(options.base)
    if base is not None and not os.path.exists(base):
        raise BuildError(f"{base}: no such base image")  # before any work
    src = classify(source)
    if options.author is not None:
        from . import identity
        identity.parse_author(options.author)  # an empty email is refused whatever the source
    rules = _filter_rules(src, options)
    signed_by = _signing_key(src, options)
    directory = src.kind == "directory"
    if directory and options.branch is not None:
        raise BuildError(f"{src.display}: --branch needs a Git repository, "
                         "and this is a plain directory")
    commit_identity = _identity(options) if directory else None
    if shutil.which("git") is None:
        raise BuildError("the git program is needed but was not found on PATH")
    snapshot = None
    if directory:
        # Everything is listed and checked (sizes, kinds) before any work.
        snapshot = Snapshot(src.location, warn, progress, compat=options.compat,
                            max_object_size=options.max_object_size, rules=rules,
                            output=image)
        snapshot.scan()
    return Plan(src=src, image=image, base=base, iterations=iterations, signed_by=signed_by,
                identity=commit_identity, snapshot=snapshot)


def _filter_rules(src: Source, options: MakeOptions) -> Rules | None:
    """--exclude / --gitignore as rules; refused for a repository."""
    if not (options.excludes or options.gitignore):
        return None
    if src.kind != "directory":
        raise BuildError(f"{src.display}: {filters_refusal(options.excludes, options.gitignore)} "
                         "(a repository's commit is stored as it is)")
    from .ignore import Rules, exclude_patterns
    return Rules.make(exclude_patterns(options.excludes), options.gitignore)


def _signing_key(src: Source, options: MakeOptions) -> str:
    """The --sign key's description, checked (readable, ssh-keygen) before any work."""
    if options.sign is None:
        return ""
    if src.kind != "directory":
        raise BuildError(f"{src.display}: {SIGN_REFUSAL}")
    from ..sign import check_key
    return _as_build_error(check_key, options.sign)


def _identity(options: MakeOptions) -> Identity:
    """A directory's commit identity; under --compat ocaml, as the OCaml
    builder makes it (its author, no message, now with the local offset)."""
    from . import compat as compat_mod
    from . import identity

    if options.compat == "ocaml":
        author = identity.parse_author(options.author or compat_mod.OCAML_AUTHOR)
        if options.date is not None:
            when = identity.parse_date(options.date)
        elif (os.environ.get("SOURCE_DATE_EPOCH") or "").strip():
            when = identity.default_date(os.environ)
        else:
            when = compat_mod.local_now()
        message = None if options.message is None else identity.message_bytes(options.message)
        return Identity(author, when, message)
    when = (identity.parse_date(options.date) if options.date is not None
            else identity.default_date(os.environ))
    return Identity(identity.parse_author(options.author), when,
                    identity.message_bytes(options.message))


# -- 2. the base -----------------------------------------------------------------------

def open_base(plan: Plan, tmp: str, progress: Progress) -> tuple[Base | None, str | None]:
    """With a base: it is checked and its PACK and IDX put where git sees them
    (first: OLD may be the output itself, and a damaged one stops the build
    before any work). Returns the base and the repository holding it."""
    if plan.base is None:
        return None, None
    from .base import open_base as check_and_copy
    from .gitrun import run_git

    if progress is not None:
        progress(f"Checking the base image {plan.base}")
    base_git = os.path.join(tmp, "snapshot.git" if plan.snapshot is not None else "base.git")
    run_git(None, "init", "-q", "--bare", "--object-format=sha1", base_git)
    return check_and_copy(plan.base, os.path.join(base_git, "objects", "pack")), base_git


# -- 3. the commit ---------------------------------------------------------------------

def commit_directory(plan: Plan, options: MakeOptions, tmp: str, old: Base | None) -> Made:
    """The directory hashed into a plain pack of a scratch repository (only
    the objects the base lacks, with a base), and its commit written."""
    from . import compat as compat_mod
    from . import identity
    from ..format.pack import OBJ_COMMIT
    from .gitrun import GitRepo, run_git
    from .packwriter import PlainPackWriter

    assert plan.snapshot is not None and plan.identity is not None
    git_dir = os.path.join(tmp, "snapshot.git")
    pack = os.path.join(git_dir, "objects", "pack", "pack-snapshot")
    if old is None:
        run_git(None, "init", "-q", "--bare", "--object-format=sha1", git_dir)
        writer = PlainPackWriter(pack)
    else:
        from .base import NewObjectsWriter
        writer = NewObjectsWriter(pack, old.ids)
    who = plan.identity
    try:
        tree = plan.snapshot.write(writer)
        if options.compat == "ocaml":
            raw = compat_mod.commit_raw(tree, who.author, who.when, who.message)
        else:
            assert who.message is not None  # message_bytes gives one (only OCaml's may be None)
            raw = identity.commit_raw(tree, who.author, who.when, who.message)
        if options.sign is not None:
            from ..sign import sign_commit
            raw = _as_build_error(sign_commit, raw, options.sign)
        commit = writer.add(OBJ_COMMIT, raw).hex()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    unreadable = compat_mod.Unreadable(plan.snapshot.executables, plan.snapshot.links)
    return Made(GitRepo(git_dir), commit, tree, commit, unreadable)


def commit_repository(plan: Plan, options: MakeOptions, tmp: str, old: Base | None,
                      base_git: str | None, warn: Warn, progress: Progress) -> Made:
    """A local repository's commit (a remote one fetched first), checked and,
    under --compat ocaml, rewritten; with a base, only what it lacks is
    exported beside it."""
    from . import compat as compat_mod
    from .gitrun import GitRepo, check_object_sizes, run_git
    from .remote import fetch
    from .repository import open_repository, resolve

    src = plan.src
    ref: str | None  # None: the repository's HEAD
    if src.kind == "remote":
        git_dir = os.path.join(tmp, "fetched.git")
        ref = fetch(src, options.branch, git_dir, progress)
    else:
        assert src.git_dir is not None  # a repository Source has one
        git_dir, ref = src.git_dir, options.branch
    repo = open_repository(git_dir, src.display, os.path.join(tmp, "scratch-objects"))
    resolved = resolve(repo, ref, src.display)
    commit, tree = resolved.commit, resolved.tree
    source_commit = commit
    # Before the commit is read: --compat ocaml's rewrite adds no bigger object.
    check_object_sizes(repo, commit, options.max_object_size, src.display)
    raw_commit = run_git(repo, "cat-file", "commit", commit)
    roles = compat_mod.empty_email_roles(raw_commit)
    ocaml = options.compat == "ocaml"
    if roles and ocaml:
        raise BuildError(f"{src.display}: " + compat_mod.empty_email_text(commit, roles)
                         + "; --compat ocaml refuses it")
    if roles:
        warn(compat_mod.empty_email_text(commit, roles))
    if ocaml:
        unreadable = compat_mod.Unreadable()
        commit, tree = _rewrite_for_ocaml(repo, commit, raw_commit, src.display, warn)
    else:
        unreadable = compat_mod.count_unreadable(repo, commit)
    if old is not None and base_git is not None:
        # Only OLD's pack and the new objects: each object in one pack.
        from .base import export_missing
        export_missing(repo, commit, old.ids,
                       os.path.join(base_git, "objects", "pack", "pack-new"))
        repo = GitRepo(base_git)
    return Made(repo, commit, tree, source_commit, unreadable)


def _rewrite_for_ocaml(repo: GitRepo, commit: str, raw_commit: bytes, display: str,
                       warn: Warn) -> tuple[str, str]:
    """--compat ocaml on a repository: (commit, tree) of the image, rewritten if need be."""
    from . import compat as compat_mod
    from .gitrun import run_git
    from ..format.pack import OBJ_COMMIT
    from .packwriter import PlainPackWriter

    assert repo.object_dir is not None  # open_repository's scratch object folder
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


# -- 4. the delta search ---------------------------------------------------------------

def delta_search(made: Made, options: MakeOptions, plan: Plan, tmp: str, progress: Progress,
                 reuse: bool) -> tuple[str, str]:
    """The image's PACK and IDX: `git pack-objects` in parts fixed in advance
    (`parallel`), then every stream re-encoded under --compress max or zopfli."""
    from .parallel import pack_objects_parallel

    pack_path = pack_objects_parallel(made.repo, made.commit, os.path.join(tmp, "image"),
                                      progress, options.jobs, reuse=reuse)
    idx_path = pack_path[:-len(".pack")] + ".idx"
    if options.compress != "default":
        from .recompress import encoders_for, recompress_pack
        recompress_pack(pack_path, idx_path, encoders_for(options.compress, plan.iterations),
                        progress)
    return pack_path, idx_path


# -- 5. the tally ----------------------------------------------------------------------

@dataclass(frozen=True)
class Tally:
    """What the summary line reports."""
    objects: int
    deltas: int
    reused: int
    files: int
    bytes_in: int


def count(made: Made, plan: Plan, pack_path: str, idx_path: str, old: Base | None) -> Tally:
    from .summary import count_deltas, tree_files

    with open(idx_path, "rb") as f:
        f.seek(layout.IDX_HEADER_SIZE + 255 * 4)
        objects = int.from_bytes(f.read(4), "big")
    if plan.snapshot is not None:
        files, bytes_in = plan.snapshot.files, plan.snapshot.bytes
    else:
        files, bytes_in = tree_files(made.repo, made.tree)
    return Tally(objects=objects, deltas=count_deltas(pack_path, idx_path),
                 reused=0 if old is None else _count_reused(idx_path, old.ids),
                 files=files, bytes_in=bytes_in)


def _count_reused(idx_path: str, known: frozenset[bytes]) -> int:
    """How many objects of the new pack (its .idx) the base held."""
    with open(idx_path, "rb") as f:
        data = f.read()
    n = struct.unpack_from(">I", data, layout.IDX_HEADER_SIZE + 255 * 4)[0]
    at = layout.IDX_HEADER_SIZE + layout.FANOUT_SIZE
    return sum(1 for i in range(n) if data[at + 20 * i:at + 20 * i + 20] in known)


# -- 6. the image ----------------------------------------------------------------------

def write(made: Made, options: MakeOptions, plan: Plan, pack_path: str, idx_path: str,
          progress: Progress) -> int:
    """The path index region (unless --no-path-index), then the image written
    atomically around the PACK and IDX; returns its size."""
    from .image import write_image

    tail = None
    if options.path_index:
        from .pathindex import build_region
        _, region_start = layout.image_layout(os.path.getsize(pack_path),
                                              os.path.getsize(idx_path), options.block_size)
        tail = build_region(made.repo, made.commit, made.tree, pack_path, idx_path,
                            options.block_size, region_start)
    return write_image(plan.image, bytes.fromhex(made.commit), pack_path, idx_path,
                       options.block_size, progress, tail=tail)


# -- shared words ----------------------------------------------------------------------

def _stderr_warning(text: str) -> None:
    print(f"docteur make: warning: {text}", file=sys.stderr)


def _as_build_error(call: Callable[..., _T], *args: object) -> _T:
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
