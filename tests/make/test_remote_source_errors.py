"""Acceptance (issue 2): "each error case is tested for its message and exit
code, and for leaving no image behind" -- for remote sources, on the
command line, over real git:// and http:// servers.

test_build_remote checks these errors through make_image (message, no new
file); here each one goes through `docteur make` as a user runs it: exit
status 1, exactly one stderr line naming the source and the reason, nothing
on stdout, an existing IMAGE left byte-for-byte as it was, no temporary
file beside it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.support import REPO_ROOT, free_port
# Real servers (git daemon, git http-backend behind an HTTP server with Basic auth).

OLD = b"an image from before, which a failed build must not touch\n"


def make_cli(source: str, image: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docteur_core", "make", *extra, source,
                           str(image)], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)


def assert_refused(proc: subprocess.CompletedProcess, pattern: str, image: Path) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert re.fullmatch(pattern, proc.stderr[:-1]), proc.stderr
    assert "Traceback" not in proc.stderr
    assert image.read_bytes() == OLD
    assert sorted(p.name for p in image.parent.iterdir()) == [image.name]


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "out" / "disk.img"
    path.parent.mkdir()
    path.write_bytes(OLD)
    return path


@pytest.mark.parametrize("userinfo", ["alice:wrong@", ""])
def test_http_authentication_refused(http_auth, image, userinfo):
    url = f"http://{userinfo}{http_auth}/project.git"
    proc = make_cli(url, image)
    shown = userinfo.replace("wrong", "***")  # the password is masked
    assert_refused(proc, "docteur make: http://" + re.escape(shown + http_auth)
                   + r"/project\.git: authentication refused", image)
    assert "wrong" not in proc.stderr


@pytest.mark.parametrize("which", ["git", "http"])
def test_unknown_branch(git_daemon, http_open, image, which):
    base = git_daemon if which == "git" else http_open
    url = f"{base}/project.git"
    assert_refused(make_cli(url, image, "--branch", "nope"),
                   "docteur make: " + re.escape(url) + r": unknown branch or tag 'nope'", image)


@pytest.mark.parametrize("which", ["git", "http"])
def test_not_a_repository(git_daemon, http_open, image, which):
    base = git_daemon if which == "git" else http_open
    url = f"{base}/missing.git"
    assert_refused(make_cli(url, image),
                   "docteur make: " + re.escape(url)
                   + r": not a Git repository \(or not served\)", image)


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_unreachable(image, scheme):
    url = f"{scheme}://127.0.0.1:{free_port()}/project.git"  # nothing listens there
    assert_refused(make_cli(url, image),
                   "docteur make: " + re.escape(url) + r": unreachable \(.+\)", image)


def test_a_good_remote_build_replaces_the_image(git_daemon, served, image):
    """The same command line does work (so the failures above are the errors, not the setup)."""
    proc = make_cli(f"{git_daemon}/project.git", image, "-q")
    assert proc.returncode == 0, proc.stderr
    assert image.read_bytes()[:20] == bytes.fromhex(served["commits"][2])
