"""What the OCaml docteur can read, and `--compat ocaml`: images it reads completely.

Measured with the OCaml docteur's own programs (see tests/oracles/test_ocaml_docteur.py):
- its fast reader, and `list` in both modes, see regular files stored as
  100644 only: executables (100755) and symbolic links (120000) are
  invisible to them (its `analyze.ml` indexes 100644 blobs only);
- a submodule entry (160000) makes its light reader raise;
- a commit whose author or committer email is empty is unreadable
  ("Malformed Git commit object": its identity parser wants one byte or more
  between `<` and `>`).

Its directory builder (bin/gitify.ml) stores every regular file as 100644,
follows symbolic links (`Unix.stat`: a link to a file becomes that file's
content, a link to a folder a copy of that folder), keeps empty folders as
empty trees, and gives the tree a commit with no message, author and
committer "Dr. Greenthumb <noreply@cypress.hill>", dated `-d` (with that
date's UTC offset) or now (with the local UTC offset).

`--compat ocaml` does the same, refusing with one line what the OCaml
builder would crash on or what would leave SOURCE: a link whose target is
outside SOURCE, a link to a folder that contains it (a cycle), a submodule,
an empty email. A dangling link (its target, or a folder on the way, does
not exist) has no content to store and nothing the OCaml readers could
read: it is left out, with a warning naming it (the OCaml builder would
stop there). A repository's tree is rewritten the
same way (100755 -> 100644, a link -> what it names inside the tree); when
that changes the tree, the image's commit is the repository's commit with
its tree replaced (same parents, author, committer, dates and message; a
signature is dropped, it would no longer match), so its id differs from the
repository's. A tree that needs no rewrite keeps the repository's commit.
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BuildError
from .gitrun import GitRepo, run_git
from .identity import When

OCAML_AUTHOR = "Dr. Greenthumb <noreply@cypress.hill>"
COMPAT_CHOICES = ("ocaml",)

MODE_FILE, MODE_EXEC, MODE_LINK, MODE_TREE, MODE_GITLINK = 0o100644, 0o100755, 0o120000, 0o40000, 0o160000

# How many links a path may cross while it is resolved (Linux's limit).
MAX_LINK_HOPS = 40


@dataclass
class Unreadable:
    """Entries the OCaml docteur cannot read (see the module's docstring)."""
    executables: int = 0
    links: int = 0
    submodules: int = 0

    @property
    def total(self) -> int:
        return self.executables + self.links + self.submodules

    def warning(self) -> str | None:
        """What `make -v` adds to its summary line without --compat ocaml, or None."""
        if not self.total:
            return None
        parts = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in
                 ((self.executables, "executable"), (self.links, "symbolic link"),
                  (self.submodules, "submodule")) if n]
        text = (f"the OCaml docteur's fast reader and its list will not see "
                f"{' and '.join(parts)} (they see 100644 files only")
        text += ", and its light reader fails on a submodule)" if self.submodules else ")"
        fix = "; --compat ocaml stores executables and links as plain files"
        if self.submodules:
            fix += " and refuses submodules"
        return text + fix


def local_now() -> When:
    """Now, with the local UTC offset, as the OCaml builder dates its commit."""
    now = time.time()
    offset = time.localtime(now).tm_gmtoff
    return When(int(now), offset - offset % 60)


def _tz(offset: int) -> str:
    sign = "-" if offset < 0 else "+"
    minutes = abs(offset) // 60
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def commit_raw(tree_hex: str, author: bytes, when: When, message: bytes | None) -> bytes:
    """A root commit as the OCaml builder writes it: no message, not even the blank line."""
    ident = author + f" {when.seconds} {_tz(when.offset)}".encode()
    raw = b"tree " + tree_hex.encode() + b"\nauthor " + ident + b"\ncommitter " + ident + b"\n"
    if message is not None:
        raw += b"\n" + message
    return raw


_EMAIL = re.compile(rb"<([^>\n]*)>")


