"""Every way `docteur make` can fail: one line, exit status 1, no image left behind,
and an existing IMAGE untouched."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.make import make_image
from tests.helpers.support import REPO_ROOT, git
from tests.helpers.gitoracle import SITE

OLD = b"an older image, which a failed build must not touch\n"


def make(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "docteur_core", "make", *args],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def assert_fails(proc, message: str, out: Path, existing: bool = True) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"docteur make: {message}\n"
    assert proc.stdout == ""
    if existing:
        assert out.read_bytes() == OLD
    else:
        assert not out.exists()
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture
def out(tmp_path) -> Path:
    path = tmp_path / "out" / "disk.img"
    path.parent.mkdir()
    path.write_bytes(OLD)
    return path


def test_missing_source(tmp_path, out):
    proc = make(str(tmp_path / "nope"), str(out))
    assert_fails(proc, f"{tmp_path}/nope: no such file or directory", out)


def test_source_is_a_file(tmp_path, out):
    (tmp_path / "f").write_text("x")
    assert_fails(make(str(tmp_path / "f"), str(out)),
                 f"{tmp_path}/f: not a directory or a Git repository", out)


def test_missing_source_url_path(tmp_path, out):
    assert_fails(make(f"file://{tmp_path}/nope", str(out)),
                 f"file://{tmp_path}/nope: no such file or directory", out)


def test_unsupported_scheme(out):
    assert_fails(make("ftp://example.org/x", str(out)),
                 "ftp://example.org/x: unsupported URL scheme 'ftp'", out)


def test_output_folder_missing_is_reported_before_any_work(tmp_path):
    # A remote that would be contacted: it must not be.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        image = tmp_path / "missing" / "disk.img"
        proc = make(f"git://127.0.0.1:{port}/x.git", str(image))
        assert_fails(proc, f"{image}: output folder {image.parent} does not exist", image,
                     existing=False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()


def test_output_is_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    proc = make(str(SITE), str(tmp_path / "d"))
    assert proc.returncode == 1 and proc.stderr == f"docteur make: {tmp_path}/d: is a directory\n"


def capability_drop() -> list[str] | None:
    """As root, run without the capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("what", ["file", "directory"])
def test_unreadable(tmp_path, out, what):
    prefix = capability_drop()
    if prefix is None:
        # .ci/setup installs util-linux (setpriv): without it, as root, no
        # permission can be enforced, and a skip would hide that.
        pytest.fail("running as root without setpriv: install util-linux")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "secret").write_text("x")
    target = src / "sub" / "secret" if what == "file" else src / "sub"
    target.chmod(0)
    try:
        proc = make(str(src), str(out), prefix=prefix)
    finally:
        target.chmod(0o755)
    assert_fails(proc, f"{target}: cannot read {what} (Permission denied)", out)


def test_not_a_repository(tmp_path, out):
    src = tmp_path / "src"
    src.mkdir()
    (src / ".git").write_text("gitdir: /nonexistent\n")
    proc = make(str(src), str(out))
    assert proc.stderr.startswith(f"docteur make: {src}: not a Git repository (")
    assert_fails(proc, proc.stderr[len("docteur make: "):-1], out)


def test_unknown_branch(tmp_path, out):
    repo = tmp_path / "repo"
    git("init", "-q", str(repo))
    (repo / "a").write_text("a")
    git("add", "a", cwd=repo)
    git("commit", "-q", "-m", "a", cwd=repo)
    assert_fails(make("--branch", "nope", str(repo), str(out)),
                 f"{repo}: unknown branch or tag 'nope'", out)
    # --branch=--upload-pack=x, --branch on a plain directory, --author,
    # --block-size and --date are usage errors (exit 2): tests/cli/test_same_errors.py


def test_bad_source_date_epoch(out):
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", str(SITE), str(out)],
                          capture_output=True, text=True, cwd=REPO_ROOT,
                          env=dict(os.environ, SOURCE_DATE_EPOCH="soon"))
    assert_fails(proc, "SOURCE_DATE_EPOCH 'soon': expected whole seconds since 1970", out)


@pytest.mark.parametrize("phase", ["Hashing files", "Compressing objects", "Writing image"])
def test_interrupt_in_each_phase_leaves_old_image(out, phase):
    def interrupt(text: str) -> None:
        if text.startswith(phase):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_image(SITE, out, progress=interrupt)
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in out.parent.iterdir()) == ["disk.img"]


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_signal_during_fetch(out, sig, status):
    """A remote that accepts and never answers: the build is surely running when signalled."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "docteur_core", "make",
                             f"git://127.0.0.1:{port}/x.git", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT)
    try:
        listener.settimeout(60)
        conn, _ = listener.accept()
        conn.recv(100)  # the request: the client is now waiting for us
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        conn.close()
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status
    assert stderr == "docteur make: interrupted\n"
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in out.parent.iterdir()) == ["disk.img"]


def test_success_replaces_the_old_image(out):
    proc = make("-q", "--date", "2026-01-01T00:00:00Z", str(SITE), str(out))
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(f"{out}: ") and " commit " in proc.stdout  # -q keeps it
    assert out.read_bytes()[28:32] == b"PACK"
    assert sorted(p.name for p in out.parent.iterdir()) == ["disk.img"]
