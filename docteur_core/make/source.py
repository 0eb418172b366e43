"""What SOURCE names: a directory, a local repository, or a remote one.

`file:///abs/path` and the OCaml docteur's `relativize://rel/path` (relative
to the current folder) name local paths.

Pure classification plus a few `lstat`s; nothing is read or fetched here.
Git's own rule decides the scp form (`host:path` is remote when no `/`
comes before the first `:`), except that an existing local path wins.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import BuildError

REMOTE_SCHEMES = {"http", "https", "git", "ssh", "git+ssh", "ssh+git"}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"^(?:[^@/:]+@)?(?:\[[^\]]+\]|[^/:]+):(.*)$")


@dataclass(frozen=True)
class Source:
    kind: str  # "directory", "repository" or "remote"
    location: str  # a path for local kinds, a URL (or scp form) for remote
    git_dir: str | None = None  # for "repository"

    @property
    def display(self) -> str:
        return redact(self.location) if self.kind == "remote" else self.location


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    m = _SCHEME.match(url)
    if not m:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def classify(source: str) -> Source:
    if not source:
        raise BuildError("source: empty")
    m = _SCHEME.match(source)
    if m:
        scheme = m.group(1).lower()
        if scheme == "file":
            parts = urlsplit(source)
            if parts.netloc not in ("", "localhost"):
                raise BuildError(f"{source}: file:// URLs must name a local path")
            return local(unquote(parts.path), source)
        if scheme == "relativize":
            # The OCaml docteur's spelling of a path relative to the current
            # folder (its announcement's `docteur.make relativize://site ...`):
            # host and path joined, a leading slash dropped, as it reads it.
            parts = urlsplit(source)
            return local(unquote(parts.netloc + parts.path).lstrip("/") or ".", source)
        if scheme in REMOTE_SCHEMES:
            return Source("remote", source)
        raise BuildError(f"{source}: unsupported URL scheme '{scheme}'")
    if os.path.lexists(source):
        return local(source, source)
    head = source.split("/", 1)[0]
    if ":" in head and _SCP.match(source):
        return Source("remote", source)
    raise BuildError(f"{source}: no such file or directory")


def local(path: str, display: str) -> Source:
    if not os.path.lexists(path):
        raise BuildError(f"{display}: no such file or directory")
    if not os.path.isdir(path):
        raise BuildError(f"{display}: not a directory or a Git repository")
    dot_git = os.path.join(path, ".git")
    if os.path.lexists(dot_git):
        return Source("repository", path, git_dir=dot_git)
    if (os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects"))
            and os.path.isdir(os.path.join(path, "refs"))):
        return Source("repository", path, git_dir=path)
    return Source("directory", path)