def empty_email_roles(raw_commit: bytes) -> list[str]:
    """'author' and/or 'committer' when that line's email is empty (or missing)."""
    roles = []
    head = raw_commit.split(b"\n\n", 1)[0]
    for line in head.split(b"\n"):
        for role in ("author", "committer"):
            if line.startswith(role.encode() + b" "):
                m = _EMAIL.search(line)
                if m is None or not m.group(1):
                    roles.append(role)
    return roles


def empty_email_text(commit_hex: str, roles: list[str]) -> str:
    who = " and ".join(f"its {r}'s" for r in roles)
    return (f"commit {commit_hex}: {who} email is empty, and the OCaml docteur cannot read "
            "such a commit (\"Malformed Git commit object\")")


# -- a repository's tree, as the OCaml docteur would need it -----------------

@dataclass
class _Entry:
    name: bytes
    mode: int
    sha: str


def _list_tree(repo: GitRepo, commit: str) -> dict[bytes, list[_Entry]]:
    """Every folder of the commit's tree (b'' is the root) and its entries, in git's order."""
    out = run_git(repo, "ls-tree", "-r", "-t", "-z", "--full-tree", commit)
    folders: dict[bytes, list[_Entry]] = {b"": []}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, path = record.split(b"\t", 1)
        mode, _kind, sha = meta.split(b" ")
        parent, _, name = path.rpartition(b"/")
        entry = _Entry(name, int(mode, 8), sha.decode())
        folders.setdefault(parent, []).append(entry)
        if entry.mode == MODE_TREE:
            folders.setdefault(path, [])
    return folders


def count_unreadable(repo: GitRepo, commit: str) -> Unreadable:
    seen = Unreadable()
    for entries in _list_tree(repo, commit).values():
        for e in entries:
            if e.mode == MODE_EXEC:
                seen.executables += 1
            elif e.mode == MODE_LINK:
                seen.links += 1
            elif e.mode == MODE_GITLINK:
                seen.submodules += 1
    return seen


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


