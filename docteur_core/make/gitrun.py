"""Running the `git` program: plumbing queries (the delta search is `parallel`).

Why git: its pack-objects is the only delta engine fast and good enough
(dulwich's is ~200x slower and ~45 % bigger on the requests corpus).

Every git process is started with `children.start`: its own process group
and PR_SET_PDEATHSIG, so a killed build (even by SIGKILL) takes its git
processes with it instead of leaving a `git pack-objects` running.

Determinism: pack-objects runs with `--threads=1` (git's threaded delta
search splits work by timing; `parallel` splits it in advance instead),
`--no-reuse-object` (the output does not depend on how the source
stores its objects), and every configuration key that changes the bytes
of a pack is pinned on the command line, which beats any user or
repository configuration.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from .. import children
from ..errors import BuildError

WINDOW = 250
DEPTH = 50

PINNED_CONFIG = {
    "pack.compression": "-1",
    "core.bigFileThreshold": "512m",
    "pack.windowMemory": "0",
    "pack.packSizeLimit": "0",
    "pack.indexVersion": "2",
    "pack.writeReverseIndex": "false",
    # Not for the bytes, for memory: git maps packs in windows of up to
    # 1 GiB, and every mapped page read counts in its RSS, so pack-objects
    # grew by the size of the input pack (the directory's snapshot: ~400 MB
    # for Linux). Small windows, reused, read the same objects.
    "core.packedGitWindowSize": "4m",
    "core.packedGitLimit": "32m",
}

# Environment variables that would point git somewhere else than we say.
_KEEP_GIT_VARS = {"GIT_EXEC_PATH", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL",
                  "GIT_CONFIG_SYSTEM", "GIT_TRACE", "GIT_TRACE2", "GIT_TRACE_PERFORMANCE"}


@dataclass(frozen=True)
class GitRepo:
    """A repository as git sees it: its git dir, and where new objects go."""
    git_dir: str
    object_dir: str | None = None  # write-only scratch; then the repo's objects are alternates
    alternates: str | None = None


def git_env(repo: GitRepo | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") or k in _KEEP_GIT_VARS}
    env["LC_ALL"] = "C"
    env["GIT_TERMINAL_PROMPT"] = "0"
    if repo is not None:
        env["GIT_DIR"] = repo.git_dir
        if repo.object_dir:
            env["GIT_OBJECT_DIRECTORY"] = repo.object_dir
        if repo.alternates:
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = repo.alternates
    return env


def git_command(*args: str) -> list[str]:
    cmd = ["git"]
    for key, value in PINNED_CONFIG.items():
        cmd += ["-c", f"{key}={value}"]
    return cmd + list(args)


def last_line(stderr: bytes) -> str:
    lines = [l.strip() for l in re.split(rb"[\r\n]", stderr) if l.strip()]
    text = lines[-1].decode("utf-8", "replace") if lines else "no message"
    return text.removeprefix("fatal: ").removeprefix("error: ")


class _NoGit(BuildError):
    pass


def start_git(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a git process tied to this one (it dies with the builder)."""
    try:
        return children.start(cmd, error=_NoGit, **kwargs)
    except _NoGit:
        raise BuildError("the git program is needed but was not found on PATH") from None


def run_git(repo: GitRepo | None, *args: str, input: bytes | None = None) -> bytes:
    """Run a git plumbing command; stdout on success, else a BuildError.

    The BuildError's message is git's last stderr line; callers wrap it to
    name the thing that failed.
    """
    proc = start_git(git_command(*args), env=git_env(repo),
                     stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(input)
    except BaseException:
        children.stop(proc)
        raise
    if proc.returncode != 0:
        raise BuildError(last_line(err))
    return out


def git_through_files(repo: GitRepo | None, stdin: BinaryIO | None, *args: str,
                      failure: str = "") -> bytes:
    """A git command's output, through a temporary file: read in one piece,
    without `communicate`'s list of chunks joined into a second copy (rev-list
    says 60 MB at a million files). `stdin` is a file to read from (None:
    nothing); a failure is a BuildError of `failure` then git's last stderr line."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = start_git(git_command(*args), env=git_env(repo),
                         stdin=subprocess.DEVNULL if stdin is None else stdin,
                         stdout=out, stderr=err)
        try:
            proc.wait()
        except BaseException:
            children.stop(proc)
            raise
        if proc.returncode != 0:
            err.seek(0)
            raise BuildError(failure + last_line(err.read()))
        out.seek(0)
        return out.read()


def check_object_sizes(repo: GitRepo, commit: str, limit: int, display: str) -> None:
    """Refuse, before packing, a commit that holds an object over `limit` bytes.

    `limit` is `format.limits.MAX_FILE_SIZE`: an image its readers would
    refuse is not built. One `rev-list` walk with git's
    blob-size filter (trees are never that big); the commit itself is
    checked with `cat-file -s`. The culprit's path is looked up only when
    there is one.
    """
    size = int(run_git(repo, "cat-file", "-s", commit))
    if size > limit:
        raise BuildError(f"{display}: commit {commit} is {size} bytes, over the object size "
                         f"limit of {limit} bytes (the largest file docteur stores)")
    out = run_git(repo, "rev-list", "--objects", "--no-walk", f"--filter=blob:limit={limit + 1}",
                  "--filter-print-omitted", commit)
    omitted = [line[1:41].decode() for line in out.splitlines() if line.startswith(b"~")]
    if not omitted:
        return
    blob = omitted[0]
    size = int(run_git(repo, "cat-file", "-s", blob))
    name = blob
    for line in run_git(repo, "rev-list", "--objects", "--no-walk", commit).splitlines():
        if line[:40].decode() == blob:
            name = line[41:].decode("utf-8", "backslashreplace") or blob
            break
    raise BuildError(f"{display}: {name}: {size} bytes, over the object size limit of "
                     f"{limit} bytes (the largest file docteur stores)")
