"""Fixtures of the builder's tests: a served bare repository with history,
and the git servers that serve it (tests/helpers/git_servers.py)."""

from __future__ import annotations

import subprocess

import pytest

from docteur_core.make import make_image
from tests.helpers.git_servers import start_http, wait_for_port
from tests.helpers.support import free_port, git


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """A bare repository with history, a branch and an annotated tag, under a served root."""
    root = tmp_path_factory.mktemp("served")
    work = root / "work"
    git("init", "-q", str(work))
    commits = []
    for i in range(3):
        (work / "notes.txt").write_text(f"revision {i}\n" + "shared line\n" * 200)
        (work / f"file{i}").write_text(f"{i}\n")
        git("add", "-A", ".", cwd=work)
        git("commit", "-q", "-m", f"commit {i}", cwd=work)
        commits.append(git("rev-parse", "HEAD", cwd=work).decode().strip())
    git("tag", "-a", "-m", "release", "v1", commits[0], cwd=work)
    git("branch", "old", commits[1], cwd=work)
    repo = root / "srv" / "project.git"
    git("clone", "-q", "--bare", str(work), str(repo))
    return {"root": root / "srv", "repo": repo, "commits": commits}


@pytest.fixture(scope="module")
def git_daemon(served):
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
         f"--base-path={served['root']}", "--listen=127.0.0.1", f"--port={port}",
         str(served["root"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def http_open(served):
    server, hostport = start_http(served["root"], None)
    try:
        yield f"http://{hostport}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def http_auth(served):
    server, hostport = start_http(served["root"], "alice:s3cret")
    try:
        yield hostport
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def local_images(served, tmp_path_factory) -> dict:
    """Images built from the served repository directly, to compare remote ones with."""
    out = tmp_path_factory.mktemp("local")
    images = {}
    for ref in (None, "old", "v1"):
        path = out / f"{ref}.img"
        make_image(served["repo"], path, branch=ref)
        images[ref] = path.read_bytes()
    return images