class TreeRewriter:
    """Rewrites a repository's tree for the OCaml docteur; writes new trees with `add`."""

    def __init__(self, repo: GitRepo, commit: str, display: str,
                 add: Callable[[int, bytes], bytes],
                 warn: Callable[[str], None] | None = None) -> None:
        self.repo = repo
        self.display = display
        self.add = add  # add(type_num, raw) -> raw id
        self.warn = warn or (lambda text: None)  # a dangling link, left out
        self.folders = _list_tree(repo, commit)
        self.by_path: dict[bytes, _Entry] = {}
        for parent, entries in self.folders.items():
            for e in entries:
                self.by_path[parent + b"/" + e.name if parent else e.name] = e
        self.memo: dict[bytes, str] = {}
        self.busy: list[bytes] = []
        self.targets: dict[str, bytes] = {}

    def needed(self) -> bool:
        for path, e in self.by_path.items():
            if e.mode == MODE_GITLINK:
                raise BuildError(f"{self.display}: {_show(path)} is a submodule (commit {e.sha}): "
                                 "the OCaml docteur's light reader fails on submodules, so "
                                 "--compat ocaml refuses them")
        return any(e.mode in (MODE_EXEC, MODE_LINK) for e in self.by_path.values())

    def _target(self, sha: str) -> bytes:
        if sha not in self.targets:
            self.targets[sha] = run_git(self.repo, "cat-file", "blob", sha)
        return self.targets[sha]

    def _refuse(self, link: bytes, why: str, error: type[BuildError] = BuildError) -> BuildError:
        target = _show(self._target(self.by_path[link].sha))
        return error(f"{self.display}: {_show(link)}: symbolic link to {target} {why} "
                     "(--compat ocaml stores a link as the content of its target)")

    def _resolve(self, link: bytes) -> tuple[bytes, _Entry | None]:
        """What the link at `link` names, links on the way followed: (path, entry).

        The entry is None for the root. Refused: leaving the tree (an absolute
        target, or `..` above the root), naming nothing, too many links.
        """
        hops = [0]

        def follow(folder: bytes, target: bytes) -> tuple[bytes, _Entry | None]:
            if target.startswith(b"/"):
                raise self._refuse(link, "leads outside SOURCE")
            parts = folder.split(b"/") if folder else []
            entry: _Entry | None = self.by_path.get(folder) if folder else None
            for comp in target.split(b"/"):
                if comp in (b"", b"."):
                    continue
                if entry is not None and entry.mode != MODE_TREE:
                    raise self._refuse(link, "goes through a file", Dangling)
                if comp == b"..":
                    if not parts:
                        raise self._refuse(link, "leads outside SOURCE")
                    parts.pop()
                    entry = self.by_path.get(b"/".join(parts)) if parts else None
                    continue
                path = b"/".join(parts + [comp])
                entry = self.by_path.get(path)
                if entry is None:
                    raise self._refuse(link, "points to nothing", Dangling)
                if entry.mode == MODE_LINK:
                    hops[0] += 1
                    if hops[0] > MAX_LINK_HOPS:
                        raise self._refuse(link, "goes through too many links")
                    path, entry = follow(b"/".join(parts), self._target(entry.sha))
                    parts = path.split(b"/") if path else []
                else:
                    parts.append(comp)
            return b"/".join(parts), entry

        return follow(posixpath.dirname(link), self._target(self.by_path[link].sha))

    def tree(self, folder: bytes = b"") -> str:
        """The rewritten tree of `folder` (hex id)."""
        if folder in self.memo:
            return self.memo[folder]
        self.busy.append(folder)
        from dulwich.objects import ObjectID, Tree

        from ..format.pack import OBJ_TREE

        out = Tree()
        for e in self.folders.get(folder, []):
            path = folder + b"/" + e.name if folder else e.name
            mode, sha = e.mode, e.sha
            if mode == MODE_EXEC:
                mode = MODE_FILE
            elif mode == MODE_TREE:
                sha = self.tree(path)
            elif mode == MODE_LINK:
                try:
                    where, target = self._resolve(path)
                except Dangling:
                    self.warn(dangling_text(f"{self.display}: {_show(path)}",
                                            _show(self._target(sha))))
                    continue
                if target is None or target.mode == MODE_TREE:
                    if any(where in (b"", b) or b.startswith(where + b"/") for b in self.busy):
                        raise self._refuse(path, "leads to a folder that contains it (a cycle)")
                    mode, sha = MODE_TREE, self.tree(where)
                elif target.mode == MODE_GITLINK:
                    raise self._refuse(path, "names a submodule")
                else:
                    mode, sha = MODE_FILE, target.sha
            out.add(e.name, mode, ObjectID(sha.encode()))
        self.busy.pop()
        new = self.add(OBJ_TREE, out.as_raw_string()).hex()
        self.memo[folder] = new
        return new


class Dangling(BuildError):
    """A link whose target does not exist (inside the tree being rewritten)."""


def dangling_text(where: str, target: str) -> str:
    """The warning for a dangling link left out under --compat ocaml."""
    return (f"{where}: skipped (symbolic link to {target}, which does not exist: "
            "--compat ocaml stores a link as the content of its target)")


def replace_tree(raw_commit: bytes, tree_hex: str) -> bytes:
    """The commit with another tree; a signature (gpgsig, gpgsig-sha256) is dropped."""
    head, sep, message = raw_commit.partition(b"\n\n")
    lines = head.split(b"\n")
    out = []
    skipping = False
    for line in lines:
        if line.startswith(b" ") and skipping:
            continue
        skipping = False
        if line.startswith(b"tree "):
            line = b"tree " + tree_hex.encode()
        elif line.startswith((b"gpgsig ", b"gpgsig-sha256 ")):
            skipping = True
            continue
        out.append(line)
    return b"\n".join(out) + sep + message
