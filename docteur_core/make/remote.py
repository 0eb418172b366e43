"""A remote repository as a source: a depth-1 fetch with dulwich, then read locally.

Only the chosen ref's tip is fetched (depth 1): the image holds one
snapshot, so history would be downloaded for nothing. Every failure is
turned into one line: unreachable, authentication refused, host key not
trusted, not a repository, unknown branch. Over ssh, the program runs in
batch mode without a terminal (see `ssh`): it fails instead of prompting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BuildError
from .source import Source
from .ssh import BatchSSHVendor, ssh_argv

if TYPE_CHECKING:
    from dulwich.refs import Ref

CONNECT_TIMEOUT = 60.0


# (the keys are dulwich's `Ref`s, a NewType of bytes that a bytes literal is not)
def _choose(refs: Mapping[Any, bytes], branch: str | None, display: str) -> bytes:
    if branch is None:
        sha = refs.get(b"HEAD")
        if not sha:
            raise BuildError(f"{display}: the remote has no HEAD (empty repository?)")
        return sha
    name = branch.encode("utf-8")
    candidates = [name] if name.startswith(b"refs/") else [
        b"refs/heads/" + name, b"refs/tags/" + name, b"refs/" + name]
    for c in candidates:
        if refs.get(c):
            return refs[c]
    raise BuildError(f"{display}: unknown branch or tag '{branch}'")


def _explain(exc: BaseException, display: str) -> BuildError:
    from dulwich.client import HTTPProxyUnauthorized, HTTPUnauthorized
    from dulwich.errors import HangupException, NotGitRepository
    if isinstance(exc, (HTTPUnauthorized, HTTPProxyUnauthorized)):
        return BuildError(f"{display}: authentication refused")
    text = str(exc).strip()
    lines = getattr(exc, "stderr_lines", None) if isinstance(exc, HangupException) else None
    if lines:
        # Lines of the remote's (or ssh's) stderr, as one line.
        text = " ".join(line.decode("utf-8", "replace").strip()
                        for line in lines if line.strip())
    low = text.lower()
    if re.search(r"host key verification failed|remote host identification has changed", low):
        return BuildError(f"{display}: host key verification failed (the host is not in "
                          "known_hosts, or its key changed)")
    if re.search(r"permission denied|authentication failed|could not read username|\b401\b|\b403\b",
                 low):
        return BuildError(f"{display}: authentication refused")
    if isinstance(exc, NotGitRepository) or re.search(
            r"not exported|not found|does not appear to be a git|no such repository|\b404\b|"
            r"not a git repository|repository .* does not exist", low):
        return BuildError(f"{display}: not a Git repository (or not served)")
    errno_text = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if isinstance(exc, OSError):
        reason = exc.strerror or (errno_text and errno_text.group(1).strip()) or text
        return BuildError(f"{display}: unreachable ({reason or type(exc).__name__})")
    if isinstance(exc, HangupException):
        return BuildError(f"{display}: unreachable ({text or 'the remote hung up'})")
    # urllib3 errors come wrapped (GitProtocolError); keep their root cause.
    first = (errno_text.group(1).strip() if errno_text
             else text.splitlines()[0] if text else type(exc).__name__)
    return BuildError(f"{display}: unreachable ({first})")


def fetch(source: Source, branch: str | None, dest: str,
          progress: Callable[[str], None] | None) -> str:
    """Fetch `branch` (or HEAD) of `source` at depth 1 into a new bare repo `dest`.

    Returns the fetched ref's object id (hex; it may be an annotated tag,
    which the caller peels).
    """
    import socket

    from dulwich.client import SSHGitClient, get_transport_and_path
    from dulwich.objects import ObjectID
    from dulwich.repo import Repo

    display = source.display
    os.makedirs(dest)
    target = Repo.init_bare(dest)
    chosen: list[bytes] = []

    def determine_wants(refs: Mapping[Ref, ObjectID], depth: int | None = None,
                        **kwargs: object) -> list[ObjectID]:
        sha = ObjectID(_choose(refs, branch, display))
        chosen.append(sha)
        return [sha]

    def report(data: bytes | str) -> None:
        if progress is not None and data:
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            for piece in re.split(r"[\r\n]", text):
                if piece.strip():
                    progress(piece.strip())

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(CONNECT_TIMEOUT)
    try:
        try:
            client, path = get_transport_and_path(source.location, quiet=progress is None)
        except ValueError as exc:
            raise BuildError(f"{display}: not a usable URL ({exc})") from None
        if isinstance(client, SSHGitClient):
            # (dulwich types it as its SSHVendor class; this one has the same
            # run_command, and make.ssh does not import dulwich.client to be one)
            client.ssh_vendor = BatchSSHVendor(  # type: ignore[assignment]
                ssh_argv(os.environ, int(CONNECT_TIMEOUT)))
        try:
            client.fetch(path, target, determine_wants=determine_wants, progress=report, depth=1)
        except (BuildError, KeyboardInterrupt):
            raise
        except Exception as exc:  # transports raise many unrelated types
            raise _explain(exc, display) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
        target.close()
    if not chosen:
        raise BuildError(f"{display}: the remote sent no references")
    sha = chosen[0].decode()
    with Repo(dest) as repo:
        if ObjectID(chosen[0]) not in repo.object_store:
            raise BuildError(f"{display}: the remote did not send {sha}")
    return sha
